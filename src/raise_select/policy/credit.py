"""What the policy learns from per-row credit labels (`policy.credit: row`).

A policy step with dense credit carries labels: the rows it trained on, then `credit_sample`
rows it did not choose, each with its first-order credit c_i = lr <g_val, g_i> (the change of
P = -validation loss if the step had trained on row i alone; `training/credit.py`). The
labels of one step are measured on one model M_{t-1}, so only their order within the step is
compared with F_theta's scores at that step's state; their level (which shrinks as training
goes on and with the learning-rate schedule) is not:

- `regression_loss`: mean over the step's labelled rows of ((s_i - mean s) - z_i)^2, with
  z_i = (c_i - mean c) / std c (population std) the step's standardised credit;
- `ranking_loss`: the pairwise logistic (RankNet) loss, mean over the ordered pairs with
  c_i > c_j of log(1 + exp(-(s_i - s_j)));
- `row_advantages`: the chosen rows' credits standardised over a whole round, as per-row
  advantages of the per-item PPO ratio (the first-order reward of a batch is the token-
  weighted sum of its rows' credits);
- `spearman`: the rank correlation of scores and labels (the learning curve's measure);
- `top_share`: the share of the best attainable credit that the top tenth by score captures.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

EPS = 1e-12


def standardise(x: torch.Tensor) -> torch.Tensor:
    """(x - mean) / std over all entries (population std); zeros where x is constant."""
    centred = x - x.mean()
    std = centred.pow(2).mean().sqrt()
    return centred / std if float(std) > EPS else torch.zeros_like(x)


def regression_loss(scores: torch.Tensor, credit: torch.Tensor) -> torch.Tensor:
    """Mean squared error of the centred scores against the standardised credit of one step's labelled rows."""
    target = standardise(credit.to(scores.dtype))
    return (scores - scores.mean() - target).pow(2).mean()


def ranking_loss(scores: torch.Tensor, credit: torch.Tensor) -> torch.Tensor:
    """Pairwise logistic loss over the pairs (i, j) of one step's labelled rows with credit_i > credit_j
    (0 when no two credits differ)."""
    better = credit.reshape(-1, 1) > credit.reshape(1, -1)  # (n, n): row i above row j
    if not bool(better.any()):
        return scores.sum() * 0.0
    margin = scores.reshape(-1, 1) - scores.reshape(1, -1)
    return F.softplus(-margin[better]).mean()


ROW_LOSS_FUNCTIONS = {"regression": regression_loss, "ranking": ranking_loss}


def row_loss(kind: str, scores: torch.Tensor, credit: torch.Tensor) -> torch.Tensor:
    """The auxiliary loss `kind` (`policy.row_loss`) of one step: its labelled rows' scores against their credit."""
    return ROW_LOSS_FUNCTIONS[kind](scores, credit)


def row_advantages(chosen_credit: list[torch.Tensor]) -> list[torch.Tensor]:
    """Per step, (B,) float64 advantages of its chosen rows: their credits standardised over the whole round."""
    sizes = [len(c) for c in chosen_credit]
    flat = standardise(torch.cat([c.double() for c in chosen_credit]))
    return list(flat.split(sizes))


def spearman(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """Spearman's rank correlation of two 1-D tensors (average ranks for ties); nan when either is constant."""
    from scipy.stats import spearmanr

    a, b = scores.detach().double().cpu().numpy(), labels.detach().double().cpu().numpy()
    if len(a) < 2 or a.min() == a.max() or b.min() == b.max():
        return math.nan
    return float(spearmanr(a, b).statistic)


def top_share(scores, credit, frac: float = 0.1) -> float:
    """Sum of the centred credit of the top `frac` rows by score (ties: first rows first) over that of
    the top `frac` rows by credit: 1 for a perfect order, about 0 for a random one in expectation
    (centred credit sums to 0), negative when the order is reversed; nan when no row is above the mean."""
    import numpy as np

    scores, credit = np.asarray(scores, dtype=np.float64), np.asarray(credit, dtype=np.float64)
    k = max(1, int(round(frac * len(scores))))
    c = credit - credit.mean()
    best = np.sort(c)[::-1][:k].sum()
    return float(c[np.argsort(-scores, kind="stable")[:k]].sum() / best) if best > 0 else math.nan
