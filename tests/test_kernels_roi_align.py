"""RoIAlign (NCHW and token layout): reference and Triton (interpreter on CPU) against torchvision.ops.roi_align.

Follows torchvision's own test recipe: both `aligned` values, fixed and adaptive sampling, non-contiguous inputs,
fp16 with a looser tolerance, plus the edge cases our student hits (boxes partly or wholly outside the map,
zero-area boxes, K=0, batch index != 0, channel counts that are not a multiple of the channel block). Shapes are
tiny because Triton's interpreter runs every program in Python on 2 shared CPU cores.
"""

from __future__ import annotations

import os

# Triton reads this when it is imported: kernels on CPU tensors run in its interpreter. GPU runs must export
# TRITON_INTERPRET=0 first (bench/gpu_session.sh does), or the compiled kernels would never be exercised.
os.environ.setdefault("TRITON_INTERPRET", "1")

import subprocess  # noqa: E402
import sys  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
import torchvision  # noqa: E402

from spatialreward.kernels import (  # noqa: E402
    HAS_TRITON,
    get_backend,
    roi_align,
    roi_align_tokens,
    set_backend,
    use_backend,
)
from spatialreward.kernels import _backend  # noqa: E402
from spatialreward.kernels.roi_align import roi_align_reference  # noqa: E402
from tests.fixtures.kernels import BACKENDS, needs_cuda  # noqa: E402

TOL = {torch.float32: dict(atol=1e-5, rtol=1e-5), torch.float16: dict(atol=4e-3, rtol=4e-3)}


def _boxes(device="cpu", dtype=torch.float32) -> torch.Tensor:
    """Edge cases in one batch, in input pixels at spatial_scale 1 (maps are 10x12)."""
    return torch.tensor(
        [
            [0, 1.3, 2.1, 7.7, 8.2],  # inside
            [1, -3.0, -2.0, 4.0, 5.0],  # partly outside (top-left)
            [1, 8.0, 7.0, 30.0, 20.0],  # partly outside (bottom-right), big: adaptive grid > 1
            [0, 3.0, 3.0, 3.0, 3.0],  # zero area
            [1, -10.0, -10.0, -5.0, -5.0],  # wholly outside: zeros
            [0, 0.2, 0.3, 11.9, 9.9],  # whole map
            [1, 5.5, 0.0, 6.0, 9.9],  # thin
        ],
        device=device,
        dtype=dtype,
    )


def _run(backend: str, fn, *args, **kwargs):
    with use_backend(backend):
        return fn(*args, **kwargs)


def _run_backward(backend: str, grad, fn, *args):
    """Forward and backward on one backend (the backward dispatches on the backend when it runs)."""
    with use_backend(backend):
        out = fn(*args)
        out.backward(grad)
    return out


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("sampling_ratio", [-1, 0, 2])
def test_matches_torchvision_fp32(backend, aligned, sampling_ratio):
    torch.manual_seed(0)
    x = torch.randn(2, 5, 10, 12)  # C=5: not a multiple of any channel block
    for scale in (1.0, 0.5):
        ours = _run(backend, roi_align, x, _boxes(), (3, 4), scale, sampling_ratio, aligned)
        ref = torchvision.ops.roi_align(x, _boxes(), (3, 4), scale, sampling_ratio, aligned)
        torch.testing.assert_close(ours, ref, **TOL[torch.float32])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("aligned", [False, True])
def test_matches_torchvision_fp16(backend, aligned):
    torch.manual_seed(1)
    x = torch.randn(2, 6, 10, 12).half()
    ours = _run(backend, roi_align, x, _boxes(), 3, 0.5, -1, aligned)
    assert ours.dtype == torch.float16
    ref = torchvision.ops.roi_align(x.float(), _boxes(), 3, 0.5, -1, aligned)  # same fp16 values, fp32 math
    torch.testing.assert_close(ours.float(), ref, **TOL[torch.float16])


@pytest.mark.parametrize("backend", BACKENDS)
def test_non_contiguous_inputs(backend):
    torch.manual_seed(2)
    x = torch.randn(2, 10, 12, 7).permute(0, 3, 1, 2)  # channels-last strides, NCHW shape
    boxes = _boxes().t().contiguous().t()  # column-major boxes
    assert not x.is_contiguous() and not boxes.is_contiguous()
    ours = _run(backend, roi_align, x, boxes, (2, 3), 1.0, 2, True)
    ref = torchvision.ops.roi_align(x.contiguous(), boxes.contiguous(), (2, 3), 1.0, 2, True)
    torch.testing.assert_close(ours, ref)


@pytest.mark.parametrize("backend", BACKENDS)
def test_wholly_outside_is_zero_and_empty_k(backend):
    x = torch.randn(2, 3, 10, 12)
    out = _run(backend, roi_align, x, _boxes()[4:5], 2)
    assert torch.equal(out, torch.zeros(1, 3, 2, 2))
    empty = _run(backend, roi_align, x.requires_grad_(), torch.zeros(0, 5), (2, 3))
    assert empty.shape == (0, 3, 2, 3)
    empty.sum().backward()
    assert torch.equal(x.grad, torch.zeros_like(x))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("num_prefix_tokens", [0, 1])
def test_tokens_equal_nchw_path(backend, num_prefix_tokens):
    torch.manual_seed(3)
    B, gh, gw, C = 2, 10, 12, 9
    tokens = torch.randn(B, num_prefix_tokens + gh * gw, C)
    if num_prefix_tokens:  # also a non-contiguous token tensor (channel stride != 1)
        tokens = tokens.transpose(1, 2).contiguous().transpose(1, 2)
    ours = _run(backend, roi_align_tokens, tokens, _boxes(), (gh, gw), (3, 2), 0.5, -1, False, num_prefix_tokens)
    maps = tokens[:, num_prefix_tokens:].transpose(1, 2).reshape(B, C, gh, gw)  # [B, C, gh, gw]
    ref = torchvision.ops.roi_align(maps, _boxes(), (3, 2), 0.5, -1, False).permute(0, 2, 3, 1)  # [K, oh, ow, C]
    assert ours.shape == (7, 3, 2, C)
    torch.testing.assert_close(ours, ref, **TOL[torch.float32])


@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.skipif(not HAS_TRITON, reason="triton is not importable here")
def test_triton_backward_matches_reference(aligned):
    torch.manual_seed(4)
    x = torch.randn(2, 5, 10, 12)
    boxes = torch.cat([_boxes(), _boxes()[:3] + torch.tensor([0, 0.5, 0.5, 0.5, 0.5])])  # overlapping RoIs
    grad = torch.randn(boxes.shape[0], 5, 3, 4)
    grads = {}
    for backend in ("reference", "triton"):
        xr = x.clone().requires_grad_()
        _run_backward(backend, grad, roi_align, xr, boxes, (3, 4), 0.5, -1, aligned)
        grads[backend] = xr.grad
    xt = x.clone().requires_grad_()
    torchvision.ops.roi_align(xt, boxes, (3, 4), 0.5, -1, aligned).backward(grad)
    torch.testing.assert_close(grads["reference"], xt.grad, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(grads["triton"], grads["reference"], atol=1e-5, rtol=1e-5)


@pytest.mark.skipif(not HAS_TRITON, reason="triton is not importable here")
def test_triton_tokens_backward_matches_reference():
    torch.manual_seed(5)
    tokens = torch.randn(2, 1 + 6 * 8, 7)
    boxes = torch.tensor([[0, 0.5, 0.5, 5.0, 4.0], [1, -1.0, 2.0, 9.0, 7.0], [1, 1.0, 1.0, 3.0, 2.0]])
    grad = torch.randn(3, 2, 3, 7)
    grads = {}
    for backend in ("reference", "triton"):
        t = tokens.clone().requires_grad_()
        _run_backward(backend, grad, roi_align_tokens, t, boxes, (6, 8), (2, 3), 1.0, -1, True, 1)
        grads[backend] = t.grad
    assert torch.equal(grads["triton"][:, 0], torch.zeros(2, 7))  # the class token gets no gradient
    torch.testing.assert_close(grads["triton"], grads["reference"], atol=1e-5, rtol=1e-5)


def test_reference_gradcheck_fp64():
    torch.manual_seed(6)
    x = torch.randn(2, 2, 5, 6, dtype=torch.float64, requires_grad=True)
    boxes = torch.tensor([[0, 0.3, 0.6, 4.2, 3.1], [1, -1.0, 1.0, 3.0, 7.0]], dtype=torch.float64)
    with use_backend("reference"):
        assert torch.autograd.gradcheck(lambda t: roi_align(t, boxes, 2, 1.0, -1, True), (x,))
        assert torch.autograd.gradgradcheck(lambda t: roi_align(t, boxes, 2, 1.0, 2, False), (x,))
        tokens = torch.randn(2, 1 + 5 * 6, 3, dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradcheck(lambda t: roi_align_tokens(t, boxes, (5, 6), 2, 1.0, -1, True, 1), (tokens,))


def test_reference_is_vectorised_plain_torch():
    """The reference must run on any device/dtype torch supports; fp64 matches torchvision to 1e-12."""
    x = torch.randn(2, 3, 10, 12, dtype=torch.float64)
    ours = roi_align_reference(x, _boxes(dtype=torch.float64), (3, 4), 0.5, -1, True)
    ref = torchvision.ops.roi_align(x, _boxes(dtype=torch.float64), (3, 4), 0.5, -1, True)
    torch.testing.assert_close(ours, ref, atol=1e-12, rtol=1e-12)


def test_opcheck():
    x = torch.randn(2, 3, 6, 7, requires_grad=True)
    boxes = torch.tensor([[0, 0.5, 0.5, 4.0, 5.0], [1, 1.0, 0.0, 6.0, 3.0]])
    ops = torch.ops.spatialreward
    torch.library.opcheck(ops.roi_align.default, (x, boxes, 2, 3, 1.0, -1, True))
    tokens = torch.randn(2, 1 + 6 * 7, 3, requires_grad=True)
    torch.library.opcheck(ops.roi_align_tokens.default, (tokens, boxes, 6, 7, 2, 2, 1.0, 2, False, 1))


def test_errors_name_the_fix():
    x = torch.randn(1, 3, 6, 7)
    with pytest.raises(ValueError, match=r"boxes has shape \(2, 4\).*batch index"):
        roi_align(x, torch.zeros(2, 4), 2)
    with pytest.raises(ValueError, match="grid_size=6x6 plus num_prefix_tokens=0 needs 36"):
        roi_align_tokens(torch.randn(1, 37, 3), torch.zeros(1, 5), (6, 6), 2)
    with pytest.raises(ValueError, match="backend 'cuda' is unknown"):
        set_backend("cuda")  # type: ignore[arg-type]


def test_backend_switch_and_env(monkeypatch):
    assert get_backend() == "auto"
    with use_backend("reference"):
        assert get_backend() == "reference"
        assert not _backend.use_triton(torch.zeros(1))
    assert get_backend() == "auto"
    assert not _backend.use_triton(torch.zeros(1))  # auto: CPU tensors take the reference
    monkeypatch.setenv("SPATIALREWARD_KERNELS", "reference")
    assert _backend._backend_from_env() == "reference"
    monkeypatch.setenv("SPATIALREWARD_KERNELS", "fast")
    with pytest.raises(ValueError, match="SPATIALREWARD_KERNELS='fast'"):
        _backend._backend_from_env()


def test_works_without_triton():
    """A CPU-only install without triton imports the kernels and runs the reference; forcing Triton says why not."""
    code = (
        "import sys; sys.modules['triton'] = None\n"
        "import torch, spatialreward.kernels as k\n"
        "assert not k.HAS_TRITON\n"
        "x = torch.randn(1, 2, 5, 5, requires_grad=True)\n"
        "k.roi_align(x, torch.tensor([[0, 0.0, 0.0, 3.0, 3.0]]), 2).sum().backward()\n"
        "q = torch.randn(1, 1, 3, 4)\n"
        "k.region_attention(q, q, q, torch.ones(1, 3, dtype=torch.bool))\n"
        "try:\n"
        "    k.set_backend('triton')\n"
        "except RuntimeError as e:\n"
        "    assert 'install triton' in str(e), e\n"
        "else:\n"
        "    raise SystemExit('set_backend(triton) should fail without triton')\n"
        "print('ok')\n"
    )
    env = {**os.environ, "SPATIALREWARD_KERNELS": "auto"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


# ---- GPU: the compiled kernels at the student's shapes, incl. bf16 -------------------------------------------------


def _gpu_ready():
    if _backend.interpreter_enabled():
        pytest.skip("TRITON_INTERPRET=1 would run the GPU tests in the interpreter; run them with TRITON_INTERPRET=0")


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("aligned", [False, True])
def test_gpu_tokens_forward_backward(dtype, aligned):
    _gpu_ready()
    from spatialreward.kernels.roi_align import bench_boxes

    torch.manual_seed(7)
    B, C = 64, 384
    tokens = torch.randn(B, 1 + 196, C, device="cuda", dtype=dtype)
    boxes = torch.cat([bench_boxes(B, 2, r, device="cuda", seed=i) for i, r in enumerate((0.05, 0.25, 1.0))])
    boxes = torch.cat([boxes, _boxes(device="cuda")])  # edge cases (batch 0/1)
    grad = torch.randn(boxes.shape[0], 7, 7, C, device="cuda", dtype=dtype)
    res = {}
    for backend in ("reference", "triton"):
        t = tokens.clone().requires_grad_()
        out = _run_backward(backend, grad, roi_align_tokens, t, boxes, (14, 14), 7, 1.0, -1, aligned, 1)
        res[backend] = (out.float(), t.grad.float())
    tol = {torch.float32: 1e-5, torch.float16: 4e-3, torch.bfloat16: 3e-2}[dtype]
    torch.testing.assert_close(res["triton"][0], res["reference"][0], atol=tol, rtol=tol)
    torch.testing.assert_close(res["triton"][1], res["reference"][1], atol=tol * 4, rtol=tol)


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("sampling_ratio", [-1, 2])
def test_gpu_nchw_matches_torchvision(sampling_ratio):
    _gpu_ready()
    torch.manual_seed(8)
    x = torch.randn(4, 37, 20, 24, device="cuda")
    boxes = torch.cat([_boxes(device="cuda"), _boxes(device="cuda") * torch.tensor([1, 2, 2, 2, 2.0], device="cuda")])
    for aligned in (False, True):
        ours = _run("triton", roi_align, x, boxes, (5, 6), 0.5, sampling_ratio, aligned)
        ref = torchvision.ops.roi_align(x, boxes, (5, 6), 0.5, sampling_ratio, aligned)
        torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)


# ---- CPU-side: the kernels lower for a real GPU (bf16 can't run in the interpreter) ------------------------------

_COMPILE_ROI = """
import sys
from spatialreward.kernels import _backend
from spatialreward.kernels.roi_align import _roi_align_bwd_kernel, _roi_align_fwd_kernel
try:
    from triton.backends.nvidia.compiler import CUDABackend
except ImportError:
    print("SKIP no NVIDIA backend in this triton build"); sys.exit(0)
pointers = {"x_ptr": "*bf16", "out_ptr": "*bf16", "g_ptr": "*bf16", "gx_ptr": "*fp32", "boxes_ptr": "*fp32"}
for kernel in (_roi_align_fwd_kernel, _roi_align_bwd_kernel):
    names = kernel.fn.arg_names
    signature = {n: "i32" for n in names} | {"spatial_scale": "fp32"}
    signature |= {k: v for k, v in pointers.items() if k in names}
    compiled = _backend.compile_for_gpu(kernel, signature, {"ALIGNED": True, "BLOCK_P": 16, "BLOCK_C": 64})
    assert compiled.asm["cubin"], kernel
print("ok")
"""


@pytest.mark.skipif(not HAS_TRITON, reason="triton is not importable here")
def test_kernels_compile_for_sm90_bf16():
    """Forward and backward lower to a cubin for sm_90 in bf16 (a fresh process: no interpreter there)."""
    env = {**os.environ, "TRITON_INTERPRET": "0"}
    done = subprocess.run([sys.executable, "-c", _COMPILE_ROI], capture_output=True, text=True, timeout=300, env=env)
    if done.stdout.startswith("SKIP"):
        pytest.skip(done.stdout.strip())
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-3000:]
