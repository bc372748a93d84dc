"""Load a causal LM and its tokenizer from a hub id, a local folder, a GGUF file or a
packaged model's short name (every spec goes through `resolve.resolve_model`)."""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import UserError
from .resolve import resolve_model

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "auto": "auto"}


def load_tokenizer(name_or_path: str, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    name_or_path = resolve_model(name_or_path)
    try:
        tok = AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        raise UserError(_not_found(name_or_path, e)) from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token if tok.eos_token is not None else tok.unk_token
    return tok


def load_model_and_tokenizer(
    name_or_path: str,
    dtype: str = "float32",
    device: str | torch.device | None = None,
    trust_remote_code: bool = False,
):
    """Return `(model, tokenizer)`; `trust_remote_code` stays off unless asked for."""
    from transformers import AutoModelForCausalLM

    if dtype not in _DTYPES:
        raise UserError(f"unknown dtype '{dtype}'; available: {', '.join(_DTYPES)}")
    name_or_path = resolve_model(name_or_path)
    tok = load_tokenizer(name_or_path, trust_remote_code)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            name_or_path, dtype=_DTYPES[dtype], trust_remote_code=trust_remote_code
        )
    except (OSError, ValueError) as e:
        raise UserError(_not_found(name_or_path, e)) from None
    if device is not None:
        model.to(device)
    return model, tok


def _not_found(name_or_path: str, err: Exception) -> str:
    if Path(name_or_path).exists():
        return f"{name_or_path}: cannot load a causal LM from this folder ({str(err).splitlines()[0]})"
    return (
        f"model '{name_or_path}': not a local folder, and loading it from the hub failed "
        f"({str(err).splitlines()[0]})"
    )

