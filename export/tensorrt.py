"""TensorRT engines from an ONNX export, and the backend that runs them (`spatialreward export tensorrt`).

Build (`build_engines`): TensorRT's Python API — builder, ONNX parser, one optimisation profile over the batch axis
(``--batch MIN,OPT,MAX``), a timing cache file reused across builds (it turns a rebuild from minutes into seconds).
TensorRT 10 is weakly typed by default: fp16 / bf16 are builder flags over an fp32 graph. TensorRT 11 is always
strongly typed (the builder flags are gone): precision is whatever the ONNX graph says, so fp16 needs an fp16
export (``spatialreward export onnx --precision fp16``) and bf16 is refused there (we do not write bf16 graphs).

Run (`TensorRTBackend`): torch tensors in and out (``set_tensor_address`` on their ``data_ptr``), enqueued on torch's
current CUDA stream with ``execute_async_v3``; with ``cuda_graphs=True`` each batch bucket (1, 8, 32, … up to the
profile's max) gets its own execution context and a captured CUDA graph, and a call pads its batch up to the next
bucket, so steady-state scoring is one graph replay per call.

What was verified where: TensorRT cannot be installed on the CI machine and there is no fake module here; the
tests of this file skip with that reason, and ``bench/gpu_session.sh`` builds and runs the engines on a GPU box.

Folder written by `build_engines` (temp folder + rename)::

    encode.engine  score.engine  engine.json (TensorRT version, precision, profile, typing, the export's meta)
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from spatialreward.export.graphs import exported_novelty_views
from spatialreward.export.protocol import Encoding, Scores

ENGINE_FILE = "engine.json"
ENGINE_FORMAT = "spatialreward-tensorrt"
DEFAULT_BUCKETS = (1, 8, 32, 64, 128, 256, 512, 1024)


def tensorrt_available() -> bool:
    return importlib.util.find_spec("tensorrt") is not None


def import_tensorrt():
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise ImportError(
            "TensorRT is not installed: on a machine with an NVIDIA GPU, pip install tensorrt (10.x or 11.x, the "
            "wheel matching your CUDA); or score with backend='onnxruntime'"
        ) from exc
    return trt


def trt_major(trt) -> int:
    return int(trt.__version__.split(".")[0])


def parse_batch_profile(text: str) -> tuple[int, int, int]:
    """``"1,64,256"`` → (1, 64, 256), checked: 1 <= MIN <= OPT <= MAX."""
    try:
        lo, opt, hi = (int(x) for x in text.split(","))
    except ValueError as exc:
        raise ValueError(f"--batch {text!r}: expected three integers MIN,OPT,MAX such as 1,64,256") from exc
    if not 1 <= lo <= opt <= hi:
        raise ValueError(f"--batch {text!r}: need 1 <= MIN <= OPT <= MAX")
    return lo, opt, hi


# ---------------------------------------------------------------------------------------------------------------
# Build
# ---------------------------------------------------------------------------------------------------------------


def build_engines(onnx_dir: str | Path, out: str | Path, *, precision: str = "fp16",
                  batch: tuple[int, int, int] = (1, 64, 256), timing_cache: str | Path | None = None,
                  workspace_gib: float = 4.0, overwrite: bool = False, log=print) -> Path:
    """Build ``encode.engine`` and ``score.engine`` from an export folder into ``out``; returns ``out``."""
    from spatialreward.export.onnx_export import read_export_meta

    trt = import_tensorrt()
    onnx_dir, out = Path(onnx_dir), Path(out)
    meta = read_export_meta(onnx_dir)
    if precision not in ("fp32", "fp16", "bf16"):
        raise ValueError(f"--precision {precision!r}; use fp16, bf16 or fp32")
    if batch[2] > meta["batch"]["max"]:
        raise ValueError(f"--batch max {batch[2]} exceeds the export's max batch {meta['batch']['max']}; re-export "
                         f"with --max-batch {batch[2]}")
    strongly_typed = trt_major(trt) >= 11
    if strongly_typed and precision != meta["precision"]:
        raise ValueError(
            f"TensorRT {trt.__version__} is strongly typed: engine precision is the ONNX graph's "
            f"({meta['precision']}); "
            f"for {precision} " + ("export with --precision fp16 first" if precision == "fp16" else
                                   "there is no such export (bf16 needs TensorRT 10, or use fp16)")
        )
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out}: exists; pass --overwrite or choose another --out")
    logger = trt.Logger(trt.Logger.WARNING)
    trt.init_libnvinfer_plugins(logger, "")  # the parser maps RoiAlign to the ROIAlign_TRT plugin
    cache_bytes = Path(timing_cache).read_bytes() if timing_cache and Path(timing_cache).is_file() else b""
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        cache = None
        for graph in ("encode", "score"):
            path = onnx_dir / meta["graphs"][graph]["file"]
            log(f"building {graph}.engine from {path} ({precision}, batch {batch}) …")
            plan, cache = _build_one(trt, logger, path, precision, batch, strongly_typed, workspace_gib,
                                     cache_bytes if cache is None else cache)
            (tmp / f"{graph}.engine").write_bytes(plan)
        if timing_cache and cache:
            Path(timing_cache).write_bytes(cache)
        engine_meta = {
            "format": ENGINE_FORMAT, "tensorrt": trt.__version__, "precision": precision,
            "strongly_typed": strongly_typed, "batch": {"min": batch[0], "opt": batch[1], "max": batch[2]},
            "onnx_dir": str(onnx_dir.resolve()), "export": meta,
            "device": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        }
        (tmp / ENGINE_FILE).write_text(json.dumps(engine_meta, indent=2) + "\n")
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log(f"wrote {out}")
    return out


def _build_one(trt, logger, path: Path, precision: str, batch, strongly_typed: bool, workspace_gib: float,
               cache_bytes: bytes):
    builder = trt.Builder(logger)
    flags = 0
    if strongly_typed and hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"):
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"{path}: TensorRT's ONNX parser refused the graph: {errors} "
                           f"(run `spatialreward export check {path.parent}`)")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    if not strongly_typed:  # TensorRT 10: precision flags over the fp32 graph
        if precision == "fp16":
            config.set_flag(trt.BuilderFlag.FP16)
        elif precision == "bf16":
            config.set_flag(trt.BuilderFlag.BF16)
    profile = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        rest = tuple(tensor.shape)[1:]
        profile.set_shape(tensor.name, (batch[0], *rest), (batch[1], *rest), (batch[2], *rest))
    config.add_optimization_profile(profile)
    cache = config.create_timing_cache(cache_bytes)
    config.set_timing_cache(cache, ignore_mismatch=False)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise RuntimeError(f"{path}: TensorRT failed to build the engine (see the log above)")
    return bytes(plan), bytes(config.get_timing_cache().serialize())


def read_engine_meta(directory: str | Path) -> dict:
    path = Path(directory) / ENGINE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{directory}: no {ENGINE_FILE} (build engines with `spatialreward export tensorrt`)")
    meta = json.loads(path.read_text())
    if meta.get("format") != ENGINE_FORMAT:
        raise ValueError(f"{path}: format {meta.get('format')!r} is not {ENGINE_FORMAT!r}")
    return meta


# ---------------------------------------------------------------------------------------------------------------
# Run
# ---------------------------------------------------------------------------------------------------------------


class _Engine:
    """One deserialized engine: run it on torch tensors, or replay a CUDA graph captured per batch bucket."""

    def __init__(self, trt, runtime, plan: bytes, device: torch.device, buckets: tuple[int, ...] | None,
                 spec: dict):
        self.trt, self.device = trt, device
        self.engine = runtime.deserialize_cuda_engine(plan)
        if self.engine is None:
            raise RuntimeError("TensorRT could not deserialize the engine (built by another TensorRT version?)")
        names = {self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)}
        # the export's order, not the engine's: callers pass and receive tensors positionally
        self.inputs, self.outputs = list(spec["inputs"]), list(spec["outputs"])
        if names != set(self.inputs) | set(self.outputs):
            raise RuntimeError(f"engine tensors {sorted(names)} differ from the export's {self.inputs + self.outputs}")
        self.context = self.engine.create_execution_context()
        self.buckets = buckets
        self._graphs: dict[int, tuple] = {}  # bucket -> (graph, context, static inputs, static outputs)

    def _torch_dtype(self, name: str) -> torch.dtype:
        t = self.trt.DataType
        return {t.FLOAT: torch.float32, t.HALF: torch.float16, t.BF16: torch.bfloat16, t.INT32: torch.int32,
                t.INT64: torch.int64, t.UINT8: torch.uint8, t.BOOL: torch.bool}[self.engine.get_tensor_dtype(name)]

    def _enqueue(self, context, inputs: list[torch.Tensor], stream: int) -> list[torch.Tensor]:
        for name, tensor in zip(self.inputs, inputs):
            context.set_input_shape(name, tuple(tensor.shape))
            context.set_tensor_address(name, tensor.data_ptr())
        outputs = []
        for name in self.outputs:
            out = torch.empty(tuple(context.get_tensor_shape(name)), dtype=self._torch_dtype(name), device=self.device)
            context.set_tensor_address(name, out.data_ptr())
            outputs.append(out)
        if not context.execute_async_v3(stream):
            raise RuntimeError("TensorRT execute_async_v3 failed")
        return outputs

    def __call__(self, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
        inputs = [t.to(self.device, self._torch_dtype(n)).contiguous() for n, t in zip(self.inputs, inputs)]
        n = inputs[0].shape[0]
        if self.buckets is None:
            return self._enqueue(self.context, inputs, torch.cuda.current_stream(self.device).cuda_stream)
        bucket = next((b for b in self.buckets if b >= n), None)
        if bucket is None:
            raise ValueError(f"batch {n} is above the largest CUDA-graph bucket {self.buckets[-1]}")
        if bucket not in self._graphs:
            self._graphs[bucket] = self._capture(bucket, inputs)
        graph, _, static_in, static_out = self._graphs[bucket]
        for dst, src in zip(static_in, inputs):
            dst[:n].copy_(src)
            dst[n:].zero_()  # padding rows: any finite input; their outputs are dropped
        graph.replay()
        return [o[:n] for o in static_out]

    def _capture(self, bucket: int, like: list[torch.Tensor]):
        context = self.engine.create_execution_context()  # one per bucket: its shapes stay fixed
        static_in = [torch.zeros((bucket, *t.shape[1:]), dtype=t.dtype, device=self.device) for t in like]
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):
            self._enqueue(context, static_in, stream.cuda_stream)  # warm-up: TensorRT allocates outside capture
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, stream=stream):
                static_out = self._enqueue(context, static_in, stream.cuda_stream)
        torch.cuda.current_stream(self.device).wait_stream(stream)
        return graph, context, static_in, static_out


class TensorRTBackend:
    """Engines from `build_engines` behind the scoring protocol (CUDA only)."""

    name = "tensorrt"

    def __init__(self, directory: str | Path, *, device: str | torch.device = "cuda", cuda_graphs: bool = False,
                 buckets: tuple[int, ...] = DEFAULT_BUCKETS):
        trt = import_tensorrt()
        self.directory = Path(directory)
        self.meta = read_engine_meta(self.directory)
        if self.meta["tensorrt"] != trt.__version__:
            raise ValueError(
                f"{self.directory}: engines built with TensorRT {self.meta['tensorrt']}, this is {trt.__version__}; "
                f"engines are not portable across versions: rebuild with `spatialreward export tensorrt --onnx "
                f"{self.meta['onnx_dir']} --out {self.directory} --overwrite`"
            )
        self.device = torch.device(device)
        if self.device.type != "cuda" or not torch.cuda.is_available():
            raise RuntimeError("backend 'tensorrt' needs a CUDA device; use backend='onnxruntime' on CPU")
        export = self.meta["export"]
        self.image_size = int(export["image_size"])
        self.text_encoder = export["text_encoder"]["name"]
        self.reward_weights = dict(export["reward_weights"])
        self.max_batch = int(self.meta["batch"]["max"])
        self.novelty_views = exported_novelty_views(export)
        self.cuda_graphs = cuda_graphs
        bucket_list = tuple(b for b in buckets if b < self.max_batch) + (self.max_batch,) if cuda_graphs else None
        self._logger = trt.Logger(trt.Logger.WARNING)
        trt.init_libnvinfer_plugins(self._logger, "")  # score.engine holds the ROIAlign_TRT plugin
        self._runtime = trt.Runtime(self._logger)
        with torch.cuda.device(self.device):
            self._encode = _Engine(trt, self._runtime, (self.directory / "encode.engine").read_bytes(), self.device,
                                   bucket_list, export["graphs"]["encode"])
            self._score = _Engine(trt, self._runtime, (self.directory / "score.engine").read_bytes(), self.device,
                                  bucket_list, export["graphs"]["score"])
        self._trt_version = trt.__version__

    def preprocess(self, image) -> torch.Tensor:
        from spatialreward.export.backends import _preprocess

        return _preprocess(image, self.image_size)

    def encode(self, images: torch.Tensor) -> Encoding:
        from spatialreward.export.backends import check_batch

        check_batch(images.shape[0], self.max_batch, "encode.engine")
        return tuple(self._encode([images]))

    def score(self, source: Encoding, edited: Encoding, text_embedding: torch.Tensor) -> Scores:
        from spatialreward.export.backends import check_batch

        check_batch(text_embedding.shape[0], self.max_batch, "score.engine")
        outs = self._score([*source, *edited, text_embedding])
        return Scores(*(o.float() for o in outs))

    def describe(self) -> dict[str, Any]:
        return {"backend": "tensorrt", "device": str(self.device), "tensorrt": self._trt_version,
                "precision": self.meta["precision"], "strongly_typed": self.meta["strongly_typed"],
                "batch": self.meta["batch"], "cuda_graphs": self.cuda_graphs}
