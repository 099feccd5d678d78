"""The two routes into the Triton kernels agree, and each is taken where it should be.

Eager calls on the Triton backend go through plain `torch.autograd.Function`s (less host time per call); tracing
(`torch.export`, hence ONNX export and `torch.compile`) must still see the custom ops with their fake impls. On CPU
the Triton route runs in the interpreter, so shapes stay tiny. Also: the key partition the attention kernels loop
over equals a stable argsort.
"""

from __future__ import annotations

import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported: CPU tensors run in the interpreter

import pytest  # noqa: E402
import torch  # noqa: E402

from spatialreward.kernels import HAS_TRITON, region_attention, roi_align, roi_align_tokens, use_backend  # noqa: E402
from spatialreward.kernels import _backend  # noqa: E402
from spatialreward.kernels.region_attention import partition_keys  # noqa: E402

pytestmark = pytest.mark.skipif(not HAS_TRITON, reason="triton is not importable here")


def _mask_cases(Lk: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    w = torch.rand(5, Lk, generator=g) * (torch.rand(5, Lk, generator=g) < 0.4)
    w[1] = 0.0  # empty region
    w[2] = 0.7  # full region
    w[3, ::3] = -0.5  # negative weights mean "outside" too
    return w


@pytest.mark.parametrize("Lk,block", [(37, 16), (37, 1024), (1, 16)])  # 3 chunks incl. a ragged one; 1 chunk; 1 key
def test_partition_keys_is_a_stable_argsort(Lk, block):
    w = _mask_cases(Lk)
    for mask in (w, w > 0, w.t().contiguous().t()):  # float weights, bool, non-contiguous
        with use_backend("triton"):
            order, count = partition_keys(mask, block=block)
        assert order.dtype == count.dtype == torch.int32
        assert torch.equal(order.long(), torch.argsort((mask <= 0).to(torch.int8), dim=1, stable=True))
        assert torch.equal(count.long(), (mask > 0).sum(1))


def test_partition_keys_empty_batch():
    order, count = partition_keys(torch.zeros(0, 9, dtype=torch.bool))
    assert order.shape == (0, 9) and count.shape == (0,)


def _attention_inputs(B=3, H=2, Lq=19, Lk=35, D=16):
    g = torch.Generator().manual_seed(4)
    q, k, v = (torch.randn(B, L, H, D, generator=g).transpose(1, 2) for L in (Lq, Lk, Lk))
    w = torch.rand(B, Lk, generator=g) * (torch.rand(B, Lk, generator=g) < 0.4)
    w[-1] = 0.0
    return q, k, v, w


def test_attention_eager_route_equals_custom_op_route():
    q, k, v, w = _attention_inputs()
    grad = torch.randn(*q.shape[:3], v.shape[-1], generator=torch.Generator().manual_seed(5))
    results = {}
    with use_backend("triton"):
        for route in ("eager", "custom_op"):
            leaves = [t.clone().requires_grad_() for t in (q, k, v, w)]
            if route == "eager":
                out = region_attention(*leaves, scale=0.3)
                assert type(out.grad_fn).__name__ == "_RegionAttentionEagerBackward"
            else:
                out, _ = torch.ops.spatialreward.region_attention(*leaves, 0.3)
                assert "Eager" not in type(out.grad_fn).__name__
            out.backward(grad)
            results[route] = [out] + [t.grad for t in leaves]
    for name, a, b in zip(("out", "dq", "dk", "dv", "dw"), results["eager"], results["custom_op"]):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6, msg=lambda m: f"{name}: {m}")


def test_attention_eager_route_refuses_double_backward():
    q, k, v, w = _attention_inputs(B=1, Lq=4, Lk=5)
    q.requires_grad_()
    with use_backend("triton"):
        out = region_attention(q, k, v, w > 0)
        (dq,) = torch.autograd.grad(out.sum(), q, create_graph=True)
        with pytest.raises(RuntimeError, match="once_differentiable|does not require grad"):
            torch.autograd.grad(dq.sum(), q)


def _roi_inputs():
    g = torch.Generator().manual_seed(6)
    x = torch.randn(2, 3, 5, 6, generator=g)
    tokens = torch.randn(2, 1 + 5 * 6, 3, generator=g)
    boxes = torch.tensor([[0, 0.3, 0.6, 4.2, 3.1], [1, -1.0, 1.0, 3.0, 7.0]])
    return x, tokens, boxes


def test_roi_align_eager_route_equals_custom_op_route_incl_double_backward():
    x, tokens, boxes = _roi_inputs()
    calls = {
        "nchw": (x, lambda t: roi_align(t, boxes, 2, 1.0, -1, True),
                 lambda t: torch.ops.spatialreward.roi_align(t, boxes, 2, 2, 1.0, -1, True)),
        "tokens": (tokens, lambda t: roi_align_tokens(t, boxes, (5, 6), 2, 1.0, -1, True, 1),
                   lambda t: torch.ops.spatialreward.roi_align_tokens(t, boxes, 5, 6, 2, 2, 1.0, -1, True, 1)),
    }
    with use_backend("triton"):
        for name, (inp, eager, op) in calls.items():
            got = {}
            for route, fn in (("eager", eager), ("custom_op", op)):
                t = inp.clone().requires_grad_()
                out = fn(t)
                if route == "eager":
                    assert type(out.grad_fn).__name__.endswith("EagerBackward"), name
                (g1,) = torch.autograd.grad((out * out).sum(), t, create_graph=True)
                (g2,) = torch.autograd.grad(g1.square().sum(), t)  # double backward: the backward is linear in grad
                got[route] = (out, g1, g2)
            for a, b in zip(got["eager"], got["custom_op"]):
                torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6, msg=lambda m: f"{name}: {m}")


class _TinyHead(torch.nn.Module):
    def forward(self, tokens, boxes, q, k, v, mask):
        pooled = roi_align_tokens(tokens, boxes, (5, 6), 2, 1.0, 2, True, 1)
        return pooled.sum() + region_attention(q, k, v, mask).sum()


def test_tracing_keeps_the_custom_ops():
    """torch.export (and so ONNX export, torch.compile) must see the custom ops, not the eager Functions."""
    _, tokens, boxes = _roi_inputs()
    q, k, v, w = _attention_inputs(B=2, Lq=4, Lk=5)
    with use_backend("triton"):
        assert _backend.eager_fast_path(tokens)
        program = torch.export.export(_TinyHead(), (tokens, boxes, q, k, v, w > 0))
    targets = {str(node.target) for node in program.graph.nodes if node.op == "call_function"}
    assert "spatialreward.roi_align_tokens.default" in targets, targets
    assert "spatialreward.region_attention.default" in targets, targets


def test_eager_route_only_on_the_triton_backend():
    x = torch.randn(2, 3)
    with use_backend("reference"):
        assert not _backend.eager_fast_path(x)
    with use_backend("auto"):
        assert not _backend.eager_fast_path(x)  # CPU tensors: the reference, through the custom op
    with use_backend("triton"):
        assert _backend.eager_fast_path(x)
        assert not _backend.eager_fast_path(x.to("meta"))


def test_torch_compile_traces_the_custom_ops_and_matches_eager():
    """Under torch.compile (aot_eager: dynamo + AOT autograd, no C++ compiler needed) the ops go through their custom
    ops — fake impls, registered autograd — in one graph, and give the eager route's values and gradients."""
    _, tokens, boxes = _roi_inputs()
    q, k, v, w = _attention_inputs(B=2, Lq=4, Lk=5)
    head = _TinyHead()
    compiled = torch.compile(head, backend="aot_eager", fullgraph=True)
    results = {}
    with use_backend("triton"):
        for name, fn in (("eager", head), ("compiled", compiled)):
            leaves = [t.clone().requires_grad_() for t in (tokens, q, k, v)]
            out = fn(leaves[0], boxes, *leaves[1:], w > 0)
            results[name] = [out, *torch.autograd.grad(out, leaves)]
    for a, b in zip(results["eager"], results["compiled"]):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_int32_span_check_names_the_item():
    _backend.check_int32_span((3, 196, 64), (196 * 64, 64, 1), "ok")  # a student-sized sample passes
    with pytest.raises(ValueError, match=r"region_attention k: one sample spans 2147483649 elements"):
        _backend.check_int32_span((2, 2**30 + 1), (1, 2), "region_attention k")
