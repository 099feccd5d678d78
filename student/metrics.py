"""Evaluation metrics: how well student rewards would stand in for the teacher's inside GRPO.

GRPO only consumes rewards through group-normalised advantages, so the headline numbers are *within-group*:

* pairwise accuracy: over pairs of one group whose teacher rewards differ (by more than ``teacher_tie``), the
  share the student orders the same way. A student tie counts as **wrong** (it gives no signal); teacher ties are
  not pairs (there is no right order). One-member groups have no pairs.
* group-advantage correlation: per group, Pearson between the student's and the teacher's z-scored rewards
  (= Pearson of the raw rewards within the group), averaged over groups. Groups of one, or whose teacher rewards
  are all equal (no advantage to match), are skipped and counted; a student constant within a group where the
  teacher is not scores 0 (its advantages are all zero).

Then global ones: Spearman and Kendall (tau-b) of rewards over all edits, MAE per sub-score, presence accuracy and
mask IoU against the teacher's boxes, twice: over all edits (``mask_iou``; both empty → 1, agreeing nothing
changed) and over the edits the teacher boxed (``mask_iou_edited_only``). No-op edits are an eighth of a
synthetic group, and a student that predicts "nothing" everywhere would score 1 on each of them, so the first
alone flatters; every report shows both, with their counts. A metric with nothing to measure is ``None`` with its
count 0, never a made-up number.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import stats

from spatialreward.types import SUBSCORE_NAMES


def group_indices(group_ids: Sequence) -> dict[Any, np.ndarray]:
    """``{group id: indices of its edits}``, in first-seen order: what every within-group metric iterates over."""
    out: dict[Any, list[int]] = {}
    for i, g in enumerate(group_ids):
        out.setdefault(g, []).append(i)
    return {g: np.asarray(ix) for g, ix in out.items()}


def pairwise_accuracy(
    pred: Sequence[float], target: Sequence[float], group_ids: Sequence, *, teacher_tie: float = 1e-6
) -> tuple[float | None, int]:
    """Within-group pairwise accuracy and the number of pairs it is over (student ties are wrong)."""
    pred, target = np.asarray(pred, np.float64), np.asarray(target, np.float64)
    correct = total = 0
    for ix in group_indices(group_ids).values():
        p, t = pred[ix], target[ix]
        dt = t[:, None] - t[None, :]
        dp = p[:, None] - p[None, :]
        pairs = dt > teacher_tie  # i beats j for the teacher; each unordered pair counted once
        total += int(pairs.sum())
        correct += int((pairs & (dp > 0)).sum())
    return (correct / total if total else None), total


def group_advantage_correlation(
    pred: Sequence[float], target: Sequence[float], group_ids: Sequence, *, eps: float = 1e-12
) -> tuple[float | None, int, int]:
    """Mean within-group Pearson of z-scored rewards; returns ``(value, groups used, groups skipped)``."""
    pred, target = np.asarray(pred, np.float64), np.asarray(target, np.float64)
    values, skipped = [], 0
    for ix in group_indices(group_ids).values():
        if len(ix) < 2:
            skipped += 1
            continue
        t = target[ix] - target[ix].mean()
        p = pred[ix] - pred[ix].mean()
        st, sp = np.sqrt((t * t).mean()), np.sqrt((p * p).mean())
        if st <= eps:
            skipped += 1
            continue
        values.append(0.0 if sp <= eps else float(((p / sp) * (t / st)).mean()))
    return (float(np.mean(values)) if values else None), len(values), skipped


def rank_correlations(pred: Sequence[float], target: Sequence[float]) -> dict[str, float | None]:
    """Spearman and Kendall tau-b over all edits (``None`` when either side is constant or n < 2)."""
    pred, target = np.asarray(pred, np.float64), np.asarray(target, np.float64)
    if len(pred) < 2 or np.ptp(pred) == 0 or np.ptp(target) == 0:
        return {"spearman": None, "kendall": None}
    return {
        "spearman": float(stats.spearmanr(pred, target).statistic),
        "kendall": float(stats.kendalltau(pred, target).statistic),
    }


def subscore_mae(pred: np.ndarray, target: np.ndarray) -> dict[str, float]:
    """Mean absolute error per sub-score, in 0–25 points."""
    err = np.abs(np.asarray(pred, np.float64) - np.asarray(target, np.float64)).reshape(-1, 4)
    return {name: float(err[:, k].mean()) if len(err) else None for k, name in enumerate(SUBSCORE_NAMES)}


def mask_ious(pred_masks: np.ndarray, target_masks: np.ndarray) -> np.ndarray:
    """Per-edit IoU of boolean ``[E, H, W]`` masks; both empty → 1.0."""
    p = np.asarray(pred_masks, bool).reshape(len(pred_masks), -1)
    t = np.asarray(target_masks, bool).reshape(len(target_masks), -1)
    inter = (p & t).sum(1)
    union = (p | t).sum(1)
    return np.where(union > 0, inter / np.maximum(union, 1), 1.0)


def reward_metrics(
    pred_reward: Sequence[float],
    target_reward: Sequence[float],
    group_ids: Sequence,
    *,
    pred_subscores: np.ndarray | None = None,
    target_subscores: np.ndarray | None = None,
    pred_masks: np.ndarray | None = None,
    target_masks: np.ndarray | None = None,
    pred_presence: Sequence[float] | None = None,
    target_presence: Sequence[float] | None = None,
) -> dict[str, Any]:
    """Every metric of `spatialreward eval` in one dict (see the module docstring for definitions)."""
    acc, pairs = pairwise_accuracy(pred_reward, target_reward, group_ids)
    gac, used, skipped = group_advantage_correlation(pred_reward, target_reward, group_ids)
    out: dict[str, Any] = {
        "edits": len(pred_reward),
        "groups": len(group_indices(group_ids)),
        "pairwise_accuracy": acc,
        "pairs": pairs,
        "group_advantage_corr": gac,
        "groups_for_advantage": used,
        "groups_skipped_for_advantage": skipped,
        **rank_correlations(pred_reward, target_reward),
    }
    if pred_subscores is not None and target_subscores is not None:
        out["subscore_mae"] = subscore_mae(pred_subscores, target_subscores)
        out["reward_mae"] = float(np.abs(np.asarray(pred_reward) - np.asarray(target_reward)).mean())
    if pred_masks is not None and target_masks is not None:
        ious = mask_ious(pred_masks, target_masks)
        has_edit = np.asarray(target_masks, bool).reshape(len(target_masks), -1).any(1)
        out["mask_iou"] = float(ious.mean()) if len(ious) else None
        out["mask_iou_edited_only"] = float(ious[has_edit].mean()) if has_edit.any() else None
        out["mask_edits_with_boxes"] = int(has_edit.sum())
        out["mask_edits_without_boxes"] = int(len(ious) - has_edit.sum())
    if pred_presence is not None and target_presence is not None:
        p = np.asarray(pred_presence, np.float64) > 0.5
        t = np.asarray(target_presence, np.float64) > 0.5
        out["presence_accuracy"] = float((p == t).mean()) if len(p) else None
    return out
