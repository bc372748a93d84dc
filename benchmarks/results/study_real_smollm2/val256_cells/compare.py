"""ARC-Challenge dev: the untrained label fit (raise_labels_untrained) with its labels over 256 validation
items against the kept 32-item cells of the same seeds, paired by item (choice cross-entropy; positive:
the 256-item labels better), with a 95% t-interval over the 500 items.

    python benchmarks/results/study_real_smollm2/val256_cells/compare.py
"""

import json
from pathlib import Path

import numpy as np
from scipy import stats

HERE = Path(__file__).resolve().parent
KEPT = HERE.parent / "cells"


def values(folder: Path, cell: str) -> np.ndarray:
    return np.asarray(json.loads((folder / cell / "cell.json").read_text())["evals"]["arc_challenge:dev"]["values"])


base = values(KEPT, "base").mean()
means = []
for seed in (0, 2):
    cell = f"raise_labels_untrained@arc_challenge-s{seed}"
    old, new = values(KEPT, cell), values(HERE, cell)
    d = old - new
    half = stats.t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / np.sqrt(len(d))
    print(
        f"s{seed}: gain 32-item {base - old.mean():+.4f}, 256-item {base - new.mean():+.4f}; "
        f"256 minus 32 {d.mean():+.4f} [{d.mean() - half:+.4f}, {d.mean() + half:+.4f}]"
    )
    means.append(d.mean())
print(f"mean over the 2 seeds {np.mean(means):+.4f}")
