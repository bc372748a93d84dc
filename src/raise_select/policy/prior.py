"""A task-targeted prior for the acquisition function (a departure from the paper, `policy.prior`).

The paper's actor starts from random weights, so its first rounds sample batches about as a
uniform draw would; on a real pool with a real model, a 16-64 example validation loss moves by
1e-4 to 1e-3 nats per step, and the handful of rounds a CPU affords do not lift the policy off
random batches (README, real-data benchmark). With `prior: rds` the state gets one more static
column, the RDS+ similarity of each row to the target's validation set (the mean over the
validation examples of the cosine between position-weighted mean hidden states,
`baselines.rds`), computed once from featurize's stored vectors (`featurize --rds`) and one
forward pass over the validation set. The actor is initialised so that round 0 already ranks
rows by that column: one hidden unit reads only the prior, the output weighs only that unit,

    F_theta(s_d) = prior_scale * tanh(z_d)        (z: the column standardised over the pool)

so each class's softmax (eq. 10) samples like a soft RDS+ selection with the diversity
constraint of Algorithm 1, and PPO then learns where to deviate (stage, repeats, the other
state columns), which the other output weights (zero at the start) pick up from the first
update. `prior: selection` takes the column from any scoring baseline instead: the
`pool_scores` of its selection.json (`raise-select baseline ... --method less`, say), given
as `policy.prior_selection`; it must have been made on the same pool (its pool fingerprint
is checked), and rows the method left unscored (null) get the lowest score, with a count in
the log. `prior: none` is the paper's state (eq. 2-6) and initialisation.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch

from ..errors import UserError
from ..features.similarity import cosine_matrix, rds_vectors

log = logging.getLogger(__name__)

PRIORS = ("none", "rds", "selection")


def standardize(column: np.ndarray, what: str = "prior") -> np.ndarray:
    """(x - mean) / std over the pool, float32; a constant column becomes zeros."""
    x = np.asarray(column, dtype=np.float64).reshape(-1)
    if x.size == 0:
        raise UserError(f"{what}: empty column")
    if not np.isfinite(x).all():
        bad = int(np.flatnonzero(~np.isfinite(x))[0])
        raise UserError(f"{what}: row {bad} is not finite ({x[bad]})")
    std = x.std()
    return ((x - x.mean()) / (std if std > 1e-12 else 1.0)).astype(np.float32)


def rds_similarity(pool_vectors: np.ndarray, val_vectors: np.ndarray) -> np.ndarray:
    """(N,) mean over validation examples of the cosine between each pool row and each example."""
    if val_vectors.shape[1] != pool_vectors.shape[1]:
        raise UserError(
            f"prior rds: the pool's RDS+ vectors have {pool_vectors.shape[1]} dimensions, the validation "
            f"set's {val_vectors.shape[1]}; re-featurize the pool with --rds and the same model"
        )
    return cosine_matrix(pool_vectors, val_vectors).mean(axis=1)


def rds_prior(table, val_examples, model: str, template: str, max_length: int, device=None) -> np.ndarray:
    """The standardised `prior: rds` column of a feature table aligned to the pool.

    The validation vectors come from the featurize model, template and length limit recorded
    in the features' meta.json (as `baselines.rds` computes them), so both sides share one encoder.
    """
    if table.rds is None:
        raise UserError(
            "policy.prior rds: the features hold no RDS+ vectors; featurize the pool with --rds "
            "(`raise-select featurize ... --rds`, or `rds: true` in its config)"
        )
    if not val_examples:
        raise UserError("policy.prior rds: the validation set is empty")
    meta = table.meta
    val = rds_vectors(
        meta.get("model") or model,
        val_examples,
        meta.get("template", template),
        int(meta.get("max_length", max_length)),
        meta.get("dtype", "float32"),
        device,
    )
    return standardize(rds_similarity(table.rds, val), "policy.prior rds")


def selection_prior(path: str | Path, pool) -> np.ndarray:
    """The standardised `prior: selection` column: a baseline selection's `pool_scores` (pool order).

    Refuses a missing or malformed file, one without per-row scores, and one made on another
    pool (its `pool_fingerprint` must equal `pool.fingerprint`); null scores become the lowest.
    """
    path = Path(path)
    what = f"policy.prior_selection {path}"
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{what}: no such file (a baseline run's selection.json)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{what}: not a readable JSON selection ({e})") from None
    if not isinstance(record, dict):
        raise UserError(f"{what}: not a selection record (a JSON object)")
    scores = record.get("pool_scores")
    if not isinstance(scores, list):
        raise UserError(
            f"{what}: field pool_scores is missing; method {record.get('method')!r} scores no pool rows "
            "(take a scoring method: rds, embed, tsds, less, ifd, alpagasus, deita, ...)"
        )
    if record.get("pool_fingerprint") != pool.fingerprint or len(scores) != len(pool):
        raise UserError(
            f"{what}: made on another pool ({record.get('pool')!r}, {len(scores)} rows) than this one "
            f"({len(pool)} rows); run the baseline on the same pool file"
        )
    values = np.empty(len(scores), dtype=np.float64)
    missing = 0
    for row, v in enumerate(scores):
        if v is None:
            values[row], missing = np.nan, missing + 1
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            values[row] = float(v)
        else:
            raise UserError(f"{what}: pool_scores row {row} is not a number ({v!r})")
    finite = np.isfinite(values)
    if not finite.any():
        raise UserError(f"{what}: no row has a finite score")
    if missing or not finite.all():
        log.warning(
            "%s: %d of %d rows without a finite score get the lowest score", what, int((~finite).sum()), len(values)
        )
        values[~finite] = values[finite].min()
    return standardize(values, what)


def init_prior_actor(actor: torch.nn.Module, column: int, scale: float) -> None:
    """Round 0 scores = scale * tanh(state[column]) for every row (see the module docstring).

    `column` indexes the fused state (eq. 6 plus the prior). Hidden unit 0 reads only that
    column (weight 1, bias 0) and the output reads only unit 0 (weight `scale`): the score is
    strictly increasing in the prior, so each class ranks rows exactly as the prior does.
    """
    with torch.no_grad():
        actor.hidden_layer.weight[0].zero_()
        actor.hidden_layer.weight[0, column] = 1.0
        actor.hidden_layer.bias[0] = 0.0
        actor.out.weight.zero_()
        actor.out.weight[0, 0] = float(scale)
