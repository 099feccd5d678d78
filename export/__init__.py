"""ONNX export, the TensorRT-compatibility check, TensorRT engines, and the scoring backends behind one protocol.

    from spatialreward.export import export_onnx, ExportConfig, check_export, load_backend

* `onnx_export`: ``encode.onnx`` / ``score.onnx`` / ``export.json`` from a trained student (`graphs` wraps it);
  `text_export`: ``text.onnx`` + ``tokenizer.json`` (the frozen MiniLM) and `OnnxTextEncoder`, which runs them.
* `trt_check`: what TensorRT 10's ONNX parser would refuse, without TensorRT.
* `backends`: `TorchBackend`, `OnnxRuntimeBackend`, `load_backend` (folder + name → backend); `tensorrt`: engine
  build and `TensorRTBackend`. All speak `protocol.ScoringBackend`, the only thing `RewardModel` talks to.

Nothing heavy is imported here (onnx, onnxruntime, tokenizers, tensorrt load on first use).
"""

from __future__ import annotations

_EXPORTS = {
    "ExportConfig": "onnx_export", "ExportError": "onnx_export", "export_onnx": "onnx_export",
    "read_export_meta": "onnx_export", "check_export": "trt_check", "check_model": "trt_check",
    "load_backend": "backends", "TorchBackend": "backends", "OnnxRuntimeBackend": "backends",
    "BackendUnavailable": "backends", "TensorRTBackend": "tensorrt", "build_engines": "tensorrt",
    "Scores": "protocol", "ScoringBackend": "protocol", "EmbedsText": "protocol",
    "OnnxTextEncoder": "text_export", "TextEncoderError": "text_export",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(f"spatialreward.export.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'spatialreward.export' has no attribute {name!r}")
