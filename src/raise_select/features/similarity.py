"""Similarity of pool rows to a target's validation examples, shared by the selection methods
(`baselines.rds`, `baselines.embed`, `baselines.tsds`) and the policy's `prior: rds` column
(`policy.prior`); it lives here, below both, so that neither imports the other.

- `cosine_matrix`: the (rows x validation examples) cosine of two sets of vectors.
- `rds_vectors`: RDS+ vectors (the position-weighted mean of the last hidden state,
  `features.scoring.rds_weighted_mean`) of a list of examples under a model, the same vectors
  that `featurize --rds` stores for the pool; `baselines.rds` describes the method.
"""

from __future__ import annotations

import numpy as np
import torch

from ..errors import UserError
from ..models.loading import load_model_and_tokenizer
from .scoring import ResponseScorer, encode_examples, start_token_id


def cosine_matrix(rows: np.ndarray, validation: np.ndarray) -> np.ndarray:
    """(N, V) cosine similarity of every row vector to every validation vector (float64)."""
    a = np.asarray(rows, dtype=np.float64)
    b = np.asarray(validation, dtype=np.float64)
    na, nb = np.linalg.norm(a, axis=1, keepdims=True), np.linalg.norm(b, axis=1, keepdims=True)
    if (na == 0).any() or (nb == 0).any():
        which = "pool row" if (na == 0).any() else "validation example"
        idx = int(np.flatnonzero((na if which == "pool row" else nb)[:, 0] == 0)[0])
        raise UserError(f"cosine similarity: {which} {idx} has a zero vector")
    return (a / na) @ (b / nb).T


def rds_vectors(
    model_name: str, examples, template: str, max_length: int, dtype: str = "float32", device=None, batch_size: int = 8
) -> np.ndarray:
    """(n, H) RDS+ vectors of `examples` under `model_name`, as `featurize --rds` computes them."""
    device = torch.device(device or "cpu")
    model, tok = load_model_and_tokenizer(model_name, dtype, device)
    model.eval()
    encoded = encode_examples(examples, tok, template, max_length)
    empty = [i for i, e in enumerate(encoded) if not e.response_ids]
    if empty:
        raise UserError(f"rds: validation example {empty[0]} has no response token within max_length {max_length}")
    scorer = ResponseScorer(model, start_token_id(tok), tok.pad_token_id, batch_size, device, embed=False, rds=True)
    return scorer.score(encoded).rds
