"""The TensorRT-compatibility check (no TensorRT needed): every preset's export has zero findings, a graph with
what TensorRT 10's parser refuses has one finding per problem, and `spatialreward export check` says so.

Fast tests export ``nano`` as is and ``tiny`` / ``small`` at their width but depth 1 and 64 px (their op set and
tensor types depend on neither: blocks repeat, the grid is a number); the full-size exports are ``slow``."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper
from typer.testing import CliRunner

from spatialreward.export.onnx_export import ExportConfig, export_onnx
from spatialreward.export.trt_check import check_export, check_model
from spatialreward.student.model import Student
from spatialreward.student.presets import preset_config

torch.set_num_threads(2)


def _export(tmp_path, preset: str, **overrides):
    torch.manual_seed(0)
    run = tmp_path / f"{preset}-run"
    Student(preset_config(preset, **overrides)).save_pretrained(run)
    return export_onnx(ExportConfig(model=str(run), out=str(tmp_path / f"{preset}-onnx")), log=lambda *_: None)


@pytest.fixture(scope="module")
def nano_export(tmp_path_factory):
    return _export(tmp_path_factory.mktemp("nano"), "nano")


def test_nano_export_has_zero_findings_and_matches_torch(nano_export):
    import skimage.data

    from spatialreward import RewardModel
    from spatialreward.synth import make_group
    from tests.fixtures.students import HashingTextEncoder

    assert check_export(nano_export) == []
    group = make_group(np.random.default_rng(1), skimage.data.chelsea(), size=224, candidates=4)
    editeds = [c.image for c in group.candidates]
    ref = RewardModel.from_pretrained(nano_export.parent / "nano-run", text_encoder=HashingTextEncoder()).score(
        [group.source] * 4, editeds, [group.instruction] * 4)
    got = RewardModel.from_pretrained(nano_export, backend="onnxruntime", text_encoder=HashingTextEncoder()).score(
        [group.source] * 4, editeds, [group.instruction] * 4)
    assert (got.reward - ref.reward).abs().max().item() <= 1e-4
    assert (got.subscores - ref.subscores).abs().max().item() <= 1e-3
    inter = (got.edit_mask & ref.edit_mask).flatten(1).sum(1).float()
    union = (got.edit_mask | ref.edit_mask).flatten(1).sum(1).float()
    assert torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union)).min().item() >= 0.99


@pytest.mark.parametrize("preset", ["tiny", "small"])
def test_tiny_and_small_exports_have_zero_findings(tmp_path, preset):
    assert check_export(_export(tmp_path, preset, depth=1, img_size=64)) == []


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["tiny", "small"])
def test_full_size_exports_have_zero_findings(tmp_path, preset):
    assert check_export(_export(tmp_path, preset)) == []


def _bad_model() -> onnx.ModelProto:
    """One node per rule: each must produce exactly one finding naming it."""
    f = TensorProto.FLOAT
    nodes = [
        helper.make_node("NonZero", ["x"], ["nz"], name="nonzero"),
        helper.make_node("Unique", ["x"], ["uq"], name="unique"),
        helper.make_node("LayerNormalization", ["x", "scale", "bias"], ["ln", "ln_mean", "ln_inv"], name="ln3"),
        helper.make_node("RoiAlign", ["fmap", "rois", "bidx"], ["roi"], name="roi_no_mode", output_height=2,
                         output_width=2),
        helper.make_node("Cast", ["x"], ["xd"], name="to_double", to=TensorProto.DOUBLE),
        helper.make_node("Unsqueeze", ["x", "axes_in"], ["xu"], name="dynamic_axes"),
        helper.make_node("FusedMatMul", ["x", "x"], ["fm"], name="ms_op", domain="com.microsoft"),
        helper.make_node("Hardmax", ["x"], ["hm"], name="unlisted"),
    ]
    graph = helper.make_graph(
        nodes, "bad",
        [helper.make_tensor_value_info("x", f, [2, 3]), helper.make_tensor_value_info("fmap", f, [1, 3, 4, 4]),
         helper.make_tensor_value_info("rois", f, [1, 4]),
         helper.make_tensor_value_info("bidx", TensorProto.INT64, [1]),
         helper.make_tensor_value_info("axes_in", TensorProto.INT64, [1])],
        [helper.make_tensor_value_info(n, f, None) for n in ("ln", "roi", "xu", "hm")]
        + [helper.make_tensor_value_info(n, t, None) for n, t in (("nz", TensorProto.INT64), ("uq", f),
                                                                    ("xd", TensorProto.DOUBLE), ("fm", f))],
        initializer=[helper.make_tensor("scale", f, [3], [1.0] * 3), helper.make_tensor("bias", f, [3], [0.0] * 3)],
    )
    opsets = [helper.make_opsetid("", 18), helper.make_opsetid("com.microsoft", 1)]
    return helper.make_model(graph, opset_imports=opsets)


def test_a_bad_graph_gets_one_finding_per_problem():
    findings = check_model(_bad_model(), "bad.onnx")
    by_node = {f.node: f.problem for f in findings}
    assert "data-dependent" in by_node["nonzero"]
    assert "not supported" in by_node["unique"]
    assert "only the first output" in by_node["ln3"]
    assert "coordinate_transformation_mode" in by_node["roi_no_mode"]
    assert "DOUBLE" in by_node["to_double"]
    assert "must be a constant" in by_node["dynamic_axes"]
    assert "not standard ONNX" in by_node["ms_op"]
    assert "not in the TensorRT-10 support table" in by_node["unlisted"]
    assert any(f.op == "I/O" and "DOUBLE" in f.problem for f in findings)  # a DOUBLE graph output


def test_export_check_command_prints_findings_and_fails(tmp_path, nano_export):
    from spatialreward.cli import app

    bad = tmp_path / "bad-export"
    bad.mkdir()
    onnx.save(_bad_model(), str(bad / "score.onnx"))
    result = CliRunner().invoke(app, ["export", "check", str(bad)])
    assert result.exit_code == 1 and "nonzero" in result.output and "finding(s)" in result.output
    good = CliRunner().invoke(app, ["export", "check", str(nano_export)])
    assert good.exit_code == 0 and "0 finding(s)" in good.output
    empty = CliRunner().invoke(app, ["export", "check", str(tmp_path / "nothing-here")])
    assert empty.exit_code != 0
