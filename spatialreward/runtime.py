"""`RewardModel`: the front door for scoring edits with a distilled student, like SAM's `SamPredictor`.

    from spatialreward import RewardModel

    rm = RewardModel.from_pretrained("runs/nano")
    out = rm.score(sources, editeds, instructions)   # lists of PIL / numpy HWC / torch CHW / paths / bytes
    out.reward        # [B] float tensor, the paper's formula over the predicted sub-scores
    out.subscores     # [B, 4] in 0–25: instruction_following, consistency, naturalness, artifacts
    out.edit_mask     # [B, H, W] bool, where the student sees the edit (H = W = model input side by default)
    out.boxes         # list of B float arrays [K, 4], (x1, y1, x2, y2) in 0–1000 on the edited image

Work is shared where it can be: a GRPO group repeats one source and one instruction, so `score` runs the backbone
once per *distinct* source (same object or same path) and the text encoder once per distinct instruction. For a
stream of groups, `set_group(source, instruction)` pays for the source once and `score_group(editeds)` scores
candidates against it (calling `score_group` first raises an error naming `set_group`).

`score` wraps `score_tensors` (batched float tensors in 0–1 at the model side), as SAM's `predict` wraps
`predict_torch`. Image loading follows `spatialreward.images.load_image`; a bad item raises `ImageLoadError`
naming it (``on_error="raise"``) or, with ``on_error="flag"``, comes back with ``ok=False``, its error text and a
NaN reward that the ``ok`` mask marks — never a made-up score. Backend: ``torch`` now; ONNX Runtime and TensorRT
arrive with `spatialreward.export`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F

from spatialreward.boxes import mask_to_boxes
from spatialreward.formula import RewardWeights
from spatialreward.images import ImageLoadError, load_image

Backend = Literal["torch", "onnxruntime", "tensorrt"]


@dataclass
class RewardOutput:
    """Scores of ``B`` edits. Tensors are on CPU.

    ``reward [B]``; ``subscores [B, 4]`` (0–25, order of `SUBSCORE_NAMES`); ``edit_mask [B, H, W]`` bool;
    ``boxes``: ``B`` arrays ``[K, 4]`` in 0–1000 on the edited image (connected components of the mask, largest
    first); ``uncertainty [B, 4]`` one standard deviation per sub-score, in points; ``presence [B]`` probability
    that anything was visibly edited; ``ok [B]`` False where an input could not be read (then ``errors[i]`` says
    why and the scores are NaN).
    """

    reward: torch.Tensor
    subscores: torch.Tensor
    edit_mask: torch.Tensor
    boxes: list[np.ndarray]
    uncertainty: torch.Tensor
    presence: torch.Tensor
    ok: torch.Tensor
    errors: list[str | None] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.reward)


def _source_key(item: Any) -> Any:
    """Identity of a source for sharing work: the path for paths, the object itself otherwise."""
    if isinstance(item, (str, Path)):
        return ("path", str(Path(item)))
    if isinstance(item, (bytes, bytearray)):
        return ("bytes", hash(bytes(item)))
    return ("object", id(item))


class RewardModel:
    """A distilled student ready to score edits (see the module docstring)."""

    def __init__(self, student, *, text_encoder=None, device: str | torch.device = "cpu", backend: Backend = "torch"):
        if backend != "torch":
            raise NotImplementedError(
                f"backend {backend!r} arrives with ONNX export (spatialreward.export); use backend='torch' for now"
            )
        self.device = torch.device(device)
        self.student = student.to(self.device).eval()
        self.backend = backend
        if text_encoder is None:
            from spatialreward.student.text import get_text_encoder

            text_encoder = get_text_encoder(student.cfg.text_encoder)
        self.text_encoder = text_encoder
        self._group: dict[str, Any] | None = None

    @classmethod
    def from_pretrained(
        cls, directory: str | Path, *, backend: Backend = "torch", device: str | torch.device = "cpu", text_encoder=None
    ) -> RewardModel:
        """Load a student directory written by ``spatialreward distill`` (``model.safetensors`` + ``config.json``)."""
        from spatialreward.student.model import Student

        if backend != "torch":
            raise NotImplementedError(
                f"backend {backend!r} arrives with ONNX export (spatialreward.export); use backend='torch' for now"
            )
        return cls(Student.from_pretrained(directory, map_location="cpu"), text_encoder=text_encoder, device=device)

    @property
    def image_size(self) -> int:
        return self.student.cfg.img_size

    def set_reward_weights(self, weights: RewardWeights) -> None:
        """Re-weight the formula over the same predicted sub-scores (no retraining)."""
        self.student.set_reward_weights(weights)

    # -- preprocessing ---------------------------------------------------------------------------------------------

    def preprocess(self, items: Sequence[Any], names: Sequence[str]) -> tuple[torch.Tensor, list[str | None]]:
        """Items → float ``[B, 3, S, S]`` in 0–1 and per-item errors naming ``names[i]`` (a failed item is a zero
        image, never scored as valid)."""
        from spatialreward.student.data import preprocess_image

        side = self.image_size
        out = torch.zeros(len(items), 3, side, side)
        errors: list[str | None] = [None] * len(items)
        for i, item in enumerate(items):
            try:
                out[i] = preprocess_image(load_image(item, name=names[i]), side).float() / 255.0
            except ImageLoadError as exc:
                errors[i] = str(exc)
        return out, errors

    # -- scoring ---------------------------------------------------------------------------------------------------

    @torch.no_grad()
    def score_tensors(
        self,
        sources: torch.Tensor,
        editeds: torch.Tensor,
        text_embeddings: torch.Tensor,
        *,
        source_index: torch.Tensor | None = None,
    ):
        """The tensor path: ``sources [U, 3, S, S]`` and ``editeds [B, 3, S, S]`` in 0–1, ``text_embeddings
        [B, D]``; edit ``i`` is judged against ``sources[source_index[i]]`` (default: ``i``). Returns the
        `StudentOutput` of the network."""
        dev = self.device
        b = editeds.shape[0]
        index = torch.arange(b) if source_index is None else source_index
        enc = self.student.encode_images(torch.cat([sources, editeds]).to(dev))  # one backbone pass
        u = sources.shape[0]
        src = enc.select(slice(0, u)).select(index.to(dev))
        return self.student.forward_tokens(src, enc.select(slice(u, None)), text_embeddings.to(dev))

    def score(
        self,
        sources: Sequence[Any],
        editeds: Sequence[Any],
        instructions: Sequence[str],
        *,
        batch_size: int = 64,
        mask_size: tuple[int, int] | Literal["input", "edited"] = "input",
        on_error: Literal["raise", "flag"] = "raise",
    ) -> RewardOutput:
        """Score edit ``i`` = (``sources[i]``, ``editeds[i]``, ``instructions[i]``).

        ``mask_size``: ``"input"`` (model side), ``"edited"`` (the edited images' size; they must share one) or
        ``(H, W)``. ``batch_size`` edits go through the network at a time.
        """
        n = len(editeds)
        if not (len(sources) == n == len(instructions)):
            raise ValueError(
                f"got {len(sources)} sources, {n} edited images and {len(instructions)} instructions; "
                "pass one of each per edit (repeat a group's source and instruction)"
            )
        if on_error not in ("raise", "flag"):
            raise ValueError(f"on_error={on_error!r}; use 'raise' or 'flag'")
        out_size = self._mask_size(mask_size, editeds)
        parts = []
        for start in range(0, n, batch_size):
            sl = slice(start, start + batch_size)
            parts.append(self._score_chunk(list(sources[sl]), list(editeds[sl]), list(instructions[sl]), out_size,
                                           on_error, offset=start))
        if not parts:
            return self._empty(out_size)
        return RewardOutput(
            reward=torch.cat([p.reward for p in parts]),
            subscores=torch.cat([p.subscores for p in parts]),
            edit_mask=torch.cat([p.edit_mask for p in parts]),
            boxes=[b for p in parts for b in p.boxes],
            uncertainty=torch.cat([p.uncertainty for p in parts]),
            presence=torch.cat([p.presence for p in parts]),
            ok=torch.cat([p.ok for p in parts]),
            errors=[e for p in parts for e in p.errors],
        )

    def set_group(self, source: Any, instruction: str) -> None:
        """Encode a group's source image and instruction once; then call `score_group` for its candidates."""
        src, errors = self.preprocess([source], ["source"])
        if errors[0]:
            raise ImageLoadError("source", errors[0])
        with torch.no_grad():
            encoding = self.student.encode_images(src.to(self.device))  # one row: tokens + pixel statistics
        self._group = {"encoding": encoding, "text": self.text_encoder.encode([instruction])}

    @torch.no_grad()
    def score_group(
        self,
        editeds: Sequence[Any],
        *,
        mask_size: tuple[int, int] | Literal["input", "edited"] = "input",
        on_error: Literal["raise", "flag"] = "raise",
    ) -> RewardOutput:
        """Score candidates against the source and instruction given to `set_group`."""
        if self._group is None:
            raise RuntimeError("no group set: call set_group(source, instruction) before score_group(editeds)")
        edt, errors = self.preprocess(editeds, [f"editeds[{i}]" for i in range(len(editeds))])
        self._check_errors(errors, on_error)
        b = len(editeds)
        edited = self.student.encode_images(edt.to(self.device))
        source = self._group["encoding"].select(torch.zeros(b, dtype=torch.long, device=self.device))
        out = self.student.forward_tokens(source, edited, self._group["text"].expand(b, -1).to(self.device))
        return self._to_output(out, errors, self._mask_size(mask_size, editeds))

    # -- helpers ---------------------------------------------------------------------------------------------------

    def _mask_size(self, mask_size, editeds) -> tuple[int, int]:
        if mask_size == "input":
            return self.image_size, self.image_size
        if mask_size == "edited":
            sizes = set()
            for i, item in enumerate(editeds):
                try:
                    w, h = load_image(item, name=f"editeds[{i}]").size
                    sizes.add((h, w))
                except ImageLoadError:
                    continue
            if len(sizes) > 1:
                raise ValueError(
                    f"mask_size='edited' needs edited images of one size, got {sorted(sizes)}; pass mask_size=(H, W)"
                )
            return sizes.pop() if sizes else (self.image_size, self.image_size)
        h, w = mask_size
        return int(h), int(w)

    @staticmethod
    def _check_errors(errors: list[str | None], on_error: str) -> None:
        bad = [e for e in errors if e]
        if bad and on_error == "raise":
            more = f" (and {len(bad) - 3} more)" if len(bad) > 3 else ""
            raise ImageLoadError("; ".join(bad[:3]) + more, "unreadable input (pass on_error='flag' to score the rest)")

    def _score_chunk(self, sources, editeds, instructions, out_size, on_error, *, offset: int) -> RewardOutput:
        keys, unique_sources, source_names, source_index = {}, [], [], []
        for i, item in enumerate(sources):
            key = _source_key(item)
            if key not in keys:  # a group's repeated source goes through the backbone once
                keys[key] = len(unique_sources)
                unique_sources.append(item)
                source_names.append(f"sources[{offset + i}]")
            source_index.append(keys[key])
        src, src_errors = self.preprocess(unique_sources, source_names)
        edt, edt_errors = self.preprocess(editeds, [f"editeds[{offset + i}]" for i in range(len(editeds))])
        errors = [src_errors[source_index[i]] or edt_errors[i] for i in range(len(editeds))]
        self._check_errors(errors, on_error)
        text = self.text_encoder.encode(list(instructions))
        out = self.score_tensors(src, edt, text, source_index=torch.tensor(source_index))
        return self._to_output(out, errors, out_size)

    def _to_output(self, out, errors: list[str | None], out_size: tuple[int, int]) -> RewardOutput:
        logits = F.interpolate(out.edit_mask_logits.float().unsqueeze(1), size=out_size, mode="bilinear",
                               align_corners=False)[:, 0].cpu()
        mask = logits > 0
        ok = torch.tensor([e is None for e in errors], dtype=torch.bool)
        reward = out.reward.float().cpu().masked_fill(~ok, float("nan"))
        subscores = out.subscores.float().cpu().masked_fill(~ok.unsqueeze(1), float("nan"))
        uncertainty = (25.0 * torch.exp(0.5 * out.subscore_logvar.float())).cpu().masked_fill(~ok.unsqueeze(1), float("nan"))
        presence = torch.sigmoid(out.presence_logit.float()).cpu().masked_fill(~ok, float("nan"))
        mask = mask & ok.view(-1, 1, 1)
        min_area = max(1, int(0.002 * out_size[0] * out_size[1]))  # specks below 0.2 % of the image are noise
        boxes = [mask_to_boxes(m.numpy(), min_area=min_area) for m in mask]
        return RewardOutput(reward, subscores, mask, boxes, uncertainty, presence, ok, list(errors))

    def _empty(self, out_size: tuple[int, int]) -> RewardOutput:
        h, w = out_size
        z = torch.zeros(0)
        return RewardOutput(z, torch.zeros(0, 4), torch.zeros(0, h, w, dtype=torch.bool), [], torch.zeros(0, 4), z,
                            torch.zeros(0, dtype=torch.bool), [])
