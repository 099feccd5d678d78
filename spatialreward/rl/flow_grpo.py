"""Flow-GRPO (github.com/yifan123/flow_grpo): a reward factory in the shape of ``flow_grpo/rewards.py``.

Its score functions are factories ``fn(device)`` returning ``_fn(images, prompts, metadata) -> (scores, info)``;
the edit trainers (``scripts/train_flux_kontext.py``, ``train_qwenimage_edit_plus.py``) call the reward with the
sources as ``reward_fn(images, prompts, metadata, ref_images, ...)``, ``images`` an NCHW float tensor in [0, 1]
(``output_type="pt"``) and ``ref_images`` a list of PIL sources. Use it directly as ``reward_fn``, or register it in
``multi_score``'s ``score_functions`` and pass ``ref_images`` through::

    from spatialreward.rl.flow_grpo import spatialreward_score
    score_functions["spatialreward"] = spatialreward_score          # in flow_grpo/rewards.py multi_score
    ...
    elif score_name == "spatialreward":
        scores, rewards = score_fns[score_name](images, prompts, metadata, ref_images=ref_images)

The instruction is the prompt (or ``metadata[i]["instruction"]`` when present). Failed edits score NaN.
"""

from __future__ import annotations

import os

from spatialreward.rl.scorer import EditScorer, as_image_list


def spatialreward_score(device=None, *, model: str | None = None, url: str | None = None, token: str | None = None,
                        reward_model=None, **kwargs):
    """``fn(device)`` factory. Without arguments it reads ``SPATIALREWARD_URL`` (remote) or ``SPATIALREWARD_MODEL``
    (in-process, on ``device``)."""
    if model is None and url is None and reward_model is None:
        url = os.environ.get("SPATIALREWARD_URL")
        model = None if url else os.environ.get("SPATIALREWARD_MODEL")
        token = token or os.environ.get("SPATIALREWARD_TOKEN")
        if not url and not model:
            raise ValueError("spatialreward_score needs model=, url= or reward_model= (or set SPATIALREWARD_URL / "
                             "SPATIALREWARD_MODEL)")
    scorer = EditScorer(model, reward_model=reward_model, url=url, token=token,
                        device=str(device) if device is not None and model else "cpu", **kwargs)

    def _fn(images, prompts, metadata, ref_images=None, **_ignored):
        editeds = as_image_list(images)
        if ref_images is None:
            raise ValueError("the SpatialReward score needs the source images: call it with ref_images=... (the edit "
                             "trainers pass them as the fourth argument)")
        sources = as_image_list(ref_images)
        if not (len(sources) == len(editeds) == len(prompts)):
            raise ValueError(f"got {len(editeds)} images, {len(sources)} ref_images and {len(prompts)} prompts")
        metas = metadata if isinstance(metadata, (list, tuple)) else [{}] * len(prompts)
        instructions = [(m.get("instruction") if isinstance(m, dict) else None) or p for m, p in zip(metas, prompts)]
        rewards, infos = scorer.score(sources, editeds, instructions)
        return rewards.tolist(), {"ok": [i["ok"] for i in infos], "errors": [i["error"] for i in infos],
                                  "novelty": [i.get("novelty") for i in infos],  # None without a novelty fit
                                  "scored_by": [i.get("scored_by", "student") for i in infos]}

    return _fn
