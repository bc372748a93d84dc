"""Small LM passes the baselines share: tokenising a pool example as prompt + response with
labels on the response only, and per-example mean response losses."""

from __future__ import annotations

from typing import Sequence

import torch

from ..data.pools import Example
from ..data.templates import render_prompt

IGNORE = -100


def encode_example(example: Example, tokenizer, template: str, max_length: int) -> tuple[list[int], list[int]]:
    """`(input_ids, labels)`: the rendered prompt then the response and EOS, labels -100 on
    the prompt. Over `max_length` the prompt is cut from the left, then the response from
    the right, so at least one response token stays."""
    prompt = render_prompt(example.prompt_messages, template, tokenizer, example.record)
    p_ids = tokenizer(prompt, add_special_tokens=True)["input_ids"]
    r_ids = tokenizer(example.response, add_special_tokens=False)["input_ids"]
    if tokenizer.eos_token_id is not None:
        r_ids = r_ids + [tokenizer.eos_token_id]
    r_ids = r_ids[:max_length - 1] if len(r_ids) >= max_length else r_ids
    room = max_length - len(r_ids)
    p_ids = p_ids[-room:] if room > 0 else []
    return p_ids + r_ids, [IGNORE] * len(p_ids) + r_ids


def collate(encoded: Sequence[tuple[list[int], list[int]]], pad_id: int, device) -> dict[str, torch.Tensor]:
    """Right-padded batch of `encode_example` outputs."""
    width = max(len(ids) for ids, _ in encoded)
    input_ids = torch.full((len(encoded), width), pad_id, dtype=torch.long)
    labels = torch.full((len(encoded), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(encoded), width), dtype=torch.long)
    for i, (ids, lab) in enumerate(encoded):
        input_ids[i, : len(ids)] = torch.tensor(ids)
        labels[i, : len(lab)] = torch.tensor(lab)
        mask[i, : len(ids)] = 1
    return {"input_ids": input_ids.to(device), "labels": labels.to(device), "attention_mask": mask.to(device)}


def response_losses(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(B,) mean next-token cross-entropy over each row's labelled (response) tokens."""
    shift_logits = logits[:, :-1].float()
    shift_labels = labels[:, 1:]
    tok = torch.nn.functional.cross_entropy(
        shift_logits.reshape(-1, shift_logits.size(-1)), shift_labels.reshape(-1), ignore_index=IGNORE, reduction="none"
    ).view(shift_labels.shape)
    n = (shift_labels != IGNORE).sum(1).clamp(min=1)
    return tok.sum(1) / n


@torch.no_grad()
def example_losses(model, tokenizer, examples: Sequence[Example], template: str, max_length: int, batch_size: int = 8, desc: str = "losses") -> torch.Tensor:
    """(N,) mean response loss of each example under `model` (eval mode, batched)."""
    from tqdm.auto import tqdm

    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    model.eval()
    out = []
    for s in tqdm(range(0, len(examples), batch_size), desc=desc, unit="batch"):
        enc = [encode_example(e, tokenizer, template, max_length) for e in examples[s:s + batch_size]]
        batch = collate(enc, pad, device)
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        out.append(response_losses(logits, batch["labels"]).cpu())
    return torch.cat(out)
