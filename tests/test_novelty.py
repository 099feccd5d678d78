"""The novelty check: the fit, its file beside the weights, every backend's output, and the teacher fallback."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch

from spatialreward import RewardModel
from spatialreward.rl import EditScorer, TeacherFallback
from spatialreward.student import checkpoint
from spatialreward.student.model import Student
from spatialreward.student.novelty import (
    NOVELTY_FILE,
    NoveltyDetector,
    fit_novelty,
    fit_student_folder,
    load_novelty,
    save_novelty,
)
from spatialreward.types import EditSample, Judgement
from tests.fixtures.students import HashingTextEncoder, make_fake_dataset, random_images, save_toy_student

torch.set_num_threads(2)


def _gaussian(n: int, dims: tuple[int, int], *, shift: float = 0.0, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    scales = [torch.linspace(0.1, 3.0, d) for d in dims]  # unequal variances: the metric must whiten them
    return {v: torch.randn(n, d, generator=g) * s + shift
            for v, d, s in zip(("instruction", "evidence"), dims, scales)}


def test_fit_calibrates_to_the_quantile_and_flags_a_shift():
    """Novelty 1 is the calibration quantile: about 1 % of new in-distribution draws exceed it, while draws moved
    off the training distribution (along its narrowest direction, where a plain distance would not see it) do."""
    dims = (16, 24)
    det = fit_novelty(_gaussian(4000, dims, seed=0), _gaussian(2000, dims, seed=1), quantile=0.99)
    fresh = det(*_gaussian(4000, dims, seed=2).values())
    assert fresh.shape == (4000, 2)
    assert 0.003 <= (fresh > 1).float().mean().item() <= 0.02
    inst, evid = _gaussian(500, dims, seed=3).values()
    evid[:, 0] += 2.0  # 20 sd along the narrowest evidence direction, 0.67 sd of the widest
    moved = det(inst, evid)
    assert (moved[:, 1] > 1).float().mean().item() > 0.95
    assert (moved[:, 0] > 1).float().mean().item() < 0.05  # the instruction view did not move
    assert det.record["fit_edits"] == 4000 and det.record["dims"] == {"instruction": 16, "evidence": 24}


def test_fit_rejects_what_it_cannot_use():
    dims = (4, 6)
    with pytest.raises(ValueError, match="at least 50"):
        fit_novelty(_gaussian(20, dims), _gaussian(20, dims))
    with pytest.raises(ValueError, match="quantile"):
        fit_novelty(_gaussian(100, dims), _gaussian(20, dims), quantile=1.0)
    bad = _gaussian(100, dims)
    bad["evidence"][3, 2] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        fit_novelty(bad, _gaussian(20, dims))
    with pytest.raises(ValueError, match="line up"):
        fit_novelty(_gaussian(100, dims), _gaussian(20, (4, 5)))
    with pytest.raises(ValueError, match="differ"):
        fit_novelty(_gaussian(100, dims), {"instruction": _gaussian(20, dims)["instruction"]})
    with pytest.raises(ValueError, match="one of"):
        NoveltyDetector({"colour": 3})


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """A toy student folder with a novelty fit on the fake dataset, and that dataset."""
    root = tmp_path_factory.mktemp("novelty")
    data = make_fake_dataset(root / "data", groups=16, size=48)
    run = save_toy_student(root / "run", pixel_stats=True)
    record = fit_student_folder(run, data, fit_groups=100, calibration_groups=100, text_encoder=HashingTextEncoder(),
                                progress=False, log_fn=lambda *_: None)
    return run, data, record


def test_fit_writes_a_file_the_student_loads(fitted):
    run, data, record = fitted
    assert record["fit_edits"] == 60 and record["calibration_edits"] == 20  # 12 train, 4 held-out groups of 5
    assert record["weights_sha256"] == json.loads((run / "config.json").read_text())["weights_sha256"]
    student = Student.from_pretrained(run)
    assert isinstance(student.novelty, NoveltyDetector)
    assert not any("novelty" in k for k in student.state_dict())  # the weights file is unchanged by a fit
    src, edt = torch.rand(3, 3, 48, 48), torch.rand(3, 3, 48, 48)
    out = student(src, edt, HashingTextEncoder().encode(["paint the upper-left square red"] * 3))
    assert out.novelty.shape == (3, 2) and torch.isfinite(out.novelty).all()


def test_a_fit_of_other_weights_is_not_used(fitted, tmp_path, caplog):
    """Weights changed after the fit (fine-tuned, re-saved): the stale fit is ignored with the command that refits."""
    import shutil

    run, _, _ = fitted
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    student = Student.from_pretrained(copy)
    with torch.no_grad():
        student.score_head.mlp[1].weight.add_(0.01)
    student.save_pretrained(copy)
    with caplog.at_level(logging.WARNING):
        assert load_novelty(copy) is None
    assert "spatialreward novelty --model" in caplog.text
    assert Student.from_pretrained(copy).novelty is None


def test_a_damaged_or_foreign_file_is_refused(fitted, tmp_path):
    import shutil

    run, _, _ = fitted
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    (copy / NOVELTY_FILE).write_bytes(b"not a safetensors file")
    with pytest.raises(checkpoint.CheckpointError, match="unreadable"):
        load_novelty(copy)
    det = load_novelty(run)
    det.evidence_mean[0] = float("nan")
    save_novelty(det, copy)
    with pytest.raises(checkpoint.CheckpointError, match="non-finite|NaN"):
        load_novelty(copy)


def test_reward_model_reports_novelty_and_flags(fitted):
    """RewardOutput.novelty is the larger view; a failed item's novelty is NaN and never `novel`; an unrelated
    instruction and noise images read as more novel than the training edits."""
    run, data, _ = fitted
    from spatialreward.dataset import read_samples

    rm = RewardModel.from_pretrained(run, text_encoder=HashingTextEncoder())
    assert rm.has_novelty
    samples = read_samples(data, split="heldout")[:5]
    sources = [data / s.source for s in samples] + [b"broken"]
    editeds = [data / s.edited for s in samples] + [data / samples[0].edited]
    texts = [s.instruction for s in samples] + [samples[0].instruction]
    out = rm.score(sources, editeds, texts, on_error="flag")
    assert out.novelty.shape == (6,) and out.novelty_parts.shape == (6, 2)
    assert torch.equal(out.novelty[:5], out.novelty_parts[:5].amax(1))
    assert not out.ok[5] and torch.isnan(out.novelty[5]) and not out.novel[5]
    assert torch.equal(out.novel[:5], out.novelty[:5] > 1.0)
    odd = rm.score(random_images(4, 48, seed=5), random_images(4, 48, seed=6),
                   ["render the whole scene as a watercolour at dusk"] * 4)
    assert odd.novelty_parts[:, 0].min() > out.novelty_parts[:5, 0].max()  # an instruction it never saw
    rm.novelty_threshold = 0.0
    assert rm.score(sources[:2], editeds[:2], texts[:2]).novel.all()
    plain = RewardModel.from_pretrained(save_toy_student(run.parent / "plain", pixel_stats=True),
                                        text_encoder=HashingTextEncoder())
    none = plain.score(sources[:2], editeds[:2], texts[:2])
    assert not plain.has_novelty and none.novelty is None and not none.novel.any()


def test_onnx_export_carries_novelty_with_parity(fitted, tmp_path):
    from spatialreward.export.onnx_export import ExportConfig, export_onnx
    from spatialreward.export.trt_check import check_export
    from spatialreward.dataset import read_samples

    run, data, _ = fitted
    out = export_onnx(ExportConfig(model=str(run), out=str(tmp_path / "onnx"), max_batch=16), log=lambda *_: None)
    meta = json.loads((out / "export.json").read_text())
    assert list(meta["graphs"]["score"]["outputs"])[-1] == "novelty"
    assert meta["novelty"]["views"] == ["instruction", "evidence"]  # no pixel detail in this toy: no pixels view
    assert check_export(out) == []
    samples = read_samples(data, split="heldout")
    args = ([data / s.source for s in samples], [data / s.edited for s in samples], [s.instruction for s in samples])
    ref = RewardModel.from_pretrained(run, text_encoder=HashingTextEncoder()).score(*args)
    ort = RewardModel.from_pretrained(out, backend="onnxruntime", text_encoder=HashingTextEncoder())
    got = ort.score(*args)
    assert ort.has_novelty
    assert (got.novelty_parts - ref.novelty_parts).abs().max().item() <= 1e-3 * ref.novelty_parts.abs().max().item()
    ort.set_group(args[0][0], args[2][0])
    grouped = ort.score_group(args[1][:5])
    assert (grouped.novelty - ref.novelty[:5]).abs().max().item() <= 1e-3 * ref.novelty.abs().max().item()


def test_cli_fits_and_names_a_bad_folder(fitted, tmp_path):
    from typer.testing import CliRunner

    from spatialreward.cli import app

    _, data, _ = fitted
    result = CliRunner().invoke(app, ["novelty", "--model", str(tmp_path / "nowhere"), "--data", str(data)])
    assert result.exit_code != 0 and "no config.json" in str(result.exception or result.output)


# -- the teacher fallback -----------------------------------------------------------------------------------------


class RecordingTeacher:
    """A `Teacher` of our own protocol: judges from the instruction's last word, records what it was sent."""

    name = "recording"
    prompt_version = "test"

    def __init__(self, fail_on: str = "fail"):
        self.seen: list[EditSample] = []
        self.fail_on = fail_on

    def judge_batch(self, samples, root):
        from PIL import Image

        out = []
        for s in samples:
            self.seen.append(s)
            Image.open(s.source_path(root)).verify()  # the images were written for it
            Image.open(s.edited_path(root)).verify()
            if s.instruction.endswith(self.fail_on):
                out.append(Judgement.failure(s.sample_id, self.name, "failed", "server said 503"))
            else:
                out.append(Judgement.from_subscores(s.sample_id, self.name, [25.0, 25.0, 25.0, 25.0], [[0, 0, 10, 10]]))
        return out


def test_fallback_sends_the_most_novel_within_its_share():
    teacher = RecordingTeacher()
    fallback = TeacherFallback(teacher, max_share=0.5)
    novelty = np.array([0.5, 3.0, 1.5, 2.0, np.nan, 0.9])
    ok = np.array([True, True, True, True, False, True])
    assert fallback.choose(novelty, ok) == [1, 3, 2]
    images = random_images(6, 32)
    texts = [f"edit {i}" for i in range(5)] + ["edit fail"]
    rewards = np.array([0.1, 0.2, 0.3, 0.4, np.nan, 0.6])
    infos = [{"ok": bool(o), "novelty": float(v)} for o, v in zip(ok, novelty)]
    got, got_infos = fallback.apply(images, images, texts, rewards, infos, novelty)
    assert [s.instruction for s in teacher.seen] == ["edit 1", "edit 3", "edit 2"]
    assert got[1] == pytest.approx(1.0) and got_infos[1]["scored_by"] == "teacher"
    assert got_infos[1]["student_reward"] == pytest.approx(0.2)
    assert got[0] == 0.1 and got_infos[0]["scored_by"] == "student"
    assert np.isnan(got[4])  # a failed edit stays failed
    assert np.isnan(rewards[4]) and rewards[1] == 0.2  # the caller's array is not modified


def test_fallback_keeps_the_student_reward_where_the_teacher_fails():
    teacher = RecordingTeacher(fail_on="fail")
    images = random_images(2, 32)
    rewards, infos = np.array([0.3, 0.7]), [{"ok": True}, {"ok": True}]
    got, got_infos = TeacherFallback(teacher, max_share=1.0).apply(
        images, images, ["x fail", "y ok"], rewards, infos, np.array([5.0, 4.0]))
    assert got[0] == 0.3 and got_infos[0]["scored_by"] == "student"
    assert "503" in got_infos[0]["teacher_error"]
    assert got[1] == pytest.approx(1.0)


def test_fallback_without_a_novelty_fit_sends_nothing():
    teacher = RecordingTeacher()
    got, infos = TeacherFallback(teacher).apply([], [], [], np.array([0.5]), [{"ok": True}], None)
    assert teacher.seen == [] and infos[0]["scored_by"] == "student"
    with pytest.raises(TypeError, match="judge_batch"):
        TeacherFallback(object())


def test_edit_scorer_routes_novel_edits_to_the_teacher(fitted):
    run, data, _ = fitted
    rm = RewardModel.from_pretrained(run, text_encoder=HashingTextEncoder())
    teacher = RecordingTeacher()  # threshold 0: every valid edit counts as novel, so the share alone decides
    scorer = EditScorer(reward_model=rm, fallback=TeacherFallback(teacher, max_share=0.25, threshold=0.0))
    images = random_images(8, 48)
    rewards, infos = scorer.score(images[:1] * 8, images, ["paint the upper-left square red"] * 8)
    by = [i["scored_by"] for i in infos]
    assert by.count("teacher") == 2 and len(teacher.seen) == 2
    plain_rewards, _ = EditScorer(reward_model=rm).score(images[:1] * 8, images, ["paint the upper-left square red"] * 8)
    for r, p, b in zip(rewards, plain_rewards, by):
        assert r == (pytest.approx(1.0) if b == "teacher" else pytest.approx(p))
    assert all(i["novelty"] is not None for i in infos)


def test_distill_fits_the_check_after_training(fitted, tmp_path):
    """A finished run holds a current novelty fit (train groups fit, the eval split calibrates); with too few
    edits, or `--novelty-fit-groups 0`, the run finishes without one."""
    from spatialreward.student.distill import DistillConfig, Distiller
    from spatialreward.student.presets import preset_config
    from tests.fixtures.students import TOY_STUDENT

    _, data, _ = fitted
    cfg = dict(data=str(data), max_steps=2, groups_per_batch=2, warmup_steps=1, eval_every_minutes=0,
               save_every_minutes=1e9, progress=False, tensorboard=False)
    toy = preset_config("nano", **TOY_STUDENT)
    run = Distiller(DistillConfig(out=str(tmp_path / "run"), **cfg), text_encoder=HashingTextEncoder(),
                    student_config=toy).train()
    det = load_novelty(run)
    assert det is not None and det.record["fit_edits"] == 60 and det.record["calibration_split"] == "heldout"
    skipped = Distiller(DistillConfig(out=str(tmp_path / "off"), novelty_fit_groups=0, **cfg),
                        text_encoder=HashingTextEncoder(), student_config=toy).train()
    assert not (skipped / NOVELTY_FILE).exists()
    few = Distiller(DistillConfig(out=str(tmp_path / "few"), novelty_fit_groups=4, **cfg),
                    text_encoder=HashingTextEncoder(), student_config=toy).train()
    assert not (few / NOVELTY_FILE).exists() and (few / "model.safetensors").is_file()  # 20 edits: too few


def test_server_answers_carry_novelty_and_a_remote_scorer_routes_on_it(fitted):
    """Through `spatialreward serve`: each row has the same novelty as direct scoring, and an `EditScorer` on the
    server's URL sends the flagged edits to the teacher as the in-process one does."""
    from spatialreward.serving import RewardClient, ServeConfig
    from spatialreward.serving.server import BackgroundServer

    run, _, _ = fitted
    rm = RewardModel.from_pretrained(run, text_encoder=HashingTextEncoder())
    src, edt = random_images(1, 48, seed=1)[0], random_images(4, 48, seed=2)
    texts = ["paint the upper-left square red", "make the sky a watercolour"] * 2
    ref = rm.score([src] * 4, edt, texts)
    cfg = ServeConfig(model="toy", port=0, max_batch=16, max_wait_ms=5)
    with BackgroundServer(cfg, rm) as srv:
        rows = RewardClient(srv.url).score([src] * 4, edt, texts)
        assert np.allclose([r["novelty"] for r in rows], ref.novelty.numpy(), rtol=1e-5)
        import httpx

        metrics = httpx.get(f"{srv.url}/metrics").text
        count = next(line for line in metrics.splitlines() if line.startswith("spatialreward_novelty_count"))
        assert float(count.split()[-1]) == 4  # a drift monitor: the novelty of every scored edit
        teacher = RecordingTeacher()
        scorer = EditScorer(url=srv.url, fallback=TeacherFallback(teacher, max_share=0.5, threshold=0.0))
        _, infos = scorer.score([src] * 4, edt, texts)
    assert [i["scored_by"] for i in infos].count("teacher") == 2
    most = set(np.argsort(-ref.novelty.numpy())[:2].tolist())
    assert {int(s.sample_id.split("-")[1]) for s in teacher.seen} == {0, 1}  # sample ids count the chosen edits
    assert {i for i, info in enumerate(infos) if info["scored_by"] == "teacher"} == most


def test_generalisation_report_measures_the_check(fitted, tmp_path):
    """With a fit, the report flags per split and operation, and simulates the teacher fallback against random
    routing; an operation the run excluded gets AUROCs (novelty, each view, the predicted std)."""
    import shutil

    from spatialreward.student.generalisation import generalisation_report

    run, data, _ = fitted
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    (copy / "distill_config.json").write_text(json.dumps({"exclude_operations": "recolour"}))
    report = generalisation_report(copy, data, tmp_path / "gen.json", text_encoder=HashingTextEncoder(),
                                   progress=False)
    block = report["splits"]["heldout"]["novelty"]
    assert 0.0 <= block["flagged"] <= 1.0 and set(block["flagged_by_view"]) == {"instruction", "evidence"}
    summary = report["novelty"]
    assert summary["unseen_operations"] == ["recolour"] and summary["edits"] == 20
    assert "auroc_unseen_vs_trained" not in summary  # the fake set has no operations to tell apart
    routing = summary["teacher_fallback"]
    assert set(routing) == {"none", "0.05", "0.10", "0.25"}
    assert all(0.0 <= row["pairwise"] <= 1.0 for row in routing.values())
    assert summary["fit"]["weights_sha256"]
    named = generalisation_report(copy, data, tmp_path / "gen2.json", text_encoder=HashingTextEncoder(),
                                  progress=False, unseen_operations=["move", "resize"])
    assert named["novelty"]["unseen_operations"] == ["move", "resize"]  # an override of the run's own exclusions


def test_novelty_summary_aurocs_and_routing_on_known_numbers():
    from spatialreward.student.generalisation import novelty_summary

    target = np.array([0.9, 0.5, 0.1, 0.9, 0.5, 0.1])
    pred = np.array([0.8, 0.6, 0.2, 0.1, 0.5, 0.9])  # group b is ranked backwards
    groups = ["a", "a", "a", "b", "b", "b"]
    ops = ["add", "add", "add", "texture", "texture", "texture"]
    novelty = np.array([[0.2, 0.1], [0.3, 0.2], [0.1, 0.4], [3.0, 0.5], [0.2, 2.0], [0.1, 4.0]])
    std = np.ones(6)
    out = novelty_summary(pred, target, groups, ops, novelty, std, ["texture"], ("instruction", "evidence"))
    assert out["auroc_unseen_vs_trained"]["novelty"] == 1.0 and out["auroc_unseen_vs_trained"]["predicted_std"] == 0.5
    assert out["flagged_unseen"] == 1.0 and out["flagged_trained"] == 0.0
    assert out["teacher_fallback"]["none"]["pairwise"] == 0.5
    assert out["teacher_fallback"]["0.25"]["unseen_pairwise"] is not None
    assert out["teacher_fallback"]["0.25"]["share_of_unseen_routed"] == pytest.approx(2 / 3)  # 2 of 6 edits routed


def test_views_leave_out_the_operations_a_run_never_trained_on(fitted, tmp_path):
    from spatialreward.student.data import load_split
    from spatialreward.student.novelty import collect_views, run_excluded_operations

    run, data, _ = fitted
    student = Student.from_pretrained(run)
    edits = load_split(data, split="train", teacher="oracle", img_size=48, mask_size=(12, 12),
                       text_encoder=HashingTextEncoder(), progress=False)
    first = edits.samples[0].group_id
    for s in edits.samples:
        s.meta["operation"] = "texture" if s.group_id == first else "recolour"
    views = collect_views(student, edits, skip_operations=["texture"])
    assert {v: t.shape for v, t in views.items()} == {"instruction": (55, 32), "evidence": (55, 32)}  # 1 of 12 out
    assert collect_views(student, edits, max_groups=3)["instruction"].shape[0] == 15
    (tmp_path / "distill_config.json").write_text(json.dumps({"exclude_operations": "texture, move"}))
    assert run_excluded_operations(tmp_path) == ["texture", "move"] and run_excluded_operations(data) == []



def test_a_pixel_detail_student_adds_the_pixels_view_on_every_backend(tmp_path):
    """With pixel detail, the weight-free detail summary is a third view: fitted, exported, and ONNX Runtime
    matches torch on all three columns."""
    from spatialreward.export.onnx_export import ExportConfig, export_onnx
    from spatialreward.dataset import read_samples

    data = make_fake_dataset(tmp_path / "data", groups=16, size=96)
    run = save_toy_student(tmp_path / "run", pixel_stats=True, pixel_detail=True, quality_scale=2, quality_dim=0)
    record = fit_student_folder(run, data, text_encoder=HashingTextEncoder(), progress=False, log_fn=lambda *_: None)
    assert record["views"] == ["instruction", "evidence", "pixels"]
    assert record["dims"]["pixels"] == Student.from_pretrained(run).detail_proj.fc1.in_features  # the 3k summary
    rm = RewardModel.from_pretrained(run, text_encoder=HashingTextEncoder())
    assert rm.novelty_views == ("instruction", "evidence", "pixels")
    samples = read_samples(data, split="heldout")
    args = ([data / s.source for s in samples], [data / s.edited for s in samples], [s.instruction for s in samples])
    ref = rm.score(*args)
    assert ref.novelty_parts.shape == (20, 3) and torch.isfinite(ref.novelty_parts).all()
    from spatialreward.export.trt_check import check_export

    out = export_onnx(ExportConfig(model=str(run), out=str(tmp_path / "onnx"), max_batch=16), log=lambda *_: None)
    assert check_export(out) == []
    got = RewardModel.from_pretrained(out, backend="onnxruntime", text_encoder=HashingTextEncoder()).score(*args)
    assert (got.novelty_parts - ref.novelty_parts).abs().max().item() <= 1e-3 * ref.novelty_parts.abs().max().item()
    fit_student_folder(run, data, views=["instruction", "pixels"], text_encoder=HashingTextEncoder(), progress=False,
                       log_fn=lambda *_: None)  # a chosen subset
    assert RewardModel.from_pretrained(run, text_encoder=HashingTextEncoder()).novelty_views == ("instruction", "pixels")
    with pytest.raises(ValueError, match="offers"):
        fit_student_folder(run, data, views=["colour"], text_encoder=HashingTextEncoder(), progress=False)


def test_an_old_format_fit_names_the_refit_and_does_not_block_it(fitted, tmp_path):
    import shutil

    from safetensors.torch import save_file

    run, data, _ = fitted
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    save_file({"x": torch.zeros(1)}, str(copy / NOVELTY_FILE),
              metadata={"format": "spatialreward-novelty", "format_version": "1", "record": "{}"})
    with pytest.raises(checkpoint.CheckpointError, match="refit"):
        Student.from_pretrained(copy)
    assert Student.from_pretrained(copy, novelty=False).novelty is None
    for meta in ({"format": "spatialreward-novelty", "format_version": "two", "record": "{}"},
                 {"format": "spatialreward-novelty", "format_version": "2", "record": "{not json"},
                 {"format": "spatialreward-novelty", "format_version": "2",
                  "record": json.dumps({"dims": {"colour": 3}, "weights_sha256": json.loads(
                      (copy / "config.json").read_text())["weights_sha256"]})}):
        save_file({"x": torch.zeros(1)}, str(copy / NOVELTY_FILE), metadata=meta)
        with pytest.raises(checkpoint.CheckpointError, match="refit"):
            Student.from_pretrained(copy)
    fit_student_folder(copy, data, text_encoder=HashingTextEncoder(), progress=False, log_fn=lambda *_: None)
    assert Student.from_pretrained(copy).novelty is not None
