"""ONNX translations of the kernels' custom ops, for ``torch.onnx.export(..., dynamo=True)`` (torch >= 2.9 default).

Usage (the supported path; the TorchScript exporter, ``dynamo=False``, is not supported)::

    from spatialreward.kernels.onnx import custom_translation_table
    torch.onnx.export(model, args, "model.onnx", dynamo=True, opset_version=18,
                      custom_translation_table=custom_translation_table())

What each op becomes (standard ONNX only, so ONNX Runtime CPU/CUDA and the TensorRT parser take it):

* ``roi_align`` -> ``RoiAlign`` (opset >= 16, mode avg): rois ``[K, 4]`` + int64 ``batch_indices[K]`` split from
  ``boxes[K, 5]``; ``aligned`` -> ``coordinate_transformation_mode = half_pixel``, else ``output_half_pixel``
  (ONNX's name for torchvision's legacy mode: no shift, RoI size clamped to >= 1); ``sampling_ratio <= 0`` -> 0
  (adaptive; ONNX's adaptive rule is torchvision's ceil(roi / bins)). ORT's RoiAlign is float/double only, so
  fp16 is computed in fp32 and cast back. `tests/test_kernels_onnx.py` checks ORT against our op.
* ``roi_align_tokens`` -> Slice (drop prefix tokens) + Reshape ``[B, gh, gw, C]`` + Transpose to NCHW +
  ``RoiAlign`` + Transpose to ``[K, oh, ow, C]``.
* ``region_attention`` -> MatMul / Add / Softmax / MatMul. Not opset-23 ``Attention``: ORT CPU and the TensorRT
  parser of our deployment do not all take it yet, and plain ops fuse well anyway. The weights enter as a bias on
  ``[B, Lk]`` (``log w`` inside, -1e30 outside: not -inf, which a fully masked row would turn into NaN); a sample
  with an empty region then has a uniform softmax, and its output is multiplied by 0 — zeros, like the op.

The functions are "trace-only" onnxscript: Python runs once at export time with the op's attributes as plain
Python values, so ``if aligned`` picks an attribute instead of emitting a graph branch.
"""

from __future__ import annotations

from typing import Callable

import torch

try:
    from onnxscript import FLOAT, INT64
    from onnxscript import opset18 as op
except ImportError as exc:  # export-only dependency
    raise ImportError(
        "spatialreward.kernels.onnx needs onnxscript (and onnx) for torch.onnx.export(dynamo=True); "
        "install the extras: pip install -e '.[all]'"
    ) from exc

_INT64_MAX = 0x7FFFFFFFFFFFFFFF
_MASKED_BIAS = -1e30  # masks a key: far below any score, yet s + bias stays finite (no NaN in an empty row)


def _roi_align_nchw(input, boxes, pooled_height: int, pooled_width: int, spatial_scale: float, sampling_ratio: int,
                    aligned: bool):
    """``RoiAlign`` on an NCHW value, computed in fp32 (ORT's kernel is float/double only) and cast back."""
    boxes32 = op.Cast(boxes, to=FLOAT.dtype)
    batch_indices = op.Cast(op.Squeeze(op.Slice(boxes32, [0], [1], [1]), [1]), to=INT64.dtype)  # [K]
    rois = op.Slice(boxes32, [1], [5], [1])  # [K, 4] = x1, y1, x2, y2
    out = op.RoiAlign(
        op.Cast(input, to=FLOAT.dtype), rois, batch_indices,
        coordinate_transformation_mode="half_pixel" if aligned else "output_half_pixel",
        mode="avg",
        output_height=pooled_height,
        output_width=pooled_width,
        sampling_ratio=max(int(sampling_ratio), 0),  # <= 0 means adaptive in both
        spatial_scale=float(spatial_scale),
    )
    return op.CastLike(out, input)


def roi_align_onnx(input, boxes, pooled_height: int, pooled_width: int, spatial_scale: float, sampling_ratio: int,
                   aligned: bool):
    """spatialreward::roi_align -> ONNX RoiAlign."""
    return _roi_align_nchw(input, boxes, pooled_height, pooled_width, spatial_scale, sampling_ratio, aligned)


def roi_align_tokens_onnx(tokens, boxes, grid_height: int, grid_width: int, pooled_height: int, pooled_width: int,
                          spatial_scale: float, sampling_ratio: int, aligned: bool, num_prefix_tokens: int):
    """spatialreward::roi_align_tokens -> Slice + Reshape + Transpose + RoiAlign + Transpose."""
    grid_tokens = op.Slice(tokens, [num_prefix_tokens], [_INT64_MAX], [1])  # [B, gh*gw, C]
    maps = op.Transpose(op.Reshape(grid_tokens, [0, grid_height, grid_width, -1]), perm=[0, 3, 1, 2])  # [B,C,gh,gw]
    out = _roi_align_nchw(maps, boxes, pooled_height, pooled_width, spatial_scale, sampling_ratio, aligned)
    return op.Transpose(out, perm=[0, 2, 3, 1])  # [K, C, oh, ow] -> [K, oh, ow, C]


def region_attention_onnx(q, k, v, key_mask, scale: float):
    """spatialreward::region_attention -> (out, lse) from MatMul/Where/Softmax; empty regions give zeros."""
    qf, kf, vf = op.Cast(q, to=FLOAT.dtype), op.Cast(k, to=FLOAT.dtype), op.Cast(v, to=FLOAT.dtype)
    s = op.Mul(op.MatMul(qf, op.Transpose(kf, perm=[0, 1, 3, 2])), op.Constant(value_float=float(scale)))  # [B,H,Lq,Lk]
    w = op.Cast(key_mask, to=FLOAT.dtype)  # [B, Lk]; bool -> {0, 1}
    inside = op.Greater(w, op.Constant(value_float=0.0))
    # The mask as an additive bias on [B, Lk] (log w inside, -1e30 outside) rather than a Where over the whole
    # [B, H, Lq, Lk] score tensor: exp(-1e30 - max) is exactly 0 next to any key inside, and a row with none stays
    # finite (uniform) and is zeroed by `nonempty` below.
    log_w = op.Where(inside, op.Log(op.Where(inside, w, op.Constant(value_float=1.0))),
                     op.Constant(value_float=_MASKED_BIAS))
    logits = op.Add(s, op.Unsqueeze(log_w, [1, 2]))
    out = op.MatMul(op.Softmax(logits, axis=-1), vf)  # [B, H, Lq, Dv]
    nonempty = op.ReduceMax(op.Cast(inside, to=FLOAT.dtype), [1], keepdims=1)  # [B, 1]: 1 if any key is inside
    out = op.Mul(out, op.Unsqueeze(nonempty, [2, 3]))  # zeros for an empty region, never NaN
    lse = op.ReduceLogSumExp(logits, [-1], keepdims=0)  # [B, H, Lq]
    lse = op.Where(op.Greater(op.Unsqueeze(nonempty, [2]), op.Constant(value_float=0.0)), lse,
                   op.Constant(value_float=float("-inf")))
    return op.CastLike(out, q), lse


def custom_translation_table() -> dict[Callable, Callable]:
    """``{torch op overload: onnxscript translation}`` for ``torch.onnx.export(custom_translation_table=...)``."""
    import spatialreward.kernels  # noqa: F401 - registers the torch.ops.spatialreward namespace

    ops = torch.ops.spatialreward
    return {
        ops.roi_align.default: roi_align_onnx,
        ops.roi_align_tokens.default: roi_align_tokens_onnx,
        ops.region_attention.default: region_attention_onnx,
    }
