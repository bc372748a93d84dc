"""Load a causal LM and its tokenizer from a hub id, a local folder, a GGUF file or a
packaged model's short name (every spec goes through `resolve.resolve_model`)."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import SafetensorError

from ..errors import UserError
from .resolve import SHORT_NAMES, resolve_model

# Files from which transformers can build a tokenizer (fast, SentencePiece or BPE vocab).
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer.model",
    "vocab.json",
    "spiece.model",
    "sentencepiece.bpe.model",
    "spm.model",
    "vocab.txt",
)
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "auto": "auto"}


def check_device(spec: str | None, flag: str = "--device") -> None:
    """Refuse a device string torch cannot parse, or a CUDA device this machine does not have."""
    if spec is None:
        return
    try:
        device = torch.device(spec)
    except (RuntimeError, ValueError):
        raise UserError(f"{flag} {spec!r}: not a torch device; e.g. cpu, cuda, cuda:1, mps") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0 or (device.index is not None and device.index >= count):
            raise UserError(
                f"{flag} {spec}: this machine has {count} CUDA device(s); use cpu"
                + (f" or cuda:0..cuda:{count - 1}" if count else "")
            )


def load_tokenizer(name_or_path: str, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    name_or_path = resolve_model(name_or_path)
    folder = Path(name_or_path)
    if folder.is_dir() and not any((folder / f).is_file() for f in TOKENIZER_FILES):
        raise UserError(
            f"{folder}: no tokenizer files here (expected one of {', '.join(TOKENIZER_FILES)}); "
            "save the tokenizer next to the model (tokenizer.save_pretrained)"
        )
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

    if dtype not in DTYPES:
        raise UserError(f"unknown dtype '{dtype}'; available: {', '.join(DTYPES)}")
    name_or_path = resolve_model(name_or_path)
    tok = load_tokenizer(name_or_path, trust_remote_code)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            name_or_path, dtype=DTYPES[dtype], trust_remote_code=trust_remote_code
        )
    except (OSError, ValueError, SafetensorError) as e:  # SafetensorError: a truncated or corrupt weights file
        raise UserError(_not_found(name_or_path, e)) from None
    if device is not None:
        model.to(device)
    return model, tok


def _not_found(name_or_path: str, err: Exception) -> str:
    why = " ".join(str(err).split())[:300] or type(err).__name__  # the library's message, whole but on one line
    if Path(name_or_path).exists():
        kind = " (a weights file is truncated or corrupt)" if isinstance(err, SafetensorError) else ""
        return f"{name_or_path}: cannot load a causal LM from this folder{kind} ({why})"
    return f"model '{name_or_path}': not a local folder, and loading it from the hub failed ({why}; {SHORT_NAMES})"
