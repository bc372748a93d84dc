"""Φ, the unit of every cost: one epoch of plain training of the target model over the pool.

The arithmetic lives here, below every layer that reports a cost (`training` logs a round's
cost, `reports` and `experiments` tabulate rows), so no layer imports upward; the experiments
layer's `raise_select.experiments.costs` re-exports it with the counted token passes.

In seconds, Φ is plain training's seconds per step times the steps of one epoch,
ceil(pool size / batch size) (the last, partial batch is a step too).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from .errors import UserError


def steps_per_epoch(pool_size: int, batch_size: int) -> int:
    """Update steps of one epoch over `pool_size` rows in batches of `batch_size`: ceil(pool / batch)."""
    if pool_size < 1 or batch_size < 1:
        raise UserError(
            f"an epoch needs a pool and a batch of at least 1 row, got pool {pool_size}, batch {batch_size}"
        )
    return -(-pool_size // batch_size)


def phi_seconds(*, train_seconds: float, steps: int, pool_size: int, batch_size: int) -> float:
    """Φ in seconds: the seconds per step of a plain training run (`train_seconds` over `steps`)
    times the steps of one epoch over the pool (`steps_per_epoch`). Keyword-only: the old
    `reports.method_stats.phi_seconds` took the same numbers in another order."""
    if steps < 1:
        raise UserError(f"Φ needs a training run of at least 1 step, got {steps}")
    return train_seconds / steps * steps_per_epoch(pool_size, batch_size)


def phi_from_runs(
    full: Sequence[Mapping], random: Sequence[Mapping], pool_size: int, batch_size: int
) -> tuple[float, str]:
    """Φ in seconds and where it came from, from the plain training runs at hand (mappings with
    `train_seconds` and `steps`): the first 100% run, else the mean seconds per step of the RAND
    runs, else NaN ("no plain training cell")."""
    if full:
        f = full[0]
        phi = phi_seconds(
            train_seconds=f["train_seconds"], steps=f["steps"], pool_size=pool_size, batch_size=batch_size
        )
        return phi, "the 100% row (one epoch)"
    if random:
        per_step = sum(r["train_seconds"] / r["steps"] for r in random) / len(random)
        phi = phi_seconds(train_seconds=per_step, steps=1, pool_size=pool_size, batch_size=batch_size)
        return phi, "RAND's seconds per step x steps per epoch"
    return math.nan, "no plain training cell"
