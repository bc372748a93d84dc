"""Small LM passes the baselines share, on the training loop's tokenisation
(`training.loop.encode_example`: labels on the response only)."""

from __future__ import annotations

from typing import Sequence

import torch

from ..data.pools import Example
from ..training.loop import IGNORE_INDEX, collate, encode_example


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


def response_losses(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(B,) mean next-token cross-entropy over each row's labelled (response) tokens."""
    shift_logits = logits[:, :-1].float()
    shift_labels = labels[:, 1:]
    tok = torch.nn.functional.cross_entropy(
        shift_logits.reshape(-1, shift_logits.size(-1)),
        shift_labels.reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction="none",
    ).view(shift_labels.shape)
    n = (shift_labels != IGNORE_INDEX).sum(1).clamp(min=1)
    return tok.sum(1) / n


def _keeps_logits(model) -> bool:
    import inspect

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "logits_to_keep" in inspect.signature(base.forward).parameters


def batch_response_losses(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """`response_losses` of a batch under `model`, with the LM head applied only from the first
    position that predicts a response token of any row: the prompt positions before it need
    no logits (for a large vocabulary, a good share of the forward pass)."""
    ids, labels = batch["input_ids"], batch["labels"]
    width = ids.shape[1]
    kwargs = {}
    labelled = (labels != IGNORE_INDEX).any(0).nonzero()
    if len(labelled) and _keeps_logits(model):
        first = max(int(labelled[0]) - 1, 0)  # logits at t - 1 predict the label at t
        kwargs["logits_to_keep"] = width - first
        labels = labels[:, first:]
    logits = model(input_ids=ids, attention_mask=batch["attention_mask"], **kwargs).logits
    return response_losses(logits, labels)


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
