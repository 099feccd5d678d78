"""ONNX translations the export adds to the kernels' own (`spatialreward.kernels.onnx.custom_translation_table`).

* ``aten::gelu`` (exact, erf form) → ``Mul(x, 0.5)`` beside ``Div(x, √2) → Erf → Add(1)``, then one ``Mul``: the
  node order ONNX Runtime's ``GeluFusion`` recognises, so every GELU runs as one fused kernel. torchlib's own
  translation multiplies by 0.5 after the ``Add``, which ORT (1.32) leaves as five element-wise passes over the
  tensor; in `nano`'s score graph those were 60 of ~400 nodes. Standard ops only: the TensorRT parser takes them
  as before (`export.trt_check`).
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from onnxscript import opset18 as op


def gelu_onnx(self, approximate: str = "none"):
    """``0.5·x·(1 + erf(x/√2))`` (or the tanh approximation), constants in ``x``'s dtype."""
    half = op.CastLike(op.Constant(value_float=0.5), self)
    one = op.CastLike(op.Constant(value_float=1.0), self)
    if approximate == "tanh":
        cubic = op.Mul(op.CastLike(op.Constant(value_float=0.044715), self), op.Mul(self, op.Mul(self, self)))
        inner = op.Mul(op.CastLike(op.Constant(value_float=math.sqrt(2.0 / math.pi)), self), op.Add(self, cubic))
        return op.Mul(op.Mul(self, half), op.Add(op.Tanh(inner), one))
    erf = op.Erf(op.Div(self, op.CastLike(op.Constant(value_float=math.sqrt(2.0)), self)))
    return op.Mul(op.Mul(self, half), op.Add(erf, one))


def export_translation_table() -> dict[Callable, Callable]:
    """The kernels' custom-op translations plus `gelu_onnx`: what `onnx_export` hands ``torch.onnx.export``."""
    from spatialreward.kernels.onnx import custom_translation_table

    return {**custom_translation_table(), torch.ops.aten.gelu.default: gelu_onnx}
