"""ONNX export of the kernels' custom ops (torch.onnx.export dynamo=True + our translation table) against ORT.

A tiny module uses all three ops the way the student does; ONNX Runtime (CPU) must reproduce our op's outputs,
including RoiAlign's two coordinate modes, adaptive and fixed sampling, boxes outside the map, an empty region
(zeros, not NaN) and soft key weights. Each export takes a few seconds, so the cases are folded into two exports.
"""

from __future__ import annotations

import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # see test_kernels_roi_align.py

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

onnx = pytest.importorskip("onnx", reason="the onnx extra is not installed (pip install -e '.[all]')")
ort = pytest.importorskip("onnxruntime", reason="the onnx extra is not installed (pip install -e '.[all]')")
pytest.importorskip("onnxscript", reason="the onnx extra is not installed (pip install -e '.[all]')")

from spatialreward.kernels import region_attention, roi_align, roi_align_tokens  # noqa: E402
from spatialreward.kernels.onnx import custom_translation_table  # noqa: E402


class _Tiny(torch.nn.Module):
    """RoIAlign on a map and on tokens, then region attention from tokens to a (soft) region."""

    def __init__(self, aligned: bool, sampling_ratio: int):
        super().__init__()
        self.aligned, self.sampling_ratio = aligned, sampling_ratio
        self.proj = torch.nn.Linear(8, 8)

    def forward(self, x, tokens, boxes, key_mask):
        pooled = roi_align(x, boxes, (3, 4), 0.5, self.sampling_ratio, self.aligned)  # [K, C, 3, 4]
        crops = roi_align_tokens(tokens, boxes, (6, 8), 2, 1.0, self.sampling_ratio, self.aligned, 1)  # [K, 2, 2, 8]
        B, N, C = tokens.shape
        kv = self.proj(tokens[:, 1:]).view(B, N - 1, 2, C // 2).transpose(1, 2)  # [B, 2 heads, 48, 4]
        attended = region_attention(kv, kv, kv, key_mask)  # [B, 2, 48, 4]
        return pooled, crops, attended


def _inputs(soft: bool):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 10, 12, generator=g)
    tokens = torch.randn(2, 1 + 6 * 8, 8, generator=g)
    boxes = torch.tensor(
        [[0, 1.3, 2.1, 7.7, 8.2], [1, -3.0, -2.0, 4.0, 5.0], [1, 8.0, 7.0, 30.0, 20.0], [0, 3.0, 3.0, 3.0, 3.0],
         [1, -10.0, -10.0, -5.0, -5.0]]
    )
    key_mask = torch.rand(2, 48, generator=g) > 0.5
    key_mask[1] = False  # an empty region
    if soft:
        key_mask = key_mask * torch.rand(2, 48, generator=g)
    return x, tokens, boxes, key_mask


@pytest.mark.parametrize(
    ("aligned", "sampling_ratio", "soft", "dynamic"), [(False, -1, False, False), (True, 2, True, True)]
)
def test_export_matches_onnxruntime(tmp_path, aligned, sampling_ratio, soft, dynamic):
    model = _Tiny(aligned, sampling_ratio).eval()
    args = _inputs(soft)
    dynamic_shapes = None
    if dynamic:  # batch and box count vary at run time, as in the student's export
        B, K = torch.export.Dim("B", min=1, max=1024), torch.export.Dim("K", min=1, max=4096)
        dynamic_shapes = ({0: B}, {0: B}, {0: K}, {0: B})
    program = torch.onnx.export(
        model, args, dynamo=True, opset_version=18, custom_translation_table=custom_translation_table(),
        dynamic_shapes=dynamic_shapes,
    )
    path = tmp_path / "tiny.onnx"
    program.save(str(path))

    graph = onnx.load(str(path)).graph
    op_types = {node.op_type for node in graph.node}
    assert "RoiAlign" in op_types and "Softmax" in op_types
    assert all(node.domain in ("", "ai.onnx") for node in graph.node), "custom-domain nodes leaked into the graph"

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    if dynamic:  # run at another batch size / box count than the one traced
        x, tokens, boxes, key_mask = args
        args = (torch.cat([x, x[:1]]), torch.cat([tokens, tokens[:1]]),
                torch.cat([boxes, torch.tensor([[2, 1.0, 1.0, 5.0, 5.0]])]), torch.cat([key_mask, key_mask[:1]]))
    feeds = {i.name: t.numpy() for i, t in zip(session.get_inputs(), args)}
    got = session.run(None, feeds)
    with torch.no_grad():
        want = model(*args)
    for name, g, w in zip(("roi_align", "roi_align_tokens", "region_attention"), got, want):
        assert g.shape == tuple(w.shape), name
        assert np.isfinite(g).all(), f"{name}: ORT output has NaN/inf"
        np.testing.assert_allclose(g, w.numpy(), atol=1e-5, rtol=1e-5, err_msg=name)
    assert np.all(got[2][1] == 0.0)  # the empty region stays exact zeros in the exported graph
