"""RAISE inside an ordinary Hugging Face `Trainer` or TRL `SFTTrainer` run.

A trained policy chooses the batch of every optimizer step; everything else (the loop,
mixed precision, gradient accumulation, logging, checkpoints) stays the trainer's own.

    from trl import SFTConfig, SFTTrainer
    from raise_select.training.hf import pool_dataset, with_raise

    RaiseSFTTrainer = with_raise(SFTTrainer)
    trainer = RaiseSFTTrainer(
        model=model, processing_class=tokenizer, train_dataset=pool_dataset(pool),
        args=SFTConfig(output_dir="out", max_steps=100, per_device_train_batch_size=8, ...),
        raise_policy=policy, raise_validator=Validator(val_examples, tokenizer), raise_eval_every=10,
        raise_ids=pool.ids,
    )
    trainer.train()

Three pieces:

- `RaiseSampler`: the train sampler. Every step it scores the pool with the policy at the
  current stage state and yields the top-b of each class (Algorithm 1, B = C x b items),
  then updates the times-selected counts (eq. 5). The trainer's DataLoader cuts these B
  row indices into its micro-batches, so B must equal per-device batch size x gradient
  accumulation steps x processes (checked before training).
- `RaiseCallback`: keeps the stage state [P_{t-1}, t/T] (eq. 2). T is the trainer's
  `max_steps`. P comes from a `Validator` (measured at the start of training and every
  `eval_every` optimizer steps), or, without one, from the trainer's own evaluations
  (P = -eval_loss, e.g. with `eval_strategy="steps"` and `eval_on_start=True`). Use the
  metric the policy was trained with: its scores depend on P's scale.
- `RaiseTrainerMixin` / `with_raise(cls)`: a trainer subclass whose `_get_train_sampler`
  returns the sampler (the hook `transformers` 5 and TRL 1 call to build the training
  DataLoader), plus the callback.

Timing: `transformers` fetches all micro-batches of a step before running it, and
`accelerate` fetches one batch ahead, so the batch of step t is chosen while step t-1
runs: it sees the counts of every earlier step exactly, and the last P measured before
step t-1 (with `eval_every` >= 2 this is the usual staleness of P anyway). Every step's
choice and the state it saw are kept in `RaiseSampler.history` and, with `raise_ids`, in
`<output_dir>/selections.jsonl` (the format `raise-select select` reads).

Rows: the dataset the trainer trains on must be row-aligned with the pool the policy's
features were computed on (same rows, same order). `pool_dataset` builds such a dataset
(prompt/completion columns, which TRL trains on with the loss on the completion only);
packing, dataset shuffling and row filtering break the alignment and are refused.
Multi-process: every process runs the same deterministic sampler, `accelerate` gives
each its share of the B rows; P must be the same on every process (the trainer's
gathered eval loss, or a `Validator` built with the accelerator).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import torch
from torch.utils.data import Sampler
from transformers import TrainerCallback

from ..data.pools import Pool
from ..data.templates import ALPACA_TEMPLATE, render_prompt
from ..errors import UserError
from ..io import append_jsonl
from ..training.export import SELECTIONS_FILE
from .reward import check_finite


@dataclass
class StageState:
    """What the sampler knows about training when it chooses (eq. 2)."""

    perf: float = 0.0  # P_{t-1}: the last measured validation performance
    total_steps: int = 0  # T: optimizer steps of the run (the trainer's max_steps)
    step: int = 0  # optimizer steps chosen so far


class RaiseSampler(Sampler[int]):
    """Yields pool row indices, B per optimizer step, chosen by a trained `RaisePolicy`.

    `steps_per_epoch` is the number of batches one pass yields (`len` is that times B);
    the state (counts, step, P) carries over from one pass to the next. The batch follows the
    policy's use rule (`use_rule`: sample from each class softmax, or the top-b); `explore`
    True or False forces sampling or the top-b.
    """

    def __init__(
        self,
        policy,
        steps_per_epoch: int,
        ids: Sequence[str] | None = None,
        log_path: str | Path | None = None,
        explore: bool | None = None,
        seed: int = 0,
    ):
        if steps_per_epoch < 1:
            raise UserError(f"steps_per_epoch must be at least 1, got {steps_per_epoch}")
        n = len(policy.static)
        if ids is not None and len(ids) != n:
            raise UserError(f"{len(ids)} ids given for a policy over {n} instructions")
        self.policy = policy
        self.steps_per_epoch = steps_per_epoch
        self.ids = list(ids) if ids is not None else None
        self.log_path = Path(log_path) if log_path is not None else None
        self.explore = explore
        self.generator = torch.Generator().manual_seed(seed)
        self.stage = StageState()
        self.counts = torch.zeros(n, dtype=torch.int64)
        self.history: list[dict] = []  # per step: step, perf, progress, indices

    @property
    def batch_size(self) -> int:
        return self.policy.batch_size

    def __len__(self) -> int:
        return self.steps_per_epoch * self.batch_size

    def choose(self) -> list[int]:
        """The next step's batch (Algorithm 1 at the current state); updates counts and history."""
        stage = self.stage
        stage.step += 1
        progress = stage.step / max(stage.total_steps, stage.step)
        if self.explore is None:
            action = self.policy.use(stage.perf, progress, self.counts, generator=self.generator)
        else:
            action = self.policy.act(stage.perf, progress, self.counts, explore=self.explore, generator=self.generator)
        indices = action.indices.tolist()
        self.counts += torch.bincount(action.indices, minlength=len(self.counts))
        record = {"step": stage.step, "perf": stage.perf, "progress": progress, "indices": indices}
        self.history.append(record)
        if self.log_path is not None and self.ids is not None:
            append_jsonl(
                self.log_path,
                {
                    "step": stage.step,
                    "ids": [self.ids[i] for i in indices],
                    "indices": indices,
                    "scores": action.scores.tolist(),
                    "classes": self.policy.static.classes[action.indices].tolist(),
                    "random": False,
                    "P_prev": stage.perf,
                    "progress": progress,
                },
            )
        return indices

    def __iter__(self) -> Iterator[int]:
        for _ in range(self.steps_per_epoch):
            yield from self.choose()


class RaiseCallback(TrainerCallback):
    """Feeds the stage state (P_{t-1}, T) to a `RaiseSampler` during a trainer run.

    With a `validator`, P is measured on the model at the start of training and after
    every `eval_every` optimizer steps (0: only at the start). Without one, P is
    -`metric_key` of the trainer's own evaluations (`eval_loss` by default), and
    `initial_perf` until the first one.
    """

    def __init__(
        self,
        sampler: RaiseSampler,
        validator=None,
        eval_every: int = 0,
        initial_perf: float | None = None,
        metric_key: str = "eval_loss",
    ):
        if eval_every < 0:
            raise UserError(f"eval_every must be >= 0, got {eval_every}")
        self.sampler = sampler
        self.validator = validator
        self.eval_every = eval_every
        self.metric_key = metric_key
        if initial_perf is not None:
            sampler.stage.perf = float(initial_perf)
        self.perf_log: list[tuple[int, float]] = []  # (optimizer step, P) as measured

    def _set(self, step: int, perf: float) -> None:
        check_finite(perf, f"step {step}")
        self.sampler.stage.perf = float(perf)
        self.perf_log.append((step, float(perf)))

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.sampler.stage.total_steps = state.max_steps
        if self.validator is not None:
            self._set(state.global_step, self.validator(model))

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if self.validator is not None and self.eval_every and state.global_step % self.eval_every == 0:
            self._set(state.global_step, self.validator(model))

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        if self.validator is None and metrics and self.metric_key in metrics:
            self._set(state.global_step, -float(metrics[self.metric_key]))


class RaiseTrainerMixin:
    """Put before a `transformers.Trainer` subclass: `class T(RaiseTrainerMixin, SFTTrainer)`.

    Extra keyword arguments: `raise_policy` (a trained `RaisePolicy` over the training
    dataset's rows), `raise_validator` and `raise_eval_every` (see `RaiseCallback`),
    `raise_initial_perf` (P before the first evaluation when there is no validator), and
    `raise_ids` (the pool's example ids: the choices are logged to
    `<output_dir>/selections.jsonl`).
    """

    def __init__(
        self,
        *args,
        raise_policy,
        raise_validator=None,
        raise_eval_every: int = 0,
        raise_initial_perf: float | None = None,
        raise_ids: Sequence[str] | None = None,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        self._raise_check_args(raise_policy)
        log_path = None
        if raise_ids is not None and self.args.output_dir:
            log_path = Path(self.args.output_dir) / SELECTIONS_FILE
            log_path.parent.mkdir(parents=True, exist_ok=True)
            log_path.write_text("", encoding="utf-8")
        steps = (
            self.args.max_steps if self.args.max_steps > 0 else -(-len(raise_policy.static) // raise_policy.batch_size)
        )
        self.raise_sampler = RaiseSampler(raise_policy, steps, ids=raise_ids, log_path=log_path, seed=self.args.seed)
        self.raise_callback = RaiseCallback(self.raise_sampler, raise_validator, raise_eval_every, raise_initial_perf)
        self.add_callback(self.raise_callback)

    def _raise_check_args(self, policy) -> None:
        args = self.args
        per_step = args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size
        if per_step != policy.batch_size:
            raise UserError(
                f"the policy chooses B = {policy.batch_size} instructions per step "
                f"({policy.static.num_classes} classes x {policy.cfg.per_class}), "
                f"but the trainer takes per_device_train_batch_size {args.per_device_train_batch_size} "
                f"x gradient_accumulation_steps {args.gradient_accumulation_steps} x "
                f"{args.world_size} process(es) = {per_step}; make them equal"
            )
        for flag in ("packing", "shuffle_dataset"):
            if getattr(args, flag, False):
                raise UserError(
                    f"{flag}=True breaks the row alignment between the dataset and the policy's pool; turn it off"
                )

    def _get_train_sampler(self, train_dataset=None):
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        n = len(self.raise_sampler.policy.static)
        if dataset is None or not hasattr(dataset, "__len__") or len(dataset) != n:
            size = len(dataset) if dataset is not None and hasattr(dataset, "__len__") else "no length"
            raise UserError(
                f"the training dataset has {size} rows but the policy's pool has {n}: "
                f"train on the pool itself, row-aligned "
                "(no packing, no filtering: raise max_length if rows were dropped as fully truncated)"
            )
        return self.raise_sampler


def with_raise(trainer_cls: type) -> type:
    """A subclass of `trainer_cls` (Trainer, SFTTrainer, ...) whose batches a RAISE policy chooses."""
    return type(f"Raise{trainer_cls.__name__}", (RaiseTrainerMixin, trainer_cls), {})


def pool_dataset(pool: Pool, template: str = ALPACA_TEMPLATE, tokenizer=None):
    """A row-aligned `datasets.Dataset` of the pool: `prompt` (rendered) and `completion` (the response)."""
    import datasets

    return datasets.Dataset.from_dict(
        {
            "prompt": [render_prompt(e.prompt_messages, template, tokenizer, e.record) for e in pool.examples],
            "completion": [e.response for e in pool.examples],
        }
    )
