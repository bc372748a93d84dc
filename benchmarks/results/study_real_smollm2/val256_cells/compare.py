"""ARC-Challenge dev: the untrained label fit (raise_labels_untrained) with its labels over 256 validation items
against the kept 32-item cells of the same seeds, paired by item (choice cross-entropy; positive: 256 better).

    python benchmarks/results/study_real_smollm2/val256_cells/compare.py
"""

import json

import numpy as np
from scipy import stats

K = "benchmarks/results/study_real_smollm2/cells"
base = np.array(
    json.load(open("benchmarks/results/study_real_smollm2/cells/base/cell.json"))["evals"]["arc_challenge:dev"][
        "values"
    ],
    float,
)
rows = []
for s, f in [
    (0, "benchmarks/results/study_real_smollm2/val256_cells"),
    (2, "benchmarks/results/study_real_smollm2/val256_cells"),
]:
    new = np.array(
        json.load(open(f"{f}/raise_labels_untrained@arc_challenge-s{s}/cell.json"))["evals"]["arc_challenge:dev"][
            "values"
        ],
        float,
    )
    old = np.array(
        json.load(
            open(f"benchmarks/results/study_real_smollm2/cells/raise_labels_untrained@arc_challenge-s{s}/cell.json")
        )["evals"]["arc_challenge:dev"]["values"],
        float,
    )
    d = old - new  # lower CE is better: positive = 256-item labels better
    ci = stats.t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / np.sqrt(len(d))
    print(
        f"s{s}: gain 32-item {base.mean() - old.mean():+.4f}  256-item {base.mean() - new.mean():+.4f}  256 minus 32 {d.mean():+.4f} [{d.mean() - ci:+.4f}, {d.mean() + ci:+.4f}] (items)"
    )
    rows.append(d.mean())
print("mean over 2 seeds", np.mean(rows))
