"""The cell store: one folder per cell under `<out>/cells/<name>/`, its `cell.json` keyed on what
changes the result.

A cell is one method with its options, at one target and seed, at the study's matched budget.
Its key is a digest of the settings and of the CONTENTS of its inputs (the model's weights, the
pool, the validation set, prior files: `content_digest`), never of their paths, so a study
folder moved elsewhere keeps its cells and a model rebuilt at the same path recomputes them.

- `run(name, key, compute, outputs)`: the cell runner (the study's, the real-data benchmark's and
  the demo's): a finished record with that key is returned, else `compute()` is recorded.
- `begin(name, key)`: before computing; a folder left by another key (a changed input, or a
  record from older code) is emptied first, so nothing stale is resumed; the same key keeps the
  partial work of a killed run (train-policy checkpoints, a selection) for the run to resume.
- `finished(name, key, outputs)`: the record of a finished cell with that key whose outputs (the
  model folder it names) still exist; None otherwise (a vanished model is recomputed, not
  reported).
- A damaged `cell.json` (cut short, empty, not a mapping, fields missing or of the wrong kind)
  is logged in one line and treated as absent: the cell is recomputed, never a traceback.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path

from ..features.featurize import model_fingerprint
from ..io import fingerprint, path_digest, write_json_atomic

log = logging.getLogger(__name__)

RECORD = "cell.json"


class Unfinished(Exception):
    """A cell (or one of its evaluations) that report-only mode does not compute."""


# ---------------------------------------------------------------- digests of contents


def content_digest(path: str | Path) -> str:
    """sha256 of a file's bytes or a folder's files (`io.path_digest`, hashed once per process)."""
    return path_digest(path)


def model_digest(model: str) -> str:
    """The weights of a model: the content of its folder (a short name or GGUF: of the converted
    folder), or a hub id with its cached revision (`features.featurize.model_fingerprint`)."""
    return model_fingerprint(model)


def examples_digest(examples: Iterable) -> str:
    """The rows of a validation or held-out set, in order (each id is a hash of its messages)."""
    return fingerprint([e.id for e in examples])


def options_digest(options: dict) -> dict:
    """A method's options for a key: a string naming an existing file or folder (a judge model, a
    prior selection) stands for its contents, so a moved file keeps the key and an edited one
    changes it."""

    def one(v):
        if isinstance(v, dict):
            return {k: one(x) for k, x in v.items()}
        if isinstance(v, str) and v and ("/" in v or v.startswith(".")):
            p = Path(v).expanduser()
            if p.exists():
                return {"content": content_digest(p)}
        return v

    return {k: one(v) for k, v in options.items()}


# ---------------------------------------------------------------- the store


class CellStore:
    """The cells of one study folder (`root` = `<out>/cells`)."""

    def __init__(self, root: str | Path, report_only: bool = False):
        self.root = Path(root)
        self.report_only = report_only

    def dir(self, name: str) -> Path:
        return self.root / name

    def read(self, name: str) -> dict | None:
        """The cell's record, or None when it has none or a damaged one (logged in one line)."""
        path = self.dir(name) / RECORD
        if not path.is_file():
            return None
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            log.warning("%s: unreadable (%s); the cell is recomputed", path, str(e).splitlines()[0][:120])
            return None
        problem = damaged(record)
        if problem:
            log.warning("%s: %s; the cell is recomputed", path, problem)
            return None
        return record

    def finished(self, name: str, key: str, outputs: Callable[[dict], bool] = lambda r: True) -> dict | None:
        """The record of a finished cell with `key` whose outputs still exist (in report-only mode, whether
        or not they do: only its record is read), else None."""
        record = self.read(name)
        if record is None or record.get("key") != key or not record.get("done"):
            return None
        if not outputs(record):
            if self.report_only:  # a record kept without its weights (benchmarks/keep_cells.py) is reported
                log.info("cell %s: its model is not here; its record is reported (report_only)", name)
                return record
            log.warning("cell %s: its model is gone; the cell is recomputed", name)
            return None
        return record

    def begin(self, name: str, key: str) -> None:
        """Mark the cell as being computed with `key`. In report-only mode: `Unfinished`. Work
        left in its folder under another key is removed first (a killed run with the same key
        keeps it to resume)."""
        if self.report_only:
            raise Unfinished(name)
        folder = self.dir(name)
        record = self.read(name)
        if folder.exists() and (record is None or record.get("key") != key):
            log.info("cell %s: removing the work of other inputs or settings", name)
            shutil.rmtree(folder)
        write_json_atomic(folder / RECORD, {"key": key, "done": False})

    def save(self, name: str, record: dict) -> dict:
        write_json_atomic(self.dir(name) / RECORD, record)
        return record

    def run(
        self, name: str, key: str, compute: Callable[[], dict], outputs: Callable[[dict], bool] = lambda r: True
    ) -> tuple[dict, bool]:
        """The cell runner: the finished record of `name` with `key` whose outputs exist, else
        `compute()`'s fields recorded under `key` (the folder emptied first when it held other
        work). Returns (record, whether it was computed now); report-only mode: `Unfinished`."""
        record = self.finished(name, key, outputs)
        if record is not None:
            return record, False
        self.begin(name, key)
        return self.save(name, {**compute(), "name": name, "key": key, "done": True}), True


def damaged(record) -> str | None:
    """What is wrong with a cell record's shape, or None."""
    if not isinstance(record, dict):
        return f"holds a {type(record).__name__}, not a cell record"
    if not isinstance(record.get("key"), str):
        return "has no key"
    if not record.get("done"):
        return None  # a cell being computed: only its key is read
    for name in ("select_seconds", "train_seconds"):
        if not isinstance(record.get(name, 0.0), (int, float)):
            return f"field '{name}' is not a number"
    evals = record.get("evals", {})
    if not isinstance(evals, dict) or not all(isinstance(e, dict) for e in evals.values()):
        return "field 'evals' is not a mapping of evaluations"
    for what, e in evals.items():
        for name in ("losses", "values", "acc"):
            if name in e and not (isinstance(e[name], list) and all(isinstance(x, (int, float)) for x in e[name])):
                return f"evaluation '{what}' does not hold a list of per-item figures in '{name}'"
        if "scores" in e and not (
            isinstance(e["scores"], dict) and all(isinstance(v, (int, float)) for v in e["scores"].values())
        ):
            return f"evaluation '{what}' does not hold a number per task"
    scores = record.get("scores")
    if scores is not None and not (
        isinstance(scores, dict) and all(isinstance(v, (int, float)) for v in scores.values())
    ):
        return "field 'scores' is not per task a number"
    return None


def evaluation(record: dict, what: str, key: str, size: int | None = None):
    """A finished evaluation `what` of the record (its `evals` entry) made with `key` and, for
    per-item figures (`values`, older records `losses`), holding `size` of them; None when
    missing, stale or cut short."""
    done = record.get("evals", {}).get(what)
    if not done or done.get("key") != key:
        return None
    if size is not None:
        have = len(done.get("values", done.get("losses", [])))
        if have != size or len(done.get("acc", [None] * size)) != size:
            log.warning("cell %s, %s: %d figures, expected %d; evaluated again", record.get("name"), what, have, size)
            return None
    return done
