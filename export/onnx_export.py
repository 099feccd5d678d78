"""`spatialreward export onnx`: a trained student → ``encode.onnx`` + ``score.onnx`` + ``export.json``.

Layout of an export folder (written to a temporary sibling folder and renamed, so a crash leaves nothing half
written)::

    encode.onnx    images uint8 [B, S, S, 3] -> tokens [B, P+N, C] (+ pixels)            (`graphs.EncodeGraph`)
    score.onnx     source + edited encodings + text_embedding [B, 384] -> sub-scores, ...  (`graphs.ScoreGraph`)
    text.onnx      input_ids / attention_mask int64 [B, T] -> text_embedding [B, 384]       (`text_export`)
    tokenizer.json the instruction encoder's tokenizer (run with the settings export.json records)
    export.json    shapes, opset, precision, batch profile, the checkpoint's sha256, reward weights, versions,
                   and the text encoder's files with their sha256

``text.onnx`` is the frozen MiniLM the student was trained against, mean pooling and L2 normalisation inside, so
ONNX Runtime embeds instructions with it and the ``tokenizers`` library (no sentence-transformers at scoring
time); it is always fp32. ``--no-text-encoder`` leaves it out (then, as in older exports, embeddings come from
the torch encoder in `student.text`, or are passed precomputed to ``RewardModel.score_tensors``).

Export goes through ``torch.onnx.export(dynamo=True)`` with the kernels' ONNX translations
(`spatialreward.kernels.onnx`); each graph then passes ``onnx.checker`` (full check) and strict shape inference,
is saved with the inferred shapes, and every ``RoiAlign`` node is made to state its
``coordinate_transformation_mode`` (ONNX Runtime reads a missing one as ``output_half_pixel``, the legacy
torchvision mode, which is not what an ``aligned=True`` model was trained with).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import shutil
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

# torch and the graphs load inside the functions: the CLI imports `ExportConfig` from here for `--help`.

EXPORT_FILE = "export.json"
EXPORT_FORMAT = "spatialreward-export"
EXPORT_FORMAT_VERSION = 1
ENCODE_FILE, SCORE_FILE = "encode.onnx", "score.onnx"
STUDENT_WEIGHTS, STUDENT_CONFIG = "model.safetensors", "config.json"


class ExportError(ValueError):
    """An export that cannot be made or used; the message names the folder, the problem and the fix."""


@dataclass
class ExportConfig:
    """Options of ``spatialreward export onnx`` (the CLI's options are these fields).

    Source: ``model``. Graph: ``opset``, ``precision``. Batch profile: ``max_batch`` (the dynamic batch axis is
    declared 1…max_batch; TensorRT engines built from the export default to the same maximum).
    """

    model: str = field(default="", metadata={"help": "student folder: a training run (OUT of distill) or model dir"})
    out: str = field(default="", metadata={"help": "export folder to write (must not exist unless overwrite)"})
    opset: int = field(default=18, metadata={"help": "ONNX opset (>= 16 for RoiAlign's coordinate mode)"})
    precision: Literal["fp32", "fp16"] = field(
        default="fp32", metadata={"help": "weights and activations of the graphs; outputs are always fp32"}
    )
    max_batch: int = field(default=1024, metadata={"help": "largest batch (images per encode call, edits per score)"})
    overwrite: bool = field(default=False, metadata={"help": "replace an existing export folder"})
    text_encoder: bool = field(
        default=True, metadata={"help": "also export the instruction encoder (text.onnx + tokenizer.json, fp32)"}
    )

    def __post_init__(self) -> None:
        if self.opset < 16:
            raise ValueError(f"opset={self.opset}: RoiAlign's coordinate_transformation_mode needs opset >= 16")
        if self.precision not in ("fp32", "fp16"):
            raise ValueError(f"precision={self.precision!r}; use 'fp32' or 'fp16' (bf16: build a TensorRT engine)")
        if self.max_batch < 2:
            raise ValueError(f"max_batch={self.max_batch} must be >= 2 (the batch axis stays dynamic)")


# ---------------------------------------------------------------------------------------------------------------
# Finding and hashing the student
# ---------------------------------------------------------------------------------------------------------------


def resolve_student_dir(path: str | Path) -> Path:
    """A folder with the student's ``model.safetensors`` + ``config.json``: the folder itself (a finished run or
    a ``save_pretrained`` folder) or its ``checkpoint/`` (a run still training). Errors say what was found."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such folder (pass the OUT folder of `spatialreward distill`)")
    if not path.is_dir():
        raise ExportError(f"{path}: is a file; pass the student folder that holds {STUDENT_WEIGHTS}")
    for candidate in (path, path / "checkpoint"):
        if (candidate / STUDENT_WEIGHTS).is_file() and (candidate / STUDENT_CONFIG).is_file():
            meta = _read_json(candidate / STUDENT_CONFIG)
            if meta.get("format") != "spatialreward-student":
                raise ExportError(
                    f"{candidate / STUDENT_CONFIG}: format {meta.get('format')!r} is not a spatialreward student "
                    "(was this folder written by `spatialreward distill`?)"
                )
            return candidate
    if (path / EXPORT_FILE).is_file():
        raise ExportError(f"{path}: is an export folder already; pass the training run or model folder it came from")
    raise ExportError(
        f"{path}: no {STUDENT_WEIGHTS} + {STUDENT_CONFIG} here or in {path / 'checkpoint'} "
        "(pass the OUT folder of `spatialreward distill`)"
    )


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _read_json(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ExportError(f"{path}: unreadable JSON ({exc})") from exc


# ---------------------------------------------------------------------------------------------------------------
# Export
# ---------------------------------------------------------------------------------------------------------------


def _dtype_name(t) -> str:
    return str(t.dtype).removeprefix("torch.")


def _io_spec(names, tensors, batch_dim: str = "batch") -> dict[str, dict[str, Any]]:
    return {n: {"dtype": _dtype_name(t), "shape": [batch_dim, *t.shape[1:]]} for n, t in zip(names, tensors)}


def _export_graph(module, args, path: Path, *, input_names, output_names, opset: int, max_batch: int) -> None:
    import onnx
    import torch

    from spatialreward.export.translations import export_translation_table

    batch = torch.export.Dim("batch", min=1, max=max_batch)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's deprecation chatter is not the user's business
        program = torch.onnx.export(
            module, args, dynamo=True, opset_version=opset, custom_translation_table=export_translation_table(),
            dynamic_shapes=_batch_dims(module, args, batch), input_names=list(input_names),
            output_names=list(output_names), verbose=False,
        )
    program.save(str(path))
    model = onnx.load(str(path))
    set_roialign_modes(model)
    read_shapes_after_cast(model)
    onnx.checker.check_model(model, full_check=True)
    model = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True, data_prop=True)
    onnx.save(model, str(path))


def _batch_dims(module, args, batch):
    """Axis 0 of every input is the batch. `ScoreGraph.forward(*inputs)` takes its inputs as one var-positional
    argument, which torch.export sees as a single (nested) element."""
    import inspect

    dims = tuple({0: batch} for _ in args)
    params = inspect.signature(module.forward).parameters.values()
    return (dims,) if any(p.kind is p.VAR_POSITIONAL for p in params) else dims


def set_roialign_modes(model) -> int:
    """Write ``coordinate_transformation_mode`` on every RoiAlign node that lacks it (with ONNX's default,
    ``output_half_pixel``, so the graph means the same). Returns how many nodes were patched."""
    import onnx

    patched = 0
    for node in _all_nodes(model.graph):
        if node.op_type == "RoiAlign" and not any(a.name == "coordinate_transformation_mode" for a in node.attribute):
            node.attribute.append(onnx.helper.make_attribute("coordinate_transformation_mode", "output_half_pixel"))
            patched += 1
    return patched


def read_shapes_after_cast(model) -> int:
    """A ``Shape`` of a uint8 graph input reads the input's ``Cast`` instead (same shape). TensorRT takes uint8
    only at the network boundary and through Cast, and the exporter reads the batch size off the raw ``images``.
    Returns how many nodes were rerouted."""
    import onnx

    uint8_inputs = {vi.name for vi in model.graph.input if vi.type.tensor_type.elem_type == onnx.TensorProto.UINT8}
    cast_of = {n.input[0]: n.output[0] for n in model.graph.node if n.op_type == "Cast" and n.input[0] in uint8_inputs}
    rerouted = 0
    for node in model.graph.node:
        if node.op_type == "Shape" and node.input[0] in cast_of:
            node.input[0] = cast_of[node.input[0]]
            rerouted += 1
    _sort_topologically(model.graph)
    return rerouted


def _sort_topologically(graph) -> None:
    """Reorder ``graph.node`` so every node comes after the producers of its inputs (ONNX requires it)."""
    ready = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    pending, ordered = list(graph.node), []
    while pending:
        rest = []
        for node in pending:
            if all(i in ready for i in node.input):
                ordered.append(node)
                ready.update(node.output)
            else:
                rest.append(node)
        if len(rest) == len(pending):
            raise ExportError(f"graph {graph.name!r} has a cycle or an unproduced input near {rest[0].op_type}")
        pending = rest
    del graph.node[:]
    graph.node.extend(ordered)


def _all_nodes(graph):
    """Nodes of ``graph`` and of every subgraph (If / Loop bodies) and local function."""
    for node in graph.node:
        yield node
        for attr in node.attribute:
            if attr.g is not None and len(attr.g.node):
                yield from _all_nodes(attr.g)
            for sub in attr.graphs:
                yield from _all_nodes(sub)


def export_onnx(cfg: ExportConfig, *, student=None, log=print) -> Path:
    """Write the export folder ``cfg.out`` (see the module docstring). ``student`` skips loading ``cfg.model``
    (tests); its hash is then of its current weights. Returns the folder."""
    import onnx
    import torch

    import spatialreward
    from spatialreward.export.graphs import (
        ENCODE_INPUTS,
        EncodeGraph,
        ScoreGraph,
        encoding_names,
        has_novelty,
        score_input_names,
        score_output_names,
        student_parts,
    )
    from spatialreward.student import Student

    out = Path(cfg.out)
    if not cfg.out:
        raise ExportError("no --out folder given")
    if out.exists() and not cfg.overwrite:
        raise ExportError(f"{out}: exists; pass --overwrite to replace it or choose another --out")
    source_hash, source = None, None
    if student is None:
        source = resolve_student_dir(cfg.model)
        student = Student.from_pretrained(source, map_location="cpu")
        source_hash = sha256_file(source / STUDENT_WEIGHTS)
    else:
        digest = hashlib.sha256()
        for name, tensor in sorted(student.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
        source_hash = digest.hexdigest()
    student = student.to("cpu").eval()
    if cfg.precision == "fp16":
        student = student.half()
    st_cfg = student.cfg
    side = st_cfg.input_size
    pixel_stats, quality = student_parts(student)
    score_outputs = score_output_names(has_novelty(student))
    text_dim = st_cfg.text_dim

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        encode, score = EncodeGraph(student).eval(), ScoreGraph(student).eval()
        images = torch.randint(0, 256, (2, side, side, 3), dtype=torch.uint8)
        with torch.no_grad():
            enc = encode(images)
        enc = enc if isinstance(enc, tuple) else (enc,)
        score_args = (*(t[:1].expand(2, *t.shape[1:]).contiguous() for t in enc), *enc,
                      torch.randn(2, text_dim))
        with torch.no_grad():
            outs = score(*score_args)
        log(f"exporting {ENCODE_FILE} ({side}×{side} px, {cfg.precision}, opset {cfg.opset}) …")
        _export_graph(encode, (images,), tmp / ENCODE_FILE, input_names=ENCODE_INPUTS,
                      output_names=encoding_names(pixel_stats, quality), opset=cfg.opset, max_batch=cfg.max_batch)
        log(f"exporting {SCORE_FILE} …")
        _export_graph(score, score_args, tmp / SCORE_FILE, input_names=score_input_names(pixel_stats, quality),
                      output_names=score_outputs, opset=cfg.opset, max_batch=cfg.max_batch)
        text_entry = {
            "name": st_cfg.text_encoder, "dim": text_dim, "exported": False,
            "note": "instruction embeddings come from the frozen torch sentence encoder, cached per instruction",
        }
        if cfg.text_encoder:
            text_entry = _export_text(tmp, st_cfg, opset=cfg.opset, log=log)
        meta = {
            "format": EXPORT_FORMAT,
            "format_version": EXPORT_FORMAT_VERSION,
            "package_version": spatialreward.__version__,
            "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "source": {"path": str(source) if source else None, "weights_sha256": source_hash},
            "opset": cfg.opset,
            "precision": cfg.precision,
            "batch": {"min": 1, "max": cfg.max_batch},
            "image_size": side,
            "pixel_stats": pixel_stats,
            "quality_map": quality,
            "reward_weights": dict(st_cfg.reward_weights),  # baked into score.onnx's reward output
            "text_encoder": text_entry,
            "novelty": dict(student.novelty.record) if has_novelty(student) else None,  # score.onnx's 7th output
            "graphs": {
                "encode": {"file": ENCODE_FILE, "inputs": _io_spec(ENCODE_INPUTS, (images,)),
                           "outputs": _io_spec(encoding_names(pixel_stats, quality), enc)},
                "score": {"file": SCORE_FILE, "inputs": _io_spec(score_input_names(pixel_stats, quality), score_args),
                          "outputs": _io_spec(score_outputs, outs)},
            },
            "student": asdict(st_cfg),
            "versions": {"torch": torch.__version__, "onnx": onnx.__version__},
        }
        (tmp / EXPORT_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        _swap_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log(f"wrote {out} ({', '.join(sorted(p.name for p in out.iterdir()))})")
    return out


def _export_text(tmp: Path, st_cfg, *, opset: int, log) -> dict[str, Any]:
    """``text.onnx`` + ``tokenizer.json`` into ``tmp``; the ``export.json`` entry. Errors name the way out."""
    from spatialreward.export.text_export import export_text_encoder
    from spatialreward.student.text import MINILM_DIM, MINILM_NAME

    if st_cfg.text_encoder != MINILM_NAME or st_cfg.text_dim != MINILM_DIM:
        raise ExportError(
            f"the student was trained with text encoder {st_cfg.text_encoder!r} ({st_cfg.text_dim} wide); only "
            f"{MINILM_NAME!r} ({MINILM_DIM}) can be exported as text.onnx: pass --no-text-encoder"
        )
    try:
        return export_text_encoder(tmp, opset=opset, log=log)
    except ImportError as exc:
        raise ExportError(f"exporting text.onnx: {exc} (or pass --no-text-encoder to leave it out)") from exc


def _swap_into_place(tmp: Path, out: Path) -> None:
    """``tmp`` becomes ``out``; an existing ``out`` (overwrite) is moved aside first and removed after."""
    old = None
    if out.exists():
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        os.replace(out, old)
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# ---------------------------------------------------------------------------------------------------------------
# Reading an export back
# ---------------------------------------------------------------------------------------------------------------


def read_export_meta(directory: str | Path) -> dict:
    """``export.json`` of an export folder, checked against this package: a missing file, another format or
    another package version raises `ExportError` naming the fix (re-export with this version)."""
    import spatialreward

    directory = Path(directory)
    path = directory / EXPORT_FILE
    if not path.is_file():
        raise ExportError(f"{directory}: no {EXPORT_FILE} (write one with `spatialreward export onnx --model RUN "
                          f"--out {directory}`)")
    meta = _read_json(path)
    if meta.get("format") != EXPORT_FORMAT:
        raise ExportError(f"{path}: format {meta.get('format')!r} is not {EXPORT_FORMAT!r}")
    version = meta.get("package_version")
    if meta.get("format_version") != EXPORT_FORMAT_VERSION or version != spatialreward.__version__:
        raise ExportError(
            f"{directory}: exported by spatialreward {version} (export format {meta.get('format_version')}), this is "
            f"{spatialreward.__version__} (format {EXPORT_FORMAT_VERSION}); re-export it with this version: "
            f"spatialreward export onnx --model {meta.get('source', {}).get('path') or 'RUN'} --out {directory} "
            "--overwrite"
        )
    for graph in meta["graphs"].values():
        if not (directory / graph["file"]).is_file():
            raise ExportError(f"{directory / graph['file']}: missing (the export folder is incomplete; re-export)")
    return meta
