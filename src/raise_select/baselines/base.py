"""What every selection baseline shares: the interface, the selection it returns, budgets and
the per-step batches at matched update steps (paper section 4.2).

Static methods pick a fixed subset (the budget, 1% of the pool by default) and train on it
for 3 epochs; dynamic methods (SSPL here) return a schedule, an ordered list of batches, with
the same number of update steps. `matched_steps` and `matched_batches` are the one place
where that equivalence is computed, so every method of a study trains for the same steps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Protocol, runtime_checkable

import numpy as np

from ..data.pools import Example, Pool
from ..errors import UserError
from ..features.table import FeatureTable

if TYPE_CHECKING:
    from ..training.loop import LMConfig
    from ..training.reporting import Reporter


@dataclass
class Selection:
    """A method's choice: pool rows (in training order for schedules), their scores, and
    what happened on the way (counts dropped and why, thresholds used, ...)."""

    indices: list[int]
    scores: list[float] | None = None
    info: dict = field(default_factory=dict)
    pool_scores: list[float | None] | None = None  # scoring methods: every pool row's score, pool order

    @staticmethod
    def per_row(values) -> list[float | None]:
        """Scores of every pool row as JSON takes them: a row without a finite score is None."""
        return [float(v) if np.isfinite(v) else None for v in np.asarray(values, dtype=np.float64)]


@dataclass
class SelectionContext:
    """Everything a method may need besides the pool and the budget.

    Methods take what they use and refuse (with `UserError`) when something they need is
    missing: `ifd` needs `features`, `less` needs `model` and `validation`. Whether a method
    reads `features` is its own `needs_features()` (callers featurize only for those).
    Online methods (`greats`, `rho`) train the target model with `lm` while they choose
    and save it to `out_dir/model`.
    """

    features: FeatureTable | None = None  # aligned to the pool (`FeatureTable.align(pool.ids)`)
    model: str | None = None  # target model id or folder (LESS gradients, SSPL target loss)
    validation: list[Example] | None = None  # target-task examples (LESS)
    seed: int = 0  # fixes every random choice of the method
    out_dir: Path | None = None  # where caches (scores, judgments) are kept; None: no cache
    cache_dir: Path | None = None  # the caches' folder; None: out_dir/cache
    template: str = "alpaca"  # prompt template for methods that run an LM on the pool
    max_length: int = 512  # token limit for those passes
    batch_size: int = 8  # training batch size (schedules are built from it)
    epochs: int = 3  # static methods train this many epochs over the subset
    steps: int | None = None  # update steps; None: matched to `epochs` over the budget
    device: str | None = None  # torch device for LM passes; None: cuda when available
    data_dir: str | None = None  # original files of named sets (a holdout set given by name)
    lm: "LMConfig | None" = None  # LLM training settings: online methods choose while they train
    report: "Reporter | None" = None  # where training's step loss also goes (`report_to`)

    def require_features(self, method: str) -> FeatureTable:
        if self.features is None:
            raise UserError(
                f"method '{method}' needs featurized pool features; pass --features (see `raise-select featurize`)"
            )
        return self.features

    def require_model(self, method: str) -> str:
        if not self.model:
            raise UserError(f"method '{method}' needs the target model; pass --model")
        return self.model

    def require_validation(self, method: str) -> list[Example]:
        if not self.validation:
            raise UserError(f"method '{method}' needs a validation set; pass --val (a named set or a file)")
        return self.validation

    def cache_path(self, name: str) -> Path | None:
        if self.cache_dir is not None:
            return Path(self.cache_dir) / name
        return None if self.out_dir is None else Path(self.out_dir) / "cache" / name

    def torch_device(self):
        import torch

        return torch.device(self.device or ("cuda" if torch.cuda.is_available() else "cpu"))


@runtime_checkable
class Baseline(Protocol):
    """A selection method. Implementations are dataclasses whose fields are the method's
    options (documented defaults), so one config section per method configures them."""

    name: ClassVar[str]
    dynamic: ClassVar[bool]  # True: `select` returns a schedule (ordered batches), not a subset

    def needs_features(self) -> bool:
        """Whether `select` reads `ctx.features` with these options: the one answer that
        decides whether a job featurizes the pool for the method, hands it the features and
        charges the featurize time to its cost. A method reading the RDS+ vectors as well
        (`featurize --rds`) says so with a class attribute `reads_rds_vectors = True`."""
        ...

    def select(self, pool: Pool, budget: int, ctx: SelectionContext) -> Selection: ...


def budget_count(budget: float, pool_size: int) -> int:
    """Examples in the budget: a fraction of the pool when below 1, else a count."""
    if budget <= 0:
        raise UserError(f"budget must be positive (a fraction like 0.01 or a count), got {budget}")
    k = round(budget * pool_size) if budget < 1 else int(budget)
    if budget >= 1 and budget != int(budget):
        raise UserError(f"budget {budget}: give a fraction below 1 or a whole number of examples")
    if k > pool_size:
        raise UserError(f"budget {budget} asks for {k} examples but the pool has {pool_size}")
    return max(k, 1)


def matched_steps(budget: int, batch_size: int, epochs: int = 3) -> int:
    """Update steps of `epochs` passes over `budget` examples, batches cut across epoch
    boundaries (so no short batches): ceil(epochs * budget / batch_size)."""
    if batch_size < 1 or epochs < 1:
        raise UserError(f"batch size and epochs must be at least 1, got {batch_size} and {epochs}")
    return math.ceil(epochs * budget / batch_size)


def matched_batches(
    selection: Selection, batch_size: int, steps: int, seed: int, dynamic: bool = False
) -> list[list[int]]:
    """The per-step batches of pool rows at `steps` matched update steps.

    Static subsets: epochs of seeded reshuffles of the subset, one stream cut into full
    batches (3 epochs over the subset when `steps = matched_steps(len, batch_size, 3)`).
    Schedules (`dynamic`): the selection's order as it is, `steps` batches of `batch_size`.
    """
    idx = list(selection.indices)
    if not idx:
        raise UserError("the selection is empty; nothing to train on")
    if dynamic:
        need = steps * batch_size
        if len(idx) != need:
            raise UserError(f"the schedule holds {len(idx)} rows but {steps} steps of {batch_size} need {need}")
        return [idx[s * batch_size : (s + 1) * batch_size] for s in range(steps)]
    rng = np.random.default_rng(seed)
    stream: list[int] = []
    arr = np.asarray(idx, dtype=np.int64)
    while len(stream) < steps * batch_size:
        stream.extend(arr[rng.permutation(len(arr))].tolist())
    return [stream[s * batch_size : (s + 1) * batch_size] for s in range(steps)]


def top_k(scores: np.ndarray, candidates: np.ndarray, k: int) -> np.ndarray:
    """The `k` candidates with the highest scores, best first; ties keep pool order."""
    order = np.lexsort((candidates, -scores[candidates]))
    return candidates[order[:k]]
