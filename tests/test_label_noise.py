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


def test_reliability_table_is_the_split_half_rho_per_size_and_form():
    bench = benchmark_module("bench_label_budget")
    rng = np.random.default_rng(3)
    n = 40
    size = rng.uniform(0.5, 2.0, size=n)
    credit = {
        f"{s}-{h}-{f}": rng.normal(size=n).tolist()
        for s in (8, 16)
        for h in ("first", "second")
        for f in ("mean", "unit")
    }
    credit["16-second-unit"] = credit["16-first-unit"]  # one pair measured alike: fully reliable
    table = bench.reliability_table({"sizes": [8, 16], "credit": credit, "grad_norm": size.tolist()})
    a, b = np.asarray(credit["8-first-mean"]), np.asarray(credit["8-second-mean"])
    assert table["8"]["mean"] == pytest.approx(spearmanr(a, b).statistic)
    assert table["8"]["mean, cosine"] == pytest.approx(spearmanr(a / size, b / size).statistic)
    assert table["16"]["unit"] == pytest.approx(1.0) and table["16"]["unit, cosine"] == pytest.approx(1.0)
