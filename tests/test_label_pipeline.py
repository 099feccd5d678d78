"""The labeling pipeline: resume, kill -9, group order, limit, shards, lock, crash handling, CLI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fixtures.fake_vlm import build_fake_vlm, write_noise_dataset
from spatialreward.cli import app
from spatialreward.cli._errors import CLIError
from spatialreward.dataset import DatasetError, labels_dir, list_shards, read_label_shards, read_labels, write_samples
from spatialreward.teacher.pipeline import LOCK_NAME, MANIFEST_NAME, label_dataset
from spatialreward.types import EditSample, Judgement


class FakeTeacher:
    """Deterministic verdicts from the sample id; records which samples it was asked about, in order."""

    name = "fake"
    prompt_version = "fake-v1"
    batch_size = 4

    def __init__(self, *, crash_on: set[str] = frozenset(), fail_on: set[str] = frozenset(), delay_s: float = 0.0):
        self.crash_on, self.fail_on, self.delay_s = set(crash_on), set(fail_on), delay_s
        self.seen: list[str] = []

    def judge_batch(self, samples, root):
        time.sleep(self.delay_s * len(samples))
        self.seen.extend(s.sample_id for s in samples)
        if any(s.sample_id in self.crash_on for s in samples):
            raise RuntimeError("CUDA error: device-side assert")
        out = []
        for s in samples:
            if s.sample_id in self.fail_on:
                out.append(Judgement.failure(s.sample_id, self.name, "failed", "server down", prompt_version="fake-v1"))
            else:
                k = sum(map(ord, s.sample_id)) % 20
                out.append(Judgement.from_subscores(s.sample_id, self.name, [k, 20 - k, 10, 15], [[0, 0, 500, 500]],
                                                    prompt_version="fake-v1"))
        return out


def _interleaved_dataset(root: Path, groups: int = 3, per_group: int = 4) -> list[EditSample]:
    """Samples whose file order interleaves groups (g0, g1, g2, g0, ...): the pipeline must regroup them."""
    base = write_noise_dataset(root, groups=1, edits_per_group=1)[0]
    samples = [
        EditSample(sample_id=f"g{g}-e{e}", source=base.source, edited=base.edited, instruction=f"edit {g}",
                   group_id=f"g{g}")
        for e in range(per_group) for g in range(groups)
    ]
    write_samples(root, samples)
    return samples


def _records(root: Path, teacher: str = "fake") -> list[Judgement]:
    return read_label_shards(labels_dir(root, teacher))


def test_groups_run_together_and_every_sample_is_labelled_once(tmp_path):
    samples = _interleaved_dataset(tmp_path)
    teacher = FakeTeacher()
    report = label_dataset(tmp_path, teacher, shard_size=5, progress=False)
    assert teacher.seen == [f"g{g}-e{e}" for g in range(3) for e in range(4)]
    records = _records(tmp_path)
    assert sorted(j.sample_id for j in records) == sorted(s.sample_id for s in samples)
    assert report.labelled == 12 and report.counts == Counter({"ok": 12}) and report.call_counts == {}
    assert [len(read_label_shards_of(p)) for p in list_shards(labels_dir(tmp_path, "fake"))] == [5, 5, 2]
    assert not (labels_dir(tmp_path, "fake") / LOCK_NAME).exists()


def read_label_shards_of(path: Path) -> list[str]:
    return [line for line in path.read_text().splitlines() if line.strip()]


def test_resume_skips_labelled_and_limit_is_stable(tmp_path):
    _interleaved_dataset(tmp_path)
    first = label_dataset(tmp_path, FakeTeacher(), shard_size=3, limit=5, progress=False)
    assert first.labelled == 5 and first.selected == 5
    again = label_dataset(tmp_path, FakeTeacher(), shard_size=3, limit=5, progress=False)
    assert again.labelled == 0 and again.already_labelled == 5 and again.shards == []
    teacher = FakeTeacher()
    rest = label_dataset(tmp_path, teacher, shard_size=3, progress=False)
    assert rest.already_labelled == 5 and rest.labelled == 7
    assert len(set(teacher.seen)) == 7
    ids = [j.sample_id for j in _records(tmp_path)]
    assert len(ids) == len(set(ids)) == 12


def test_parquet_shards_and_split(tmp_path):
    base = write_noise_dataset(tmp_path, groups=1, edits_per_group=1)[0]
    samples = [EditSample(sample_id=f"s{i}", source=base.source, edited=base.edited, instruction="x",
                          group_id=f"g{i // 2}", split="train" if i < 4 else "val") for i in range(6)]
    write_samples(tmp_path, samples)
    report = label_dataset(tmp_path, FakeTeacher(), shard_size=3, format="parquet", split="val", progress=False)
    assert report.samples == 2 and report.labelled == 2
    assert [p.suffix for p in report.shards] == [".parquet"]
    assert sorted(read_labels(tmp_path, "fake")) == ["s4", "s5"]


def test_teacher_crash_fails_that_batch_visibly(tmp_path):
    _interleaved_dataset(tmp_path)
    report = label_dataset(tmp_path, FakeTeacher(crash_on={"g1-e0"}), shard_size=100, progress=False)
    assert report.counts == Counter({"ok": 8, "failed": 4})
    failed = [j for j in _records(tmp_path) if j.status == "failed"]
    assert sorted(j.sample_id for j in failed) == ["g1-e0", "g1-e1", "g1-e2", "g1-e3"]
    assert all("CUDA error" in j.error and j.reward is None for j in failed)


def test_repeated_crashes_stop_the_run_but_keep_what_was_written(tmp_path):
    _interleaved_dataset(tmp_path, groups=5)
    crash_all = {f"g{g}-e0" for g in range(1, 5)}
    with pytest.raises(RuntimeError, match="crashed on 3 batches in a row"):
        label_dataset(tmp_path, FakeTeacher(crash_on=crash_all), shard_size=100, progress=False)
    statuses = Counter(j.status for j in _records(tmp_path))
    assert statuses == Counter({"ok": 4, "failed": 12})  # flushed on the way out
    assert not (labels_dir(tmp_path, "fake") / LOCK_NAME).exists()


def test_redo_failed_relabels_only_failed(tmp_path):
    _interleaved_dataset(tmp_path)
    label_dataset(tmp_path, FakeTeacher(fail_on={"g0-e1", "g2-e3"}), progress=False)
    teacher = FakeTeacher()
    report = label_dataset(tmp_path, teacher, redo_failed=True, progress=False)
    assert sorted(teacher.seen) == ["g0-e1", "g2-e3"] and report.labelled == 2
    latest = read_labels(tmp_path, "fake")
    assert len(latest) == 12 and all(j.status == "ok" for j in latest.values())


def test_wrong_answers_from_a_teacher_are_refused(tmp_path):
    _interleaved_dataset(tmp_path)

    class Shuffling(FakeTeacher):
        def judge_batch(self, samples, root):
            return list(reversed(super().judge_batch(samples, root)))

    with pytest.raises(RuntimeError, match="out of order"):
        label_dataset(tmp_path, Shuffling(), progress=False)
    assert _records(tmp_path) == []


def test_live_lock_refuses_a_second_run_and_stale_lock_is_taken_over(tmp_path):
    import socket

    _interleaved_dataset(tmp_path)
    lock = labels_dir(tmp_path, "fake") / LOCK_NAME
    lock.parent.mkdir(parents=True)
    lock.write_text(f"{os.getpid()}@{socket.gethostname()}")  # a live process: this one
    with pytest.raises(DatasetError, match="another labeling run"):
        label_dataset(tmp_path, FakeTeacher(), progress=False)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lock.write_text(f"{dead.pid}@{socket.gethostname()}")
    assert label_dataset(tmp_path, FakeTeacher(), progress=False).labelled == 12


# ---------------------------------------------------------------------------------------------------------------
# Resume never mixes teachers or prompt versions (issue 12)
# ---------------------------------------------------------------------------------------------------------------


class OtherPrompt(FakeTeacher):
    prompt_version = "fake-v2"

    def judge_batch(self, samples, root):
        return [j.model_copy(update={"prompt_version": self.prompt_version}) for j in super().judge_batch(samples, root)]


def test_resume_with_another_prompt_version_is_refused_naming_both(tmp_path):
    _interleaved_dataset(tmp_path)
    label_dataset(tmp_path, FakeTeacher(), limit=4, progress=False)
    manifest = json.loads((labels_dir(tmp_path, "fake") / MANIFEST_NAME).read_text())
    assert manifest == {"teacher": "fake", "identity": "fake", "prompt_version": "fake-v1"}
    teacher = OtherPrompt()
    with pytest.raises(DatasetError, match=r"prompt_version 'fake-v1' there, 'fake-v2' in this run") as info:
        label_dataset(tmp_path, teacher, progress=False)
    assert "--teacher-name" in str(info.value)
    assert teacher.seen == [] and len(_records(tmp_path)) == 4  # nothing asked, nothing written
    assert not (labels_dir(tmp_path, "fake") / LOCK_NAME).exists()


def test_same_name_but_another_identity_is_refused(tmp_path):
    """Two servers (or checkpoints) under one --teacher-name: the folder knows which one wrote it."""
    _interleaved_dataset(tmp_path)

    class Served(FakeTeacher):
        def __init__(self, identity):
            super().__init__()
            self.identity = identity

    label_dataset(tmp_path, Served("openai:http://a:8000/v1#m"), limit=4, progress=False)
    with pytest.raises(DatasetError, match=r"identity 'openai:http://a:8000/v1#m' there, 'openai:http://b:8000/v1#m'"):
        label_dataset(tmp_path, Served("openai:http://b:8000/v1#m"), progress=False)
    assert label_dataset(tmp_path, Served("openai:http://a:8000/v1#m"), progress=False).labelled == 8


def test_folder_without_manifest_is_checked_by_its_records(tmp_path):
    """Label folders written before teacher.json existed: the records' prompt versions are compared."""
    _interleaved_dataset(tmp_path)
    label_dataset(tmp_path, FakeTeacher(), limit=4, progress=False)
    (labels_dir(tmp_path, "fake") / MANIFEST_NAME).unlink()
    with pytest.raises(DatasetError, match=r"prompt versions \['fake-v1'\]; this run is 'fake' with prompt 'fake-v2'"):
        label_dataset(tmp_path, OtherPrompt(), progress=False)


# ---------------------------------------------------------------------------------------------------------------
# Damaged files during a resume (issue 12)
# ---------------------------------------------------------------------------------------------------------------


def test_damaged_shard_is_reported_and_its_samples_relabelled(tmp_path):
    _interleaved_dataset(tmp_path)
    label_dataset(tmp_path, FakeTeacher(), shard_size=4, limit=8, progress=False)
    folder = labels_dir(tmp_path, "fake")
    damaged = folder / "part-00001.jsonl"
    damaged.write_bytes(damaged.read_bytes()[:40] + b"\xff\xfe" + damaged.read_bytes()[42:])
    teacher = FakeTeacher()
    report = label_dataset(tmp_path, teacher, shard_size=4, progress=False)
    assert report.unreadable_existing == 1 and "part-00001.jsonl:1: invalid UTF-8" in report.existing_errors[0]
    assert any("bad existing label record" in line for line in report.problems())
    assert report.already_labelled == 7 and report.labelled == 5  # the damaged line's sample is labelled again
    with pytest.raises(DatasetError, match=r"part-00001.jsonl:1: invalid UTF-8"):
        label_dataset(tmp_path, FakeTeacher(), strict=True, progress=False)


def test_bad_sample_lines_are_reported_and_the_rest_labelled(tmp_path):
    _interleaved_dataset(tmp_path)
    path = tmp_path / "samples.jsonl"
    path.write_bytes(path.read_bytes() + b'{"sample_id": "\xc3\x28"}\n')
    report = label_dataset(tmp_path, FakeTeacher(), progress=False)
    assert report.labelled == 12 and report.bad_sample_records == 1
    assert "samples.jsonl:13: invalid UTF-8" in report.sample_errors[0]
    with pytest.raises(DatasetError, match=r"samples.jsonl:13: invalid UTF-8"):
        label_dataset(tmp_path, FakeTeacher(), strict=True, progress=False)


# ---------------------------------------------------------------------------------------------------------------
# kill -9 and resume
# ---------------------------------------------------------------------------------------------------------------

# The child process labels with a slow teacher of its own (importing this test module would pull in the CLI).
LABEL_SCRIPT = textwrap.dedent("""
    import time
    from spatialreward.teacher.pipeline import label_dataset
    from spatialreward.types import Judgement

    class SlowTeacher:
        name, prompt_version, batch_size = "fake", "fake-v1", 2

        def judge_batch(self, samples, root):
            time.sleep({delay} * len(samples))
            # Judgement(...) directly: from_subscores would import torch (3 s) in every child process.
            return [Judgement(sample_id=s.sample_id, teacher=self.name, prompt_version="fake-v1", status="ok",
                              subscores=[10, 10, 10, 10], reward=0.4) for s in samples]

    report = label_dataset({root!r}, SlowTeacher(), shard_size=3, progress=False)
    print("labelled", report.labelled)
""")



def test_kill_9_mid_run_then_resume_loses_and_duplicates_nothing(tmp_path):
    samples = _interleaved_dataset(tmp_path, groups=6, per_group=5)  # 30 samples, 10 shards of 3
    folder = labels_dir(tmp_path, "fake")
    script = LABEL_SCRIPT.format(root=str(tmp_path), delay=0.03)
    kills = 0
    snapshots: dict[str, bytes] = {}
    for _ in range(3):  # up to three kill -9s at different points of the run
        before = len(list_shards(folder))
        proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 60
        while proc.poll() is None and len(list_shards(folder)) <= before and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.04 * (kills + 1))  # land the kill somewhere inside the next shard's batches
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait()
        for shard in list_shards(folder):  # a written shard never changes afterwards
            snapshots.setdefault(shard.name, shard.read_bytes())
            assert shard.read_bytes() == snapshots[shard.name]
        ids = [j.sample_id for j in _records(tmp_path)]
        assert len(ids) == len(set(ids))
    assert kills >= 1, "the run finished before it could be killed; make it slower"
    written_before_resume = {j.sample_id for j in _records(tmp_path)}
    teacher = FakeTeacher()
    report = label_dataset(tmp_path, teacher, shard_size=3, progress=False)
    assert set(teacher.seen).isdisjoint(written_before_resume)
    assert report.already_labelled == len(written_before_resume)
    assert report.already_labelled + report.labelled == len(samples)
    ids = [j.sample_id for j in _records(tmp_path)]
    assert sorted(ids) == sorted(s.sample_id for s in samples)  # exactly once each
    assert not list(folder.glob(".*.tmp"))  # a killed writer's temp file would be ignored, but none is left here


# ---------------------------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------------------------


def test_cli_labels_with_a_tiny_vlm_and_reports(tmp_path):
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: a second thread only waits on a busy 2-core machine
    try:
        _run_cli_on_tiny_vlm(tmp_path)
    finally:
        torch.set_num_threads(threads)


def _run_cli_on_tiny_vlm(tmp_path):
    model = build_fake_vlm(tmp_path / "fake-cli", "qwen2_5_vl")
    data = tmp_path / "data"
    write_noise_dataset(data, groups=1, edits_per_group=2)
    report_path = tmp_path / "report.json"
    result = CliRunner().invoke(app, [
        "label", "--data", str(data), "--teacher", f"vlm:{model}", "--max-new-tokens", "8", "--parse-retries", "0",
        "--no-progress", "--shard-size", "1", "--report", str(report_path),
    ])
    assert result.exit_code == 0, result.output
    assert "judgement" in result.output and "sc call" in result.output
    report = json.loads(report_path.read_text())
    assert report["labelled"] == 2 and sum(report["counts"].values()) == 2
    assert sum(report["call_counts"]["sc"].values()) == 2 and len(report["shards"]) == 2


def test_cli_turns_bad_teacher_specs_into_cli_errors(tmp_path):
    write_noise_dataset(tmp_path, groups=1, edits_per_group=1)
    result = CliRunner().invoke(app, ["label", "--data", str(tmp_path), "--teacher", "gpt-4"])
    assert isinstance(result.exception, CLIError) and "unknown teacher" in str(result.exception)
    result = CliRunner().invoke(app, ["label", "--data", str(tmp_path), "--teacher", "vlm:x", "--format", "csv"])
    assert result.exit_code == 2 and "csv" in result.output  # a Literal field: typer names the choices
    result = CliRunner().invoke(app, ["label", "--data", str(tmp_path), "--teacher", "vlm:x", "--shard-size", "0"])
    assert isinstance(result.exception, CLIError) and "shard_size=0" in str(result.exception)
    result = CliRunner().invoke(app, ["label", "--data", str(tmp_path), "--prompt-file", "p.json"])
    assert isinstance(result.exception, CLIError) and "--prompt-file apply to vlm:" in str(result.exception)


def test_every_config_field_has_a_label_flag():
    """Adding a field to TeacherConfig or LabelConfig adds its flag (issue 13): nothing is typed twice."""
    from spatialreward.cli._options import missing_flags
    from spatialreward.cli.label import label
    from spatialreward.teacher.config import TeacherConfig
    from spatialreward.teacher.pipeline import LabelConfig

    assert missing_flags(label, TeacherConfig) == []
    assert missing_flags(label, LabelConfig) == []
    result = CliRunner().invoke(app, ["label", "--help"], env={"COLUMNS": "200"})
    for flag in ("--allow-outside-root", "--allow-insecure-api-key", "--max-response-bytes", "--strict",
                 "--ray-gpus-per-actor", "--parse-retries", "--timeout-s", "--name"):
        assert flag in result.output, flag


def test_cli_flags_reach_both_configs(tmp_path, monkeypatch):
    """One run of the command with non-default flags: each lands in its config field."""
    import spatialreward.teacher.pipeline as pipeline
    import spatialreward.teacher.registry as registry

    seen = {}

    def fake_make_teacher(spec, config):
        seen["teacher"] = config
        return FakeTeacher()

    def fake_label_dataset(data, teacher, config):
        seen["label"] = config
        return pipeline.LabelReport(teacher="fake", prompt_version="fake-v1", out_dir=tmp_path)

    monkeypatch.setattr(registry, "make_teacher", fake_make_teacher)
    monkeypatch.setattr(pipeline, "label_dataset", fake_label_dataset)
    result = CliRunner().invoke(app, [
        "label", "--data", str(tmp_path), "--teacher", "vlm:x", "--batch-size", "3", "--parse-retries", "0",
        "--allow-outside-root", "--timeout-s", "7.5", "--format", "parquet", "--strict", "--no-progress",
        "--shard-size", "9", "--name", "mine",
    ])
    assert result.exit_code == 0, result.output
    teacher, run = seen["teacher"], seen["label"]
    assert (teacher.batch_size, teacher.parse_retries, teacher.allow_outside_root, teacher.timeout_s,
            teacher.name) == (3, 0, True, 7.5, "mine")
    assert (run.batch_size, run.format, run.strict, run.progress, run.shard_size) == (3, "parquet", True, False, 9)
    result = CliRunner().invoke(app, ["label", "--data", str(tmp_path), "--teacher", "vlm:x"])
    assert seen["teacher"].batch_size == 8 and seen["label"].batch_size is None  # unset: each keeps its default
