"""The label-noise table of `benchmarks/bench_label_budget.py --noise`, on made-up labels."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

from conftest import benchmark_module
from raise_select.features.table import DIFFICULTY_COLUMNS


def _static(n: int, seed: int = 0):
    x = np.random.default_rng(seed).normal(size=(n, len(DIFFICULTY_COLUMNS) + 3))
    return SimpleNamespace(x=torch.from_numpy(x))


def test_split_half_reliability_cosine_form_and_agreement_by_hand():
    bench = benchmark_module("bench_label_budget")
    n = 60
    rng = np.random.default_rng(1)
    rows = rng.permutation(100)[:n]
    signal, first_noise, second_noise = rng.normal(size=(3, n))
    size = rng.uniform(0.5, 2.0, size=n)
    first, second = signal + first_noise, signal + second_noise
    noise = {
        "rows": rows.tolist(),
        "credit_first": first.tolist(),
        "credit_second": second.tolist(),
        "credit_all": ((first + second) / 2).tolist(),
        "grad_norm": size.tolist(),
    }
    static = _static(100)
    less = rng.normal(size=100)
    out = bench.noise_table(static, {"credit": first.tolist()}, noise, less, SimpleNamespace(holdout=20))
    inner, cosine = out["forms"]["inner"], out["forms"]["cosine"]
    r = spearmanr(first, second).statistic
    assert inner["split_half_rho"] == pytest.approx(r)
    assert inner["spearman_brown_full"] == pytest.approx(2 * r / (1 + r))
    assert inner["half_vs_full_rho"] == pytest.approx(spearmanr(first, first + second).statistic)
    assert inner["less_rho"] == pytest.approx(spearmanr(first + second, less[rows]).statistic)
    assert cosine["split_half_rho"] == pytest.approx(spearmanr(first / size, second / size).statistic)
    assert out["norm_vs_credit_rho"] == pytest.approx(spearmanr(size, first + second).statistic)
    assert out["rerun_matches_labels"] == 0.0
    assert set(inner["ridge_held_out_rho"]) == {"state", "difficulty"}
    assert set(out["forms"]) == {"inner", "cosine"}  # no unit columns: only the mean forms
    unit = {
        f"{k}_unit": (np.asarray(v) * 2 if k != "credit_second" else -np.asarray(v)).tolist()
        for k, v in noise.items()
        if k.startswith("credit_")
    }
    both = bench.noise_table(static, {"credit": first.tolist()}, {**noise, **unit}, less, SimpleNamespace(holdout=20))
    less_form = both["forms"]["unit items, cosine (LESS's form)"]
    assert less_form["split_half_rho"] == pytest.approx(spearmanr(2 * first / size, -second / size).statistic)
    assert both["forms"]["unit validation items"]["split_half_rho"] == pytest.approx(-r)


def test_identical_halves_are_fully_reliable_and_a_feature_label_is_predictable():
    """Labels that are a feature column, measured twice alike: reliability 1, and the ridge fit on the
    difficulty columns orders the held-out rows as the labels."""
    bench = benchmark_module("bench_label_budget")
    static = _static(200, seed=2)
    rows = np.arange(200)
    label = static.x.numpy()[:, 1] * 3.0
    noise = {
        "rows": rows.tolist(),
        "credit_first": label.tolist(),
        "credit_second": label.tolist(),
        "credit_all": label.tolist(),
        "grad_norm": np.ones(200).tolist(),
    }
    out = bench.noise_table(static, {"credit": label.tolist()}, noise, None, SimpleNamespace(holdout=50))
    inner = out["forms"]["inner"]
    assert inner["split_half_rho"] == pytest.approx(1.0) and inner["spearman_brown_full"] == pytest.approx(1.0)
    assert inner["less_rho"] is None
    assert inner["ridge_held_out_rho"]["difficulty"] > 0.99


def test_reliability_table_by_hand_and_on_labels_that_share_one_signal():
    """`reliability_table` from the rows-by-items credit matrix: one draw by hand; items that all carry
    the same row order (noise-free) are fully reliable in every form; independent items are not."""
    bench = benchmark_module("bench_label_budget")
    rng = np.random.default_rng(3)
    rows, items = 50, 16
    signal = rng.normal(size=rows)
    row_norm = rng.uniform(0.5, 2.0, size=rows)
    item_norm = rng.uniform(0.5, 2.0, size=items)
    same = {"credit": np.outer(signal * row_norm, item_norm), "item_norm": item_norm, "row_norm": row_norm}
    table = bench.reliability_table(same, [2, 4, 8, 9], pairs=5)
    assert set(table) == {"2", "4", "8"}  # 2 x 9 > 16 items: no two disjoint samples
    for form in bench.RELIABILITY_FORMS:
        assert table["4"][form]["split_half"][0] == pytest.approx(1.0)
        assert table["4"][form]["vs_rest"][0] == pytest.approx(1.0)
    noise = {"credit": rng.normal(size=(rows, items)), "item_norm": item_norm, "row_norm": row_norm}
    one = bench.reliability_table(noise, [4], pairs=1, seed=7)["4"]["mean"]["split_half"][0]
    perm = np.random.default_rng(7).permutation(items)
    c = noise["credit"]
    assert one == pytest.approx(spearmanr(c[:, perm[:4]].mean(1), c[:, perm[4:8]].mean(1)).statistic)
    unit = bench.reliability_table(noise, [4], pairs=1, seed=7)["4"]["unit, cosine"]["split_half"][0]
    u = c / item_norm[None, :] / row_norm[:, None]
    assert unit == pytest.approx(spearmanr(u[:, perm[:4]].mean(1), u[:, perm[4:8]].mean(1)).statistic)
    assert abs(bench.reliability_table(noise, [4], pairs=40)["4"]["mean"]["split_half"][0]) < 0.15
