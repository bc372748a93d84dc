"""The LLM update loop: tokenise pool rows on demand and take one optimizer step per batch.

`LMTrainer` is used three ways: by Algorithm 2 (one trainer, reset to M_0 at the start of
every round), by `finetune` (one run with a trained policy) and by the static baselines
(`train_on_schedule`). The loss of a step is the mean over the response tokens of the whole
batch (prompt and padding are labelled -100), computed by the model's own loss with
`num_items_in_batch`, so micro-batches and data-parallel processes add up to exactly the
single-batch gradient.

Multi-process (`accelerate launch`): the model and optimizer go through
`Accelerator.prepare` (DDP all-reduces the gradients); every process receives the same
batch indices and trains on its slice `indices[rank::world]`. Each slice's summed token
loss is divided by the token count of the whole batch (all-reduced) and multiplied by the
world size, because DDP averages gradients over processes.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Sequence

import torch

from ..config import check_fields
from ..data.pools import Example, Pool
from ..data.templates import CHAT_TEMPLATE, render_prompt
from ..errors import UserError
from ..features.scoring import truncate

if TYPE_CHECKING:
    from .reporting import Reporter

log = logging.getLogger(__name__)

IGNORE_INDEX = -100


@dataclass
class LMConfig:
    """LLM fine-tuning settings; defaults follow the paper (appendix A.2)."""

    lr: float = field(default=2e-5, metadata={"help": "peak learning rate of the target LLM"})
    scheduler: str = field(
        default="cosine", metadata={"help": "LLM learning-rate schedule: any `transformers.get_scheduler` name"}
    )
    warmup_steps: int = field(
        default=0, metadata={"help": "warm-up steps of the LLM learning rate (the paper uses none)"}
    )
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay of the LLM"})
    max_length: int = field(default=512, metadata={"help": "tokens per example; the prompt is cut from the left first"})
    template: str = field(
        default="alpaca", metadata={"help": "prompt template: alpaca or chat (the tokenizer's chat template)"}
    )
    lora: bool = field(default=False, metadata={"help": "train a LoRA adapter (peft) instead of all weights"})
    lora_r: int = field(default=8, metadata={"help": "LoRA rank"})
    lora_alpha: int = field(default=16, metadata={"help": "LoRA scaling alpha"})
    lora_targets: list[str] = field(
        default_factory=list, metadata={"help": "modules to adapt; empty = peft's default for the architecture"}
    )
    dtype: str = field(default="float32", metadata={"help": "weights dtype: float32, bfloat16, float16"})
    seed: int = field(
        default=0,
        metadata={
            "help": "seed of the LLM run (LoRA weights, dropout, data order); "
            "train-policy also seeds the policy and its rollouts with it"
        },
    )
    grad_clip: float = field(default=1.0, metadata={"help": "max global gradient norm (0 = no clipping)"})
    micro_batch_size: int = field(
        default=0, metadata={"help": "rows per forward pass (gradient accumulation); 0 = the whole batch at once"}
    )

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        """Rules on the LLM settings; a subclass adds its own rules after calling this."""
        check_fields(
            self,
            [
                (self.lr > 0, "lr", "must be > 0"),
                (self.warmup_steps >= 0, "warmup_steps", "must be >= 0"),
                (self.weight_decay >= 0, "weight_decay", "must be >= 0"),
                (self.max_length >= 2, "max_length", "must be >= 2"),
                (self.lora_r >= 1, "lora_r", "must be >= 1"),
                (self.grad_clip >= 0, "grad_clip", "must be >= 0 (0 = no clipping)"),
                (self.micro_batch_size >= 0, "micro_batch_size", "must be >= 0 (0 = the whole batch)"),
                (0 <= self.seed < 2**32, "seed", "must be in 0 .. 2**32 - 1"),
            ],
            "LLM",
        )


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]  # IGNORE_INDEX on the prompt; response tokens + EOS otherwise


def full_precision_accelerator():
    """An `Accelerator` without mixed precision.

    accelerate keeps one process-wide state: an earlier HF `Trainer` run with `bf16=True`
    (TRL's default) would otherwise make every later model here run under bf16 autocast.
    That state is reset, with a warning, rather than silently training in bf16.
    """
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    cpu = not torch.cuda.is_available()
    try:
        return Accelerator(cpu=cpu, mixed_precision="no")
    except ValueError:
        log.warning("accelerate state had mixed precision on from an earlier run in this process; resetting it")
        AcceleratorState._reset_state(reset_partial_state=False)
        return Accelerator(cpu=cpu, mixed_precision="no")


def encode_example(example: Example, tokenizer, template: str = "alpaca", max_length: int = 512) -> Encoded:
    """Prompt x (rendered with `render_prompt`) + response y + EOS, labels only on y + EOS.

    Over `max_length`, the prompt is cut from the left (its end, next to the response, is
    kept); only when the response alone does not fit is it cut from the right, keeping the
    last quarter of the budget (at least one token) for the end of the prompt, exactly as
    `features.scoring.truncate` does for featurization.
    """
    if max_length < 2:
        raise UserError(f"max_length must be at least 2, got {max_length}")
    prompt = render_prompt(example.prompt_messages, template, tokenizer, example.record)
    # A chat template writes its own special tokens into the text.
    prompt_ids = tokenizer(prompt, add_special_tokens=template != CHAT_TEMPLATE)["input_ids"]
    response_ids = tokenizer(example.response, add_special_tokens=False)["input_ids"]
    if tokenizer.eos_token_id is not None:
        response_ids = response_ids + [tokenizer.eos_token_id]
    if not prompt_ids:
        # The first response token needs a token before it to be predicted.
        prompt_ids = [tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id]
    # The featurizer's rule, so features describe what is trained on (its budget counts a
    # start token that is part of `prompt_ids` here).
    fit = truncate(prompt_ids, response_ids, max_length + 1)
    prompt_ids, response_ids = fit.prompt_ids, fit.response_ids
    return Encoded(prompt_ids + response_ids, [IGNORE_INDEX] * len(prompt_ids) + response_ids)


def collate(items: Sequence[Encoded], pad_id: int, padding_side: str = "right") -> dict[str, torch.Tensor]:
    """Pad to the longest item; padding gets attention 0 and label IGNORE_INDEX."""
    width = max(len(e.input_ids) for e in items)
    ids = torch.full((len(items), width), pad_id, dtype=torch.long)
    labels = torch.full((len(items), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(items), width), dtype=torch.long)
    for i, e in enumerate(items):
        n = len(e.input_ids)
        span = slice(0, n) if padding_side == "right" else slice(width - n, width)
        ids[i, span] = torch.tensor(e.input_ids)
        labels[i, span] = torch.tensor(e.labels)
        mask[i, span] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def _lora_model(model, cfg: LMConfig):
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        target_modules=cfg.lora_targets or None,
        lora_dropout=0.0,
        task_type="CAUSAL_LM",
    )
    try:
        return get_peft_model(model, lora)
    except ValueError as e:
        raise UserError(
            f"cannot add LoRA to this model ({e}); set lora_targets, e.g. --set lora_targets=[q_proj,v_proj]"
        ) from None


@dataclass
class GivenGradients:
    """A batch whose gradient was computed already, by an online selector's own backward pass
    over the same rows (GREATS under LoRA, whose per-example gradients cover every trainable
    weight): the gradient of the batch's token-mean response loss (the loss `LMTrainer.step`
    takes) for each trainable parameter by name, and that loss."""

    indices: list[int]
    grads: dict[str, torch.Tensor]
    loss: float


class LMTrainer:
    """One model, one AdamW optimizer and one learning-rate schedule of `total_steps`.

    `reset()` puts the trainable weights back to M_0 (a CPU copy taken at construction, so
    every RAISE round starts from the same model without reloading it) and restarts the
    optimizer state and the schedule.
    """

    def __init__(
        self,
        model: str | torch.nn.Module,
        pool: Pool,
        cfg: LMConfig,
        total_steps: int,
        tokenizer=None,
        accelerator=None,
    ):
        from transformers import set_seed

        if total_steps < 1:
            raise UserError(f"total_steps must be at least 1, got {total_steps}")
        self.cfg = cfg
        self.pool = pool
        self.total_steps = total_steps
        self.accelerator = accelerator or full_precision_accelerator()
        set_seed(cfg.seed)
        if isinstance(model, str):
            from ..models.loading import load_model_and_tokenizer

            model, loaded_tok = load_model_and_tokenizer(model, dtype=cfg.dtype)
            tokenizer = tokenizer or loaded_tok
        if tokenizer is None:
            raise UserError("LMTrainer needs a tokenizer when given a model object")
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        self.tokenizer = tokenizer
        if cfg.lora:
            model = _lora_model(model, cfg)
        model.train()
        self._initial = {n: p.detach().to("cpu", copy=True) for n, p in model.named_parameters() if p.requires_grad}
        optimizer = torch.optim.AdamW(
            [p for p in model.parameters() if p.requires_grad], lr=cfg.lr, weight_decay=cfg.weight_decay
        )
        # The scheduler is not prepared: accelerate would step it once per process.
        self.model, self.optimizer = self.accelerator.prepare(model, optimizer)
        self._cache: dict[int, Encoded] = {}
        self.reset(restore_weights=False)

    @property
    def unwrapped(self):
        return self.accelerator.unwrap_model(self.model)

    def reset(self, restore_weights: bool = True) -> None:
        """Back to M_0, with a fresh optimizer state and schedule."""
        from transformers import get_scheduler

        if restore_weights:
            with torch.no_grad():
                for n, p in self.unwrapped.named_parameters():
                    if n in self._initial:
                        p.copy_(self._initial[n])
        inner = getattr(self.optimizer, "optimizer", self.optimizer)
        inner.state = defaultdict(dict)
        for group in inner.param_groups:
            group["lr"] = self.cfg.lr
            group.pop("initial_lr", None)
        try:
            self.scheduler = get_scheduler(
                self.cfg.scheduler, inner, num_warmup_steps=self.cfg.warmup_steps, num_training_steps=self.total_steps
            )
        except ValueError as e:
            raise UserError(f"scheduler '{self.cfg.scheduler}': {e}") from None
        self.step_count = 0
        self.model.train()

    def encode(self, index: int) -> Encoded:
        enc = self._cache.get(index)
        if enc is None:
            enc = encode_example(self.pool.examples[index], self.tokenizer, self.cfg.template, self.cfg.max_length)
            self._cache[index] = enc
        return enc

    def step(self, indices: Sequence[int]) -> float:
        """One optimizer update on pool rows `indices` (the whole batch, all processes); returns its loss."""
        acc = self.accelerator
        indices = [int(i) for i in indices]
        if len(indices) < acc.num_processes:
            raise UserError(f"a batch of {len(indices)} rows cannot be split over {acc.num_processes} processes")
        mine = [self.encode(i) for i in indices[acc.process_index :: acc.num_processes]]
        local_tokens = sum(sum(1 for x in e.labels if x != IGNORE_INDEX) for e in mine)
        total_tokens = local_tokens
        if acc.num_processes > 1:
            total_tokens = int(acc.reduce(torch.tensor(local_tokens, device=acc.device), reduction="sum").item())
        # DDP averages gradients over processes; undo it so the sum over processes is the batch mean.
        denom = torch.tensor(total_tokens / acc.num_processes, device=acc.device, dtype=torch.float32)
        micro = self.cfg.micro_batch_size or len(mine)
        chunks = [mine[i : i + micro] for i in range(0, len(mine), micro)]
        loss_sum = 0.0
        for j, chunk in enumerate(chunks):
            batch = {k: v.to(acc.device) for k, v in collate(chunk, self.tokenizer.pad_token_id).items()}
            sync = contextlib.nullcontext() if j == len(chunks) - 1 else acc.no_sync(self.model)
            with sync:
                out = self.model(**batch, num_items_in_batch=denom)
                acc.backward(out.loss)
            loss_sum += float(out.loss.detach()) * float(denom)
        self._update()
        loss = loss_sum / max(total_tokens, 1)
        if acc.num_processes > 1:
            loss = float(acc.reduce(torch.tensor(loss, device=acc.device), reduction="sum").item())
        if not math.isfinite(loss):
            raise UserError(f"training loss is {loss} at step {self.step_count}; lower the learning rate (lr)")
        return loss

    def step_with_gradients(self, given: "GivenGradients") -> float:
        """The update of `step(given.indices)` from a gradient computed elsewhere (an online
        selector's own backward pass over the same rows), without a pass of its own."""
        if self.accelerator.num_processes > 1:
            raise UserError("given gradients are for one process; train with `step` under several")
        params = {n: p for n, p in self.unwrapped.named_parameters() if p.requires_grad}
        if set(given.grads) != set(params):
            missing, extra = sorted(set(params) - set(given.grads)), sorted(set(given.grads) - set(params))
            raise ValueError(f"given gradients must cover the trainable parameters: missing {missing}, extra {extra}")
        for n, g in given.grads.items():
            params[n].grad = g.to(device=params[n].device, dtype=params[n].dtype).reshape(params[n].shape)
        self._update()
        if not math.isfinite(given.loss):
            raise UserError(f"training loss is {given.loss} at step {self.step_count}; lower the learning rate (lr)")
        return given.loss

    def _update(self) -> None:
        """Clip, step the optimizer and the schedule, clear the gradients."""
        if self.cfg.grad_clip > 0:
            self.accelerator.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step_count += 1

    def training_state(self) -> dict:
        """The trainable weights, optimizer and schedule state and step count, for an exact
        resume (`torch.save` it; RNG is the caller's)."""
        inner = getattr(self.optimizer, "optimizer", self.optimizer)
        return {
            "weights": {
                n: p.detach().to("cpu", copy=True) for n, p in self.unwrapped.named_parameters() if p.requires_grad
            },
            "optimizer": inner.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "step_count": self.step_count,
        }

    def load_training_state(self, state: dict) -> None:
        """Back to the point `training_state` recorded."""
        with torch.no_grad():
            for n, p in self.unwrapped.named_parameters():
                if n in state["weights"]:
                    p.copy_(state["weights"][n])
        getattr(self.optimizer, "optimizer", self.optimizer).load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step_count = state["step_count"]

    def save(self, out_dir: str | Path) -> None:
        """`save_pretrained` of the model (or of the LoRA adapter) and the tokenizer, from the main process."""
        self.accelerator.wait_for_everyone()
        if self.accelerator.is_main_process:
            out_dir = Path(out_dir)
            out_dir.mkdir(parents=True, exist_ok=True)
            self.unwrapped.save_pretrained(out_dir)
            self.tokenizer.save_pretrained(out_dir)


def train_on_schedule(
    model: str,
    pool: Pool,
    batches: Iterable[Sequence[int]] | Callable[[LMTrainer], Iterable[Sequence[int]]],
    cfg: LMConfig,
    out_dir: str | Path | None,
    total_steps: int,
    report: "Reporter | None" = None,
) -> Path | None:
    """Baselines: one update per batch of a schedule, then save to `out_dir` (None: not saved).

    `batches` is the schedule, or a function of the trainer that returns it lazily: online
    selectors draw batch t only after update t-1, from the model as it is then; a batch given
    as `GivenGradients` is applied with the gradient it carries. `report` gets every step's loss
    as `step/loss` (`report_to`).
    """
    from ..progress import progress_bar

    trainer = LMTrainer(model, pool, cfg, total_steps)
    if callable(batches):
        batches = batches(trainer)
    for indices in progress_bar(
        batches, total=total_steps, desc="train", disable=not trainer.accelerator.is_main_process
    ):
        if trainer.step_count >= total_steps:
            raise UserError(f"the schedule has more than total_steps={total_steps} batches")
        loss = trainer.step_with_gradients(indices) if isinstance(indices, GivenGradients) else trainer.step(indices)
        if report is not None and trainer.accelerator.is_main_process:
            report.log("step", {"loss": loss}, trainer.step_count)
        if trainer.step_count % 10 == 0:
            log.info("step %d/%d loss %.4f", trainer.step_count, total_steps, loss)
    if out_dir is None:
        return None
    trainer.save(out_dir)
    return Path(out_dir)
