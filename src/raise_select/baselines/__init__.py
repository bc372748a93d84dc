"""Static selection baselines at matched budgets (paper section 4.2): full, random, IFD,
DEITA, AlpaGasus, SSPL (a schedule) and LESS."""

from .base import Baseline, Selection, SelectionContext, budget_count, matched_batches, matched_steps
from .registry import BASELINES, get_baseline_class, make_baseline

__all__ = [
    "BASELINES", "Baseline", "Selection", "SelectionContext", "budget_count", "get_baseline_class",
    "make_baseline", "matched_batches", "matched_steps",
]
