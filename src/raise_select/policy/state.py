"""State fusion (eq. 2-6): the per-instruction input of the acquisition function.

The fused state of instruction d at step t is

    [P_{t-1}, t/T | len(x), len(y), log P(y|x), log P(y) | sem(d) | log1p(nu(d))]
      stage (2)     difficulty (4)                          semantic  availability (1)

Only the stage (2 numbers shared by all rows) and the availability column change from
step to step, so the static part (difficulty + semantic) is normalised once per pool and
held in `StaticState`; `fuse_state` concatenates everything for reference and tests, while
scoring (`acquisition.AcquisitionMLP.score`) never builds the N x M matrix. With
`policy.prior` (a departure, `policy/prior.py`) one more static column follows sem(d).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from ..errors import UserError
from ..features.table import DIFFICULTY_COLUMNS, FeatureTable

STAGE_DIM = 2  # eq. 2: [P_{t-1}, t/T]
DIFFICULTY_DIM = len(DIFFICULTY_COLUMNS)  # eq. 3
AVAILABILITY_DIM = 1  # eq. 5: times selected, read as log1p (see `availability`)


def availability(counts: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Eq. 5's availability nu(d) as the networks read it: log1p(times selected).

    Raw counts range from 0 to T (100 in the demo) and enter a tanh layer: rollouts sample
    and rarely push a count past 2-3, so the weight on a raw count is never trained on the
    values top-b reaches at use time (60-80 repeats of the same rows), and a count of 60
    saturates every unit it touches. log1p keeps 0 at 0, separates 0 / 1 / 2 strongly and
    grows slowly (log1p(80) = 4.4), so the same weight is informative at every count.
    """
    return torch.log1p(counts.to(dtype))


@dataclass
class Normalizer:
    """Standardisation of the difficulty columns (eq. 3), stored with the policy.

    Token lengths are heavy-tailed (a few very long responses), so columns listed in
    `log_columns` (the two lengths by default) go through log1p before standardising;
    the log-probabilities are already on a log scale. The semantic block is divided by
    one scalar, its root-mean-square, which keeps its geometry (cosine structure, PCA
    directions) while bringing it to unit scale like the other inputs.
    """

    mean: list[float]
    std: list[float]
    log_columns: list[int] = field(default_factory=lambda: [0, 1])
    sem_rms: float = 1.0

    @classmethod
    def fit(cls, x: np.ndarray, sem: np.ndarray | None = None, log_columns: tuple[int, ...] = (0, 1)) -> "Normalizer":
        """Fit on the raw (N, 4) difficulty matrix and optionally the (N, d) semantic block."""
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 2 or x.shape[0] == 0:
            raise UserError(f"cannot fit a normaliser on an array of shape {x.shape}: need (N >= 1, columns)")
        z = x.copy()
        z[:, list(log_columns)] = np.log1p(np.maximum(z[:, list(log_columns)], 0.0))
        std = z.std(axis=0)
        std[std < 1e-8] = 1.0  # a constant column stays at 0 instead of dividing by 0
        rms = 1.0
        if sem is not None and np.size(sem):
            rms = float(np.sqrt(np.mean(np.square(np.asarray(sem, dtype=np.float64)))))
            rms = rms if rms > 1e-8 else 1.0
        return cls(mean=z.mean(axis=0).tolist(), std=std.tolist(), log_columns=list(log_columns), sem_rms=rms)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """Normalised copy of a raw (N, 4) difficulty matrix, float32."""
        z = np.array(x, dtype=np.float64)
        z[:, self.log_columns] = np.log1p(np.maximum(z[:, self.log_columns], 0.0))
        return ((z - np.asarray(self.mean)) / np.asarray(self.std)).astype(np.float32)

    def scale_sem(self, sem: np.ndarray) -> np.ndarray:
        return (np.asarray(sem, dtype=np.float32) / np.float32(self.sem_rms)).astype(np.float32)

    def to_dict(self) -> dict:
        return {
            "mean": list(self.mean),
            "std": list(self.std),
            "log_columns": list(self.log_columns),
            "sem_rms": self.sem_rms,
        }

    @classmethod
    def from_dict(cls, d: dict) -> "Normalizer":
        return cls(
            mean=list(d["mean"]),
            std=list(d["std"]),
            log_columns=list(d.get("log_columns", [0, 1])),
            sem_rms=float(d.get("sem_rms", 1.0)),
        )


@dataclass
class StaticState:
    """The parts of eq. 6 that do not change during training, held once per pool."""

    x: torch.Tensor  # (N, 4 + d_sem [+ 1]) float32: normalised difficulty + scaled semantic [+ prior]
    classes: torch.Tensor  # (N,) int64 in [0, num_classes)
    num_classes: int
    normalizer: Normalizer
    prior_dim: int = 0  # 1 with `policy.prior` (policy/prior.py): a standardised static column after sem

    @classmethod
    def from_features(
        cls, ft: FeatureTable, normalizer: Normalizer | None = None, prior: np.ndarray | None = None
    ) -> "StaticState":
        """Build from a feature table already aligned to the pool (`FeatureTable.align`).

        Without a `normalizer` one is fitted on this table (training); pass the policy's
        own to score a pool exactly as during training (use time). `prior`: an (N,)
        standardised column (`policy.prior`) appended after the semantic block.
        """
        n = len(ft)
        if n == 0:
            raise UserError("the feature table is empty: no instruction to select from")
        difficulty = ft.difficulty
        normalizer = normalizer or Normalizer.fit(difficulty, ft.sem)
        if len(normalizer.mean) != difficulty.shape[1]:
            raise UserError(
                f"the policy's normaliser has {len(normalizer.mean)} difficulty columns, "
                f"the features have {difficulty.shape[1]}"
            )
        blocks = [normalizer(difficulty), normalizer.scale_sem(ft.sem)]
        if prior is not None:
            prior = np.asarray(prior, dtype=np.float32).reshape(-1)
            if prior.shape[0] != n:
                raise UserError(f"the prior column has {prior.shape[0]} rows, the feature table {n}")
            blocks.append(prior[:, None])
        x = np.concatenate(blocks, axis=1)
        classes = np.asarray(ft.cluster, dtype=np.int64)
        num_classes = ft.num_classes
        if classes.min() < 0 or classes.max() >= num_classes:
            raise UserError(
                f"feature table: class ids must lie in [0, {num_classes}), got {classes.min()}..{classes.max()}"
            )
        return cls(
            x=torch.from_numpy(np.ascontiguousarray(x)),
            classes=torch.from_numpy(classes),
            num_classes=num_classes,
            normalizer=normalizer,
            prior_dim=0 if prior is None else 1,
        )

    def __len__(self) -> int:
        return self.x.shape[0]

    @property
    def sem_dim(self) -> int:
        return self.x.shape[1] - DIFFICULTY_DIM - self.prior_dim

    @property
    def prior_column(self) -> int | None:
        """Index of the prior in the fused state (eq. 6 layout plus the prior), None without one."""
        return STAGE_DIM + self.x.shape[1] - 1 if self.prior_dim else None

    @property
    def fused_dim(self) -> int:
        """M of eq. 6: 2 + 4 + d_sem (+ 1 with a prior) + 1."""
        return STAGE_DIM + self.x.shape[1] + AVAILABILITY_DIM


def fuse_state(static: StaticState, perf_prev: float, progress: float, counts: torch.Tensor) -> torch.Tensor:
    """Eq. 2-6, materialised: (N, 2 + 4 + d_sem + 1) = [P_{t-1}, t/T, difficulty, sem, log1p(times selected)].

    The reference path (tests, inspection); per-step scoring uses the split first layer.
    """
    n = len(static)
    stage = torch.tensor([perf_prev, progress], dtype=torch.float32).expand(n, STAGE_DIM)
    avail = availability(counts).reshape(n, AVAILABILITY_DIM)
    return torch.cat([stage, static.x, avail], dim=1)
