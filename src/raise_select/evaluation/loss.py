"""Held-out figures of a model: per item, under any built-in metric (`heldout_values`), and
the mean response loss (e.g. GSM8K test solutions, `response_loss`).

The loss of an example is the mean cross-entropy over its response tokens given its prompt
(the same computation as the validation reward's P = -loss, `training.reward.Validator`);
the set's loss is the mean over examples. On multiple-choice sets the main figure is the
gold choice's cross-entropy over the choices (`choice_ce`, `evaluation.choices`);
`default_metric` names the main metric of a named set. A LoRA adapter folder is loaded on its
base model.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..data.pools import Example
from ..errors import UserError


def load_for_eval(model: str, dtype: str = "float32", device: str | None = None):
    """(model, tokenizer) of a full model spec or of a LoRA adapter folder on its base."""
    from ..models.loading import load_model_and_tokenizer, load_tokenizer

    adapter_cfg = Path(model) / "adapter_config.json"
    if not adapter_cfg.is_file():
        return load_model_and_tokenizer(model, dtype=dtype, device=device)
    base = json.loads(adapter_cfg.read_text(encoding="utf-8")).get("base_model_name_or_path")
    if not base:
        raise UserError(f"{adapter_cfg}: field 'base_model_name_or_path' missing; cannot load the LoRA adapter")
    from peft import PeftModel

    base_model, _ = load_model_and_tokenizer(base, dtype=dtype, device=device)
    return PeftModel.from_pretrained(base_model, model), load_tokenizer(model)


def response_loss(
    model: str,
    examples: list[Example],
    template: str = "alpaca",
    max_length: int = 512,
    batch_size: int = 8,
    dtype: str = "float32",
    device: str | None = None,
) -> float:
    """Mean over `examples` of the mean response-token loss of `model`."""
    from ..training.reward import Validator

    lm, tok = load_for_eval(model, dtype=dtype, device=device)
    return -Validator(
        examples, tok, metric="neg_loss", max_length=max_length, template=template, batch_size=batch_size
    )(lm)


def example_losses(
    model: str,
    examples: list[Example],
    template: str = "alpaca",
    max_length: int = 512,
    batch_size: int = 8,
    dtype: str = "float32",
    device: str | None = None,
):
    """(n,) numpy array: each example's mean response-token loss under `model` (the per-item
    figures that `response_loss` averages)."""
    from ..training.reward import Validator

    lm, tok = load_for_eval(model, dtype=dtype, device=device)
    return Validator(
        examples, tok, metric="neg_loss", max_length=max_length, template=template, batch_size=batch_size
    ).example_losses(lm)


def default_metric(name: str) -> str:
    """The main held-out metric of a named set (`gsm8k`, `commonsenseqa:test`, ...):
    `choice_ce` for multiple-choice sets, `neg_loss` (the response loss) otherwise."""
    from ..data.benchmarks import BENCHMARKS

    spec = BENCHMARKS.get(name.partition(":")[0])
    return "choice_ce" if spec is not None and spec.multiple_choice else "neg_loss"


def heldout_values(
    model,
    examples: list[Example],
    metric: str = "neg_loss",
    template: str = "alpaca",
    max_length: int = 512,
    batch_size: int = 8,
    dtype: str = "float32",
    device: str | None = None,
    tokenizer=None,
    choice_form: str = "cloze",
    max_new_tokens: int = 256,
) -> np.ndarray:
    """(n,) float64: each example's figure under `metric`, in the order of `examples`.

    `model` is a model spec (folder, hub id, LoRA adapter folder; loaded with `load_for_eval`)
    or a loaded model (then `tokenizer` is required). Per item: `neg_loss` its mean
    response-token loss, `choice_ce` the gold choice's cross-entropy over the choices,
    `choice_acc` and `accuracy` 1.0 or 0.0 (lower is better for the first two). The set's
    figure is the mean; the reward's P is the mean, negated for `neg_loss` and `choice_ce`.
    `choice_form` (`cloze`, `letters`) applies to the choice metrics, `template` to
    `neg_loss` and `accuracy`, `max_new_tokens` to `accuracy`."""
    from ..training.reward import BUILTIN_METRICS, Validator

    if metric not in BUILTIN_METRICS:
        raise UserError(f"unknown held-out metric '{metric}'; available: {', '.join(BUILTIN_METRICS)}")
    if isinstance(model, str):
        model, loaded = load_for_eval(model, dtype=dtype, device=device)
        tokenizer = tokenizer or loaded
    if tokenizer is None:
        raise UserError("a loaded model needs its tokenizer for held-out figures")
    return Validator(
        examples,
        tokenizer,
        metric=metric,
        max_length=max_length,
        template=template,
        batch_size=batch_size,
        max_new_tokens=max_new_tokens,
        choice_form=choice_form,
    ).item_values(model)
