"""`EditScorer`: the one object every adapter scores through — a local `RewardModel` or a remote server.

    EditScorer(model="runs/nano")                        # in-process
    EditScorer(url="http://127.0.0.1:23456", token=...)  # through `spatialreward serve`

`score(sources, editeds, instructions)` returns rewards as a float array (NaN where an edit failed) and one info
dict per edit (``ok``, ``error``, ``subscores``, ``boxes``). Images may be PIL, numpy HWC (uint8 or float 0–1), torch
CHW (float 0–1 or uint8), bytes or paths; `as_image_list` also splits batched NCHW tensors / NHWC arrays.

Both paths check each edit the same way (instruction present and not over-long; images readable), so an edit fails
with the same reason in-process and through the server, and one bad edit never sinks the others. Trainers hand a
GRPO group's source over as separate but equal objects (one per candidate); `share_equal_sources` makes them one
object, so the backbone (in-process) or the PNG encoder (remote) sees each distinct source once.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

MAX_INSTRUCTION_CHARS = 2000  # the server's default limit (ServeConfig.max_instruction_chars)


def _unbatch_tensor(images) -> list[Any]:
    import torch

    t = images.detach().cpu()
    if t.dtype in (torch.bfloat16, torch.float16):
        t = t.float()  # bf16 has no numpy twin; uint8 and fp32 stay as they are (uint8 must not become 0–255 floats)
    if t.ndim == 3:
        return [t]
    if t.ndim != 4:
        raise ValueError(f"image tensor of shape {tuple(t.shape)}: expected NCHW or CHW")
    return list(t.unbind(0))


def as_image_list(images: Any) -> list[Any]:
    """A batch of images in a trainer's layout → a list of single images `load_image` accepts.

    NCHW tensor (float in [0, 1], Flow-GRPO's ``output_type="pt"``, or uint8) → CHW tensors; NHWC uint8 / float
    array → HWC arrays; a list passes through (its tensors moved to CPU, half precision widened to fp32)."""
    try:
        import torch

        if isinstance(images, torch.Tensor):
            return _unbatch_tensor(images)
        if isinstance(images, (list, tuple)):
            return [_unbatch_tensor(x)[0] if isinstance(x, torch.Tensor) and x.ndim == 3 else x for x in images]
    except ImportError:
        pass
    if isinstance(images, np.ndarray):
        if images.ndim == 3:
            return [images]
        if images.ndim != 4:
            raise ValueError(f"image array of shape {images.shape}: expected NHWC or HWC")
        return list(images)
    return list(images)


# -- sharing a group's source ------------------------------------------------------------------------------------

def _pixels(item: Any) -> Any:
    """What two sources are compared by: an array (PIL / numpy / torch), the bytes, or the resolved path."""
    if isinstance(item, (str, Path)):
        return ("path", str(Path(item).resolve()))
    if isinstance(item, (bytes, bytearray, memoryview)):
        return bytes(item)
    if isinstance(item, np.ndarray):
        return item
    if hasattr(item, "detach"):  # torch tensor: CHW, kept apart from HWC arrays by the layout tag below
        return ("chw", item.detach().cpu().numpy())
    if hasattr(item, "mode") and hasattr(item, "size"):  # PIL image
        return np.asarray(item)
    return None


def share_equal_sources(sources: Sequence[Any]) -> list[Any]:
    """Equal sources → one object (the first of them), so downstream work keyed on identity runs once per distinct
    source. A strided sample of the pixels finds candidates cheaply; a full comparison confirms each match, so two
    different images are never merged."""
    out: list[Any] = []
    seen_ids: dict[int, Any] = {}
    buckets: dict[Any, list[tuple[Any, Any]]] = {}  # fingerprint -> [(pixels, representative)]
    for item in sources:
        if id(item) in seen_ids:
            out.append(seen_ids[id(item)])
            continue
        pix = _pixels(item)
        layout = "hwc"
        if isinstance(pix, tuple) and pix[0] == "chw":
            layout, pix = pix
        rep = item
        if pix is not None:
            if isinstance(pix, np.ndarray):
                flat = np.ascontiguousarray(pix).reshape(-1)
                key = (layout, pix.shape, str(pix.dtype), flat[:: max(1, flat.size // 256)].tobytes())
            elif isinstance(pix, bytes):
                key = ("bytes", len(pix), pix[:: max(1, len(pix) // 256)])
            else:
                key = pix
            for other_pix, other in buckets.get(key, []):
                same = (np.array_equal(other_pix, pix) if isinstance(pix, np.ndarray) else other_pix == pix)
                if same:
                    rep = other
                    break
            else:
                buckets.setdefault(key, []).append((pix, item))
        seen_ids[id(item)] = rep
        out.append(rep)
    return out


def instruction_error(value: Any, i: int, max_chars: int = MAX_INSTRUCTION_CHARS) -> str | None:
    """Why instruction ``i`` cannot be judged (the server's rule), or None."""
    if value is None:
        return f"instructions[{i}]: missing; give the edit instruction as a string"
    if not isinstance(value, str):
        return f"instructions[{i}]: expected a string, got {type(value).__name__}"
    if not value.strip():
        return f"instructions[{i}]: empty instruction"
    if len(value.strip()) > max_chars:
        return f"instructions[{i}]: {len(value.strip())} characters is over the limit of {max_chars}"
    return None


class EditScorer:
    """Scores edits in-process or remotely (exactly one of ``model`` / ``reward_model`` / ``url``)."""

    def __init__(self, model: str | None = None, *, reward_model=None, url: str | None = None,
                 token: str | None = None, backend: str = "torch", device: str = "cpu", batch_size: int = 64,
                 fallback=None, **client_kwargs):
        if sum(x is not None for x in (model, reward_model, url)) != 1:
            raise ValueError("give exactly one of model= (a student folder), reward_model= (a RewardModel) or url= "
                             "(a running `spatialreward serve`)")
        self.batch_size = batch_size
        self.fallback = fallback  # a `TeacherFallback`: novel edits go to the teacher (rl/fallback.py)
        self.client = None
        self.rm = reward_model
        if model is not None:
            from spatialreward.runtime import RewardModel

            self.rm = RewardModel.from_pretrained(model, backend=backend, device=device)
        if url is not None:
            from spatialreward.serving.client import RewardClient

            self.client = RewardClient(url, token=token, **client_kwargs)

    @property
    def remote(self) -> bool:
        return self.client is not None

    def score(self, sources: Sequence[Any], editeds: Sequence[Any], instructions: Sequence[Any],
              group_ids: Sequence[Any] | None = None) -> tuple[np.ndarray, list[dict]]:
        n = len(editeds)
        if not (len(sources) == n == len(instructions)):
            raise ValueError(f"got {len(sources)} sources, {n} edited images and {len(instructions)} instructions; "
                             "pass one of each per edit")
        sources = share_equal_sources(sources)
        if self.client is not None:
            rewards, infos = self._from_results(self.client.score(sources, list(editeds), list(instructions),
                                                                  group_ids))
        else:
            rewards, infos = self._score_local(sources, list(editeds), list(instructions))
        return self._route(sources, editeds, instructions, rewards, infos)

    def _route(self, sources, editeds, instructions, rewards, infos) -> tuple[np.ndarray, list[dict]]:
        """Send the edits the student flags as novel to the fallback teacher, when there is one."""
        if self.fallback is None:
            return rewards, infos
        novelty = [info.get("novelty") for info in infos]
        known = None if all(v is None for v in novelty) else np.array(
            [np.nan if v is None else float(v) for v in novelty])
        return self.fallback.apply(sources, editeds, instructions, rewards, infos, known)

    async def ascore(self, sources, editeds, instructions, group_ids=None) -> tuple[np.ndarray, list[dict]]:
        if self.client is not None and self.fallback is None:
            sources = share_equal_sources(sources)
            return self._from_results(await self.client.ascore(sources, list(editeds), list(instructions), group_ids))
        import asyncio  # the fallback teacher is blocking work: run the whole call in a thread

        return await asyncio.get_running_loop().run_in_executor(None, self.score, sources, editeds, instructions,
                                                                group_ids)

    def _score_local(self, sources: list, editeds: list, instructions: list) -> tuple[np.ndarray, list[dict]]:
        rewards = np.full(len(editeds), np.nan)
        infos: list[dict] = [{}] * len(editeds)
        bad = {i: e for i, e in ((i, instruction_error(t, i)) for i, t in enumerate(instructions)) if e}
        keep = [i for i in range(len(editeds)) if i not in bad]
        for i, err in bad.items():
            infos[i] = {"ok": False, "error": err, "subscores": None, "boxes": None}
        if keep:
            out = self.rm.score([sources[i] for i in keep], [editeds[i] for i in keep],
                                [instructions[i].strip() for i in keep], batch_size=self.batch_size, on_error="flag")
            got, got_infos = self._from_output(out)
            for j, i in enumerate(keep):
                rewards[i], infos[i] = got[j], got_infos[j]
        return rewards, infos

    @staticmethod
    def _from_output(out) -> tuple[np.ndarray, list[dict]]:
        rewards = out.reward.double().numpy().copy()
        infos = []
        for i in range(len(out)):
            ok = bool(out.ok[i])
            infos.append({"ok": ok, "error": out.errors[i] if not ok else None,
                          "subscores": out.subscores[i].tolist() if ok else None,
                          "boxes": out.boxes[i].tolist() if ok else None,
                          "novelty": float(out.novelty[i]) if ok and out.novelty is not None else None})
        return rewards, infos

    @staticmethod
    def _from_results(results: list[dict]) -> tuple[np.ndarray, list[dict]]:
        rewards = np.array([r["reward"] if r["ok"] else np.nan for r in results], dtype=np.float64)
        infos = [{"ok": r["ok"], "error": r.get("error"),
                  "subscores": list(r["subscores"].values()) if r["ok"] else None, "boxes": r.get("boxes"),
                  "novelty": r.get("novelty")}
                 for r in results]
        return rewards, infos
