"""Per-method figures beside the Table 1 layout: what each method chose and what it cost.

- **math share**: the share of the rows a method trained on (each counted as often as it was
  in a batch) that `data.quantitative.is_quantitative` labels math or quantitative
  reasoning; the pool's base rate is printed with it.
- **cost in Φ**: Φ is the wall time of the 100% row's training per epoch of the pool,
  `train seconds(100%) x ceil(N / B) / steps(100%)` (`raise_select.costs`; the 100% row may be
  capped below its epochs; its time per step is what is scaled). A method's cost is its
  cell's selection and training seconds (scoring, judging, gradients, RAISE's policy
  training and fine-tuning, a prior taken from another cell's selection) plus, for methods
  that read the featurized pool, the time of featurizing it (counted in full for each of
  them: the table compares methods alone).
- **loss**: the mean response loss of each cell's model on a held-out set (`loss_set`),
  e.g. GSM8K test solutions, averaged over a row's cells as the scores are; a row of
  several seeds (RAND, RAISE with `raise_seeds`) also lists each seed's loss, and the note
  counts the RAISE seeds whose loss is below the RAND mean and below every RAND seed.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Collection, Sequence

from ..costs import phi_seconds
from ..data.pools import Pool
from ..data.quantitative import is_quantitative, quantitative_share
from ..markdown import markdown_table
from ..training.export import read_selections


def chosen_ids(cell_dir: Path, method: str | None, pool: Pool, policy_only: bool = False) -> list[str] | None:
    """The pool ids a cell trained on, once per time it was in a batch; None when unknown.

    policy_only: for RAISE, only the batches the policy chose, leaving out the uniformly random
    batches between its choices (`--select-every M`, appendix F)."""
    if method is None:
        return []
    if method == "full":
        return list(pool.ids)
    if method == "raise":
        log = cell_dir / "finetune" / "selections.jsonl"
        if not log.is_file():
            return None
        # a redone step: the later line wins; a last line cut short by a crash is dropped
        recs = read_selections(log, allow_empty=True)
        return [i for rec in recs if not (policy_only and rec.get("random")) for i in rec["ids"]]
    sel = cell_dir / "selection.json"
    if not sel.is_file():
        return None
    return list(json.loads(sel.read_text(encoding="utf-8"))["ids"])


def method_stats(
    records: Sequence[dict],
    cells_dir: Path,
    pool: Pool,
    batch_size: int,
    features_seconds: float,
    feature_readers: Collection[str],
) -> dict:
    """Per row label: loss, math share, wall seconds and cost in Φ (means over a row's cells);
    `feature_readers` are the methods that read the featurized pool (their cost includes it)."""
    labels = {e.id: is_quantitative(e) for e in pool.examples}
    base_rate = quantitative_share(pool.ids, labels)
    full = next((r for r in records if r.get("method") == "full" and r.get("train_seconds") is not None), None)
    phi = math.nan
    if full is not None:  # the steps the 100% row trained: its record's, else its selection record's
        steps = (
            full.get("steps") or json.loads((cells_dir / full["name"] / "selection.json").read_text("utf-8"))["steps"]
        )
        phi = phi_seconds(train_seconds=full["train_seconds"], steps=steps, pool_size=len(pool), batch_size=batch_size)
    rows: dict[str, dict[str, list[float]]] = {}
    for r in records:
        acc = rows.setdefault(r["row"], {"loss": [], "share": [], "seconds": [], "seeds": []})
        if r.get("loss") is not None:
            acc["loss"].append(r["loss"])
            acc["seeds"].append(r.get("seed"))
        kind = "raise" if r.get("runs") == "raise" else r.get("method")  # RAISE presets log as RAISE
        ids = chosen_ids(cells_dir / r["name"], kind, pool)
        if ids:
            acc["share"].append(quantitative_share(ids, labels))
        if r.get("train_seconds") is not None and r.get("method") is not None:
            extra = features_seconds if r["method"] in feature_readers else 0.0
            parts = (r.get("select_seconds") or 0.0) + r["train_seconds"] + (r.get("prior_seconds") or 0.0)
            acc["seconds"].append(parts + extra)
    mean = lambda xs: sum(xs) / len(xs) if xs else None  # noqa: E731
    known = not math.isnan(phi) and phi > 0
    out = {}
    for label, acc in rows.items():
        seconds = mean(acc["seconds"])
        out[label] = {
            "loss": mean(acc["loss"]),
            "math_share": mean(acc["share"]),
            "seconds": seconds,
            "cost_phi": seconds / phi if known and seconds is not None else None,
            "loss_per_seed": dict(zip(acc["seeds"], acc["loss"])),
        }
    # None, not NaN, where a figure does not apply: the JSON output stays standard JSON.
    return {
        "rows": out,
        "phi_seconds": phi if known else None,
        "pool_math_share": base_rate,
        "features_seconds": features_seconds,
    }


def stats_markdown(stats: dict, loss_name: str | None) -> str:
    """The per-method table and the line that defines its columns."""
    fmt = lambda x, spec: "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)  # noqa: E731
    header = ["DATA", *([f"{loss_name} loss", "per seed"] if loss_name else []), "math share", "wall s", "cost (Φ)"]
    share = lambda x: "n/a" if x is None else f"{100 * x:.1f}%"  # noqa: E731

    def per_seed(s: dict) -> str:
        seeds = s.get("loss_per_seed") or {}
        return ", ".join(f"s{k}: {v:.4f}" for k, v in seeds.items()) if len(seeds) > 1 else ""

    rows = [
        [
            label,
            *([fmt(s["loss"], ".4f"), per_seed(s)] if loss_name else []),
            share(s["math_share"]),
            fmt(s["seconds"], ".0f"),
            fmt(s["cost_phi"], ".2f"),
        ]
        for label, s in stats["rows"].items()
    ]
    note = (
        f"\nPool math/quantitative base rate: {100 * stats['pool_math_share']:.1f}% "
        f"(rule: `raise_select.data.quantitative`). Φ = {fmt(stats['phi_seconds'], '.1f')} s "
        f"(100% row's training per epoch of the pool); featurizing took {stats['features_seconds']:.0f} s and is "
        "included in the cost of every method that reads the features.\n"
    )
    versus = seeds_versus_random(stats["rows"].get("RAISE"), stats["rows"].get("RAND")) if loss_name else None
    if versus:
        note += versus + "\n"
    return markdown_table(header, rows) + note


def seeds_versus_random(raise_row: dict | None, rand_row: dict | None) -> str | None:
    """How many RAISE seeds have a held-out loss below the RAND mean, and below every RAND seed."""
    if not raise_row or not rand_row or not raise_row.get("loss_per_seed") or not rand_row.get("loss_per_seed"):
        return None
    ours, rand = list(raise_row["loss_per_seed"].values()), list(rand_row["loss_per_seed"].values())
    below_mean = sum(x < sum(rand) / len(rand) for x in ours)
    below_all = sum(x < min(rand) for x in ours)
    return (
        f"RAISE's held-out loss is below the RAND mean on {below_mean} of {len(ours)} seed(s) and below "
        f"every RAND seed ({len(rand)}) on {below_all} of {len(ours)}."
    )
