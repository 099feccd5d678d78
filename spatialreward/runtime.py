"""`RewardModel`: the front door for scoring edits with a distilled student, like SAM's `SamPredictor`.

    from spatialreward import RewardModel

    rm = RewardModel.from_pretrained("runs/nano")                           # PyTorch
    rm = RewardModel.from_pretrained("exports/nano", backend="onnxruntime")  # an `spatialreward export onnx` folder
    out = rm.score(sources, editeds, instructions)   # lists of PIL / numpy HWC / torch CHW / paths / bytes
    out.reward        # [B] float tensor, the paper's formula over the predicted sub-scores
    out.subscores     # [B, 4] in 0–25: instruction_following, consistency, naturalness, artifacts
    out.edit_mask     # [B, H, W] bool, where the student sees the edit (H = W = model input side by default)
    out.boxes         # list of B float arrays [K, 4], (x1, y1, x2, y2) in 0–1000 on the edited image

Backends: ``torch`` (eager PyTorch), ``onnxruntime`` (CPU, or CUDA with onnxruntime-gpu), ``tensorrt`` (engines from
``spatialreward export tensorrt``), ``auto`` (what the folder holds). This module talks to them only through the
encode / score protocol of `spatialreward.export.protocol`, loaded lazily; every backend hands back the same
`RewardOutput`.

Work is shared where it can be: a GRPO group repeats one source and one instruction, so `score` encodes each
*distinct* source (same object or same path) once and the text encoder sees each distinct instruction once. For a
stream of groups, `set_group(source, instruction)` pays for the source once and `score_group(editeds)` scores
candidates against it (calling `score_group` first raises an error naming `set_group`).

Bad input: a bad item raises `ImageLoadError` naming it (``on_error="raise"``) or, with ``on_error="flag"``, comes
back with ``ok=False``, its error text and a NaN reward that the ``ok`` mask marks — never a made-up score. Every
per-item problem is flagged that way (unreadable file, unsupported dtype or layout such as a bf16 or sparse tensor,
an instruction that is not a string, a non-finite score from the network); only programming errors propagate.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F

from spatialreward.boxes import mask_to_boxes
from spatialreward.formula import RewardWeights, reward_from_subscores
from spatialreward.images import ImageLoadError, load_image, map_images

Backend = Literal["torch", "onnxruntime", "tensorrt", "auto"]


@dataclass
class RewardOutput:
    """Scores of ``B`` edits. Tensors are on CPU.

    ``reward [B]``; ``subscores [B, 4]`` (0–25, order of `SUBSCORE_NAMES`); ``edit_mask [B, H, W]`` bool;
    ``boxes``: ``B`` arrays ``[K, 4]`` in 0–1000 on the edited image (connected components of the mask, largest
    first); ``uncertainty [B, 4]`` one standard deviation per sub-score, in points; ``presence [B]`` probability
    that anything was visibly edited; ``ok [B]`` False where an input could not be read (then ``errors[i]`` says
    why and the scores are NaN).

    ``novelty [B]``: how far the edit lies outside what the student learned from (`spatialreward.student.novelty`;
    1.0 = the 99th percentile of in-distribution edits), the larger of ``novelty_parts [B, V]``: one column per view
    the model has (`RewardModel.novelty_views`, in `spatialreward.types.NOVELTY_VIEWS` order). None when the model
    has no novelty fit.
    ``novel [B]`` is ``novelty > novelty_threshold``: the edits whose reward is a guess (send them to the teacher,
    `spatialreward.rl.fallback`); all False when there is no fit.
    """

    reward: torch.Tensor
    subscores: torch.Tensor
    edit_mask: torch.Tensor
    boxes: list[np.ndarray]
    uncertainty: torch.Tensor
    presence: torch.Tensor
    ok: torch.Tensor
    errors: list[str | None] = field(default_factory=list)
    novelty: torch.Tensor | None = None
    novelty_parts: torch.Tensor | None = None
    novelty_threshold: float = 1.0

    def __len__(self) -> int:
        return len(self.reward)

    @property
    def novel(self) -> torch.Tensor:
        if self.novelty is None:
            return torch.zeros(len(self.reward), dtype=torch.bool)
        return (self.novelty > self.novelty_threshold) & self.ok


def _source_key(item: Any) -> Any:
    """Identity of a source for sharing work: the path for paths, the object itself otherwise."""
    if isinstance(item, (str, Path)):
        return ("path", str(Path(item)))
    if isinstance(item, (bytes, bytearray)):
        return ("bytes", hash(bytes(item)))
    return ("object", id(item))


def _read_image(item: Any, name: str):
    """`load_image`, with every conversion failure of a bad item as an `ImageLoadError` naming it: numpy / torch
    raise TypeError (bf16, sparse), ValueError or RuntimeError (meta tensors) for inputs they cannot convert."""
    try:
        return load_image(item, name=name)
    except ImageLoadError:
        raise
    except (TypeError, ValueError, RuntimeError) as exc:
        kind = f"{type(item).__name__}" + (f" of dtype {item.dtype}" if hasattr(item, "dtype") else "")
        raise ImageLoadError(name, f"cannot convert {kind} to an image ({type(exc).__name__}: {exc})") from exc


def _rows(encoding: tuple[torch.Tensor, ...], index) -> tuple[torch.Tensor, ...]:
    return tuple(t[index] for t in encoding)


def _cat(parts: list[tuple[torch.Tensor | None, ...]]) -> tuple[torch.Tensor | None, ...]:
    """Row-wise concatenation of tuples of tensors; a field that is None in every part (no novelty fit) stays None."""
    if len(parts) == 1:
        return parts[0]
    return tuple(None if ts[0] is None else torch.cat(ts) for ts in zip(*parts))


class RewardModel:
    """A distilled student ready to score edits (see the module docstring).

    Args:
        model: a `spatialreward.export.protocol.ScoringBackend`, or a `Student` network (wrapped in the torch
            backend, as before backends existed).
        text_encoder: anything with ``encode(list[str]) -> [B, text_dim]``; default: the backend's own
            (``embed_text``: ONNX Runtime runs an export's ``text.onnx``), else the torch encoder the student was
            trained with (`spatialreward.export.backends.instruction_encoder_for`).
        device: where a `Student` passed as ``model`` runs (a backend keeps its own device).
        backend: kept for old callers; only ``"torch"`` makes sense with a `Student`.
    """

    def __init__(self, model, *, text_encoder=None, device: str | torch.device = "cpu", backend: Backend = "torch"):
        from spatialreward.export.protocol import ScoringBackend

        if not isinstance(model, ScoringBackend):
            if backend not in ("torch", "auto"):
                raise ValueError(
                    f"backend {backend!r} with a Student network: use RewardModel.from_pretrained(folder, "
                    f"backend={backend!r}) with an export folder, or backend='torch'"
                )
            from spatialreward.export.backends import TorchBackend

            model = TorchBackend(model, device=device)
        self.backend = model
        self.device = model.device
        from spatialreward.export.backends import instruction_encoder_for

        self.text_encoder = instruction_encoder_for(model, text_encoder)
        self._weights = RewardWeights(**model.reward_weights)  # what the graph bakes into Scores.reward
        self._group: dict[str, Any] | None = None
        self.novelty_threshold = 1.0  # RewardOutput.novel: novelty above it (1.0 = 99th pct of training edits)

    @classmethod
    def from_pretrained(
        cls, directory: str | Path, *, backend: Backend = "torch", device: str | torch.device = "cpu",
        text_encoder=None, **backend_options,
    ) -> RewardModel:
        """Load a folder: a training run / student folder (``model.safetensors`` + ``config.json``), an export
        folder (``export.json``, from ``spatialreward export onnx``) or a TensorRT engine folder (``engine.json``).
        ``backend_options`` go to the backend (e.g. ``intra_op_threads`` for ONNX Runtime, ``compile`` for torch).
        Errors name the folder and the fix (wrong folder kind, another package version, backend not installed)."""
        from spatialreward.export.backends import load_backend

        return cls(load_backend(directory, backend, device=device, **backend_options), text_encoder=text_encoder)

    @property
    def image_size(self) -> int:
        return self.backend.image_size

    @property
    def student(self):
        """The PyTorch network of the torch backend (other backends have none)."""
        student = getattr(self.backend, "student", None)
        if student is None:
            raise AttributeError(f"backend {self.backend.name!r} has no PyTorch student; load with backend='torch'")
        return student

    @property
    def novelty_views(self) -> tuple[str, ...]:
        """The columns of ``RewardOutput.novelty_parts`` (empty: the folder has no current novelty fit)."""
        return tuple(getattr(self.backend, "novelty_views", ()))

    @property
    def has_novelty(self) -> bool:
        """Whether outputs carry ``novelty`` (the folder had a current novelty fit: `spatialreward novelty`)."""
        return bool(self.novelty_views)

    def describe(self) -> dict[str, Any]:
        """The backend, its device and settings (ONNX Runtime: providers and session options)."""
        return self.backend.describe()

    def set_reward_weights(self, weights: RewardWeights) -> None:
        """Re-weight the formula over the same predicted sub-scores (no retraining, no re-export)."""
        self._weights = weights

    # -- preprocessing ---------------------------------------------------------------------------------------------

    def preprocess(self, items: Sequence[Any], names: Sequence[str]) -> tuple[torch.Tensor, list[str | None]]:
        """Items → uint8 ``[B, S, S, 3]`` at the model side and per-item errors naming ``names[i]`` (a failed item
        is a zero image, never scored as valid)."""
        side = self.image_size
        out = torch.zeros(len(items), side, side, 3, dtype=torch.uint8)

        def one(i: int) -> str | None:
            item = items[i]
            if isinstance(item, np.ndarray) and item.dtype == np.uint8 and item.shape == (side, side, 3):
                out[i].numpy()[...] = item  # already at the model side (the server's raw frames): no PIL round trip
                return None
            try:
                out[i] = self.backend.preprocess(_read_image(item, names[i]))
            except ImageLoadError as exc:
                return str(exc)
            return None

        return out, map_images(one, range(len(items)))

    def _encode_text(self, instructions: Sequence[Any], offset: int = 0) -> tuple[torch.Tensor, list[str | None]]:
        """Instruction embeddings ``[B, D]``; an instruction that is not a string is that item's error (its row is
        zeros and its scores become NaN), not the batch's."""
        errors = [None if isinstance(t, str) else f"instructions[{offset + i}]: is {type(t).__name__}, expected str"
                  for i, t in enumerate(instructions)]
        good = [t for t, e in zip(instructions, errors) if e is None]
        emb = self.text_encoder.encode(good) if good else None
        dim = emb.shape[1] if emb is not None else int(getattr(self.text_encoder, "dim", 384))
        out = torch.zeros(len(instructions), dim)
        if emb is not None:
            out[torch.tensor([e is None for e in errors])] = emb.float().cpu()
        return out, errors

    # -- the backend, in pieces no larger than its profile ---------------------------------------------------------

    def _chunks(self, n: int):
        step = self.backend.max_batch or max(n, 1)
        return [slice(i, i + step) for i in range(0, n, step)]

    def _encode(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return _cat([self.backend.encode(images[sl]) for sl in self._chunks(images.shape[0])])

    def _score(self, source, edited, text: torch.Tensor):
        from spatialreward.export.protocol import Scores

        parts = [self.backend.score(_rows(source, sl), _rows(edited, sl), text[sl]) for sl in self._chunks(len(text))]
        return Scores(*_cat([tuple(p) for p in parts]))

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
        """The tensor path: ``sources [U, S, S, 3]`` and ``editeds [B, S, S, 3]`` uint8 at the model side (or
        float ``[.., 3, S, S]`` in 0–1, converted), ``text_embeddings [B, D]``; edit ``i`` is judged against
        ``sources[source_index[i]]`` (default: ``i``). Returns the backend's `Scores` (on its device)."""
        sources, editeds = _as_uint8_hwc(sources), _as_uint8_hwc(editeds)
        b = editeds.shape[0]
        index = torch.arange(b) if source_index is None else source_index.cpu()
        enc = self._encode(torch.cat([sources, editeds]))  # one pass over distinct sources + edits
        u = sources.shape[0]
        src = _rows(_rows(enc, slice(0, u)), index.to(enc[0].device))
        return self._score(src, _rows(enc, slice(u, None)), text_embeddings)

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
        ``(H, W)``. ``batch_size`` edits go through the network at a time (split further to the backend's max).
        """
        n = len(editeds)
        if not (len(sources) == n == len(instructions)):
            raise ValueError(
                f"got {len(sources)} sources, {n} edited images and {len(instructions)} instructions; "
                "pass one of each per edit (repeat a group's source and instruction)"
            )
        if on_error not in ("raise", "flag"):
            raise ValueError(f"on_error={on_error!r}; use 'raise' or 'flag'")
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size}; use a positive number of edits per network call")
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
            novelty=None if parts[0].novelty is None else torch.cat([p.novelty for p in parts]),
            novelty_parts=None if parts[0].novelty_parts is None else torch.cat([p.novelty_parts for p in parts]),
            novelty_threshold=self.novelty_threshold,
        )

    def set_group(self, source: Any, instruction: str) -> None:
        """Encode a group's source image and instruction once; then call `score_group` for its candidates."""
        if not isinstance(instruction, str):
            raise TypeError(f"instruction is {type(instruction).__name__}, expected str")
        src, errors = self.preprocess([source], ["source"])
        if errors[0]:
            raise ImageLoadError("source", errors[0].removeprefix("source: "))
        with torch.no_grad():
            encoding = self._encode(src)  # one row: the source's encoding
        self._group = {"encoding": encoding, "text": self._encode_text([instruction])[0]}

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
        if on_error not in ("raise", "flag"):
            raise ValueError(f"on_error={on_error!r}; use 'raise' or 'flag'")
        out_size = self._mask_size(mask_size, editeds)
        b = len(editeds)
        if b == 0:
            return self._empty(out_size)
        edt, errors = self.preprocess(editeds, [f"editeds[{i}]" for i in range(b)])
        self._check_errors(errors, on_error)
        edited = self._encode(edt)
        source = _rows(self._group["encoding"], torch.zeros(b, dtype=torch.long, device=edited[0].device))
        out = self._score(source, edited, self._group["text"].expand(b, -1))
        return self._to_output(out, errors, out_size)

    # -- helpers ---------------------------------------------------------------------------------------------------

    def _mask_size(self, mask_size, editeds) -> tuple[int, int]:
        if mask_size == "input":
            return self.image_size, self.image_size
        if mask_size == "edited":
            sizes = set()
            for i, item in enumerate(editeds):
                try:
                    w, h = _read_image(item, f"editeds[{i}]").size
                    sizes.add((h, w))
                except ImageLoadError:
                    continue  # scoring flags (or raises for) it
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
        text, text_errors = self._encode_text(instructions, offset)
        errors = [src_errors[source_index[i]] or edt_errors[i] or text_errors[i] for i in range(len(editeds))]
        self._check_errors(errors, on_error)
        out = self.score_tensors(src, edt, text, source_index=torch.tensor(source_index, dtype=torch.long))
        return self._to_output(out, errors, out_size)

    def _to_output(self, out, errors: list[str | None], out_size: tuple[int, int]) -> RewardOutput:
        from spatialreward.student.model import subscore_std_points

        errors = list(errors)
        subscores = out.subscores.float().cpu()
        if asdict(self._weights) == self.backend.reward_weights:
            reward = out.reward.float().cpu()  # the formula inside the graph
        else:  # re-weighted after export: the same formula over the same sub-scores
            reward = reward_from_subscores(subscores, self._weights).float()
        for i in torch.nonzero(~torch.isfinite(reward) | ~torch.isfinite(subscores).all(1)).flatten().tolist():
            if errors[i] is None:  # never hand out a NaN reward as a score
                errors[i] = f"edit {i}: the network produced a non-finite score (reward {reward[i].item()})"
        ok = torch.tensor([e is None for e in errors], dtype=torch.bool)
        logits = F.interpolate(out.mask_logits.float().cpu().unsqueeze(1), size=out_size, mode="bilinear",
                               align_corners=False)[:, 0]
        mask = (logits > 0) & ok.view(-1, 1, 1)
        reward = reward.masked_fill(~ok, float("nan"))
        subscores = subscores.masked_fill(~ok.unsqueeze(1), float("nan"))
        uncertainty = subscore_std_points(out.subscore_logvar.float().cpu()).masked_fill(~ok.unsqueeze(1), float("nan"))
        presence = torch.sigmoid(out.presence_logit.float().cpu()).masked_fill(~ok, float("nan"))
        min_area = max(1, int(0.002 * out_size[0] * out_size[1]))  # specks below 0.2 % of the image are noise
        boxes = [mask_to_boxes(m.numpy(), min_area=min_area) for m in mask]
        novelty = parts = None
        if out.novelty is not None:  # [B, V] per view → the larger one is the edit's novelty
            parts = out.novelty.float().cpu().masked_fill(~ok.unsqueeze(1), float("nan"))
            novelty = parts.amax(1)
        return RewardOutput(reward, subscores, mask, boxes, uncertainty, presence, ok, errors, novelty, parts,
                            self.novelty_threshold)

    def _empty(self, out_size: tuple[int, int]) -> RewardOutput:
        h, w = out_size
        z = torch.zeros(0)
        return RewardOutput(z, torch.zeros(0, 4), torch.zeros(0, h, w, dtype=torch.bool), [], torch.zeros(0, 4), z,
                            torch.zeros(0, dtype=torch.bool), [], z if self.has_novelty else None,
                            torch.zeros(0, len(self.novelty_views)) if self.has_novelty else None,
                            self.novelty_threshold)


def _as_uint8_hwc(images: torch.Tensor) -> torch.Tensor:
    """uint8 ``[B, S, S, 3]`` as is; float ``[B, 3, S, S]`` in 0–1 (the tensor path before backends) → uint8 HWC."""
    if images.dtype == torch.uint8 and images.shape[-1] == 3:
        return images
    if images.is_floating_point() and images.dim() == 4 and images.shape[1] == 3:
        return (images.float().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous()
    raise ValueError(
        f"images {tuple(images.shape)} {images.dtype}: pass uint8 [B, S, S, 3] or float [B, 3, S, S] in 0–1"
    )
