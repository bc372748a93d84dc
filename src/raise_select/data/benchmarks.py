"""Named validation and evaluation sets (MMLU, ARC-Challenge, CommonsenseQA, GSM8K,
MathQA, MMLU college_mathematics) read from the original files in a data folder.

`NAMED_SETS` maps a name to a loader `(data_dir, split, n, seed) -> list[Example]` whose
examples are prompt/answer pairs usable as a RAISE validation set.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from .pools import Example

Loader = Callable[[Path | None, str, int | None, int], list[Example]]
NAMED_SETS: dict[str, Loader] = {}
