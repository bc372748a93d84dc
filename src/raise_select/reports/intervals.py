"""95% intervals for a benchmark's rows and for differences of rows: one rule, seed and item noise alike.

A row is a method trained with n seeds and scored on the same m held-out items: per-item gains
g[s, i] (base loss - method loss, or a metric's difference to the base). What a reader wants is
the method's expected gain over a new training seed AND a new item from the task, so both are
random, crossed factors (every seed is scored on every item):

    g[s, i] = mu + a_s + b_i + e_si,   a: seed (variance s_a^2), b: item (s_b^2), e: seed x item (s_e^2)

    Var(mean g) = s_a^2 / n + s_b^2 / m + s_e^2 / (n m).

From the two-way table without replication (mean squares: MS_seed = m x variance of the seed
means, MS_item = n x variance of the item means, MS_res the residual after both), the unbiased
estimate is

    V = (MS_seed + MS_item - MS_res) / (n m)
      = var(seed means) / n + var(item means) / m - MS_res / (n m),

a t-interval mean +- t_{0.975, df} sqrt(V) with Satterthwaite's degrees of freedom
df = V^2 / sum_j (v_j^2 / df_j) over its three terms v_j (df n - 1, m - 1, (n - 1)(m - 1)).
Why this rule:

- it counts seed noise in every row (the larger source on the multiple-choice targets: RAND's
  seed spread 0.13-0.16 against an item standard error of 0.015-0.04) and item noise in every
  row (the larger on GSM8K), where the old rules counted one or the other by the row's seed count;
- the simpler sum var(seed means)/n + var(item means)/m counts the seed x item noise twice
  (each mean carries s_e^2/(n m)) and over-covers when that noise dominates; a two-way
  bootstrap (resampling seeds and items) has the same double count;
- with few seeds the seed term has few degrees of freedom and Satterthwaite's df follows it
  down to n - 1 when it dominates (a 3-seed row is wide when its seeds disagree, as it should
  be), and up to m - 1 when items dominate;
- V is floored at its largest positive part (each is, in expectation, at most the true
  variance), so sampling noise in MS_res never gives a narrower interval than the seed or the
  item term alone;
- the half width is never below that of the seed means' own t-interval, t_{0.975, n-1} x
  sd(seed means) / sqrt(n) (Welch's over the rows' seed means for a difference): with 3 seeds
  Satterthwaite's df is too optimistic when the seed term dominates but came out small (the
  known weakness of Welch-Satterthwaite at 2 degrees of freedom; without this bound coverage
  fell to 0.92-0.93 there). The rule then ends in ", seed-mean bound".

Measured coverage of the true mean (seeded simulation, 4,000 draws a case; the table and its
script are in docs/intervals.md, the test in tests/test_intervals.py): 0.940-0.965 for n = 3
and 5 seeds and m = 128 and 500 items when seeds, items or both matter (spreads of the old
real-data table included), and for differences; conservative, up to 0.989, when the seed x item
noise dominates both the seed and the item effects.

Differences (`contrast_interval`, `difference_interval`, `seed_matched_difference`): a method
minus RAND, trained with different seeds, is unpaired across seeds and paired across items:
with rows k weighted w_k (+1, -1), on the same items,

    V = sum_k w_k^2 var(seed means_k) / n_k + var_i(sum_k w_k mean_s g_k[s, i]) / m
        - sum_k w_k^2 MS_res,k / (n_k m),

so each row's seed noise adds while item difficulty common to both rows cancels. Two rows
trained from the same seeds (a RAISE row and its own untrained initialisation) are paired by
seed too: the single-row rule on h[s, i] = g_A[s, i] - g_B[s, i].

**One seed**: no seed noise can be estimated. Such a row (or a difference with such a row) gets
the item-only interval, its `rule` says "1 seed, no seed noise estimate", `seed_noise` is
False and `above` never draws a mark from it (an item-only interval is narrower than the truth
by the unknown seed term).

`above(a, b)`: interval `a` lies wholly above interval `b`, both with seed noise.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import UserError

ONE_SEED = "1 seed, no seed noise estimate"


@dataclass(frozen=True)
class Interval:
    mean: float
    low: float
    high: float
    rule: str  # how it was computed, e.g. "seeds x items, 3 seeds x 128 items"
    seeds: int = 0  # the fewest seeds of any row in it (0: not recorded)
    items: int = 0
    df: float = math.nan  # Satterthwaite's degrees of freedom
    se: float = math.nan  # sqrt(V)
    seed_noise: bool = True  # False: some row has 1 seed; no mark is drawn from it

    def above(self, other: "Interval") -> bool:
        """Wholly above `other`, both intervals counting seed noise."""
        return self.seed_noise and other.seed_noise and self.low > other.high

    def contains(self, value: float) -> bool:
        return self.low <= value <= self.high

    def as_dict(self) -> dict:
        """Its fields (a table row or a JSON record keeps `seed_noise` with the bounds, so a mark
        drawn later from the record follows the same rule)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, record: Mapping) -> "Interval":
        """From `as_dict`'s fields, or a table row's (`gain` for `mean`); a record without
        `seed_noise` (written before it existed) is taken to have none when its rule names one
        seed or a bootstrap over items (the old 1-seed rule)."""
        fields = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in record.items() if k in fields}
        if "mean" not in kwargs and "gain" in record:
            kwargs["mean"] = record["gain"]
        if "seed_noise" not in kwargs:
            rule = str(kwargs.get("rule", ""))
            kwargs["seed_noise"] = not (rule.startswith(ONE_SEED) or rule.startswith("bootstrap"))
        return cls(**kwargs)


def _matrix(gains, what: str) -> np.ndarray:
    """(n seeds, m items) float64 from a 2-D array or a list of per-seed 1-D arrays."""
    try:
        g = np.asarray(gains, dtype=np.float64)
    except ValueError:
        raise UserError(f"{what}: every seed must be scored on the same held-out items") from None
    if g.ndim == 1:
        g = g[None, :]
    if g.ndim != 2 or g.shape[0] < 1 or g.shape[1] < 1:
        raise UserError(f"{what}: need gains of shape (seeds, items), got shape {g.shape}")
    if not np.isfinite(g).all():
        raise UserError(f"{what}: gains must be finite")
    return g


def variance_parts(gains) -> dict:
    """The two-way table of one row (n seeds x m items): `seed_var` (variance of the seed
    means), `item_var` (of the item means) and `ms_res` (the residual mean square,
    sum of (g - seed mean - item mean + grand mean)^2 / ((n - 1)(m - 1))); NaN where undefined."""
    g = _matrix(gains, "variance_parts")
    n, m = g.shape
    seed_means, item_means = g.mean(axis=1), g.mean(axis=0)
    seed_var = float(seed_means.var(ddof=1)) if n > 1 else math.nan
    item_var = float(item_means.var(ddof=1)) if m > 1 else math.nan
    ms_res = math.nan
    if n > 1 and m > 1:
        r = g - seed_means[:, None] - item_means[None, :] + g.mean()
        ms_res = float((r**2).sum() / ((n - 1) * (m - 1)))
    return {"n": n, "m": m, "seed_var": seed_var, "item_var": item_var, "ms_res": ms_res}


def _satterthwaite(terms: Sequence[tuple[float, float]], confidence: float) -> tuple[float, float, float]:
    """(V, df, half width) of a sum of variance terms (value v_j, degrees of freedom df_j):
    V = sum v_j, df = V^2 / sum(v_j^2 / df_j), half = t_{df} sqrt(V)."""
    from scipy import stats

    v = sum(t[0] for t in terms)
    denom = sum(t[0] ** 2 / t[1] for t in terms)
    df = v**2 / denom if denom > 0 else math.inf
    half = float(stats.t.ppf(0.5 + confidence / 2, df)) * math.sqrt(v) if v > 0 else 0.0
    return v, df, half


def contrast_interval(rows: Sequence, weights: Sequence[float], confidence: float = 0.95, what: str = "") -> Interval:
    """The interval of sum_k w_k mean(rows[k]), rows trained with their own seeds (unpaired
    across seeds) and scored on the same items (paired across items); see the module docstring."""
    if not 0 < confidence < 1:
        raise UserError(f"confidence must be in (0, 1), got {confidence}")
    if len(rows) != len(weights) or not rows:
        raise UserError("contrast_interval: one weight per row")
    label = what or "interval"
    mats = [_matrix(r, label) for r in rows]
    m = mats[0].shape[1]
    if any(g.shape[1] != m for g in mats):
        raise UserError(f"{label}: rows must be scored on the same held-out items, got {[g.shape[1] for g in mats]}")
    w = [float(x) for x in weights]
    mean = float(sum(wk * g.mean() for wk, g in zip(w, mats)))
    parts = [variance_parts(g) for g in mats]
    fewest = min(p["n"] for p in parts)
    seed_noise = fewest >= 2
    shapes = " - ".join(f"{p['n']}" for p in parts)
    seed_terms = [(wk**2 * p["seed_var"] / p["n"], p["n"] - 1) for wk, p in zip(w, parts)]
    res_terms = [(-(wk**2) * p["ms_res"] / (p["n"] * m), (p["n"] - 1) * (m - 1)) for wk, p in zip(w, parts)]
    item_term = None
    if m > 1:
        d = sum(wk * g.mean(axis=0) for wk, g in zip(w, mats))
        item_term = (float(np.var(d, ddof=1)) / m, m - 1)
    if not seed_noise:  # items only: the seed term is unknown
        if item_term is None:
            raise UserError(f"{label}: one seed and one item leave no noise to estimate")
        v, df, half = _satterthwaite([item_term], confidence)
        rule = f"{ONE_SEED} (items only, {m} items)"
        return Interval(mean, mean - half, mean + half, rule, fewest, m, df, math.sqrt(v), False)
    if item_term is None:  # one item (a scalar figure per seed): the seed means are all there is
        v, df, half = _satterthwaite(seed_terms, confidence)
        rule = f"seed means, {shapes} seeds"
        return Interval(mean, mean - half, mean + half, rule, fewest, m, df, math.sqrt(v), True)
    v, df, half = _satterthwaite(seed_terms + [item_term] + res_terms, confidence)
    floor = max((seed_terms, [item_term]), key=lambda terms: sum(t[0] for t in terms))
    if v < sum(t[0] for t in floor):  # MS_res's sampling noise: never below the seed or the item part alone
        v, df, half = _satterthwaite(floor, confidence)
    rule = f"seeds x items, {shapes} seeds x {m} items"
    # Never narrower than the seed means' own t-interval (Welch's over the rows' seed means): it
    # holds the few-seed uncertainty that Satterthwaite's df understates when the seed term
    # dominates and happens to come out small.
    _, _, seed_half = _satterthwaite(seed_terms, confidence)
    if seed_half > half:
        half, rule = seed_half, rule + ", seed-mean bound"
    return Interval(mean, mean - half, mean + half, rule, fewest, m, df, math.sqrt(v), True)


def row_interval(gains, confidence: float = 0.95, what: str = "") -> Interval:
    """The interval of one row's mean gain from its gains g[s, i] (n seeds x m items)."""
    return contrast_interval([gains], [1.0], confidence, what)


def difference_interval(a, b, paired: bool = False, confidence: float = 0.95, what: str = "") -> Interval:
    """The interval of mean(a) - mean(b), rows scored on the same items: unpaired across
    seeds, or with `paired` (row s of a and of b trained from the same seed) the row rule on
    the per-seed differences a[s, i] - b[s, i]."""
    if not paired:
        return contrast_interval([a, b], [1.0, -1.0], confidence, what)
    ga, gb = _matrix(a, what or "difference"), _matrix(b, what or "difference")
    if ga.shape != gb.shape:
        raise UserError(
            f"{what or 'difference'}: pairing by seed needs the same seeds and items, {ga.shape} vs {gb.shape}"
        )
    out = row_interval(ga - gb, confidence, what)
    rule = out.rule.replace("seeds x items", "paired by seed, seeds x items", 1) if out.seed_noise else out.rule
    return Interval(out.mean, out.low, out.high, rule, out.seeds, out.items, out.df, out.se, out.seed_noise)


def seed_matched_difference(
    a: Mapping[object, Sequence[float]], b: Mapping[object, Sequence[float]], confidence: float = 0.95, what: str = ""
) -> Interval:
    """Row a minus row b from per-seed gains ({seed: per-item gains}): paired by seed when both
    rows have the same seeds (trained minus its own untrained initialisation), else unpaired
    across seeds; always paired across items."""
    if not a or not b:
        raise UserError(f"{what or 'difference'}: each row needs at least one seed")
    if set(a) == set(b):
        seeds = sorted(a, key=repr)
        return difference_interval([a[s] for s in seeds], [b[s] for s in seeds], True, confidence, what)
    return difference_interval(list(a.values()), list(b.values()), False, confidence, what)


def differences_against(
    rows: Mapping[str, Mapping[object, Sequence[float]]], reference: str, confidence: float = 0.95
) -> dict[str, Interval]:
    """Each row minus row `reference` (e.g. "random"), from per-seed gains {label: {seed: gains}}
    on the same items: `seed_matched_difference` (paired by seed where both rows have the same
    seeds). Pick a reference such as "the best static selector" on the dev split, not from
    these intervals (choosing it on the same items would bias the differences towards zero)."""
    if reference not in rows:
        raise UserError(f"no row '{reference}' to take differences against; rows: {', '.join(rows)}")
    return {
        label: seed_matched_difference(by_seed, rows[reference], confidence, f"{label} - {reference}")
        for label, by_seed in rows.items()
        if label != reference
    }


def gain_interval(base_losses, run_losses: list, confidence: float = 0.95, seed: int | None = None) -> Interval:
    """The interval of a row's gain over the base model from its runs' per-item losses (one
    run per seed), by the one rule (`row_interval` of g[s, i] = base[i] - run_s[i]); `seed` is
    ignored (no resampling) and kept for callers."""
    base = np.asarray(base_losses, dtype=np.float64)
    runs = [np.asarray(r, dtype=np.float64) for r in run_losses]
    if not runs or any(r.shape != base.shape for r in runs):
        raise UserError("every run must be scored on the same held-out items as the base model")
    return row_interval(np.stack([base - r for r in runs]), confidence)
