"""Flow-Factory (github.com/X-GenGroup/Flow-Factory): pointwise and groupwise reward models.

Flow-Factory calls ``reward_model(prompt=[...], image=[PIL ...], condition_images=[[PIL source, ...], ...])`` and
reads ``.rewards`` of the returned ``RewardModelOutput``; with ``use_tensor_inputs`` the images are CHW float
tensors in [0, 1] and ``condition_images`` entries ``[N, C, H, W]`` tensors. `SpatialRewardPointwise` scores each
edit; `SpatialRewardGroupwise` receives a whole group and returns within-group ranks in [0, 1] (what
``PickScoreRank`` does), failed edits excluded from the ranking and NaN.

Both take ``(config, accelerator)`` like any Flow-Factory reward model — ``server_url`` (or ``model_path``) and
``token`` come from the ``rewards:`` entry, where unknown keys land in ``extra_kwargs`` — or ``EditScorer``
arguments directly. When ``flow_factory`` is installed they subclass its ``PointwiseRewardModel`` /
``GroupwiseRewardModel`` (its `RewardProcessor` sorts reward models by those classes); without it they are plain
classes with the same call shape. The instruction is the prompt, or ``metadata["instruction"]`` when the dataset
has that column::

    rewards:
      - name: spatialreward
        reward_model: spatialreward.rl.flow_factory.SpatialRewardPointwise
        server_url: http://127.0.0.1:23456
        batch_size: 64
"""

from __future__ import annotations

import json
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


def config_value(config, key: str):
    """A setting from a Flow-Factory ``RewardArguments``: a field, else its ``extra_kwargs`` (where unknown YAML keys
    land) or ``reward_model_kwargs``."""
    value = getattr(config, key, None)
    if value is None:
        for bag in ("extra_kwargs", "reward_model_kwargs"):
            extra = getattr(config, bag, None)
            if isinstance(extra, dict) and extra.get(key) is not None:
                return extra[key]
    return value


class _SpatialRewardBase:
    required_fields = ("prompt", "image", "condition_images")
    use_tensor_inputs = False

    def _setup(self, config=None, accelerator=None, **scorer_kwargs):
        if config is not None:
            if HAVE_FLOW_FACTORY:
                super().__init__(config, accelerator)  # sets self.config / device / dtype like any reward model
            url = config_value(config, "server_url")
            model = None if url else config_value(config, "model_path")
            if not url and not model:
                raise ValueError("SpatialReward reward model: set server_url (a running `spatialreward serve`) or "
                                 "model_path (a student folder) in its rewards: entry")
            device = config_value(config, "device")
            scorer_kwargs = {"url": url, "model": model, "token": config_value(config, "token"),
                             **({"device": str(device)} if model and device is not None else {}), **scorer_kwargs}
        self.scorer = scorer_kwargs.pop("scorer", None) or EditScorer(**scorer_kwargs)

    def _score(self, prompt, image, condition_images, metadata=None):
        if image is None or condition_images is None:
            raise ValueError("SpatialReward needs image= and condition_images= (the source first); keep "
                             "'condition_images' in required_fields")
        sources = [_first_condition(c) for c in condition_images]
        instructions = list(prompt)
        if metadata is not None:  # Flow-Factory hands dataset columns over as one JSON string per sample
            for i, meta in enumerate(metadata):
                if isinstance(meta, str):
                    try:
                        meta = json.loads(meta)
                    except json.JSONDecodeError:
                        meta = None
                if isinstance(meta, dict) and meta.get("instruction"):
                    instructions[i] = meta["instruction"]
        return self.scorer.score(sources, as_image_list(image), instructions)


class SpatialRewardPointwise(_SpatialRewardBase, _PointBase):
    """Pointwise: one reward per edit, NaN for an edit that could not be scored."""

    def __init__(self, config=None, accelerator=None, **scorer_kwargs):
        self._setup(config, accelerator, **scorer_kwargs)

    @torch.no_grad()
    def __call__(self, prompt, image=None, video=None, condition_images=None, condition_videos=None, **kwargs):
        rewards, infos = self._score(prompt, image, condition_images, kwargs.get("metadata"))
        return RewardModelOutput(rewards=torch.tensor(rewards, dtype=torch.float32),
                                 extra_info={"errors": [i["error"] for i in infos]})


class SpatialRewardGroupwise(_SpatialRewardBase, _GroupBase):
    """Groupwise: the group's rewards as ranks ``rank / (n - 1)`` in [0, 1] among the edits that scored."""

    def __init__(self, config=None, accelerator=None, **scorer_kwargs):
        self._setup(config, accelerator, **scorer_kwargs)

    @torch.no_grad()
    def __call__(self, prompt, image=None, video=None, condition_images=None, condition_videos=None, **kwargs):
        raw, infos = self._score(prompt, image, condition_images, kwargs.get("metadata"))
        ranks = np.full(len(raw), np.nan)
        ok = np.flatnonzero(~np.isnan(raw))
        if len(ok):
            order = raw[ok].argsort().argsort()
            ranks[ok] = order / max(len(ok) - 1, 1)
        return RewardModelOutput(rewards=torch.tensor(ranks, dtype=torch.float32),
                                 extra_info={"raw_rewards": raw.tolist(), "errors": [i["error"] for i in infos]})
