"""`greats`: GREATS online batch selection (Wang et al., "GREATS: Online Selection of
High-Quality Data for LLM Training in Every Iteration", NeurIPS 2024; reference code
Jiachen-T-Wang/GREATS, `less/train/gctrainer.py`, `less/train/utils_ghost_dot_prod.py`).

At every step, from a candidate set of `candidates` x B rows, B rows are chosen greedily by
the first-order estimate of the validation-loss drop of an SGD step: row j's gain given the
rows S already chosen is

    lr * <g_j, g_val>  -  lr^2 * sum_{i in S} <g_i, g_j>

(`greedy_selection`, as the reference's: the pick's row of the interaction matrix is
subtracted from every score, so a row's own <g_j, g_j> never counts). g_i is the gradient of
row i's mean response-token loss, g_val the mean of those of `val_batch` validation rows
drawn at random each step, lr the learning rate of the coming update.

As the reference does: the inner products are taken over the trainable linear layers only
(LoRA's A and B matrices with `lora: true`; otherwise the linear layers of the last
`last_layers` decoder blocks, `last_layers: 0` for every trainable linear layer including
the LM head), from one forward and one backward pass over candidates and validation rows,
in chunks of B rows of similar length (little padding): each layer's input a_i (T x d_in)
and output gradient b_i (T x d_out) give the per-example gradient b_i^T a_i. Only what those
need is computed: autograd starts at the first scored layer (nothing below it is recorded,
so the backward pass stops there: under full fine-tuning it runs through the last
`last_layers` blocks and the LM head only), and the LM head is applied only from the first
position that predicts a response token. The reference materialises it per layer for sequences (its
T^2 "ghost" form is disabled there as slower); here the form is chosen per layer by cost:
the ghost form sum_{t,s} (a_i a_j^T)_{ts} (b_i b_j^T)_{ts} when (N T)^2 (d_in + d_out) is
below N T d_in d_out, else the per-example gradients. The estimate ignores Adam's
preconditioning and gradient clipping, as the reference's does (it scores with the raw
gradients and the scheduler's lr while training with AdamW). Where we depart from the
reference: its LoRA layers drop the LoRA scaling alpha/r from the per-example gradients
(a constant per layer that rescales the lr^2 term against the lr term); here the gradients
are the exact ones of the trainable parameters. The reference selects 1/`fracinv` of the
data loader's batch; here the candidate set is a separate uniform draw of `candidates` x B
rows, so every method trains on B rows per step.

Cost (`benchmarks/bench_online.py`). With LoRA and every adapter scored, the scoring pass's
per-example gradients cover every trainable weight, so the update's gradient is their sum over
the chosen rows, weighted as the trainer's token-mean loss (`reuse_gradients`, on by default):
the update then costs no forward or backward pass of its own, and the choice and the update are
today's up to rounding. The backward pass still runs through every block (the adapters sit in
all of them); `lora_last_layers: N` scores only the adapters of the last N blocks, so the
backward stops there, at the price of a gradient estimate over a part of the trainable weights
(a named departure; its update is a pass of its own).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import ClassVar, Sequence

import numpy as np
import torch

from ..data.pools import Pool
from ..errors import UserError
from ..training.gradients import layer_gram as layer_gram
from ..training.gradients import per_example_gram
from .base import SelectionContext
from .online import OnlineSelector

_LAYER = re.compile(r"(?:^|\.)layers\.(\d+)\.")


def greedy_selection(scores: np.ndarray, interaction: np.ndarray, k: int) -> tuple[list[int], list[float]]:
    """The reference's greedy: pick the best score, subtract the pick's row of `interaction`
    from every score, never pick twice. Returns the picks and each one's score when picked."""
    scores = np.asarray(scores, dtype=np.float64).copy()
    picks, gains = [], []
    for _ in range(min(k, len(scores))):
        j = int(np.argmax(scores))
        picks.append(j)
        gains.append(float(scores[j]))
        scores -= interaction[j]
        scores[j] = -np.inf
    return picks, gains


def scored_linears(
    model: torch.nn.Module, last_layers: int, lora_last_layers: int = 0
) -> list[tuple[str, torch.nn.Linear]]:
    """The linear layers whose per-example gradients enter the inner products: with LoRA (only
    the adapters are trainable) every adapter, or those of the last `lora_last_layers` decoder
    blocks when it is above 0; without, every trainable linear layer when `last_layers` is 0,
    else those of the last `last_layers` decoder blocks."""
    linears = [(n, m) for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and m.weight.requires_grad]
    if not linears:
        raise UserError("greats: the model has no trainable linear layer")
    if any("lora_" in n for n, _ in linears):
        last_layers = lora_last_layers
    if last_layers <= 0:
        return linears
    blocks = sorted({int(hit.group(1)) for n, _ in linears if (hit := _LAYER.search(n))})
    if not blocks:
        raise UserError(
            "greats: no decoder blocks ('layers.<i>.') found in the model; set greats.last_layers=0 "
            "(greats.lora_last_layers=0 under LoRA)"
        )
    keep = set(blocks[-last_layers:])
    return [(n, m) for n, m in linears if (hit := _LAYER.search(n)) and int(hit.group(1)) in keep]


def batch_gradient(
    module: torch.nn.Linear,
    a: Sequence[torch.Tensor],
    b: Sequence[torch.Tensor],
    rows: Sequence[tuple[int, int, float]],
) -> dict[str, torch.Tensor]:
    """The gradient of sum_i w_i loss_i for `module`'s weight (and bias) from the captured
    inputs `a` and output gradients `b` of each batch: `rows` are (batch, row in batch, w_i);
    the weight's is sum_i w_i b_i^T a_i over tokens, the bias's sum_i w_i sum_t b_i."""
    weight = torch.zeros_like(module.weight, dtype=torch.float32)
    bias = None if module.bias is None or not module.bias.requires_grad else torch.zeros_like(module.bias).float()
    for c in sorted({c for c, _, _ in rows}):
        idx = [r for cc, r, _ in rows if cc == c]
        w = torch.tensor([w for cc, _, w in rows if cc == c], dtype=torch.float32, device=weight.device)
        bc = b[c][idx].float() * w.view(-1, *([1] * (b[c].dim() - 1)))
        ac = a[c][idx].float()
        weight += bc.reshape(-1, bc.shape[-1]).T @ ac.reshape(-1, ac.shape[-1])
        if bias is not None:
            bias += bc.reshape(-1, bc.shape[-1]).sum(0)
    return {"weight": weight, **({"bias": bias} if bias is not None else {})}


@dataclass
class GREATS(OnlineSelector):
    """Greedy first-order validation-loss drop over a uniform candidate set, every step."""

    name: ClassVar[str] = "greats"

    candidates: int = field(
        default=4, metadata={"help": "candidate set per step, in batches: `candidates` x B rows drawn uniformly"}
    )
    val_batch: int = field(default=2, metadata={"help": "validation rows drawn per step for g_val (the reference: 2)"})
    last_layers: int = field(
        default=2,
        metadata={
            "help": "full fine-tuning: score with the last N decoder blocks' linear layers "
            "(0: every trainable linear layer)"
        },
    )
    lora_last_layers: int = field(
        default=0,
        metadata={
            "help": "LoRA: score only the adapters of the last N decoder blocks, so the scoring pass's backward "
            "stops there (0: every adapter, the reference's; then the update can reuse that pass)"
        },
    )
    reuse_gradients: bool = field(
        default=True,
        metadata={
            "help": "when every trainable weight is scored (LoRA): the update takes the chosen rows' gradients from "
            "the scoring pass instead of a forward and backward pass of its own (the same update up to rounding; "
            "false: a pass of its own)"
        },
    )

    def _rules(self) -> list[tuple[bool, str, str]]:
        return [
            *super()._rules(),
            (self.val_batch >= 1, "val_batch", "must be >= 1"),
            (self.last_layers >= 0, "last_layers", "must be >= 0 (0: every trainable linear layer)"),
            (self.lora_last_layers >= 0, "lora_last_layers", "must be >= 0 (0: every adapter)"),
        ]

    def prepare(self, pool: Pool, trainer, ctx: SelectionContext) -> dict:
        from ..training.loop import encode_example

        validation = ctx.require_validation(self.name)
        cfg = trainer.cfg
        self._val = [encode_example(e, trainer.tokenizer, cfg.template, cfg.max_length) for e in validation]
        self._rng = np.random.default_rng(ctx.seed + 1)
        self._modules = scored_linears(trainer.unwrapped, self.last_layers, self.lora_last_layers)
        dim = sum(m.weight.numel() + (m.bias.numel() if m.bias is not None else 0) for _, m in self._modules)
        scored = {f"{n}.{k}" for n, m in self._modules for k, p in m.named_parameters() if p.requires_grad}
        trainable = {n for n, p in trainer.unwrapped.named_parameters() if p.requires_grad}
        # The scoring pass's gradients are the update's when they cover every trainable weight.
        self._reuse = self.reuse_gradients and scored == trainable and trainer.accelerator.num_processes == 1
        self._capture: dict = {}
        return {
            "scored_layers": len(self._modules),
            "scored_parameters": dim,
            "validation_examples": len(validation),
            "val_batch": min(self.val_batch, len(validation)),
            "update_from_scoring_pass": self._reuse,
        }

    def choose(self, trainer, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        from ..training.loop import collate

        model = trainer.unwrapped
        device = next(model.parameters()).device
        val = self._rng.choice(len(self._val), size=min(self.val_batch, len(self._val)), replace=False)
        enc = [trainer.encode(int(i)) for i in rows] + [self._val[int(j)] for j in val]
        # Chunks of k rows of similar length, so little of the pass is padding.
        order = sorted(range(len(enc)), key=lambda i: len(enc[i].input_ids))
        chunks = [order[s : s + k] for s in range(0, len(order), k)]
        batches = [
            {key: v.to(device) for key, v in collate([enc[i] for i in c], trainer.tokenizer.pad_token_id).items()}
            for c in chunks
        ]
        capture = {} if self._reuse else None
        sorted_gram = per_example_gram(model, [m for _, m in self._modules], batches, capture).cpu().numpy()
        back = np.argsort(np.concatenate(chunks))  # row i of enc is row back[i] of sorted_gram
        gram = sorted_gram[np.ix_(back, back)]
        n = len(rows)
        lr = float(trainer.scheduler.get_last_lr()[0])
        picks, gains = greedy_selection(lr * gram[:n, n:].mean(axis=1), lr**2 * gram[:n, :n], k)
        if capture is not None:
            self._capture = {"rows": rows[picks], "enc": [enc[i] for i in picks], "at": [back[i] for i in picks]}
            self._capture.update(capture, k=k)
        return rows[picks], np.asarray(gains)

    def given_gradients(self, trainer, rows: np.ndarray):
        """The update's gradient from the scoring pass: `LMTrainer.step` takes the token mean
        of the response loss over the batch, sum_i m_i loss_i / sum_i n_i (m_i: row i's
        predicted response tokens, n_i its labelled ones, as the trainer counts them), so its
        gradient is sum_i (m_i / N) g_i, from each layer's captured inputs and output gradients."""
        from ..training.loop import IGNORE_INDEX, GivenGradients

        cap, self._capture = self._capture, {}
        if not cap or not np.array_equal(cap["rows"], rows):
            return None
        total = sum(sum(1 for x in e.labels if x != IGNORE_INDEX) for e in cap["enc"])
        predicted = [sum(1 for x in e.labels[1:] if x != IGNORE_INDEX) for e in cap["enc"]]
        k = cap["k"]
        where = [(int(pos) // k, int(pos) % k, m / max(total, 1)) for pos, m in zip(cap["at"], predicted)]
        grads = {}
        for name, module in self._modules:
            a, b = cap["parts"][module]
            for key, g in batch_gradient(module, a, b, where).items():
                grads[f"{name}.{key}"] = g
        losses = cap["losses"]
        loss = float(sum(w * float(losses[int(pos)]) for (_, _, w), pos in zip(where, cap["at"])))
        return GivenGradients(indices=[int(i) for i in rows], grads=grads, loss=loss)

    def online_state(self) -> dict:
        return {"rng": self._rng.bit_generator.state}

    def load_online_state(self, state: dict) -> None:
        self._rng.bit_generator.state = state["rng"]
