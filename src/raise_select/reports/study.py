"""The study's gain table: per target, each row's held-out loss gain over the zero-shot model
with a 95% interval, and its cost in seconds and in Φ.

The study itself (cells, keys, resume) is `raise_select.experiments.study`; this module only
turns its finished cell records into the table. Gain = the base model's mean held-out loss -
the row's (nats per response token; higher is better). Intervals: a t-interval over seeds for a
row of several cells, a paired bootstrap over the held-out items otherwise
(`reports.intervals.gain_interval`); `*` marks a row whose interval lies wholly above RAND's.
A row's cost is the mean over its cells of selection (RAISE: policy training) + training (+ a
prior taken from another cell's selection), + the featurize seconds for rows that read the
features, and the same over Φ.
"""

from __future__ import annotations

import math
from collections.abc import Collection

import numpy as np

from .intervals import Interval, gain_interval


def gain_rows(
    records: list[dict],
    base_losses: dict[str, list[float]],
    targets: list[str],
    seed: int,
    phi: float,
    feat_seconds: float,
    readers: Collection[str],
    labels: dict[str, str] | None = None,
) -> dict[str, dict]:
    """method -> target -> {gain, low, high, rule, loss, seconds, phi, runs, above_rand, label},
    rows in the order of their first cell in `records` (the base cell, method None, left out)."""
    labels = labels or {}
    rows: dict[str, dict] = {}
    for t in targets:
        groups: dict[str, list[dict]] = {}
        for r in records:
            if r["method"] is not None and r.get("target") in (None, t) and t in r.get("evals", {}):
                groups.setdefault(r["method"], []).append(r)
        for m, group in groups.items():
            losses = [g["evals"][t]["losses"] for g in group]
            interval = gain_interval(base_losses[t], losses, seed=seed)
            seconds = float(
                np.mean([g["select_seconds"] + g["train_seconds"] + g.get("prior_seconds", 0.0) for g in group])
            )
            seconds += feat_seconds if m in readers else 0.0
            rows.setdefault(m, {})[t] = {
                "label": labels.get(m, m),
                "gain": interval.mean,
                "low": interval.low,
                "high": interval.high,
                "rule": interval.rule,
                "loss": float(np.mean([np.mean(x) for x in losses])),
                "seconds": round(seconds, 1),
                "phi": seconds / phi if math.isfinite(phi) else None,
                "runs": len(group),
            }
    order = {r["method"]: i for i, r in reversed(list(enumerate(records)))}
    rows = dict(sorted(rows.items(), key=lambda kv: order.get(kv[0], len(order))))
    for t in targets:
        ref = rows.get("random", {}).get(t)
        for m, by_target in rows.items():
            cell = by_target.get(t)
            if cell is not None:
                cell["above_rand"] = bool(
                    ref
                    and m != "random"
                    and Interval(cell["gain"], cell["low"], cell["high"], "").above(
                        Interval(ref["gain"], ref["low"], ref["high"], "")
                    )
                )
    return rows


def gain_markdown(
    rows: dict[str, dict],
    base_losses: dict[str, list[float]],
    targets: list[str],
    *,
    phi: float,
    phi_from: str,
    feat_seconds: float,
    pool_size: int,
    steps: int,
    budget: float,
    batch_size: int,
    heldout: int | None,
    readers: list[str],
    notes: list[str] = (),
) -> str:
    """The gain table (Markdown) and what it measured."""
    head = "| method | " + " | ".join(f"{t} gain [95% CI]" for t in targets) + " | cost (Φ) | seconds |"
    lines = [head, "|" + "---|" * (len(targets) + 3)]
    lines.append(
        "| zero-shot | " + " | ".join(f"0 (loss {np.mean(base_losses[t]):.4f})" for t in targets) + " | 0 | 0 |"
    )
    for m, by_target in rows.items():
        cells = []
        for t in targets:
            c = by_target.get(t)
            if c is None:
                cells.append("n/a")
                continue
            text = f"{c['gain']:+.4f} [{c['low']:+.4f}, {c['high']:+.4f}]"
            cells.append(f"**{text}** *" if c["above_rand"] else text)
        any_cell = next(iter(by_target.values()))
        phi_txt = f"{any_cell['phi']:.2f}" if any_cell["phi"] is not None else "n/a"
        label = any_cell["label"] + (f" ({any_cell['runs']} seeds)" if any_cell["runs"] > 1 else "")
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {phi_txt} | {any_cell['seconds']:.0f} |")
    counted = ", ".join(readers) or "no method"
    items = f"{heldout} held-out items" if heldout else "the held-out items"
    lines += [
        "",
        f"Gain = zero-shot held-out loss - the method's (nats per response token, mean over {items} per target; "
        "higher is better). Intervals: t over seeds for rows with several seeds, else a paired bootstrap over items "
        "(10,000 resamples). `*`: interval wholly above RAND's.",
        f"Pool {pool_size} rows; budget {budget:g} -> {steps} matched steps of {batch_size}; the 100% row is its own "
        f"epochs over the pool. Φ = {phi:.0f} s (from {phi_from}); featurize (counted for {counted}) "
        f"{feat_seconds:.0f} s. Targeted rows cost one selection per target; their cost is per target.",
        *notes,
    ]
    return "\n".join(lines) + "\n"
