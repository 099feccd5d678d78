"""Region-masked attention: keys restricted to (softly weighted) regions, as a Triton kernel, reference and custom op.

For queries ``q[B, H, Lq, D]``, keys ``k[B, H, Lk, D]``, values ``v[B, H, Lk, Dv]`` and per-sample key weights
``w = key_mask[B, Lk]`` (bool, or float in [0, 1]; shared by all heads and queries):

    out[b, h, i] = sum_j  w_j exp(s_ij) v_j  /  sum_j w_j exp(s_ij),      s_ij = scale * q_i . k_j

i.e. softmax over keys of ``s_ij + log w_j``. A boolean mask is the weights {0, 1}; a full mask is plain attention;
a sample whose mask is all zero yields exact zeros (never NaN: plain masked softmax would divide 0 by 0 there).
Weights <= 0 mean "not in the region". Float weights get a gradient when they require one (a predicted soft
region): ``d out_i / d w_j = exp(s_ij - lse_i) (v_j - out_i)``, finite at ``w_j = 0`` too (the right-derivative),
and 0 for an empty region, where the output jumps.

Why a kernel: the student attends from image tokens to the tokens inside an edit region, which is often 5-25%
of a 14x14 grid. Dense SDPA with a mask pays for all keys. This kernel is FlashAttention (Dao et al. 2022/2023)
over *compacted* keys: a small kernel first lists each sample's region keys (`partition_keys`: the region's key
indices, then the rest, and the region's size); one program then owns a block of queries of one (sample, head) and
streams only the listed keys, gathered a tile at a time, with an online softmax in fp32 — so its cost follows the
region, not the grid, and its loop has no branch to stop Triton pipelining it. The weights enter as ``+ log2(w)``
in the exp2 domain. The backward follows FlashAttention-2: recompute P from the saved log-sum-exp, one kernel for
dK/dV (one program per tile of listed keys; tiles past the region write zeros) and one for dQ, both computing
``rowsum(dO * O)`` themselves, so no pre-pass and no atomics. Only when the weights need a gradient does the dK/dV
kernel visit every key: a key outside the region still has a derivative w.r.t. its weight.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ._backend import check_int32_span, eager_fast_path, launchable, tl, triton, use_triton

__all__ = ["partition_keys", "region_attention", "region_attention_reference"]

_LOG2E = 1.4426950408889634


# %%
# Plain-PyTorch reference: the CPU production path and the test oracle
# ---------------------------------------------------------------------


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _probabilities(q: Tensor, k: Tensor, key_mask: Tensor, scale: float) -> tuple[Tensor, Tensor, Tensor]:
    """(P ``[B, H, Lq, Lk]`` with rows summing to 1, or 0 for empty regions; natural-log LSE ``[B, H, Lq]``;
    the unweighted scores S ``[B, H, Lq, Lk]``)."""
    acc = _acc_dtype(q.dtype)
    w = key_mask.to(acc)[:, None, None, :]  # [B, 1, 1, Lk], broadcast over heads and queries
    inside = w > 0
    s = (q.to(acc) @ k.to(acc).transpose(-1, -2)) * scale  # [B, H, Lq, Lk]
    logits = torch.where(inside, s + torch.log(torch.where(inside, w, torch.ones_like(w))), float("-inf"))
    lse = torch.logsumexp(logits, dim=-1)  # -inf where the region is empty
    finite = torch.isfinite(lse)
    p = torch.exp(logits - torch.where(finite, lse, torch.zeros_like(lse))[..., None])  # exp(-inf) = 0 when empty
    return p, lse, s


def region_attention_reference(
    q: Tensor, k: Tensor, v: Tensor, key_mask: Tensor, scale: float | None = None
) -> tuple[Tensor, Tensor]:
    """Region attention in plain PyTorch: (out ``[B, H, Lq, Dv]`` in q's dtype, fp32 natural-log LSE ``[B, H, Lq]``)."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    p, lse, _ = _probabilities(q, k, key_mask, scale)
    out = p @ v.to(p.dtype)  # [B, H, Lq, Dv]
    return out.to(q.dtype), lse.to(torch.float32 if q.dtype != torch.float64 else torch.float64)


def region_attention_backward_reference(
    grad: Tensor, q: Tensor, k: Tensor, v: Tensor, key_mask: Tensor, scale: float, mask_grad: bool = False
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Gradients (dq, dk, dv, dmask) of `region_attention_reference`'s output; dq/dk/dv in the inputs' dtypes,
    dmask ``[B, Lk]`` in fp32 (fp64 for fp64 inputs), zeros unless `mask_grad`."""
    acc = _acc_dtype(q.dtype)
    p, lse, s = _probabilities(q, k, key_mask, scale)  # [B, H, Lq, Lk]
    g = grad.to(acc)
    out = p @ v.to(acc)
    dv = p.transpose(-1, -2) @ g  # [B, H, Lk, Dv]
    dp = g @ v.to(acc).transpose(-1, -2)  # [B, H, Lq, Lk]
    delta = (g * out).sum(-1, keepdim=True)  # rowsum(dO * O) = rowsum(P * dP)
    ds = p * (dp - delta)  # softmax Jacobian; zero outside the region and for empty rows
    dq = (ds @ k.to(acc)) * scale
    dk = (ds.transpose(-1, -2) @ q.to(acc)) * scale
    dmask = torch.zeros(key_mask.shape, dtype=acc, device=q.device)
    if mask_grad:
        # dS / w_j without dividing by w: exp(s - lse) is P before weighting, finite where w_j = 0
        finite = torch.isfinite(lse)[..., None]
        unweighted = torch.where(finite, torch.exp(s - torch.where(finite, lse[..., None], 0.0)), 0.0)
        dmask = (unweighted * (dp - delta)).sum((1, 2))  # [B, Lk]: heads and queries share one weight per key
    return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), dmask


# %%
# Triton kernels
# --------------


def _fwd_configs() -> list:
    """Tuning space keyed on (Lq, Lk, D). Region keys arrive compacted, so a small key tile (16, 32) wastes little
    on a small region and a larger one (64) amortises the loop on a big region; no branch in the key loop, so
    ``num_stages`` > 1 lets Triton prefetch the next key tile. All fit sm_90 registers at D = 64 (ptxas -v)."""
    return [
        triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=nw, num_stages=ns)
        for bm, bn, nw, ns in [
            (64, 16, 4, 2), (64, 32, 4, 2), (64, 64, 4, 3), (128, 32, 8, 2), (128, 64, 8, 3), (32, 32, 2, 2),
        ]
    ]


def _bwd_configs() -> list:
    return [
        triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=nw, num_stages=ns)
        for bm, bn, nw, ns in [(32, 16, 4, 2), (32, 32, 4, 1), (64, 32, 4, 2), (32, 64, 4, 2), (64, 64, 8, 2)]
    ]


_CPU_META = {"BLOCK_M": 16, "BLOCK_N": 32}  # one cheap config for the interpreter (BLOCK_N > TAIL_N: both loops run)
TAIL_N = tl.constexpr(16)  # the region's keys past the last full BLOCK_N tile go 16 at a time (tl.dot's minimum)
_NO_SPECIALIZE = ["NUM_HEADS", "LQ", "LK"]  # sizes may be 1; keep them runtime values
_PARTITION_BLOCK = 1024  # keys per chunk in the partition kernel (a 14x14 grid is one chunk)


@triton.jit(do_not_specialize=["LK"])
def _partition_keys_kernel(w_ptr, order_ptr, count_ptr, LK, stride_wb, stride_wn, BLOCK: tl.constexpr):
    """Per sample: ``order[b]`` = the region's key indices (w > 0) in ascending order, then the other keys;
    ``count[b]`` = how many are in the region. A stable partition by prefix sums, BLOCK keys at a time."""
    b = tl.program_id(0).to(tl.int64)
    w_row = w_ptr + b * stride_wb
    order_row = order_ptr + b * LK
    n_inside = tl.zeros([], dtype=tl.int32)
    for start in range(0, LK, BLOCK):  # pass 1: the region's size, where the outside keys start
        offs = start + tl.arange(0, BLOCK)
        w = tl.load(w_row + offs * stride_wn, mask=offs < LK, other=0).to(tl.float32)
        n_inside += tl.sum((w > 0).to(tl.int32), axis=0)
    seen_in = tl.zeros([], dtype=tl.int32)
    seen_out = tl.zeros([], dtype=tl.int32)
    for start in range(0, LK, BLOCK):  # pass 2: each key's slot
        offs = start + tl.arange(0, BLOCK)
        valid = offs < LK
        w = tl.load(w_row + offs * stride_wn, mask=valid, other=0).to(tl.float32)
        inside = (w > 0).to(tl.int32)
        outside = valid.to(tl.int32) - inside
        slot = tl.where(inside > 0, seen_in + tl.cumsum(inside, axis=0) - 1,
                        n_inside + seen_out + tl.cumsum(outside, axis=0) - 1)
        tl.store(order_row + slot, offs, mask=valid)
        seen_in += tl.sum(inside, axis=0)
        seen_out += tl.sum(outside, axis=0)
    tl.store(count_ptr + b, n_inside)


@triton.jit
def _gather_region_tile(order_row, w_row, stride_wn, k_base, stride_kn, stride_kd, v_base, stride_vn, stride_vd,
                        start_n, n_keys, offs_d, offs_dv, HEAD_DIM, HEAD_DIM_V, TILE: tl.constexpr):
    """K ``[TILE, D]``, V ``[TILE, Dv]`` and the log2-weight bias of the region's keys ``order[start_n:+TILE]``;
    slots past the region load zeros and get bias -inf."""
    slots = start_n + tl.arange(0, TILE)
    live = slots < n_keys
    keys = tl.load(order_row + slots, mask=live, other=0)
    w = tl.load(w_row + keys * stride_wn, mask=live, other=0).to(tl.float32)
    k = tl.load(k_base + keys[:, None] * stride_kn + offs_d[None, :] * stride_kd,
                mask=live[:, None] & (offs_d[None, :] < HEAD_DIM), other=0.0)
    v = tl.load(v_base + keys[:, None] * stride_vn + offs_dv[None, :] * stride_vd,
                mask=live[:, None] & (offs_dv[None, :] < HEAD_DIM_V), other=0.0)
    bias = tl.where(w > 0, tl.log2(tl.where(w > 0, w, 1.0)), float("-inf"))  # log2 w; -inf past the region
    return k, v, bias


@triton.jit
def _fwd_tile(q, m_i, l_i, acc, order_row, w_row, stride_wn, k_base, stride_kn, stride_kd, v_base, stride_vn,
              stride_vd, start_n, n_keys, offs_d, offs_dv, HEAD_DIM, HEAD_DIM_V, qk_scale,
              TILE: tl.constexpr, INPUT_PRECISION: tl.constexpr):
    """One online-softmax step over TILE region keys: the updated (running max, running sum, accumulator)."""
    k, v, bias = _gather_region_tile(order_row, w_row, stride_wn, k_base, stride_kn, stride_kd, v_base, stride_vn,
                                     stride_vd, start_n, n_keys, offs_d, offs_dv, HEAD_DIM, HEAD_DIM_V, TILE)
    s = tl.dot(q, tl.trans(k), input_precision=INPUT_PRECISION) * qk_scale + bias[None, :]
    m_new = tl.maximum(m_i, tl.max(s, axis=1))  # finite: every tile has a live key
    p = tl.math.exp2(s - m_new[:, None])
    alpha = tl.math.exp2(m_i - m_new)  # 0 on the first tile (m_i = -inf)
    l_i = l_i * alpha + tl.sum(p, axis=1)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=INPUT_PRECISION)
    return m_new, l_i, acc


@triton.autotune(configs=_fwd_configs(), key=["LQ", "LK", "BLOCK_D", "BLOCK_DV"])
@triton.jit(do_not_specialize=_NO_SPECIALIZE)
def _region_attn_fwd_kernel(
    # pointers; order/count come from _partition_keys_kernel; lse is natural-log, [B*H, LQ] contiguous fp32
    q_ptr, k_ptr, v_ptr, w_ptr, order_ptr, count_ptr, o_ptr, lse_ptr,
    # sizes
    NUM_HEADS, LQ, LK, HEAD_DIM, HEAD_DIM_V,
    # strides: elements to skip to move one step along (batch, head, position, feature)
    stride_qb, stride_qh, stride_qm, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_wb, stride_wn,
    stride_ob, stride_oh, stride_om, stride_od,
    # softmax scale times log2(e): scores live in the exp2 domain
    qk_scale,
    # meta-parameters
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
):
    """out and LSE for BLOCK_M queries of one (sample, head), streaming only the region's keys."""
    # ---- map program ids: (sample, head), query block ----------------------------------------------------------
    pid_bh = tl.program_id(0)
    pid_m = tl.program_id(1)
    b = (pid_bh // NUM_HEADS).to(tl.int64)
    h = (pid_bh % NUM_HEADS).to(tl.int64)

    # ---- load the query block once ----------------------------------------------------------------------------
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    mask_m = offs_m < LQ
    q = tl.load(
        q_ptr + b * stride_qb + h * stride_qh + offs_m[:, None] * stride_qm + offs_d[None, :] * stride_qd,
        mask=mask_m[:, None] & (offs_d[None, :] < HEAD_DIM), other=0.0,
    )
    k_base = k_ptr + b * stride_kb + h * stride_kh
    v_base = v_ptr + b * stride_vb + h * stride_vh
    order_row = order_ptr + b * LK
    n_keys = tl.load(count_ptr + b)  # the region's keys are order[b, :n_keys]

    # ---- stream the region's keys with an online softmax (fp32): BLOCK_N-wide tiles, then 16-wide ones for the
    # rest, so a 9-key region costs one 16-key step whatever BLOCK_N the autotuner chose for big regions ---------
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_DV], dtype=tl.float32)
    w_row = w_ptr + b * stride_wb
    n_full = (n_keys // BLOCK_N) * BLOCK_N
    for start_n in range(0, n_full, BLOCK_N):
        m_i, l_i, acc = _fwd_tile(q, m_i, l_i, acc, order_row, w_row, stride_wn, k_base, stride_kn, stride_kd,
                                  v_base, stride_vn, stride_vd, start_n, n_keys, offs_d, offs_dv, HEAD_DIM,
                                  HEAD_DIM_V, qk_scale, BLOCK_N, INPUT_PRECISION)
    for start_n in range(n_full, n_keys, TAIL_N):
        m_i, l_i, acc = _fwd_tile(q, m_i, l_i, acc, order_row, w_row, stride_wn, k_base, stride_kn, stride_kd,
                                  v_base, stride_vn, stride_vd, start_n, n_keys, offs_d, offs_dv, HEAD_DIM,
                                  HEAD_DIM_V, qk_scale, TAIL_N, INPUT_PRECISION)

    # ---- normalise; an empty region leaves l_i = 0 and writes zeros ------------------------------------------
    nonempty = l_i > 0
    acc = acc / tl.where(nonempty, l_i, 1.0)[:, None]
    lse2 = m_i + tl.log2(tl.where(nonempty, l_i, 1.0))
    lse = tl.where(nonempty, lse2 * 0.6931471805599453, float("-inf"))  # x ln 2: the op returns natural-log LSE
    tl.store(
        o_ptr + b * stride_ob + h * stride_oh + offs_m[:, None] * stride_om + offs_dv[None, :] * stride_od,
        acc.to(o_ptr.dtype.element_ty), mask=mask_m[:, None] & (offs_dv[None, :] < HEAD_DIM_V),
    )
    tl.store(lse_ptr + pid_bh.to(tl.int64) * LQ + offs_m, lse, mask=mask_m)


@triton.jit
def _load_row_stats(do_ptr, o_ptr, lse_ptr, row, offs_m, offs_dv, mask_m, HEAD_DIM_V,
                    stride_dom, stride_dod, stride_om, stride_od, LQ):
    """dO block, log2-domain LSE and delta = rowsum(dO * O) (FlashAttention-2's pre-pass, fused) for a query block;
    rows past LQ get LSE +inf, so their P is exactly 0."""
    mask_v = mask_m[:, None] & (offs_dv[None, :] < HEAD_DIM_V)
    do = tl.load(do_ptr + offs_m[:, None] * stride_dom + offs_dv[None, :] * stride_dod, mask=mask_v, other=0.0)
    o = tl.load(o_ptr + offs_m[:, None] * stride_om + offs_dv[None, :] * stride_od, mask=mask_v, other=0.0)
    delta = tl.sum(do.to(tl.float32) * o.to(tl.float32), axis=1)
    lse = tl.load(lse_ptr + row * LQ + offs_m, mask=mask_m, other=float("inf")) * 1.4426950408889634  # to log2
    return do, lse, delta


@triton.autotune(configs=_bwd_configs(), key=["LQ", "LK", "BLOCK_D", "BLOCK_DV"])
@triton.jit(do_not_specialize=_NO_SPECIALIZE)
def _region_attn_bwd_dkdv_kernel(
    # pointers: inputs, forward output and natural-log LSE ([B*H, LQ] fp32), incoming gradient, outputs; dw is the
    # per-head weight gradient [B*H, LK] fp32 (only written when MASK_GRAD)
    q_ptr, k_ptr, v_ptr, w_ptr, order_ptr, count_ptr, o_ptr, lse_ptr, do_ptr, dk_ptr, dv_ptr, dw_ptr,
    # sizes
    NUM_HEADS, LQ, LK, HEAD_DIM, HEAD_DIM_V,
    # strides; dk/dv share k/v's layout contract ([B, H, Lk, *] with their own strides)
    stride_qb, stride_qh, stride_qm, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_wb, stride_wn,
    stride_ob, stride_oh, stride_om, stride_od,
    stride_dob, stride_doh, stride_dom, stride_dod,
    stride_dkb, stride_dkh, stride_dkn, stride_dkd,
    stride_dvb, stride_dvh, stride_dvn, stride_dvd,
    # scales: qk_scale = scale * log2(e) recomputes P; sm_scale turns dS into dK
    qk_scale, sm_scale,
    # meta-parameters
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
    INPUT_PRECISION: tl.constexpr, MASK_GRAD: tl.constexpr,
):
    """dK, dV (and dW if MASK_GRAD) for BLOCK_N keys of one (sample, head), taken in the partitioned order: tiles
    past the region write zeros and stop (unless MASK_GRAD: keys outside the region have a weight gradient)."""
    # ---- map program ids: (sample, head), a tile of partitioned key slots -------------------------------------
    pid_bh = tl.program_id(0)
    pid_n = tl.program_id(1)
    b = (pid_bh // NUM_HEADS).to(tl.int64)
    h = (pid_bh % NUM_HEADS).to(tl.int64)
    slots = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    valid = slots < LK
    keys = tl.load(order_ptr + b * LK + slots, mask=valid, other=0)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    mask_kd = valid[:, None] & (offs_d[None, :] < HEAD_DIM)
    mask_vd = valid[:, None] & (offs_dv[None, :] < HEAD_DIM_V)

    # ---- accumulate over query blocks if this tile holds region keys ------------------------------------------
    dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_DV], dtype=tl.float32)
    dw = tl.zeros([BLOCK_N], dtype=tl.float32)
    last = tl.load(count_ptr + b)  # slots < count are the region's keys
    if MASK_GRAD:
        last = LK  # weights outside the region have a gradient too: visit every tile
    if pid_n * BLOCK_N < last:
        w = tl.load(w_ptr + b * stride_wb + keys * stride_wn, mask=valid, other=0).to(tl.float32)
        k = tl.load(k_ptr + b * stride_kb + h * stride_kh + keys[:, None] * stride_kn + offs_d[None, :] * stride_kd,
                    mask=mask_kd, other=0.0)
        v = tl.load(v_ptr + b * stride_vb + h * stride_vh + keys[:, None] * stride_vn + offs_dv[None, :] * stride_vd,
                    mask=mask_vd, other=0.0)
        bias = tl.where(w > 0, tl.log2(tl.where(w > 0, w, 1.0)), float("-inf"))
        q_base = q_ptr + b * stride_qb + h * stride_qh
        for start_m in range(0, LQ, BLOCK_M):
            offs_m = start_m + tl.arange(0, BLOCK_M)
            mask_m = offs_m < LQ
            q = tl.load(q_base + offs_m[:, None] * stride_qm + offs_d[None, :] * stride_qd,
                        mask=mask_m[:, None] & (offs_d[None, :] < HEAD_DIM), other=0.0)
            do, lse, delta = _load_row_stats(
                do_ptr + b * stride_dob + h * stride_doh, o_ptr + b * stride_ob + h * stride_oh, lse_ptr,
                pid_bh.to(tl.int64), offs_m, offs_dv, mask_m, HEAD_DIM_V, stride_dom, stride_dod, stride_om,
                stride_od, LQ,
            )
            s = tl.dot(q, tl.trans(k), input_precision=INPUT_PRECISION) * qk_scale  # [M, N], before the weights
            # rows of an empty region (lse = -inf) have P = 0; unguarded, -inf - (-inf) would put NaN in dK/dV
            live = lse[:, None] > float("-inf")
            p = tl.where(live, tl.math.exp2(s + bias[None, :] - tl.where(live, lse[:, None], 0.0)), 0.0)
            dv += tl.dot(tl.trans(p.to(do.dtype)), do, input_precision=INPUT_PRECISION)
            dp = tl.dot(do, tl.trans(v), input_precision=INPUT_PRECISION)
            ds = p * (dp - delta[:, None])
            dk += tl.dot(tl.trans(ds.to(q.dtype)), q, input_precision=INPUT_PRECISION)
            if MASK_GRAD:
                # dS / w without the division: P before weighting; 0 for empty regions (lse = -inf)
                unweighted = tl.where(live, tl.math.exp2(s - tl.where(live, lse[:, None], 0.0)), 0.0)
                dw += tl.sum(unweighted * (dp - delta[:, None]), axis=0)
        dk = dk * sm_scale

    # ---- write back to the keys' own rows (zeros outside the region) -------------------------------------------
    tl.store(dk_ptr + b * stride_dkb + h * stride_dkh + keys[:, None] * stride_dkn + offs_d[None, :] * stride_dkd,
             dk.to(dk_ptr.dtype.element_ty), mask=mask_kd)
    tl.store(dv_ptr + b * stride_dvb + h * stride_dvh + keys[:, None] * stride_dvn + offs_dv[None, :] * stride_dvd,
             dv.to(dv_ptr.dtype.element_ty), mask=mask_vd)
    if MASK_GRAD:
        tl.store(dw_ptr + pid_bh.to(tl.int64) * LK + keys, dw, mask=valid)


@triton.jit
def _dq_tile(dq, q, do, lse, delta, order_row, w_row, stride_wn, k_base, stride_kn, stride_kd, v_base, stride_vn,
             stride_vd, start_n, n_keys, offs_d, offs_dv, HEAD_DIM, HEAD_DIM_V, qk_scale,
             TILE: tl.constexpr, INPUT_PRECISION: tl.constexpr):
    """dQ (before the softmax scale) plus the contribution of TILE region keys."""
    k, v, bias = _gather_region_tile(order_row, w_row, stride_wn, k_base, stride_kn, stride_kd, v_base, stride_vn,
                                     stride_vd, start_n, n_keys, offs_d, offs_dv, HEAD_DIM, HEAD_DIM_V, TILE)
    s = tl.dot(q, tl.trans(k), input_precision=INPUT_PRECISION) * qk_scale + bias[None, :]
    p = tl.math.exp2(s - lse[:, None])  # a non-empty region: lse is finite
    dp = tl.dot(do, tl.trans(v), input_precision=INPUT_PRECISION)
    ds = p * (dp - delta[:, None])
    return dq + tl.dot(ds.to(k.dtype), k, input_precision=INPUT_PRECISION)


@triton.autotune(configs=_bwd_configs(), key=["LQ", "LK", "BLOCK_D", "BLOCK_DV"])
@triton.jit(do_not_specialize=_NO_SPECIALIZE)
def _region_attn_bwd_dq_kernel(
    # pointers
    q_ptr, k_ptr, v_ptr, w_ptr, order_ptr, count_ptr, o_ptr, lse_ptr, do_ptr, dq_ptr,
    # sizes
    NUM_HEADS, LQ, LK, HEAD_DIM, HEAD_DIM_V,
    # strides
    stride_qb, stride_qh, stride_qm, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_wb, stride_wn,
    stride_ob, stride_oh, stride_om, stride_od,
    stride_dob, stride_doh, stride_dom, stride_dod,
    stride_dqb, stride_dqh, stride_dqm, stride_dqd,
    # scales
    qk_scale, sm_scale,
    # meta-parameters
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
):
    """dQ for BLOCK_M queries of one (sample, head), streaming only the region's keys."""
    # ---- map program ids and load this query block's q, dO, LSE, delta -----------------------------------------
    pid_bh = tl.program_id(0)
    pid_m = tl.program_id(1)
    b = (pid_bh // NUM_HEADS).to(tl.int64)
    h = (pid_bh % NUM_HEADS).to(tl.int64)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    mask_m = offs_m < LQ
    mask_qd = mask_m[:, None] & (offs_d[None, :] < HEAD_DIM)
    q = tl.load(q_ptr + b * stride_qb + h * stride_qh + offs_m[:, None] * stride_qm + offs_d[None, :] * stride_qd,
                mask=mask_qd, other=0.0)
    do, lse, delta = _load_row_stats(
        do_ptr + b * stride_dob + h * stride_doh, o_ptr + b * stride_ob + h * stride_oh, lse_ptr,
        pid_bh.to(tl.int64), offs_m, offs_dv, mask_m, HEAD_DIM_V, stride_dom, stride_dod, stride_om, stride_od, LQ,
    )
    k_base = k_ptr + b * stride_kb + h * stride_kh
    v_base = v_ptr + b * stride_vb + h * stride_vh
    order_row = order_ptr + b * LK
    n_keys = tl.load(count_ptr + b)

    # ---- accumulate dS @ K over the region's keys: BLOCK_N-wide tiles, then 16-wide ones (as the forward) ------
    dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    w_row = w_ptr + b * stride_wb
    n_full = (n_keys // BLOCK_N) * BLOCK_N
    for start_n in range(0, n_full, BLOCK_N):
        dq = _dq_tile(dq, q, do, lse, delta, order_row, w_row, stride_wn, k_base, stride_kn, stride_kd, v_base,
                      stride_vn, stride_vd, start_n, n_keys, offs_d, offs_dv, HEAD_DIM, HEAD_DIM_V, qk_scale,
                      BLOCK_N, INPUT_PRECISION)
    for start_n in range(n_full, n_keys, TAIL_N):
        dq = _dq_tile(dq, q, do, lse, delta, order_row, w_row, stride_wn, k_base, stride_kn, stride_kd, v_base,
                      stride_vn, stride_vd, start_n, n_keys, offs_d, offs_dv, HEAD_DIM, HEAD_DIM_V, qk_scale,
                      TAIL_N, INPUT_PRECISION)
    dq = dq * sm_scale

    # ---- masked write-back ------------------------------------------------------------------------------------
    tl.store(dq_ptr + b * stride_dqb + h * stride_dqh + offs_m[:, None] * stride_dqm + offs_d[None, :] * stride_dqd,
             dq.to(dq_ptr.dtype.element_ty), mask=mask_qd)


# %%
# Launchers: check, allocate, launch
# ----------------------------------


def _launch(kernel, probe: Tensor, grid_fn, *args, **kwargs) -> None:
    """Launch `kernel` autotuned on CUDA, or interpreted with one small config on CPU."""
    if probe.is_cuda:
        kernel[grid_fn](*args, **kwargs)
    else:
        launchable(kernel, probe)[grid_fn](*args, **kwargs, **_CPU_META)


def _meta(q: Tensor, v: Tensor) -> dict:
    """Padded head dims (tl.dot wants >= 16, powers of 2) and the dot precision: IEEE fp32 for fp32 inputs, so
    fp32 results match the reference rather than TF32's ~1e-3."""
    return dict(
        BLOCK_D=max(16, triton.next_power_of_2(q.shape[-1])),
        BLOCK_DV=max(16, triton.next_power_of_2(v.shape[-1])),
        INPUT_PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
    )


def partition_keys(key_mask: Tensor, block: int = _PARTITION_BLOCK) -> tuple[Tensor, Tensor]:
    """(order ``[B, Lk]`` int32: each sample's region keys (w > 0) ascending, then the rest; count ``[B]`` int32).

    One small launch; the attention kernels then loop over ``order[b, :count[b]]`` only, so a 5 % region costs
    one key tile, not a scan over all of them. Equals ``argsort(~(key_mask > 0), stable=True)``."""
    B, Lk = key_mask.shape
    order = torch.empty(B, Lk, device=key_mask.device, dtype=torch.int32)
    count = torch.empty(B, device=key_mask.device, dtype=torch.int32)
    if B == 0:
        return order, count
    block = min(int(block), max(16, triton.next_power_of_2(Lk)))
    kernel = _partition_keys_kernel if key_mask.is_cuda else launchable(_partition_keys_kernel, key_mask)
    kernel[(B,)](key_mask, order, count, Lk, *key_mask.stride(), BLOCK=block)
    return order, count


def _region_attention_fwd_triton(q: Tensor, k: Tensor, v: Tensor, key_mask: Tensor, scale: float):
    """(out, natural-log LSE ``[B, H, Lq]`` fp32, order, count) — order/count are reused by the backward."""
    B, H, Lq, D = q.shape
    Lk, Dv = k.shape[2], v.shape[3]
    out = q.new_empty(B, H, Lq, Dv)
    lse = torch.empty(B, H, Lq, device=q.device, dtype=torch.float32)  # contiguous [B*H, Lq]
    order, count = partition_keys(key_mask)
    if B * H * Lq == 0:
        return out, lse, order, count
    for name, t in (("q", q), ("k", k), ("v", v)):
        check_int32_span(t.shape[1:], t.stride()[1:], f"region_attention {name}")
    grid = lambda meta: (B * H, triton.cdiv(Lq, meta["BLOCK_M"]))  # noqa: E731
    _launch(
        _region_attn_fwd_kernel, q, grid,
        q, k, v, key_mask, order, count, out, lse, H, Lq, Lk, D, Dv,
        *q.stride(), *k.stride(), *v.stride(), *key_mask.stride(), *out.stride(),
        float(scale) * _LOG2E, **_meta(q, v),
    )
    return out, lse, order, count


def _region_attention_bwd_triton(grad, q, k, v, key_mask, out, lse, scale, mask_grad: bool, order=None, count=None):
    """(dq, dk, dv, dmask ``[B, Lk]`` fp32 or None unless `mask_grad`). Three launches at most: the key partition
    (skipped when the forward's is passed in), dK/dV, dQ — the delta pre-pass is fused into both."""
    B, H, Lq, D = q.shape
    Lk, Dv = k.shape[2], v.shape[3]
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    if B * H == 0 or Lk == 0:
        dmask = torch.zeros(B, Lk, device=q.device, dtype=torch.float32) if mask_grad else None
        return dq.zero_(), dk.zero_(), dv.zero_(), dmask
    if order is None:
        order, count = partition_keys(key_mask)
    dw_heads = torch.empty(B, H, Lk, device=q.device, dtype=torch.float32) if mask_grad else dk  # dk: never written
    meta = _meta(q, v)
    common = (H, Lq, Lk, D, Dv, *q.stride(), *k.stride(), *v.stride(), *key_mask.stride(), *out.stride(),
              *grad.stride())
    scales = (float(scale) * _LOG2E, float(scale))
    _launch(
        _region_attn_bwd_dkdv_kernel, q, lambda m: (B * H, triton.cdiv(Lk, m["BLOCK_N"])),
        q, k, v, key_mask, order, count, out, lse, grad, dk, dv, dw_heads, *common, *dk.stride(), *dv.stride(),
        *scales, **meta, MASK_GRAD=bool(mask_grad),
    )
    if Lq > 0:
        _launch(
            _region_attn_bwd_dq_kernel, q, lambda m: (B * H, triton.cdiv(Lq, m["BLOCK_M"])),
            q, k, v, key_mask, order, count, out, lse, grad, dq, *common, *dq.stride(), *scales, **meta,
        )
    return dq, dk, dv, (dw_heads.sum(1) if mask_grad else None)  # one weight per key is shared by all heads


# %%
# Custom ops: dispatch (Triton or reference), fake shapes, autograd
# -----------------------------------------------------------------


@torch.library.custom_op("spatialreward::region_attention", mutates_args=())
def _region_attention_op(q: Tensor, k: Tensor, v: Tensor, key_mask: Tensor, scale: float) -> tuple[Tensor, Tensor]:
    """Returns (out ``[B, H, Lq, Dv]``, natural-log LSE ``[B, H, Lq]`` fp32, -inf for empty regions)."""
    if not use_triton(q):
        return region_attention_reference(q, k, v, key_mask, scale)
    out, lse, _, _ = _region_attention_fwd_triton(q, k, v, key_mask, scale)
    return out, lse


@_region_attention_op.register_fake
def _(q, k, v, key_mask, scale):
    B, H, Lq, _ = q.shape
    lse_dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
    return q.new_empty(B, H, Lq, v.shape[-1]), q.new_empty(B, H, Lq, dtype=lse_dtype)


@torch.library.custom_op("spatialreward::region_attention_backward", mutates_args=())
def _region_attention_backward_op(
    grad: Tensor, q: Tensor, k: Tensor, v: Tensor, key_mask: Tensor, out: Tensor, lse: Tensor, scale: float,
    mask_grad: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(dq, dk, dv, dmask ``[B, Lk]`` fp32 — zeros unless `mask_grad`)."""
    if not use_triton(q):
        return region_attention_backward_reference(grad, q, k, v, key_mask, scale, mask_grad)
    dq, dk, dv, dmask = _region_attention_bwd_triton(grad, q, k, v, key_mask, out, lse, scale, mask_grad)
    if dmask is None:
        dmask = torch.zeros(key_mask.shape, device=q.device, dtype=torch.float32)
    return dq, dk, dv, dmask


@_region_attention_backward_op.register_fake
def _(grad, q, k, v, key_mask, out, lse, scale, mask_grad):
    mask_dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
    dmask = q.new_empty(key_mask.shape, dtype=mask_dtype)
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v), dmask


def _region_attention_setup(ctx, inputs, output):
    q, k, v, key_mask, scale = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, key_mask, out, lse)
    ctx.scale = scale
    ctx.mark_non_differentiable(lse)


def _region_attention_grad(ctx, grad_out, _grad_lse):
    q, k, v, key_mask, out, lse = ctx.saved_tensors
    mask_grad = bool(ctx.needs_input_grad[3])  # float weights that require grad (a predicted region)
    dq, dk, dv, dmask = torch.ops.spatialreward.region_attention_backward(
        grad_out.contiguous(), q, k, v, key_mask, out, lse, ctx.scale, mask_grad
    )
    return dq, dk, dv, (dmask.to(key_mask.dtype) if mask_grad else None), None


_region_attention_op.register_autograd(_region_attention_grad, setup_context=_region_attention_setup)


class _RegionAttentionEager(torch.autograd.Function):
    """The same Triton kernels without the custom-op layer, for eager calls (see `eager_fast_path`): skips the
    op dispatch and the second op for the backward, and hands the forward's key partition to the backward."""

    @staticmethod
    def forward(ctx, q, k, v, key_mask, scale):
        out, lse, order, count = _region_attention_fwd_triton(q, k, v, key_mask, scale)
        ctx.save_for_backward(q, k, v, key_mask, out, lse, order, count)
        ctx.scale = scale
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable  # no double backward, as for the custom op: say so, loudly
    def backward(ctx, grad_out):
        q, k, v, key_mask, out, lse, order, count = ctx.saved_tensors
        mask_grad = bool(ctx.needs_input_grad[3])
        dq, dk, dv, dmask = _region_attention_bwd_triton(
            grad_out, q, k, v, key_mask, out, lse, ctx.scale, mask_grad, order, count
        )
        return dq, dk, dv, (dmask.to(key_mask.dtype) if mask_grad else None), None


# %%
# Public API
# ----------


def region_attention(q: Tensor, k: Tensor, v: Tensor, key_mask: Tensor, scale: float | None = None) -> Tensor:
    """Attention of ``q[B, H, Lq, D]`` over the keys ``k, v[B, H, Lk, *]`` that `key_mask[B, Lk]` selects/weights.

    Softmax over keys of ``scale * q.k + log(w)``: bool masks select keys, float weights in [0, 1] down-weight them,
    an all-zero mask gives zeros. `scale` defaults to ``D ** -0.5``. Differentiable in q, k, v, and in float
    weights that require grad (their backward then visits every key, not only the region's).
    """
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(
            f"q, k, v have shapes {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}; expected [B, H, L, D] each "
            "(split heads first, e.g. x.view(B, L, H, D).transpose(1, 2))"
        )
    B, H, Lq, D = q.shape
    if k.shape[:2] != (B, H) or v.shape[:3] != k.shape[:3] or k.shape[3] != D:
        raise ValueError(
            f"q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)} disagree; need k [B, H, Lk, D] and "
            "v [B, H, Lk, Dv] with q's B, H, D"
        )
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"q, k, v dtypes differ ({q.dtype}, {k.dtype}, {v.dtype}); cast them to one dtype")
    if key_mask.shape != (B, k.shape[2]):
        raise ValueError(
            f"key_mask has shape {tuple(key_mask.shape)}; expected [B, Lk] = [{B}, {k.shape[2]}] (one weight per key, "
            "shared by heads and queries)"
        )
    if key_mask.device != q.device:
        raise ValueError(f"key_mask is on {key_mask.device} but q is on {q.device}; move it with .to()")
    scale = D**-0.5 if scale is None else float(scale)
    if eager_fast_path(q):
        return _RegionAttentionEager.apply(q, k, v, key_mask, scale)
    out, _ = torch.ops.spatialreward.region_attention(q, k, v, key_mask, scale)
    return out


# %%
# Benchmark declaration (bench/kernels.py times these; nothing runs here)
# -------------------------------------------------------------------------
# Student shapes: 14x14 image tokens attend to the tokens of an edit region (a box covering 5% / 25% / 100% of
# the grid); C in {192, 384} with head dim 64 -> 3 or 6 heads. Providers: ours, SDPA with a dense boolean mask,
# FlexAttention with a block mask (its build is timed too, since the region changes every batch).

BENCH_GRID = (14, 14)
BENCH_HEAD_DIM = 64
BENCH_SHAPES = [
    dict(B=B, heads=C // BENCH_HEAD_DIM, Lq=BENCH_GRID[0] * BENCH_GRID[1], region=r)
    for B in (1, 64, 256) for C in (192, 384) for r in (0.05, 0.25, 1.0)
]
BENCH_PROVIDERS = ("triton", "sdpa_dense_mask", "flex_block_mask", "reference")


def bench_key_mask(B: int, region: float, grid=BENCH_GRID, device="cpu", seed: int = 0) -> Tensor:
    """``[B, gh*gw]`` bool masks: the tokens inside a random box covering `region` of the grid."""
    gh, gw = grid
    g = torch.Generator().manual_seed(seed)
    bh = max(1, round(gh * math.sqrt(region)))
    bw = max(1, round(gw * math.sqrt(region)))
    y0 = torch.randint(0, gh - bh + 1, (B,), generator=g)
    x0 = torch.randint(0, gw - bw + 1, (B,), generator=g)
    ys = torch.arange(gh)[None, :, None]
    xs = torch.arange(gw)[None, None, :]
    inside = (ys >= y0[:, None, None]) & (ys < (y0 + bh)[:, None, None])
    inside = inside & (xs >= x0[:, None, None]) & (xs < (x0 + bw)[:, None, None])
    return inside.reshape(B, gh * gw).to(device)  # [B, Lk]


def bench_flops(B: int, heads: int, Lq: int, region_keys: float, head_dim: int = BENCH_HEAD_DIM,
                with_backward: bool = False) -> float:
    """Useful FLOPs over the region's keys only: forward = 2 matmuls of 2*Lq*keys*D; the backward adds 2.5x that
    (5 matmuls, FlashAttention's convention), so forward+backward = 3.5x."""
    fwd = 4.0 * B * heads * Lq * region_keys * head_dim
    return fwd * (3.5 if with_backward else 1.0)


def bench_min_bytes(B: int, heads: int, Lq: int, region_keys: float, Lk: int, head_dim: int = BENCH_HEAD_DIM,
                    elem: int = 2, with_backward: bool = False) -> float:
    """Least bytes. Forward: read q and the region's k, v, write out, read the fp32 mask. The backward adds:
    read q, out, dO and the region's k, v, write dq and every key's dk, dv (zeros outside the region)."""
    fwd = B * heads * head_dim * elem * (2 * Lq + 2 * region_keys) + B * Lk * 4
    if not with_backward:
        return float(fwd)
    bwd = B * heads * head_dim * elem * (4 * Lq + 2 * region_keys + 2 * Lk)
    return float(fwd + bwd)
