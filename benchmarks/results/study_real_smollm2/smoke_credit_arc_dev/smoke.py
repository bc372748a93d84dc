"""The 1-seed dense-credit smoke reading on ARC-Challenge dev, from the cells beside this file:
python benchmarks/results/study_real_smollm2/smoke_credit_arc_dev/smoke.py"""

import json
from pathlib import Path

import numpy as np

from raise_select.reports.intervals import difference_interval, row_interval

HERE = Path(__file__).parent / "cells"
ROWS = {
    "raise_untrained (0 rounds)": "raise_untrained@arc_challenge-s0",
    "raise (batch credit, 1 round)": "raise@arc_challenge-s0",
    "raise_credit (row credit, 1 round)": "raise_credit@arc_challenge-s0",
}


def values(cell: str) -> tuple[np.ndarray, dict]:
    record = json.loads((HERE / cell / "cell.json").read_text())
    return np.asarray(record["evals"]["arc_challenge:dev"]["values"]), record


base, _ = values("base")
gains = {}
for name, cell in ROWS.items():
    v, r = values(cell)
    gains[name] = base - v
    iv = row_interval([gains[name]])
    print(f"{name}: gain {iv.mean:+.4f} [{iv.low:+.4f}, {iv.high:+.4f}] ({iv.rule})")
    s, t, phi = r["select_seconds"], r["train_seconds"], r["costs"]["phi"]
    print(f"    seconds: select {s:.0f}, train {t:.0f}; counted Φ {phi:.2f}")
untrained = gains.pop("raise_untrained (0 rounds)")
for name, g in gains.items():
    d = difference_interval([g], [untrained], paired=True)
    print(f"{name} - untrained: {d.mean:+.4f} [{d.low:+.4f}, {d.high:+.4f}] ({d.rule})")
