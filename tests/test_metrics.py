"""Evaluation metrics on hand-computed examples, including ties and one-member groups."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from spatialreward.student.metrics import (
    group_advantage_correlation,
    mask_ious,
    pairwise_accuracy,
    rank_correlations,
    reward_metrics,
    subscore_mae,
)


def test_pairwise_accuracy_hand_computed_with_ties_and_singletons():
    # Group a: teacher 3 > 2 > 1; student orders (0,1) right, (0,2) right, (1,2) *tied* → wrong. 2/3.
    # Group b: teacher tie between its two members → no pair. Group c: one member → no pair.
    pred = [0.9, 0.5, 0.5, 0.1, 0.7, 0.3]
    target = [3.0, 2.0, 1.0, 0.4, 0.4, 0.8]
    groups = ["a", "a", "a", "b", "b", "c"]
    acc, pairs = pairwise_accuracy(pred, target, groups)
    assert pairs == 3 and acc == pytest.approx(2 / 3)
    # Reversing the student makes every counted pair wrong (ties stay wrong).
    acc_rev, _ = pairwise_accuracy([-p for p in pred], target, groups)
    assert acc_rev == 0.0
    assert pairwise_accuracy([1.0], [1.0], ["x"]) == (None, 0)  # nothing to measure, not a made-up number


def test_group_advantage_correlation_hand_computed():
    # Group a: teacher (1, 2, 3), student (1, 3, 2): z_t = (-1.2247, 0, 1.2247), z_s = (-1.2247, 1.2247, 0)
    # → Pearson = mean(z_t·z_s) = (1.5 + 0 + 0) / 3 = 0.5.
    # Group b: student exactly affine → 1. Group c: one member → skipped. Group d: teacher tie → skipped.
    # Group e: student constant, teacher not → 0.
    pred = [1, 3, 2, 10, 20, 5, 0.1, 0.2, 0.4, 0.4]
    target = [1, 2, 3, 0.1, 0.2, 0.9, 0.5, 0.5, 0.2, 0.8]
    groups = ["a", "a", "a", "b", "b", "c", "d", "d", "e", "e"]
    value, used, skipped = group_advantage_correlation(pred, target, groups)
    assert (used, skipped) == (3, 2)
    assert value == pytest.approx((0.5 + 1.0 + 0.0) / 3)


def test_rank_correlations_match_scipy_and_handle_constants():
    rng = np.random.default_rng(0)
    p, t = rng.normal(size=20), rng.normal(size=20)
    rc = rank_correlations(p, t)
    assert rc["spearman"] == pytest.approx(stats.spearmanr(p, t).statistic)
    assert rc["kendall"] == pytest.approx(stats.kendalltau(p, t).statistic)
    assert rank_correlations([1.0, 1.0, 1.0], [1.0, 2.0, 3.0]) == {"spearman": None, "kendall": None}
    # Hand case: identical order → 1; Kendall tau-b with one tied pair in pred: (2 − 0)/sqrt(2·3).
    assert rank_correlations([1, 2, 3], [4, 5, 6])["spearman"] == pytest.approx(1.0)
    assert rank_correlations([1, 1, 2], [1, 2, 3])["kendall"] == pytest.approx(2 / np.sqrt(6))


def test_subscore_mae_and_mask_iou():
    mae = subscore_mae(np.array([[10, 10, 10, 10], [20, 20, 20, 20]]), np.array([[12, 10, 7, 10], [20, 25, 20, 19]]))
    assert mae == {"instruction_following": 1.0, "consistency": 2.5, "naturalness": 1.5, "artifacts": 0.5}
    a = np.zeros((3, 4, 4), bool)
    b = np.zeros((3, 4, 4), bool)
    a[0, :2, :2] = True
    b[0, :2, :] = True  # 4 of 8 → 0.5
    b[1, 0, 0] = True  # pred empty, target not → 0
    # third: both empty → 1
    assert mask_ious(a, b).tolist() == [0.5, 0.0, 1.0]


def test_reward_metrics_bundle():
    m = reward_metrics(
        [0.9, 0.1, 0.5], [0.8, 0.2, 0.6], ["g", "g", "h"],
        pred_subscores=np.zeros((3, 4)), target_subscores=np.ones((3, 4)),
        pred_masks=np.ones((3, 2, 2), bool), target_masks=np.ones((3, 2, 2), bool),
        pred_presence=[0.9, 0.2, 0.7], target_presence=[1, 1, 1],
    )
    assert m["pairwise_accuracy"] == 1.0 and m["pairs"] == 1
    assert m["group_advantage_corr"] == pytest.approx(1.0) and m["groups_skipped_for_advantage"] == 1
    assert m["mask_iou"] == 1.0 and m["presence_accuracy"] == pytest.approx(2 / 3)
    assert m["subscore_mae"]["artifacts"] == 1.0 and m["edits"] == 3 and m["groups"] == 2


def test_mask_iou_is_reported_over_all_edits_and_over_edited_ones_only():
    """No-op edits (no teacher box) count 1.0 when the student predicts nothing; the edited-only IoU must sit next
    to the headline one everywhere: the metrics dict, the markdown table, the training log line."""
    from spatialreward.student.evaluate import metrics_markdown
    from spatialreward.student.monitor import eval_note

    pred = np.zeros((4, 4, 4), bool)
    target = np.zeros((4, 4, 4), bool)
    pred[0, :2, :2] = target[0, :2, :] = True  # 0.5
    target[1, 0, 0] = True  # missed: 0
    # 2 and 3: no-ops predicted empty → 1 each
    m = reward_metrics([0.1, 0.2, 0.3, 0.4], [0.4, 0.3, 0.2, 0.1], ["g"] * 4, pred_masks=pred, target_masks=target)
    assert m["mask_iou"] == pytest.approx((0.5 + 0 + 1 + 1) / 4)
    assert m["mask_iou_edited_only"] == pytest.approx(0.25)
    assert (m["mask_edits_with_boxes"], m["mask_edits_without_boxes"]) == (2, 2)
    table = metrics_markdown(m, "t")
    assert "| mask IoU (all edits) | 0.6250 | 4 edits; 2 without boxes" in table
    assert "| mask IoU (edited only) | 0.2500 | 2 edits the teacher boxed |" in table
    assert "IoU 0.625 (edited only 0.250)" in eval_note(m)
    # Nothing boxed: no edited-only number to make up.
    m = reward_metrics([0.1, 0.2], [0.2, 0.1], ["g"] * 2, pred_masks=pred[2:], target_masks=target[2:])
    assert m["mask_iou"] == 1.0 and m["mask_iou_edited_only"] is None and m["mask_edits_with_boxes"] == 0
