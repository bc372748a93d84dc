"""Keep a study's finished cells in the repository: their small records, never weights.

A real-data grid takes more CPU than one session has, so its finished cells are committed as
they land and a later session (perhaps on a fresh machine) continues from them. For every cell
of `--study` whose evaluations cover `--split` for each of its targets, this copies into
`--into/<cell>/`, at the same relative paths: `cell.json`, `selection.json`, `train_done.json`
and, for RAISE cells, the labels, metrics and per-step selections of policy training and
fine-tuning (`SMALL`); and the study's
`features_time.json` (the featurizing seconds the report charges to the rows that read the
features) beside `--into`. Copying is
idempotent (a file is rewritten only when its contents differ) and `--into` can be read back
with `--restore` into a study folder, where the cell store re-checks every key.

    python benchmarks/keep_cells.py --study runs/study_real_smollm2 --split dev
    python benchmarks/keep_cells.py --study runs/study_real_smollm2 --restore   # results -> a fresh runs folder
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

# The small records of a cell, at the same relative paths in the kept copy (so a restored cell reads as
# the original: distinct rows from the selections, RAISE's costs from its metrics log).
SMALL = (
    "cell.json",
    "selection.json",
    "train_done.json",
    "train_policy/labels.json",
    "train_policy/metrics.jsonl",
    "finetune/selections.jsonl",
    "finetune/metrics.jsonl",
)


def finished(cell: Path, split: str, targets: list[str]) -> bool:
    """The cell's record is done and holds a `<target>:<split>` evaluation of its own target, or of
    every study target for a cell scored on all of them (the base row, untargeted methods)."""
    try:
        record = json.loads((cell / "cell.json").read_text())
    except (OSError, json.JSONDecodeError):
        return False
    evals = record.get("evals") or {}
    own = [record["target"]] if record.get("target") else targets
    return bool(record.get("done")) and all(f"{t}:{split}" in evals for t in own)


def copy_if_changed(src: Path, dst: Path) -> bool:
    if dst.is_file() and dst.read_bytes() == src.read_bytes():
        return False
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_suffix(dst.suffix + ".tmp")
    shutil.copyfile(src, tmp)
    tmp.replace(dst)
    return True


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--study", required=True, help="the study folder (its cells/ are read)")
    p.add_argument("--into", default="benchmarks/results/study_real_smollm2/cells")
    p.add_argument("--split", default="dev", choices=["dev", "test"])
    p.add_argument("--targets", nargs="+", default=["gsm8k", "arc_challenge", "commonsenseqa"])
    p.add_argument("--restore", action="store_true", help="copy the kept cells' records back into --study/cells")
    args = p.parse_args(argv)
    study_cells, kept = Path(args.study) / "cells", Path(args.into)
    if args.restore:
        n = 0
        for cell in sorted(d for d in kept.iterdir() if d.is_dir()):
            for rel in SMALL:
                if (cell / rel).is_file():
                    n += copy_if_changed(cell / rel, study_cells / cell.name / rel)
        if (kept.parent / "features_time.json").is_file():
            n += copy_if_changed(kept.parent / "features_time.json", study_cells.parent / "features_time.json")
        print(f"{n} file(s) restored into {study_cells}")
        return 0
    if not study_cells.is_dir():
        print(f"--study {args.study}: no cells/ folder", file=sys.stderr)
        return 2
    changed = cells = 0
    for cell in sorted(d for d in study_cells.iterdir() if d.is_dir()):
        if not finished(cell, args.split, args.targets):
            continue
        cells += 1
        for rel in SMALL:
            if (cell / rel).is_file():
                changed += copy_if_changed(cell / rel, kept / cell.name / rel)
    if (study_cells.parent / "features_time.json").is_file():
        changed += copy_if_changed(study_cells.parent / "features_time.json", kept.parent / "features_time.json")
    print(f"{cells} finished cell(s) of {study_cells}; {changed} file(s) written into {kept}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
