"""PPO pieces of section 3.5: GAE (eq. 7-9), the per-class log-probability behind the
importance ratio (eq. 10-11), the clipped actor loss (eq. 12) and the critic loss (eq. 13)."""

from __future__ import annotations

import numpy as np
import torch
from scipy.signal import lfilter


def gae(
    rewards: torch.Tensor, values: torch.Tensor, last_value: float, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Advantages and returns of one round (eq. 7-9).

    delta_t = R_t + gamma V(S_{t+1}) - V(S_t) with V(S_{T+1}) = last_value (0 at the end of
    a round); Adv_t = sum_l (gamma lam)^l delta_{t+l}, a first-order linear recurrence run
    backwards with `scipy.signal.lfilter`; G_t = V(S_t) + Adv_t.
    """
    r = rewards.detach().to(torch.float64).cpu().numpy()
    v = values.detach().to(torch.float64).cpu().numpy()
    next_v = np.append(v[1:], float(last_value))
    delta = r + gamma * next_v - v  # eq. 7
    adv = lfilter([1.0], [1.0, -gamma * lam], delta[::-1])[::-1].copy()  # eq. 8
    adv_t = torch.from_numpy(adv).to(rewards.dtype)
    return adv_t, values.detach().to(rewards.dtype) + adv_t  # eq. 9


def class_log_softmax(scores: torch.Tensor, classes: torch.Tensor, num_classes: int) -> torch.Tensor:
    """log p_i(d_j) of eq. 10 for every row: the log-softmax of the scores within each class.

    A segment log-sum-exp: per-class max by `scatter_reduce`, then the sum of shifted
    exponentials by `index_add`; differentiable in `scores`.
    """
    cmax = torch.zeros(num_classes, dtype=scores.dtype, device=scores.device)
    cmax = cmax.scatter_reduce(0, classes, scores.detach(), reduce="amax", include_self=False)
    shifted = scores - cmax[classes]
    sums = torch.zeros(num_classes, dtype=scores.dtype, device=scores.device).index_add(0, classes, shifted.exp())
    return shifted - sums.clamp_min(torch.finfo(scores.dtype).tiny).log()[classes]


def class_log_prob(scores: torch.Tensor, classes: torch.Tensor, num_classes: int, chosen: torch.Tensor) -> torch.Tensor:
    """log of eq. 11's product: sum over the chosen rows of their class log-probability (eq. 10).

    The ratio of eq. 11 is then exp(class_log_prob(new) - class_log_prob(old)).
    """
    return class_log_softmax(scores, classes, num_classes)[chosen].sum()


def class_entropy(scores: torch.Tensor, classes: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Mean over non-empty classes of the entropy of the class softmax (eq. 10), in nats."""
    logp = class_log_softmax(scores, classes, num_classes)
    per_class = torch.zeros(num_classes, dtype=scores.dtype, device=scores.device).index_add(
        0, classes, -(logp.exp() * logp)
    )
    present = torch.bincount(classes, minlength=num_classes) > 0
    return per_class[present].mean()


def class_kl(scores: torch.Tensor, anchor: torch.Tensor, classes: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Mean over non-empty classes of KL(p || q), p the class softmax (eq. 10) of `scores` and q that of
    `anchor`'s scores, in nats; differentiable in both."""
    logp = class_log_softmax(scores, classes, num_classes)
    logq = class_log_softmax(anchor, classes, num_classes)
    per_class = torch.zeros(num_classes, dtype=scores.dtype, device=scores.device).index_add(
        0, classes, logp.exp() * (logp - logq)
    )
    present = torch.bincount(classes, minlength=num_classes) > 0
    return per_class[present].mean()


def actor_loss(log_ratio: torch.Tensor, adv: torch.Tensor, clip: float) -> torch.Tensor:
    """Eq. 12: -E_t[min(r_t Adv_t, clip(r_t, 1 - eps, 1 + eps) Adv_t)] with r_t = exp(log_ratio)."""
    ratio = log_ratio.exp()
    return -torch.minimum(ratio * adv, ratio.clamp(1.0 - clip, 1.0 + clip) * adv).mean()


def critic_loss(values: torch.Tensor, returns: torch.Tensor) -> torch.Tensor:
    """Eq. 13: E_t[(V(S_t) - G_t)^2]."""
    return (values - returns).pow(2).mean()
