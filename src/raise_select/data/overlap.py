"""Validation rows that are also pool rows.

A method that scores pool rows by their likeness to the validation set (`rds`, `embed`, `tsds`,
LESS's gradients, RAISE's reward) finds a validation row that is also in the pool the most
alike, so it picks exactly those rows; and a loss measured on them afterwards is not held-out.
Rows are compared by `Example.id`, the hash of the whole exchange (prompt and response) as read,
so identical rows match whatever file or format they came from.
"""

from __future__ import annotations

import logging
from typing import Iterable, Sequence

from .pools import Example, Pool

log = logging.getLogger(__name__)

SHOWN = 5  # ids named in the warning


def shared_rows(pool: Pool | Iterable[Example], validation: Sequence[Example]) -> list[Example]:
    """The validation examples that are also pool rows, in validation order, each once."""
    pool_ids = {e.id for e in (pool.examples if isinstance(pool, Pool) else pool)}
    seen: set[str] = set()
    shared = []
    for e in validation:
        if e.id in pool_ids and e.id not in seen:
            seen.add(e.id)
            shared.append(e)
    return shared


def warn_shared_rows(pool: Pool | Iterable[Example], validation: Sequence[Example], where: str = "--val") -> int:
    """Log one warning line when validation rows are also pool rows (their count and the first
    ids); returns the count."""
    shared = shared_rows(pool, validation)
    if shared:
        ids = ", ".join(e.id for e in shared[:SHOWN]) + (", ..." if len(shared) > SHOWN else "")
        log.warning(
            "%s: %d of %d validation rows are also pool rows (ids %s); methods that choose rows like the "
            "validation set choose exactly these, and a score measured on them is not held-out; take them out "
            "of the pool or of the validation set",
            where,
            len(shared),
            len(validation),
            ids,
        )
    return len(shared)
