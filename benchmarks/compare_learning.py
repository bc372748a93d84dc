"""Paired comparison of bench_learning runs against a base run on the same testbeds and seeds.

Each run folder of `benchmarks/bench_learning.py` holds `results.jsonl`, one line per (testbed, seed)
with RAISE's final validation loss (the mean over its use runs with `--use-seeds`) and oracle gain.
For every other run this prints, per testbed and over all of them, RAISE's loss minus the base run's
on the same (testbed, seed): the mean with a 95% t-interval over the pairs (one rule for every row),
and how many pairs are lower; beside it each run's mean oracle gain (over the pairs where PERFECT
beats RAND; elsewhere the gain is undefined, and the count says so).

    python benchmarks/compare_learning.py runs/bl_labels_untrained runs/bl_labels_trained runs/bl_anchor1_trained
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
from pathlib import Path

from scipy import stats

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from raise_select.io import read_jsonl  # noqa: E402


def load(run: Path) -> dict[tuple[str, int], dict]:
    """A run's rows by (testbed, seed); exits naming the file when there is none."""
    path = Path(run) / "results.jsonl"
    if not path.is_file():
        sys.exit(f"{path}: missing; run benchmarks/bench_learning.py with --out {run} first")
    return {(r["testbed"], int(r["seed"])): r for r in read_jsonl(path, "bench_learning results")}


def interval(diffs: list[float]) -> tuple[float, float, float]:
    """(mean, low, high): the mean and its two-sided 95% Student-t interval (nan bounds for one pair)."""
    m = statistics.fmean(diffs)
    if len(diffs) < 2:
        return m, math.nan, math.nan
    h = stats.t.ppf(0.975, len(diffs) - 1) * statistics.stdev(diffs) / math.sqrt(len(diffs))
    return m, m - h, m + h


def mean_gain(rows: dict, testbed: str | None) -> str:
    mine = [r for (t, _), r in rows.items() if testbed in (None, t)]
    finite = [r["raise_gain"] for r in mine if math.isfinite(r["raise_gain"])]
    if not finite:
        return "-"
    note = "" if len(finite) == len(mine) else f" ({len(finite)} of {len(mine)})"
    return f"{statistics.fmean(finite):.0%}{note}"


def paired(base: dict, other: dict, testbed: str | None) -> str:
    keys = [k for k in base if k in other and testbed in (None, k[0])]
    if not keys:
        return "no shared pairs"
    d = [other[k]["raise"] - base[k]["raise"] for k in keys]
    m, lo, hi = interval(d)
    return f"{m:+.3f} [{lo:+.3f}, {hi:+.3f}] ({sum(x < 0 for x in d)} of {len(d)} lower)"


def table(base_run: Path, runs: list[Path]) -> str:
    base = load(base_run)
    testbeds = list(dict.fromkeys(t for t, _ in base))
    head = [f"{t}: oracle gain / loss minus the base's [95% CI]" for t in testbeds] + ["all: loss minus the base's"]
    lines = ["| run | " + " | ".join(head) + " |", "|" + "---|" * (len(head) + 1)]
    lines.append(f"| {base_run} (base) | " + " | ".join(mean_gain(base, t) for t in testbeds) + " | |")
    for run in runs:
        other = load(run)
        cells = [f"{mean_gain(other, t)} / {paired(base, other, t)}" for t in testbeds]
        lines.append(f"| {run} | " + " | ".join(cells) + f" | {paired(base, other, None)} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("base", type=Path, help="the run the others are compared with (its --out)")
    ap.add_argument("runs", type=Path, nargs="+", help="other bench_learning run folders")
    args = ap.parse_args()
    print(table(args.base, args.runs))
    print("\nLoss: RAISE's final validation loss (lower is better); the interval is over (testbed, seed) pairs.")


if __name__ == "__main__":
    main()
