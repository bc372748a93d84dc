"""PPO math of section 3.5: GAE (eq. 7-9), the per-class ratio (eq. 10-11), eq. 12 and eq. 13."""

from __future__ import annotations

import math

import pytest
import torch

from raise_select.policy import actor_loss, class_entropy, class_kl, class_log_prob, critic_loss, gae


def test_gae_hand_computed():
    rewards = torch.tensor([1.0, 0.0, 2.0])
    values = torch.tensor([0.5, 1.0, 0.0])
    adv, ret = gae(rewards, values, last_value=0.0, gamma=0.5, lam=0.5)
    # delta = [1 + 0.5*1 - 0.5, 0 + 0.5*0 - 1, 2 + 0 - 0] = [1, -1, 2]; gamma*lam = 0.25
    # Adv_2 = 2, Adv_1 = -1 + 0.25*2 = -0.5, Adv_0 = 1 + 0.25*(-0.5) = 0.875
    torch.testing.assert_close(adv, torch.tensor([0.875, -0.5, 2.0]))
    torch.testing.assert_close(ret, torch.tensor([1.375, 0.5, 2.0]))


def _gae_loop(rewards, values, last_value, gamma, lam):
    """Eq. 8 literally: Adv_t = sum_{k=0}^{T-t-1} (gamma lam)^k delta_{t+k}."""
    r, v = rewards.tolist(), values.tolist()
    steps = len(r)
    nxt = v[1:] + [last_value]
    delta = [r[t] + gamma * nxt[t] - v[t] for t in range(steps)]
    adv = [sum((gamma * lam) ** k * delta[t + k] for k in range(steps - t)) for t in range(steps)]
    return torch.tensor(adv, dtype=torch.float64), torch.tensor(
        [v[t] + adv[t] for t in range(steps)], dtype=torch.float64
    )


@pytest.mark.parametrize("gamma,lam", [(0.99, 1.0), (0.9, 0.95), (0.0, 1.0), (1.0, 0.5)])
def test_gae_matches_plain_sum(gamma, lam):
    g = torch.Generator().manual_seed(int(gamma * 100 + lam * 10))
    for steps in (1, 2, 37):
        rewards = torch.randn(steps, generator=g, dtype=torch.float64)
        values = torch.randn(steps, generator=g, dtype=torch.float64)
        adv, ret = gae(rewards, values, 0.3, gamma, lam)
        ref_adv, ref_ret = _gae_loop(rewards, values, 0.3, gamma, lam)
        torch.testing.assert_close(adv, ref_adv)
        torch.testing.assert_close(ret, ref_ret)


def test_actor_loss_closed_form_both_branches():
    ratio = torch.tensor([1.5, 0.5, 1.1, 0.7, 1.5, 0.5], dtype=torch.float64)
    adv = torch.tensor([2.0, -1.0, -3.0, 1.0, -1.0, 1.0], dtype=torch.float64)
    log_ratio = ratio.log().requires_grad_()
    loss = actor_loss(log_ratio, adv, clip=0.2)
    # min(r A, clip(r) A): [min(3, 2.4), min(-0.5, -0.8), -3.3, min(0.7, 0.8), min(-1.5, -1.2), min(0.5, 0.8)]
    per_step = [2.4, -0.8, -3.3, 0.7, -1.5, 0.5]
    assert loss.item() == pytest.approx(-sum(per_step) / 6)
    loss.backward()
    # d/d log r of -(1/6) r A where the unclipped term is the minimum, 0 where the clipped one is.
    expected = torch.tensor([0.0, 0.0, 1.1 * 3, -0.7, 1.5, -0.5], dtype=torch.float64) / 6
    torch.testing.assert_close(log_ratio.grad, expected)


def test_critic_loss_is_mean_squared_error():
    v, g = torch.tensor([1.0, -2.0, 0.5]), torch.tensor([0.0, 1.0, 0.5])
    assert critic_loss(v, g).item() == pytest.approx((1 + 9 + 0) / 3)


def _eq11_loop(scores, classes, num_classes, chosen):
    """log of eq. 11's product over classes and chosen items of the class softmax (eq. 10)."""
    s, c = scores.tolist(), classes.tolist()
    total = 1.0
    for i in range(num_classes):
        denom = sum(math.exp(s[k]) for k in range(len(s)) if c[k] == i)
        for j in chosen.tolist():
            if c[j] == i:
                total *= math.exp(s[j]) / denom
    return math.log(total)


def test_class_log_prob_equals_product_of_eq11():
    g = torch.Generator().manual_seed(0)
    for trial in range(5):
        n, num_classes = 40, 5
        scores = torch.randn(n, generator=g, dtype=torch.float64) * 3
        classes = torch.randint(0, num_classes, (n,), generator=g)
        classes[:num_classes] = torch.arange(num_classes)
        chosen = torch.randperm(n, generator=g)[:8]
        assert class_log_prob(scores, classes, num_classes, chosen).item() == pytest.approx(
            _eq11_loop(scores, classes, num_classes, chosen), abs=1e-10
        )
    # Large scores stay finite (log-space), and an empty class does not matter.
    scores = torch.tensor([1000.0, 999.0, -1000.0])
    classes = torch.tensor([0, 0, 2])
    lp = class_log_prob(scores, classes, 3, torch.tensor([1, 2]))
    assert lp.item() == pytest.approx(-1.0 - math.log1p(math.exp(-1.0)) + 0.0, abs=1e-5)


def test_class_log_prob_gradient_is_that_of_the_softmax():
    scores = torch.tensor([0.3, -1.2, 2.0, 0.5], dtype=torch.float64, requires_grad=True)
    classes = torch.tensor([0, 0, 1, 1])
    class_log_prob(scores, classes, 2, torch.tensor([0, 3])).backward()
    p0 = torch.softmax(scores.detach()[:2], 0)
    p1 = torch.softmax(scores.detach()[2:], 0)
    expected = torch.cat(
        [torch.tensor([1.0, 0.0], dtype=torch.float64) - p0, torch.tensor([0.0, 1.0], dtype=torch.float64) - p1]
    )
    torch.testing.assert_close(scores.grad, expected)


def test_class_entropy_is_the_mean_class_entropy():
    scores = torch.tensor([0.0, 0.0, 0.0, 0.0, 1.0, 5.0])
    classes = torch.tensor([0, 0, 0, 0, 2, 2])
    p = torch.softmax(torch.tensor([1.0, 5.0]), 0)
    expected = (math.log(4) + float(-(p * p.log()).sum())) / 2  # class 1 is empty
    assert class_entropy(scores, classes, 3).item() == pytest.approx(expected, abs=1e-6)


def test_class_kl_is_the_mean_over_classes_of_each_class_softmax_kl():
    """A slow reference: per non-empty class, softmax of its rows' scores under both, sum p (log p - log q)."""
    gen = torch.Generator().manual_seed(0)
    scores, anchor = torch.randn(9, generator=gen), torch.randn(9, generator=gen)
    classes = torch.tensor([0, 2, 0, 2, 2, 0, 3, 3, 0])  # class 1 is empty
    expected = []
    for c in (0, 2, 3):
        rows = classes == c
        p, q = torch.softmax(scores[rows], 0), torch.softmax(anchor[rows], 0)
        expected.append(float((p * (p.log() - q.log())).sum()))
    assert class_kl(scores, anchor, classes, 4).item() == pytest.approx(sum(expected) / 3, abs=1e-6)
    # zero at the anchor and under a shift of one class's scores; positive elsewhere
    shifted = anchor + 3.0 * (classes == 2)
    assert class_kl(shifted, anchor, classes, 4).item() == pytest.approx(0.0, abs=1e-6)
    # the gradient at the anchor is zero (a minimum)
    at = anchor.clone().requires_grad_()
    class_kl(at, anchor, classes, 4).backward()
    assert float(at.grad.abs().max()) < 1e-6


def test_class_kl_forward_penalises_collapse_onto_the_anchors_mode_more_than_reverse():
    """q puts half its mass on one row of ten; p all of it (to float precision). Reverse KL(p || q) is about
    log 2; forward KL(q || p) grows with how little p leaves on the other rows."""
    classes = torch.zeros(10, dtype=torch.int64)
    anchor = torch.tensor([math.log(9.0)] + [0.0] * 9)  # softmax: 0.5, then 9 x 1/18
    collapsed = torch.tensor([20.0] + [0.0] * 9)
    assert class_kl(collapsed, anchor, classes, 1).item() == pytest.approx(math.log(2.0), abs=1e-4)
    forward = class_kl(anchor, collapsed, classes, 1).item()
    expected = 0.5 * math.log(0.5) + 0.5 * math.log(1 / 18) - 0.5 * 20.0 + math.log(math.exp(20) + 9)
    assert forward == pytest.approx(expected, rel=1e-4) and forward > 5.0
