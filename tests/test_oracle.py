"""The oracle teacher: exact labels from synthetic truth, failures per sample, and the ordering properties the
synthetic benchmark promises, checked on every group of a held-out split (40 groups at 96 px)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from spatialreward.dataset import group_samples, read_label_shards, read_samples, write_label_shard
from spatialreward.formula import reward_from_subscores
from spatialreward.synth import generate_dataset
from spatialreward.teacher.base import Teacher
from spatialreward.teacher.oracle import OracleTeacher
from spatialreward.types import EditSample

IF, CONS, NAT, ART = range(4)


@pytest.fixture(scope="module")
def heldout_set(tmp_path_factory) -> Path:
    # 50 groups with 80 % held out → exactly 40 held-out groups; 96 px keeps it to a few seconds.
    out = tmp_path_factory.mktemp("oracle") / "set"
    generate_dataset(out, groups=50, seed=21, size=96, heldout_fraction=0.8, workers=1, progress=False)
    return out


@pytest.fixture(scope="module")
def heldout_labels(heldout_set):
    samples = read_samples(heldout_set, split="heldout", strict=True)
    judgements = OracleTeacher().judge_batch(samples, heldout_set)
    return samples, {j.sample_id: j for j in judgements}


def test_is_a_teacher():
    oracle = OracleTeacher()
    assert isinstance(oracle, Teacher)
    assert (oracle.name, oracle.prompt_version) == ("oracle", "oracle-v1")


def test_labels_are_the_truth(heldout_labels, tmp_path):
    samples, labels = heldout_labels
    for s in samples:
        j = labels[s.sample_id]
        assert j.ok and j.teacher == "oracle" and j.prompt_version == "oracle-v1"
        assert j.subscores == s.meta["truth"]["subscores"]
        assert j.boxes == s.meta["truth"]["boxes"]
        assert j.reward == pytest.approx(float(reward_from_subscores(j.subscores)), abs=1e-9)
        assert j.reasoning
        if j.boxes:
            assert "<|bbox_0|>" in j.reasoning
            assert f"<|bbox_{len(j.boxes)}|>" not in j.reasoning
    # Labels survive a shard round trip (the label pipeline's format).
    shard = write_label_shard(tmp_path / "part-00000.jsonl", list(labels.values()))
    assert [j.sample_id for j in read_label_shards(shard.parent, strict=True)] == list(labels)


def test_heldout_split_has_forty_groups(heldout_labels):
    samples, _ = heldout_labels
    assert len(group_samples(samples)) == 40


def _per_group(samples, labels):
    for group in group_samples(samples).values():
        yield {s.meta["kind"]: labels[s.sample_id].subscores for s in group}


def test_instruction_following_orders_correct_partial_noop(heldout_labels):
    samples, labels = heldout_labels
    groups = list(_per_group(samples, labels))
    bad = [(g["correct"][IF], g["partial"][IF], g["no_op"][IF]) for g in groups
           if not g["correct"][IF] > g["partial"][IF] > g["no_op"][IF]]
    assert not bad, f"{len(bad)} of {len(groups)} groups break correct > partial > no-op: {bad[:3]}"
    means = {k: np.mean([g[k][IF] for g in groups]) for k in ("correct", "partial", "no_op")}
    assert means["correct"] > means["partial"] + 3 > means["no_op"] + 6, means


def test_over_edits_lose_consistency(heldout_labels):
    samples, labels = heldout_labels
    groups = list(_per_group(samples, labels))
    bad = [(g["over_edit"][CONS], g["correct"][CONS]) for g in groups if not g["over_edit"][CONS] < g["correct"][CONS]]
    assert not bad, f"{len(bad)} of {len(groups)} groups: over-edit consistency not below correct: {bad[:3]}"


def test_artifacts_lose_artifact_score(heldout_labels):
    samples, labels = heldout_labels
    groups = list(_per_group(samples, labels))
    bad = [(g["artifacts"][ART], g["correct"][ART]) for g in groups if not g["artifacts"][ART] < g["correct"][ART]]
    assert not bad, f"{len(bad)} of {len(groups)} groups: artifact score not below correct: {bad[:3]}"


def test_correct_edits_win_most_groups(heldout_labels):
    samples, labels = heldout_labels
    wins = total = 0
    for group in group_samples(samples).values():
        best = max(group, key=lambda s: labels[s.sample_id].reward)
        wins += best.meta["kind"] == "correct"
        total += 1
    assert wins >= 0.75 * total, f"correct edits rank first in only {wins} of {total} groups"


def _sample(sample_id: str, meta: dict) -> EditSample:
    return EditSample(sample_id=sample_id, source="s.png", edited="e.png", instruction="x", group_id="g", meta=meta)


def test_bad_samples_fail_alone():
    good_meta = {"kind": "correct", "operation": "recolour", "target": "the ball in the centre", "attribute": "red",
                 "truth": {"boxes": [[100, 100, 400, 500]], "subscores": [20, 15, 22, 18]}}
    batch = [
        _sample("ok", good_meta),
        _sample("no-truth", {"kind": "correct"}),
        _sample("three-scores", {"truth": {"boxes": [], "subscores": [1, 2, 3]}}),
        _sample("out-of-range", {"truth": {"boxes": [], "subscores": [30, 2, 3, 4]}}),
        _sample("bad-box", {"truth": {"boxes": [[0, 0, 2000, 10]], "subscores": [1, 2, 3, 4]}}),
        _sample("not-numbers", {"truth": {"boxes": [], "subscores": ["a", 2, 3, 4]}}),
    ]
    out = OracleTeacher().judge_batch(batch, ".")
    assert [j.sample_id for j in out] == [s.sample_id for s in batch]
    assert out[0].ok and out[0].reward == pytest.approx(0.73534, abs=1e-5)
    assert "<|bbox_0|>" in out[0].reasoning and "red" in out[0].reasoning
    for j in out[1:]:
        assert j.status == "failed" and j.reward is None
        assert j.sample_id in j.error, j.error
    assert "meta['truth']" in out[1].error and "4" in out[2].error and "0–25" in out[3].error
