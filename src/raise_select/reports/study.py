"""The study's gain table: per target, each row's held-out gain over the zero-shot model with a
95% interval, its accuracy beside it on multiple-choice targets, the distinct rows it trained
on, its cost in counted Φ and in seconds, and the paired differences (each method minus RAND,
each RAISE row minus the best static selector chosen on the dev split).

The study itself (cells, keys, resume) is `raise_select.experiments.study`; this module only
turns its finished cell records into the tables. A record's held-out figures of target `t` are
`record["heldout"][t]` (the study puts the evaluation of the split it reports there), else
`record["evals"][t]`: per item `values` (older records: `losses`) under `metric`. Gain = the
base model's mean figure - the row's on a loss-like metric (`neg_loss`, `choice_ce`: lower is
better), the row's - the base's on `choice_acc`; higher is better either way. Intervals: one
rule for every row and every difference, counting seed and held-out item noise
(`reports.intervals`, docs/intervals.md); `*` marks a row whose interval lies wholly above
RAND's, never a 1-seed row. A row's cost is the mean over its cells of selection (RAISE: policy
training) + training (+ a prior taken from another cell's selection), + the featurize seconds
for rows that read the features, and the same over Φ; counted Φ is the cells' own token passes.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping
from pathlib import Path

import numpy as np

from .intervals import Interval, difference_interval, gain_interval, seed_matched_difference

LOWER_IS_BETTER = {"neg_loss": True, "choice_ce": True, "choice_acc": False, "accuracy": False}
METRIC_NAMES = {
    "neg_loss": "response loss (nats per response token)",
    "choice_ce": "choice cross-entropy (gold choice, nats)",
    "choice_acc": "choice accuracy",
}

AXIS_NAMES = {
    "neg_loss": "response loss gain (nats/token)",
    "choice_ce": "choice cross-entropy gain (nats)",
    "choice_acc": "accuracy gain",
}


def figures(record: Mapping, target: str) -> dict | None:
    """The held-out figures of `target` in a record: {metric, values, acc?} or None."""
    e = (record.get("heldout") or {}).get(target) or (record.get("evals") or {}).get(target)
    if not e:
        return None
    values = e.get("values", e.get("losses"))
    if values is None:
        return None
    return {"metric": e.get("metric", "neg_loss"), "values": values, "acc": e.get("acc")}


def item_gains(base: Mapping, run: Mapping) -> np.ndarray:
    """Per item gain of a run over the base model, higher better: base - run on a loss-like
    metric, run - base on accuracy."""
    b, r = np.asarray(base["values"], dtype=np.float64), np.asarray(run["values"], dtype=np.float64)
    return b - r if LOWER_IS_BETTER.get(base["metric"], True) else r - b


def _base_figures(base_losses: Mapping[str, object], t: str) -> dict:
    b = base_losses[t]
    return b if isinstance(b, Mapping) else {"metric": "neg_loss", "values": list(b), "acc": None}


def _span(values: list) -> str | None:
    vals = [v for v in values if v is not None]
    if not vals:
        return None
    lo, hi = min(vals), max(vals)
    return f"{lo}" if lo == hi else f"{lo}-{hi}"


def gain_rows(
    records: list[dict],
    base_losses: dict[str, object],
    targets: list[str],
    seed: int,
    phi: float,
    feat_seconds: float,
    readers: Collection[str],
    labels: dict[str, str] | None = None,
) -> dict[str, dict]:
    """method -> target -> {gain, low, high, rule, seed_noise, metric, figure, acc, acc_gain,
    seconds, phi, phi_counted, distinct_rows, runs, seeds, above_rand, label}, rows in the order
    of their first cell in `records` (the base cell, method None, left out). `base_losses`: per
    target the base model's figures ({metric, values, acc}) or its per-item losses; `seed` is
    not used (the interval rule resamples nothing) and kept for callers."""
    labels = labels or {}
    rows: dict[str, dict] = {}
    for t in targets:
        base = _base_figures(base_losses, t)
        groups: dict[str, list[dict]] = {}
        for r in records:
            if r["method"] is not None and r.get("target") in (None, t) and figures(r, t) is not None:
                groups.setdefault(r["method"], []).append(r)
        for m, group in groups.items():
            figs = [figures(g, t) for g in group]
            sign = 1.0 if LOWER_IS_BETTER.get(base["metric"], True) else -1.0
            # gain_interval takes base - run: a higher-is-better figure enters negated
            interval = gain_interval(
                sign * np.asarray(base["values"], dtype=np.float64),
                [sign * np.asarray(f["values"], dtype=np.float64) for f in figs],
            )
            seconds = float(
                np.mean([g["select_seconds"] + g["train_seconds"] + g.get("prior_seconds", 0.0) for g in group])
            )
            seconds += feat_seconds if m in readers else 0.0
            acc = [f["acc"] for f in figs]
            has_acc = base.get("acc") is not None and all(a is not None for a in acc)
            rows.setdefault(m, {})[t] = {
                "label": labels.get(m, m),
                "gain": interval.mean,
                "low": interval.low,
                "high": interval.high,
                "rule": interval.rule,
                "seed_noise": interval.seed_noise,
                "metric": base["metric"],
                "figure": float(np.mean([np.mean(f["values"]) for f in figs])),
                "acc": float(np.mean([np.mean(a) for a in acc])) if has_acc else None,
                "acc_gain": float(np.mean([np.mean(a) for a in acc]) - np.mean(base["acc"])) if has_acc else None,
                "seconds": round(seconds, 1),
                "phi": seconds / phi if math.isfinite(phi) else None,
                # counted token passes (experiments.costs): the cells' own model calls, featurizing aside
                "phi_counted": float(np.mean([g["costs"]["phi"] for g in group]))
                if all(g.get("costs") for g in group)
                else None,
                "distinct_rows": _span([g.get("distinct_rows") for g in group]),
                "runs": len(group),
                "seeds": sorted(g["seed"] for g in group),
            }
            if base["metric"] == "neg_loss":
                rows[m][t]["loss"] = rows[m][t]["figure"]
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


def seed_gains(records: list[dict], base_losses: Mapping, target: str) -> dict[str, dict[int, np.ndarray]]:
    """method -> seed -> per-item gains on `target` (the inputs of the paired differences)."""
    base = _base_figures(base_losses, target)
    out: dict[str, dict[int, np.ndarray]] = {}
    for r in records:
        f = figures(r, target) if r["method"] is not None and r.get("target") in (None, target) else None
        if f is not None:
            out.setdefault(r["method"], {})[r["seed"]] = item_gains(base, f)
    return out


def paired_differences(
    records: list[dict],
    base_losses: Mapping,
    targets: list[str],
    raise_rows: Collection[str],
    best_static: Mapping[str, str | None],
    labels: Mapping[str, str] | None = None,
    initialisations: Mapping[str, str] | None = None,
) -> dict[str, dict]:
    """Per target: `vs_random` {method: interval of its gain - RAND's} for every row but RAND,
    and `vs_static` {RAISE row: interval of its gain - the best static selector's} when
    `best_static[target]` names a row. Rows are trained from their own seeds, so each difference
    is unpaired across seeds and paired across the held-out items (`difference_interval`): seed
    noise of both rows adds, item difficulty common to both cancels. `vs_init` {RAISE row: interval
    of its gain - its untrained initialisation's} for each row named in `initialisations`: the two
    rows start from the same policy per seed, so that difference is taken over the seeds both rows have,
    paired by seed (`seed_matched_difference`): what policy training adds. A trained row with fewer
    seeds than its initialisation is compared with those seeds of it only, not with its mean."""
    labels = labels or {}
    initialisations = initialisations or {}
    out: dict[str, dict] = {}
    for t in targets:
        by_method = seed_gains(records, base_losses, t)
        entry: dict = {"vs_random": {}, "vs_static": {}, "vs_init": {}, "best_static": best_static.get(t)}

        def diff(a: str, b: str) -> dict:
            ga = [by_method[a][s] for s in sorted(by_method[a])]
            gb = [by_method[b][s] for s in sorted(by_method[b])]
            d = difference_interval(ga, gb, paired=False, what=f"{labels.get(a, a)} - {labels.get(b, b)}")
            return {**d.as_dict(), "label": labels.get(a, a)}

        if "random" in by_method:
            entry["vs_random"] = {m: diff(m, "random") for m in by_method if m != "random"}
        ref = best_static.get(t)
        if ref in by_method:
            entry["vs_static"] = {m: diff(m, ref) for m in by_method if m in raise_rows}
        for m, init in initialisations.items():
            # the trained cell of seed s starts from the untrained cell of seed s: only those pairs
            shared = set(by_method.get(m, {})) & set(by_method.get(init, {}))
            if shared:
                what = f"{labels.get(m, m)} - {labels.get(init, init)}"
                pick = lambda rows: {s: rows[s] for s in shared}  # noqa: E731
                d = seed_matched_difference(pick(by_method[m]), pick(by_method[init]), what=what)
                entry["vs_init"][m] = {**d.as_dict(), "label": labels.get(m, m), "initialisation": init}
        out[t] = entry
    return out


def _interval_text(c: Mapping) -> str:
    return f"{c['mean'] if 'mean' in c else c['gain']:+.4f} [{c['low']:+.4f}, {c['high']:+.4f}]"


def differences_markdown(diffs: dict, targets: list[str], labels: Mapping[str, str], static_note: str) -> str:
    """The paired-differences tables: each row minus RAND, each RAISE row minus the best static selector."""
    lines = ["", "Paired differences of gains, 95% intervals (`*`: wholly above 0, both rows with seeds):", ""]
    lines += ["| row - RAND | " + " | ".join(targets) + " |", "|" + "---|" * (len(targets) + 1)]
    methods = list(dict.fromkeys(m for t in targets for m in diffs[t]["vs_random"]))

    def cell(d):
        if d is None:
            return "n/a"
        text = _interval_text(d)
        return f"**{text}** *" if d["seed_noise"] and d["low"] > 0 else text

    for m in methods:
        row = " | ".join(cell(diffs[t]["vs_random"].get(m)) for t in targets)
        lines.append(f"| {labels.get(m, m)} | {row} |")
    if not methods:
        lines.append("| (no RAND row, or no row beside it) |" + " n/a |" * len(targets))
    lines += ["", static_note, ""]
    raise_methods = list(dict.fromkeys(m for t in targets for m in diffs[t]["vs_static"]))
    best = {t: diffs[t]["best_static"] for t in targets}
    head = " | ".join(f"{t} (- {labels.get(best[t], best[t] or 'n/a')})" for t in targets)
    lines += [f"| RAISE row - best static | {head} |", "|" + "---|" * (len(targets) + 1)]
    for m in raise_methods:
        row = " | ".join(cell(diffs[t]["vs_static"].get(m)) for t in targets)
        lines.append(f"| {labels.get(m, m)} | {row} |")
    if not raise_methods:
        lines.append("| (no RAISE row, or no best static selector chosen on dev) |" + " n/a |" * len(targets))
    trained = list(dict.fromkeys(m for t in targets for m in diffs[t].get("vs_init", {})))
    if trained:
        lines += [
            "",
            "What policy training adds: each trained RAISE row minus its untrained initialisation "
            "(0 rounds), paired by seed over the seeds both have:",
            "",
        ]
        lines += ["| trained - untrained | " + " | ".join(targets) + " |", "|" + "---|" * (len(targets) + 1)]
        for m in trained:
            row = " | ".join(cell(diffs[t]["vs_init"].get(m)) for t in targets)
            lines.append(f"| {labels.get(m, m)} | {row} |")
    return "\n".join(lines) + "\n"


def gain_markdown(
    rows: dict[str, dict],
    base_losses: dict[str, object],
    targets: list[str],
    *,
    phi: float,
    phi_from: str,
    feat_seconds: float,
    pool_size: int,
    steps: int,
    budget: float,
    batch_size: int,
    heldout: object,
    readers: list[str],
    notes: list[str] = (),
    split: str | None = None,
) -> str:
    """The gain table (Markdown) and what it measured."""
    base = {t: _base_figures(base_losses, t) for t in targets}
    acc_targets = [t for t in targets if base[t].get("acc") is not None]
    head = (
        "| method | "
        + " | ".join(f"{t} gain [95% CI]" for t in targets)
        + "".join(f" | {t} acc (Δ)" for t in acc_targets)
        + " | seeds | distinct rows | counted Φ | Φ (seconds) | seconds |"
    )
    lines = [head, "|" + "---|" * (len(targets) + len(acc_targets) + 6)]
    lines.append(
        "| zero-shot | "
        + " | ".join(f"0 ({base[t]['metric']} {np.mean(base[t]['values']):.4f})" for t in targets)
        + "".join(f" | {100 * np.mean(base[t]['acc']):.1f}%" for t in acc_targets)
        + " | - | 0 | 0 | 0 | 0 |"
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
        for t in acc_targets:
            c = by_target.get(t)
            ok = c is not None and c.get("acc") is not None
            cells.append(f"{100 * c['acc']:.1f}% ({100 * c['acc_gain']:+.1f})" if ok else "n/a")
        any_cell = next(iter(by_target.values()))
        phi_txt = f"{any_cell['phi']:.2f}" if any_cell["phi"] is not None else "n/a"
        counted = f"{any_cell['phi_counted']:.2f}" if any_cell.get("phi_counted") is not None else "n/a"
        runs = max(c["runs"] for c in by_target.values())
        spans = [str(by_target[t].get("distinct_rows") or "n/a") if t in by_target else "-" for t in targets]
        distinct = spans[0] if len(set(spans)) == 1 else " / ".join(spans)
        lines.append(
            f"| {any_cell['label']} | "
            + " | ".join(cells)
            + f" | {runs} | {distinct} | {counted} | {phi_txt} | {any_cell['seconds']:.0f} |"
        )
    counted = ", ".join(readers) or "no method"
    if isinstance(heldout, Mapping):
        items = "; ".join(f"{t}: {n}" for t, n in heldout.items()) + " held-out items"
    else:
        items = f"{heldout} held-out items per target" if heldout else "all held-out items"
    metrics = "; ".join(f"{t}: {METRIC_NAMES.get(base[t]['metric'], base[t]['metric'])}" for t in targets)
    where = f" of the `{split}` split" if split else ""
    lines += [
        "",
        f"Held-out figure per target ({items}{where}): {metrics}. Gain = zero-shot figure - the row's on a "
        "loss or cross-entropy (lower is better), the row's - zero-shot's on accuracy: positive gain is better "
        "everywhere. Accuracy (Δ in points) comes from the same choice scoring. Intervals: one rule for every row, "
        "seed and item noise alike (docs/intervals.md); a 1-seed row has no seed noise estimate and gets no mark. "
        "`*`: interval wholly above RAND's.",
        f"Pool {pool_size} rows; budget {budget:g} -> {steps} matched steps of {batch_size}; the 100% row is its own "
        f"epochs over the pool. Distinct rows: the pool rows a cell trained on at least once (a range over the row's "
        f"cells; per target in column order where they differ). Counted Φ: the forward and backward token passes "
        "of the cell's own model calls (selection and training; featurizing and a prior's source cell aside) "
        f"over one epoch's (`experiments.costs`). Φ (seconds): seconds over one epoch's seconds, "
        f"Φ = {phi:.0f} s (from {phi_from}); "
        f"featurize (counted for {counted}) {feat_seconds:.0f} s; seconds are wall time on a shared machine. "
        "Targeted rows cost one selection per target; their cost is per target.",
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
    model (as in the gain table: base - the cell's mean figure on a loss) and the cell's cost in Φ (selection,
    policy training, fine-tuning, the featurize time and, for a prior taken from another cell,
    that cell's selection), so a setting's effect can be read seed by seed."""
    cells: dict[tuple[str, int], dict] = {}
    labels: dict[str, str] = {}
    for r in records:
        if r.get("runs") == "raise" and r["target"] in targets and figures(r, r["target"]) is not None:
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
                gain = float(np.mean(item_gains(_base_figures(base_losses, t), figures(r, t))))
                seconds = r["select_seconds"] + r["train_seconds"] + r.get("prior_seconds", 0.0) + feat_seconds
                parts.append(f"{gain:+.4f} ({seconds / phi:.2f})" if math.isfinite(phi) else f"{gain:+.4f}")
            lines.append(f"| {labels[m]} | {seed} | " + " | ".join(parts) + " |")
    return "\n".join(lines) + "\n"


def prior_markdown(records: list[dict], sources: dict, pool_ids: list[str], prior_from: dict[str, str | None]) -> str:
    """For the RAISE rows whose prior is another method's scores (`prior_from`): how close the
    rows a cell trained on stay to that method's own choice. Per cell: the share of its rows
    (with repeats) inside the source's selected rows, its distinct rows, and the mean
    percentile of its rows under the source's pool scores (1 = the top row; unscored rows
    rank lowest). `sources`: (source method, target, seed) -> the selection.json record of the
    cell the RAISE cell of that seed took its prior from ((source method, target) also read)."""
    from scipy.stats import rankdata

    pos = {i: k for k, i in enumerate(pool_ids)}
    lines = []
    for r in sorted(records, key=lambda r: (r["method"] or "", r["target"] or "", r["seed"])):
        source = prior_from.get(r["method"])
        sel = sources.get((source, r["target"], r.get("seed")), sources.get((source, r["target"])))
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


def plot_gains(rows: dict, targets: list[str], path, title: str = "") -> None:
    """One panel per target, the row labels once on a shared y axis: each row's gain with its
    95% interval (a dot and a bar; green: wholly above RAND's), RAND's interval shaded, zero
    marked; x ticks thinned so they never overlap; written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    from ..io import atomic_path

    methods = list(rows)
    labels = [next(iter(rows[m].values()))["label"] for m in methods]
    runs = [max(c["runs"] for c in rows[m].values()) for m in methods]
    labels = [f"{lab} ({n} seeds)" if n > 1 else f"{lab} (1 seed)" for lab, n in zip(labels, runs)]
    height = 0.32 * len(methods) + 1.6
    fig, axes = plt.subplots(
        1, len(targets), figsize=(3.0 + 4.0 * len(targets), height), sharey=True, squeeze=False, layout="constrained"
    )
    y = np.arange(len(methods))
    for ax, t in zip(axes[0], targets):
        if "random" in rows and t in rows["random"]:
            ax.axvspan(rows["random"][t]["low"], rows["random"][t]["high"], color="tab:gray", alpha=0.2, lw=0)
        ax.axvline(0, color="black", lw=0.8)
        metric = None
        for k, m in enumerate(methods):
            c = rows[m].get(t)
            if c is None:
                ax.text(0, k, "n/a", va="center", ha="center", fontsize=7, color="tab:gray")
                continue
            metric = c.get("metric", metric)
            color = "tab:green" if c["above_rand"] else ("dimgray" if m == "random" else "tab:blue")
            ax.plot([c["low"], c["high"]], [k, k], color=color, lw=2, solid_capstyle="butt")
            ax.plot([c["low"], c["low"]], [k - 0.2, k + 0.2], color=color, lw=1)
            ax.plot([c["high"], c["high"]], [k - 0.2, k + 0.2], color=color, lw=1)
            ax.plot([c["gain"]], [k], "o", color=color, ms=4)
        ax.xaxis.set_major_locator(MaxNLocator(nbins=4, prune=None))
        ax.tick_params(axis="x", labelsize=8)
        ax.grid(axis="x", color="0.9", lw=0.6)
        ax.set_title(t, fontsize=10)
        ax.set_xlabel(AXIS_NAMES.get(metric, f"gain on {metric}"), fontsize=8)
    axes[0][0].set_yticks(y, labels, fontsize=8)
    axes[0][0].set_ylim(len(methods) - 0.5, -0.5)
    fig.suptitle(
        (title + "\n" if title else "")
        + "gain over zero-shot, 95% interval (seeds and items); shaded: RAND's interval",
        fontsize=9,
    )
    with atomic_path(Path(path)) as tmp:
        fig.savefig(tmp, format="png", dpi=130)
    plt.close(fig)
