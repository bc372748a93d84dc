"""`less`: gradient-similarity selection for a target task (Xia et al., 2024; reference code
princeton-nlp/LESS, `less/data_selection/collect_grad_reps.py`, `matching.py`,
`less/scripts/train/base_training_args.sh`).

1. Warm-up: LoRA (r 128, alpha 512, dropout 0.1 on q/k/v/o projections, AdamW, lr 2e-5,
   linear schedule with 3% warm-up, 4 epochs; the reference's settings) on a random 5% of
   the pool; a checkpoint after every epoch.
2. At each checkpoint, the LoRA gradient of every pool example (one example per backward,
   as the reference does with batch size 1) is Adam-preconditioned with the checkpoint's
   optimizer moments exactly as the reference's `obtain_gradients_with_adam`:
   m' = b1 m + (1 - b1) g, v' = b2 v + (1 - b2) g^2, g_adam = m' / sqrt(v' + eps)
   (no bias correction, eps inside the root). Validation gradients are plain (SGD) ones.
3. Both are randomly projected to `proj_dim` (8192) dimensions with a seeded Rademacher
   matrix. The reference uses trak's CUDA projector (a fused kernel); here a chunked torch
   projection generates the matrix block by block from the seed, so it runs on any device
   and never holds the whole matrix for large gradients. Projections are L2-normalised.
4. Similarity = sum over checkpoints (weighted by the epoch's mean learning rate, normalised
   as in `matching.py`) of the cosine similarity of each pool row to each validation example.
   `aggregation: mean` (the default) averages it over the validation examples and keeps the
   top `budget`, as `matching.py` does for one validation set (it averages within a task's
   examples and takes the max over subtasks; one validation set is one subtask); `max` and
   `round_robin` are the other rules of `baselines.aggregate`.
Gradients are taken in eval mode (LoRA dropout off) so they are deterministic.

`target: choice_ce` (not the reference's form; `sft` is the default) differentiates each
multiple-choice validation item's gold-choice cross-entropy over its choices, computed from the
choices' log-likelihoods as the held-out choice metric scores them (`training.choices`), instead
of the response loss of its answer line: on ARC and CommonsenseQA that line's loss ("The answer is
X.") is mostly its format, and LESS's top rows fell below the base model (docs/benchmarks.md).

The pool's projected gradients (the long pass: one backward per row per checkpoint) are kept
under `<cache>/less-train-grads/<key>/`, one `.npy` per `chunk` rows, written atomically, so a
killed pass resumes at its last chunk. The key hashes what decides them: the model, the pool's
rows and their order, template, max length, the checkpoint's LoRA weights and Adam moments, and
the projection. Runs that differ only in the validation set (one LESS run per target, or ROSE,
whose training gradients are LESS's) share them when they share a cache folder.
"""

from __future__ import annotations

import hashlib
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, ClassVar, Sequence

import numpy as np
import torch

from ..config import check_fields
from ..data.pools import Example, Pool
from ..errors import UserError
from ..io import atomic_path, fingerprint
from ..training.choices import FORMS
from .aggregate import aggregate_select, check_aggregation, row_scores
from .base import Selection, SelectionContext
from .lm import encoded_batch

log = logging.getLogger(__name__)


class RademacherProjector:
    """x -> x @ R with R (dim, proj_dim) of i.i.d. +-1/sqrt(proj_dim) entries.

    R is generated `block_rows` rows at a time, block b from its own generator seeded by
    (seed, b), so R depends only on (dim, proj_dim, seed, block_rows) and any block can be
    rebuilt alone. When dim x proj_dim is at most `cache_limit` entries R is kept in memory.
    """

    def __init__(
        self,
        dim: int,
        proj_dim: int,
        seed: int = 0,
        block_rows: int = 8192,
        device: torch.device | str = "cpu",
        cache_limit: int = 2**26,
    ):
        self.dim, self.proj_dim, self.seed, self.block_rows = dim, proj_dim, seed, block_rows
        self.device = torch.device(device)
        self._dense = self._full() if dim * proj_dim <= cache_limit else None

    def block(self, b: int) -> torch.Tensor:
        rows = min(self.block_rows, self.dim - b * self.block_rows)
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + b)
        signs = torch.randint(0, 2, (rows, self.proj_dim), generator=gen, dtype=torch.int8)
        return (signs.to(self.device, torch.float32) * 2 - 1) / math.sqrt(self.proj_dim)

    def _blocks(self) -> int:
        return math.ceil(self.dim / self.block_rows)

    def _full(self) -> torch.Tensor:
        return torch.cat([self.block(b) for b in range(self._blocks())])

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """(n, dim) -> (n, proj_dim), float32."""
        x = x.to(self.device, torch.float32)
        if self._dense is not None:
            return x @ self._dense
        out = torch.zeros((x.shape[0], self.proj_dim), device=self.device)
        for b in range(self._blocks()):
            s = b * self.block_rows
            out += x[:, s : s + self.block_rows] @ self.block(b)
        return out


def adam_precondition(
    grad: torch.Tensor,
    exp_avg: torch.Tensor,
    exp_avg_sq: torch.Tensor,
    beta1: float = 0.9,
    beta2: float = 0.999,
    eps: float = 1e-8,
) -> torch.Tensor:
    """The reference's Adam update direction for one more step from moments (m, v)."""
    m = beta1 * exp_avg + (1 - beta1) * grad
    v = beta2 * exp_avg_sq + (1 - beta2) * grad**2
    return m / torch.sqrt(v + eps)


def cosine_to_each(train: torch.Tensor, val: torch.Tensor) -> torch.Tensor:
    """(n, V) cosine similarity of each train row to each validation row."""
    t = torch.nn.functional.normalize(train.float(), dim=1)
    v = torch.nn.functional.normalize(val.float(), dim=1)
    return t @ v.T


def mean_cosine(train: torch.Tensor, val: torch.Tensor) -> torch.Tensor:
    """(n,) mean over validation rows of the cosine similarity of each train row to them."""
    return cosine_to_each(train, val).mean(dim=1)


@dataclass
class _Checkpoint:
    lora: dict[str, torch.Tensor]
    exp_avg: torch.Tensor
    exp_avg_sq: torch.Tensor
    betas: tuple[float, float]
    mean_lr: float

    def digest(self) -> str:
        """A hash of the weights and moments (bit-exact: a warm-up that differs in any bit
        gives another digest, so cached gradients are never mixed across checkpoints)."""
        h = hashlib.sha256()
        for name in sorted(self.lora):
            h.update(name.encode())
            h.update(self.lora[name].detach().float().cpu().contiguous().numpy().tobytes())
        for t in (self.exp_avg, self.exp_avg_sq):
            h.update(t.detach().float().cpu().contiguous().numpy().tobytes())
        h.update(repr(self.betas).encode())
        return h.hexdigest()


def chunked_store(folder: Path | None, n: int, chunk: int, compute: Callable[[int, int], torch.Tensor], desc: str):
    """(n, d): rows [s, s + chunk) from `folder/<s>.npy` when there, else from `compute(s, e)`,
    saved there atomically; so a pass killed part-way resumes at its last saved chunk.
    `folder` None: nothing is kept."""
    from ..progress import progress_bar

    starts = list(range(0, n, chunk))
    files = {s: folder / f"{s:07d}.npy" for s in starts} if folder is not None else {}
    cached = [s for s in starts if s in files and files[s].is_file()]
    if cached:
        log.info("%s: %d of %d rows from %s", desc, sum(min(chunk, n - s) for s in cached), n, folder)
    out = []
    bar = progress_bar(total=n, desc=desc, unit="ex", initial=sum(min(chunk, n - s) for s in cached))
    for s in starts:
        e = min(s + chunk, n)
        if s in cached:
            block = torch.from_numpy(np.load(files[s]))
            if block.shape[0] != e - s:
                raise UserError(
                    f"{files[s]}: holds {block.shape[0]} rows, expected {e - s}; delete the folder {folder}"
                )
        else:
            block = compute(s, e)
            if folder is not None:
                with atomic_path(files[s]) as tmp:
                    with open(tmp, "wb") as f:
                        np.save(f, block.cpu().numpy())
            bar.update(e - s)
        out.append(block)
    bar.close()
    return torch.cat(out) if out else torch.zeros((0, 0))


LESS_TARGETS = ("sft", "choice_ce", "auto")


@dataclass
class LESS:
    """LoRA gradient features, Adam-preconditioned and projected; top cosine to the validation set."""

    name: ClassVar[str] = "less"
    dynamic: ClassVar[bool] = False

    warmup_fraction: float = field(
        default=0.05, metadata={"help": "share of the pool the LoRA warm-up trains on (random, seeded)"}
    )
    warmup_epochs: int = field(default=4, metadata={"help": "warm-up epochs; one checkpoint after each"})
    warmup_batch_size: int = field(
        default=32, metadata={"help": "examples per warm-up update (the reference: 1 x 32 accumulation)"}
    )
    lr: float = field(default=2e-5, metadata={"help": "warm-up AdamW learning rate (linear schedule)"})
    warmup_ratio: float = field(default=0.03, metadata={"help": "share of warm-up steps with a rising learning rate"})
    lora_r: int = field(default=128, metadata={"help": "LoRA rank"})
    lora_alpha: float = field(default=512.0, metadata={"help": "LoRA alpha"})
    lora_dropout: float = field(
        default=0.1, metadata={"help": "LoRA dropout during the warm-up (off when taking gradients)"}
    )
    target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"],
        metadata={"help": "modules given LoRA adapters, whose gradients are the features (a list, or comma-separated)"},
    )
    proj_dim: int = field(default=8192, metadata={"help": "dimension of the randomly projected gradients"})
    proj_seed: int = field(default=0, metadata={"help": "seed of the Rademacher projection matrix"})
    chunk: int = field(default=32, metadata={"help": "gradients collected before each projection (memory vs speed)"})
    target: str = field(
        default="sft",
        metadata={
            "help": "the validation objective whose gradient is the target: sft (the reference: each validation "
            "example's response loss), choice_ce (a multiple-choice item's gold-choice cross-entropy over its "
            "choices, as the held-out choice metric scores it) or auto (choice_ce when every validation example is "
            "a multiple-choice item, else sft)"
        },
    )
    choice_form: str = field(
        default="cloze",
        metadata={"help": "with target choice_ce: cloze (each choice's text after the question) or letters"},
    )
    aggregation: str = field(
        default="mean",
        metadata={
            "help": "mean (the reference's rule for one validation set), max, or round_robin over validation examples"
        },
    )

    def __post_init__(self) -> None:
        check_aggregation(self.aggregation, self.name)
        check_fields(self, self._rules(), self.name)

    def _rules(self) -> list[tuple[bool, str, str]]:
        """The rules on the options (a subclass adds its own)."""
        return [
            (0 < self.warmup_fraction <= 1, "warmup_fraction", "must be in (0, 1]"),
            (self.warmup_epochs >= 1, "warmup_epochs", "must be >= 1"),
            (self.warmup_batch_size >= 1, "warmup_batch_size", "must be >= 1"),
            (self.lr > 0, "lr", "must be > 0"),
            (0 <= self.warmup_ratio <= 1, "warmup_ratio", "must be in [0, 1]"),
            (self.lora_r >= 1, "lora_r", "must be >= 1"),
            (0 <= self.lora_dropout < 1, "lora_dropout", "must be in [0, 1)"),
            (bool(self.target_modules), "target_modules", "must name at least one module"),
            (self.proj_dim >= 1, "proj_dim", "must be >= 1; at 0 every score would be 0"),
            (self.proj_seed >= 0, "proj_seed", "must be >= 0"),
            (self.chunk >= 1, "chunk", "must be >= 1"),
            (self.target in LESS_TARGETS, "target", f"must be one of {', '.join(LESS_TARGETS)}"),
            (self.choice_form in FORMS, "choice_form", f"must be one of {', '.join(FORMS)}"),
        ]

    def needs_features(self) -> bool:
        return False  # its own LoRA gradients of the target model

    def select(self, pool: Pool, budget: int, ctx: SelectionContext) -> Selection:
        from peft import LoraConfig, get_peft_model

        from ..models.loading import load_model_and_tokenizer

        validation = self._validation(ctx)
        device = ctx.torch_device()
        torch.manual_seed(ctx.seed)
        base, tok = load_model_and_tokenizer(ctx.require_model(self.name), device=device)
        try:
            model = get_peft_model(
                base,
                LoraConfig(
                    r=self.lora_r,
                    lora_alpha=self.lora_alpha,
                    lora_dropout=self.lora_dropout,
                    target_modules=list(self.target_modules),
                    task_type="CAUSAL_LM",
                ),
            )
        except ValueError as e:
            raise UserError(
                f"less: cannot put LoRA on modules {list(self.target_modules)} of {ctx.model} ({e}); "
                f"set less.target_modules"
            ) from None
        rng = np.random.default_rng(ctx.seed)
        n_warm = max(1, round(self.warmup_fraction * len(pool)))
        warm_rows = rng.choice(len(pool), size=n_warm, replace=False)
        checkpoints = self._warmup(model, tok, [pool.examples[i] for i in warm_rows], ctx, rng)

        params = [p for p in model.parameters() if p.requires_grad]
        dim = sum(p.numel() for p in params)
        projector = RademacherProjector(dim, self.proj_dim, self.proj_seed, device=device)
        total_lr = sum(c.mean_lr for c in checkpoints)
        weights = [c.mean_lr / total_lr if total_lr > 0 else 1 / len(checkpoints) for c in checkpoints]
        sims = None
        model.eval()
        for c, (ckpt, w) in enumerate(zip(checkpoints, weights)):
            with torch.no_grad():
                for n, p in model.named_parameters():
                    if p.requires_grad:
                        p.copy_(ckpt.lora[n])
            val = self._validation_grads(
                model, tok, validation, ctx, projector, f"{self.name} val grads {c + 1}/{len(checkpoints)}"
            )
            train = self._projected_grads(
                model,
                pool.examples,
                self._sft_loss(model, tok, ctx),
                projector,
                ckpt,
                f"{self.name} train grads {c + 1}/{len(checkpoints)}",
                store=self._train_store(pool, ctx, ckpt),
            )
            part = w * cosine_to_each(train, val).cpu()
            sims = part if sims is None else sims + part
        chosen, scores = aggregate_select(sims.numpy(), budget, self.aggregation)
        info = {
            "warmup_examples": n_warm,
            "checkpoints": len(checkpoints),
            "checkpoint_weights": weights,
            "gradient_dim": dim,
            "proj_dim": self.proj_dim,
            "validation_examples": len(validation),
            "target": self.resolved_target(validation),
            "aggregation": self.aggregation,
        }
        return Selection(
            indices=chosen.tolist(),
            scores=scores.tolist(),
            info=info,
            pool_scores=Selection.per_row(row_scores(sims.numpy(), self.aggregation)),
        )

    def _warmup(self, model, tok, examples: list[Example], ctx: SelectionContext, rng) -> list[_Checkpoint]:
        from transformers import get_linear_schedule_with_warmup

        from ..progress import progress_bar

        params = [p for p in model.parameters() if p.requires_grad]
        names = [n for n, p in model.named_parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=self.lr, weight_decay=0.0)
        per_epoch = math.ceil(len(examples) / self.warmup_batch_size)
        total = per_epoch * self.warmup_epochs
        sched = get_linear_schedule_with_warmup(opt, math.ceil(self.warmup_ratio * total), total)
        device = next(model.parameters()).device
        checkpoints = []
        model.train()
        for epoch in range(self.warmup_epochs):
            lrs = []
            order = rng.permutation(len(examples))
            for s in progress_bar(
                range(0, len(order), self.warmup_batch_size), desc=f"less warm-up epoch {epoch + 1}", unit="step"
            ):
                rows = order[s : s + self.warmup_batch_size]
                batch = encoded_batch([examples[i] for i in rows], tok, ctx.template, ctx.max_length, device)
                lrs.append(sched.get_last_lr()[0])
                model(**batch).loss.backward()
                opt.step()
                sched.step()
                opt.zero_grad(set_to_none=True)
            state = [opt.state[p] for p in params]
            checkpoints.append(
                _Checkpoint(
                    lora={n: p.detach().clone() for n, p in zip(names, params)},
                    exp_avg=torch.cat([s["exp_avg"].reshape(-1) for s in state]).clone(),
                    exp_avg_sq=torch.cat([s["exp_avg_sq"].reshape(-1) for s in state]).clone(),
                    betas=tuple(opt.param_groups[0]["betas"]),
                    mean_lr=float(np.mean(lrs)),
                )
            )
        return checkpoints

    def _validation(self, ctx: SelectionContext) -> Sequence:
        """The items whose gradients define the target (LESS: the validation examples)."""
        return ctx.require_validation(self.name)

    def resolved_target(self, validation: Sequence) -> str:
        """`target` with `auto` resolved: choice_ce when every validation example is a multiple-choice item."""
        if self.target != "auto":
            return self.target
        from ..training.reward import metric_for

        return "choice_ce" if metric_for("auto", validation) == "choice_ce" else "sft"

    def _validation_grads(
        self, model, tok, validation: Sequence, ctx: SelectionContext, projector: RademacherProjector, desc: str
    ) -> torch.Tensor:
        """(V, proj_dim): plain (SGD) gradients of each validation item's objective (`target`), projected."""
        if self.resolved_target(validation) == "choice_ce":
            from ..training.choices import ChoiceRequests, choice_ce_sum

            requests = ChoiceRequests(validation, tok, form=self.choice_form, max_length=ctx.max_length)
            items = list(range(len(requests.items)))
            return self._projected_grads(
                model, items, lambda j: choice_ce_sum(model, requests, [j]), projector, None, desc
            )
        return self._projected_grads(model, validation, self._sft_loss(model, tok, ctx), projector, None, desc)

    @staticmethod
    def _sft_loss(model, tok, ctx: SelectionContext) -> Callable[[Example], torch.Tensor]:
        device = next(model.parameters()).device
        return lambda e: model(**encoded_batch([e], tok, ctx.template, ctx.max_length, device)).loss

    def _train_store(self, pool: Pool, ctx: SelectionContext, ckpt: _Checkpoint) -> Path | None:
        """The cache folder of the pool's projected gradients at one checkpoint (None: no cache)."""
        from ..features.featurize import model_fingerprint

        root = ctx.cache_path("less-train-grads")
        if root is None:
            return None
        key = fingerprint(
            {
                "model": model_fingerprint(ctx.model),  # its contents, not its path
                "pool": pool.fingerprint,
                "template": ctx.template,
                "max_length": ctx.max_length,
                "target_modules": list(self.target_modules),
                "checkpoint": ckpt.digest(),
                "proj_dim": self.proj_dim,
                "proj_seed": self.proj_seed,
                "chunk": self.chunk,
            }
        )
        return root / key[:16]

    def _projected_grads(
        self,
        model,
        items: Sequence,
        loss_of: Callable[[object], torch.Tensor],
        projector: RademacherProjector,
        ckpt: _Checkpoint | None,
        desc: str,
        store: Path | None = None,
    ) -> torch.Tensor:
        """(N, proj_dim): the trainable (LoRA) parameters' gradient of `loss_of(item)` for each
        item, one item per backward (Adam-preconditioned when `ckpt`), projected; `chunk` items
        per projection, each chunk kept in `store` when given (see `chunked_store`)."""
        params = [p for p in model.parameters() if p.requires_grad]

        def compute(s: int, e: int) -> torch.Tensor:
            pending = []
            for item in items[s:e]:
                grads = torch.autograd.grad(loss_of(item), params)
                g = torch.cat([x.reshape(-1) for x in grads]).float()
                if ckpt is not None:
                    g = adam_precondition(g, ckpt.exp_avg, ckpt.exp_avg_sq, *ckpt.betas)
                pending.append(g)
            return projector.project(torch.stack(pending))

        return chunked_store(store, len(items), self.chunk, compute, desc)
