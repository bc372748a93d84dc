"""benchmarks/compare_learning.py: paired loss differences of bench_learning runs, by hand."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from conftest import benchmark_module


def _module():
    return benchmark_module("compare_learning")


def _run(root: Path, name: str, rows: list[tuple[str, int, float, float]]) -> Path:
    d = root / name
    d.mkdir()
    lines = [json.dumps({"testbed": t, "seed": s, "raise": loss, "raise_gain": gain}) for t, s, loss, gain in rows]
    (d / "results.jsonl").write_text("\n".join(lines) + "\n")
    return d


def test_paired_differences_and_their_t_interval_by_hand(tmp_path):
    mod = _module()
    base = _run(tmp_path, "fit", [("demo", 0, 3.0, 0.5), ("demo", 1, 3.2, 0.4), ("rare", 0, 2.0, math.nan)])
    other = _run(tmp_path, "ppo", [("demo", 0, 2.9, 0.6), ("demo", 1, 2.9, 0.7), ("rare", 0, 2.5, 0.1)])
    # demo: differences -0.1 and -0.3: mean -0.2, sd 0.1414, se 0.1, t(0.975, 1) = 12.706
    m, lo, hi = mod.interval([-0.1, -0.3])
    assert m == pytest.approx(-0.2) and lo == pytest.approx(-0.2 - 1.27062, abs=1e-4)
    assert hi == pytest.approx(-0.2 + 1.27062, abs=1e-4)
    text = mod.table(base, [other])
    assert "-0.200 [-1.471, +1.071] (2 of 2 lower)" in text
    # all three pairs: -0.1, -0.3, +0.5: mean +0.033, two of three lower
    assert "+0.033" in text and "(2 of 3 lower)" in text
    assert "| 45% |" in text  # the base's demo gain; rare's is undefined and shown as '-'
    assert "| - |" in text


def test_a_run_without_results_is_named(tmp_path):
    mod = _module()
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit, match="results.jsonl: missing"):
        mod.load(tmp_path / "empty")
