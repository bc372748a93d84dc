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
`times_selected` and `steps` (the per-step choices). A static method that draws with
replacement (TSDS) lists each drawn row once, with `times_drawn` in the rows and in
`scores.parquet` (0 for a row not drawn); its card counts distinct rows and the draws.

Records hold the whole row that was scored (`export.export_records`: an Alpaca `system`, a
conversation's earlier exchanges as `history`). The folder is built in a temporary folder of
its own inside `DIR` (`tempfile.mkdtemp`), under the output lock every command takes
(`io.lock_output`), and its files are then moved into `DIR` one by one. `DIR/.raise-select-export.json`
lists the files the export wrote: a later export into `DIR` replaces and removes only those,
so a file a user added stays; a folder holding other files and no such list is refused
before any work (`check_target`).

The card's YAML header holds the same facts for machines (`raise_select:` section): method
and settings, pool source, fingerprint and size, budget, share per class, the command that
made the folder, the package version.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from ..data.pools import FORMATS, Pool
from ..errors import UserError
from ..io import LOCK_FILE, lock_output, write_json_atomic

PUBLISH_FORMATS = (*FORMATS, "llamafactory")
DATA_FILE = "data.json"  # llamafactory layout
CARD_FILE = "README.md"
SCORES_FILE = "scores.parquet"
MANIFEST_FILE = ".raise-select-export.json"  # the files an export wrote into its folder
# What an export written before the manifest existed leaves (save_to_disk's files and ours).
EARLIER_EXPORT_FILES = (CARD_FILE, SCORES_FILE, DATA_FILE, "dataset_info.json", "state.json", "data-*.arrow")


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
    draws: dict[int, int] | None = None  # row -> times drawn (static methods drawing with replacement)


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


def _number_list(value, length: int | None) -> bool:
    return (
        isinstance(value, list)
        and (length is None or len(value) == length)
        and all(v is None or (isinstance(v, (int, float)) and not isinstance(v, bool)) for v in value)
    )


def check_baseline_record(pool: Pool, record: dict, source: str) -> None:
    """Refuse a `selection.json` that does not describe this pool, or that was edited into
    something no baseline writes, in one line naming the field."""
    n = len(pool)
    if record.get("pool_size") != n:
        raise UserError(
            f"{source}: its rows are not those of the pool given ({len(pool)} rows); "
            "pass the pool the baseline ran on with --pool"
        )
    if record.get("pool_fingerprint") not in (None, pool.fingerprint):
        raise UserError(
            f"{source}, field 'pool_fingerprint': the pool given ({', '.join(pool.sources) or 'in memory'}) has the "
            "same size but other rows or another order than the pool the baseline ran on (another fingerprint); "
            "pass that pool with --pool"
        )
    indices, ids = record.get("indices"), record.get("ids")
    if not isinstance(indices, list):
        raise UserError(f"{source}, field 'indices': expected a list of pool row numbers; run the baseline again")
    for k, i in enumerate(indices):
        if not isinstance(i, int) or isinstance(i, bool):
            raise UserError(f"{source}, field 'indices', item {k}: {i!r} is not a pool row number")
        if not 0 <= i < n:
            raise UserError(f"{source}, field 'indices', item {k}: row {i} is past the pool's end ({n} rows)")
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise UserError(f"{source}, field 'ids': expected a list of example ids; run the baseline again")
    if len(ids) != len(indices):
        raise UserError(
            f"{source}: {len(indices)} indices but {len(ids)} ids (fields 'indices' and 'ids' name the same rows); "
            "run the baseline again"
        )
    if any(pool.examples[i].id != ex_id for i, ex_id in zip(indices, ids)):
        raise UserError(
            f"{source}: its rows are not those of the pool given ({len(pool)} rows); "
            "pass the pool the baseline ran on with --pool"
        )
    if record.get("scores") is not None and not _number_list(record["scores"], len(indices)):
        got = len(record["scores"]) if isinstance(record["scores"], list) else None
        raise UserError(
            f"{source}, field 'scores': expected one number per index ({len(indices)} indices), got "
            + (f"{got} value{'s' if got != 1 else ''}" if got is not None else type(record["scores"]).__name__)
        )
    if record.get("pool_scores") is not None and not _number_list(record["pool_scores"], n):
        got = len(record["pool_scores"]) if isinstance(record["pool_scores"], list) else None
        raise UserError(
            f"{source}, field 'pool_scores': expected one number (or null) per pool row ({n} rows), got "
            + (f"{got} value{'s' if got != 1 else ''}" if got is not None else type(record["pool_scores"]).__name__)
        )
    b = record.get("batch_size")
    if record.get("dynamic") and (not isinstance(b, int) or isinstance(b, bool) or b < 1):
        raise UserError(f"{source}, field 'batch_size': {b!r}; a schedule needs a batch size of at least 1")


def from_baseline(pool: Pool, record: dict, source: str) -> Chosen:
    """A baseline's `selection.json`: a static subset, or a schedule of batches (`dynamic`)."""
    check_baseline_record(pool, record, source)
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
    drawn = [int(i) for i in record["indices"]]
    rows = list(dict.fromkeys(drawn))  # a row drawn twice (sampling with replacement) once, at its first draw
    draws = dict(Counter(drawn)) if len(rows) < len(drawn) else None
    scores = dict(zip(drawn, record["scores"])) if record.get("scores") is not None else None
    budget = {
        "rows": len(rows),
        **({"draws": len(drawn)} if draws is not None else {}),
        "budget": record.get("budget"),
        "budget_count": record.get("budget_count"),
        "fraction_of_pool": round(len(rows) / len(pool), 6) if len(pool) else 0.0,
        "training_steps": record.get("steps"),
        "batch_size": record.get("batch_size"),
    }
    return Chosen(
        record["method"],
        rows,
        settings,
        budget,
        scores=scores,
        pool_scores=record.get("pool_scores"),
        source=source,
        draws=draws,
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
        if chosen.draws is not None:
            columns["times_drawn"] = pa.array([chosen.draws.get(i, 0) for i in range(n)], pa.int64())
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


def card(
    pool: Pool, chosen: Chosen, layout: str, fmt: str, shares: list[dict] | None, command: str, multi_turn: int = 0
) -> str:
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
        "multi_turn_rows": multi_turn,
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
        f"| rows here | {len(chosen.rows)}, in order of first choice ({fmt} records"
        + (", each once with `times_drawn`" if chosen.draws is not None else "")
        + ") |",
        *(
            [f"| multi-turn rows | {multi_turn}: their earlier exchanges are in `history` ([prompt, response] pairs) |"]
            if multi_turn
            else []
        ),
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


def llamafactory_entry(fmt: str, fields: tuple[str, ...] = ()) -> dict:
    """The `dataset_info.json` entry of `data.json` (LLaMA-Factory's data/README.md); `fields`:
    the records' `system` and `history` columns, where they have them."""
    if fmt == "alpaca":
        return {
            "file_name": DATA_FILE,
            "formatting": "alpaca",
            "columns": {
                "prompt": "instruction",
                "query": "input",
                "response": "output",
                **{f: f for f in ("system", "history") if f in fields},
            },
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


def _ours(out: Path) -> set[str] | None:
    """The names an earlier export wrote into `out` (its manifest; for an export made before
    manifests, the names exports write); None when `out` holds no export."""
    manifest = out / MANIFEST_FILE
    if manifest.is_file():
        try:
            files = json.loads(manifest.read_text(encoding="utf-8"))["files"]
            if isinstance(files, list) and all(isinstance(f, str) and "/" not in f for f in files):
                return set(files)
        except (ValueError, KeyError, TypeError, UnicodeDecodeError):
            pass
        raise UserError(f"{manifest}: damaged; remove it and the files of the earlier export, or choose another --out")
    if (out / SCORES_FILE).is_file() and (out / CARD_FILE).is_file():
        return {p.name for pattern in EARLIER_EXPORT_FILES for p in out.glob(pattern) if p.is_file()}
    return None


TEMPORARY = (".export-", ".tmp")  # prefix and suffix of an export's temporary folder inside its output


def _is_temporary(path: Path) -> bool:
    return path.name.startswith(TEMPORARY[0]) and path.name.endswith(TEMPORARY[1]) and path.is_dir()


def check_target(out: str | Path, flag: str = "--out") -> None:
    """Refuse, before any work, an export folder that holds files no export wrote (an empty or
    new folder, or an earlier export, is fine: see the module's doc)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"{flag} {out}: exists and is a file; give a folder (new or existing) for the export")
    names = {p.name for p in out.iterdir() if p.name != LOCK_FILE and not _is_temporary(p)} if out.is_dir() else set()
    if names and _ours(out) is None:
        raise UserError(
            f"{flag} {out}: exists and holds other files ({', '.join(sorted(names)[:3])}"
            f"{', ...' if len(names) > 3 else ''}); give a new or empty folder (an earlier export is replaced)"
        )


def publish(
    pool: Pool,
    chosen: Chosen,
    out: str | Path,
    command: str,
    fmt: str | None = None,
    features: str | None = None,
    flag: str = "--out",
) -> Path:
    """Write the export folder `out` (see the module's doc). `command` is the command line
    that made it (`config.command_line`); `fmt`: a record format (a `datasets` folder in it;
    default the pool's) or `llamafactory`. Holds `out`'s output lock until the command ends."""
    from datasets import Dataset

    from .export import export_records

    out = Path(out)
    fmt = fmt or pool.format
    if fmt not in PUBLISH_FORMATS:
        raise UserError(f"unknown output format '{fmt}'; available: {', '.join(PUBLISH_FORMATS)}")
    if not chosen.rows:
        raise UserError(f"{chosen.source}: the selection chose no rows; nothing to publish")
    check_target(out, flag)
    layout = "llamafactory" if fmt == "llamafactory" else "datasets"
    record_fmt = ("alpaca" if pool.format == "alpaca" else "sharegpt") if layout == "llamafactory" else fmt
    classes = pool_classes(pool, features or chosen.settings.get("features"))
    records, multi_turn = export_records([pool.examples[i] for i in chosen.rows], record_fmt)
    # A second export into `out` is refused from here on; the lock ends with the command.
    lock_output(out, f"{command.split()[1] if len(command.split()) > 1 else 'select'} (export)", flag)
    check_target(out, flag)  # again, under the lock
    out.mkdir(parents=True, exist_ok=True)
    for stale in [p for p in out.iterdir() if _is_temporary(p)]:  # left by a killed export (none runs now)
        shutil.rmtree(stale, ignore_errors=True)
    previous = _ours(out) or set()
    tmp = Path(tempfile.mkdtemp(prefix=TEMPORARY[0], suffix=TEMPORARY[1], dir=out))
    try:
        if layout == "llamafactory":
            (tmp / DATA_FILE).write_text(json.dumps(records, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
            (tmp / "dataset_info.json").write_text(
                json.dumps({llamafactory_name(chosen): llamafactory_entry(record_fmt, tuple(records[0]))}, indent=2)
                + "\n",
                encoding="utf-8",
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
                    if chosen.draws is not None:
                        rec["times_drawn"] = chosen.draws[row]
            Dataset.from_list(records).save_to_disk(str(tmp / "dataset"))
            for path in (tmp / "dataset").iterdir():
                path.rename(tmp / path.name)
            (tmp / "dataset").rmdir()
        import pyarrow.parquet as pq

        pq.write_table(scores_table(pool, chosen, classes), tmp / SCORES_FILE)
        (tmp / CARD_FILE).write_text(
            card(pool, chosen, layout, record_fmt, class_shares(chosen, classes), command, multi_turn),
            encoding="utf-8",
        )
        written = sorted(p.name for p in tmp.iterdir())
        clash = [n for n in written if (out / n).exists() and n not in previous]
        if clash:
            raise UserError(
                f"{flag} {out}: holds {clash[0]}, which this export would overwrite and an earlier export did not "
                "write; move it away or choose another folder"
            )
        # The manifest first lists every file of ours that may be present, so a crash midway
        # leaves none of them unaccounted for; then the files move in and the old ones go.
        write_json_atomic(out / MANIFEST_FILE, {"files": sorted(previous | set(written))})
        for name in written:
            os.replace(tmp / name, out / name)
        for name in sorted(previous - set(written)):
            path = out / name
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)
        write_json_atomic(out / MANIFEST_FILE, {"files": written})
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out
