"""Region-masked attention: reference and Triton (interpreter on CPU) against SDPA with a mask.

Random / full / empty masks, soft weights (SDPA with an additive log-weight mask), several head counts, lengths
and head dims that are not multiples of the tiles, gradients. Shapes stay tiny: the interpreter runs each program
in Python on 2 shared cores, with 16x16 tiles, so Lk=37 already exercises 3 key tiles incl. a ragged one.
"""

from __future__ import annotations

import os

# Triton reads this when it is imported: kernels on CPU tensors run in its interpreter. GPU runs must export
# TRITON_INTERPRET=0 first (bench/gpu_session.sh does), or the compiled kernels would never be exercised.
os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from spatialreward.kernels import HAS_TRITON, region_attention, use_backend  # noqa: E402
from spatialreward.kernels import _backend  # noqa: E402
from tests.fixtures.kernels import BACKENDS, needs_cuda  # noqa: E402


def _inputs(B, H, Lq, Lk, D, Dv=None, dtype=torch.float32, device="cpu", seed=0):
    """q, k, v ``[B, H, L, D]`` as views of ``[B, L, H, D]`` (non-contiguous, like heads split off a projection)."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, Lq, H, D, generator=g).to(device, dtype).transpose(1, 2)
    k = torch.randn(B, Lk, H, D, generator=g).to(device, dtype).transpose(1, 2)
    v = torch.randn(B, Lk, H, Dv or D, generator=g).to(device, dtype).transpose(1, 2)
    return q, k, v


def _mask(kind: str, B: int, Lk: int, seed=0, device="cpu") -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if kind == "full":
        return torch.ones(B, Lk, dtype=torch.bool, device=device)
    m = torch.rand(B, Lk, generator=g) < 0.3
    m[:, 0] = False
    m[0, Lk // 2] = True  # every sample but the last has at least one key
    if kind == "random_with_empty":
        m[-1] = False
    return m.to(device)


def _sdpa(q, k, v, weights: torch.Tensor) -> torch.Tensor:
    """SDPA with an additive log-weight mask; samples with an empty region are defined as zeros."""
    w = weights.float()
    bias = torch.where(w > 0, torch.log(w.clamp(min=1e-30)), torch.tensor(float("-inf")))[:, None, None, :]
    nonempty = (w > 0).any(1)
    out = torch.zeros(*q.shape[:3], v.shape[-1], dtype=q.dtype)
    if nonempty.any():
        out[nonempty] = F.scaled_dot_product_attention(
            q[nonempty], k[nonempty], v[nonempty], attn_mask=bias[nonempty].to(q.dtype)
        )
    return out


def _run(backend, *args, **kwargs):
    with use_backend(backend):
        return region_attention(*args, **kwargs)


def _run_backward(backend, grad, *args):
    """Forward and backward on one backend (the backward dispatches on the backend when it runs)."""
    with use_backend(backend):
        out = region_attention(*args)
        out.backward(grad)
    return out


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", ["random", "random_with_empty", "full"])
@pytest.mark.parametrize("shape", [(2, 1, 20, 37, 16), (3, 3, 5, 17, 24)])  # (B, H, Lq, Lk, D)
def test_matches_sdpa(backend, kind, shape):
    B, H, Lq, Lk, D = shape
    q, k, v = _inputs(B, H, Lq, Lk, D)
    mask = _mask(kind, B, Lk)
    out = _run(backend, q, k, v, mask)
    torch.testing.assert_close(out, _sdpa(q, k, v, mask), atol=2e-5, rtol=2e-5)
    if kind == "random_with_empty":
        assert torch.equal(out[-1], torch.zeros_like(out[-1]))  # exact zeros, not NaN
    if kind == "full":
        torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v), atol=2e-5, rtol=2e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_soft_weights_and_scale(backend):
    B, H, Lq, Lk, D = 2, 2, 9, 33, 16
    q, k, v = _inputs(B, H, Lq, Lk, D, Dv=8, seed=1)
    g = torch.Generator().manual_seed(1)
    w = torch.rand(B, Lk, generator=g) * (torch.rand(B, Lk, generator=g) < 0.5)  # soft weights with zeros
    out = _run(backend, q, k, v, w, scale=0.3)
    bias = torch.where(w > 0, torch.log(w.clamp(min=1e-30)), float("-inf"))[:, None, None, :]
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=0.3)
    torch.testing.assert_close(out, ref, atol=2e-5, rtol=2e-5)


@pytest.mark.skipif(not HAS_TRITON, reason="triton is not importable here")
def test_triton_fp16_matches_reference():
    q, k, v = _inputs(2, 2, 20, 40, 32, dtype=torch.float16, seed=2)
    mask = _mask("random_with_empty", 2, 40, seed=2)
    out = _run("triton", q, k, v, mask)
    ref = _run("reference", q, k, v, mask)
    assert out.dtype == torch.float16
    torch.testing.assert_close(out.float(), ref.float(), atol=2e-3, rtol=2e-3)


@pytest.mark.parametrize("kind", ["random_with_empty", "full"])
@pytest.mark.skipif(not HAS_TRITON, reason="triton is not importable here")
def test_triton_gradients_match_reference(kind):
    B, H, Lq, Lk, D = 2, 2, 19, 35, 24
    q, k, v = _inputs(B, H, Lq, Lk, D, seed=3)
    mask = _mask(kind, B, Lk, seed=3)
    if kind == "full":
        mask = mask.float() * 0.5 + 0.25  # soft weights everywhere
    grad = torch.randn(B, H, Lq, D, generator=torch.Generator().manual_seed(3))
    grads = {}
    for backend in ("reference", "triton"):
        leaves = [t.clone().requires_grad_() for t in (q, k, v)]
        _run_backward(backend, grad, *leaves, mask)
        grads[backend] = [t.grad for t in leaves]
    for name, got, want in zip("qkv", grads["triton"], grads["reference"]):
        torch.testing.assert_close(got, want, atol=2e-5, rtol=2e-5, msg=lambda m: f"d{name}: {m}")
    if kind == "random_with_empty":
        for t in grads["triton"]:
            assert torch.equal(t[-1], torch.zeros_like(t[-1]))  # empty region: zero gradients, no NaN


def test_reference_gradients_match_sdpa_autograd():
    q, k, v = _inputs(2, 3, 7, 21, 16, seed=4)
    mask = _mask("random", 2, 21, seed=4)
    ours = [t.clone().requires_grad_() for t in (q, k, v)]
    theirs = [t.clone().requires_grad_() for t in (q, k, v)]
    grad = torch.randn(2, 3, 7, 16)
    _run("reference", *ours, mask).backward(grad)
    F.scaled_dot_product_attention(*theirs, attn_mask=mask[:, None, None, :]).backward(grad)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a.grad, b.grad, atol=2e-5, rtol=2e-5)


def test_reference_gradcheck_fp64():
    q, k, v = _inputs(2, 2, 4, 6, 3, dtype=torch.float64, seed=5)
    w = torch.tensor([[0.0, 0.3, 1.0, 0.0, 0.7, 1.0], [0.0] * 6], dtype=torch.float64)  # soft + empty sample
    leaves = [t.requires_grad_() for t in (q, k, v)]
    with use_backend("reference"):
        assert torch.autograd.gradcheck(lambda a, b, c: region_attention(a, b, c, w), leaves)


def test_reference_mask_gradient_fp64():
    """d out / d w: gradcheck where weights are > 0, and the one-sided derivative where a weight is exactly 0."""
    q, k, v = _inputs(2, 2, 4, 6, 3, dtype=torch.float64, seed=8)
    w = torch.tensor([[0.2, 0.3, 1.0, 0.9, 0.7, 0.5], [0.4, 0.6, 0.25, 0.8, 0.3, 1.0]], dtype=torch.float64)
    with use_backend("reference"):
        assert torch.autograd.gradcheck(lambda a, b, c, m: region_attention(a, b, c, m),
                                        [t.clone().requires_grad_() for t in (q, k, v, w)])
        w0 = torch.tensor([[0.0, 0.3, 1.0, 0.0, 0.7, 1.0], [0.0] * 6], dtype=torch.float64, requires_grad=True)
        g = torch.randn(2, 2, 4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(8))
        (region_attention(q, k, v, w0) * g).sum().backward()
        eps = 1e-7
        bumped = w0.detach().clone()
        bumped[0, 0] += eps  # a key outside the region, pulled in a little
        numeric = ((region_attention(q, k, v, bumped) - region_attention(q, k, v, w0.detach())) * g).sum() / eps
    torch.testing.assert_close(w0.grad[0, 0], numeric, atol=1e-5, rtol=1e-5)
    assert torch.equal(w0.grad[1], torch.zeros(6, dtype=torch.float64))  # empty region: defined as 0


@pytest.mark.skipif(not HAS_TRITON, reason="triton is not importable here")
def test_triton_mask_gradient_matches_reference():
    B, H, Lq, Lk, D = 3, 2, 19, 35, 16
    q, k, v = _inputs(B, H, Lq, Lk, D, seed=9)
    g = torch.Generator().manual_seed(9)
    w = torch.rand(B, Lk, generator=g) * (torch.rand(B, Lk, generator=g) < 0.4)  # zeros: whole tiles outside
    w[:, 16:32] = 0.0  # one key tile entirely outside the region still gets weight gradients
    w[-1] = 0.0  # an empty region
    grad = torch.randn(B, H, Lq, D, generator=g)
    grads = {}
    for backend in ("reference", "triton"):
        leaves = [t.clone().requires_grad_() for t in (q, k, v, w)]
        _run_backward(backend, grad, *leaves)
        grads[backend] = [t.grad for t in leaves]
    for name, got, want in zip(("dq", "dk", "dv", "dw"), grads["triton"], grads["reference"]):
        torch.testing.assert_close(got, want, atol=3e-5, rtol=3e-5, msg=lambda m: f"{name}: {m}")
    assert grads["triton"][3][0, 16:32].abs().sum() > 0  # outside keys have a (right-)derivative
    assert torch.equal(grads["triton"][3][-1], torch.zeros(Lk))


def test_opcheck():
    q, k, v = _inputs(2, 2, 5, 9, 8, seed=6)
    mask = _mask("random_with_empty", 2, 9, seed=6)
    for t in (q, k, v):
        t.requires_grad_()
    torch.library.opcheck(torch.ops.spatialreward.region_attention.default, (q, k, v, mask, 0.35))


def test_errors_name_the_fix():
    q, k, v = _inputs(2, 2, 5, 9, 8)
    with pytest.raises(ValueError, match=r"key_mask has shape \(2, 8\); expected \[B, Lk\] = \[2, 9\]"):
        region_attention(q, k, v, torch.ones(2, 8, dtype=torch.bool))
    with pytest.raises(ValueError, match="expected \\[B, H, L, D\\]"):
        region_attention(q[0], k[0], v[0], torch.ones(2, 9))


# ---- GPU: the compiled kernels at the student's shapes, incl. bf16 -------------------------------------------------


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("region", [0.05, 0.25, 1.0])
def test_gpu_student_shapes(dtype, region):
    if _backend.interpreter_enabled():
        pytest.skip("TRITON_INTERPRET=1 would run the GPU tests in the interpreter; run them with TRITON_INTERPRET=0")
    from spatialreward.kernels.region_attention import bench_key_mask

    B, H, L, D = 64, 6, 196, 64
    q, k, v = _inputs(B, H, L, L, D, dtype=dtype, device="cuda", seed=7)
    mask = bench_key_mask(B, region, device="cuda")
    mask[-1] = False  # one empty region
    grad = torch.randn(B, H, L, D, device="cuda", dtype=dtype)
    res = {}
    for backend in ("reference", "triton"):
        leaves = [t.clone().requires_grad_() for t in (q, k, v)]
        out = _run_backward(backend, grad, *leaves, mask)
        res[backend] = [out.float()] + [t.grad.float() for t in leaves]
    tol = {torch.float32: 1e-4, torch.float16: 5e-3, torch.bfloat16: 4e-2}[dtype]
    for name, got, want in zip(("out", "dq", "dk", "dv"), res["triton"], res["reference"]):
        assert torch.isfinite(got).all(), name
        torch.testing.assert_close(got, want, atol=tol, rtol=tol, msg=lambda m: f"{name}: {m}")


# ---- CPU-side: the kernels lower for a real GPU (bf16 can't run in the interpreter) ------------------------------

_COMPILE_ATTENTION = """
import importlib, sys
from spatialreward.kernels import _backend
try:
    from triton.backends.nvidia.compiler import CUDABackend
except ImportError:
    print("SKIP no NVIDIA backend in this triton build"); sys.exit(0)
module = importlib.import_module("spatialreward.kernels.region_attention")
for mask_type in ("*i1", "*fp32"):  # bool masks are read as they are; float weights as fp32
    partition = module._partition_keys_kernel
    signature = {"w_ptr": mask_type, "order_ptr": "*i32", "count_ptr": "*i32", "LK": "i32", "stride_wb": "i32",
                 "stride_wn": "i32"}
    assert _backend.compile_for_gpu(partition, signature, {"BLOCK": 256}).asm["cubin"], ("partition", mask_type)
    for which in ("fwd", "bwd_dkdv", "bwd_dq"):
        kernel = getattr(module, f"_region_attn_{which}_kernel")
        names = kernel.fn.arg_names
        signature = {n: ("*bf16" if n.endswith("_ptr") else "i32") for n in names}
        signature |= {"w_ptr": mask_type, "order_ptr": "*i32", "count_ptr": "*i32", "lse_ptr": "*fp32",
                      "dw_ptr": "*fp32", "qk_scale": "fp32", "sm_scale": "fp32"}
        signature = {k: v for k, v in signature.items() if k in names}
        meta = {"BLOCK_M": 64, "BLOCK_N": 32, "BLOCK_D": 64, "BLOCK_DV": 64, "INPUT_PRECISION": "tf32"}
        for extra in ([{"MASK_GRAD": False}, {"MASK_GRAD": True}] if which == "bwd_dkdv" else [{}]):
            signature = {k: v for k, v in signature.items() if k not in extra}
            assert _backend.compile_for_gpu(kernel, signature, meta | extra).asm["cubin"], (which, extra)
print("ok")
"""


@pytest.mark.skipif(not HAS_TRITON, reason="triton is not importable here")
def test_kernels_compile_for_sm90_bf16():
    """The key partition, forward, dK/dV and dQ lower to a cubin for sm_90 in bf16, with bool and float masks
    (a fresh process: no interpreter there)."""
    import subprocess
    import sys

    env = {**os.environ, "TRITON_INTERPRET": "0"}
    done = subprocess.run([sys.executable, "-c", _COMPILE_ATTENTION], capture_output=True, text=True, timeout=300,
                          env=env)
    if done.stdout.startswith("SKIP"):
        pytest.skip(done.stdout.strip())
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-3000:]
