"""Resolve a validation set given by name (`gsm8k`), a held-out set by name (`gsm8k:test`),
or a pool file/folder."""

from __future__ import annotations

from pathlib import Path

from ..errors import UserError
from .benchmarks import BENCHMARKS, HELDOUT, NAMED_SETS, heldout_names
from .pools import Example, load_pool


def load_validation(
    spec: str,
    data_dir: str | Path | None = None,
    n: int | None = None,
    seed: int = 0,
    split: str = "validation",
) -> list[Example]:
    """A named set from `NAMED_SETS` (read from `data_dir`), else any pool spec.

    `n` caps the size (a seeded sample for named sets, the first n for files).
    """
    base, _, part = spec.partition(":")
    if part and spec not in NAMED_SETS and base in BENCHMARKS and not Path(spec).exists():
        if part in HELDOUT:
            raise UserError(f"'{base}' has no held-out sets; held-out sets: {', '.join(heldout_names())}")
        raise UserError(f"unknown held-out set '{spec}'; held-out sets: {', '.join(heldout_names())}")
    if spec in NAMED_SETS:
        examples = NAMED_SETS[spec](Path(data_dir) if data_dir else None, split, n, seed)
    else:
        if not Path(spec).exists() and "/" not in spec and ":" not in spec and "." not in spec:
            known = ", ".join(sorted(NAMED_SETS)) or "none registered"
            raise UserError(f"unknown validation set '{spec}'; named sets: {known}; or give a file or folder")
        examples = load_pool(spec, limit=n).examples
    if not examples:
        raise UserError(f"validation set '{spec}' is empty")
    return examples
