"""TensorRT engines: the option parsing and folder checks run everywhere; building and running engines needs
TensorRT and a CUDA GPU, so those tests skip with the reason here (no fake `tensorrt` module stands in) and
``bench/gpu_session.sh`` runs them on a GPU box."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch

from spatialreward.export.tensorrt import parse_batch_profile, read_engine_meta

HAVE_TRT = importlib.util.find_spec("tensorrt") is not None
needs_trt_gpu = pytest.mark.skipif(
    not (HAVE_TRT and torch.cuda.is_available()),
    reason="needs TensorRT (pip install tensorrt) and a CUDA GPU; not installable on the CI machine — "
           "bench/gpu_session.sh runs these",
)

TOY = dict(img_size=48, depth=1, embed_dim=32, num_heads=2, cross_heads=2, head_dim=32, mask_subdivision=2)


def test_batch_profile_is_parsed_and_checked():
    assert parse_batch_profile("1,64,256") == (1, 64, 256)
    for bad in ("1,64", "a,b,c", "8,4,16", "0,1,2"):
        with pytest.raises(ValueError, match="--batch"):
            parse_batch_profile(bad)


def test_engine_folder_checks(tmp_path):
    with pytest.raises(FileNotFoundError, match="export tensorrt"):
        read_engine_meta(tmp_path)
    (tmp_path / "engine.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(ValueError, match="is not 'spatialreward-tensorrt'"):
        read_engine_meta(tmp_path)


@pytest.fixture(scope="module")
def engines(tmp_path_factory):
    from spatialreward.export.onnx_export import ExportConfig, export_onnx
    from spatialreward.export.tensorrt import build_engines
    from spatialreward.student.model import Student
    from spatialreward.student.presets import preset_config

    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("trt")
    Student(preset_config("nano", **TOY)).save_pretrained(root / "run")
    onnx_dir = export_onnx(ExportConfig(model=str(root / "run"), out=str(root / "onnx"), max_batch=64))
    cache = root / "timing.cache"
    engine_dir = build_engines(onnx_dir, root / "fp32", precision="fp32", batch=(1, 8, 64), timing_cache=cache)
    assert cache.is_file() and cache.stat().st_size > 0
    return root, onnx_dir, engine_dir


@needs_trt_gpu
def test_tensorrt_fp32_matches_onnxruntime(engines):
    from spatialreward import RewardModel
    from tests.fixtures.students import HashingTextEncoder

    root, onnx_dir, engine_dir = engines
    ref = RewardModel.from_pretrained(onnx_dir, backend="onnxruntime", text_encoder=HashingTextEncoder())
    trt = RewardModel.from_pretrained(engine_dir, backend="tensorrt", device="cuda", text_encoder=HashingTextEncoder())
    images = [torch.randint(0, 256, (3, 48, 48), dtype=torch.uint8).float() / 255 for _ in range(9)]
    a = ref.score(images[:1] * 8, images[1:], ["make it red"] * 8)
    b = trt.score(images[:1] * 8, images[1:], ["make it red"] * 8)
    assert (a.reward - b.reward).abs().max().item() <= 1e-4
    assert (a.subscores - b.subscores).abs().max().item() <= 1e-3
    trt.set_group(images[0], "make it red")
    assert (trt.score_group(images[1:]).reward - a.reward).abs().max().item() <= 1e-4
    with pytest.raises(ValueError, match="exceeds this backend's maximum of 64"):
        trt.backend.encode(torch.zeros(65, 48, 48, 3, dtype=torch.uint8, device="cuda"))


@needs_trt_gpu
def test_tensorrt_cuda_graph_buckets_match_plain_execution(engines):
    from spatialreward.export.tensorrt import TensorRTBackend

    _, _, engine_dir = engines
    plain = TensorRTBackend(engine_dir, device="cuda")
    graphs = TensorRTBackend(engine_dir, device="cuda", cuda_graphs=True)
    images = torch.randint(0, 256, (5, 48, 48, 3), dtype=torch.uint8, device="cuda")
    for a, b in zip(plain.encode(images), graphs.encode(images)):  # 5 rows replayed in the 8-row bucket
        assert torch.allclose(a, b, atol=1e-5)


@needs_trt_gpu
def test_fp16_engine_is_close(engines):
    from spatialreward.export.tensorrt import TensorRTBackend, build_engines, import_tensorrt, trt_major

    root, onnx_dir, engine_dir = engines
    if trt_major(import_tensorrt()) >= 11:
        pytest.skip("TensorRT 11 is strongly typed: fp16 needs an fp16 export (covered by bench/gpu_session.sh)")
    fp16 = build_engines(onnx_dir, root / "fp16", precision="fp16", batch=(1, 8, 64))
    images = torch.randint(0, 256, (4, 48, 48, 3), dtype=torch.uint8, device="cuda")
    a = TensorRTBackend(engine_dir).encode(images)[0]
    b = TensorRTBackend(fp16).encode(images)[0]
    assert (a - b).abs().max().item() < 0.05 * a.abs().max().item()
