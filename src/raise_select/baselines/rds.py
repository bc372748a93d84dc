"""`rds`: RDS+ (Ivison et al., 2025, "Large-Scale Data Selection for Instruction Tuning";
reference code hamishivi/automated-instruction-selection, `compute_influence_cosinesim.py`
with `--pooling weighted_mean` and `get_top_aggregated_influences.py`).

Every pool row and every validation example is represented by the base model's last hidden
state, averaged over all positions of the sequence with weights growing with the position
(`features.scoring.rds_weighted_mean`); a row's similarity to a validation example is the
cosine of the two; rows are then chosen round-robin over the validation examples (each takes
its most similar row not chosen yet), the reference's rule, or by another `aggregation`.

Where we follow the reference: the pooling (weights 1..L normalised), the final layer's
hidden states after the model's last norm (HF's `hidden_states[-1]`), the whole sequence
prompt + response for both pool rows and validation examples, cosine similarity, round-robin.
Where we differ:
- the pool's vectors come from `featurize --rds`, the same forward pass that scores
  log P(y|x), so RDS+ costs no pass of its own over the pool; the sequence is featurize's
  [start] + template(prompt) + response with its truncation (the reference: the Tulu chat
  format, cut at 2,048 tokens from the right);
- pads get no weight (the reference's batched pooling weights pad positions too);
- round-robin turns skip rows already chosen (see `baselines.aggregate`).
The validation vectors are computed with the featurize model, template and length limit
recorded in the features' meta.json, so both sides come from the same encoder.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from ..data.pools import Pool
from ..errors import UserError
from ..features.similarity import cosine_matrix, rds_vectors  # rds_vectors stays importable from here
from .aggregate import aggregate_select, check_aggregation, row_scores
from .base import Selection, SelectionContext


def pool_and_validation_vectors(ctx: SelectionContext, validation, method: str) -> tuple[np.ndarray, np.ndarray, str]:
    """The pool's RDS+ vectors (from `featurize --rds`), the validation examples' from the same
    model, template and length limit (the features' meta.json), and that model's name."""
    ft = ctx.require_features(method)
    if ft.rds is None:
        raise UserError(
            f"{method}: the features hold no RDS+ vectors; featurize the pool with --rds "
            "(`raise-select featurize ... --rds`, or `rds: true` in its config)"
        )
    meta = ft.meta
    encoder = meta.get("model") or ctx.require_model(method)
    val = rds_vectors(
        encoder,
        validation,
        meta.get("template", ctx.template),
        int(meta.get("max_length", ctx.max_length)),
        meta.get("dtype", "float32"),
        ctx.torch_device(),
    )
    if val.shape[1] != ft.rds.shape[1]:
        raise UserError(
            f"{method}: the pool's vectors have {ft.rds.shape[1]} dimensions but the featurize model gives "
            f"{val.shape[1]}; re-featurize the pool with --rds"
        )
    return ft.rds, val, encoder


@dataclass
class RDS:
    """Cosine of position-weighted mean hidden states to the validation examples, round-robin."""

    name: ClassVar[str] = "rds"
    dynamic: ClassVar[bool] = False
    reads_rds_vectors: ClassVar[bool] = True  # the features' RDS+ vectors: featurize --rds

    aggregation: str = field(
        default="round_robin",
        metadata={
            "help": "round_robin (RDS+'s default: validation examples take turns at their best remaining row), "
            "max or mean"
        },
    )

    def __post_init__(self) -> None:
        check_aggregation(self.aggregation, self.name)

    def needs_features(self) -> bool:
        return True

    def select(self, pool: Pool, budget: int, ctx: SelectionContext) -> Selection:
        validation = ctx.require_validation(self.name)
        rows, val, encoder = pool_and_validation_vectors(ctx, validation, self.name)
        sims = cosine_matrix(rows, val)
        chosen, scores = aggregate_select(sims, budget, self.aggregation)
        info = {
            "aggregation": self.aggregation,
            "validation_examples": len(validation),
            "dim": int(val.shape[1]),
            "encoder": encoder,
        }
        return Selection(
            indices=chosen.tolist(),
            scores=scores.tolist(),
            info=info,
            pool_scores=Selection.per_row(row_scores(sims, self.aggregation)),
        )
