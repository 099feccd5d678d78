"""RoIAlign for feature maps and ViT tokens: a Triton kernel, its plain-PyTorch reference, and a torch custom op.

Semantics are exactly `torchvision.ops.roi_align` (Mask R-CNN, He et al. 2017), average mode:

* ``boxes[K, 5]`` rows are ``(batch_index, x1, y1, x2, y2)`` in input-pixel units *before* ``spatial_scale``.
* Each of the ``oh x ow`` output bins averages a ``gh x gw`` grid of bilinear samples. ``sampling_ratio > 0``
  fixes ``gh = gw = sampling_ratio``; ``<= 0`` is adaptive: ``gh = ceil(roi_h / oh)`` per RoI.
* ``aligned=True`` shifts the box by -0.5 pixel (pixel centres) and lets a RoI be smaller than a pixel;
  ``aligned=False`` clamps the RoI size to >= 1 (the legacy Detectron behaviour).
* A sample outside ``[-1, H] x [-1, W]`` contributes 0 (it still counts in the average); inside, coordinates are
  clamped to the map and interpolated bilinearly.

Two layouts share one kernel: NCHW feature maps (`roi_align`) and ViT tokens ``[B, N, C]`` on a ``gh x gw`` grid
with optional prefix (class/register) tokens (`roi_align_tokens`, channels-last output ``[K, oh, ow, C]``; no
NCHW permute, which costs a full read+write of the map).

Why the reference looks like a matrix product: bilinear weights and the inside-the-map test are *separable* in
y and x, so for one RoI ``out[c] = Ay @ F[c] @ Ax^T`` with ``Ay[oh, H]`` / ``Ax[ow, W]`` holding the summed,
averaged sample weights of each output row/column. That is vectorised over RoIs without any Python loop, exact
(up to float summation order), and its adjoint gives the backward for free.

Why this tiling for the kernel: one program owns one RoI, a block of output bins and a block of channels; it walks
that RoI's ``gh x gw`` samples with a *runtime* loop bound (adaptive sampling differs per RoI) and gathers four
corner vectors per sample. Channels are the contiguous axis in the token layout, so each gather is a coalesced
row of ``BLOCK_C`` values; accumulation is fp32 for every input dtype. The backward walks the same samples and
scatters ``weight * grad`` into an fp32 ``grad_input`` with atomic adds (RoIs overlap, bins share pixels).
"""

from __future__ import annotations

import functools
import math
from typing import Sequence

import torch
from torch import Tensor

from ._backend import check_int32_span, launchable, register_linear_op, tl, triton

__all__ = [
    "RoIAlign",
    "RoIBoxesError",
    "roi_align",
    "roi_align_tokens",
    "roi_align_reference",
    "roi_align_tokens_reference",
]

# The kernels accumulate in fp32: fp64 input (gradcheck, fp64 pipelines) always takes the fp64 reference instead,
# on every backend, so an fp64 call computes in fp64 wherever it runs.
KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


# %%
# Plain-PyTorch reference: the CPU production path and the test oracle
# ---------------------------------------------------------------------


def _autocast_off(fn):
    """Run `fn` (first argument: a tensor) with autocast disabled on that tensor's device.

    Under ``torch.autocast("cpu", bfloat16)`` the reference's matmuls would otherwise run in bf16 and lose ~3
    digits; torchvision computes RoIAlign in fp32 under autocast, and so do we (the output keeps the input dtype)."""

    @functools.wraps(fn)
    def wrapper(t: Tensor, *args, **kwargs):
        device_type = t.device.type
        if not torch.amp.is_autocast_available(device_type):
            return fn(t, *args, **kwargs)
        with torch.autocast(device_type, enabled=False):
            return fn(t, *args, **kwargs)

    return wrapper


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """Accumulate in fp32, or fp64 when the input is fp64 (gradcheck)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _axis_weights(
    lo: Tensor, hi: Tensor, size: int, pooled: int, spatial_scale: float, sampling_ratio: int, aligned: bool
) -> Tensor:
    """Averaged bilinear sample weights along one axis: ``[K, pooled, size]``.

    `lo`/`hi` are the box edges along this axis (``[K]``). Row ``p`` of the result holds, for every input
    row/column, the sum over that bin's samples of its bilinear weight, divided by the sample count on this
    axis; the op's output is then ``Ay @ F @ Ax^T``. Arithmetic order copies torchvision's kernel so the
    sample points (and thus the floor/clamp decisions) are the same floats.
    """
    K = lo.shape[0]
    offset = 0.5 if aligned else 0.0
    start = lo * spatial_scale - offset  # [K]
    end = hi * spatial_scale - offset
    length = end - start
    if not aligned:
        length = length.clamp(min=1.0)  # legacy: force malformed RoIs to 1x1
    bin_size = length / pooled  # [K]
    if sampling_ratio > 0:
        grid = torch.full_like(start, float(sampling_ratio))
        G = sampling_ratio
    else:
        grid = torch.ceil(length / pooled)  # adaptive: samples per bin differ per RoI
        G = int(grid.max().item()) if K > 0 else 0
    weights = lo.new_zeros(K, pooled, size)
    if G == 0 or size == 0:
        return weights

    p = torch.arange(pooled, device=lo.device, dtype=lo.dtype)[None, :, None]  # [1, pooled, 1]
    i = torch.arange(G, device=lo.device, dtype=lo.dtype)[None, None, :]  # [1, 1, G]
    used = i < grid[:, None, None]  # [K, 1, G]; RoIs with fewer samples than G mask the rest
    safe_grid = grid.clamp(min=1.0)[:, None, None]
    coord = start[:, None, None] + p * bin_size[:, None, None] + (i + 0.5) * bin_size[:, None, None] / safe_grid
    inside = used & (coord >= -1.0) & (coord <= size)  # [K, pooled, G]
    coord = torch.where(inside, coord, torch.zeros_like(coord)).clamp(min=0.0)
    low = coord.floor().long()  # coord >= 0, so floor == C++ int truncation
    at_edge = low >= size - 1
    low = torch.where(at_edge, torch.full_like(low, size - 1), low)
    high = torch.where(at_edge, low, low + 1)
    frac = torch.where(at_edge, torch.zeros_like(coord), coord - low.to(coord.dtype))
    norm = inside.to(coord.dtype) / safe_grid  # zero weight for unused/outside samples, 1/g for the average
    weights.scatter_add_(2, low.view(K, pooled, G), ((1.0 - frac) * norm).view(K, pooled, G))
    weights.scatter_add_(2, high.view(K, pooled, G), (frac * norm).view(K, pooled, G))
    return weights


def _roi_weights(
    boxes: Tensor, H: int, W: int, oh: int, ow: int, spatial_scale: float, sampling_ratio: int, aligned: bool, acc
) -> tuple[Tensor, Tensor, Tensor]:
    """(batch index ``[K]`` int64, ``Ay [K, oh, H]``, ``Ax [K, ow, W]``) for all RoIs at once."""
    b = boxes.to(acc)
    idx = b[:, 0].long()  # torchvision truncates the float batch index the same way
    Ay = _axis_weights(b[:, 2], b[:, 4], H, oh, spatial_scale, sampling_ratio, aligned)
    Ax = _axis_weights(b[:, 1], b[:, 3], W, ow, spatial_scale, sampling_ratio, aligned)
    return idx, Ay, Ax


@_autocast_off
def roi_align_reference(
    input: Tensor, boxes: Tensor, output_size: tuple[int, int], spatial_scale: float = 1.0,
    sampling_ratio: int = -1, aligned: bool = False,
) -> Tensor:
    """RoIAlign on ``input[N, C, H, W]`` in plain PyTorch: ``[K, C, oh, ow]``, same dtype as `input`."""
    N, C, H, W = input.shape
    oh, ow = output_size
    acc = _acc_dtype(input.dtype)
    idx, Ay, Ax = _roi_weights(boxes, H, W, oh, ow, spatial_scale, sampling_ratio, aligned, acc)
    feats = input[idx].to(acc)  # [K, C, H, W]; gathers one map per RoI (RoIs of a sample share it)
    out = Ay[:, None] @ feats @ Ax.transpose(1, 2)[:, None]  # [K,1,oh,H] @ [K,C,H,W] @ [K,1,W,ow] -> [K,C,oh,ow]
    return out.to(input.dtype)


@_autocast_off
def roi_align_backward_reference(
    grad: Tensor, boxes: Tensor, input_shape: Sequence[int], spatial_scale: float, sampling_ratio: int, aligned: bool
) -> Tensor:
    """Adjoint of `roi_align_reference`: ``grad[K, C, oh, ow]`` -> ``grad_input[N, C, H, W]``."""
    N, C, H, W = input_shape
    K, _, oh, ow = grad.shape
    acc = _acc_dtype(grad.dtype)
    idx, Ay, Ax = _roi_weights(boxes, H, W, oh, ow, spatial_scale, sampling_ratio, aligned, acc)
    per_roi = Ay.transpose(1, 2)[:, None] @ grad.to(acc) @ Ax[:, None]  # [K,1,H,oh]@[K,C,oh,ow]@[K,1,ow,W]
    grad_input = grad.new_zeros(N, C, H, W, dtype=acc).index_add_(0, idx, per_roi)  # RoIs of one sample add up
    return grad_input.to(grad.dtype)


@_autocast_off
def roi_align_tokens_reference(
    tokens: Tensor, boxes: Tensor, grid_size: tuple[int, int], output_size: tuple[int, int],
    spatial_scale: float = 1.0, sampling_ratio: int = -1, aligned: bool = False, num_prefix_tokens: int = 0,
) -> Tensor:
    """RoIAlign on ViT tokens ``[B, N, C]`` in plain PyTorch: ``[K, oh, ow, C]`` (channels last)."""
    B, N, C = tokens.shape
    gh, gw = grid_size
    oh, ow = output_size
    K = boxes.shape[0]
    acc = _acc_dtype(tokens.dtype)
    idx, Ay, Ax = _roi_weights(boxes, gh, gw, oh, ow, spatial_scale, sampling_ratio, aligned, acc)
    feats = tokens[:, num_prefix_tokens:].reshape(B, gh, gw, C)[idx].to(acc)  # [K, gh, gw, C]
    rows = (Ay @ feats.reshape(K, gh, gw * C)).view(K, oh, gw, C)  # [K,oh,gh] @ [K,gh,gw*C]
    out = Ax[:, None] @ rows  # [K,1,ow,gw] @ [K,oh,gw,C] -> [K,oh,ow,C]
    return out.to(tokens.dtype)


@_autocast_off
def roi_align_tokens_backward_reference(
    grad: Tensor, boxes: Tensor, tokens_shape: Sequence[int], grid_size: tuple[int, int], spatial_scale: float,
    sampling_ratio: int, aligned: bool, num_prefix_tokens: int,
) -> Tensor:
    """Adjoint of `roi_align_tokens_reference`: ``grad[K, oh, ow, C]`` -> ``grad_tokens[B, N, C]``."""
    B, N, C = tokens_shape
    gh, gw = grid_size
    K, oh, ow, _ = grad.shape
    acc = _acc_dtype(grad.dtype)
    idx, Ay, Ax = _roi_weights(boxes, gh, gw, oh, ow, spatial_scale, sampling_ratio, aligned, acc)
    cols = Ax.transpose(1, 2)[:, None] @ grad.to(acc)  # [K,1,gw,ow] @ [K,oh,ow,C] -> [K,oh,gw,C]
    per_roi = Ay.transpose(1, 2) @ cols.reshape(K, oh, gw * C)  # [K,gh,oh] @ [K,oh,gw*C] -> [K,gh,gw*C]
    grad_tokens = grad.new_zeros(B, N, C, dtype=acc)  # prefix tokens get zero gradient
    grad_tokens[:, num_prefix_tokens:].index_add_(0, idx, per_roi.view(K, gh * gw, C))
    return grad_tokens.to(grad.dtype)


# %%
# Triton kernels
# --------------
# Both kernels see the input as a 4-D strided view (n, c, y, x): NCHW maps pass their own strides, tokens pass
# (B stride, C stride = 1, row stride = gw * token stride, token stride) on the view that skips prefix tokens.


def _configs(backward: bool) -> list:
    """Tuning space as data, keyed on (C, bins). Every config gives a thread 8 elements of the tile: one 128-bit
    load per corner in fp16/bf16 token layouts, ~50-60 registers and no spills on sm_90 (ptxas -v); bigger
    per-thread tiles spilled. BLOCK_C 64 divides both student widths (192, 384); 128 halves the programs for 384."""
    return [
        triton.Config({"BLOCK_P": bp, "BLOCK_C": bc}, num_warps=nw)
        for bp, bc, nw in [(8, 64, 2), (16, 64, 4), (32, 64, 8), (4, 128, 2), (8, 128, 4), (16, 128, 8)]
    ]


# Triton turns int arguments equal to 1 into constants, which have no `.to()`; a 1x1 output or sampling_ratio=1
# is legitimate, so these stay runtime values. C keeps its divisible-by-16 specialisation: with it the channel mask
# is provably constant per 8 lanes and the corner loads vectorise.
_NO_SPECIALIZE = ["OUT_H", "OUT_W", "sampling_ratio"]

# One small config for the CPU interpreter (few programs, cheap to interpret); also the fallback for tiny C.
_CPU_META = {"BLOCK_P": 16, "BLOCK_C": 16}


@triton.jit
def _roi_geometry(box, stride_bf, spatial_scale, sampling_ratio, OUT_H, OUT_W, ALIGNED: tl.constexpr):
    """One RoI's (batch index, start y/x, bin height/width, samples per bin along y/x, samples per bin as fp32),
    by torchvision's formula; IEEE divisions (div_rn) so the sample points are the reference's floats."""
    n = tl.load(box).to(tl.int64)
    offset = 0.5 if ALIGNED else 0.0
    start_w = tl.load(box + 1 * stride_bf).to(tl.float32) * spatial_scale - offset
    start_h = tl.load(box + 2 * stride_bf).to(tl.float32) * spatial_scale - offset
    roi_w = (tl.load(box + 3 * stride_bf).to(tl.float32) * spatial_scale - offset) - start_w
    roi_h = (tl.load(box + 4 * stride_bf).to(tl.float32) * spatial_scale - offset) - start_h
    if not ALIGNED:  # legacy: malformed RoIs forced to 1x1
        roi_w = tl.maximum(roi_w, 1.0)
        roi_h = tl.maximum(roi_h, 1.0)
    bin_w = tl.math.div_rn(roi_w, OUT_W.to(tl.float32))
    bin_h = tl.math.div_rn(roi_h, OUT_H.to(tl.float32))
    adaptive_h = tl.math.ceil(tl.math.div_rn(roi_h, OUT_H.to(tl.float32))).to(tl.int32)
    adaptive_w = tl.math.ceil(tl.math.div_rn(roi_w, OUT_W.to(tl.float32))).to(tl.int32)
    grid_h = tl.where(sampling_ratio > 0, sampling_ratio, adaptive_h)
    grid_w = tl.where(sampling_ratio > 0, sampling_ratio, adaptive_w)
    count = tl.maximum(grid_h * grid_w, 1).to(tl.float32)
    return n, start_h, start_w, bin_h, bin_w, grid_h, grid_w, count


@triton.jit
def _axis_sample(start, p, bin_size, i, grid, size):
    """Sample `i` of bins `p` (a vector) along one axis: (low index, high index, weight of high, inside the map).
    Outside ``[-1, size]`` the sample contributes 0; inside it is clamped and the far edge repeats."""
    coord = start + p * bin_size + tl.math.div_rn((i + 0.5) * bin_size, grid.to(tl.float32))
    inside = (coord >= -1.0) & (coord <= size)
    coord = tl.maximum(coord, 0.0)
    low = coord.to(tl.int32)
    edge = low >= size - 1
    low = tl.where(edge, size - 1, low)
    high = tl.where(edge, size - 1, low + 1)
    frac = tl.where(edge, 0.0, coord - low.to(tl.float32))
    return low, high, frac, inside


@triton.autotune(configs=_configs(backward=False), key=["C", "OUT_H", "OUT_W"])
@triton.jit(do_not_specialize=_NO_SPECIALIZE)
def _roi_align_fwd_kernel(
    # pointers
    x_ptr, boxes_ptr, out_ptr,
    # sizes: input channels / height / width, output bins
    C, H, W, OUT_H, OUT_W,
    # strides: elements to skip to move one step along that axis
    stride_xn, stride_xc, stride_xh, stride_xw,
    stride_bk, stride_bf,
    stride_ok, stride_oc, stride_oh, stride_ow,
    # RoIAlign parameters
    spatial_scale, sampling_ratio,
    # meta-parameters
    ALIGNED: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """out[k, c, ph, pw] for one RoI `k`, BLOCK_P output bins and BLOCK_C channels."""
    # ---- map program ids: RoI, bin block, channel block ------------------------------------------------------
    k = tl.program_id(0)
    pid_p = tl.program_id(1)
    pid_c = tl.program_id(2)

    # ---- per-RoI geometry: the same helper as the backward -------------------------------------------------------
    n, start_h, start_w, bin_h, bin_w, grid_h, grid_w, count = _roi_geometry(
        boxes_ptr + k * stride_bk, stride_bf, spatial_scale, sampling_ratio, OUT_H, OUT_W, ALIGNED
    )

    # ---- this program's bins and channels ----------------------------------------------------------------------
    offs_p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    mask_p = offs_p < OUT_H * OUT_W
    ph = (offs_p // OUT_W).to(tl.float32)
    pw = (offs_p % OUT_W).to(tl.float32)
    offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    mask_c = offs_c < C
    # in-sample offsets are int32 (the launcher checks one sample fits); only the batch offset needs int64
    x_base = x_ptr + n * stride_xn + offs_c[None, :] * stride_xc  # [1, BLOCK_C]

    # ---- accumulate bilinear samples in fp32 ------------------------------------------------------------------
    acc = tl.zeros([BLOCK_P, BLOCK_C], dtype=tl.float32)
    for iy in range(0, grid_h):
        y_low, y_high, ly, inside_y = _axis_sample(start_h, ph, bin_h, iy, grid_h, H)
        hy = 1.0 - ly
        for ix in range(0, grid_w):
            x_low, x_high, lx, inside_x = _axis_sample(start_w, pw, bin_w, ix, grid_w, W)
            inside = inside_y & inside_x & mask_p
            hx = 1.0 - lx
            m = inside[:, None] & mask_c[None, :]
            row_lo = y_low * stride_xh
            row_hi = y_high * stride_xh
            col_lo = x_low * stride_xw
            col_hi = x_high * stride_xw
            v1 = tl.load(x_base + (row_lo + col_lo)[:, None], mask=m, other=0.0).to(tl.float32)
            v2 = tl.load(x_base + (row_lo + col_hi)[:, None], mask=m, other=0.0).to(tl.float32)
            v3 = tl.load(x_base + (row_hi + col_lo)[:, None], mask=m, other=0.0).to(tl.float32)
            v4 = tl.load(x_base + (row_hi + col_hi)[:, None], mask=m, other=0.0).to(tl.float32)
            acc += (hy * hx)[:, None] * v1 + (hy * lx)[:, None] * v2 + (ly * hx)[:, None] * v3 + (ly * lx)[:, None] * v4
    acc = acc / count

    # ---- masked write-back ---------------------------------------------------------------------------------------
    ph_i = offs_p // OUT_W
    pw_i = offs_p % OUT_W
    out_offs = k.to(tl.int64) * stride_ok + (ph_i * stride_oh + pw_i * stride_ow)[:, None] + offs_c[None, :] * stride_oc
    tl.store(out_ptr + out_offs, acc.to(out_ptr.dtype.element_ty), mask=mask_p[:, None] & mask_c[None, :])


@triton.autotune(configs=_configs(backward=True), key=["C", "OUT_H", "OUT_W"], reset_to_zero=["gx_ptr"])
@triton.jit(do_not_specialize=_NO_SPECIALIZE)
def _roi_align_bwd_kernel(
    # pointers: incoming gradient, boxes, fp32 gradient of the input (zeroed, accumulated atomically)
    g_ptr, boxes_ptr, gx_ptr,
    # sizes
    C, H, W, OUT_H, OUT_W,
    # strides (gx uses the same layout as the forward's input view)
    stride_gk, stride_gc, stride_gh, stride_gw,
    stride_bk, stride_bf,
    stride_xn, stride_xc, stride_xh, stride_xw,
    # RoIAlign parameters
    spatial_scale, sampling_ratio,
    # meta-parameters
    ALIGNED: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """Scatter grad[k, c, ph, pw] * bilinear weight / count into gx for one RoI, bin block, channel block."""
    # ---- map program ids ------------------------------------------------------------------------------------------
    k = tl.program_id(0)
    pid_p = tl.program_id(1)
    pid_c = tl.program_id(2)

    # ---- per-RoI geometry: the same helper as the forward --------------------------------------------------------
    n, start_h, start_w, bin_h, bin_w, grid_h, grid_w, count = _roi_geometry(
        boxes_ptr + k * stride_bk, stride_bf, spatial_scale, sampling_ratio, OUT_H, OUT_W, ALIGNED
    )

    # ---- load this program's gradient tile once, pre-divided by the sample count ----------------------------------
    offs_p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    mask_p = offs_p < OUT_H * OUT_W
    ph_i = offs_p // OUT_W
    pw_i = offs_p % OUT_W
    ph = ph_i.to(tl.float32)
    pw = pw_i.to(tl.float32)
    offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    mask_c = offs_c < C
    g_offs = k.to(tl.int64) * stride_gk + (ph_i * stride_gh + pw_i * stride_gw)[:, None] + offs_c[None, :] * stride_gc
    g = tl.load(g_ptr + g_offs, mask=mask_p[:, None] & mask_c[None, :], other=0.0).to(tl.float32) / count
    gx_base = gx_ptr + n * stride_xn + offs_c[None, :] * stride_xc

    # ---- walk the samples and scatter with atomics (bins and RoIs overlap) ----------------------------------------
    for iy in range(0, grid_h):
        y_low, y_high, ly, inside_y = _axis_sample(start_h, ph, bin_h, iy, grid_h, H)
        hy = 1.0 - ly
        for ix in range(0, grid_w):
            x_low, x_high, lx, inside_x = _axis_sample(start_w, pw, bin_w, ix, grid_w, W)
            inside = inside_y & inside_x & mask_p
            hx = 1.0 - lx
            m = inside[:, None] & mask_c[None, :]
            row_lo = y_low * stride_xh
            row_hi = y_high * stride_xh
            col_lo = x_low * stride_xw
            col_hi = x_high * stride_xw
            tl.atomic_add(gx_base + (row_lo + col_lo)[:, None], (hy * hx)[:, None] * g, mask=m, sem="relaxed")
            tl.atomic_add(gx_base + (row_lo + col_hi)[:, None], (hy * lx)[:, None] * g, mask=m, sem="relaxed")
            tl.atomic_add(gx_base + (row_hi + col_lo)[:, None], (ly * hx)[:, None] * g, mask=m, sem="relaxed")
            tl.atomic_add(gx_base + (row_hi + col_hi)[:, None], (ly * lx)[:, None] * g, mask=m, sem="relaxed")


# %%
# Launchers: check, allocate, launch
# ----------------------------------


def _launch(kernel, probe: Tensor, grid_fn, *args, **kwargs) -> None:
    """Launch `kernel` autotuned on CUDA, or interpreted with one small config on CPU."""
    if probe.is_cuda:
        kernel[grid_fn](*args, **kwargs)
    else:
        launchable(kernel, probe)[grid_fn](*args, **kwargs, **_CPU_META)


def _grid(K: int, P: int, C: int):
    return lambda meta: (K, triton.cdiv(P, meta["BLOCK_P"]), triton.cdiv(C, meta["BLOCK_C"]))


def _roi_align_fwd_triton(
    x: Tensor, x_strides: Sequence[int], C: int, H: int, W: int, boxes: Tensor, out: Tensor,
    out_strides: Sequence[int], oh: int, ow: int, spatial_scale: float, sampling_ratio: int, aligned: bool,
) -> Tensor:
    """Fill `out` (any layout, given as (k, c, oh, ow) strides) from the 4-D view (n, c, y, x) of `x`."""
    K = boxes.shape[0]
    if K == 0 or C == 0 or oh * ow == 0:
        return out
    check_int32_span((C, H, W), x_strides[1:], "roi_align input")
    _launch(
        _roi_align_fwd_kernel, x, _grid(K, oh * ow, C),
        x, boxes, out, C, H, W, oh, ow, *x_strides, boxes.stride(0), boxes.stride(1), *out_strides,
        float(spatial_scale), int(sampling_ratio), ALIGNED=bool(aligned),
    )
    return out


def _roi_align_bwd_triton(
    grad: Tensor, g_strides: Sequence[int], boxes: Tensor, gx: Tensor, gx_strides: Sequence[int], C: int, H: int,
    W: int, oh: int, ow: int, spatial_scale: float, sampling_ratio: int, aligned: bool,
) -> Tensor:
    """Accumulate into the zeroed fp32 `gx` (4-D view strides (n, c, y, x)) from `grad` ((k, c, oh, ow) strides)."""
    K = boxes.shape[0]
    if K == 0 or C == 0 or oh * ow == 0:
        return gx
    check_int32_span((C, H, W), gx_strides[1:], "roi_align input gradient")
    _launch(
        _roi_align_bwd_kernel, grad, _grid(K, oh * ow, C),
        grad, boxes, gx, C, H, W, oh, ow, *g_strides, boxes.stride(0), boxes.stride(1), *gx_strides,
        float(spatial_scale), int(sampling_ratio), ALIGNED=bool(aligned),
    )
    return gx


def _token_view_strides(t: Tensor, gw: int) -> tuple[int, int, int, int]:
    """(n, c, y, x) strides of tokens ``[B, N, C]`` seen as a ``gh x gw`` grid."""
    return (t.stride(0), t.stride(2), gw * t.stride(1), t.stride(1))


def _boxes_for_kernel(boxes: Tensor) -> Tensor:
    # fp16/bf16 boxes lose pixel precision on big maps; the kernel reads fp32 like the reference computes
    return boxes if boxes.dtype == torch.float32 else boxes.float()


def _roi_align_triton(input, boxes, oh, ow, spatial_scale, sampling_ratio, aligned) -> Tensor:
    """NCHW forward on the Triton kernel: ``[K, C, oh, ow]``."""
    N, C, H, W = input.shape
    out = input.new_empty(boxes.shape[0], C, oh, ow)
    return _roi_align_fwd_triton(
        input, input.stride(), C, H, W, _boxes_for_kernel(boxes), out, out.stride(), oh, ow, spatial_scale,
        sampling_ratio, aligned,
    )


def _roi_align_backward_triton(grad, boxes, shape, spatial_scale, sampling_ratio, aligned) -> Tensor:
    """NCHW input gradient of `shape` on the Triton kernel."""
    gx = grad.new_zeros(shape, dtype=torch.float32)  # atomics accumulate in fp32, cast once at the end
    _, C, H, W = shape
    _roi_align_bwd_triton(
        grad, grad.stride(), _boxes_for_kernel(boxes), gx, gx.stride(), C, H, W, grad.shape[2], grad.shape[3],
        spatial_scale, sampling_ratio, aligned,
    )
    return gx.to(grad.dtype)


def _roi_align_tokens_triton(tokens, boxes, gh, gw, oh, ow, spatial_scale, sampling_ratio, aligned, prefix) -> Tensor:
    """Token-layout forward on the Triton kernel: ``[K, oh, ow, C]``."""
    C = tokens.shape[2]
    grid_tokens = tokens[:, prefix:]  # [B, gh*gw, C] view: the kernel never sees prefix tokens
    out = tokens.new_empty(boxes.shape[0], oh, ow, C)
    out_strides = (out.stride(0), out.stride(3), out.stride(1), out.stride(2))  # as (k, c, oh, ow)
    return _roi_align_fwd_triton(
        grid_tokens, _token_view_strides(grid_tokens, gw), C, gh, gw, _boxes_for_kernel(boxes), out, out_strides,
        oh, ow, spatial_scale, sampling_ratio, aligned,
    )


def _roi_align_tokens_backward_triton(grad, boxes, batch, num_tokens, gh, gw, spatial_scale, sampling_ratio,
                                      aligned, prefix) -> Tensor:
    """Token-layout input gradient ``[B, N, C]`` on the Triton kernel (prefix tokens get zeros)."""
    K, oh, ow, C = grad.shape
    gx = grad.new_zeros(batch, num_tokens, C, dtype=torch.float32)
    gx_grid = gx[:, prefix:]  # [B, gh*gw, C] view into the zeroed buffer
    g_strides = (grad.stride(0), grad.stride(3), grad.stride(1), grad.stride(2))  # as (k, c, oh, ow)
    _roi_align_bwd_triton(
        grad, g_strides, _boxes_for_kernel(boxes), gx_grid, _token_view_strides(gx_grid, gw), C, gh, gw, oh, ow,
        spatial_scale, sampling_ratio, aligned,
    )
    return gx.to(grad.dtype)


# %%
# Custom ops: dispatch (Triton or reference), fake shapes, autograd, eager route — all from one helper
# --------------------------------------------------------------------------------------------------------
# Both ops are linear in their first input, so `register_linear_op` gives each a backward op whose own gradient is
# the forward again (double backward). The adapters below map the ops' flat arguments onto the functions above.


def _nchw_reference(input, boxes, oh, ow, spatial_scale, sampling_ratio, aligned):
    return roi_align_reference(input, boxes, (oh, ow), spatial_scale, sampling_ratio, aligned)


def _nchw_fake(input, boxes, oh, ow, spatial_scale, sampling_ratio, aligned):
    return input.new_empty(boxes.shape[0], input.shape[1], oh, ow)


def _nchw_backward_reference(grad, boxes, n, c, h, w, spatial_scale, sampling_ratio, aligned):
    return roi_align_backward_reference(grad, boxes, (n, c, h, w), spatial_scale, sampling_ratio, aligned)


def _nchw_backward_kernel(grad, boxes, n, c, h, w, spatial_scale, sampling_ratio, aligned):
    return _roi_align_backward_triton(grad, boxes, (n, c, h, w), spatial_scale, sampling_ratio, aligned)


def _nchw_backward_fake(grad, boxes, n, c, h, w, spatial_scale, sampling_ratio, aligned):
    return grad.new_empty(n, c, h, w)


_roi_align_call = register_linear_op(
    "spatialreward::roi_align",
    schema="(Tensor input, Tensor boxes, SymInt pooled_height, SymInt pooled_width, float spatial_scale, "
    "SymInt sampling_ratio, bool aligned) -> Tensor",
    backward_schema="(Tensor grad, Tensor boxes, SymInt batch, SymInt channels, SymInt height, SymInt width, "
    "float spatial_scale, SymInt sampling_ratio, bool aligned) -> Tensor",
    reference=_nchw_reference, kernel=_roi_align_triton, fake=_nchw_fake,
    backward_reference=_nchw_backward_reference, backward_kernel=_nchw_backward_kernel,
    backward_fake=_nchw_backward_fake,
    # forward (input, boxes, oh, ow, scale, sr, aligned) -> backward's (N, C, H, W, scale, sr, aligned)
    backward_args=lambda inputs: (*inputs[0].shape, *inputs[4:]),
    # backward (grad[K, C, oh, ow], boxes, N, C, H, W, scale, sr, aligned) -> forward's (oh, ow, scale, sr, aligned)
    adjoint_args=lambda inputs: (inputs[0].shape[2], inputs[0].shape[3], *inputs[6:]),
    dtypes=KERNEL_DTYPES,
)


def _tokens_reference(tokens, boxes, gh, gw, oh, ow, spatial_scale, sampling_ratio, aligned, prefix):
    return roi_align_tokens_reference(tokens, boxes, (gh, gw), (oh, ow), spatial_scale, sampling_ratio, aligned, prefix)


def _tokens_fake(tokens, boxes, gh, gw, oh, ow, spatial_scale, sampling_ratio, aligned, prefix):
    return tokens.new_empty(boxes.shape[0], oh, ow, tokens.shape[2])


def _tokens_backward_reference(grad, boxes, batch, num_tokens, gh, gw, spatial_scale, sampling_ratio, aligned, prefix):
    return roi_align_tokens_backward_reference(
        grad, boxes, (batch, num_tokens, grad.shape[3]), (gh, gw), spatial_scale, sampling_ratio, aligned, prefix
    )


def _tokens_backward_fake(grad, boxes, batch, num_tokens, gh, gw, spatial_scale, sampling_ratio, aligned, prefix):
    return grad.new_empty(batch, num_tokens, grad.shape[3])


_roi_align_tokens_call = register_linear_op(
    "spatialreward::roi_align_tokens",
    schema="(Tensor tokens, Tensor boxes, SymInt grid_height, SymInt grid_width, SymInt pooled_height, "
    "SymInt pooled_width, float spatial_scale, SymInt sampling_ratio, bool aligned, SymInt num_prefix_tokens) "
    "-> Tensor",
    backward_schema="(Tensor grad, Tensor boxes, SymInt batch, SymInt num_tokens, SymInt grid_height, "
    "SymInt grid_width, float spatial_scale, SymInt sampling_ratio, bool aligned, SymInt num_prefix_tokens) -> Tensor",
    reference=_tokens_reference, kernel=_roi_align_tokens_triton, fake=_tokens_fake,
    backward_reference=_tokens_backward_reference, backward_kernel=_roi_align_tokens_backward_triton,
    backward_fake=_tokens_backward_fake,
    # forward (tokens, boxes, gh, gw, oh, ow, scale, sr, aligned, prefix) -> backward's (B, N, gh, gw, scale, ...)
    backward_args=lambda inputs: (inputs[0].shape[0], inputs[0].shape[1], inputs[2], inputs[3], *inputs[6:]),
    # backward (grad[K, oh, ow, C], boxes, B, N, gh, gw, scale, sr, aligned, prefix) -> forward's (gh, gw, oh, ...)
    adjoint_args=lambda inputs: (inputs[4], inputs[5], inputs[0].shape[1], inputs[0].shape[2], *inputs[6:]),
    dtypes=KERNEL_DTYPES,
)


# %%
# Public API
# ----------


class RoIBoxesError(ValueError, AssertionError):
    """Malformed `boxes`. A ValueError, and an AssertionError too: torchvision's RoI ops raise AssertionError for a
    bad box shape, so code written against `torchvision.ops.roi_align` catches ours unchanged."""


def _pair(output_size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(output_size, int):
        return output_size, output_size
    size = tuple(int(s) for s in output_size)
    if len(size) != 2:
        raise ValueError(f"output_size={output_size!r} must be an int or (height, width); e.g. output_size=7")
    return size  # type: ignore[return-value]


def _as_rois(boxes: Tensor | Sequence[Tensor], like: Tensor) -> Tensor:
    """``[K, 5]`` rows of (batch_index, x1, y1, x2, y2) from either box form torchvision accepts: one ``[K, 5]``
    tensor, or a list/tuple with one ``[L_i, 4]`` tensor of (x1, y1, x2, y2) per image (image ``i`` -> index i)."""
    if isinstance(boxes, (list, tuple)):
        for i, b in enumerate(boxes):
            if not isinstance(b, Tensor) or b.dim() != 2 or b.shape[1] != 4:
                shape = tuple(b.shape) if isinstance(b, Tensor) else type(b).__name__
                raise RoIBoxesError(
                    f"boxes[{i}] has shape {shape}; a list of boxes holds one [L, 4] tensor of (x1, y1, x2, y2) "
                    "per image (or pass one [K, 5] tensor with the batch index first)"
                )
            _check_box_tensor(b, like, f"boxes[{i}]")
        if not boxes:
            return like.new_zeros(0, 5, dtype=like.dtype if like.is_floating_point() else torch.float32)
        return torch.cat([torch.cat([b.new_full((b.shape[0], 1), i), b], 1) for i, b in enumerate(boxes)])
    if not isinstance(boxes, Tensor):
        raise RoIBoxesError(f"boxes is a {type(boxes).__name__}; pass a [K, 5] tensor or a list of [L, 4] tensors")
    if boxes.dim() != 2 or boxes.shape[1] != 5:
        raise RoIBoxesError(
            f"boxes has shape {tuple(boxes.shape)}; expected [K, 5] rows of (batch_index, x1, y1, x2, y2) — "
            "prepend the batch index column, e.g. torch.cat([idx[:, None], xyxy], 1), or pass a list of [L, 4] "
            "tensors, one per image"
        )
    _check_box_tensor(boxes, like, "boxes")
    return boxes


def _check_box_tensor(boxes: Tensor, like: Tensor, what: str) -> None:
    if not boxes.is_floating_point():
        raise TypeError(f"{what} has dtype {boxes.dtype}; pass floating-point boxes (e.g. boxes.float())")
    if boxes.device != like.device:
        raise ValueError(f"{what} are on {boxes.device} but the features are on {like.device}; move them with .to()")


def _fx_proxy(*args):
    """The first `torch.fx.Proxy` among `args` (one level into lists), else None: while `torch.fx.symbolic_trace`
    runs, the public functions record themselves as one leaf node instead of tracing their Python checks."""
    for a in args:
        for item in a if isinstance(a, (list, tuple)) else (a,):
            if isinstance(item, torch.fx.Proxy):
                return item
    return None


def roi_align(
    input: Tensor, boxes: Tensor | Sequence[Tensor], output_size: int | Sequence[int], spatial_scale: float = 1.0,
    sampling_ratio: int = -1, aligned: bool = False,
) -> Tensor:
    """RoIAlign as `torchvision.ops.roi_align`: ``input[N, C, H, W]`` -> ``[K, C, oh, ow]``.

    `boxes` is a ``[K, 5]`` tensor of (batch_index, x1, y1, x2, y2), or a list of ``[L_i, 4]`` tensors, one per
    image. Differentiable w.r.t. `input` (boxes get no gradient). Computes in fp32 for fp32/fp16/bf16 input, also
    under autocast, and in fp64 for fp64 input (on the reference: the kernels are fp32). Runs the Triton kernel on
    CUDA (see `set_backend`), the vectorised reference elsewhere; a leaf for `torch.fx`; exports to ONNX
    ``RoiAlign`` via `spatialreward.kernels.onnx`.
    """
    proxy = _fx_proxy(input, boxes)
    if proxy is not None:
        return proxy.tracer.create_proxy(
            "call_function", _FX_TARGETS["roi_align"], (input, boxes, output_size, spatial_scale, sampling_ratio,
                                                        aligned), {}
        )
    if input.dim() != 4:
        raise ValueError(
            f"input has shape {tuple(input.shape)}; expected [N, C, H, W] (use roi_align_tokens for [B, N, C])"
        )
    rois = _as_rois(boxes, input)
    oh, ow = _pair(output_size)
    args = (input, rois, oh, ow, float(spatial_scale), int(sampling_ratio), bool(aligned))
    return _roi_align_call(*args)


def roi_align_tokens(
    tokens: Tensor, boxes: Tensor | Sequence[Tensor], grid_size: Sequence[int], output_size: int | Sequence[int],
    spatial_scale: float = 1.0, sampling_ratio: int = -1, aligned: bool = False, num_prefix_tokens: int = 0,
) -> Tensor:
    """RoIAlign on ViT tokens ``[B, N, C]`` laid out row-major on ``grid_size = (gh, gw)``: ``[K, oh, ow, C]``.

    The first `num_prefix_tokens` tokens (class/register tokens) are skipped. Equals `roi_align` on
    ``tokens[:, prefix:].transpose(1, 2).reshape(B, C, gh, gw)`` permuted to channels-last, without that copy;
    `boxes` and dtypes as for `roi_align`.
    """
    proxy = _fx_proxy(tokens, boxes)
    if proxy is not None:
        args = (tokens, boxes, grid_size, output_size, spatial_scale, sampling_ratio, aligned, num_prefix_tokens)
        return proxy.tracer.create_proxy("call_function", _FX_TARGETS["roi_align_tokens"], args, {})
    if tokens.dim() != 3:
        raise ValueError(f"tokens has shape {tuple(tokens.shape)}; expected [B, N, C]")
    rois = _as_rois(boxes, tokens)
    gh, gw = _pair(grid_size)
    oh, ow = _pair(output_size)
    if tokens.shape[1] != num_prefix_tokens + gh * gw:
        raise ValueError(
            f"tokens has {tokens.shape[1]} tokens but grid_size={gh}x{gw} plus num_prefix_tokens={num_prefix_tokens} "
            f"needs {num_prefix_tokens + gh * gw}; fix grid_size or num_prefix_tokens (e.g. 1 for a class token)"
        )
    args = (tokens, rois, gh, gw, oh, ow, float(spatial_scale), int(sampling_ratio), bool(aligned),
            int(num_prefix_tokens))
    return _roi_align_tokens_call(*args)


# torchvision wraps its op the same way: `torch.fx.symbolic_trace` of code in this module (e.g. `RoIAlign`) keeps the
# call as one node. Calls from other modules are caught by the Proxy check at the top of each function.
torch.fx.wrap("roi_align")
torch.fx.wrap("roi_align_tokens")
# the functions themselves, for the nodes they record: while tracing, the module globals above are fx's wrappers
_FX_TARGETS = {"roi_align": roi_align, "roi_align_tokens": roi_align_tokens}


class RoIAlign(torch.nn.Module):
    """`roi_align` as a module, like `torchvision.ops.RoIAlign` (same arguments, same repr)."""

    def __init__(self, output_size: int | Sequence[int], spatial_scale: float, sampling_ratio: int,
                 aligned: bool = False):
        super().__init__()
        self.output_size = output_size
        self.spatial_scale = spatial_scale
        self.sampling_ratio = sampling_ratio
        self.aligned = aligned

    def forward(self, input: Tensor, rois: Tensor | Sequence[Tensor]) -> Tensor:
        return roi_align(input, rois, self.output_size, self.spatial_scale, self.sampling_ratio, self.aligned)

    def __repr__(self) -> str:
        return (
            f"{self.__class__.__name__}(output_size={self.output_size}, spatial_scale={self.spatial_scale}, "
            f"sampling_ratio={self.sampling_ratio}, aligned={self.aligned})"
        )


# %%
# Benchmark declaration (bench/kernels.py times these; nothing runs here)
# -------------------------------------------------------------------------
# Student shapes: 14x14 tokens of a ViT-S/Ti, C in {192, 384}, 1 or 4 boxes per sample, 7x7 output bins,
# boxes covering 5% / 25% / 100% of the image. Providers: ours (Triton, token layout), torchvision CUDA (on the
# NCHW permute it needs, which is timed too), and the reference.

BENCH_GRID = (14, 14)
BENCH_OUTPUT = (7, 7)
BENCH_SHAPES = [
    dict(B=B, C=C, boxes_per_sample=k, region=r)
    for B in (1, 64, 256) for C in (192, 384) for k in (1, 4) for r in (0.05, 0.25, 1.0)
]
BENCH_PROVIDERS = ("triton", "torchvision", "reference")


def bench_boxes(B: int, boxes_per_sample: int, region: float, grid=BENCH_GRID, device="cpu", seed: int = 0) -> Tensor:
    """``[B*k, 5]`` boxes covering `region` of a ``gh x gw`` grid (in token units), at random positions."""
    gh, gw = grid
    g = torch.Generator().manual_seed(seed)
    side_h, side_w = gh * math.sqrt(region), gw * math.sqrt(region)
    K = B * boxes_per_sample
    y1 = torch.rand(K, generator=g) * (gh - side_h)
    x1 = torch.rand(K, generator=g) * (gw - side_w)
    idx = torch.arange(B).repeat_interleave(boxes_per_sample).float()
    return torch.stack([idx, x1, y1, x1 + side_w, y1 + side_h], 1).to(device)


def bench_flops(K: int, C: int, boxes: Tensor, output_size=BENCH_OUTPUT, sampling_ratio: int = -1) -> float:
    """Forward FLOPs: 8 per (sample, channel) — 4 multiply-adds of the bilinear corners — plus the 1/count scale."""
    oh, ow = output_size
    if sampling_ratio > 0:
        samples = torch.full((K,), float(sampling_ratio**2))
    else:
        hw = (boxes[:, 3:5] - boxes[:, 1:3]).clamp(min=1.0).cpu()  # unaligned: size clamped to >= 1
        samples = torch.ceil(hw[:, 1] / oh) * torch.ceil(hw[:, 0] / ow)
    return float((samples * oh * ow * C * 8 + oh * ow * C).sum())


def bench_min_bytes(C: int, boxes: Tensor, grid=BENCH_GRID, output_size=BENCH_OUTPUT, elem: int = 2,
                    backward: bool = False) -> float:
    """Least bytes the op must move. Forward: every grid cell some RoI touches (its box plus the 1-cell bilinear
    border, clipped; RoIs of one sample share cells) read once, the output written once. Backward: the gradient
    read once and the whole input gradient written (zeros included)."""
    gh, gw = grid
    oh, ow = output_size
    b = boxes.detach().float().cpu()
    K = b.shape[0]
    batch = int(b[:, 0].max().item()) + 1 if K else 0
    out_bytes = K * oh * ow * C * elem
    if backward:
        return float(out_bytes + batch * gh * gw * C * elem)
    ys, xs = torch.arange(gh), torch.arange(gw)
    rows = (ys[None] >= b[:, 2:3].floor()) & (ys[None] <= b[:, 4:5].ceil())  # [K, gh]
    cols = (xs[None] >= b[:, 1:2].floor()) & (xs[None] <= b[:, 3:4].ceil())  # [K, gw]
    touched = torch.zeros(batch, gh, gw).index_add_(0, b[:, 0].long(), (rows[:, :, None] & cols[:, None, :]).float())
    return float((touched > 0).sum().item() * C * elem + out_bytes)
