"""The student on a GPU: its output with the Triton kernels equals its output with the PyTorch references.

Skipped without CUDA (the CPU suite checks the references and the interpreted kernels); `bench/gpu_session.sh`
runs it on a GPU box with ``TRITON_INTERPRET=0``, where a skip counts as a failure.
"""

from __future__ import annotations

import pytest
import torch

from spatialreward.kernels import _backend, use_backend
from spatialreward.student.model import Student
from spatialreward.student.presets import list_presets, preset_config

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def _inputs(cfg, b: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    s = torch.rand(b, 3, cfg.img_size, cfg.img_size, generator=g)
    e = s.clone()
    half = cfg.img_size // 2
    e[:, :, :half, half:] = torch.rand(b, 3, half, cfg.img_size - half, generator=g)  # an edit in one quadrant
    e[-1] = s[-1]  # and one no-op edit: an empty predicted region must stay finite
    t = torch.nn.functional.normalize(torch.randn(b, cfg.text_dim, generator=g), dim=1)
    return [x.cuda() for x in (s, e, t)]


def _run(model, backend, s, e, t, *, grad: bool):
    with use_backend(backend):
        model.zero_grad(set_to_none=True)
        out = model(s, e, t)
        if grad:
            out.reward.sum().backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None} if grad else {}
    return out, grads


@pytest.fixture(autouse=True)
def _compiled_kernels():
    if _backend.interpreter_enabled():
        pytest.skip("TRITON_INTERPRET=1 would run the kernels in the interpreter; run with TRITON_INTERPRET=0")
    if not _backend.HAS_TRITON:
        pytest.skip("triton is not importable")


@pytest.mark.parametrize("name", list_presets())
def test_student_triton_equals_reference_fp32(name):
    torch.manual_seed(0)
    model = Student(preset_config(name)).cuda().eval()
    s, e, t = _inputs(model.cfg, b=8)
    ref, ref_grads = _run(model, "reference", s, e, t, grad=True)
    tri, tri_grads = _run(model, "triton", s, e, t, grad=True)
    for field, want, got in zip(ref._fields, ref, tri):
        if want is None:  # novelty: this student has no novelty fit
            assert got is None, field
            continue
        assert torch.isfinite(got).all(), field
        torch.testing.assert_close(got, want, atol=2e-4, rtol=2e-4, msg=lambda m: f"{name}.{field}: {m}")
    assert ref_grads.keys() == tri_grads.keys() and ref_grads
    for key, want in ref_grads.items():
        got = tri_grads[key]
        scale = want.abs().max().clamp_min(1e-6)
        assert ((got - want).abs().max() / scale) < 1e-3, key


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_student_triton_under_autocast_tracks_fp32(dtype):
    torch.manual_seed(0)
    model = Student(preset_config("nano")).cuda().eval()
    s, e, t = _inputs(model.cfg, b=32)
    with torch.inference_mode():
        want, _ = _run(model, "reference", s, e, t, grad=False)
        with torch.autocast("cuda", dtype=dtype):
            got, _ = _run(model, "triton", s, e, t, grad=False)
    assert torch.isfinite(got.subscores).all() and torch.isfinite(got.reward).all()
    # Low-precision activations move a 0-25 score by a few hundredths, the reward by well under 1e-2.
    assert (got.subscores.float() - want.subscores).abs().max() < 0.5
    assert (got.reward.float() - want.reward).abs().max() < 1e-2
