"""Self-supervised change pretraining: what the pairs hold out, their targets, a real short run, resume, and
`distill --init-from` starting from its output."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from spatialreward.student.distill import DistillConfig, Distiller
from spatialreward.student.model import Student
from spatialreward.student.presets import preset_config
from spatialreward.student.pretrain import PretrainConfig, Pretrainer, PretrainHeads, make_pair, training_recipe
from spatialreward.synth.failures import ARTIFACT_FAMILIES, DEFAULT_HELDOUT_FAMILIES
from spatialreward.synth.generate import SynthConfig
from tests.fixtures.students import TOY_STUDENT, HashingTextEncoder, make_fake_dataset

torch.set_num_threads(2)


def toy(**overrides):
    return preset_config("nano", **{**TOY_STUDENT, "quality_scale": 2, **overrides})


def test_training_recipe_holds_out_what_the_generalisation_splits_test():
    recipe, heldout = training_recipe()
    synth = SynthConfig()
    assert heldout and not set(heldout) & set(recipe.photos)
    assert not set(DEFAULT_HELDOUT_FAMILIES) & set(recipe.failures.artifacts)
    assert not set(synth.heldout_scene_styles) & set(recipe.scene_styles)
    assert not recipe.eval_pool


def test_pairs_draw_only_training_families_and_their_targets_follow_the_construction():
    recipe, _ = training_recipe()
    rng = np.random.default_rng(0)
    names = list(ARTIFACT_FAMILIES)
    seen = set()
    for _ in range(24):
        p = make_pair(rng, recipe, 96, content_p=0.0, artifact_p=1.0)
        assert p["source"].shape == p["edited"].shape == (96, 96, 3)
        if p["family"]:
            seen.add(p["family_name"])
            assert names[p["family"] - 1] == p["family_name"]
            assert p["artifact"].any()
        else:
            assert not p["artifact"].any()
    assert seen and not seen & set(DEFAULT_HELDOUT_FAMILIES)
    still = make_pair(rng, recipe, 96, content_p=0.0, artifact_p=0.0)  # only the sensor jitter
    assert still["family"] == 0 and still["changed"].mean() < 0.01 and not still["artifact"].any()
    moved = make_pair(rng, recipe, 96, content_p=1.0, artifact_p=0.0)
    assert moved["changed"].any() and not moved["artifact"].any()


def test_heads_need_a_quality_map():
    with pytest.raises(ValueError, match="quality-scale"):
        PretrainHeads(toy(quality_scale=0))


def test_pretrain_runs_resumes_and_distill_starts_from_it(tmp_path):
    cfg = PretrainConfig(out=str(tmp_path / "pre"), max_steps=3, batch_size=4, warmup_steps=1, validation_pairs=8,
                         loader_workers=0, progress=False)
    out = Pretrainer(cfg, toy()).train()
    report = json.loads((out / "pretrain.json").read_text())
    assert report["step"] == 3 and report["validation"]["pairs"] == 8
    assert 0.0 <= report["validation"]["changed_mask_iou"] <= 1.0
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert not lines or all(np.isfinite(json.loads(line)["loss"]) for line in lines)

    more = Pretrainer(replace(cfg, max_steps=5, resume=True), toy())
    assert more.step == 3
    more.train()
    assert json.loads((out / "pretrain.json").read_text())["step"] == 5

    data = make_fake_dataset(tmp_path / "data", groups=6, size=96)
    run_cfg = DistillConfig(data=str(data), out=str(tmp_path / "run"), max_steps=1, groups_per_batch=2,
                            warmup_steps=1, eval_every_minutes=0, progress=False, tensorboard=False,
                            init_from=str(out))
    distiller = Distiller(run_cfg, text_encoder=HashingTextEncoder(), student_config=toy())
    start = Student.from_pretrained(out).state_dict()
    assert all(torch.equal(v, start[k]) for k, v in distiller.model.state_dict().items())
    distiller.train()
    assert json.loads((tmp_path / "run" / "data_report.json").read_text())["init_from"]["tensors"] == len(start)

    with pytest.raises(ValueError, match="quality_scale"):
        Distiller(replace(run_cfg, out=str(tmp_path / "other")), text_encoder=HashingTextEncoder(),
                  student_config=toy(quality_scale=1))


def test_pretrain_cli_refuses_a_student_without_quality_map(tmp_path):
    from typer.testing import CliRunner

    from spatialreward.cli import app

    result = CliRunner().invoke(app, ["pretrain", "--out", str(tmp_path / "p"), "--max-steps", "1",
                                      "--quality-scale", "0"])
    assert result.exit_code != 0 and "quality-scale" in str(result.exception)
    assert not (tmp_path / "p").exists()
