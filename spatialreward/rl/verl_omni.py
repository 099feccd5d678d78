"""VeRL-Omni (github.com/verl-project/verl-omni): an async per-sample ``compute_score``.

VeRL-Omni's image reward manager awaits ``compute_score(data_source=..., solution_image=..., ground_truth=...,
extra_info=..., **kwargs)`` per sample (``reward_router_address`` and friends arrive in ``kwargs``),
``solution_image`` a CHW (or 1×CHW) tensor, uint8 pixels or float in [0, 1], and reads a float or a dict with
``"score"`` (the other keys go to its reward extra info). Image-edit datasets carry the source in
``extra_info["source_img"]`` (PIL, array, tensor, or a parquet ``{"bytes" | "path"}`` dict) and the instruction in
``extra_info["instruction"]`` (else the ground truth), as in its ``genrm_image_edit.py``. Point ``custom_reward_function.path`` at this file and
``.name=compute_score``; set ``SPATIALREWARD_URL`` (a running server, shared by every reward worker: requests
from concurrent samples batch on the server) or ``SPATIALREWARD_MODEL`` (in-process).

A failed edit returns ``{"score": nan, "error": "<why>"}`` — visible in the rollout dumps, never a soft 0 (the
upstream GRM judge soft-fails to 0.0) — or raises with ``SPATIALREWARD_ON_ERROR=raise``.
"""

from __future__ import annotations

import math
import os

from spatialreward.rl.scorer import EditScorer, as_image_list
from spatialreward.types import SUBSCORE_NAMES

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
    if hasattr(value, "ndim") and value.ndim == 4:  # 1xCHW tensor / 1xHWC array
        if value.shape[0] != 1:
            raise ValueError(f"compute_score scores one sample; got a batch of shape {tuple(value.shape)}")
    if hasattr(value, "ndim") and value.ndim in (3, 4):
        return as_image_list(value)[0]  # CPU, bf16 widened, uint8 kept
    return value


async def compute_score(data_source=None, solution_image=None, ground_truth=None, extra_info=None, *,
                        scorer: EditScorer | None = None, on_error: str | None = None, **kwargs) -> dict:
    """One sample's reward: ``{"score", "error", <four sub-scores>}`` (the same keys for every sample, which verl
    collects into its reward extra info). A failed edit has ``score`` NaN and the reason in ``error``; with
    ``on_error="raise"`` (or ``SPATIALREWARD_ON_ERROR=raise``) it raises instead, for trainers that must stop rather
    than see a NaN."""
    on_error = on_error or os.environ.get("SPATIALREWARD_ON_ERROR", "nan")
    if on_error not in ("nan", "raise"):
        raise ValueError(f"on_error={on_error!r}; use 'nan' or 'raise'")
    extra_info = extra_info or {}
    source = extra_info.get("source_img")
    if source is None:
        raise ValueError("compute_score needs extra_info['source_img'] (the image being edited); wire it into "
                         "extra_info in the data preprocessing")
    if solution_image is None:
        raise ValueError("compute_score needs solution_image")
    instruction = extra_info.get("instruction") or ground_truth
    rewards, infos = await (scorer or _default_scorer()).ascore([_image(source)], [_image(solution_image)],
                                                                [instruction])
    reward = float(rewards[0])
    info = infos[0]
    if math.isnan(reward) and on_error == "raise":
        raise RuntimeError(f"SpatialReward could not score this edit ({data_source}): {info['error']}")
    subscores = info["subscores"] or [math.nan] * len(SUBSCORE_NAMES)
    return {"score": reward, "error": info["error"] or "", **dict(zip(SUBSCORE_NAMES, subscores))}
