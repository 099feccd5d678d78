"""The student split into the two graphs a deployment runs, as SAM's ``utils/onnx.py`` wraps its decoder for
tracing: the model keeps no export branches, these wrappers fix the I/O contract.

    EncodeGraph   images uint8 [B, S, S, 3] (RGB at the model side)  ->  tokens [B, P+N, C] (+ pixels, + quality)
    ScoreGraph    source encoding + edited encoding + instruction embedding [B, D]  ->  SCORE_OUTPUTS

A GRPO group pays for its source once: encode the source (one row), encode the candidates, then score each
candidate against the same source row. Normalisation (/255, ImageNet mean/std) is inside `EncodeGraph`, the
paper's reward formula (weights baked, recorded in ``export.json``) inside `ScoreGraph`. The torch backend runs
these same modules, so "torch" and "onnxruntime" differ only by the runtime, never by the pre/post-processing.

Pixel statistics (`StudentConfig.pixel_stats`) and the full-resolution quality map (`StudentConfig.quality_scale`)
each add an encoding tensor when the student has them and are left out when it does not, so no zero-sized tensor
crosses a graph boundary (the TensorRT parser and CUDA graphs both dislike empty I/O).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn as nn

ENCODE_INPUTS = ("images",)
SCORE_OUTPUTS = ("subscores", "subscore_logvar", "reward", "mask_logits", "presence_logit", "region_boxes")
NOVELTY_OUTPUT = "novelty"  # a seventh output when the student has a novelty fit (`spatialreward.student.novelty`)


class _Encoding(NamedTuple):
    """What `Student.forward_tokens` reads of an image encoding (same fields as the student's `ImageEncoding`)."""

    tokens: torch.Tensor
    pixels: torch.Tensor
    quality: torch.Tensor


def encoding_names(pixel_stats: bool, quality: bool = False) -> tuple[str, ...]:
    """Names of the encoding tensors `EncodeGraph` returns (and `ScoreGraph` takes once per stream)."""
    return ("tokens",) + (("pixels",) if pixel_stats else ()) + (("quality",) if quality else ())


def score_input_names(pixel_stats: bool, quality: bool = False) -> tuple[str, ...]:
    names = encoding_names(pixel_stats, quality)
    return tuple(f"source_{n}" for n in names) + tuple(f"edited_{n}" for n in names) + ("text_embedding",)


def score_output_names(novelty: bool) -> tuple[str, ...]:
    return SCORE_OUTPUTS + ((NOVELTY_OUTPUT,) if novelty else ())


def has_novelty(student: nn.Module) -> bool:
    return getattr(student, "novelty", None) is not None


def exported_novelty_views(meta: dict) -> tuple[str, ...]:
    """The columns of an export's ``novelty`` output, from its ``export.json`` (empty: the graph has none)."""
    if NOVELTY_OUTPUT not in meta["graphs"]["score"]["outputs"]:
        return ()
    return tuple((meta.get("novelty") or {}).get("views", ()))


def student_parts(student: nn.Module) -> tuple[bool, bool]:
    """``(pixel_stats, quality)``: which optional encoding tensors ``student`` has."""
    return student.pixel_stats is not None, getattr(student, "quality", None) is not None


class EncodeGraph(nn.Module):
    """uint8 ``[B, S, S, 3]`` → the student's per-image encoding: tokens, then pixel statistics and the quality map
    if it has them (one tensor when it has neither)."""

    def __init__(self, student: nn.Module):
        super().__init__()
        self.student = student
        self.pixel_stats, self.quality = student_parts(student)

    def forward(self, images: torch.Tensor):
        dtype = self.student.encoder.mean.dtype  # fp32, or fp16 for an fp16 export
        x = images.to(dtype).permute(0, 3, 1, 2) / 255.0  # [B, 3, S, S] in 0–1; uint8 meets only the Cast (TensorRT)
        enc = self.student.encode_images(x)
        parts = (enc.tokens,) + ((enc.pixels,) if self.pixel_stats else ()) + ((enc.quality,) if self.quality else ())
        return parts if len(parts) > 1 else enc.tokens


class ScoreGraph(nn.Module):
    """(source encoding, edited encoding, text embedding) rows → `SCORE_OUTPUTS`, one row per edit.

    Outputs: ``subscores [B, 4]`` 0–25, ``subscore_logvar [B, 4]``, ``reward [B]`` (baked weights), ``mask_logits
    [B, h, w]`` on the (subdivided) token grid, ``presence_logit [B]``, ``region_boxes [B, 4]`` 0–1000, and
    ``novelty [B, V]`` (one column per view) when the student has a novelty fit. Always fp32 (an fp16 graph casts its
    outputs), so every backend hands the runtime the same dtypes.
    """

    def __init__(self, student: nn.Module):
        super().__init__()
        self.student = student
        self.pixel_stats, self.quality = student_parts(student)

    def _encoding(self, parts: list[torch.Tensor]) -> _Encoding:
        """One stream's encoding from its graph inputs; absent parts become the zero-channel tensors the student
        builds for itself."""
        cfg, tokens = self.student.cfg, parts.pop(0)
        b = tokens.shape[0]
        pixels = parts.pop(0) if self.pixel_stats else tokens.new_zeros(b, 0, *cfg.mask_size)
        quality = parts.pop(0) if self.quality else tokens.new_zeros(b, 0, *cfg.quality_grid)
        return _Encoding(tokens, pixels, quality)

    def forward(self, *inputs: torch.Tensor):
        per_stream = (len(inputs) - 1) // 2
        source = self._encoding(list(inputs[:per_stream]))
        edited = self._encoding(list(inputs[per_stream:2 * per_stream]))
        text = inputs[-1]
        out = self.student.forward_tokens(source, edited, text.to(source.tokens.dtype))
        reward = out.reward.float().clamp(0.0, 1.0)  # [0, 1] by contract; NaN stays NaN and the runtime flags it
        outs = (out.subscores.float(), out.subscore_logvar.float(), reward, out.edit_mask_logits.float(),
                out.presence_logit.float(), out.region_boxes.float())
        return outs + ((out.novelty.float(),) if out.novelty is not None else ())
