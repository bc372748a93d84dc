"""`full`: the whole pool (the paper's 100% row)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ..data.pools import Pool
from .base import Selection, SelectionContext


@dataclass
class FullData:
    """Every pool row, in pool order; the budget is ignored (training takes `epochs` passes)."""

    name: ClassVar[str] = "full"
    dynamic: ClassVar[bool] = False

    def needs_features(self) -> bool:
        return False

    def select(self, pool: Pool, budget: int, ctx: SelectionContext) -> Selection:
        return Selection(indices=list(range(len(pool))), info={"budget_ignored": budget})
