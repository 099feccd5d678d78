"""Distillation losses on hand-made cases whose values are worked out in the comments."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from spatialreward.student.losses import (
    advantage_loss,
    listwise_ranking_loss,
    mask_loss,
    pairwise_ranking_loss,
    presence_loss,
    same_group,
    subscore_loss,
    subscore_ranking_loss,
)


def test_same_group_excludes_self_and_other_groups():
    m = same_group(torch.tensor([0, 0, 1]))
    assert m.tolist() == [[False, True, False], [True, False, False], [False, False, False]]


def test_pairwise_ranking_hand_computed():
    # Group 0: teacher 0.9 > 0.5 > 0.1; student 0.6, 0.7, 0.2. Group 1: one member (no pairs).
    pred = torch.tensor([0.6, 0.7, 0.2, 0.9])
    target = torch.tensor([0.9, 0.5, 0.1, 0.3])
    groups = torch.tensor([0, 0, 0, 1])
    # Pairs (winner, loser): (0,1) margin -0.1, (0,2) +0.4, (1,2) +0.5; temperature 0.1 → margins -1, 4, 5.
    expected = (F.softplus(torch.tensor(1.0)) + F.softplus(torch.tensor(-4.0)) + F.softplus(torch.tensor(-5.0))) / 3
    got = pairwise_ranking_loss(pred, target, groups, temperature=0.1, gap_weighted=False)
    assert got.item() == pytest.approx(expected.item(), rel=1e-6)
    # Gap weights: gaps 0.4, 0.8, 0.4 (mean 0.5333) → weights 0.75, 1.5, 0.75.
    sp = [F.softplus(torch.tensor(v)).item() for v in (1.0, -4.0, -5.0)]
    weighted = (0.75 * sp[0] + 1.5 * sp[1] + 0.75 * sp[2]) / 3
    got_w = pairwise_ranking_loss(pred, target, groups, temperature=0.1, gap_weighted=True)
    assert got_w.item() == pytest.approx(weighted, rel=1e-5)


def test_pairwise_ranking_ignores_cross_group_pairs_and_ties():
    pred = torch.tensor([0.0, 1.0], requires_grad=True)
    # Different groups: the "wrong" order across groups costs nothing.
    loss = pairwise_ranking_loss(pred, torch.tensor([1.0, 0.0]), torch.tensor([0, 1]))
    assert loss.item() == 0.0
    loss.backward()  # still differentiable (DDP needs a graph on every rank)
    assert pred.grad is not None and torch.all(pred.grad == 0)
    # Teacher tie inside a group: no pair either.
    assert pairwise_ranking_loss(pred, torch.tensor([0.5, 0.5]), torch.tensor([0, 0])).item() == 0.0


def test_pairwise_ranking_order_matters():
    target = torch.tensor([0.9, 0.1])
    groups = torch.tensor([0, 0])
    right = pairwise_ranking_loss(torch.tensor([0.8, 0.2]), target, groups, temperature=0.05)
    wrong = pairwise_ranking_loss(torch.tensor([0.2, 0.8]), target, groups, temperature=0.05)
    assert right.item() < 1e-4 and wrong.item() > 10.0  # softplus(12) ≈ 12


def test_listwise_hand_computed_and_single_member_group_is_zero():
    # Two members, temperature 1: student softmax over (1, 0), teacher softmax over (0, 1).
    pred = torch.tensor([1.0, 0.0, 5.0])
    target = torch.tensor([0.0, 1.0, 0.3])
    groups = torch.tensor([0, 0, 1])
    p = torch.softmax(torch.tensor([1.0, 0.0]), 0)
    q = torch.softmax(torch.tensor([0.0, 1.0]), 0)
    group0 = -(q * p.log()).sum().item()
    # Group 1 has one member: its softmax is 1, log 0 → contributes 0; the loss averages over 2 groups.
    got = listwise_ranking_loss(pred, target, groups, temperature=1.0, target_temperature=1.0)
    assert got.item() == pytest.approx(group0 / 2, rel=1e-6)


def test_advantage_loss_perfect_opposite_and_skipped_groups():
    groups = torch.tensor([0, 0, 0, 1, 2, 2])
    target = torch.tensor([0.1, 0.5, 0.9, 0.4, 0.3, 0.3])  # group 1 single, group 2 a teacher tie → skipped
    perfect = torch.tensor([0.2, 0.3, 0.4, 0.0, 0.9, 0.1])  # affine in group 0
    assert advantage_loss(perfect, target, groups).item() == pytest.approx(0.0, abs=1e-5)
    opposite = torch.tensor([0.4, 0.3, 0.2, 0.0, 0.9, 0.1])
    assert advantage_loss(opposite, target, groups).item() == pytest.approx(2.0, abs=1e-5)
    assert advantage_loss(perfect, torch.tensor([0.1] * 6), groups).item() == 0.0  # nothing to match


def test_mask_loss_perfect_wrong_and_empty():
    target = torch.zeros(1, 4, 4)
    target[0, :2, :2] = 1.0
    perfect = (target * 2 - 1) * 30.0  # ±30 logits
    assert mask_loss(perfect, target).item() < 1e-6
    wrong = -perfect
    # BCE ≈ 30 per pixel; Dice = 1 − 1/(12 + 4 + 1)
    assert mask_loss(wrong, target).item() == pytest.approx(30.0 + 1 - 1 / 17, rel=1e-3)
    # Zero logits, empty target: BCE = log 2; Dice = 1 − 1/(16·0.5 + 1) = 8/9.
    empty = torch.zeros(1, 4, 4)
    assert mask_loss(torch.zeros(1, 4, 4), empty).item() == pytest.approx(math.log(2) + 8 / 9, rel=1e-5)
    # Token-grid logits are upsampled to the target: a 2×2 prediction against a 4×4 target.
    coarse = torch.tensor([[[30.0, -30.0], [-30.0, -30.0]]])
    assert mask_loss(coarse, target).item() < 0.05


def test_subscore_losses():
    target = torch.tensor([[20.0, 15.0, 22.0, 18.0]])
    pred = target.clone()
    logvar = torch.zeros(1, 4)
    assert subscore_loss(pred, logvar, target, "nll", beta=0).item() == 0.0  # ½(0 + 0)
    off = target + 2.5  # residual 0.1 on the 0–1 scale
    assert subscore_loss(off, logvar, target, "nll", beta=0).item() == pytest.approx(0.5 * 0.01, rel=1e-5)
    # β-NLL with logvar = log 4: weight 4^β = 2 for β=0.5; ½(0.01/4 + log 4)·2.
    lv = torch.full((1, 4), math.log(4.0))
    got = subscore_loss(off, lv, target, "nll", beta=0.5).item()
    assert got == pytest.approx(0.5 * (0.01 / 4 + math.log(4.0)) * 2, rel=1e-5)
    # Huber in the quadratic zone (|r| = 0.1 ≤ δ = 0.2): 0.5·r²/δ; plus 0.1 × the calibration NLL.
    huber = subscore_loss(off, logvar, target, "huber", huber_delta=0.2).item()
    assert huber == pytest.approx(0.5 * 0.01 / 0.2 + 0.1 * 0.5 * 0.01, rel=1e-5)
    with pytest.raises(ValueError, match="unknown"):
        subscore_loss(pred, logvar, target, "l1")


def test_presence_loss():
    assert presence_loss(torch.tensor([0.0]), torch.tensor([1.0])).item() == pytest.approx(math.log(2))
    assert presence_loss(torch.tensor([20.0, -20.0]), torch.tensor([1.0, 0.0])).item() < 1e-8


def test_subscore_ranking_orders_each_subscore_within_groups_only():
    # group 0: the correct edit (artifacts 22) over the artifact candidate (artifacts 11); other sub-scores tie
    target = torch.tensor([[20.0, 20.0, 20.0, 22.0], [20.0, 20.0, 20.0, 11.0], [5.0, 5.0, 5.0, 5.0]])
    group = torch.tensor([0, 0, 1])  # the third is alone: no pairs, whatever its values
    right = target.clone()
    wrong = target.clone()
    wrong[:2, 3] = torch.tensor([11.0, 22.0])
    # one pair (on the artifacts column) of four columns: softplus(∓11 points / 1 point) / 4
    softplus = lambda x: F.softplus(torch.tensor(x)).item()  # noqa: E731
    assert subscore_ranking_loss(right, target, group).item() == pytest.approx(softplus(-11.0) / 4)
    assert subscore_ranking_loss(wrong, target, group).item() == pytest.approx(softplus(11.0) / 4)
    lonely = right.clone()
    lonely[2] = 25.0
    assert subscore_ranking_loss(lonely, target, group).item() == pytest.approx(softplus(-11.0) / 4)
