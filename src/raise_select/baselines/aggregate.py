"""From a (pool rows x validation examples) score matrix to a subset: the aggregation rules
compared in "A Critical Look at Targeted Instruction Selection" (ICML 2026) for every method
that scores a row against each validation example (`rds`, `embed`, `less`, `rose`).

- `mean`: a row's score is its mean over the validation examples; the top `budget` rows.
- `max`: a row's score is its best validation example's; the top `budget` rows.
- `round_robin`: the validation examples take turns, in their order, and each takes its
  best-scoring row among those not chosen yet, until the budget is full (RDS+'s selection).
  A row's reported score is the score of the turn that took it.

RDS+'s reference code (`get_top_aggregated_influences.py`, `minmax`) round-robins over its
evaluation sets, each popping its next best row: a row that another turn already took is
popped again and that turn is spent. Here a turn passes over rows already chosen, so every
turn adds a row (the rule as the RDS+ paper states it).
"""

from __future__ import annotations

import numpy as np

from ..errors import UserError
from ..features.similarity import cosine_matrix  # re-exported: it moved below policy/ and baselines/

__all__ = ["AGGREGATIONS", "aggregate_select", "check_aggregation", "cosine_matrix", "row_scores"]

AGGREGATIONS = ("mean", "max", "round_robin")


def check_aggregation(name: str, method: str) -> None:
    if name not in AGGREGATIONS:
        raise UserError(f"{method}.aggregation: unknown rule '{name}'; available: {', '.join(AGGREGATIONS)}")


def aggregate_select(scores: np.ndarray, budget: int, rule: str) -> tuple[np.ndarray, np.ndarray]:
    """(chosen rows in the order chosen, their scores) from `scores` (N, V) under `rule`.

    Ties go to the lower row index (pool order), for every rule."""
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 2 or scores.shape[1] == 0:
        raise UserError(f"aggregation needs a (pool rows x validation examples) score matrix, got shape {scores.shape}")
    n = scores.shape[0]
    if not 0 < budget <= n:
        raise UserError(f"aggregation: budget {budget} must be between 1 and the pool's {n} rows")
    if not np.isfinite(scores).all():
        row = int(np.flatnonzero(~np.isfinite(scores).all(axis=1))[0])
        raise UserError(f"aggregation: pool row {row} has a non-finite similarity score")
    if rule in ("mean", "max"):
        per_row = scores.mean(axis=1) if rule == "mean" else scores.max(axis=1)
        order = np.lexsort((np.arange(n), -per_row))[:budget]
        return order, per_row[order]
    if rule != "round_robin":
        raise UserError(f"unknown aggregation '{rule}'; available: {', '.join(AGGREGATIONS)}")
    # Each validation example's rows, best first (stable: lower index first among ties).
    ranked = np.argsort(-scores, axis=0, kind="stable")  # (N, V)
    pointer = np.zeros(scores.shape[1], dtype=np.int64)
    taken = np.zeros(n, dtype=bool)
    chosen, chosen_scores = [], []
    v = 0
    while len(chosen) < budget:
        col = ranked[:, v]
        p = pointer[v]
        while taken[col[p]]:  # at most N steps per column over the whole run
            p += 1
        row = int(col[p])
        pointer[v] = p + 1
        taken[row] = True
        chosen.append(row)
        chosen_scores.append(scores[row, v])
        v = (v + 1) % scores.shape[1]
    return np.asarray(chosen, dtype=np.int64), np.asarray(chosen_scores)


def row_scores(scores: np.ndarray, rule: str) -> np.ndarray:
    """(N,) one score per pool row for export: the mean over validation examples under `mean`,
    the best validation example's under `max` and `round_robin` (what a round-robin turn reads)."""
    scores = np.asarray(scores, dtype=np.float64)
    return scores.mean(axis=1) if rule == "mean" else scores.max(axis=1)
