"""Mean response loss of a model on held-out examples (e.g. GSM8K test solutions).

The loss of an example is the mean cross-entropy over its response tokens given its prompt
(the same computation as the validation reward's P = -loss, `training.reward.Validator`);
the set's loss is the mean over examples. A LoRA adapter folder is loaded on its base model.
"""

from __future__ import annotations

import json
from pathlib import Path

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
