"""Multiple-choice items scored as lm-evaluation-harness's `multiple_choice` output type does:
each choice's continuation log-likelihood given the question, accuracy, `acc_norm` and the
gold choice's cross-entropy over the choices (docs/metrics.md).

The computation lives in `training.choices` (the validation reward reads it too); this module
is its public face and adds `score_choices`, which also takes a model spec.
"""

from __future__ import annotations

from typing import Sequence

from ..errors import UserError
from ..training.choices import (
    FORMS,
    TARGET_DELIMITER,
    ChoiceItem,
    ChoiceRequests,
    ChoiceScores,
    check_item,
    choice_cross_entropy,
    encode_pair,
    encode_requests,
    encoded_loglikelihoods,
    item_from_example,
    items_from_examples,
    loglikelihoods,
    requests_of,
    score_items,
    scores_from_loglik,
)

__all__ = [
    "FORMS",
    "TARGET_DELIMITER",
    "ChoiceItem",
    "ChoiceRequests",
    "ChoiceScores",
    "check_item",
    "choice_cross_entropy",
    "encode_pair",
    "encode_requests",
    "encoded_loglikelihoods",
    "item_from_example",
    "items_from_examples",
    "loglikelihoods",
    "requests_of",
    "score_choices",
    "score_items",
    "scores_from_loglik",
]


def score_choices(
    model,
    examples: Sequence,
    tokenizer=None,
    form: str = "cloze",
    batch_size: int = 16,
    max_length: int = 512,
    dtype: str = "float32",
    device: str | None = None,
) -> ChoiceScores:
    """Score multiple-choice `examples` (`Example`s or `ChoiceItem`s) under `model`: a model
    object (then `tokenizer` is required) or a model spec (a folder, hub id or LoRA adapter
    folder, loaded with `evaluation.loss.load_for_eval`)."""
    items = [e if isinstance(e, ChoiceItem) else item_from_example(e) for e in examples]
    if not items:
        raise UserError("no multiple-choice items to score")
    if isinstance(model, str):
        from .loss import load_for_eval

        model, loaded_tok = load_for_eval(model, dtype=dtype, device=device)
        tokenizer = tokenizer or loaded_tok
    if tokenizer is None:
        raise UserError("a model object needs its tokenizer to score choices")
    return score_items(model, tokenizer, items, form=form, batch_size=batch_size, max_length=max_length)
