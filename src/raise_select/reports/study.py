"""The study's gain table: per target, each row's held-out loss gain over the zero-shot model
with a 95% interval, and its cost in seconds and in Φ.

The study itself (cells, keys, resume) is `raise_select.experiments.study`; this module only
turns its finished cell records into the table. Gain = the base model's mean held-out loss -
the row's (nats per response token; higher is better). Intervals: one rule for every row,
counting seed and held-out item noise (`reports.intervals.gain_interval`, docs/intervals.md);
`*` marks a row whose interval lies wholly above RAND's, never a 1-seed row.
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
                # counted token passes (experiments.costs): the cells' own model calls, featurizing aside
                "phi_counted": float(np.mean([g["costs"]["phi"] for g in group]))
                if all(g.get("costs") for g in group)
                else None,
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
                    ref and m != "random" and Interval.from_dict(cell).above(Interval.from_dict(ref))
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
    head = "| method | " + " | ".join(f"{t} gain [95% CI]" for t in targets) + " | cost (Φ) | counted Φ | seconds |"
    lines = [head, "|" + "---|" * (len(targets) + 4)]
    lines.append(
        "| zero-shot | " + " | ".join(f"0 (loss {np.mean(base_losses[t]):.4f})" for t in targets) + " | 0 | 0 | 0 |"
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
        counted = f"{any_cell['phi_counted']:.2f}" if any_cell.get("phi_counted") is not None else "n/a"
        label = any_cell["label"] + (f" ({any_cell['runs']} seeds)" if any_cell["runs"] > 1 else "")
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {phi_txt} | {counted} | {any_cell['seconds']:.0f} |")
    counted = ", ".join(readers) or "no method"
    items = f"{heldout} held-out items" if heldout else "the held-out items"
    lines += [
        "",
        f"Gain = zero-shot held-out loss - the method's (nats per response token, mean over {items} per target; "
        "higher is better). Intervals: seed and item noise alike (docs/intervals.md); a 1-seed row has no seed noise "
        "estimate and gets no mark. `*`: interval wholly above RAND's.",
        f"Pool {pool_size} rows; budget {budget:g} -> {steps} matched steps of {batch_size}; the 100% row is its own "
        f"epochs over the pool. Φ = {phi:.0f} s (from {phi_from}); featurize (counted for {counted}) "
        f"{feat_seconds:.0f} s. Targeted rows cost one selection per target; their cost is per target. "
        "Counted Φ: the forward and backward token passes of the cell's own model calls (selection and "
        "training; featurizing and a prior's source cell aside) over one epoch's (`experiments.costs`).",
        *notes,
    ]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- the real-data benchmark's extra tables
#
# Records here are the study's cell records (`experiments.study`), with `runs` ("raise" for RAISE's
# presets), `row` (the label) and, added by `benchmarks/bench_real.py`, `chosen` (the pool ids a cell
# trained on), `chosen_by_policy` and `policy_episodes` (seconds per policy-training episode).


def raise_costs(records: list[dict], phi: float) -> dict:
    """Per RAISE row: mean seconds of its policy training's reference episode, of one round
    (over its rounds and cells) and of its fine-tuning, and the same in Φ; the cells whose
    episode times are on record."""
    out = {}
    methods = dict.fromkeys(r["method"] for r in records if r.get("runs") == "raise")
    for m in methods:
        group = [r for r in records if r["method"] == m and r.get("policy_episodes")]
        if not group:
            continue
        ref = [r["policy_episodes"].get("reference", 0.0) for r in group]
        rounds = [v for r in group for k, v in r["policy_episodes"].items() if k != "reference"]
        cost = {
            "label": group[0]["row"],
            "reference": float(np.mean(ref)),
            "round": float(np.mean(rounds)) if rounds else float("nan"),
            "rounds": len(rounds) / len(group),
            "finetune": float(np.mean([r["train_seconds"] for r in group])),
            "prior": float(np.mean([r.get("prior_seconds", 0.0) for r in group])),
            "cells": len(group),
        }
        parts = ("reference", "round", "finetune", "prior")
        cost.update({f"{k}_phi": cost[k] / phi if math.isfinite(phi) else None for k in parts})
        out[m] = cost
    return out


def cost_markdown(costs: dict, prior_from: dict[str, str | None]) -> str:
    """One line per RAISE row: what its policy training and fine-tuning cost, per part."""

    def part(m, k):
        c = costs[m]
        return f"{c[k]:.0f} s" + (f" ({c[k + '_phi']:.2f} Φ)" if c[k + "_phi"] is not None else "")

    lines = [
        f"{c['label']}, per seed (mean of {c['cells']} cells): policy training = reference episode "
        f"{part(m, 'reference')} + {c['rounds']:g} round(s) x {part(m, 'round')}; fine-tuning {part(m, 'finetune')}"
        + (f"; its prior (the {prior_from.get(m)} cell's selection) {part(m, 'prior')}." if c.get("prior") else ".")
        for m, c in costs.items()
    ]
    return ("\n" + "\n".join(lines) + "\n") if lines else ""


def ablation_markdown(
    records: list[dict], base_losses: dict, targets: list[str], phi: float, feat_seconds: float
) -> str:
    """The RAISE rows cell by cell: per row and seed, each target's gain over the zero-shot
    model (base loss - the cell's mean held-out loss) and the cell's cost in Φ (selection,
    policy training, fine-tuning, the featurize time and, for a prior taken from another cell,
    that cell's selection), so a setting's effect can be read seed by seed."""
    cells: dict[tuple[str, int], dict] = {}
    labels: dict[str, str] = {}
    for r in records:
        if r.get("runs") == "raise" and r["target"] in targets and r["target"] in r.get("evals", {}):
            cells.setdefault((r["method"], r["seed"]), {})[r["target"]] = r
            labels[r["method"]] = r["row"]
    if not cells:
        return ""
    head = "| RAISE row | seed | " + " | ".join(f"{t} gain (Φ)" for t in targets) + " |"
    lines = ["", "The RAISE rows cell by cell (gain over zero-shot; the cell's cost in Φ):", "", head]
    lines.append("|" + "---|" * (len(targets) + 2))
    for m in labels:
        for (method, seed), by_target in sorted(cells.items(), key=lambda kv: kv[0][1]):
            if method != m:
                continue
            parts = []
            for t in targets:
                r = by_target.get(t)
                if r is None:
                    parts.append("n/a")
                    continue
                gain = float(np.mean(base_losses[t])) - float(np.mean(r["evals"][t]["losses"]))
                seconds = r["select_seconds"] + r["train_seconds"] + r.get("prior_seconds", 0.0) + feat_seconds
                parts.append(f"{gain:+.4f} ({seconds / phi:.2f})" if math.isfinite(phi) else f"{gain:+.4f}")
            lines.append(f"| {labels[m]} | {seed} | " + " | ".join(parts) + " |")
    return "\n".join(lines) + "\n"


def prior_markdown(records: list[dict], sources: dict, pool_ids: list[str], prior_from: dict[str, str | None]) -> str:
    """For the RAISE rows whose prior is another method's scores (`prior_from`): how close the
    rows a cell trained on stay to that method's own choice. Per cell: the share of its rows
    (with repeats) inside the source's selected rows, its distinct rows, and the mean
    percentile of its rows under the source's pool scores (1 = the top row; unscored rows
    rank lowest). `sources`: (source method, target) -> its selection.json record."""
    from scipy.stats import rankdata

    pos = {i: k for k, i in enumerate(pool_ids)}
    lines = []
    for r in sorted(records, key=lambda r: (r["method"] or "", r["target"] or "", r["seed"])):
        sel = sources.get((prior_from.get(r["method"]), r["target"]))
        if sel is None or not r.get("chosen"):
            continue
        scores = np.array([-np.inf if v is None else float(v) for v in sel["pool_scores"]], dtype=np.float64)
        pct = rankdata(scores) / len(scores)  # ties (the unscored rows) share their mean rank
        picked = set(sel["ids"])
        ids = r["chosen"]
        inside = sum(i in picked for i in ids) / len(ids)
        mean_pct = float(np.mean([pct[pos[i]] for i in ids]))
        lines.append(f"| {r['row']} | {r['target']} | {r['seed']} | {inside:.0%} | {len(set(ids))} | {mean_pct:.2f} |")
    if not lines:
        return ""
    head = [
        "",
        "The rows of the RAISE rows with another method's scores as their prior, against that method's own choice:",
        "",
        "| RAISE row | target | seed | rows inside its selection | distinct rows | mean percentile of its score |",
        "|---|---|---|---|---|---|",
    ]
    return "\n".join(head + lines) + "\n"


def topic_shares(records: list[dict], pool, targets: list[str]) -> dict:
    """Per target: the pool's on-topic base rate (`data.topics`) and, per method, the mean
    on-topic share of the rows its cells trained on (`chosen`), with the number of cells
    counted. A RAISE row also gets `<method>:policy`, the rows of the batches its policy chose
    (without the random batches between its choices under `select_every`)."""
    from ..data.topics import TOPIC_RULES, on_topic_share, topic_labels

    out = {}
    for t in targets:
        labels = topic_labels(t, pool.examples)
        per: dict[str, list[float]] = {}
        for r in records:
            if r["method"] is None or r["target"] not in (None, t):
                continue
            ids = list(pool.ids) if r["method"] == "full" else r.get("chosen")
            if ids:
                per.setdefault(r["method"], []).append(on_topic_share(ids, labels))
            own = r.get("chosen_by_policy")
            if own and len(own) < len(ids or []):
                per.setdefault(r["method"] + ":policy", []).append(on_topic_share(own, labels))
        out[t] = {
            "rule": TOPIC_RULES[t][0],
            "pool": on_topic_share(pool.ids, labels),
            "methods": {m: {"share": float(np.mean(v)), "cells": len(v)} for m, v in per.items()},
        }
    return out


def topic_markdown(topics: dict, targets: list[str], labels: dict[str, str]) -> str:
    """The on-topic table: the pool's base rate, then each method's share per target, rows in
    the order of `labels` (method -> row label)."""
    names = [n for m in labels for n in (m, m + ":policy")]
    methods = [m for m in names if any(m in topics[t]["methods"] for t in targets)]
    head = "| rows trained on | " + " | ".join(f"{t}: {topics[t]['rule']}" for t in targets) + " |"
    lines = ["", "On-topic share of the rows each method trained on (`raise_select.data.topics`):", "", head]
    lines.append("|" + "---|" * (len(targets) + 1))
    lines.append("| the pool (base rate) | " + " | ".join(f"{100 * topics[t]['pool']:.1f}%" for t in targets) + " |")
    for m in methods:
        cells = []
        for t in targets:
            c = topics[t]["methods"].get(m)
            cells.append(
                "n/a" if c is None else f"{100 * c['share']:.1f}%" + (f" ({c['cells']})" if c["cells"] > 1 else "")
            )
        label = labels.get(m.split(":")[0], m) + (", the policy's own batches" if m.endswith(":policy") else "")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines.append("\n(n): the mean over n cells (seeds). n/a: no cell whose choices are on record.")
    if any(m.endswith(":policy") for m in methods):
        lines.append(
            "The policy's own batches: the steps where it chose, without the uniformly random batches "
            "between its choices (`select_every`, the paper's appendix F)."
        )
    return "\n".join(lines) + "\n"


def plot_gains(rows: dict, targets: list[str], path) -> None:
    """One panel per target: each row's gain with its 95% interval, RAND's interval shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = list(rows)
    fig, axes = plt.subplots(1, len(targets), figsize=(4.2 * len(targets), 0.45 * len(methods) + 1.5), squeeze=False)
    for ax, t in zip(axes[0], targets):
        ms = [m for m in methods if t in rows[m]]
        g = np.array([rows[m][t]["gain"] for m in ms])
        err = np.array(
            [
                [rows[m][t]["gain"] - rows[m][t]["low"] for m in ms],
                [rows[m][t]["high"] - rows[m][t]["gain"] for m in ms],
            ]
        )
        colors = [
            "tab:green" if rows[m][t]["above_rand"] else ("tab:gray" if m == "random" else "tab:blue") for m in ms
        ]
        ax.barh(range(len(ms)), g, xerr=err, color=colors, capsize=3)
        ax.set_yticks(range(len(ms)), [rows[m][t]["label"] for m in ms])
        ax.invert_yaxis()
        ax.axvline(0, color="black", lw=0.8)
        if "random" in rows and t in rows["random"]:
            ax.axvspan(rows["random"][t]["low"], rows["random"][t]["high"], color="tab:gray", alpha=0.15)
        ax.set_title(t)
        ax.set_xlabel("held-out loss gain over zero-shot (95% CI)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
