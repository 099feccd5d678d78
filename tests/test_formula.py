"""The paper's reward formula: the worked example, weights, vectorisation over numpy and torch, bad input."""

import numpy as np
import pytest
import torch

from spatialreward.formula import RewardWeights, reward_from_subscores


def test_worked_example():
    # ARCHITECTURE.md: (20, 15, 22, 18) -> 0.7353. Exactly: 7.2**0.8 * 8**0.2 / 10 = 0.735333 (the map's
    # "0.73534" is off in the fifth decimal; 0.7353 to four decimals is what both agree on).
    r = reward_from_subscores([20, 15, 22, 18])
    assert round(r, 4) == 0.7353
    assert r == pytest.approx(7.2**0.8 * 8**0.2 / 10, rel=1e-12)


def test_extremes_span_zero_to_one():
    assert reward_from_subscores([25, 25, 25, 25]) == pytest.approx(1.0)
    assert reward_from_subscores([0, 0, 25, 25]) == pytest.approx(0.0)


def test_weight_change_moves_reward_as_expected():
    s = [20, 10, 22, 18]
    base = reward_from_subscores(s)
    # Putting all semantic weight on instruction following (20 > 10) must raise the reward.
    more_if = reward_from_subscores(s, RewardWeights(w_if=1.0, w_cons=0.0))
    assert more_if > base
    # alpha = 1 ignores quality: ((0.6*20 + 0.4*10) / 2.5) / 10
    assert reward_from_subscores(s, RewardWeights(alpha=1.0)) == pytest.approx((0.6 * 20 + 0.4 * 10) / 25)
    # alpha = 0 ignores semantics: ((0.5*22 + 0.5*18) / 2.5) / 10
    assert reward_from_subscores(s, RewardWeights(alpha=0.0)) == pytest.approx(20 / 25)


def test_numpy_and_torch_agree_batched():
    rng = np.random.default_rng(0)
    s = rng.uniform(0, 25, size=(3, 5, 4))
    out_np = reward_from_subscores(s)
    out_t = reward_from_subscores(torch.from_numpy(s))
    assert out_np.shape == (3, 5) and tuple(out_t.shape) == (3, 5)
    np.testing.assert_allclose(out_t.numpy(), out_np, rtol=1e-12)
    assert np.all((out_np >= 0) & (out_np <= 1))


def test_torch_path_is_differentiable():
    s = torch.tensor([[20.0, 15.0, 22.0, 18.0]], requires_grad=True)
    reward_from_subscores(s).sum().backward()
    assert torch.all(s.grad[:, :] > 0)


@pytest.mark.parametrize("bad", [[30, 15, 22, 18], [-1, 15, 22, 18], [float("nan"), 1, 1, 1], [1, 2, 3]])
def test_bad_subscores_raise(bad):
    with pytest.raises(ValueError):
        reward_from_subscores(bad)


def test_bad_weights_raise():
    with pytest.raises(ValueError, match="alpha"):
        RewardWeights(alpha=1.5)
    with pytest.raises(ValueError, match="w_if"):
        RewardWeights(w_if=-0.1)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(w_if=1.0, w_cons=1.0), r"w_if=1.0 \+ w_cons=1.0 = 2, not 1"),  # the 1.74 reward
        (dict(w_nat=0.7), r"w_nat=0.7 \+ w_art=0.5 = 1.2, not 1"),
        (dict(w_if=1.2, w_cons=-0.2), "w_if=1.2 must be in"),
        (dict(alpha=float("nan")), "alpha=nan must be a finite number"),
        (dict(w_art=float("inf")), "w_art=inf must be a finite number"),
        (dict(alpha=-0.1), "exponent"),
    ],
)
def test_weights_must_keep_the_reward_in_unit_range(kwargs, message):
    with pytest.raises(ValueError, match=message):
        RewardWeights(**kwargs)


def test_valid_weights_span_exactly_zero_to_one():
    w = RewardWeights(w_if=0.7, w_cons=0.3, w_nat=0.1, w_art=0.9, alpha=0.3)  # decimal pairs sum to 1 in floats
    assert reward_from_subscores([25, 25, 25, 25], w) == pytest.approx(1.0)
    assert reward_from_subscores([0, 0, 0, 0], w) == 0.0


def test_torch_path_clamps_and_flags_non_finite_rows_with_nan():
    s = torch.tensor([
        [20.0, 15.0, 22.0, 18.0],
        [float("nan"), 15.0, 22.0, 18.0],
        [20.0, float("inf"), 22.0, 18.0],
        [40.0, 30.0, 26.0, 99.0],  # out of range: clamped to 25 each, so the reward is at most 1
        [-3.0, 0.0, 22.0, 18.0],
    ])
    r = reward_from_subscores(s)
    assert r[0].item() == pytest.approx(reward_from_subscores([20, 15, 22, 18]), rel=1e-6)
    assert torch.isnan(r[1]) and torch.isnan(r[2])  # flagged, never a clamped-to-plausible number
    assert r[3].item() == pytest.approx(1.0)
    assert r[4].item() == 0.0
    assert torch.isfinite(r[[0, 3, 4]]).all()
    with pytest.raises(ValueError, match="last dimension 4"):
        reward_from_subscores(torch.zeros(2, 3))
