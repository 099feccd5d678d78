"""The SpatialReward reward formula (arXiv 2602.07458), vectorised over numpy arrays and torch tensors.

    reward = ((w_if·s1 + w_cons·s2) / 2.5) ** alpha · ((w_nat·n + w_art·a) / 2.5) ** (1 − alpha) / 10

with sub-scores ``[instruction_following, consistency, naturalness, artifacts]`` in 0–25 and defaults
``w_if=0.6, w_cons=0.4, w_nat=0.5, w_art=0.5, alpha=0.8``. Each bracket is on 0–10 because each pair of weights
sums to 1 (`RewardWeights` refuses other weights), so the reward is in [0, 1].
Worked example: (20, 15, 22, 18) → 0.735333 (ARCHITECTURE.md prints 0.73534; the fifth decimal is off there).

Bad input is never turned into a plausible number: the numpy path raises; the torch path (which must not sync the
device or branch on values, so it can be traced) clamps sub-scores into 0–25 and returns NaN for every edit whose
sub-scores are not all finite, so a caller flags exactly those (``torch.isfinite(reward)``).
"""

from __future__ import annotations

import math
import numbers
import sys
from dataclasses import dataclass
from typing import Any

import numpy as np

from spatialreward.types import SCORE_MAX

WEIGHT_SUM_TOLERANCE = 1e-6  # a pair of weights written as decimals (0.6 + 0.4) sums to 1 within float error


@dataclass(frozen=True)
class RewardWeights:
    """Weights of the formula: ``w_if + w_cons = 1`` and ``w_nat + w_art = 1`` (each weight in [0, 1]), exponent
    ``alpha`` in [0, 1] (the quality bracket gets ``1 − alpha``). These keep every reward in [0, 1]."""

    w_if: float = 0.6
    w_cons: float = 0.4
    w_nat: float = 0.5
    w_art: float = 0.5
    alpha: float = 0.8

    def __post_init__(self) -> None:
        for name in ("w_if", "w_cons", "w_nat", "w_art", "alpha"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
                raise ValueError(f"{name}={value!r} must be a finite number")
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(
                f"alpha={self.alpha} must be in [0, 1]: it is the exponent of the semantic bracket and 1 − alpha "
                "that of the quality bracket"
            )
        for name in ("w_if", "w_cons", "w_nat", "w_art"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name}={getattr(self, name)} must be in [0, 1]")
        for a, b in (("w_if", "w_cons"), ("w_nat", "w_art")):
            total = getattr(self, a) + getattr(self, b)
            if abs(total - 1.0) > WEIGHT_SUM_TOLERANCE:
                raise ValueError(
                    f"{a}={getattr(self, a)} + {b}={getattr(self, b)} = {total:g}, not 1: each pair of weights must "
                    f"sum to 1 or the reward leaves [0, 1] (e.g. {a}={getattr(self, a)}, "
                    f"{b}={max(0.0, 1.0 - getattr(self, a)):g})"
                )


DEFAULT_WEIGHTS = RewardWeights()


def reward_from_subscores(subscores: Any, weights: RewardWeights = DEFAULT_WEIGHTS) -> Any:
    """Reward for sub-scores ``[..., 4]`` (numpy, torch or a list). Returns ``[...]`` of the same kind.

    Sub-scores outside 0–25, NaN or inf raise (numpy) — a reward is never computed from bad input silently. For
    torch the check would sync the device and break tracing, so instead sub-scores are clamped into 0–25 and an
    edit with any non-finite sub-score gets a NaN reward (never a number made up by the clamp): flag
    ``~torch.isfinite(reward)``.
    """
    torch = sys.modules.get("torch")  # a tensor implies torch is imported; never pay its import for numpy input
    if torch is not None and isinstance(subscores, torch.Tensor):
        if subscores.shape[-1:] != (4,):
            raise ValueError(f"subscores must have last dimension 4, got shape {tuple(subscores.shape)}")
        s = subscores.clamp(0.0, SCORE_MAX)
        sem = (weights.w_if * s[..., 0] + weights.w_cons * s[..., 1]) / 2.5
        qual = (weights.w_nat * s[..., 2] + weights.w_art * s[..., 3]) / 2.5
        reward = sem.pow(weights.alpha) * qual.pow(1.0 - weights.alpha) / 10.0
        # x·0 is 0 for finite x and NaN for NaN/±inf: adds exactly 0 to a good row and poisons a bad one. Plain
        # arithmetic (no isfinite/where), so the graph exports with the ops the rest of the model already uses.
        return reward + (subscores * 0.0).sum(-1)
    s = np.asarray(subscores, dtype=np.float64)
    if s.shape[-1:] != (4,):
        raise ValueError(f"subscores must have last dimension 4, got shape {s.shape}")
    if not np.all(np.isfinite(s)):
        raise ValueError("subscores contain NaN or inf")
    if np.any(s < 0) or np.any(s > SCORE_MAX):
        raise ValueError(f"subscores must be in 0–25, got min {s.min():.3f} max {s.max():.3f}")
    sem = (weights.w_if * s[..., 0] + weights.w_cons * s[..., 1]) / 2.5
    qual = (weights.w_nat * s[..., 2] + weights.w_art * s[..., 3]) / 2.5
    out = np.power(sem, weights.alpha) * np.power(qual, 1.0 - weights.alpha) / 10.0
    return float(out) if out.ndim == 0 else out
