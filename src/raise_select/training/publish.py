"""A selection as a folder to publish or to train on elsewhere (`raise-select select --out DIR`,
`raise-select baseline --export DIR`).

Two layouts, both with the same dataset card (`README.md`) and `scores.parquet`:

- `datasets` (the default): the chosen rows, in order, as a `datasets.Dataset` written with
  `save_to_disk` (`load_from_disk(DIR)` reads it; `push_to_hub` publishes it); each row is a
  record of the output format plus what the method said about it (`times_selected` and
  `steps` for RAISE and the online and schedule methods, `score` and `rank` for static ones).
- `llamafactory`: `data.json` (alpaca records for an alpaca pool, sharegpt conversations
  otherwise) and a `dataset_info.json` entry that LLaMA-Factory reads as it is
  (`dataset_dir: DIR`, `dataset: <name>`).

`scores.parquet` has one row per pool row: `index`, `id`, `chosen`, `rank` (order of first
choice, null when not chosen), `class` (the feature table's, when known), and `score`
(static scoring methods: every pool row's score, null where it has none) or
`times_selected` and `steps` (the per-step choices).

The card's YAML header holds the same facts for machines (`raise_select:` section): method
and settings, pool source, fingerprint and size, budget, share per class, the command that
made the folder, the package version.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from ..data.pools import FORMATS, Pool, to_format
from ..errors import UserError

PUBLISH_FORMATS = (*FORMATS, "llamafactory")
DATA_FILE = "data.json"  # llamafactory layout
CARD_FILE = "README.md"
SCORES_FILE = "scores.parquet"


@dataclass
class Chosen:
    """What a selection chose, read from a run's selection log or a baseline's selection.json."""

    method: str
    rows: list[int]  # pool rows, in order of first choice (static: the method's order)
    settings: dict  # the run's settings (config.yaml, or the baseline's options)
    budget: dict  # how much was chosen: rows, steps, batch size, fraction of the pool
    steps: dict[int, list[int]] | None = None  # row -> steps that chose it (RAISE, online, schedules)
    scores: dict[int, float] | None = None  # row -> the method's score of a chosen row (static)
    pool_scores: list[float | None] | None = None  # every pool row's score (static scoring methods)
    source: str = ""  # the log or selection.json read


def from_steps(
    method: str,
    pool: Pool,
    step_ids: list[tuple[int, list[str]]],
    settings: dict,
    source: str,
    batch_size: int | None = None,
) -> Chosen:
    """A per-step selection: (step, ids chosen at it) pairs, ascending steps."""
    index = {e.id: i for i, e in enumerate(pool.examples)}
    steps: dict[int, list[int]] = {}
    for step, ids in step_ids:
        for ex_id in ids:
            steps.setdefault(index[ex_id], []).append(step)
    total = sum(len(s) for s in steps.values())
    budget = {
        "rows": len(steps),
        "selections": total,
        "steps": len(step_ids),
        "batch_size": batch_size or (max(len(ids) for _, ids in step_ids) if step_ids else 0),
        "fraction_of_pool": round(len(steps) / len(pool), 6) if len(pool) else 0.0,
    }
    return Chosen(method, list(steps), settings, budget, steps=steps, source=source)


def from_baseline(pool: Pool, record: dict, source: str) -> Chosen:
    """A baseline's `selection.json`: a static subset, or a schedule of batches (`dynamic`)."""
    if record.get("pool_size") != len(pool) or any(
        pool.examples[i].id != ex_id for i, ex_id in zip(record["indices"], record["ids"])
    ):
        raise UserError(
            f"{source}: its rows are not those of the pool given ({len(pool)} rows); "
            "pass the pool the baseline ran on with --pool"
        )
    settings = {
        "options": record.get("options", {}),
        "seed": record.get("seed"),
        "epochs": record.get("epochs"),
        **{k: record[k] for k in ("pool", "features", "limit") if record.get(k) is not None},
    }
    if record.get("dynamic"):
        b = int(record["batch_size"])
        idx = record["indices"]
        step_ids = [
            (t + 1, [pool.examples[i].id for i in idx[t * b : (t + 1) * b]]) for t in range((len(idx) + b - 1) // b)
        ]
        chosen = from_steps(record["method"], pool, step_ids, settings, source, b)
        chosen.budget.update(budget=record.get("budget"), budget_count=record.get("budget_count"))
        return chosen
    rows = [int(i) for i in record["indices"]]
    scores = dict(zip(rows, record["scores"])) if record.get("scores") is not None else None
    budget = {
        "rows": len(rows),
        "budget": record.get("budget"),
        "budget_count": record.get("budget_count"),
        "fraction_of_pool": round(len(rows) / len(pool), 6) if len(pool) else 0.0,
        "training_steps": record.get("steps"),
        "batch_size": record.get("batch_size"),
    }
    return Chosen(
        record["method"], rows, settings, budget, scores=scores, pool_scores=record.get("pool_scores"), source=source
    )


BASELINE_FILE = "selection.json"


def baseline_record(run: str | Path) -> tuple[Path, dict] | None:
    """(path, record) of a baseline output folder's `selection.json`; None for other runs."""
    path = Path(run) / BASELINE_FILE if Path(run).is_dir() else Path(run)
    if path.name != BASELINE_FILE or not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: damaged ({e}); run the baseline again") from None
    missing = [k for k in ("method", "indices", "ids", "pool_size", "batch_size") if k not in record]
    if missing:
        raise UserError(f"{path}, field '{missing[0]}': missing; run the baseline again")
    return path, record


def chosen_from_run(pool: Pool, run: str | Path, include_random: bool = True, round: int | None = None) -> Chosen:
    """What a run chose: a baseline folder (or its selection.json), a finetune run, or one
    round of a train-policy run (see `export.selections_path`)."""
    from ..config import read_yaml
    from .export import check_ids, read_selections, selections_path

    found = baseline_record(run)
    if found is not None:
        if round is not None:
            raise UserError(f"--round {round}: {run} is a baseline's output, which has no rounds")
        return from_baseline(pool, found[1], str(found[0]))
    path = selections_path(run, round)
    log = read_selections(path)
    check_ids(pool, log, path)
    config = next((c for c in (path.parent / "config.yaml", path.parent.parent / "config.yaml") if c.is_file()), None)
    settings = read_yaml(config) if config is not None else {}
    step_ids = [(r["step"], r["ids"]) for r in log if include_random or not r.get("random")]
    chosen = from_steps("raise", pool, step_ids, settings, str(path))
    chosen.budget["random_steps"] = sum(bool(r.get("random")) for r in log)
    chosen.budget["random_steps_counted"] = include_random
    return chosen


def pool_classes(pool: Pool, features: str | None) -> np.ndarray | None:
    """Each pool row's class from its feature table, when one is given and can be read."""
    if not features or not Path(features).exists():
        return None
    from ..features.table import FeatureTable

    return FeatureTable.read(features).align(pool.ids).cluster


def scores_table(pool: Pool, chosen: Chosen, classes: np.ndarray | None):
    """One row per pool row (see the module's doc)."""
    import pyarrow as pa

    n = len(pool)
    rank = np.full(n, -1, dtype=np.int64)
    rank[chosen.rows] = np.arange(len(chosen.rows))
    columns = {
        "index": pa.array(np.arange(n, dtype=np.int64)),
        "id": pa.array(pool.ids, pa.string()),
        "chosen": pa.array(rank >= 0),
        "rank": pa.array(rank, mask=rank < 0),
    }
    if classes is not None:
        columns["class"] = pa.array(np.asarray(classes, dtype=np.int64))
    if chosen.steps is not None:
        columns["times_selected"] = pa.array([len(chosen.steps.get(i, ())) for i in range(n)], pa.int64())
        columns["steps"] = pa.array([chosen.steps.get(i, []) for i in range(n)], pa.list_(pa.int64()))
    else:
        if chosen.pool_scores is not None:
            values = chosen.pool_scores
        elif chosen.scores is not None:  # an older selection.json: the chosen rows' scores only
            values = [chosen.scores.get(i) for i in range(n)]
        else:
            values = [None] * n
        columns["score"] = pa.array(values, pa.float64())
    return pa.table(columns)


def class_shares(chosen: Chosen, classes: np.ndarray | None) -> list[dict] | None:
    if classes is None:
        return None
    counts = np.bincount(np.asarray(classes)[chosen.rows], minlength=int(classes.max()) + 1) if len(classes) else []
    base = np.bincount(classes, minlength=len(counts))
    total = max(len(chosen.rows), 1)
    return [
        {
            "class": c,
            "rows": int(counts[c]),
            "share": round(float(counts[c]) / total, 6),
            "pool_share": round(float(base[c]) / len(classes), 6),
        }
        for c in range(len(counts))
    ]


def card(pool: Pool, chosen: Chosen, layout: str, fmt: str, shares: list[dict] | None, command: str) -> str:
    from .. import __version__

    facts = {
        "method": chosen.method,
        "settings": chosen.settings,
        "pool": {
            "source": [str(s) for s in pool.sources],
            "format": pool.format,
            "fingerprint": pool.fingerprint,
            "size": len(pool),
        },
        "budget": chosen.budget,
        "class_shares": shares,
        "layout": layout,
        "format": fmt,
        "selection_source": chosen.source,
        "command": command,
        "raise_select_version": __version__,
    }
    header = yaml.safe_dump(
        {
            "tags": ["raise-select", "instruction-tuning", "data-selection"],
            "raise_select": json.loads(json.dumps(facts, default=str)),
        },
        sort_keys=False,
        width=10_000,
    )
    kind = (
        "per-step choices (`times_selected`, `steps`)"
        if chosen.steps is not None
        else "the method's score of every pool row (`score`; null where the method gives none)"
    )
    lines = [
        "---",
        header.rstrip(),
        "---",
        "",
        f"# {chosen.method} selection of {len(chosen.rows)} rows from a pool of {len(pool)}",
        "",
        f"Chosen by `{chosen.method}` with raise-select {__version__}, from `{chosen.source}`.",
        "",
        "| | |",
        "|---|---|",
        f"| pool | {', '.join(f'`{s}`' for s in pool.sources) or 'given in memory'} "
        f"({pool.format}, {len(pool)} rows) |",
        f"| pool fingerprint | `{pool.fingerprint}` |",
        *(f"| {k.replace('_', ' ')} | {v} |" for k, v in chosen.budget.items() if v is not None),
        f"| rows here | {len(chosen.rows)}, in order of first choice ({fmt} records) |",
        f"| made by | `{command}` |",
        "",
        "## Settings",
        "",
        "```yaml",
        yaml.safe_dump(json.loads(json.dumps(chosen.settings, default=str)), sort_keys=False).rstrip(),
        "```",
        "",
        "## Share per class",
        "",
    ]
    if shares is None:
        lines += ["No feature table was given, so the rows' classes are not known.", ""]
    else:
        lines += [
            "| class | rows | share | share of the pool |",
            "|---|---|---|---|",
            *(f"| {s['class']} | {s['rows']} | {s['share']:.3f} | {s['pool_share']:.3f} |" for s in shares),
            "",
        ]
    lines += [
        f"`{SCORES_FILE}` holds every pool row (`index`, `id`, `chosen`, `rank`, `class` when known) with {kind}.",
        "",
    ]
    if layout == "llamafactory":
        lines += [
            "## Train with LLaMA-Factory",
            "",
            "`dataset_info.json` names this subset; in the training YAML set "
            f"`dataset_dir: <this folder>` and `dataset: {llamafactory_name(chosen)}`.",
            "",
        ]
    else:
        lines += [
            "## Load",
            "",
            "```python",
            "from datasets import load_from_disk",
            "subset = load_from_disk('<this folder>')",
            "```",
            "",
        ]
    return "\n".join(lines)


def llamafactory_name(chosen: Chosen) -> str:
    return f"raise_select_{chosen.method}".replace("-", "_")


def llamafactory_entry(fmt: str) -> dict:
    """The `dataset_info.json` entry of `data.json` (LLaMA-Factory's data/README.md)."""
    if fmt == "alpaca":
        return {
            "file_name": DATA_FILE,
            "formatting": "alpaca",
            "columns": {"prompt": "instruction", "query": "input", "response": "output"},
        }
    return {
        "file_name": DATA_FILE,
        "formatting": "sharegpt",
        "columns": {"messages": "conversations"},
        "tags": {
            "role_tag": "from",
            "content_tag": "value",
            "user_tag": "human",
            "assistant_tag": "gpt",
            "system_tag": "system",
        },
    }


def publish(
    pool: Pool, chosen: Chosen, out: str | Path, command: str, fmt: str | None = None, features: str | None = None
) -> Path:
    """Write the folder `out` (replaced as a whole once complete). `command` is the command
    line that made it (`config.command_line`); `fmt`: a record format (a `datasets` folder in
    it; default the pool's) or `llamafactory`."""
    from datasets import Dataset

    out = Path(out)
    fmt = fmt or pool.format
    if fmt not in PUBLISH_FORMATS:
        raise UserError(f"unknown output format '{fmt}'; available: {', '.join(PUBLISH_FORMATS)}")
    if not chosen.rows:
        raise UserError(f"{chosen.source}: the selection chose no rows; nothing to publish")
    if out.exists() and any(out.iterdir()) and not (out / SCORES_FILE).is_file():
        raise UserError(f"--out {out}: exists and holds other files; give a new folder (an earlier export is replaced)")
    layout = "llamafactory" if fmt == "llamafactory" else "datasets"
    record_fmt = ("alpaca" if pool.format == "alpaca" else "sharegpt") if layout == "llamafactory" else fmt
    classes = pool_classes(pool, features or chosen.settings.get("features"))
    tmp = out.parent / f".{out.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    records = [to_format(pool.examples[i], record_fmt) for i in chosen.rows]
    if layout == "llamafactory":
        tmp.mkdir(parents=True)
        (tmp / DATA_FILE).write_text(json.dumps(records, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
        (tmp / "dataset_info.json").write_text(
            json.dumps({llamafactory_name(chosen): llamafactory_entry(record_fmt)}, indent=2) + "\n", encoding="utf-8"
        )
    else:
        for rank, (row, rec) in enumerate(zip(chosen.rows, records)):
            rec["id"] = pool.examples[row].id
            if chosen.steps is not None:
                rec["times_selected"] = len(chosen.steps[row])
                rec["steps"] = chosen.steps[row]
            else:
                rec["rank"] = rank
                rec["score"] = None if chosen.scores is None else chosen.scores.get(row)
        Dataset.from_list(records).save_to_disk(str(tmp))
    import pyarrow.parquet as pq

    pq.write_table(scores_table(pool, chosen, classes), tmp / SCORES_FILE)
    (tmp / CARD_FILE).write_text(
        card(pool, chosen, layout, record_fmt, class_shares(chosen, classes), command), encoding="utf-8"
    )
    old = out.parent / f".{out.name}.old"
    shutil.rmtree(old, ignore_errors=True)
    if out.exists():
        out.rename(old)
    tmp.rename(out)
    shutil.rmtree(old, ignore_errors=True)
    return out
