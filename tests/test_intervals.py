"""The one interval rule (seeds x items), its differences, against hand computations, a slow
reference loop and seeded simulations where the true spreads are known."""

import math

import numpy as np
import pytest
from scipy import stats

from raise_select.errors import UserError
from raise_select.reports.intervals import (
    ONE_SEED,
    Interval,
    contrast_interval,
    difference_interval,
    differences_against,
    gain_interval,
    row_interval,
    seed_matched_difference,
    variance_parts,
)


def _reference_v(rows, weights):
    """V of a contrast from sums of squares written out with loops (the module docstring's formula)."""
    m = len(rows[0][0])
    v = 0.0
    d = [0.0] * m
    for g, w in zip(rows, weights):
        n = len(g)
        grand = sum(sum(r) for r in g) / (n * m)
        seed_means = [sum(r) / m for r in g]
        item_means = [sum(g[s][i] for s in range(n)) / n for i in range(m)]
        v += w**2 * sum((x - grand) ** 2 for x in seed_means) / (n - 1) / n
        res = sum((g[s][i] - seed_means[s] - item_means[i] + grand) ** 2 for s in range(n) for i in range(m)) / (
            (n - 1) * (m - 1)
        )
        v -= w**2 * res / (n * m)
        for i in range(m):
            d[i] += w * item_means[i]
    dm = sum(d) / m
    return v + sum((x - dm) ** 2 for x in d) / (m - 1) / m


def test_row_interval_by_hand():
    g = [[0.0, 2.0, 4.0, 6.0], [1.0, 3.0, 5.0, 7.0], [1.0, 2.0, 4.0, 7.0]]
    # seed means 3, 4, 3.5: variance 0.25, / n = 1/12; item means 2/3, 7/3, 13/3, 20/3 (mean 3.5):
    # deviations -17/6, -7/6, 5/6, 19/6, variance 724/108, / m = 181/108; residuals sum of squares 2/3,
    # MS_res = (2/3) / (2 x 3) = 1/9, / (n m) = 1/108.  V = 1/12 + 181/108 - 1/108 = 1.75.
    parts = variance_parts(g)
    assert (parts["seed_var"], parts["item_var"], parts["ms_res"]) == pytest.approx((0.25, 724 / 108, 1 / 9))
    v = 1.75
    df = v**2 / ((1 / 12) ** 2 / 2 + (181 / 108) ** 2 / 3 + (1 / 108) ** 2 / 6)  # Satterthwaite: 3.2589
    assert df == pytest.approx(3.258918, abs=1e-6)
    iv = row_interval(g)
    half = stats.t.ppf(0.975, df) * math.sqrt(v)
    assert (iv.mean, iv.se, iv.df) == pytest.approx((3.5, math.sqrt(v), df))
    assert (iv.low, iv.high) == pytest.approx((3.5 - half, 3.5 + half))
    assert iv.seed_noise and iv.seeds == 3 and iv.items == 4 and iv.rule == "seeds x items, 3 seeds x 4 items"
    assert iv.se**2 == pytest.approx(_reference_v([g], [1.0]))


def test_never_narrower_than_the_seed_means_t_interval():
    g = [[1.0, 2.0, 3.0], [2.0, 4.0, 3.0]]
    # seed means 2, 3: variance 0.5, / n = 0.25; item means 1.5, 3, 3 (mean 2.5): variance 0.75, / m = 0.25;
    # residuals 0, -0.5, 0.5 / 0, 0.5, -0.5: MS_res = 1 / (1 x 2) = 0.5, / (n m) = 1/12.
    # ANOVA form: MS_seed = 3 x 0.5 = 1.5, MS_item = 2 x 0.75 = 1.5 -> V = (1.5 + 1.5 - 0.5) / 6 = 5/12.
    parts = variance_parts(g)
    assert (parts["seed_var"], parts["item_var"], parts["ms_res"]) == pytest.approx((0.5, 0.75, 0.5))
    iv = row_interval(g)
    df = (5 / 12) ** 2 / (0.25**2 / 1 + 0.25**2 / 2 + (1 / 12) ** 2 / 2)  # 1.7857
    assert (iv.se, iv.df) == pytest.approx((math.sqrt(5 / 12), df))
    full, seed_only = stats.t.ppf(0.975, df) * math.sqrt(5 / 12), stats.t.ppf(0.975, 1) * math.sqrt(0.25)
    assert full < seed_only  # two seeds: t_1 = 12.7 over the seed means is the wider
    assert (iv.low, iv.high) == pytest.approx((2.5 - seed_only, 2.5 + seed_only))
    assert iv.rule == "seeds x items, 2 seeds x 3 items, seed-mean bound"


def test_row_interval_agrees_with_the_loop_and_a_pure_seed_row_is_students_t():
    rng = np.random.default_rng(0)
    g = rng.normal(size=(4, 9)) + rng.normal(size=(4, 1))
    assert row_interval(g).se ** 2 == pytest.approx(_reference_v([g.tolist()], [1.0]))
    # every item moves with its seed: only seed noise; the rule is the t-interval over seed means
    seeds = np.array([0.1, 0.3, 0.2, 0.5, 0.4])
    iv = row_interval(np.repeat(seeds[:, None], 7, axis=1))
    half = stats.t.ppf(0.975, 4) * seeds.std(ddof=1) / math.sqrt(5)
    assert (iv.low, iv.high, iv.df) == pytest.approx((0.3 - half, 0.3 + half, 4))
    # one item per seed (a scalar metric per run): the same t-interval
    iv1 = row_interval(seeds[:, None])
    assert (iv1.low, iv1.high) == pytest.approx((iv.low, iv.high))


def test_the_floor_keeps_the_larger_part_when_the_residual_overshoots():
    # seeds agree on average, items agree on average, the seed x item noise is all there is
    g = np.array([[0.0, 1.0, 0.0, 1.0], [1.0, 0.0, 1.0, 0.0], [0.0, 1.0, 0.1, 0.9]])
    p = variance_parts(g)
    raw = p["seed_var"] / 3 + p["item_var"] / 4 - p["ms_res"] / 12
    assert raw < max(p["seed_var"] / 3, p["item_var"] / 4)
    iv = row_interval(g)
    assert iv.se**2 == pytest.approx(max(p["seed_var"] / 3, p["item_var"] / 4))


def test_one_seed_is_marked_and_never_draws_a_mark():
    items = np.array([0.2, 0.4, 0.1, 0.3, 0.5, 0.2])
    one = row_interval(items)
    half = stats.t.ppf(0.975, 5) * items.std(ddof=1) / math.sqrt(6)
    assert (one.low, one.high) == pytest.approx((items.mean() - half, items.mean() + half))
    assert not one.seed_noise and one.rule.startswith(ONE_SEED) and one.seeds == 1
    low = row_interval([items - 5.0, items - 5.1, items - 4.9])
    assert one.low > low.high and not one.above(low) and not low.above(one)  # far apart, still no mark
    assert row_interval([items + 5, items + 5.2, items + 4.9]).above(low)
    assert not difference_interval([items], [items, items + 0.1]).seed_noise
    with pytest.raises(UserError, match="one seed and one item"):
        row_interval([[0.3]])


def test_gain_interval_is_the_row_rule_on_base_minus_run():
    base = np.array([1.0, 2.0, 1.5, 1.2])
    runs = [base - 0.1, base - np.array([0.3, 0.2, 0.4, 0.3]), base - 0.2]
    got = gain_interval(base, runs)
    want = row_interval(np.stack([base - r for r in runs]))
    assert got == want and got.mean == pytest.approx(0.2)
    assert not gain_interval(base, [base - 0.1]).seed_noise
    with pytest.raises(UserError, match="same held-out items"):
        gain_interval(base, [base[:3]])


def test_unpaired_difference_by_hand_and_against_the_loop():
    a = [[1.0, 2.0, 3.0], [2.0, 4.0, 3.0]]  # V_a parts as in test_row_interval_by_hand
    b = [[0.0, 1.0, 1.0], [1.0, 1.0, 2.0], [2.0, 1.0, 3.0]]
    # b: seed means 2/3, 4/3, 2 -> variance 4/9, / 3 = 4/27; item means 1, 1, 2;
    # residuals (b - seed - item + 4/3): [1/3, 1 + 1/3 ... ] summed by the loop.
    # d_i = a's item means - b's = 0.5, 2, 1 -> variance 0.5833, / 3.
    iv = difference_interval(a, b)
    assert iv.mean == pytest.approx(2.5 - 4 / 3)
    assert iv.se**2 == pytest.approx(_reference_v([a, b], [1.0, -1.0]))
    d = np.array([0.5, 2.0, 1.0])
    b_res = np.array(b) - np.mean(b, 1, keepdims=True) - np.mean(b, 0, keepdims=True) + np.mean(b)
    v = 0.25 + 4 / 27 + d.var(ddof=1) / 3 - 0.5 / 6 - (b_res**2).sum() / 4 / 9
    assert iv.se**2 == pytest.approx(v)
    assert iv.rule == "seeds x items, 2 - 3 seeds x 3 items"
    assert contrast_interval([a, b], [1, -1]) == iv
    with pytest.raises(UserError, match="same held-out items"):
        difference_interval(a, [[1.0, 2.0]] * 2)


def test_paired_by_seed_is_the_row_rule_on_the_differences():
    rng = np.random.default_rng(1)
    shared = rng.normal(0, 1.0, (3, 1))  # a seed's effect on both rows (the same initialisation)
    a = shared + rng.normal(0.2, 0.1, (3, 20))
    b = shared + rng.normal(0.0, 0.1, (3, 20))
    paired = difference_interval(a, b, paired=True)
    want = row_interval(a - b)
    assert (paired.mean, paired.low, paired.high) == (want.mean, want.low, want.high)
    assert paired.rule.startswith("paired by seed")
    unpaired = difference_interval(a, b)
    assert paired.high - paired.low < (unpaired.high - unpaired.low) / 5  # the shared seed effect cancels
    by_seed = seed_matched_difference({7: a[0], 8: a[1], 9: a[2]}, {9: b[2], 7: b[0], 8: b[1]})
    assert (by_seed.low, by_seed.high) == pytest.approx((paired.low, paired.high))
    other = seed_matched_difference({7: a[0], 8: a[1], 9: a[2]}, {1: b[0], 2: b[1], 3: b[2]})
    assert (other.low, other.high) == pytest.approx((unpaired.low, unpaired.high))
    with pytest.raises(UserError, match="same seeds and items"):
        difference_interval(a, b[:2], paired=True)


# ---- seeded simulations: the true seed, item and seed x item spreads are known ----------------


def _coverage(n, m, s_seed, s_item, s_inter, reps, seed):
    rng = np.random.default_rng(seed)
    hits, v = 0, []
    for _ in range(reps):
        g = 0.1 + rng.normal(0, s_seed, (n, 1)) + rng.normal(0, s_item, (1, m)) + rng.normal(0, s_inter, (n, m))
        iv = row_interval(g)
        hits += iv.contains(0.1)
        v.append(iv.se**2)
    return hits / reps, float(np.mean(v))


@pytest.mark.parametrize("n,m", [(3, 128), (3, 500), (5, 128), (5, 500)])
def test_coverage_near_95_percent_when_seeds_and_items_both_matter(n, m):
    s_seed, s_item, s_inter = 0.03, 0.3, 0.3
    cover, mean_v = _coverage(n, m, s_seed, s_item, s_inter, reps=600, seed=n * 1000 + m)
    true_v = s_seed**2 / n + s_item**2 / m + s_inter**2 / (n * m)
    assert mean_v == pytest.approx(true_v, rel=0.1)  # V is unbiased
    assert 0.92 <= cover <= 0.98


@pytest.mark.parametrize("n,m", [(3, 500), (5, 128)])
def test_coverage_when_seeds_dominate(n, m):
    # RAND on the multiple-choice targets: seed spread 0.15 against an item standard error of ~0.02
    cover, _ = _coverage(n, m, 0.15, 0.3, 0.2, reps=600, seed=7 + n + m)
    assert 0.92 <= cover <= 0.98


def test_coverage_of_a_method_minus_rand():
    """3 method seeds minus 5 RAND seeds; the items' difficulty (shared by both rows) cancels."""
    rng = np.random.default_rng(11)
    m, hits, reps = 200, 0, 600
    for _ in range(reps):
        shared = rng.normal(0, 1.0, (1, m))  # item difficulty: large, common to both rows
        a = 0.05 + shared + rng.normal(0, 0.05, (3, 1)) + rng.normal(0, 0.2, (1, m)) + rng.normal(0, 0.3, (3, m))
        r = shared + rng.normal(0, 0.05, (5, 1)) + rng.normal(0, 0.3, (5, m))
        hits += difference_interval(a, r).contains(0.05)
    assert 0.92 <= hits / reps <= 0.98


def test_a_difference_is_never_narrower_than_welch_over_the_seed_means():
    a = np.array([[0.0, 0.1, 0.2, 0.1, 0.3, 0.0], [1.0, 1.2, 1.2, 1.0, 1.2, 1.0]])  # two far-apart seeds
    b = np.array([[0.0, 0.1, 0.2, 0.1, 0.1, 0.1], [0.1, 0.2, 0.3, 0.2, 0.2, 0.2], [0.2, 0.3, 0.4, 0.3, 0.3, 0.3]])
    iv = difference_interval(a, b)
    va, vb = a.mean(1).var(ddof=1) / 2, b.mean(1).var(ddof=1) / 3  # 0.2417, 0.0033
    welch_df = (va + vb) ** 2 / (va**2 / 1 + vb**2 / 2)
    half = stats.t.ppf(0.975, welch_df) * math.sqrt(va + vb)
    assert iv.mean == pytest.approx(a.mean() - b.mean()) and iv.rule.endswith("seed-mean bound")
    assert (iv.low, iv.high) == pytest.approx((iv.mean - half, iv.mean + half))
    assert half > stats.t.ppf(0.975, iv.df) * iv.se  # wider than the seeds x items rule alone


def test_a_record_keeps_the_no_mark_rule():
    items = np.array([0.2, 0.4, 0.1, 0.3])
    one, three = row_interval(items), row_interval([items - 2, items - 2.1, items - 1.9])
    assert Interval.from_dict(one.as_dict()) == one and Interval.from_dict(three.as_dict()) == three
    row = {"gain": one.mean, "low": one.low, "high": one.high, "rule": one.rule, "loss": 1.0}  # a table row
    assert Interval.from_dict(row).mean == one.mean and not Interval.from_dict(row).above(three)
    old = {"gain": 0.5, "low": 0.4, "high": 0.6, "rule": "bootstrap over 128 items"}  # a record of the old rules
    assert not Interval.from_dict(old).seed_noise
    assert Interval.from_dict({**old, "rule": "t over 3 seeds"}).above(three)


def test_differences_against_a_reference_row():
    rng = np.random.default_rng(3)
    rand = {s: rng.normal(0, 1, 8) for s in (0, 1, 2, 3, 4)}
    rows = {"random": rand, "less": {0: rng.normal(1, 1, 8), 1: rng.normal(1, 1, 8), 2: rng.normal(1, 1, 8)}}
    rows["raise"] = {s: rand[s] + rng.normal(0.5, 0.1, 8) for s in rand}  # same seeds as RAND: paired
    out = differences_against(rows, "random")
    assert set(out) == {"less", "raise"}
    assert out["less"] == difference_interval(list(rows["less"].values()), list(rand.values()), what="less - random")
    assert out["raise"].rule.startswith("paired by seed")
    with pytest.raises(UserError, match="no row 'rds'"):
        differences_against(rows, "rds")


def test_the_study_table_draws_no_mark_from_a_one_seed_row():
    from raise_select.reports.study import gain_rows

    rng = np.random.default_rng(5)
    base = rng.normal(2.0, 0.3, 40)

    def cell(method, seed, gain):
        losses = base - gain - rng.normal(0, 0.01, 40)
        return {"method": method, "target": None, "seed": seed, "select_seconds": 1.0, "train_seconds": 1.0,
                "evals": {"t": {"losses": losses.tolist()}}}  # fmt: skip

    records = [cell("random", s, 0.0 + 0.01 * s) for s in range(5)]
    records += [cell("one", 0, 1.0)] + [cell("three", s, 1.0 + 0.01 * s) for s in range(3)]
    rows = gain_rows(records, {"t": base.tolist()}, ["t"], 0, 1.0, 0.0, ())
    assert rows["one"]["t"]["low"] > rows["random"]["t"]["high"] and rows["one"]["t"]["rule"].startswith(ONE_SEED)
    assert not rows["one"]["t"]["above_rand"] and rows["three"]["t"]["above_rand"]
