"""`ifd`: Instruction-Following Difficulty (Li et al., 2024; reference code tianyi-lab/Cherry_LLM,
`cherry_seletion/data_by_IFD.py`).

IFD(x, y) = s(y|x) / s(y), the ratio of the mean response-token losses with and without the
prompt; here s(y|x) = -logp_cond and s(y) = -logp_uncond from the featurized table, so
IFD = logp_cond / logp_uncond (RAISE paper, appendix C.1), the feature table's `ifd`
column; here rows where s(y) is not positive are marked undefined. As the reference does, examples whose response was
cut by the length limit are skipped, and IFD > 1 (the prompt does not help predict the
response) is dropped (the reference's test is `mean_rate > 1`; IFD == 1 exactly is kept).
The rest are ranked by decreasing IFD and the top `budget` kept.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from ..data.pools import Pool
from ..errors import UserError
from .base import Selection, SelectionContext, top_k


def ifd_scores(logp_cond: np.ndarray, logp_uncond: np.ndarray) -> np.ndarray:
    """s(y|x) / s(y) with s the mean loss; NaN where s(y) is not positive."""
    loss_cond = -np.asarray(logp_cond, dtype=np.float64)
    loss_uncond = -np.asarray(logp_uncond, dtype=np.float64)
    out = np.full(loss_cond.shape, np.nan)
    ok = loss_uncond > 0
    out[ok] = loss_cond[ok] / loss_uncond[ok]
    return out


@dataclass
class IFD:
    """Top IFD among examples with IFD <= `max_ifd` whose response was not truncated."""

    name: ClassVar[str] = "ifd"
    dynamic: ClassVar[bool] = False

    max_ifd: float = field(
        default=1.0, metadata={"help": "drop examples whose IFD is above this (the reference's filter)"}
    )

    def needs_features(self) -> bool:
        return True

    def select(self, pool: Pool, budget: int, ctx: SelectionContext) -> Selection:
        ft = ctx.require_features(self.name)
        scores = ifd_scores(ft["logp_cond"], ft["logp_uncond"])
        truncated = (ft["truncated"] > 0) | (ft["len_response"] <= 0)
        undefined = ~truncated & ~np.isfinite(scores)
        too_high = ~truncated & ~undefined & (scores > self.max_ifd)
        keep = np.flatnonzero(~(truncated | undefined | too_high))
        if keep.size == 0:
            raise UserError(
                f"ifd: no example left after the filters (truncated {int(truncated.sum())}, "
                f"IFD > {self.max_ifd}: {int(too_high.sum())})"
            )
        chosen = top_k(scores, keep, budget)
        info = {
            "dropped": {
                "truncated_or_empty": int(truncated.sum()),
                "undefined": int(undefined.sum()),
                "ifd_above_max": int(too_high.sum()),
            },
            "max_ifd": self.max_ifd,
            "eligible": int(keep.size),
        }
        if chosen.size < budget:
            info["short_of_budget"] = int(budget - chosen.size)
        return Selection(
            indices=chosen.tolist(), scores=scores[chosen].tolist(), info=info, pool_scores=Selection.per_row(scores)
        )
