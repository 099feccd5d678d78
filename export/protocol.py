"""The one small protocol every scoring backend speaks; `spatialreward.runtime.RewardModel` talks only to it.

    backend.preprocess(pil_image)            -> uint8 [S, S, 3]   (the one resize training used)
    backend.encode(images uint8 [B, S, S, 3]) -> Encoding          (a tuple of tensors, one row per image)
    backend.score(source, edited, text [B, D]) -> Scores           (rows of source/edited/text line up)

An `Encoding` is opaque to the runtime except that it is a tuple of tensors whose first axis is the image, so
``tuple(t[index] for t in enc)`` picks rows: that is how a GRPO group's source, encoded once, is paired with every
candidate. Backends keep their tensors on their own device; `Scores` are fp32 tensors on that device.

A backend may also embed instructions itself (`EmbedsText`): ``backend.embed_text(list[str]) -> [B, D]`` fp32 on
CPU, cached per exact string. ONNX Runtime does so with an export's ``text.onnx``; the runtime falls back to the
torch encoder the student was trained with for a backend without it.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Protocol, runtime_checkable

import torch

Encoding = tuple[torch.Tensor, ...]


class Scores(NamedTuple):
    """What `ScoringBackend.score` returns, one row per edit (fp32).

    ``subscores [B, 4]`` 0–25; ``subscore_logvar [B, 4]`` log-variance of subscore/25; ``reward [B]`` in [0, 1]
    with the weights the backend was built with; ``mask_logits [B, h, w]``; ``presence_logit [B]``;
    ``region_boxes [B, 4]`` 0–1000 on the edited image; ``novelty [B, V]`` per view (instruction, evidence, pixels; > 1:
    unlike the training edits) when the student has a novelty fit, else None.
    """

    subscores: torch.Tensor
    subscore_logvar: torch.Tensor
    reward: torch.Tensor
    mask_logits: torch.Tensor
    presence_logit: torch.Tensor
    region_boxes: torch.Tensor
    novelty: torch.Tensor | None = None


@runtime_checkable
class ScoringBackend(Protocol):
    """Encode / score, plus what the runtime needs to know to feed it."""

    name: str  # "torch", "onnxruntime", "tensorrt"
    device: torch.device
    image_size: int  # S
    text_encoder: str  # name of the instruction encoder the student was trained with
    reward_weights: dict  # the formula's weights baked into `Scores.reward`
    max_batch: int | None  # most rows per encode / score call (None: no limit)

    def preprocess(self, image) -> torch.Tensor: ...

    def encode(self, images: torch.Tensor) -> Encoding: ...

    def score(self, source: Encoding, edited: Encoding, text_embedding: torch.Tensor) -> Scores: ...

    def describe(self) -> dict[str, Any]: ...


@runtime_checkable
class EmbedsText(Protocol):
    """Optional for a `ScoringBackend`: instruction embeddings from the backend's own text encoder."""

    def embed_text(self, instructions: list[str]) -> torch.Tensor: ...
