"""`tsds`: TSDS, distribution matching to the target with a diversity term (Liu et al., "TSDS:
Data Selection for Task-Specific Model Finetuning", NeurIPS 2024; reference code ZifanL/TSDS,
`tsds.py`; the KNN-KDE aggregation of "A Critical Look at Targeted Instruction Selection").

Each validation (query) example j spreads a probability mass of 1/M over its nearest pool rows
(M: the number of validation examples), nearest first, giving neighbour k the mass
1 / (M s kde_k): a row in a dense region (large kernel density estimate) gets less, so
near-duplicates share one share. The scale s is the smallest at which the transport cost of
that assignment, weighted by alpha / C, outweighs the diversity term (1 - alpha) M (the
reference's greedy over a heap of each query's prefix sums, `probabilities`). The selection is
`budget` draws from the pool's summed probabilities, with replacement (a row drawn twice is
trained on twice as often), seeded; `selection.json` keeps every draw, and an export
(`baseline --export`, `select`) lists each drawn row once with its `times_drawn`.

As the reference: K = min(max_k, N / 10) nearest neighbours per query by L2 distance; the KDE
of a neighbour over its kde_k nearest among all the queries' neighbours, with the kernel
max(0, 1 - d^2 / sigma^2) (sigma 0: every KDE is 1); alpha 0.5, C 5, sigma 0.75, max_k 5000,
kde_k 1000. Where we differ: exact nearest neighbours (scikit-learn) instead of faiss's
approximate IVF index (at the pool sizes a CPU affords, exact search is cheap); the vectors are
L2-normalised first (`normalize`, on by default: the reference's C and sigma are on the scale
of unit-norm sentence embeddings, and RDS+ hidden states are not unit-norm). The representation
is the RDS+ vector of `featurize --rds` (`representation: rds`, one forward pass per row) or a
sentence embedding (`representation: embed`, all-MiniLM-L6-v2).
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from ..config import check_fields
from ..data.pools import Pool
from ..errors import UserError
from .base import Selection, SelectionContext

REPRESENTATIONS = ("rds", "embed")


def knn(pool: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(M, k) L2 distances and indices of each query's k nearest pool rows, nearest first
    (ties: the lower row index)."""
    from sklearn.neighbors import NearestNeighbors

    nn = NearestNeighbors(n_neighbors=k, algorithm="brute", metric="euclidean").fit(pool)
    dists, idx = nn.kneighbors(queries)
    order = np.lexsort((idx, dists), axis=1)
    return np.take_along_axis(dists, order, 1), np.take_along_axis(idx, order, 1)


def kernel_density(vectors: np.ndarray, k: int, sigma: float) -> np.ndarray:
    """(n,) sum over each vector's k nearest among `vectors` (itself included) of
    max(0, 1 - d^2 / sigma^2); all ones at sigma 0."""
    if sigma == 0:
        return np.ones(len(vectors))
    d, _ = knn(vectors, vectors, min(k, len(vectors)))
    kernel = 1 - d**2 / sigma**2
    return (kernel * (kernel > 0)).sum(axis=1)


def probabilities(dists: np.ndarray, kdes: np.ndarray, idx: np.ndarray, n: int, alpha: float, c: float) -> np.ndarray:
    """(n,) the pool's selection probabilities from each query's sorted neighbour distances
    `dists`, their KDEs `kdes` and pool indices `idx` (all M x K), as the reference computes
    them: raise s through the queries' prefix sums of 1 / kde in increasing order until
    alpha / C x the transport cost reaches (1 - alpha) M; then neighbours 0..K_j of query j get
    1 / (M s kde) and the next one the rest of the query's 1 / M. One departure: a query none
    of whose prefix sums lies below the final s puts its whole 1 / M on its nearest row (the
    reference starts it at K_j = 0, which gives that row more than 1 / M, and stops on its
    assertion; this happens only when C is small against the distances)."""
    m, k_max = dists.shape
    if k_max < 2:
        raise UserError("tsds: needs at least 2 neighbours per validation example")
    last = [-1] * m  # the last neighbour given 1 / (M s kde); -1: none yet
    heap = [(1.0 / kdes[j][0], 0, j) for j in range(m)]
    heapq.heapify(heap)
    weighted = [dists[j][0] / kdes[j][0] for j in range(m)]
    cost = np.zeros(m)
    total = 0.0
    s = 0.0
    while heap:
        count, k, j = heapq.heappop(heap)
        s = count
        total -= cost[j]
        cost[j] = dists[j][k + 1] * count - weighted[j]
        total += cost[j]
        if alpha / c * total >= (1 - alpha) * m:
            break
        last[j] = k
        if k < k_max - 2:
            heapq.heappush(heap, (count + 1.0 / kdes[j][k + 1], k + 1, j))
            weighted[j] += dists[j][k + 1] / kdes[j][k + 1]
    probs = np.zeros(n)
    for j in range(m):
        given = 0.0
        for k in range(last[j] + 1):
            probs[idx[j][k]] += 1 / m / s / kdes[j][k]
            given += 1 / m / s / kdes[j][k]
        probs[idx[j][last[j] + 1]] += max(1.0 / m - given, 0.0)
    return probs


@dataclass
class TSDS:
    """KNN-KDE distribution matching to the validation set, with a diversity term; sampled."""

    name: ClassVar[str] = "tsds"
    dynamic: ClassVar[bool] = False

    representation: str = field(
        default="rds", metadata={"help": "rds (featurize --rds vectors) or embed (sentence embeddings)"}
    )
    encoder: str = field(default="all-minilm-l6-v2", metadata={"help": "sentence encoder of `representation: embed`"})
    alpha: float = field(default=0.5, metadata={"help": "distribution matching (1) against diversity (0)"})
    c: float = field(default=5.0, metadata={"help": "the reference's C: the scale of the transport cost"})
    sigma: float = field(default=0.75, metadata={"help": "KDE kernel width (0: no density correction)"})
    max_k: int = field(
        default=5000, metadata={"help": "neighbours per validation example (at most a tenth of the pool)"}
    )
    kde_k: int = field(default=1000, metadata={"help": "neighbours of the KDE (at most a tenth of the pool)"})
    normalize: bool = field(default=True, metadata={"help": "L2-normalise the vectors first (see the module notes)"})
    batch_size: int = field(default=64, metadata={"help": "texts per encoder batch (`representation: embed`)"})

    def __post_init__(self) -> None:
        check_fields(
            self,
            [
                (
                    self.representation in REPRESENTATIONS,
                    "representation",
                    f"must be one of {', '.join(REPRESENTATIONS)}",
                ),
                (0 < self.alpha < 1, "alpha", "must be in (0, 1)"),
                (self.c > 0, "c", "must be > 0"),
                (self.sigma >= 0, "sigma", "must be >= 0"),
                (self.max_k >= 2, "max_k", "must be >= 2"),
                (self.kde_k >= 1, "kde_k", "must be >= 1"),
            ],
            self.name,
        )

    def needs_features(self) -> bool:
        return self.representation == "rds"

    @property
    def reads_rds_vectors(self) -> bool:  # the features' RDS+ vectors: featurize --rds
        return self.representation == "rds"

    def vectors(self, pool: Pool, validation, ctx: SelectionContext) -> tuple[np.ndarray, np.ndarray]:
        if self.representation == "rds":
            from .rds import pool_and_validation_vectors

            rows, val, _ = pool_and_validation_vectors(ctx, validation, self.name)
        else:
            from .embed import embedded_pool_and_validation

            rows, val = embedded_pool_and_validation(self.encoder, self.batch_size, pool, validation, ctx)
        rows, val = np.asarray(rows, dtype=np.float64), np.asarray(val, dtype=np.float64)
        for what, x in (("pool", rows), ("validation", val)):
            if not np.isfinite(x).all():
                raise UserError(f"tsds: {what} row {int(np.flatnonzero(~np.isfinite(x).all(1))[0])} has a NaN or inf")
        if self.normalize:
            rows = rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)
            val = val / np.maximum(np.linalg.norm(val, axis=1, keepdims=True), 1e-12)
        return rows, val

    def select(self, pool: Pool, budget: int, ctx: SelectionContext) -> Selection:
        validation = ctx.require_validation(self.name)
        if len(pool) < 3:
            raise UserError(f"tsds: the pool has {len(pool)} rows; the assignment needs at least 3")
        rows, val = self.vectors(pool, validation, ctx)
        n = len(rows)
        k = min(self.max_k, n // 10)
        dists, idx = knn(rows, val, max(k, 2))  # the reference needs 2 at least
        near = np.unique(idx)
        kde_of = dict(zip(near.tolist(), kernel_density(rows[near], min(self.kde_k, max(n // 10, 1)), self.sigma)))
        kdes = np.vectorize(kde_of.get)(idx).astype(np.float64)
        probs = probabilities(dists, kdes, idx, n, self.alpha, self.c)
        draws = np.random.default_rng(ctx.seed).multinomial(budget, probs / probs.sum())
        chosen = np.repeat(np.arange(n), draws)
        info = {
            "representation": self.representation,
            "validation_examples": len(validation),
            "neighbours": int(dists.shape[1]),
            "rows_with_probability": int((probs > 0).sum()),
            "distinct_rows_drawn": int((draws > 0).sum()),
        }
        return Selection(
            indices=chosen.tolist(),
            scores=probs[chosen].tolist(),
            info=info,
            pool_scores=Selection.per_row(probs),
        )
