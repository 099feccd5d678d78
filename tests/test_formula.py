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
