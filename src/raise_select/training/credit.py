"""Dense per-row credit of a policy step (`policy.credit: row`, issue 33).

Before the update of a policy step, every row it is about to train on and `credit_sample`
rows it did not choose (drawn uniformly from the rest of the pool) get a label: the
first-order change of P = -validation loss if the step trained on that row alone with SGD at
the step's learning rate,

    c_i = lr <g_val, g_i>,   g_val = the mean gradient of the validation rows' losses

(In-Run Data Shapley, arXiv 2406.11011; GREATS's first term). g_i is the gradient of row i's
mean response-token loss, taken over every trainable linear layer (under LoRA: every
adapter), as `training.gradients.per_example_gram` computes the inner products for GREATS:
one forward and one truncated backward pass over the labelled and the validation rows, in
chunks of rows of similar length. The model is in eval mode for the pass (as the validator
measures P), and nothing it holds changes: no `.grad`, no optimizer state, no RNG draw.

What the estimate leaves out, as GREATS's does: AdamW's preconditioning and gradient
clipping (the step does not move along -lr g), the second-order terms, and metrics other
than the validation loss (with `metric: accuracy` the labels still rank by the loss). The
labels of a step are compared only within the step (`policy/credit.py`), so the lr factor
and the schedule do not change what the policy learns from them.
"""

from __future__ import annotations

import numpy as np
import torch

from .gradients import per_example_gram
from .loop import collate, encode_example


def trainable_linears(model: torch.nn.Module) -> list[torch.nn.Linear]:
    """Every linear layer of `model` whose weight is trained (under LoRA, the adapters' A and B)."""
    return [m for m in model.modules() if isinstance(m, torch.nn.Linear) and m.weight.requires_grad]


def inner_products(model, modules, encoded: list, n: int, pad_id: int, chunk: int) -> np.ndarray:
    """(n, len(encoded) - n) float64 <g_i, g_j> of the first n encoded rows with the others, from
    `per_example_gram` over rows batched in chunks of similar length (`chunk` rows each)."""
    device = next(model.parameters()).device
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i].input_ids))
    chunks = [order[s : s + chunk] for s in range(0, len(order), chunk)]
    batches = [{k: v.to(device) for k, v in collate([encoded[i] for i in c], pad_id).items()} for c in chunks]
    sorted_gram = per_example_gram(model, modules, batches).cpu().numpy()
    back = np.argsort(np.concatenate(chunks))  # encoded row i is row back[i] of sorted_gram
    return sorted_gram[np.ix_(back[:n], back[n:])]


class RowCredit:
    """Credit labels of a policy step from the trainer's current model and the validator's examples."""

    def __init__(self, trainer, validator, sample: int, val_rows: int = 0):
        cfg = trainer.cfg
        self.trainer = trainer
        self.sample = sample
        self.val_rows = val_rows
        self.modules = trainable_linears(trainer.unwrapped)
        self.val = [encode_example(e, trainer.tokenizer, cfg.template, cfg.max_length) for e in validator.examples]

    def credit(self, rows: list[int], val: list[int] | None = None) -> torch.Tensor:
        """(len(rows),) float64 c_i = lr <g_val, g_i> of pool rows `rows` (g_val over validation rows `val`,
        all when None), at the learning rate of the trainer's coming step."""
        trainer = self.trainer
        model = trainer.unwrapped
        val = range(len(self.val)) if val is None else val
        encoded = [trainer.encode(int(i)) for i in rows] + [self.val[int(j)] for j in val]
        lr = float(trainer.scheduler.get_last_lr()[0])
        was_training = model.training
        model.eval()
        try:
            dots = inner_products(
                model, self.modules, encoded, len(rows), trainer.tokenizer.pad_token_id, max(len(rows), 1)
            )
        finally:
            model.train(was_training)
        return torch.from_numpy(lr * dots.mean(axis=1))

    def labels(self, chosen: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """(rows, credit) of a policy step: its `chosen` rows, then `sample` rows it did not choose (uniform,
        from `generator`), each with its credit."""
        n = len(self.trainer.pool)
        taken = torch.zeros(n, dtype=torch.bool)
        taken[chosen] = True
        others = torch.randperm(n, generator=generator)
        others = others[~taken[others]][: self.sample]
        val = None
        if 0 < self.val_rows < len(self.val):
            val = torch.randperm(len(self.val), generator=generator)[: self.val_rows].tolist()
        rows = torch.cat([chosen.to(torch.int64), others])
        return rows, self.credit(rows.tolist(), val)
