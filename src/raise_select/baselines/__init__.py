"""Selection baselines at matched budgets (paper section 4.2): full, random, IFD, DEITA,
AlpaGasus, SSPL (a schedule), LESS and ROSE (static), and the online batch selectors GREATS and
RHO-LOSS (chosen step by step while training)."""

from .base import Baseline, Selection, SelectionContext, budget_count, matched_batches, matched_steps
from .registry import BASELINES, get_baseline_class, make_baseline, needs_features, needs_rds_vectors

__all__ = [
    "BASELINES",
    "Baseline",
    "Selection",
    "SelectionContext",
    "budget_count",
    "get_baseline_class",
    "make_baseline",
    "matched_batches",
    "matched_steps",
    "needs_features",
    "needs_rds_vectors",
]
