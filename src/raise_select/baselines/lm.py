"""Small LM passes the baselines share, on the training loop's tokenisation
(`training.loop.encode_example`: labels on the response only)."""

from __future__ import annotations

from typing import Sequence

import torch

from ..data.pools import Example
from ..training.gradients import batch_response_losses as batch_response_losses
from ..training.gradients import response_losses
from ..training.loop import collate, encode_example


def encoded_batch(
    examples: Sequence[Example], tokenizer, template: str, max_length: int, device
) -> dict[str, torch.Tensor]:
    """Right-padded `input_ids`, `attention_mask`, `labels` of `examples` on `device`."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    batch = collate([encode_example(e, tokenizer, template, max_length) for e in examples], pad)
    return {k: v.to(device) for k, v in batch.items()}


def left_padded_batch(tokenizer, texts: Sequence[str], max_length: int, device) -> dict[str, torch.Tensor]:
    """`texts` tokenized, padded and cut from the left (the prompt's tail, where a score is read
    at the last position, is kept), with position ids that padding does not shift."""
    tokenizer.padding_side = "left"
    tokenizer.truncation_side = "left"
    enc = tokenizer(list(texts), return_tensors="pt", padding=True, truncation=True, max_length=max_length)
    enc["position_ids"] = (enc["attention_mask"].cumsum(-1) - 1).clamp(min=0)
    return {k: v.to(device) for k, v in enc.items() if k != "token_type_ids"}


@torch.no_grad()
def example_losses(
    model,
    tokenizer,
    examples: Sequence[Example],
    template: str,
    max_length: int,
    batch_size: int = 8,
    desc: str = "losses",
) -> torch.Tensor:
    """(N,) mean response loss of each example under `model` (eval mode, batched)."""
    from ..progress import progress_bar

    device = next(model.parameters()).device
    model.eval()
    out = []
    for s in progress_bar(range(0, len(examples), batch_size), desc=desc, unit="batch"):
        batch = encoded_batch(examples[s : s + batch_size], tokenizer, template, max_length, device)
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        out.append(response_losses(logits, batch["labels"]).cpu())
    return torch.cat(out)
