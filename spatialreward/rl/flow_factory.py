"""Flow-Factory (github.com/X-GenGroup/Flow-Factory): pointwise and groupwise reward models.

Flow-Factory calls ``reward_model(prompt=[...], image=[PIL ...], condition_images=[[PIL source, ...], ...])`` and
reads ``.rewards`` of the returned ``RewardModelOutput``; with ``use_tensor_inputs`` the images are CHW float
tensors in [0, 1] and ``condition_images`` entries ``[N, C, H, W]`` tensors. `SpatialRewardPointwise` scores each
edit; `SpatialRewardGroupwise` receives a whole group and returns within-group ranks in [0, 1] (what
``PickScoreRank`` does), failed edits excluded from the ranking and NaN.

When ``flow_factory`` is installed the classes subclass its ``PointwiseRewardModel`` / ``GroupwiseRewardModel`` and
take ``(config, accelerator)`` like any of its reward models (``config.server_url`` or ``config.model_path``);
without it they take ``EditScorer`` arguments directly, for use and tests outside the framework.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from spatialreward.rl.scorer import EditScorer, as_image_list

try:  # the real base classes where the framework is installed
    from flow_factory.rewards import GroupwiseRewardModel as _GroupBase
    from flow_factory.rewards import PointwiseRewardModel as _PointBase
    from flow_factory.rewards import RewardModelOutput
    HAVE_FLOW_FACTORY = True
except ImportError:  # pragma: no cover - exercised where flow_factory is absent (here)
    HAVE_FLOW_FACTORY = False
    _PointBase = _GroupBase = object

    @dataclass
    class RewardModelOutput:  # the two fields Flow-Factory's trainers read
        rewards: torch.Tensor
        extra_info: dict = field(default_factory=dict)


def _first_condition(cond) -> object:
    if isinstance(cond, torch.Tensor):
        return cond[0] if cond.ndim == 4 else cond
    if isinstance(cond, (list, tuple)):
        if not cond:
            raise ValueError("empty condition_images entry: the source image is missing")
        return cond[0]
    return cond


class _SpatialRewardBase:
    required_fields = ("prompt", "image", "condition_images")
    use_tensor_inputs = False

    def _setup(self, config=None, accelerator=None, **scorer_kwargs):
        if HAVE_FLOW_FACTORY and config is not None:
            super().__init__(config, accelerator)
            url = getattr(config, "server_url", None)
            model = None if url else getattr(config, "model_path", None)
            scorer_kwargs = {"url": url, "model": model, "token": getattr(config, "token", None), **scorer_kwargs}
        self.scorer = scorer_kwargs.pop("scorer", None) or EditScorer(**scorer_kwargs)

    def _score(self, prompt, image, condition_images):
        if image is None or condition_images is None:
            raise ValueError("SpatialReward needs image= and condition_images= (add them to required_fields)")
        sources = [_first_condition(c) for c in condition_images]
        rewards, infos = self.scorer.score(sources, as_image_list(image), list(prompt))
        return rewards, infos


class SpatialRewardPointwise(_SpatialRewardBase, _PointBase):
    """Pointwise: one reward per edit, NaN for an edit that could not be scored."""

    def __init__(self, config=None, accelerator=None, **scorer_kwargs):
        self._setup(config, accelerator, **scorer_kwargs)

    @torch.no_grad()
    def __call__(self, prompt, image=None, video=None, condition_images=None, condition_videos=None, **kwargs):
        rewards, infos = self._score(prompt, image, condition_images)
        return RewardModelOutput(rewards=torch.tensor(rewards, dtype=torch.float32),
                                 extra_info={"errors": [i["error"] for i in infos]})


class SpatialRewardGroupwise(_SpatialRewardBase, _GroupBase):
    """Groupwise: the group's rewards as ranks ``rank / (n - 1)`` in [0, 1] among the edits that scored."""

    def __init__(self, config=None, accelerator=None, **scorer_kwargs):
        self._setup(config, accelerator, **scorer_kwargs)

    @torch.no_grad()
    def __call__(self, prompt, image=None, video=None, condition_images=None, condition_videos=None, **kwargs):
        raw, infos = self._score(prompt, image, condition_images)
        ranks = np.full(len(raw), np.nan)
        ok = np.flatnonzero(~np.isnan(raw))
        if len(ok):
            order = raw[ok].argsort().argsort()
            ranks[ok] = order / max(len(ok) - 1, 1)
        return RewardModelOutput(rewards=torch.tensor(ranks, dtype=torch.float32),
                                 extra_info={"raw_rewards": raw.tolist(), "errors": [i["error"] for i in infos]})
