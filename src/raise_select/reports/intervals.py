"""95% intervals for a benchmark's rows, one rule per kind of row.

- A stochastic method run over several seeds (RAND, RAISE, ...): Student's t-interval of the
  mean over seeds, mean +- t_{0.975, n-1} x s / sqrt(n). It covers the seed-to-seed spread,
  the larger source of noise here.
- A deterministic method (one run): a percentile bootstrap over the held-out items of the
  mean per-item gain (base loss - method loss, item by item, so the items' own difficulty
  cancels), `resamples` draws from a seeded generator.

`above(a, b)`: interval `a` lies wholly above interval `b`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import UserError


@dataclass(frozen=True)
class Interval:
    mean: float
    low: float
    high: float
    rule: str  # "t over n seeds" or "bootstrap over n items"

    def above(self, other: "Interval") -> bool:
        return self.low > other.high


def t_interval(values, confidence: float = 0.95) -> Interval:
    """Mean of `values` with Student's t-interval (n - 1 degrees of freedom)."""
    from scipy import stats

    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 1 or len(x) < 2:
        raise UserError(f"a t-interval needs at least 2 values (seeds), got {x.size}")
    half = stats.t.ppf(0.5 + confidence / 2, len(x) - 1) * x.std(ddof=1) / np.sqrt(len(x))
    m = float(x.mean())
    return Interval(m, m - float(half), m + float(half), f"t over {len(x)} seeds")


def bootstrap_interval(values, confidence: float = 0.95, resamples: int = 10_000, seed: int = 0) -> Interval:
    """Mean of `values` with the percentile bootstrap interval over its items."""
    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 1 or len(x) < 2:
        raise UserError(f"a bootstrap interval needs at least 2 items, got {x.size}")
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, len(x), size=(resamples, len(x)))].mean(axis=1)
    lo, hi = np.quantile(means, [0.5 - confidence / 2, 0.5 + confidence / 2])
    return Interval(float(x.mean()), float(lo), float(hi), f"bootstrap over {len(x)} items")


def gain_interval(base_losses, run_losses: list, confidence: float = 0.95, seed: int = 0) -> Interval:
    """The interval of a row's gain over the base model from its runs' per-item losses:
    t over seeds when there are several runs, else the paired bootstrap over items."""
    base = np.asarray(base_losses, dtype=np.float64)
    gains = [base - np.asarray(r, dtype=np.float64) for r in run_losses]
    if any(g.shape != base.shape for g in gains):
        raise UserError("every run must be scored on the same held-out items as the base model")
    if len(gains) >= 2:
        return t_interval([g.mean() for g in gains], confidence)
    return bootstrap_interval(gains[0], confidence, seed=seed)
