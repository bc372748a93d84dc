"""`sspl`: the paper's self-paced curriculum baseline (appendix A.3).

All pool examples are sorted by loss (ascending: easy first) and split into `max_steps`
buckets of about equal size; step t trains on a batch drawn from bucket t, so training goes
from easy to hard. The loss is the mean response loss -log P(y|x) from the featurized
table (`loss="features"`, the auxiliary model's), or the target model's own loss
(`loss="target"`, one extra forward pass over the pool). The appendix does not say how a
batch is taken from its bucket; here `batch_size` rows are drawn without replacement with
the seed (buckets smaller than a batch are widened to the next harder rows).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from ..data.pools import Pool
from ..errors import UserError
from .base import Selection, SelectionContext, matched_steps

LOSS_SOURCES = ("features", "target")


def bucket_bounds(n: int, steps: int) -> list[tuple[int, int]]:
    """`steps` contiguous [start, end) rank ranges of near-equal size covering 0..n."""
    edges = [(t * n) // steps for t in range(steps + 1)]
    return list(zip(edges[:-1], edges[1:]))


def curriculum(losses: np.ndarray, steps: int, batch_size: int, seed: int) -> list[list[int]]:
    """Batches in training order: batch t is drawn from the t-th easiest bucket."""
    n = len(losses)
    if n < batch_size:
        raise UserError(f"sspl: the pool has {n} examples, fewer than one batch of {batch_size}")
    order = np.argsort(losses, kind="stable")
    rng = np.random.default_rng(seed)
    batches = []
    for start, end in bucket_bounds(n, steps):
        end = max(end, start + batch_size)
        start = min(start, n - batch_size)
        end = min(end, n)
        window = order[start:end]
        batches.append(window[rng.choice(len(window), size=batch_size, replace=False)].tolist())
    return batches


@dataclass
class SSPL:
    """Easy-to-hard schedule over the whole pool at the matched number of update steps."""

    name: ClassVar[str] = "sspl"
    dynamic: ClassVar[bool] = True

    loss: str = field(
        default="features",
        metadata={
            "help": "loss that orders the curriculum (easy first): features (-logp_cond of the featurized table) "
            "or target (the target model's loss, one extra pass)"
        },
    )

    def needs_features(self) -> bool:
        return self.loss == "features"  # loss=target: the target model's own pass

    def select(self, pool: Pool, budget: int, ctx: SelectionContext) -> Selection:
        if self.loss not in LOSS_SOURCES:
            raise UserError(f"sspl: unknown loss source '{self.loss}'; available: {', '.join(LOSS_SOURCES)}")
        steps = ctx.steps or matched_steps(budget, ctx.batch_size, ctx.epochs)
        losses = self._losses(pool, ctx)
        batches = curriculum(losses, steps, ctx.batch_size, ctx.seed)
        flat = [i for b in batches for i in b]
        return Selection(
            indices=flat,
            scores=losses[flat].tolist(),
            info={"loss": self.loss, "steps": steps, "batch_size": ctx.batch_size, "bucket_size": len(pool) / steps},
        )

    def _losses(self, pool: Pool, ctx: SelectionContext) -> np.ndarray:
        if self.loss == "features":
            return -np.asarray(ctx.require_features(self.name)["logp_cond"], dtype=np.float64)
        from ..models.loading import load_model_and_tokenizer
        from .lm import example_losses

        model, tok = load_model_and_tokenizer(ctx.require_model(self.name), device=ctx.torch_device())
        return (
            example_losses(model, tok, pool.examples, ctx.template, ctx.max_length, desc="sspl target loss")
            .numpy()
            .astype(np.float64)
        )
