"""Validation rows that are also pool rows, and held-out items that are also validation rows.

A method that scores pool rows by their likeness to the validation set (`rds`, `embed`, `tsds`,
LESS's gradients, RAISE's reward) finds a validation row that is also in the pool the most
alike, so it picks exactly those rows; and a loss measured on them afterwards is not held-out.
Rows are compared by `Example.id`, the hash of the whole exchange (prompt and response) as read,
so identical rows match whatever file or format they came from.

A held-out item whose question is a validation row's (`shared_items`, compared by prompt) is
what the targeted methods were steered towards: a score measured on it is not held-out either.
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


def prompt_key(example: Example) -> str:
    """What a held-out item must not share with a validation row: its prompt (every turn before
    the response), lower-cased, whitespace collapsed, so the same question matches whatever
    response or file it came with."""
    return "\n".join(f"{role}: {' '.join(text.lower().split())}" for role, text in example.prompt_messages)


def shared_items(validation: Sequence[Example], heldout: Sequence[Example]) -> list[Example]:
    """The held-out examples whose prompt is also a validation row's, in held-out order."""
    keys = {prompt_key(e) for e in validation}
    return [e for e in heldout if prompt_key(e) in keys]
