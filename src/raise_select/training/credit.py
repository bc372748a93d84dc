"""Dense per-row credit of a policy step (`policy.credit: row`, issue 33).

Before the update of a policy step, every row it is about to train on and `credit_sample`
rows it did not choose (drawn uniformly from the rest of the pool) get a label: the
first-order change of P (the validator's performance) if the step trained on that row alone
with SGD at the step's learning rate,

    c_i = lr <g_val, g_i>,   g_val = -grad P = the gradient of the validation objective

(In-Run Data Shapley, arXiv 2406.11011; GREATS's first term). The validation objective follows
the validator's metric, so the labels measure what the reward measures:

- `choice_ce` / `choice_acc` (multiple-choice validation sets): the mean over items of the gold
  choice's cross-entropy over the choices (`training.choices.choice_ce_sum`; accuracy is not
  differentiable, its labels rank by the cross-entropy);
- every other metric: the mean over validation rows of each row's mean response-token loss
  (with `metric: accuracy` or a user metric the labels still rank by that loss).

g_i is the gradient of row i's mean response-token loss (what a training step descends), taken
over every trainable linear layer (under LoRA: every adapter). g_val is computed once per step
(`gradients.objective_gradient`), then every labelled row's <g_i, g_val> from one forward and one
truncated backward pass over the rows (`gradients.per_example_projections`): no Gram matrix of rows
and validation rows. The model is in eval mode for the pass (as the validator measures P), and
nothing it holds changes: no `.grad`, no optimizer state, no RNG draw.

What the estimate leaves out, as GREATS's does: AdamW's preconditioning and gradient clipping
(the step does not move along -lr g) and the second-order terms. The labels of a step are
compared only within the step (`policy/credit.py`), so the lr factor and the schedule do not
change what the policy learns from them.
"""

from __future__ import annotations

import contextlib

import torch

from ..policy.config import CREDIT_ROW_NORMS as ROW_NORMS
from ..policy.config import CREDIT_VAL_NORMS as VAL_NORMS
from ..progress import progress_bar
from .choices import choice_ce_sum
from .gradients import batch_response_losses, objective_gradient, per_example_gradients, per_example_projections
from .loop import collate, encode_example


def trainable_linears(model: torch.nn.Module) -> list[torch.nn.Linear]:
    """Every linear layer of `model` whose weight is trained (under LoRA, the adapters' A and B)."""
    return [m for m in model.modules() if isinstance(m, torch.nn.Linear) and m.weight.requires_grad]


def _chunks(order: list[int], size: int) -> list[list[int]]:
    return [order[s : s + size] for s in range(0, len(order), size)]


class RowCredit:
    """Credit labels of a policy step from the trainer's current model and the validator's examples
    (or `examples`, on the validator's metric: the whole validation set where P reads a part)."""

    def __init__(
        self,
        trainer,
        validator,
        sample: int,
        val_rows: int = 0,
        chunk: int = 8,
        val_norm: str = "mean",
        examples: list | None = None,
        row_norm: str = "none",
    ):
        from .reward import CHOICE_METRICS

        cfg = trainer.cfg
        self.trainer = trainer
        self.sample = sample
        self.val_rows = val_rows
        self.chunk = chunk
        if val_norm not in VAL_NORMS:
            raise ValueError(f"val_norm {val_norm!r}: one of {', '.join(VAL_NORMS)}")
        self.val_norm = val_norm
        if row_norm not in ROW_NORMS:
            raise ValueError(f"row_norm {row_norm!r}: one of {', '.join(ROW_NORMS)}")
        self.row_norm = row_norm
        self.modules = trainable_linears(trainer.unwrapped)
        self.objective = "choice_ce" if validator.metric in CHOICE_METRICS else "response loss"
        examples = validator.examples if examples is None else examples
        if self.objective == "choice_ce":
            from .choices import ChoiceRequests

            self.choices = ChoiceRequests(
                examples, trainer.tokenizer, form=validator.choice_form, max_length=cfg.max_length
            )
            self.n_val = len(self.choices.items)
        else:
            self.val = [encode_example(e, trainer.tokenizer, cfg.template, cfg.max_length) for e in examples]
            self.n_val = len(self.val)

    def _batches(self, encoded: list) -> list[dict]:
        """One collated batch (on the model's device) per group of encoded rows."""
        device = next(self.trainer.unwrapped.parameters()).device
        pad = self.trainer.tokenizer.pad_token_id
        return [{k: v.to(device) for k, v in collate(rows, pad).items()} for rows in encoded]

    def _row_batches(self, rows: list[int], desc: str | None) -> tuple[torch.Tensor, list[dict]]:
        """Pool rows `rows` in batches of `chunk` rows of similar length (on the model's device), and
        where each batch row sits in `rows` (the batches' rows in order); `desc`: a progress bar."""
        encoded = [self.trainer.encode(int(i)) for i in rows]
        order = sorted(range(len(rows)), key=lambda i: len(encoded[i].input_ids))
        chunks = _chunks(order, self.chunk)
        batches = self._batches([[encoded[i] for i in c] for c in chunks])
        if desc is not None:
            batches = progress_bar(batches, total=len(batches), desc=desc, unit="batch")
        return torch.tensor([i for c in chunks for i in c], dtype=torch.int64), batches

    def validation_gradient(self, val: list[int], val_norm: str | None = None) -> list[list[torch.Tensor]]:
        """g_val over validation items/rows `val`: the gradient of the mean validation objective
        (`val_norm` "mean"), or the mean of each item's gradient scaled to unit norm ("unit": no item
        outweighs another, as LESS averages cosines over validation examples); the labeller's own
        `val_norm` when None."""
        unit = (val_norm or self.val_norm) == "unit"
        model, n = self.trainer.unwrapped, 1 if unit else len(val)  # unit: each part is scaled to norm 1
        size = 1 if unit else self.chunk
        if self.objective == "choice_ce":
            parts = [lambda c=c: choice_ce_sum(model, self.choices, c, self.chunk) / n for c in _chunks(val, size)]
        else:
            ordered = sorted(val, key=lambda j: len(self.val[j].input_ids))
            batches = self._batches([[self.val[j] for j in c] for c in _chunks(ordered, size)])
            parts = [lambda b=b: batch_response_losses(model, b).sum() / n for b in batches]
        return objective_gradient(self.modules, parts, unit=unit)

    def credit(
        self, rows: list[int], val: list[int] | None = None, lr: float | None = None, desc: str | None = None
    ) -> torch.Tensor:
        """(len(rows),) float64 c_i = lr <g_val, g_i> of pool rows `rows` (g_val over validation items
        `val`, all when None), at the learning rate of the trainer's coming step unless `lr` is given;
        with the labeller's `row_norm` "unit", lr <g_val, g_i> / |g_i|. `desc`: a progress bar over
        the rows' batches, under that name."""
        unit = self.row_norm == "unit"
        out, size = self.credits(rows, [val], lr, desc, norms=unit)
        return out[:, 0] / size.clamp_min(1e-30) if unit else out[:, 0]

    def credits(
        self,
        rows: list[int],
        vals: list[list[int] | None],
        lr: float | None = None,
        desc: str | None = None,
        norms: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """`credit` against several validation subsets from one pass over the rows: (len(rows), K)
        float64, column k with g_val over `vals[k]` (all items when None); with `norms` also each
        row's gradient norm |g_i| (len(rows),), else None."""
        vals = [list(range(self.n_val)) if v is None else [int(j) for j in v] for v in vals]
        with self.measuring():
            g_vals = [self.validation_gradient(v) for v in vals]
        return self.project(rows, g_vals, lr, desc, norms)

    @contextlib.contextmanager
    def measuring(self):
        """The model in eval mode (as the validator measures P), put back as it was after."""
        model = self.trainer.unwrapped
        was_training = model.training
        model.eval()
        try:
            yield
        finally:
            model.train(was_training)

    def project(
        self,
        rows: list[int],
        directions: list[list[list[torch.Tensor]]],
        lr: float | None = None,
        desc: str | None = None,
        norms: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(len(rows), K) float64 lr <d_k, g_i> of pool rows `rows` for given directions (each as
        `validation_gradient` returns), at the trainer's coming step's learning rate unless `lr` is
        given, from one pass over the rows; with `norms` also each row's |g_i|, else None."""
        lr = float(self.trainer.scheduler.get_last_lr()[0]) if lr is None else float(lr)
        where, batches = self._row_batches(rows, desc)
        with self.measuring():
            dots, sq = per_example_projections(self.trainer.unwrapped, self.modules, batches, directions, norms=norms)
        out = torch.zeros((len(rows), len(directions)), dtype=torch.float64)
        out[where] = dots.cpu()
        size = None
        if sq is not None:
            size = torch.zeros(len(rows), dtype=torch.float64)
            size[where] = sq.cpu().clamp_min(0).sqrt()
        return lr * out, size

    def row_gradients(self, rows: list[int], desc: str | None = None) -> torch.Tensor:
        """(len(rows), P) float32 gradients of the rows' losses over the scored parameters, flattened
        as `flat_gradient` flattens g_val: the whole matrix, for analyses over many directions."""
        where, batches = self._row_batches(rows, desc)
        with self.measuring():
            grads = per_example_gradients(self.trainer.unwrapped, self.modules, batches).cpu()
        out = torch.empty_like(grads)
        out[where] = grads
        return out

    @staticmethod
    def flat_gradient(g: list[list[torch.Tensor]]) -> torch.Tensor:
        """A gradient as `validation_gradient` returns it, flattened in `row_gradients`' order."""
        return torch.cat([t.reshape(-1).float().cpu() for part in g for t in part])

    def labels(self, chosen: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """(rows, credit) of a policy step: its `chosen` rows, then `sample` rows it did not choose (uniform,
        from `generator`), each with its credit."""
        n = len(self.trainer.pool)
        taken = torch.zeros(n, dtype=torch.bool)
        taken[chosen] = True
        others = torch.randperm(n, generator=generator)
        others = others[~taken[others]][: self.sample]
        val = None
        if 0 < self.val_rows < self.n_val:
            val = torch.randperm(self.n_val, generator=generator)[: self.val_rows].tolist()
        rows = torch.cat([chosen.to(torch.int64), others])
        return rows, self.credit(rows.tolist(), val)
