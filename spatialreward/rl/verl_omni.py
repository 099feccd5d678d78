"""VeRL-Omni (github.com/verl-project/verl-omni): an async per-sample ``compute_score``.

VeRL-Omni's image reward manager awaits ``compute_score(data_source=..., solution_image=..., ground_truth=...,
extra_info=..., **kwargs)`` per sample, ``solution_image`` a CHW (or 1×CHW) float tensor in [0, 1], and reads a float
or a dict with ``"score"``; image-edit datasets carry the source in ``extra_info["source_img"]`` (PIL, array,
tensor, or a parquet ``{"bytes"| "path"}`` dict) and the instruction in ``extra_info["instruction"]`` (else the
ground truth), as in its ``genrm_image_edit.py``. Point ``custom_reward_function.path`` at this file and
``.name=compute_score``; set ``SPATIALREWARD_URL`` (a running server, shared by every reward worker: requests
from concurrent samples batch on the server) or ``SPATIALREWARD_MODEL`` (in-process).

A failed edit returns ``{"score": nan, "error": ...}``: visible in the rollout dumps, never a soft 0.
"""

from __future__ import annotations

import io
import math
import os

from spatialreward.rl.scorer import EditScorer

_SCORER: EditScorer | None = None


def _default_scorer() -> EditScorer:
    global _SCORER
    if _SCORER is None:
        url = os.environ.get("SPATIALREWARD_URL")
        model = None if url else os.environ.get("SPATIALREWARD_MODEL")
        if not url and not model:
            raise ValueError("set SPATIALREWARD_URL (a running `spatialreward serve`) or SPATIALREWARD_MODEL (a student "
                             "folder) for spatialreward.rl.verl_omni.compute_score")
        _SCORER = EditScorer(model, url=url, token=os.environ.get("SPATIALREWARD_TOKEN"))
    return _SCORER


def _image(value):
    if isinstance(value, dict):  # parquet image column
        if value.get("bytes") is not None:
            return value["bytes"]
        if value.get("path") is not None:
            return value["path"]
    if hasattr(value, "ndim") and value.ndim == 4:
        return value[0]
    return value


async def compute_score(data_source=None, solution_image=None, ground_truth=None, extra_info=None, *,
                        scorer: EditScorer | None = None, **kwargs) -> dict:
    extra_info = extra_info or {}
    source = extra_info.get("source_img")
    if source is None:
        raise ValueError("compute_score needs extra_info['source_img'] (the image being edited); wire it into "
                         "extra_info in the data preprocessing")
    if solution_image is None:
        raise ValueError("compute_score needs solution_image")
    instruction = extra_info.get("instruction") or ground_truth or ""
    rewards, infos = await (scorer or _default_scorer()).ascore([_image(source)], [_image(solution_image)],
                                                                [instruction])
    reward = float(rewards[0])
    out = {"score": reward}
    if math.isnan(reward):
        out["error"] = infos[0]["error"]
    else:
        out.update({name: v for name, v in zip(("instruction_following", "consistency", "naturalness", "artifacts"),
                                                infos[0]["subscores"])})
    return out
