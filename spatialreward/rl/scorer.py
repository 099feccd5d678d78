"""`EditScorer`: the one object every adapter scores through — a local `RewardModel` or a remote server.

    EditScorer(model="runs/nano")                        # in-process
    EditScorer(url="http://127.0.0.1:23456", token=...)  # through `spatialreward serve`

`score(sources, editeds, instructions)` returns rewards as a float array (NaN where an edit failed) and one info
dict per edit (``ok``, ``error``, ``subscores``, ``boxes``). Images may be PIL, numpy HWC (uint8 or float 0–1), torch
CHW float 0–1, bytes or paths; `as_image_list` also splits batched NCHW tensors / NHWC arrays.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def as_image_list(images: Any) -> list[Any]:
    """A batch of images in a trainer's layout → a list of single images `load_image` accepts.

    NCHW float tensor in [0, 1] (Flow-GRPO's ``output_type="pt"``) → CHW tensors; NHWC uint8 array → HWC arrays;
    a list passes through."""
    try:
        import torch

        if isinstance(images, torch.Tensor):
            if images.ndim == 3:
                return [images.detach().float().cpu()]
            if images.ndim != 4:
                raise ValueError(f"image tensor of shape {tuple(images.shape)}: expected NCHW or CHW")
            return list(images.detach().float().cpu().unbind(0))
    except ImportError:
        pass
    if isinstance(images, np.ndarray):
        if images.ndim == 3:
            return [images]
        if images.ndim != 4:
            raise ValueError(f"image array of shape {images.shape}: expected NHWC or HWC")
        return list(images)
    return list(images)


class EditScorer:
    """Scores edits in-process or remotely (exactly one of ``model`` / ``reward_model`` / ``url``)."""

    def __init__(self, model: str | None = None, *, reward_model=None, url: str | None = None,
                 token: str | None = None, backend: str = "torch", device: str = "cpu", batch_size: int = 64,
                 **client_kwargs):
        if sum(x is not None for x in (model, reward_model, url)) != 1:
            raise ValueError("give exactly one of model= (a student folder), reward_model= (a RewardModel) or url= "
                             "(a running `spatialreward serve`)")
        self.batch_size = batch_size
        self.client = None
        self.rm = reward_model
        if model is not None:
            from spatialreward.runtime import RewardModel

            self.rm = RewardModel.from_pretrained(model, backend=backend, device=device)
        if url is not None:
            from spatialreward.serving.client import RewardClient

            self.client = RewardClient(url, token=token, **client_kwargs)

    def score(self, sources: Sequence[Any], editeds: Sequence[Any], instructions: Sequence[str],
              group_ids: Sequence[Any] | None = None) -> tuple[np.ndarray, list[dict]]:
        if self.client is not None:
            return self._from_results(self.client.score(sources, editeds, instructions, group_ids))
        out = self.rm.score(list(sources), list(editeds), list(instructions), batch_size=self.batch_size,
                            on_error="flag")
        return self._from_output(out)

    async def ascore(self, sources, editeds, instructions, group_ids=None) -> tuple[np.ndarray, list[dict]]:
        if self.client is not None:
            return self._from_results(await self.client.ascore(sources, editeds, instructions, group_ids))
        import asyncio

        return await asyncio.get_running_loop().run_in_executor(None, self.score, sources, editeds, instructions)

    @staticmethod
    def _from_output(out) -> tuple[np.ndarray, list[dict]]:
        rewards = out.reward.double().numpy().copy()
        infos = []
        for i in range(len(out)):
            ok = bool(out.ok[i])
            infos.append({"ok": ok, "error": out.errors[i] if not ok else None,
                          "subscores": out.subscores[i].tolist() if ok else None,
                          "boxes": out.boxes[i].tolist() if ok else None})
        return rewards, infos

    @staticmethod
    def _from_results(results: list[dict]) -> tuple[np.ndarray, list[dict]]:
        rewards = np.array([r["reward"] if r["ok"] else np.nan for r in results], dtype=np.float64)
        infos = [{"ok": r["ok"], "error": r.get("error"),
                  "subscores": list(r["subscores"].values()) if r["ok"] else None, "boxes": r.get("boxes")}
                 for r in results]
        return rewards, infos
