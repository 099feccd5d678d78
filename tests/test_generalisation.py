"""The generalisation report: correct-vs-kind pair accuracy by hand, then a real (tiny) set, student and CLI run."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from spatialreward.student.generalisation import (HEADLINE, KIND_SUBSCORE, correct_vs, pairwise_by_teacher_gap, pooled,
                                                  split_report, subscore_bias_by_kind, uncertainty_report)
from spatialreward.types import SUBSCORE_NAMES
from spatialreward.synth import GENERALISATION_SPLITS, generate_dataset
from tests.fixtures.students import HashingTextEncoder

torch.set_num_threads(2)


def test_correct_vs_counts_pairs_by_kind():
    kinds = ["correct", "partial", "artifacts", "no_op", "correct", "partial", "artifacts", "no_op"]
    groups = ["a"] * 4 + ["b"] * 4
    target = [0.9, 0.5, 0.6, 0.1, 0.8, 0.8, 0.3, 0.2]  # group b: the partial ties with correct → no pair
    pred = [0.7, 0.6, 0.8, 0.1, 0.5, 0.1, 0.5, 0.2]  # a: partial right, artifacts wrong; b: artifacts tie → wrong
    table = correct_vs(pred, target, groups, kinds, kinds)
    assert table["partial"] == {"accuracy": 1.0, "pairs": 1}
    assert table["artifacts"] == {"accuracy": 0.0, "pairs": 2}
    assert table["no_op"] == {"accuracy": 1.0, "pairs": 2}
    assert "correct" not in table
    assert pooled(table, ("partial", "artifacts")) == {"accuracy": 1 / 3, "pairs": 3}
    assert pooled(table, ("wrong_region",)) == {"accuracy": None, "pairs": 0}


@pytest.fixture(scope="module")
def labelled_generalisation_set(tmp_path_factory):
    from spatialreward.cli import app

    out = tmp_path_factory.mktemp("gen") / "set"
    generate_dataset(out, groups=len(GENERALISATION_SPLITS), seed=4, size=64, workers=1, progress=False,
                     layout="generalisation")
    res = CliRunner().invoke(app, ["label", "--teacher", "oracle", "--data", str(out)])
    assert res.exit_code == 0, res.output
    return out


@pytest.fixture(scope="module")
def toy_student(tmp_path_factory):
    from spatialreward.student.model import Student
    from spatialreward.student.presets import preset_config

    cfg = preset_config("nano", img_size=48, depth=1, embed_dim=32, num_heads=2, cross_heads=2, head_dim=32,
                        mask_subdivision=2, text_dim=HashingTextEncoder().dim)
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("student") / "toy"
    Student(cfg).save_pretrained(out)
    return out


def test_errors_are_located_by_teacher_gap_and_subscore_bias():
    """One group of four: the student swaps only the pair the teacher put 0.01 apart, so the 0–0.02 bin is wrong
    and every other bin right; the sub-score bias is the mean signed error of each kind's edits."""
    target = [0.90, 0.91, 0.50, 0.10]
    pred = [0.95, 0.80, 0.60, 0.20]  # 0.90 above 0.91: the one wrong pair, gap 0.01
    table = pairwise_by_teacher_gap(pred, target, [0, 0, 0, 0])
    assert table["0-0.02"] == {"accuracy": 0.0, "pairs": 1}
    assert table["0.2-1"] == {"accuracy": 1.0, "pairs": 5}  # gaps 0.40, 0.41, 0.80, 0.81, 0.40
    assert all(table[k]["pairs"] == 0 for k in ("0.02-0.05", "0.05-0.1", "0.1-0.2"))
    bias = subscore_bias_by_kind(np.array([[20.0, 25, 25, 25], [24, 25, 25, 25], [10, 25, 25, 25]]),
                                 np.full((3, 4), 24.0), ["correct", "correct", "partial"])
    assert bias["correct"]["edits"] == 2 and bias["correct"][SUBSCORE_NAMES[0]] == pytest.approx(-2.0)
    assert bias["partial"][SUBSCORE_NAMES[0]] == pytest.approx(-14.0) and bias["partial"][SUBSCORE_NAMES[1]] == 1.0


def test_report_covers_every_split(labelled_generalisation_set, toy_student, tmp_path):
    from spatialreward.student.generalisation import generalisation_report

    target = tmp_path / "docs" / "generalisation_toy.json"
    report = generalisation_report(toy_student, labelled_generalisation_set, target,
                                   text_encoder=HashingTextEncoder(), progress=False)
    assert target.is_file() and target.with_suffix(".png").is_file()
    saved = json.loads(target.read_text())
    assert list(saved["splits"]) == list(GENERALISATION_SPLITS) == list(report["summary"])
    for split, block in saved["splits"].items():
        assert set(HEADLINE) <= set(block), split
        assert block["edits"] == 8 and block["pairs"] > 0
        for key in ("pairwise_accuracy", "hard_pairs", "mask_iou_edited_only"):
            assert block[key] is None or 0.0 <= block[key] <= 1.0, (split, key)
        kinds = set(block["per_kind"])
        assert kinds <= {"partial", "no_op", "over_edit", "artifacts", "wrong_attribute", "wrong_region",
                         "global", "region_only", "overdone"}
        assert block["hard_pair_count"] == sum(block["per_kind"].get(k, {"pairs": 0})["pairs"]
                                               for k in ("wrong_attribute", "over_edit", "artifacts"))
        for kind, row in block["per_kind_by_subscore"].items():  # the diagnostic: correct vs kind by one sub-score
            assert kind in KIND_SUBSCORE and row["subscore"] in SUBSCORE_NAMES
            assert row["accuracy"] is None or 0.0 <= row["accuracy"] <= 1.0
        ops = block["per_operation"]  # every group has one operation, every pair lies inside one group
        assert sum(r["groups"] for r in ops.values()) == block["groups"], split
        assert sum(r["pairs"] for r in ops.values()) == block["pairs"], split
        gaps = block["pairwise_by_teacher_gap"]  # every pair falls in exactly one bin of the teacher's gap
        assert sum(row["pairs"] for row in gaps.values()) == block["pairs"], split
        assert set(block["subscore_bias_by_kind"]) <= kinds | {"correct"}
    fams = saved["splits"]["heldout_failures"]["per_failure_family"]
    assert set(fams) <= {"checkerboard", "frame_shift", "second_object", "extra_object", "collateral_patch"}
    assert saved["splits"]["heldout_phrasing"]["phrasings"] == ["terse"]
    with pytest.raises(ValueError, match="no split"):
        generalisation_report(toy_student, labelled_generalisation_set, tmp_path / "x.json", splits=["train"],
                              text_encoder=HashingTextEncoder(), progress=False)


def test_cli_report(labelled_generalisation_set, toy_student, tmp_path, monkeypatch):
    import spatialreward.student.text as text
    from spatialreward.cli import app
    from spatialreward.cli._errors import CLIError

    monkeypatch.setattr(text, "get_text_encoder", lambda *a, **k: HashingTextEncoder())
    runner = CliRunner()
    target = tmp_path / "g.json"
    res = runner.invoke(app, ["eval", "--model", str(toy_student), "--data", str(labelled_generalisation_set),
                              "--report", "generalisation", "--out", str(target), "--json"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.output[res.output.index("{"):])
    assert set(summary) == set(GENERALISATION_SPLITS) and target.is_file()
    unc = json.loads(target.read_text())["splits"]["in_distribution"]["uncertainty"]
    assert 0 <= unc["coverage_1sd"] <= unc["coverage_2sd"] <= 1 and unc["mean_std"] > 0 and unc["per_operation"]
    res = runner.invoke(app, ["eval", "--model", str(toy_student), "--data", str(labelled_generalisation_set),
                              "--report", "fancy"])
    assert isinstance(res.exception, CLIError) and "--report" in str(res.exception)
    assert np.isfinite(summary["in_distribution"]["pairwise_accuracy"])


def test_by_subscore_diagnostic_separates_seeing_a_failure_from_ranking_it():
    """A student whose artifacts sub-score is exactly right but whose reward is swamped elsewhere: the per-kind
    reward accuracy is 0 and the by-sub-score accuracy is 1."""
    from types import SimpleNamespace

    kinds = ["correct", "artifacts"] * 2
    samples = [SimpleNamespace(group_id=g, meta={"kind": k}) for g, k in zip("aabb", kinds)]
    teacher = torch.tensor([[20, 20, 20, 22], [20, 20, 20, 10]] * 2, dtype=torch.float32)
    data = SimpleNamespace(samples=samples, reward=torch.tensor([0.8, 0.7] * 2), subscores=teacher)
    pred_subscores = teacher.numpy().copy()
    pred_subscores[1::2, 0] += 5  # instruction following wrongly higher on the artifact candidates
    block = split_report(np.array([0.7, 0.8] * 2), {}, data, pred_subscores)
    assert block["per_kind"]["artifacts"] == {"accuracy": 0.0, "pairs": 2}
    assert block["per_kind_by_subscore"]["artifacts"] == {"accuracy": 1.0, "pairs": 2, "subscore": "artifacts"}


def test_an_excluded_operation_is_never_loaded_for_training(labelled_generalisation_set):
    """``load_split(exclude_operations=...)`` (distill's ``--exclude-operations``) drops every edit of those
    operations and counts them; the other operations load as before."""
    from spatialreward.dataset import read_samples
    from spatialreward.student.data import load_split

    ops = [str(s.meta["operation"]) for s in read_samples(labelled_generalisation_set)]
    held_out = max(set(ops), key=ops.count)
    kw = dict(split=None, teacher="oracle", img_size=64, mask_size=(16, 16), text_encoder=HashingTextEncoder(),
              progress=False)
    full = load_split(labelled_generalisation_set, **kw)
    data = load_split(labelled_generalisation_set, exclude_operations=(held_out,), **kw)
    assert {s.meta["operation"] for s in data.samples} == set(ops) - {held_out}
    assert data.report.skipped["held-out operation"] == len(full) - len(data) == ops.count(held_out)


def test_uncertainty_report_measures_coverage_and_whether_std_tracks_error():
    target = np.full((6, 4), 20.0)
    err = np.array([0.5, 1.0, 3.0, 0.2, 4.0, 8.0])[:, None] * np.ones((1, 4))
    std = np.array([1.0, 1.0, 1.0, 0.5, 3.0, 3.0])[:, None] * np.ones((1, 4))  # covers 3 of 6 at 1 sd, 4 at 2 sd
    ops = ["recolour"] * 4 + ["texture"] * 2
    block = uncertainty_report(target + err, std, target, ops)
    assert block["coverage_1sd"] == pytest.approx(3 / 6) and block["coverage_2sd"] == pytest.approx(4 / 6)
    assert block["error_spearman"] > 0.5  # larger std where the error is larger
    assert block["per_operation"]["texture"] == {"edits": 2, "mean_std": 3.0, "mean_abs_error": 6.0}
    assert block["per_operation"]["recolour"]["mean_std"] == pytest.approx(0.875)
    shuffled = uncertainty_report(target + err, std[::-1], target, ops)  # std no longer tracks the error
    assert shuffled["error_spearman"] < block["error_spearman"]
