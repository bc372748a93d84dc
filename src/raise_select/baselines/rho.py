"""`rho`: RHO-LOSS online batch selection (Mindermann et al., "Prioritized Training on Points
that are Learnable, Worth Learning, and Not Yet Learnt", ICML 2022; reference code
OATML/RHO-Loss, `src/curricula/selection_methods.py` `reducible_loss_selection`,
`src/train_irreducible.py`, `src/models/MultiModels.py`).

1. An irreducible-loss (IL) model is trained on holdout data from the target task: the
   validation set by default, or a named holdout set or file (`holdout`). As in the
   reference (`train_irreducible.py` trains on the validation split, keeps the checkpoint
   with the best loss on a further split, then scores the whole training set once and saves
   the losses), the IL model starts from the target model M_0, trains `il_epochs` epochs on
   a seeded (1 - `il_select_fraction`) share of the holdout, and the epoch with the lowest
   mean loss on the rest scores every pool row once: IL(x, y) = mean response-token loss.
   Scores are cached per row in `<out>/cache/rho_irreducible.jsonl` (resumable).
2. At every step, from a candidate set of `candidates` x B rows (the reference's
   `percent_train: 0.1`, a tenth of the large batch kept, is `candidates: 10`), the B rows
   with the largest reducible loss = current training loss - IL are kept; the current loss is
   taken without gradients with the model in training mode (the reference's default
   `selection_train_mode: True`; it matters only for models with dropout).
The paper's IL model may be a smaller model; the reference's precomputed-loss path used here
is its default ("much faster"). The irreducible losses are computed under the same prompt
template and truncation as training.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field, replace
from typing import ClassVar

import numpy as np
import torch

from ..data.pools import Example, Pool
from ..errors import UserError
from ..io import fingerprint
from .base import SelectionContext, top_k
from .cache import JsonlCache
from .online import OnlineSelector, row_losses

log = logging.getLogger(__name__)


def reducible_loss(training_loss: np.ndarray, irreducible: np.ndarray) -> np.ndarray:
    """RHO-LOSS's selection score: the current model's loss minus the irreducible loss."""
    return np.asarray(training_loss, dtype=np.float64) - np.asarray(irreducible, dtype=np.float64)


@dataclass
class RHOLoss(OnlineSelector):
    """Largest reducible loss (training loss - irreducible loss) in a uniform candidate set, every step."""

    name: ClassVar[str] = "rho"

    candidates: int = field(
        default=10,
        metadata={"help": "candidate set per step, in batches: `candidates` x B rows (the reference keeps 10%)"},
    )
    holdout: str = field(
        default="",
        metadata={"help": "IL model's training data: a named set or a pool file/folder; empty: the validation set"},
    )
    holdout_size: int = field(default=0, metadata={"help": "use at most this many holdout examples (0: all)"})
    il_epochs: int = field(default=3, metadata={"help": "epochs of IL-model training (the best one is kept)"})
    il_lr: float = field(default=0.0, metadata={"help": "IL-model learning rate; 0: the training learning rate"})
    il_select_fraction: float = field(
        default=0.25, metadata={"help": "share of the holdout kept out of IL training to choose its best epoch"}
    )

    def _rules(self) -> list[tuple[bool, str, str]]:
        return [
            *super()._rules(),
            (self.holdout_size >= 0, "holdout_size", "must be >= 0 (0: all)"),
            (self.il_epochs >= 1, "il_epochs", "must be >= 1"),
            (0 < self.il_select_fraction < 1, "il_select_fraction", "must lie in (0, 1)"),
            (self.il_lr >= 0, "il_lr", "must be >= 0 (0: the training learning rate)"),
        ]

    def check_inputs(self, ctx: SelectionContext) -> None:
        self._holdout(ctx)  # read again in `prepare`: a file or the validation set already read, so cheap

    def prepare(self, pool: Pool, trainer, ctx: SelectionContext) -> dict:
        holdout = self._holdout(ctx)
        cfg = trainer.cfg
        from ..features.featurize import model_fingerprint

        key = fingerprint(
            {
                "model": model_fingerprint(ctx.model),  # the IL model starts from M_0: its contents, not its path
                "holdout": [e.id for e in holdout],
                "epochs": self.il_epochs,
                "lr": self.il_lr,
                "select": self.il_select_fraction,
                "seed": ctx.seed,
                "batch_size": ctx.batch_size,
                "template": cfg.template,
                "max_length": cfg.max_length,
                "lora": cfg.lora,
                "dtype": cfg.dtype,
            }
        )
        cache = JsonlCache(ctx.cache_path("rho_irreducible.jsonl"))
        missing = [i for i, e in enumerate(pool.examples) if f"{key}:{e.id}" not in cache]
        info: dict = {"holdout_examples": len(holdout)}
        if missing:
            il_model, il_info = self._train_il_model(holdout, trainer, ctx)
            info.update(il_info)
            losses = row_losses(il_model, [trainer.encode(i) for i in missing], trainer.tokenizer.pad_token_id)
            for i, v in zip(missing, losses.tolist()):
                cache.put(f"{key}:{pool.examples[i].id}", {"il": v})
            del il_model
        self._il = np.array([cache.get(f"{key}:{e.id}")["il"] for e in pool.examples], dtype=np.float64)
        info.update({"irreducible_loss_mean": float(self._il.mean()), "irreducible_scored_now": len(missing)})
        return info

    def choose(self, trainer, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        current = row_losses(
            trainer.unwrapped, [trainer.encode(int(i)) for i in rows], trainer.tokenizer.pad_token_id, eval_mode=False
        )
        scores = np.full(len(self._il), -np.inf)
        scores[rows] = reducible_loss(current.numpy(), self._il[rows])
        picks = top_k(scores, np.asarray(rows), k)
        return picks, scores[picks]

    def _holdout(self, ctx: SelectionContext) -> list[Example]:
        if self.holdout:
            from ..data.validation import load_validation

            examples = load_validation(self.holdout, ctx.data_dir, n=self.holdout_size or None, seed=ctx.seed)
        else:
            examples = list(ctx.require_validation(self.name))
            if self.holdout_size:
                examples = examples[: self.holdout_size]
        if len(examples) < 2:
            raise UserError(
                f"rho: the holdout set has {len(examples)} example(s); the irreducible-loss model needs at least 2 "
                "(one to train on, one to choose its epoch)"
            )
        return examples

    def _train_il_model(self, holdout: list[Example], trainer, ctx: SelectionContext):
        """M_0 trained on the holdout's training share; the epoch with the lowest loss on the rest."""
        from ..training.loop import LMTrainer

        rng = np.random.default_rng(ctx.seed + 2)
        order = rng.permutation(len(holdout))
        n_sel = min(len(holdout) - 1, max(1, round(self.il_select_fraction * len(holdout))))
        sel_ex, train_ex = [holdout[i] for i in order[:n_sel]], [holdout[i] for i in order[n_sel:]]
        il_pool = Pool(examples=train_ex + sel_ex, format="messages", sources=["holdout"])
        b = min(ctx.batch_size, len(train_ex))
        per_epoch = math.ceil(len(train_ex) / b)
        cfg = replace(trainer.cfg, lr=self.il_lr or trainer.cfg.lr)
        il = LMTrainer(ctx.require_model(self.name), il_pool, cfg, per_epoch * self.il_epochs)
        sel_enc = [il.encode(len(train_ex) + j) for j in range(n_sel)]
        pad = il.tokenizer.pad_token_id
        curve = [float(row_losses(il.unwrapped, sel_enc, pad).mean())]  # M_0, for the record
        best_loss, best_epoch, best_state = math.inf, 0, {}
        for epoch in range(1, self.il_epochs + 1):
            perm = rng.permutation(len(train_ex))
            for s in range(0, len(perm), b):
                il.step(perm[s : s + b].tolist())
            loss = float(row_losses(il.unwrapped, sel_enc, pad).mean())
            curve.append(loss)
            if loss < best_loss:
                best_loss, best_epoch = loss, epoch
                best_state = {n: p.detach().clone() for n, p in il.unwrapped.named_parameters() if p.requires_grad}
        model = il.unwrapped
        with torch.no_grad():
            for n, p in model.named_parameters():
                if n in best_state:
                    p.copy_(best_state[n])
        log.info(
            "rho: irreducible-loss model: held-out loss by epoch (0 = M_0) %s; epoch %d kept",
            [round(x, 4) for x in curve],
            best_epoch,
        )
        return model, {
            "il_train_examples": len(train_ex),
            "il_select_examples": n_sel,
            "il_loss_by_epoch": curve,
            "il_best_epoch": best_epoch,
        }
