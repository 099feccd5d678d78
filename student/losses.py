"""Distillation losses: sub-score regression, within-group ranking (reward and each sub-score), edit mask, presence.

GRPO turns rewards into advantages normalised *within* a group (same source + instruction), so what the student
must get right first is the order and spread of rewards inside each group; the ranking losses here only ever
compare members of one group (``group_index`` marks them). Sub-score regression keeps the absolute scale right,
and the mask/presence losses teach *where* the edit is, which the region-masked attention builds on.

All losses are means over what they compare and return a zero that still carries the graph when there is
nothing to compare (a batch of one-member groups has no pairs), so one odd batch never produces NaN.

References: heteroscedastic NLL (Kendall & Gal 2017) with the β-NLL fix (Seitzer et al. 2022); RankNet pairwise
logistic loss (Burges et al. 2005); ListNet top-one listwise loss (Cao et al. 2007); Dice (Milletari et al. 2016).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from spatialreward.types import SCORE_MAX


def _zero(like: torch.Tensor) -> torch.Tensor:
    return like.sum() * 0.0  # a zero that keeps autograd (and DDP's gradient hooks) happy


def same_group(group_index: torch.Tensor) -> torch.Tensor:
    """``[B]`` group ids → ``[B, B]`` bool, True where two *different* samples share a group."""
    same = group_index.unsqueeze(0) == group_index.unsqueeze(1)
    return same & ~torch.eye(len(group_index), dtype=torch.bool, device=group_index.device)


# -- sub-scores -----------------------------------------------------------------------------------------------


def subscore_loss(
    pred: torch.Tensor,
    logvar: torch.Tensor,
    target: torch.Tensor,
    kind: Literal["nll", "huber"] = "nll",
    *,
    beta: float = 0.5,
    huber_delta: float = 0.1,
) -> torch.Tensor:
    """Regression of ``[B, 4]`` sub-scores (0–25) on the 0–1 scale (``/25``).

    ``nll``: Gaussian NLL ``½(e^{−logvar}·r² + logvar)`` weighted by ``stop_grad(var^β)`` (β-NLL), so hard samples
    are not simply explained away by a large variance. ``huber``: Huber on the means, and the log-variance is fit
    by NLL to the detached residuals, so the uncertainty output stays meaningful either way.
    """
    residual = (pred - target) / SCORE_MAX  # [B, 4]
    if kind == "nll":
        nll = 0.5 * (torch.exp(-logvar) * residual.pow(2) + logvar)
        if beta > 0:
            nll = nll * torch.exp(logvar.detach() * beta)
        return nll.mean()
    if kind == "huber":
        fit = F.huber_loss(residual, torch.zeros_like(residual), delta=huber_delta) / huber_delta
        calib = 0.5 * (torch.exp(-logvar) * residual.detach().pow(2) + logvar)
        return fit + 0.1 * calib.mean()
    raise ValueError(f"subscore loss kind {kind!r} is unknown; use 'nll' or 'huber'")


# -- ranking within groups -------------------------------------------------------------------------------------


def pairwise_ranking_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    group_index: torch.Tensor,
    *,
    temperature: float = 0.05,
    min_gap: float = 1e-4,
    gap_weighted: bool = True,
) -> torch.Tensor:
    """RankNet within groups: for each pair ``i, j`` of one group with ``target_i > target_j + min_gap``,
    ``softplus(−(pred_i − pred_j) / temperature)``.

    ``temperature`` is in reward units (0–1): 0.05 means a gap of 0.05 already counts as a confident order.
    ``gap_weighted`` weighs a pair by its teacher gap (normalised to mean 1), so near-ties matter less.
    """
    pairs = same_group(group_index) & (target.unsqueeze(1) > target.unsqueeze(0) + min_gap)  # [B, B]: i beats j
    if not bool(pairs.any()):
        return _zero(pred)
    margin = (pred.unsqueeze(1) - pred.unsqueeze(0)) / temperature  # [B, B]
    losses = F.softplus(-margin)[pairs]
    if gap_weighted:
        gaps = (target.unsqueeze(1) - target.unsqueeze(0))[pairs]
        weights = gaps / gaps.mean().clamp_min(1e-8)
        return (losses * weights).mean()
    return losses.mean()


def listwise_ranking_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    group_index: torch.Tensor,
    *,
    temperature: float = 0.05,
    target_temperature: float = 0.05,
) -> torch.Tensor:
    """ListNet within groups: cross-entropy between ``softmax(target/τ_t)`` and ``softmax(pred/τ)`` per group,
    averaged over groups. A one-member group contributes exactly zero."""
    member = group_index.unsqueeze(0) == group_index.unsqueeze(1)  # [B, B] incl. self
    neg_inf = torch.finfo(pred.dtype).min
    s = pred / temperature
    t = target / target_temperature
    log_p = s - torch.logsumexp(torch.where(member, s.unsqueeze(0).expand_as(member), neg_inf), dim=1)  # [B]
    log_q = t - torch.logsumexp(torch.where(member, t.unsqueeze(0).expand_as(member), neg_inf), dim=1)
    per_sample = -log_q.exp() * log_p  # summed within a group this is the group's cross-entropy
    num_groups = len(torch.unique(group_index))
    return per_sample.sum() / num_groups


def subscore_ranking_loss(
    pred: torch.Tensor, target: torch.Tensor, group_index: torch.Tensor, *, temperature_points: float = 1.0
) -> torch.Tensor:
    """RankNet within groups on each of the ``[B, 4]`` sub-scores, averaged over the four.

    Why: candidates of one group share almost every pixel, so what separates "correct" from "correct with
    artifacts" is a *difference* of one sub-score (−11 artifact points) that moves the reward by only ~0.05. The
    reward ranking sees that gap through the formula's ^0.2 quality term and the regression sees it among absolute
    errors of several points; this term asks for the order of each sub-score directly (``temperature_points``: a
    gap of that many points already counts as a confident order)."""
    return torch.stack([
        pairwise_ranking_loss(pred[:, k] / SCORE_MAX, target[:, k] / SCORE_MAX, group_index,
                              temperature=temperature_points / SCORE_MAX, min_gap=0.5 / SCORE_MAX, gap_weighted=False)
        for k in range(pred.shape[1])
    ]).mean()


def advantage_loss(pred: torch.Tensor, target: torch.Tensor, group_index: torch.Tensor) -> torch.Tensor:
    """``1 − Pearson`` of within-group rewards (= correlation of z-scored advantages), mean over groups with
    at least two members and a teacher spread. Directly targets the group-advantage correlation metric."""
    member = (group_index.unsqueeze(0) == group_index.unsqueeze(1)).to(pred.dtype)  # [B, B]
    count = member.sum(1)  # group size seen from each sample
    mean_p = member @ pred / count
    mean_t = member @ target / count
    dp, dt = pred - mean_p, target - mean_t
    cov = member @ (dp * dt)
    var_p = member @ (dp * dp)
    var_t = member @ (dt * dt)
    valid = (count > 1) & (var_t > 1e-10)
    if not bool(valid.any()):
        return _zero(pred)
    corr = cov / torch.sqrt(var_p * var_t + 1e-12)  # each sample holds its group's correlation
    weight = valid.to(pred.dtype) / count  # each group counts once
    return (weight * (1.0 - corr)).sum() / weight.sum()


# -- where it changed ------------------------------------------------------------------------------------------


def mask_loss(
    logits: torch.Tensor, target: torch.Tensor, *, bce_weight: float = 1.0, dice_weight: float = 1.0
) -> torch.Tensor:
    """BCE + soft Dice between mask logits ``[B, h, w]`` and a 0/1 (or soft) target ``[B, H, W]``.

    Logits are upsampled bilinearly to the target size first (the prediction lives on the token grid). Dice uses
    +1 smoothing per sample, so an empty target with an empty prediction costs ~0 and an empty target still pulls
    the prediction down.
    """
    if logits.shape[-2:] != target.shape[-2:]:
        logits = F.interpolate(logits.unsqueeze(1), size=target.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    target = target.to(logits.dtype)
    bce = F.binary_cross_entropy_with_logits(logits, target)
    prob = torch.sigmoid(logits).flatten(1)
    t = target.flatten(1)
    dice = 1.0 - (2.0 * (prob * t).sum(1) + 1.0) / (prob.sum(1) + t.sum(1) + 1.0)
    return bce_weight * bce + dice_weight * dice.mean()


def presence_loss(logit: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """BCE of the presence logit ``[B]`` against "the teacher drew at least one box" ``[B]``."""
    return F.binary_cross_entropy_with_logits(logit, target.to(logit.dtype))


# -- the combination the distiller uses ------------------------------------------------------------------------


@dataclass
class LossWeights:
    """Weights of the distillation terms (the distiller copies them from `DistillConfig`)."""

    subscore: float = 1.0
    ranking: float = 1.0
    subscore_ranking: float = 0.0
    advantage: float = 0.0
    reward: float = 0.0
    mask: float = 1.0
    presence: float = 0.2


def distill_loss(
    out,
    batch: dict[str, torch.Tensor],
    weights: LossWeights,
    *,
    subscore_kind: Literal["nll", "huber"] = "nll",
    ranking_kind: Literal["pairwise", "listwise"] = "pairwise",
    ranking_temperature: float = 0.05,
    ranking_gap_weighted: bool = False,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Total loss and its parts for a `StudentOutput` ``out`` and a batch from `spatialreward.student.data`."""
    parts: dict[str, torch.Tensor] = {}
    parts["subscore"] = subscore_loss(out.subscores, out.subscore_logvar, batch["subscores"], subscore_kind)
    if ranking_kind == "pairwise":
        parts["ranking"] = pairwise_ranking_loss(
            out.reward, batch["reward"], batch["group_index"], temperature=ranking_temperature,
            gap_weighted=ranking_gap_weighted,
        )
    elif ranking_kind == "listwise":
        parts["ranking"] = listwise_ranking_loss(
            out.reward, batch["reward"], batch["group_index"], temperature=ranking_temperature,
            target_temperature=ranking_temperature,
        )
    else:
        raise ValueError(f"ranking loss kind {ranking_kind!r} is unknown; use 'pairwise' or 'listwise'")
    if weights.subscore_ranking:
        parts["subscore_ranking"] = subscore_ranking_loss(out.subscores, batch["subscores"], batch["group_index"])
    if weights.advantage:
        parts["advantage"] = advantage_loss(out.reward, batch["reward"], batch["group_index"])
    if weights.reward:
        parts["reward"] = F.mse_loss(out.reward, batch["reward"]) * 100.0  # ~same scale as the others
    parts["mask"] = mask_loss(out.edit_mask_logits, batch["mask"])
    parts["presence"] = presence_loss(out.presence_logit, batch["presence"])
    total = sum(getattr(weights, name) * value for name, value in parts.items())
    return total, parts
