"""A matched validation budget on the dev split: LESS with the metric's target (`less_metric`) and the
untrained label fit (`raise_labels_untrained`) each reading the same 256 validation items per target
(`study.val_size=256`, `raise.val_size=256`, P on the first 32: `raise.state_val_size=32`), against
the kept cells of the study's own sizes (LESS 64 items, RAISE's labels 32) and, where kept, the label
fit with 600 labelled rows instead of 200 (`../matched256_label600_cells/`) and with
`policy.credit_row_norm: unit` (`../matched256_rownorm_cells/`). Gains over the base
model on the choice cross-entropy of the 500 dev items; every interval is the benchmark's one rule
(docs/intervals.md), always paired over the items: one method at two sizes is paired by seed over the
seeds both have (the same seed: the same LESS warm-up, the same labelled rows and initial policy);
two methods are unpaired across seeds, as in the study's report.

    python benchmarks/results/study_real_smollm2/matched256_cells/compare.py
"""

import json
from pathlib import Path

import numpy as np

from raise_select.reports.intervals import difference_interval, row_interval, seed_matched_difference

HERE = Path(__file__).resolve().parent
FOLDERS = {
    "study": HERE.parent / "cells",
    "256": HERE,
    "600 labels": HERE.parent / "matched256_label600_cells",
    "row norm": HERE.parent / "matched256_rownorm_cells",
}
VARIANTS = {"600 labels": "256, 600 labels", "row norm": "256, credit_row_norm unit"}
TARGETS = ("arc_challenge", "commonsenseqa")
METHODS = {"less_metric": "LESS (metric target)", "raise_labels_untrained": "RAISE label fit"}


def gains(folder: Path, method: str, target: str) -> dict[int, np.ndarray]:
    """seed -> per-item gain over the base model (base loss minus the cell's) on `target`'s dev items."""
    key = f"{target}:dev"
    base = np.asarray(json.loads((folder / "base" / "cell.json").read_text())["evals"][key]["values"])
    out = {}
    for seed in range(3):
        record = folder / f"{method}@{target}-s{seed}" / "cell.json"
        if record.exists():
            out[seed] = base - np.asarray(json.loads(record.read_text())["evals"][key]["values"])
    return out


def text(iv) -> str:
    return f"{iv.mean:+.4f} [{iv.low:+.4f}, {iv.high:+.4f}]"


def main() -> None:
    rows = {}
    print("| target | row | validation items | per seed | gain [95% CI] |")
    print("|---|---|---|---|---|")
    for t in TARGETS:
        for m, label in METHODS.items():
            for size, folder in FOLDERS.items():
                g = gains(folder, m, t) if folder.exists() else {}
                if not g or (size in VARIANTS and m != "raise_labels_untrained"):
                    continue
                items = {"study": "64" if m == "less_metric" else "32 (labels)", **VARIANTS}.get(size, size)
                rows[(t, m, size)] = g
                seeds = " / ".join(f"{float(v.mean()):+.3f}" for _, v in sorted(g.items()))
                print(f"| {t} | {label} | {items} | {seeds} | {text(row_interval([g[s] for s in sorted(g)]))} |")
    print("\n| target | difference | [95% CI] |")
    print("|---|---|---|")
    for t in TARGETS:
        pairs = [
            ("less_metric", "256", "less_metric", "study", "LESS: 256 items - 64"),
            ("raise_labels_untrained", "256", "raise_labels_untrained", "study", "RAISE: 256 items - 32"),
            ("raise_labels_untrained", "256", "less_metric", "256", "RAISE - LESS, both 256 items"),
            ("raise_labels_untrained", "600 labels", "raise_labels_untrained", "256", "RAISE 256: 600 labels - 200"),
            ("raise_labels_untrained", "600 labels", "less_metric", "256", "RAISE 256, 600 labels - LESS 256"),
            ("raise_labels_untrained", "row norm", "raise_labels_untrained", "256", "RAISE 256: row norm unit - none"),
            ("raise_labels_untrained", "row norm", "less_metric", "256", "RAISE 256, row norm unit - LESS 256"),
        ]
        for am, asz, bm, bsz, what in pairs:
            a, b = rows.get((t, am, asz)), rows.get((t, bm, bsz))
            if not (a and b):
                continue
            if am == bm:  # one method at two sizes: paired by seed over the seeds both have
                shared = sorted(set(a) & set(b))
                iv = seed_matched_difference({s: a[s] for s in shared}, {s: b[s] for s in shared}, what=what)
                seeds = f"{len(shared)} seeds, paired"
            else:
                iv = difference_interval(list(a.values()), list(b.values()), what=what)
                seeds = f"{len(a)} and {len(b)} seeds"
            print(f"| {t} | {what} ({seeds}) | {text(iv)} |")


if __name__ == "__main__":
    main()
