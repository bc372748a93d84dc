"""The real-data benchmark's extra tables, from a finished study with `targets`
(`configs/study_real_smollm2.yaml`): what each RAISE row's policy training cost per part, the
RAISE cells one by one, how close a RAISE row with another method's scores as its prior stays
to that method's choice, the on-topic share of the rows each method trained on, and the gain
plot. `benchmarks/bench_real.py` runs the study and writes these as `bench_real.{md,json,png}`.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from ..io import write_json_atomic, write_text_atomic
from ..reports.method_stats import chosen_ids
from ..reports.study import (
    ablation_markdown,
    cost_markdown,
    plot_gains,
    prior_markdown,
    raise_costs,
    topic_markdown,
    topic_shares,
)
from ..training.finetune import policy_training_episodes
from .methods import METHODS
from .study import Study

log = logging.getLogger(__name__)


def cell_facts(study: Study, record: dict) -> dict:
    """The record with what the extra tables read from its folder: the pool ids it trained on
    (`chosen`; a RAISE cell also `chosen_by_policy`, its policy's own batches) and, for RAISE,
    the seconds of each policy-training episode."""
    folder = study.store.dir(record["name"])
    kind = "raise" if record.get("runs") == "raise" else record["method"]
    out = dict(record)
    if record["method"] not in (None, "full"):
        out["chosen"] = chosen_ids(folder, kind, study.pool)
    if kind == "raise":
        out["chosen_by_policy"] = chosen_ids(folder, "raise", study.pool, policy_only=True)
        out["policy_episodes"] = policy_training_episodes(folder / "train_policy" / "metrics.jsonl") or None
    return out


def bench_tables(study: Study, result: dict) -> dict:
    """The gain table of `result` (`Study.run`) followed by the extra tables; writes
    `bench_real.md`, `bench_real.json` and (with a finished row) `bench_real.png` in the study folder."""
    cfg = study.cfg
    if not cfg.targets or result["gains"] is None:
        raise ValueError("the benchmark's tables need a study with targets")
    records = [cell_facts(study, r) for r in result["records"]]
    base = next(r for r in records if r["method"] is None)
    base_losses = {t: base["heldout"][t] for t in cfg.targets}
    phi, rows = result["phi"], result["gains"]
    feat_seconds = study.features_seconds()
    prior_from = {name: m.prior_from for name, m in METHODS.items()}
    sources = {}  # (source method, target, seed): the selection of the cell a RAISE cell took its prior from
    for r in records:
        source = prior_from.get(r["method"])
        if source and (source, r["target"], r["seed"]) not in sources:
            path = study.store.dir(study._prior_cell_for(r["method"], r["target"], r["seed"]).name) / "selection.json"
            if path.is_file():
                sources[(source, r["target"], r["seed"])] = json.loads(path.read_text(encoding="utf-8"))
    costs = raise_costs(records, phi)
    topics = topic_shares(records, study.pool, cfg.targets)
    labels = {m: next(iter(by_target.values()))["label"] for m, by_target in rows.items()}
    md = (
        result["paths"]["gains_md"].read_text(encoding="utf-8")
        + cost_markdown(costs, prior_from)
        + ablation_markdown(records, base_losses, cfg.targets, phi, feat_seconds)
        + prior_markdown(records, sources, list(study.pool.ids), prior_from)
        + topic_markdown(topics, cfg.targets, labels)
    )
    out = Path(cfg.out)
    summary = {
        "phi_seconds": phi,
        "featurize_seconds": feat_seconds,
        "rows": rows,
        "topics": topics,
        "raise_costs": costs,
        "markdown": md,
    }
    write_json_atomic(out / "bench_real.json", summary)
    write_text_atomic(out / "bench_real.md", md)
    if rows:
        title = f"{Path(study.model).name}, pool {len(study.pool)}, {study.steps} steps, {cfg.heldout_split} split"
        plot_gains(rows, cfg.targets, out / "bench_real.png", title=title)
    return summary
