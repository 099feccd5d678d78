"""The SpatialReward reward formula (arXiv 2602.07458), vectorised over numpy arrays and torch tensors.

    reward = ((w_if·s1 + w_cons·s2) / 2.5) ** alpha · ((w_nat·n + w_art·a) / 2.5) ** (1 − alpha) / 10

with sub-scores ``[instruction_following, consistency, naturalness, artifacts]`` in 0–25 and defaults
``w_if=0.6, w_cons=0.4, w_nat=0.5, w_art=0.5, alpha=0.8``. Each bracket is on 0–10, so the reward is in [0, 1].
Worked example: (20, 15, 22, 18) → 0.735333 (ARCHITECTURE.md prints 0.73534; the fifth decimal is off there).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class RewardWeights:
    """Weights of the formula. ``w_if + w_cons`` and ``w_nat + w_art`` should each be 1 to keep reward in [0, 1]."""

    w_if: float = 0.6
    w_cons: float = 0.4
    w_nat: float = 0.5
    w_art: float = 0.5
    alpha: float = 0.8

    def __post_init__(self) -> None:
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha={self.alpha} must be in [0, 1]")
        for name in ("w_if", "w_cons", "w_nat", "w_art"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 0")


DEFAULT_WEIGHTS = RewardWeights()


def reward_from_subscores(subscores: Any, weights: RewardWeights = DEFAULT_WEIGHTS) -> Any:
    """Reward for sub-scores ``[..., 4]`` (numpy, torch or a list). Returns ``[...]`` of the same kind.

    Sub-scores outside 0–25 raise (numpy) — a reward is never computed from out-of-range input silently. For torch
    the check is skipped (it would sync the device and break tracing); inputs are clamped at 0 instead.
    """
    torch = sys.modules.get("torch")  # a tensor implies torch is imported; never pay its import for numpy input
    if torch is not None and isinstance(subscores, torch.Tensor):
        s = subscores.clamp_min(0.0)
        sem = (weights.w_if * s[..., 0] + weights.w_cons * s[..., 1]) / 2.5
        qual = (weights.w_nat * s[..., 2] + weights.w_art * s[..., 3]) / 2.5
        return sem.pow(weights.alpha) * qual.pow(1.0 - weights.alpha) / 10.0
    s = np.asarray(subscores, dtype=np.float64)
    if s.shape[-1:] != (4,):
        raise ValueError(f"subscores must have last dimension 4, got shape {s.shape}")
    if not np.all(np.isfinite(s)):
        raise ValueError("subscores contain NaN or inf")
    if np.any(s < 0) or np.any(s > 25):
        raise ValueError(f"subscores must be in 0–25, got min {s.min():.3f} max {s.max():.3f}")
    sem = (weights.w_if * s[..., 0] + weights.w_cons * s[..., 1]) / 2.5
    qual = (weights.w_nat * s[..., 2] + weights.w_art * s[..., 3]) / 2.5
    out = np.power(sem, weights.alpha) * np.power(qual, 1.0 - weights.alpha) / 10.0
    return float(out) if out.ndim == 0 else out
