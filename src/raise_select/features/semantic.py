"""The semantic state H_sem(d) = Pool(E(d)) (eq. 4) and the K-means classes.

E(d) is either the auxiliary LM's last hidden state averaged over the response positions
of [s] + x + y (in a causal LM those positions have attended to the whole prompt and the
response, so their mean summarises the example; the prompt positions would add the
template boilerplate that every example shares), or a sentence-transformers embedding of
the example's text. `Pool` is adaptive average pooling over the feature dimension
(default) or a PCA fitted with scikit-learn.
"""

from __future__ import annotations

import logging
import warnings

import numpy as np
import torch

from ..data.pools import Example
from ..errors import UserError

log = logging.getLogger(__name__)

SEM_POOLS = ("mean", "pca")
# Above this many rows K-means runs mini-batch (flat memory, minutes instead of hours).
MINIBATCH_KMEANS_ABOVE = 200_000
# PCA is fitted on at most this many rows, drawn with the run's seed.
PCA_FIT_ROWS = 50_000


def adaptive_pool(vectors: np.ndarray, dim: int) -> np.ndarray:
    """(n, D) -> (n, dim): mean of `dim` contiguous, near-equal slices of the D features."""
    if vectors.shape[1] < dim:
        raise UserError(f"--sem-dim {dim} is larger than the embedding size {vectors.shape[1]}; lower --sem-dim")
    t = torch.from_numpy(np.ascontiguousarray(vectors, dtype=np.float32))
    return torch.nn.functional.adaptive_avg_pool1d(t[:, None, :], dim)[:, 0, :].numpy()


def fit_pca(sample: np.ndarray, dim: int, seed: int):
    """A scikit-learn PCA to `dim` components fitted on `sample` (n, D)."""
    from sklearn.decomposition import PCA

    if dim > min(sample.shape):
        raise UserError(
            f"--sem-pool pca: --sem-dim {dim} needs at least {dim} examples and an embedding of at least "
            f"{dim} features (have {sample.shape[0]} x {sample.shape[1]})"
        )
    return PCA(n_components=dim, random_state=seed).fit(sample)


def kmeans_classes(sem: np.ndarray, classes: int, seed: int) -> np.ndarray:
    """Class of every example for the diversity constraint (K-means on H_sem, seeded)."""
    from sklearn.cluster import KMeans, MiniBatchKMeans
    from sklearn.exceptions import ConvergenceWarning

    if classes < 1:
        raise UserError(f"--classes must be at least 1, got {classes}")
    if len(sem) == 0:
        raise UserError(
            "no example is left to featurize: no response token fits in --max-length (each one was "
            "skipped as response_has_no_tokens); raise --max-length"
        )
    if len(sem) < classes:
        raise UserError(f"--classes {classes} is more than the {len(sem)} featurized example(s)")
    if classes == 1:
        return np.zeros(len(sem), dtype=np.int64)
    x = np.asarray(sem, dtype=np.float64)
    if len(x) > MINIBATCH_KMEANS_ABOVE:
        km = MiniBatchKMeans(n_clusters=classes, random_state=seed, batch_size=4096, n_init=3)
    else:
        km = KMeans(n_clusters=classes, random_state=seed, n_init=1)
    with warnings.catch_warnings():  # duplicate points: reported below as a UserError, not a warning
        warnings.simplefilter("ignore", ConvergenceWarning)
        labels = km.fit_predict(x).astype(np.int64)
    found = len(np.unique(labels))
    if found < classes:  # fewer distinct semantic states than classes: some classes would stay empty
        raise UserError(
            f"--classes {classes}: K-means found only {found} distinct class(es) among {len(x)} examples "
            f"(too few distinct semantic states, e.g. with a tiny --max-length); use --classes {found}"
        )
    return labels


def example_text(example: Example) -> str:
    """What a sentence encoder embeds: every turn's text, the response last, no template."""
    return "\n\n".join(content for _, content in example.messages)


def load_sentence_encoder(name_or_path: str, device: str | torch.device, trust_remote_code: bool = False):
    from sentence_transformers import SentenceTransformer

    from ..models.resolve import resolve_model

    try:
        return SentenceTransformer(resolve_model(name_or_path), device=str(device), trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        raise UserError(
            f"--embed-model '{name_or_path}': cannot load a sentence-transformers model ({str(e).splitlines()[0]})"
        ) from None


def encode_texts(encoder, texts: list[str], batch_size: int) -> np.ndarray:
    return np.asarray(
        encoder.encode(texts, batch_size=batch_size, convert_to_numpy=True, show_progress_bar=False), dtype=np.float32
    )
