"""`embed`: cosine similarity of a sentence-transformers embedding to the validation examples
(the EMBED representation of "A Critical Look at Targeted Instruction Selection", ICML 2026),
aggregated like RDS+ (`baselines.aggregate`).

Pool rows and validation examples are embedded as the text of every turn, the response last,
without a template (`features.semantic.example_text`), with the encoder's own normalisation;
the pool's embeddings are cached in `<out>/cache/` (keyed by the encoder and the pool), so a
rerun for another target embeds only its validation set.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from ..data.pools import Pool
from ..features.similarity import cosine_matrix
from ..io import atomic_path, fingerprint
from .aggregate import aggregate_select, check_aggregation, row_scores
from .base import Selection, SelectionContext


def embedded_pool_and_validation(
    encoder_name: str, batch_size: int, pool: Pool, validation, ctx: SelectionContext
) -> tuple[np.ndarray, np.ndarray]:
    """The sentence embeddings of the pool's rows (cached in `ctx`'s cache folder, keyed by the
    encoder and the pool) and of the validation examples."""
    from ..features.semantic import encode_texts, example_text, load_sentence_encoder

    encoder = load_sentence_encoder(encoder_name, ctx.torch_device())
    from ..features.featurize import model_fingerprint

    encoder_key = model_fingerprint(encoder_name)  # its contents: an encoder rebuilt at the same path embeds again
    cache = ctx.cache_path(f"embed-{fingerprint({'encoder': encoder_key, 'pool': pool.fingerprint})[:16]}.npy")
    if cache is not None and cache.is_file():
        rows = np.load(cache)
    else:
        rows = encode_texts(encoder, [example_text(e) for e in pool.examples], batch_size)
        if cache is not None:
            with atomic_path(cache) as tmp, open(tmp, "wb") as f:
                np.save(f, rows)
    return rows, encode_texts(encoder, [example_text(e) for e in validation], batch_size)


@dataclass
class Embed:
    """Cosine of sentence embeddings to the validation examples, round-robin by default."""

    name: ClassVar[str] = "embed"
    dynamic: ClassVar[bool] = False

    encoder: str = field(
        default="all-minilm-l6-v2",
        metadata={"help": "sentence-transformers model: hub id, folder, or a packaged short name"},
    )
    aggregation: str = field(default="round_robin", metadata={"help": "round_robin, max or mean (see `rds`)"})
    batch_size: int = field(default=64, metadata={"help": "texts per encoder batch"})

    def __post_init__(self) -> None:
        check_aggregation(self.aggregation, self.name)

    def needs_features(self) -> bool:
        return False

    def select(self, pool: Pool, budget: int, ctx: SelectionContext) -> Selection:
        validation = ctx.require_validation(self.name)
        rows, val = embedded_pool_and_validation(self.encoder, self.batch_size, pool, validation, ctx)
        sims = cosine_matrix(rows, val)
        chosen, scores = aggregate_select(sims, budget, self.aggregation)
        info = {
            "aggregation": self.aggregation,
            "validation_examples": len(validation),
            "encoder": self.encoder,
            "dim": int(rows.shape[1]),
        }
        return Selection(
            indices=chosen.tolist(),
            scores=scores.tolist(),
            info=info,
            pool_scores=Selection.per_row(row_scores(sims, self.aggregation)),
        )
