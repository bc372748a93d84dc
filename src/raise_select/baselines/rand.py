"""`random` (the paper's RAND): a seeded uniform subset. Studies report the mean over 5 seeds."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from ..data.pools import Pool
from .base import Selection, SelectionContext


@dataclass
class RandomSubset:
    """`budget` rows drawn uniformly without replacement with the job's `seed`."""

    name: ClassVar[str] = "random"
    dynamic: ClassVar[bool] = False

    def needs_features(self) -> bool:
        return False

    def select(self, pool: Pool, budget: int, ctx: SelectionContext) -> Selection:
        rng = np.random.default_rng(ctx.seed)
        chosen = rng.choice(len(pool), size=budget, replace=False)
        return Selection(indices=chosen.tolist(), info={"seed": ctx.seed})
