"""torchvision's own RoIAlign tests, ported to `spatialreward.kernels`, on the reference and the Triton backends.

Upstream: repository pytorch/vision, file ``test/test_ops.py``, commit 00673be3960268a837860cd6a05373d9861221d3
(classes ``RoIOpTester`` / ``TestRoIAlign``, plus the RoIAlign parts of ``TestBoxConversionToRoi`` and
``TestMultiScaleRoIAlign``). Re-written here, not copied: the oracle below is our own per-sample loop in fp64, the
same shapes, boxes, dtypes, tolerances and gradcheck settings as upstream. Every test runs on the ``reference``
backend and on the ``triton`` backend (Triton's interpreter on CPU: tests/conftest.py sets TRITON_INTERPRET=1 when
there is no GPU); ``cuda`` cases are marked ``gpu`` and run in bench/gpu_session.sh (step ``tests``).

Ported (upstream name -> here):
  test_forward (fp16/fp32/fp64, contiguous or not, aligned)      -> test_forward
  test_autocast (CUDA fp16 autocast)                             -> test_autocast_cuda (gpu; plus bf16 autocast)
  CPU autocast (newer upstream / issue 15: bf16 autocast on CPU) -> test_autocast_cpu
  test_is_leaf_node (get_graph_node_names)                       -> test_is_leaf_node
  test_torch_fx_trace                                            -> test_torch_fx_trace
  test_backward (gradcheck fp64, atol 1e-5, 10 seeds)            -> test_backward
  test_backward's TorchScript gradcheck (get_script_fn)          -> test_backward_torchscript (scripts the
                                                                    registered op torch.ops.spatialreward.roi_align)
  test_boxes_shape                                               -> test_boxes_shape (AssertionError, as upstream)
  test_jit_boxes_list (list of transposed boxes, eager part)     -> test_boxes_list_of_transposed_tensors
  TestBoxConversionToRoi (tensor / list / tuple boxes)           -> test_box_sequences_agree
  TestMultiScaleRoIAlign (the pooler on top of roi_align)        -> test_multiscale_roi_align_on_our_op
Added for our op: the same list / autocast / fp64 / fx behaviour for `roi_align_tokens`; the kernels' fp32 gradient
against the oracle's; and the fp32 -> bf16 output cast (see test_bf16_output_cast: Triton's interpreter truncates
where compiled kernels round to nearest, so CPU bf16 runs of the Triton backend are one bf16 ulp looser).

Left out, and why:
  * TorchScript of the Python wrapper (test_jit_boxes_list's torch.jit.script(model), get_script_fn scripting
    ops.roi_align): that scripts torchvision's C++-registered front end; our front end is Python (list boxes, fx
    proxies) and TorchScript is deprecated. The registered op itself is scripted in test_backward_torchscript.
  * torch.ops.torchvision opcheck (optests.generate_opcheck_tests): tests torchvision's op registrations; ours
    are opchecked in tests/test_kernels_roi_align.py::test_opcheck.
  * test_qroialign / test_qroi_align_multiple_images: quantized tensors; our op has no quantized kernels.
  * test_mps_error_inputs and the mps device cases: no MPS backend here.
  * deterministic=True on CPU: upstream skips it too (CPU is deterministic); on CUDA it runs (gpu cases).
  * PSRoIAlign / RoIPool / PSRoIPool testers: other ops.
"""

from __future__ import annotations

import math

import pytest
import torch
import torchvision
from torchvision.models.feature_extraction import get_graph_node_names

from spatialreward.kernels import (
    HAS_TRITON,
    RoIAlign,
    RoIBoxesError,
    roi_align,
    roi_align_reference,
    roi_align_tokens,
    use_backend,
)
from spatialreward.kernels import _backend
from tests.fixtures.kernels import BACKENDS, needs_cuda

CUDA = pytest.param("cuda", marks=[pytest.mark.gpu, needs_cuda])
DEVICES = ["cpu", CUDA]

# upstream's boxes: (batch_index, x1, y1, x2, y2) on 10x10 maps, whole map / a quarter / a corner / second image
UPSTREAM_ROIS = [[0, 0, 0, 9, 9], [0, 0, 5, 4, 9], [0, 5, 5, 9, 9], [1, 0, 0, 9, 9]]
BACKWARD_ROIS = [[0, 0, 0, 4, 4], [0, 0, 2, 3, 4], [0, 2, 2, 4, 4]]  # on a 5x5 map


@pytest.fixture(params=BACKENDS)
def backend(request):
    """Each test body runs with this kernel backend chosen (the backward too: it runs inside the block)."""
    with use_backend(request.param):
        yield request.param


def _cuda_ready(device):
    if device == "cuda" and _backend.interpreter_enabled():
        pytest.skip("TRITON_INTERPRET=1 would interpret the CUDA kernels; run the gpu cases with TRITON_INTERPRET=0")


# ---- oracle: RoIAlign one sample at a time, in fp64 -----------------------------------------------------------------


def _sample(plane: torch.Tensor, y: float, x: float) -> torch.Tensor:
    """Bilinear sample of ``plane[C, H, W]`` at (y, x), torchvision's rules: zero outside [-1, H] x [-1, W], clamped
    to the map inside, the last row/column repeated at the far edge."""
    C, H, W = plane.shape
    if y < -1.0 or y > H or x < -1.0 or x > W:
        return plane.new_zeros(C)
    y, x = max(y, 0.0), max(x, 0.0)
    y0, x0 = int(y), int(x)
    if y0 >= H - 1:
        y0 = y1 = H - 1
        y = float(y0)
    else:
        y1 = y0 + 1
    if x0 >= W - 1:
        x0 = x1 = W - 1
        x = float(x0)
    else:
        x1 = x0 + 1
    ly, lx = y - y0, x - x0
    return ((1 - ly) * (1 - lx) * plane[:, y0, x0] + (1 - ly) * lx * plane[:, y0, x1]
            + ly * (1 - lx) * plane[:, y1, x0] + ly * lx * plane[:, y1, x1])


def expected_roi_align(x, rois, pooled_h, pooled_w, spatial_scale=1.0, sampling_ratio=-1, aligned=False):
    """``[K, C, ph, pw]`` in fp64 from the definition: each bin averages a grid of bilinear samples."""
    x = x.to(torch.float64)  # differentiable: test_backward_fp32_kernels_match_oracle takes its gradient
    offset = 0.5 if aligned else 0.0
    out = []
    for roi in rois.to(torch.float64).tolist():
        plane = x[int(roi[0])]
        x1, y1, x2, y2 = (v * spatial_scale - offset for v in roi[1:])
        roi_w, roi_h = x2 - x1, y2 - y1
        if not aligned:
            roi_w, roi_h = max(roi_w, 1.0), max(roi_h, 1.0)
        bin_h, bin_w = roi_h / pooled_h, roi_w / pooled_w
        grid_h = sampling_ratio if sampling_ratio > 0 else math.ceil(bin_h)
        grid_w = sampling_ratio if sampling_ratio > 0 else math.ceil(bin_w)
        bins = []
        for i in range(pooled_h):
            for j in range(pooled_w):
                acc = plane.new_zeros(plane.shape[0])
                for iy in range(grid_h):
                    for ix in range(grid_w):
                        sy = y1 + i * bin_h + (iy + 0.5) * bin_h / grid_h
                        sx = x1 + j * bin_w + (ix + 0.5) * bin_w / grid_w
                        acc = acc + _sample(plane, sy, sx)
                bins.append(acc / max(grid_h * grid_w, 1))
        out.append(torch.stack(bins, 1).view(-1, pooled_h, pooled_w))
    return torch.stack(out) if out else x.new_zeros(0, x.shape[1], pooled_h, pooled_w)


def test_oracle_matches_torchvision():
    """The oracle itself is checked against torchvision once, so a shared misreading cannot pass both."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 10, 10, dtype=torch.float64, generator=g)
    rois = torch.tensor(UPSTREAM_ROIS + [[1, -2.5, 3.3, 11.0, 12.5], [0, 4.2, 4.2, 4.4, 4.3]], dtype=torch.float64)
    for aligned in (False, True):
        for sampling_ratio in (-1, 2):
            ours = expected_roi_align(x, rois, 3, 4, 0.7, sampling_ratio, aligned)
            ref = torchvision.ops.roi_align(x, rois, (3, 4), 0.7, sampling_ratio, aligned)
            torch.testing.assert_close(ours, ref, atol=1e-12, rtol=1e-12)


# ---- forward ---------------------------------------------------------------------------------------------------------


def _forward_case(device, contiguous, x_dtype, rois_dtype, aligned, seed=0):
    """upstream's test_forward body: ``[2, 50, 10, 10]`` map, pool 5, adaptive sampling, through the module."""
    torch.manual_seed(seed)
    pool_size = 5
    x = torch.rand(2, 2 * pool_size**2, 10, 10, dtype=x_dtype, device=device)
    if not contiguous:
        x = x.permute(0, 1, 3, 2)
    rois = torch.tensor(UPSTREAM_ROIS, dtype=rois_dtype, device=device)
    y = RoIAlign((pool_size, pool_size), spatial_scale=1, sampling_ratio=-1, aligned=aligned)(x, rois)
    return x, rois, y


def _expected(x, rois, aligned):
    return expected_roi_align(x.cpu(), rois.cpu(), 5, 5, 1, -1, aligned)


FORWARD_TOL = {torch.float16: 4e-3, torch.float32: 1e-5, torch.float64: 1e-5}  # upstream's


@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("x_dtype", [torch.float16, torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("contiguous", [True, False])
def test_forward(backend, contiguous, x_dtype, aligned):
    x, rois, y = _forward_case("cpu", contiguous, x_dtype, x_dtype, aligned)
    assert y.dtype == x.dtype
    tol = FORWARD_TOL[x_dtype]
    torch.testing.assert_close(_expected(x, rois, aligned).to(y), y, rtol=tol, atol=tol)


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("deterministic", [True, False])
@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("x_dtype", [torch.float16, torch.float32, torch.bfloat16, torch.float64], ids=str)
@pytest.mark.parametrize("contiguous", [True, False])
def test_forward_cuda(backend, contiguous, x_dtype, aligned, deterministic):
    _cuda_ready("cuda")
    with _deterministic(deterministic):
        x, rois, y = _forward_case("cuda", contiguous, x_dtype, x_dtype, aligned)
    assert y.dtype == x.dtype
    tol = FORWARD_TOL.get(x_dtype, BF16_TOL)  # bf16 boxes are integers here: exact; the output rounds once
    torch.testing.assert_close(_expected(x, rois, aligned).to(y), y.cpu(), rtol=tol, atol=tol)


class _deterministic:
    """``torch.use_deterministic_algorithms`` for a block (upstream's DeterministicGuard)."""

    def __init__(self, on: bool):
        self.on = on

    def __enter__(self):
        self.saved = torch.are_deterministic_algorithms_enabled()
        torch.use_deterministic_algorithms(self.on)

    def __exit__(self, *exc):
        torch.use_deterministic_algorithms(self.saved)


# ---- autocast ---------------------------------------------------------------------------------------------------------

# bf16 output: 8 mantissa bits, values in [0, 1): one ulp is <= 2**-8 ~ 3.9e-3; rounding (reference, compiled Triton)
# is off by half of that, the interpreter's truncation by up to one ulp (test_bf16_output_cast)
BF16_TOL = 4e-3


@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("rois_dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("x_dtype", [torch.float32, torch.bfloat16], ids=str)
def test_autocast_cpu(backend, x_dtype, rois_dtype, aligned):
    """Under CPU bf16 autocast the op computes in fp32 (as torchvision's): an fp32 input stays exact to 1e-5."""
    with torch.autocast("cpu", dtype=torch.bfloat16):
        x, rois, y = _forward_case("cpu", False, x_dtype, rois_dtype, aligned)
    assert y.dtype == x.dtype
    tol = 1e-5 if x_dtype == torch.float32 else BF16_TOL  # the boxes are integers: exact in bf16 too
    torch.testing.assert_close(_expected(x, rois, aligned).to(y), y, rtol=tol, atol=tol)


def test_autocast_cpu_backward(backend):
    """The backward under autocast (backward called inside the block too) is the fp32 backward."""
    torch.manual_seed(1)
    x = torch.rand(2, 6, 10, 10)
    rois = torch.tensor(UPSTREAM_ROIS, dtype=torch.float32)
    grad = torch.randn(4, 6, 3, 3)
    grads = []
    for autocast in (False, True):
        xr = x.clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            roi_align(xr, rois, 3, 1.0, -1, True).backward(grad)
        grads.append(xr.grad)
    torch.testing.assert_close(grads[1], grads[0], atol=1e-6, rtol=1e-6)


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("autocast_dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("deterministic", [True, False])
@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("rois_dtype", [torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize("x_dtype", [torch.float32, torch.float16], ids=str)
def test_autocast_cuda(backend, x_dtype, rois_dtype, aligned, deterministic, autocast_dtype):
    """upstream's test_autocast (fp16 autocast, non-contiguous input), plus bf16 autocast."""
    _cuda_ready("cuda")
    with torch.autocast("cuda", dtype=autocast_dtype), _deterministic(deterministic):
        x, rois, y = _forward_case("cuda", False, x_dtype, rois_dtype, aligned)
    assert y.dtype == x.dtype
    tol = FORWARD_TOL[x_dtype]
    torch.testing.assert_close(_expected(x, rois, aligned).to(y), y.cpu(), rtol=tol, atol=tol)


@pytest.mark.parametrize("device", DEVICES)
def test_bf16_output_cast(device):
    """The kernel accumulates in fp32 and casts the result to bf16 once. Compiled Triton rounds to nearest even, like
    torch; Triton's CPU interpreter truncates toward zero (numpy's fp32 -> bf16 bit shift), so there every output
    is within one bf16 ulp below the rounded value. This pins both behaviours: the GPU run checks the compiled one."""
    _cuda_ready(device)
    if not HAS_TRITON:
        pytest.skip("triton is not importable here")
    torch.manual_seed(2)
    x = torch.rand(2, 50, 10, 10, device=device).bfloat16()
    rois = torch.tensor(UPSTREAM_ROIS, dtype=torch.float32, device=device)
    with use_backend("triton"):
        out = roi_align(x, rois, 5)
        exact = roi_align(x.float(), rois, 5)  # the same fp32 sums (bf16 -> fp32 is exact), not yet cast
    rounded = exact.bfloat16()
    if device == "cuda":
        assert torch.equal(out, rounded)
    else:
        assert (out.float().abs() <= exact.abs()).all()  # toward zero ...
        ulp = torch.finfo(torch.bfloat16).eps * torch.exp2(torch.floor(torch.log2(exact.abs().clamp(min=1e-30))))
        assert ((exact - out.float()).abs() < ulp).all()  # ... by less than one ulp
        with use_backend("reference"):  # the reference rounds its fp32 result, as torch does
            assert torch.equal(roi_align(x, rois, 5), roi_align(x.float(), rois, 5).bfloat16())


# ---- torch.fx ---------------------------------------------------------------------------------------------------------


class _Wrapper(torch.nn.Module):
    """upstream's RoIOpTesterModuleWrapper: calls the op and drops the result."""

    def __init__(self, layer):
        super().__init__()
        self.layer = layer
        self.n_inputs = 2

    def forward(self, a, b):
        self.layer(a, b)


class _TokensLayer(torch.nn.Module):
    """roi_align_tokens called from this module (not from kernels/roi_align.py, where fx.wrap patches the name)."""

    def forward(self, tokens, boxes):
        return roi_align_tokens(tokens, boxes, (5, 5), 2, 1.0, -1, True, 1)


@pytest.mark.parametrize("device", DEVICES)
def test_is_leaf_node(backend, device):
    _cuda_ready(device)
    for layer in (RoIAlign((5, 5), spatial_scale=1, sampling_ratio=-1), _TokensLayer()):
        train_names, eval_names = get_graph_node_names(_Wrapper(layer).to(device))
        assert len(train_names) == len(eval_names) == 1 + 2  # the two inputs, then one node for the op


@pytest.mark.parametrize("device", DEVICES)
def test_torch_fx_trace(backend, device):
    _cuda_ready(device)
    op = RoIAlign((5, 5), spatial_scale=1, sampling_ratio=-1)
    graph_module = torch.fx.symbolic_trace(op)
    torch.manual_seed(3)
    x = torch.rand(2, 50, 5, 5, device=device)
    rois = torch.tensor(UPSTREAM_ROIS, dtype=torch.float32, device=device)  # boxes reach past the 5x5 map
    direct, traced = op(x, rois), graph_module(x, rois)
    assert direct.dtype == traced.dtype == x.dtype
    torch.testing.assert_close(direct, traced, rtol=1e-5, atol=1e-5)
    # the same through a module elsewhere, and for the token layout, with list boxes
    tokens = torch.rand(2, 1 + 25, 4, device=device)
    box_list = [rois[:3, 1:] / 2, rois[3:, 1:] / 2]
    traced_tokens = torch.fx.symbolic_trace(_TokensLayer())
    torch.testing.assert_close(traced_tokens(tokens, box_list), _TokensLayer()(tokens, box_list))


# ---- backward ---------------------------------------------------------------------------------------------------------


def _backward_input(seed, device, contiguous, dtype=torch.float64):
    torch.manual_seed(seed)
    pool_size = 2
    x = torch.rand(1, 2 * pool_size**2, 5, 5, dtype=dtype, device=device, requires_grad=True)
    if not contiguous:
        x = x.permute(0, 1, 3, 2)
    return x, torch.tensor(BACKWARD_ROIS, dtype=dtype, device=device)


SEEDS = range(10)


@pytest.mark.parametrize("contiguous", [True, False])
@pytest.mark.parametrize("seed", SEEDS)
def test_backward(backend, seed, contiguous):
    """gradcheck in fp64 with upstream's settings: fp64 takes the fp64 reference on every backend."""
    x, rois = _backward_input(seed, "cpu", contiguous)
    torch.autograd.gradcheck(lambda z: roi_align(z, rois, 2, spatial_scale=1, sampling_ratio=1), (x,), atol=1e-5)


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("deterministic", [True, False])
@pytest.mark.parametrize("contiguous", [True, False])
@pytest.mark.parametrize("seed", range(10))
def test_backward_cuda(backend, seed, contiguous, deterministic):
    _cuda_ready("cuda")
    x, rois = _backward_input(seed, "cuda", contiguous)
    with _deterministic(deterministic):
        torch.autograd.gradcheck(lambda z: roi_align(z, rois, 2, spatial_scale=1, sampling_ratio=1), (x,), atol=1e-5)


def test_backward_torchscript(backend):
    """upstream also gradchecks a TorchScript function calling the op; ours calls the registered custom op."""

    @torch.jit.script
    def scripted(x: torch.Tensor, rois: torch.Tensor, pool_size: int) -> torch.Tensor:
        return torch.ops.spatialreward.roi_align(x, rois, pool_size, pool_size, 1.0, 1, False)

    x, rois = _backward_input(0, "cpu", contiguous=False)
    torch.autograd.gradcheck(lambda z: scripted(z, rois, 2), (x,), atol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("contiguous", [True, False])
def test_backward_fp32_kernels_match_oracle(backend, device, contiguous):
    """fp64 never reaches the kernels, so their fp32 backward is checked here against the oracle's fp64 gradient
    (autograd through the per-sample loop), at upstream's gradcheck tolerance."""
    _cuda_ready(device)
    rois = torch.tensor(BACKWARD_ROIS, dtype=torch.float32, device=device)
    for seed in range(3):
        g = torch.Generator().manual_seed(seed)
        leaf = torch.rand(1, 8, 5, 5, generator=g).to(device).requires_grad_()
        grad = torch.randn(3, 8, 2, 2, generator=g)
        leaf64 = leaf.detach().cpu().double().requires_grad_()
        for x, out_of in ((leaf, roi_align), (leaf64, expected_roi_align)):
            view = x if contiguous else x.permute(0, 1, 3, 2)
            args = (2,) if out_of is roi_align else (2, 2)
            out_of(view, rois.to(x.device), *args, 1.0, 1).backward(grad.to(x))
        torch.testing.assert_close(leaf.grad.cpu().double(), leaf64.grad, atol=1e-5, rtol=1e-5)


# ---- boxes ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fn", ["roi_align", "roi_align_tokens"])
def test_boxes_shape(backend, fn):
    """upstream: a [K, 4] tensor and a list holding a [L, 3] tensor raise AssertionError (ours: also ValueError)."""
    a = torch.linspace(1, 8 * 8, 8 * 8).reshape(1, 1, 8, 8)
    call = {
        "roi_align": lambda boxes: roi_align(a, boxes, output_size=(2, 2)),
        "roi_align_tokens": lambda boxes: roi_align_tokens(a.flatten(2).transpose(1, 2), boxes, (8, 8), (2, 2)),
    }[fn]
    with pytest.raises(AssertionError, match=r"boxes has shape \(1, 4\); expected \[K, 5\]"):
        call(torch.tensor([[0, 0, 3, 3]], dtype=a.dtype))
    with pytest.raises(AssertionError, match=r"boxes\[0\] has shape \(1, 3\); a list of boxes holds one \[L, 4\]"):
        call([torch.tensor([[0, 0, 3]], dtype=a.dtype)])
    with pytest.raises(ValueError):  # the same error is a ValueError too
        call([torch.tensor([[0, 0, 3]], dtype=a.dtype)])
    assert issubclass(RoIBoxesError, ValueError) and issubclass(RoIBoxesError, AssertionError)
    with pytest.raises(AssertionError, match="boxes is a str"):
        call("0 0 3 3")


def test_boxes_list_of_transposed_tensors(backend):
    """upstream's test_jit_boxes_list, eager: two [5, 4] boxes given as transposes (non-contiguous) -> 10 RoIs."""
    x = torch.rand(2, 1, 10, 10)
    roi = torch.tensor(UPSTREAM_ROIS, dtype=torch.float).t()  # [5, 4]: each column is read as a box
    y = RoIAlign(output_size=[3, 3], spatial_scale=1.0, sampling_ratio=-1)(x, [roi, roi])
    assert y.shape == (10, 1, 3, 3)
    flat = torch.cat([torch.cat([torch.full((5, 1), float(i)), roi], 1) for i in range(2)])
    torch.testing.assert_close(y, expected_roi_align(x, flat, 3, 3).float(), atol=1e-5, rtol=1e-5)


def _box_sequences():
    """upstream's TestBoxConversionToRoi boxes: one [K, 5] tensor, a list and a tuple of [1, 4] tensors."""
    tensor = torch.tensor([[0, 0, 0, 100, 100], [1, 0, 0, 100, 100]], dtype=torch.float)
    per_image = [torch.tensor([[0, 0, 100, 100]], dtype=torch.float)] * 2
    return tensor, per_image, tuple(per_image)


def test_box_sequences_agree(backend):
    torch.manual_seed(4)
    x = torch.rand(2, 3, 12, 12)
    tokens = torch.rand(2, 1 + 144, 3)
    outs = [roi_align(x, boxes, 2, 0.1) for boxes in _box_sequences()]
    token_outs = [roi_align_tokens(tokens, boxes, (12, 12), 2, 0.1, -1, False, 1) for boxes in _box_sequences()]
    for out, token_out in zip(outs[1:], token_outs[1:]):
        torch.testing.assert_close(out, outs[0], atol=0, rtol=0)
        torch.testing.assert_close(token_out, token_outs[0], atol=0, rtol=0)
    torch.testing.assert_close(outs[0], torchvision.ops.roi_align(x, _box_sequences()[1], 2, 0.1))
    assert roi_align(x, [], 2).shape == (0, 3, 2, 2)  # no images' boxes: no RoIs
    assert roi_align(x, [torch.zeros(0, 4), torch.zeros(0, 4)], 2).shape == (0, 3, 2, 2)


def test_multiscale_roi_align_on_our_op(backend, monkeypatch):
    """Detection code reaches roi_align through torchvision's MultiScaleRoIAlign: routed to our op, same result."""
    torch.manual_seed(5)
    features = {"0": torch.rand(2, 4, 16, 16), "1": torch.rand(2, 4, 8, 8)}
    boxes = [torch.tensor([[1.0, 2.0, 40.0, 50.0], [0.0, 0.0, 63.0, 63.0]]), torch.tensor([[10.0, 5.0, 20.0, 30.0]])]
    pooler = torchvision.ops.MultiScaleRoIAlign(["0", "1"], output_size=(3, 3), sampling_ratio=2)
    sizes = [(64, 64), (64, 64)]
    expected = pooler(features, boxes, sizes)
    monkeypatch.setattr(torchvision.ops.poolers, "roi_align", roi_align)
    torch.testing.assert_close(pooler(features, boxes, sizes), expected, atol=1e-5, rtol=1e-5)


# ---- roi_align_tokens: the same dtype rules -------------------------------------------------------------------------


def test_tokens_fp64_gradcheck_and_autocast(backend):
    torch.manual_seed(6)
    tokens = torch.rand(2, 1 + 5 * 5, 3, dtype=torch.float64, requires_grad=True)
    box_list = [torch.tensor([[0.3, 0.6, 4.2, 3.1]], dtype=torch.float64),
                torch.tensor([[-1.0, 1.0, 3.0, 7.0], [1.0, 1.0, 2.0, 2.5]], dtype=torch.float64)]
    torch.autograd.gradcheck(lambda t: roi_align_tokens(t, box_list, (5, 5), 2, 1.0, 1, True, 1), (tokens,),
                             atol=1e-5)
    maps = tokens.detach()[:, 1:].transpose(1, 2).reshape(2, 3, 5, 5)
    rois = torch.cat([torch.cat([torch.full((len(b), 1), float(i), dtype=b.dtype), b], 1)
                      for i, b in enumerate(box_list)])
    expected = expected_roi_align(maps, rois, 2, 2, 1.0, -1, True).permute(0, 2, 3, 1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = roi_align_tokens(tokens.detach().float(), [b.float() for b in box_list], (5, 5), 2, 1.0, -1, True, 1)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.double(), expected, atol=1e-5, rtol=1e-5)


def test_fp64_takes_the_reference_on_every_backend(backend):
    """fp64 is computed in fp64: bit-equal to the reference whatever the backend."""
    torch.manual_seed(7)
    x = torch.rand(2, 3, 10, 10, dtype=torch.float64)
    rois = torch.tensor(UPSTREAM_ROIS, dtype=torch.float64)
    assert torch.equal(roi_align(x, rois, 3, 0.5, -1, True), roi_align_reference(x, rois, (3, 3), 0.5, -1, True))


@pytest.mark.skipif(not HAS_TRITON, reason="triton is not importable here")
@pytest.mark.parametrize("fn", ["roi_align", "roi_align_tokens"])
def test_deterministic_mode_backward_takes_the_reference(fn):
    """The backward kernel sums with atomics (order varies on a GPU); in deterministic mode it is the reference's."""
    torch.manual_seed(8)
    x = torch.rand(2, 5, 10, 10)
    rois = torch.tensor(UPSTREAM_ROIS, dtype=torch.float32)
    grad = torch.randn(4, 5, 3, 3)

    def input_grad(backend, deterministic):
        xr = x.clone().requires_grad_()
        with use_backend(backend), _deterministic(deterministic):
            if fn == "roi_align":
                roi_align(xr, rois, 3, 1.0, -1, True).backward(grad)
            else:
                tokens = xr.flatten(2).transpose(1, 2)  # [B, 100, C]
                roi_align_tokens(tokens, rois, (10, 10), 3, 1.0, -1, True).backward(grad.permute(0, 2, 3, 1))
        return xr.grad

    reference = input_grad("reference", False)
    assert torch.equal(input_grad("triton", True), reference)
    assert not torch.equal(input_grad("triton", False), reference)  # else this test could not tell the routes apart
