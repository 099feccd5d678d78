"""Distillation: config checks, data loading and skipping, group batching, resume, a real short run, the CLI."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from spatialreward.student.data import GroupBatchSampler, load_split
from spatialreward.student.distill import DistillConfig, Distiller, lr_factor
from spatialreward.student.model import Student
from spatialreward.student.presets import preset_config
from tests.fixtures.students import HashingTextEncoder, make_fake_dataset

torch.set_num_threads(2)

# Toy student for loop mechanics: 48 px → 3×3 tokens, width 32, one block (a step is a few milliseconds).
TOY = dict(img_size=48, depth=1, embed_dim=32, num_heads=2, cross_heads=2, head_dim=32, mask_subdivision=2)


def toy_config(**overrides):
    return preset_config("nano", **{**TOY, **overrides})


def quick_cfg(data, out, **overrides) -> DistillConfig:
    base = dict(
        data=str(data), out=str(out), max_steps=4, groups_per_batch=2, warmup_steps=2, eval_every_minutes=0,
        save_every_minutes=1e9, progress=False, tensorboard=False, log_every_steps=1,
    )
    return DistillConfig(**{**base, **overrides})


@pytest.fixture(scope="module")
def fake_data(tmp_path_factory):
    # 12 groups × 5 edits at 48 px (9 train groups, 3 held out); one label is a parse_error to be skipped.
    return make_fake_dataset(tmp_path_factory.mktemp("fake"), groups=12, size=48, bad_label=True)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(max_steps=None, max_minutes=None), "set a budget"),
        (dict(groups_per_batch=0), "whole GRPO groups"),
        (dict(teacher_forcing=1.5), "probability"),
        (dict(ema_decay=1.0), "ema_decay"),
        (dict(amp="fp8"), "amp='fp8' is not one of"),
        (dict(ranking_loss="lambda"), "ranking_loss"),
        (dict(w_subscore=0, w_ranking=0, w_advantage=0, w_mask=0, w_presence=0), "at least one > 0"),
        (dict(exclude_operations="texture, teleport"), r"unknown \['teleport'\]"),
    ],
)
def test_config_rejects_broken_invariants(overrides, message):
    with pytest.raises(ValueError, match=message):
        DistillConfig(**{"max_steps": 1, **overrides})


def test_lr_schedule_warms_up_then_anneals():
    assert lr_factor(0.0, 0, 10, 0.1) == pytest.approx(0.1)  # step 1 of 10 warm-up steps
    assert lr_factor(0.0, 20, 10, 0.1) == pytest.approx(1.0)
    assert lr_factor(0.5, 20, 10, 0.1) == pytest.approx(0.55)
    assert lr_factor(1.0, 20, 10, 0.1) == pytest.approx(0.1)


def test_load_split_skips_and_counts_bad_records(fake_data, tmp_path):
    data = load_split(fake_data, split="train", teacher="oracle", img_size=48, mask_size=(12, 12),
                      text_encoder=HashingTextEncoder(), progress=False)
    assert data.report.skipped["not ok (parse_error)"] == 1
    assert len(data) == 9 * 5 - 1 and data.report.groups == 9
    assert data.images.dtype == torch.uint8 and data.images.shape[1:] == (3, 48, 48)
    assert len(data.images) == 9 + len(data)  # each group's source is stored once
    batch = data.collate([0, 1, 2, 5])  # three edits of group 0, one of group 1
    assert batch["source"].shape == (2, 3, 48, 48) and batch["source_index"].tolist() == [0, 0, 0, 1]
    assert batch["edited"].shape == (4, 3, 48, 48) and 0 <= batch["edited"].min() and batch["edited"].max() <= 1
    assert batch["mask"].shape == (4, 12, 12) and batch["group_index"].tolist() == [0, 0, 0, 1]

    # An unreadable edited image drops that edit (with its reason); an unreadable source drops its group.
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(fake_data, broken)
    (broken / "images" / "g0000" / "2.png").write_bytes(b"not a png")
    (broken / "images" / "g0001" / "source.png").unlink()
    data = load_split(broken, split="train", teacher="oracle", img_size=48, mask_size=(12, 12),
                      text_encoder=HashingTextEncoder(), progress=False)
    assert data.report.skipped["unreadable edited image"] == 1
    assert data.report.skipped["unreadable source image"] == 5
    assert any("g0000-2" in e for e in data.report.examples)


def test_group_batches_hold_whole_groups_and_split_ranks():
    group = torch.tensor([0] * 3 + [1] * 4 + [2] * 2 + [3] * 3 + [4] * 1)
    sampler = GroupBatchSampler(group, 2, seed=3)
    batches = sampler.epoch_batches(0)
    assert len(batches) == 2 == len(sampler)  # 5 groups → 2 full batches of 2, the odd one dropped
    for b in batches:
        groups_in = set(group[b].tolist())
        assert len(groups_in) == 2 and sorted(b) == sorted(i for g in groups_in for i in range(13) if group[i] == g)
    assert batches == GroupBatchSampler(group, 2, seed=3).epoch_batches(0)  # deterministic per (seed, epoch)
    assert batches != sampler.epoch_batches(1) or batches != sampler.epoch_batches(2)
    r0 = GroupBatchSampler(group, 1, seed=3, rank=0, world_size=2).epoch_batches(0)
    r1 = GroupBatchSampler(group, 1, seed=3, rank=1, world_size=2).epoch_batches(0)
    assert len(r0) == len(r1) == 2 and not set(sum(r0, [])) & set(sum(r1, []))
    with pytest.raises(ValueError, match="cannot fill one batch"):
        GroupBatchSampler(group, 6)


def test_resume_takes_the_same_next_step(fake_data, tmp_path):
    enc = HashingTextEncoder()
    cfg = quick_cfg(fake_data, tmp_path / "run", max_steps=6, ema_decay=0.9)
    a = Distiller(cfg, text_encoder=enc, student_config=toy_config())
    for _ in range(3):
        a.train_step()
    a.save_checkpoint()
    next_a = a.train_step()
    b = Distiller(replace(cfg, resume=True), text_encoder=enc)
    assert b.step == 3
    next_b = b.train_step()
    assert next_a == next_b  # identical loss parts, lr and gradient norm
    for (ka, va), (kb, vb) in zip(a.model.state_dict().items(), b.model.state_dict().items()):
        assert ka == kb and torch.equal(va, vb), ka
    assert all(torch.equal(a.ema[k], b.ema[k]) for k in a.ema)
    with pytest.raises(FileExistsError, match="--resume"):
        Distiller(cfg, text_encoder=enc, student_config=toy_config())  # never silently overwrite a run


def test_prepared_images_train_like_decoded_ones(fake_data, tmp_path):
    # The weight-free part (pooling, pixel statistics) computed once at start-up: the same losses and gradients
    # (lr 1e-12 keeps the weights equal, so each step compares one forward and backward), from a smaller store.
    enc = HashingTextEncoder()
    runs, steps = {}, {}
    for prepare in (False, True):
        cfg = quick_cfg(fake_data, tmp_path / f"run_{prepare}", max_steps=4, prepare_images=prepare, lr=1e-12)
        runs[prepare] = d = Distiller(cfg, text_encoder=enc, student_config=toy_config())
        steps[prepare] = [d.train_step() for _ in range(4)]  # teacher-forced and predicted-region steps both
    plain, prepared = runs[False], runs[True]
    assert plain.train_data.prepared is None and plain.train_data.images is not None
    kind, backbone, pixels, levels = prepared.train_data.prepared
    assert prepared.train_data.images is None and backbone.dtype == torch.int16 and levels == 255 * 4
    assert backbone.shape[-1] == 48 and pixels.shape[1] == 7  # 96-px input pooled 2×; 3 colours + 4 energies
    for a, b in zip(steps[False], steps[True]):
        assert a.keys() == b.keys() and all(a[k] == pytest.approx(b[k], rel=1e-4, abs=1e-5) for k in a), (a, b)
    # the stored rows are the model's own preparation of the decoded images, to float rounding
    rows = [0, 1, 2]
    ref, got = plain.train_data.collate(rows), prepared.train_data.collate(rows)
    expect = plain.model.prepare_images(ref["edited"])
    assert (got["edited"].backbone - expect.backbone).abs().max() <= 1e-6
    assert torch.equal(got["edited"].pixels, expect.pixels)
    # evaluation and the novelty fit read the prepared rows through the same collate and forward
    out = prepared.model(got["source"], got["edited"], got["text"], source_index=got["source_index"])
    want = plain.model(ref["source"], ref["edited"], ref["text"], source_index=ref["source_index"])
    assert torch.allclose(out.reward, want.reward, atol=1e-5)


def test_prepare_refuses_a_backbone_input_it_cannot_store_exactly(fake_data):
    from spatialreward.student.model import PreparedImages

    data = load_split(fake_data, split="train", teacher="oracle", img_size=48, mask_size=(12, 12),
                      text_encoder=HashingTextEncoder(), progress=False)
    with pytest.raises(ValueError, match="not a multiple of 1/255.*without --prepare-images"):
        data.prepare(lambda x: PreparedImages(x.sqrt(), x[:, :1]), 255, progress=False)
    with pytest.raises(ValueError, match="does not fit int16"):
        data.prepare(lambda x: PreparedImages(x, x[:, :1]), 255 * 16 * 16, progress=False)
    assert data.images is not None and data.prepared is None  # nothing half-replaced


def test_a_student_with_a_learned_full_resolution_part_has_nothing_to_prepare():
    student = Student(toy_config(quality_dim=4))
    assert not student.can_prepare
    with pytest.raises(ValueError, match="quality map"):
        student.prepare_images(torch.rand(1, 3, 96, 96))


def test_training_writes_a_loadable_student(fake_data, tmp_path):
    cfg = quick_cfg(fake_data, tmp_path / "run", tensorboard=True, eval_every_steps=2)
    out = Distiller(cfg, text_encoder=HashingTextEncoder(), student_config=toy_config()).train()
    assert (out / "model.safetensors").is_file() and (out / "checkpoint" / "optimizer.pt").is_file()
    assert any((out / "tensorboard").iterdir()) and (out / "curves.png").is_file()
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss/total" in r] == [1, 2, 3, 4]
    assert any("eval/pairwise_accuracy" in r for r in records)
    report = json.loads((out / "data_report.json").read_text())
    assert report["train"]["skipped"] == {"not ok (parse_error)": 1}
    assert Student.from_pretrained(out).cfg.img_size == 48


def test_short_training_beats_an_untrained_student_on_held_out_groups(tmp_path):
    """A real (short) distillation: it must beat the untrained student on groups it never saw.

    Kept small for CI: 64 px images, 48 train / 16 held-out groups of the toy edit set, a 2-block width-64
    student (4×4 tokens), 150 steps of 4 groups (~20 s on 2 cores). The thresholds below can fail: an
    untrained student sits near 0.45 pairwise accuracy, ~0 advantage correlation and ~0.08 mask IoU.
    """
    data = make_fake_dataset(tmp_path / "data", groups=64, size=64, seed=5)
    sc = preset_config("nano", img_size=64, depth=2, embed_dim=64, num_heads=2, cross_heads=2, head_dim=64)
    cfg = quick_cfg(data, tmp_path / "run", max_steps=150, groups_per_batch=4, warmup_steps=10, lr=2e-3,
                    log_every_steps=50)
    distiller = Distiller(cfg, text_encoder=HashingTextEncoder(), student_config=sc)
    before = distiller.evaluate()
    distiller.train()
    after = distiller.last_eval
    assert after["pairs"] == before["pairs"] > 0
    # Measured on two data seeds: pairwise 0.46→0.62 and 0.41→0.63, advantage corr +0.27 / +0.38, mask IoU
    # 0.08→0.54 / 0.07→0.53; the margins below leave room for thread-order noise but not for a broken loop.
    assert after["pairwise_accuracy"] >= before["pairwise_accuracy"] + 0.08, (before, after)
    assert after["group_advantage_corr"] >= before["group_advantage_corr"] + 0.15, (before, after)
    assert after["mask_iou"] >= before["mask_iou"] + 0.25, (before, after)


def test_cli_distill_then_eval(fake_data, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    import spatialreward.student.text as text
    from spatialreward.cli import app

    # The CLI loads the configured encoder by name; swap in the hashing stand-in to keep this test fast (the real
    # MiniLM is exercised in test_runtime.py).
    monkeypatch.setattr(text, "get_text_encoder", lambda *a, **k: HashingTextEncoder())
    runner = CliRunner()
    out = tmp_path / "run"
    res = runner.invoke(app, [
        "distill", "--data", str(fake_data), "--out", str(out), "--max-steps", "2", "--img-size", "48",
        "--groups-per-batch", "2", "--no-progress", "--eval-every-minutes", "0",
    ])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["distill", "--data", str(fake_data), "--out", str(out), "--max-steps", "2"])
    assert res.exit_code != 0 and "--resume" in str(res.exception)
    res = runner.invoke(app, ["eval", "--model", str(out), "--data", str(fake_data), "--json"])
    assert res.exit_code == 0, res.output
    metrics = json.loads(res.output[res.output.index("{"):])
    assert metrics["edits"] == 15 and 0.0 <= metrics["pairwise_accuracy"] <= 1.0
    for name in ("metrics.json", "metrics.md", "eval.png"):
        assert (out / "eval-heldout" / name).is_file()
    res = runner.invoke(app, ["eval", "--model", str(tmp_path / "nope"), "--data", str(fake_data)])
    assert res.exit_code != 0 and "no config.json" in str(res.exception)


def test_decoded_images_are_cached_and_invalidated_by_file_changes(fake_data, tmp_path, monkeypatch):
    import shutil

    import spatialreward.student.data as data_mod

    root = tmp_path / "copy"
    shutil.copytree(fake_data, root)
    kwargs = dict(split="heldout", teacher="oracle", img_size=48, mask_size=(12, 12),
                  text_encoder=HashingTextEncoder(), progress=False)
    first = load_split(root, **kwargs)
    assert list((root / ".cache" / "student").glob("images-48-*.safetensors"))
    calls = []
    original = data_mod._load_one
    monkeypatch.setattr(data_mod, "_load_one", lambda job: (calls.append(job[0]), original(job))[1])
    second = load_split(root, **kwargs)
    assert calls == [] and torch.equal(first.images, second.images)  # served from the cache
    from PIL import Image

    Image.new("RGB", (48, 48), (255, 0, 0)).save(root / "images" / "g0011" / "0.png")  # an edited file changes
    third = load_split(root, **kwargs)
    assert len(calls) == len(set(calls)) > 0  # decoded again
    assert not torch.equal(first.images, third.images)


def test_crash_between_the_checkpoint_renames_is_recovered_on_resume(fake_data, tmp_path):
    """The swap renames checkpoint/ away, then the new folder in; a crash in between leaves no checkpoint/ but
    the previous one intact as .checkpoint.old.PID: --resume must pick it up, not say there is nothing there."""
    enc = HashingTextEncoder()
    cfg = quick_cfg(fake_data, tmp_path / "run", max_steps=6)
    a = Distiller(cfg, text_encoder=enc, student_config=toy_config())
    for _ in range(3):
        a.train_step()
    a.save_checkpoint()
    next_a = a.train_step()
    run = tmp_path / "run"
    (run / "checkpoint").rename(run / ".checkpoint.old.4242")  # exactly what the crash leaves
    b = Distiller(replace(cfg, resume=True), text_encoder=enc)
    assert b.step == 3 and (run / "checkpoint").is_dir() and not (run / ".checkpoint.old.4242").exists()
    assert b.train_step() == next_a


CRASH_SCRIPT = """
import os, sys, torch
from spatialreward.student import checkpoint as ckpt

out = sys.argv[1]
state = {"w": torch.arange(4.0)}
def save(step):
    ckpt.save_training_checkpoint(out, model_state=state, student_config={"step": step}, optimizer_state={},
                                  trainer_state={"step": step, "elapsed_seconds": 0.0})
save(1)
real_replace = os.replace
def replace(src, dst):
    if os.path.basename(str(src)).startswith(ckpt.NEW_PREFIX):
        os._exit(3)  # a hard crash (no handler runs) between the two renames
    real_replace(src, dst)
ckpt.os.replace = replace
save(2)
"""


def test_a_hard_crash_mid_swap_leaves_a_recoverable_checkpoint(tmp_path):
    import os
    import subprocess
    import sys

    from spatialreward.student import checkpoint as ckpt

    script = tmp_path / "crash.py"
    script.write_text(CRASH_SCRIPT)
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, str(script), str(out)], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 3, proc.stderr[-2000:]
    assert not (out / "checkpoint").exists()
    leftovers = sorted(p.name.split(".")[2] for p in ckpt.swap_leftovers(out))
    assert leftovers == ["new", "old"]  # both whole: step 1 renamed away, step 2 built but not yet renamed in
    found = ckpt.find_checkpoint(out)
    assert found == out / "checkpoint"
    assert ckpt.load_training_checkpoint(found)["trainer_state"]["step"] == 2  # the newest whole one
    assert ckpt.swap_leftovers(out)[0].name.startswith(ckpt.OLD_PREFIX)  # the old one stays until the next save

    # With only the old folder left (the new one lost), that one is recovered.
    shutil_out = tmp_path / "run2"
    shutil_out.mkdir()
    (out / "checkpoint").rename(shutil_out / ".checkpoint.new.x")
    (shutil_out / ".checkpoint.new.x" / "trainer_state.json").unlink()  # not whole: never chosen
    ckpt.swap_leftovers(out)[0].rename(shutil_out / ".checkpoint.old.7")
    assert ckpt.load_training_checkpoint(ckpt.find_checkpoint(shutil_out))["trainer_state"]["step"] == 1


def test_resume_after_a_crash_logs_every_step_once(fake_data, tmp_path, monkeypatch):
    enc = HashingTextEncoder()
    cfg = quick_cfg(fake_data, tmp_path / "run", max_steps=6, save_every_steps=3, eval_every_steps=3)
    a = Distiller(cfg, text_encoder=enc, student_config=toy_config())
    real_step = a.train_step

    def dies_before_step_6():
        if a.step == 5:
            raise KeyboardInterrupt  # steps 4 and 5 are logged but not in the checkpoint (step 3)
        return real_step()

    monkeypatch.setattr(a, "train_step", dies_before_step_6)
    with pytest.raises(KeyboardInterrupt):
        a.train()
    b = Distiller(replace(cfg, resume=True), text_encoder=enc)
    assert b.step == 3
    b.train()
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss/total" in r] == [1, 2, 3, 4, 5, 6]
    assert [r["step"] for r in records if "eval/pairwise_accuracy" in r and not r.get("final")] == [3, 6]
    assert [r["step"] for r in records if r.get("final")] == [6]


def test_cli_rerun_into_an_existing_folder_resumes_or_replaces_explicitly(fake_data, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    import spatialreward.student.text as text
    from spatialreward.cli import app

    monkeypatch.setattr(text, "get_text_encoder", lambda *a, **k: HashingTextEncoder())
    runner = CliRunner()
    out = tmp_path / "run"
    args = ["distill", "--data", str(fake_data), "--out", str(out), "--max-steps", "2", "--img-size", "48",
            "--groups-per-batch", "2", "--no-progress", "--eval-every-minutes", "0"]

    def steps():
        records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        return [r["step"] for r in records if "loss/total" in r], [r["step"] for r in records if r.get("final")]

    res = runner.invoke(app, [*args, "--resume", "--overwrite"])  # nothing to resume yet: starts
    assert res.exit_code == 0, res.output
    assert steps() == ([1], [2])  # the CLI logs step 1 and every 10th
    res = runner.invoke(app, args)  # a plain rerun refuses, naming both ways out (a CLI error, not a traceback)
    assert res.exit_code != 0 and "--resume" in str(res.exception) and "--overwrite" in str(res.exception)
    res = runner.invoke(app, [*args, "--resume", "--overwrite"])  # a finished run: resumes with nothing to do
    assert res.exit_code == 0, res.output
    assert steps() == ([1], [2])
    res = runner.invoke(app, [*args[:5], "--max-steps", "3", *args[7:], "--resume"])  # a longer budget continues
    assert res.exit_code == 0, res.output
    assert steps() == ([1], [3])
    (out / "notes.txt").write_text("mine")
    res = runner.invoke(app, [*args, "--overwrite"])  # replaces the run, keeps what the run did not write
    assert res.exit_code == 0, res.output
    assert steps() == ([1], [2]) and (out / "notes.txt").read_text() == "mine"
    res = runner.invoke(app, [*args[:4], str(tmp_path / "empty"), *args[5:], "--resume"])
    assert res.exit_code != 0 and "nothing to resume" in str(res.exception)
