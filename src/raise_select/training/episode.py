"""One episode: T updates of the target model with batches chosen by a policy (Algorithm 2,
lines 7-14), shared by `train_policy` (rollouts, explore=True) and `finetune` (use, top-b).

With `select_every = M` (appendix F) the policy chooses at steps 1, M+1, 2M+1, ... and a
uniformly random batch (seeded, without replacement over the whole pool) is used in
between (`between: policy`, a departure: a batch drawn from the policy, as at its own
steps, with the last measured P in its state). P is measured only where it is needed:
before each policy step (its stage state P_{t-1}) and after the last step, so validation
also costs 1/M. A policy step's reward is P at the end of its interval minus P before it,
i.e. the in-between steps' improvement is credited to the policy step that opened the
interval (`RolloutBuffer.add_reward`); with M = 1 this is R_t = P(M_t) - P(M_{t-1}) of
section 3.2, and in every case the rewards of a round sum to P(M_T) - P(M_0). In-between
batches count towards times-selected (eq. 5) but are not PPO transitions.

With `policy.credit: row` every policy step of a rollout also labels its chosen rows and a
uniform sample of the rows it did not choose with their first-order credit (`training.credit`),
before it trains; the labels go into the buffer with the transition (main process only, where
the policy learns) and their time counts as reward time.

Multi-process: the batch is decided on the main process and broadcast (a `Choice`); every
process trains on its slice and P is reduced across processes (see `loop` and `reward`).

`start_episode_job` is the setup train-policy and finetune share before their first episode.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Optional, Protocol, runtime_checkable

import torch

from ..config import check_fields, require_settings, to_dict
from ..data.pools import Pool
from ..errors import UserError
from ..policy.agent import Action
from ..policy.state import StaticState
from ..progress import progress_bar
from .loop import LMConfig, LMTrainer, full_precision_accelerator
from .reporting import parse_report_to
from .reward import Validator, check_finite, resolve_metric
from .runs import RunFolder, run_inputs

if TYPE_CHECKING:
    from ..policy.agent import RaisePolicy

log = logging.getLogger(__name__)

TIME_KEYS = ("train", "reward", "scoring")


@dataclass
class EpisodeConfig(LMConfig):
    """Settings of a job that fine-tunes the target LLM with a policy (train-policy, finetune);
    the LLM settings are those of `LMConfig`."""

    pool: str = field(default="", metadata={"help": "instruction pool: file, folder or `datasets` name"})
    features: str = field(default="", metadata={"help": "featurize output folder of this pool"})
    model: str = field(default="", metadata={"help": "target LLM M_0: hub id or local folder"})
    val: str = field(
        default="", metadata={"help": "validation set: a named set (gsm8k, mmlu, ...) or a pool file/folder"}
    )
    out: str = field(default="", metadata={"help": "run folder"})
    data_dir: Optional[str] = field(
        default=None, metadata={"help": "folder of the named validation sets' original files"}
    )
    val_size: Optional[int] = field(
        default=None, metadata={"help": "use at most this many validation examples (seeded sample for named sets)"}
    )
    state_val_size: Optional[int] = field(
        default=None,
        metadata={
            "help": "P (the state's first column and the batch reward) reads only the first this many validation "
            "examples, the same at every step; the credit labels (policy.credit: row, policy.label_budget) still "
            "read all of them. Unset: P reads all"
        },
    )
    steps: int = field(default=100, metadata={"help": "T: LLM updates (per round for train-policy)"})
    batch_size: Optional[int] = field(
        default=None, metadata={"help": "B; when set, per_class = B / C (B a multiple of the number of classes C)"}
    )
    select_every: int = field(
        default=1, metadata={"help": "M (appendix F): the policy chooses every M steps, random batches in between"}
    )
    between: str = field(
        default="random",
        metadata={
            "help": "with select_every > 1, the batches between the policy's steps: random (appendix F) or policy "
            "(drawn from the policy at the current stage and times-selected, with the last measured P; no reward "
            "or PPO transition of their own: their effect is credited to the step that opened the interval)"
        },
    )
    metric: str = field(
        default="auto",
        metadata={
            "help": "P(M): auto (choice_ce when every validation example is a multiple-choice item, else "
            "neg_loss), neg_loss, accuracy, choice_ce or choice_acc (multiple choice; docs/metrics.md), "
            "or module:function"
        },
    )
    val_batch_size: int = field(default=16, metadata={"help": "validation examples per forward pass"})
    max_new_tokens: int = field(default=128, metadata={"help": "generation length for metric=accuracy"})
    report_to: str = field(
        default="none",
        metadata={
            "help": "also log the scalars to: none, tensorboard (<out>/tensorboard), wandb (<out>/wandb; "
            "WANDB_MODE=offline works without a network), all, or a comma-separated list"
        },
    )
    tensorboard: bool = field(default=False, metadata={"help": "deprecated: the same as report_to=tensorboard"})

    def check(self) -> None:
        super().check()
        check_fields(
            self,
            [
                (self.steps >= 1, "steps", "must be >= 1"),
                (self.select_every >= 1, "select_every", "must be >= 1"),
                (self.between in BETWEEN, "between", f"must be one of {', '.join(BETWEEN)}"),
                (self.batch_size is None or self.batch_size >= 1, "batch_size", "must be >= 1"),
                (self.val_size is None or self.val_size >= 1, "val_size", "must be >= 1"),
                (self.state_val_size is None or self.state_val_size >= 1, "state_val_size", "must be >= 1"),
                (self.val_batch_size >= 1, "val_batch_size", "must be >= 1"),
                (self.max_new_tokens >= 1, "max_new_tokens", "must be >= 1"),
            ],
            "episode",
        )
        resolve_metric(self.metric)
        parse_report_to(self.report_to)


def lm_config(cfg: LMConfig) -> LMConfig:
    """The plain LMConfig part of a job config."""
    return LMConfig(**{f.name: getattr(cfg, f.name) for f in dataclasses.fields(LMConfig)})


def load_static(pool_spec: str, features: str, normalizer=None, prior: Callable | None = None):
    """(pool, static state) with the features aligned to the pool (refuses missing ones).

    `prior`: a function of (the aligned feature table, the pool) giving the `policy.prior`
    column (`prior_column`).
    """
    from ..data.pools import load_pool
    from ..features.table import FeatureTable
    from ..policy import StaticState

    pool = load_pool(pool_spec)
    table = FeatureTable.read(features).align(pool.ids)
    return pool, StaticState.from_features(table, normalizer, None if prior is None else prior(table, pool))


def prior_column(policy, val_examples, cfg: LMConfig, model: str) -> Callable | None:
    """The `policy.prior` column of a PolicyConfig as a function of (aligned feature table, pool).

    None for `none` (or no policy config). The same function at training and at use time: on
    the same pool and validation set (or selection file) it gives the same column, so a saved
    policy scores rows as it was trained to.
    """
    kind = "none" if policy is None else policy.prior
    if kind == "none":
        return None
    from ..policy.prior import rds_prior, selection_prior

    if kind == "selection":
        return lambda table, pool: selection_prior(policy.prior_selection, pool)
    return lambda table, pool: rds_prior(table, val_examples, model, cfg.template, cfg.max_length)


def resolve_per_class(per_class: int, batch_size: int | None, num_classes: int) -> int:
    """b of Algorithm 1: `per_class`, or B / C when a batch size B is given."""
    if num_classes < 1:
        raise UserError("the feature table has no classes; re-run featurize with at least one class")
    if batch_size is None:
        return per_class
    if batch_size < num_classes:
        raise UserError(
            f"more classes ({num_classes}) than batch slots (batch_size {batch_size}): every class needs "
            f"at least one slot; set batch_size >= {num_classes} or featurize with fewer classes"
        )
    if batch_size % num_classes:
        raise UserError(
            f"batch_size {batch_size} is not a multiple of the {num_classes} classes (B = C x b); "
            f"use {batch_size - batch_size % num_classes} or {batch_size - batch_size % num_classes + num_classes}"
        )
    return batch_size // num_classes


def check_batch(static, per_class: int, pool_size: int, processes: int) -> int:
    """B = C x b, refused when it cannot be filled or split (before any training)."""
    batch = static.num_classes * per_class
    if pool_size < batch:
        raise UserError(
            f"the pool has {pool_size} instructions, fewer than one batch of {batch} "
            f"({static.num_classes} classes x per_class {per_class}); lower per_class or the number of classes"
        )
    if batch < processes:
        raise UserError(
            f"a batch of {batch} ({static.num_classes} classes x per_class {per_class}) has fewer slots "
            f"than the {processes} processes; raise per_class"
        )
    return batch


@runtime_checkable
class EpisodePolicy(Protocol):
    """What `run_episode` asks of a policy: `RaisePolicy`, or `RandomBatches` for the random-batch episodes."""

    static: StaticState  # the pool's features; its `classes` label the selection records

    @property
    def batch_size(self) -> int:
        """B: rows chosen at every step."""
        ...

    def rollout(
        self, perf_prev: float, progress: float, counts: torch.Tensor, generator: torch.Generator | None = None
    ) -> Action:
        """A batch at a rollout step (sampled)."""
        ...

    def use(
        self, perf_prev: float, progress: float, counts: torch.Tensor, generator: torch.Generator | None = None
    ) -> Action:
        """A batch at use time, by the policy's own rule."""
        ...


class RandomBatches:
    """Uniformly random batches of `batch_size` distinct rows from the whole pool (RAND).

    An `EpisodePolicy`: the reference episode of train-policy and the `--compare-random` run
    of finetune. Draws come from the episode's generator.
    """

    def __init__(self, static: StaticState, batch_size: int):
        self.static = static
        self.batch_size = batch_size

    def act(
        self,
        perf_prev: float,
        progress: float,
        counts: torch.Tensor,
        explore: bool = True,
        generator: torch.Generator | None = None,
    ) -> Action:
        idx = torch.randperm(len(self.static), generator=generator)[: self.batch_size]
        return Action(indices=idx, scores=torch.zeros(len(idx)), log_prob=0.0, value=0.0, item_log_prob=None)

    def use(
        self, perf_prev: float, progress: float, counts: torch.Tensor, generator: torch.Generator | None = None
    ) -> Action:
        return self.act(perf_prev, progress, counts, generator=generator)

    rollout = use


@dataclass(frozen=True)
class Choice:
    """One step's batch as the main process chose it and every process receives it (`share_from_main`).

    A policy step carries its `Action`'s PPO quantities; a random step (between policy steps
    with select_every > 1) only its rows.
    """

    indices: tuple[int, ...]  # pool rows, in training order
    scores: tuple[float | None, ...]  # acquisition score of each row; None on a random step
    log_prob: float | None = None  # Action.log_prob (policy steps)
    value: float | None = None  # Action.value (policy steps)
    item_log_prob: tuple[float, ...] | None = None  # Action.item_log_prob, where the policy gives it

    @classmethod
    def of_action(cls, action: Action) -> Choice:
        item = None if action.item_log_prob is None else tuple(action.item_log_prob.tolist())
        return cls(
            indices=tuple(action.indices.tolist()),
            scores=tuple(action.scores.tolist()),
            log_prob=action.log_prob,
            value=action.value,
            item_log_prob=item,
        )

    @classmethod
    def random(cls, pool_size: int, batch_size: int, generator: torch.Generator) -> Choice:
        """`batch_size` distinct rows drawn uniformly from the pool."""
        return cls(
            indices=tuple(torch.randperm(pool_size, generator=generator)[:batch_size].tolist()),
            scores=(None,) * batch_size,
        )


@dataclass
class EpisodeResult:
    p0: float
    final_p: float
    steps: list[int] = field(default_factory=list)  # steps after which P was measured
    perf: list[float] = field(default_factory=list)  # P at those steps
    losses: list[float] = field(default_factory=list)  # training loss of every step
    time: dict[str, float] = field(default_factory=lambda: dict.fromkeys(TIME_KEYS, 0.0))

    @property
    def ret(self) -> float:
        return self.final_p - self.p0

    @property
    def rewards(self) -> list[float]:
        """Reward of every policy step: P at the end of its interval minus P before it."""
        perf = [self.p0, *self.perf]
        return [b - a for a, b in zip(perf, perf[1:])]

    @property
    def mean_loss(self) -> float:
        return sum(self.losses) / len(self.losses)


def selection_stats(batches: list[list[int]], classes: torch.Tensor, num_classes: int) -> dict:
    """How an episode spread its choices: distinct rows, repetition and share per class.

    `batches` are the row indices of every step. `top10_share` is the share of all slots
    taken by the 10 most chosen rows (a policy cycling over a few rows shows here first).
    """
    flat = torch.tensor([i for b in batches for i in b], dtype=torch.int64)
    if flat.numel() == 0:
        return {"slots": 0, "distinct": 0, "max_times": 0, "top10_share": 0.0, "class_share": []}
    times = torch.bincount(flat)
    times = times[times > 0].sort(descending=True).values
    per_class = torch.bincount(classes[flat], minlength=num_classes).double() / flat.numel()
    return {
        "slots": int(flat.numel()),
        "distinct": int(times.numel()),
        "max_times": int(times[0]),
        "top10_share": float(times[:10].sum()) / flat.numel(),
        "class_share": [round(float(x), 4) for x in per_class],
    }


def format_timing(timing: dict[str, float]) -> str:
    """`time 3.2s: train 2.0s (62%), ...`: where an episode's (or round's) time went."""
    total = sum(timing.values())
    return f"time {total:.1f}s: " + ", ".join(
        f"{k} {v:.1f}s ({100 * v / max(total, 1e-9):.0f}%)" for k, v in timing.items()
    )


def share_from_main(accelerator, obj):
    """`obj` from the main process on every process."""
    if accelerator.num_processes == 1:
        return obj
    from accelerate.utils import broadcast_object_list

    return broadcast_object_list([obj])[0]


BETWEEN = ("random", "policy")  # the batches between the policy's steps (`select_every` > 1)


def run_episode(
    trainer: LMTrainer,
    validator: Validator,
    policy: EpisodePolicy,
    pool: Pool,
    steps: int,
    select_every: int,
    explore: bool,
    generator: torch.Generator,
    p0: float,
    where: str,
    on_step: Callable[[dict, dict], None],
    buffer=None,
    between: str = "random",
    label_examples: list | None = None,
) -> EpisodeResult:
    """Train `steps` updates from the trainer's current model; `buffer` gets the PPO transitions.

    explore=True: rollouts (`policy.rollout` samples within each class); False: use time
    (`policy.use`, the policy's `use_rule`). `between`: the batches between the policy's steps
    (`select_every` > 1) are uniformly random, or drawn from the policy as its own steps are,
    counted towards times-selected but not PPO transitions.

    `on_step(metrics, selection)` receives each step's metrics line and selection line.
    `where` names the episode in errors ("round 3"). `label_examples`: the validation examples
    the credit labels read (`policy.credit: row`), the validator's own when None.
    """
    acc = trainer.accelerator
    n = len(pool)
    batch_size = policy.batch_size
    credit = None
    policy_cfg = getattr(policy, "cfg", None)
    if buffer is not None and acc.is_main_process and getattr(policy_cfg, "credit", "batch") == "row":
        from .credit import RowCredit

        credit = RowCredit(
            trainer,
            validator,
            policy_cfg.credit_sample,
            policy_cfg.credit_val,
            val_norm=policy_cfg.credit_val_norm,
            examples=label_examples,
            row_norm=policy_cfg.credit_row_norm,
        )
    classes = policy.static.classes
    counts = torch.zeros(n, dtype=torch.int64)
    result = EpisodeResult(p0=p0, final_p=p0)
    p_prev = p0
    bar = progress_bar(range(1, steps + 1), desc=where, leave=False, disable=not acc.is_main_process)
    for t in bar:
        timing = dict.fromkeys(TIME_KEYS, 0.0)
        from_policy = (t - 1) % select_every == 0
        start = time.perf_counter()
        choice: Choice | None = None
        if acc.is_main_process:
            if from_policy or between == "policy":
                if explore:
                    action = policy.rollout(p_prev, t / steps, counts, generator=generator)
                else:
                    action = policy.use(p_prev, t / steps, counts, generator=generator)
                choice = Choice.of_action(action)
            else:
                choice = Choice.random(n, batch_size, generator)
        choice = share_from_main(acc, choice)
        indices = list(choice.indices)
        chosen = torch.tensor(indices, dtype=torch.int64)
        counts += torch.bincount(chosen, minlength=n)
        if buffer is not None:
            if from_policy:
                # The reward is added when P is next measured (end of this interval).
                item_lp = choice.item_log_prob
                buffer.add(
                    p_prev,
                    t / steps,
                    chosen,
                    choice.log_prob,
                    choice.value,
                    0.0,
                    item_log_prob=None if item_lp is None else torch.tensor(item_lp, dtype=torch.float64),
                )
            else:
                buffer.add_counted(chosen)
        timing["scoring"] = time.perf_counter() - start
        if credit is not None and from_policy:
            start = time.perf_counter()
            buffer.add_labels(*credit.labels(chosen, generator))
            timing["reward"] += time.perf_counter() - start

        start = time.perf_counter()
        loss = trainer.step(indices)
        timing["train"] = time.perf_counter() - start
        result.losses.append(loss)

        perf = reward = None
        if t % select_every == 0 or t == steps:
            start = time.perf_counter()
            perf = check_finite(validator(trainer.model), f"{where}, step {t}")
            timing["reward"] += time.perf_counter() - start
            reward = perf - p_prev
            if buffer is not None:
                buffer.add_reward(reward)
            p_prev = perf
            result.steps.append(t)
            result.perf.append(perf)
            bar.set_postfix(P=f"{perf:.4f}", loss=f"{loss:.3f}")
        for key in TIME_KEYS:
            result.time[key] += timing[key]
        metrics = {
            "kind": "step",
            "step": t,
            "steps": steps,
            "P": perf,
            "reward": reward,
            "loss": loss,
            "policy": from_policy,
            "time": timing,
        }
        selection = {
            "step": t,
            "ids": [pool.examples[i].id for i in indices],
            "indices": indices,
            "scores": list(choice.scores),
            "classes": classes[chosen].tolist(),
            "random": not from_policy and between == "random",
            **({"transition": from_policy} if between == "policy" else {}),
        }
        on_step(metrics, selection)
    result.final_p = p_prev
    return result


@dataclass
class EpisodeJob:
    """A train-policy or finetune run ready for its episodes (`start_episode_job`)."""

    accelerator: Any
    run: RunFolder
    config: dict  # the job's settings, as written to config.yaml
    pool: Pool
    static: StaticState
    policy: RaisePolicy
    batch: int  # B = C x b
    trainer: LMTrainer  # holds M_0
    validator: Validator  # P, on the first `state_val_size` of `val_examples`
    p0: float  # P(M_0)
    val_examples: list  # the whole validation set: what the credit labels read


def start_episode_job(
    cfg: EpisodeConfig,
    accelerator,
    required: tuple[str, ...],
    per_class: int,
    make_policy: Callable[[StaticState, int, Pool], RaisePolicy],
    normalizer=None,
    resumable: tuple[str, ...] | None = None,
    prior=None,
) -> EpisodeJob:
    """The setup train-policy and finetune share, refusing bad inputs before any model is loaded.

    In order: the settings in `required`; the run folder and its log; with `resumable`, the
    settings of a run being resumed there (only those fields may differ); the validation set; the
    pool and its features (scaled with `normalizer`, the policy's own when given; with the
    `policy.prior` column of `prior`, a PolicyConfig); with `resumable`, the contents of those
    inputs against the rounds being resumed (`RunFolder.check_inputs`); b (`per_class`, or B / C
    from `batch_size`) and B; the policy, `make_policy(static, b, pool)`; then
    config.yaml (a refused run leaves none), the seeded target model M_0, the validator and
    P(M_0).
    """
    from transformers import set_seed

    from ..data.overlap import warn_shared_rows
    from ..data.validation import load_validation
    from ..logs import setup_logging

    require_settings(cfg, required)
    acc = accelerator or full_precision_accelerator()
    config = to_dict(cfg)
    run = RunFolder(
        cfg.out, enabled=acc.is_main_process, report_to=parse_report_to(cfg.report_to, cfg.tensorboard), config=config
    )
    if acc.is_main_process:
        setup_logging(run.out)
    if resumable is not None:
        run.check_config(config, resumable, defaults=to_dict(type(cfg)()))
    val_examples = load_validation(cfg.val, cfg.data_dir, cfg.val_size, cfg.seed)
    pool, static = load_static(cfg.pool, cfg.features, normalizer, prior_column(prior, val_examples, cfg, cfg.model))
    warn_shared_rows(pool, val_examples, f"--val {cfg.val}")  # the reward would be measured on trained rows
    if resumable is not None:  # rounds are resumed only on the same contents of the same paths
        prior_file = prior.prior_selection if prior is not None and prior.prior == "selection" else None
        run.check_inputs(run_inputs(cfg.model, pool, cfg.features, val_examples, prior_file), config)
    per_class = resolve_per_class(per_class, cfg.batch_size, static.num_classes)
    batch = check_batch(static, per_class, len(pool), acc.num_processes)
    policy = make_policy(static, per_class, pool)
    run.write_config(config)
    set_seed(cfg.seed)
    lm = lm_config(cfg)
    trainer = LMTrainer(cfg.model, pool, lm, total_steps=cfg.steps, accelerator=acc)
    validator = Validator(
        val_examples[: cfg.state_val_size],
        trainer.tokenizer,
        cfg.metric,
        lm.max_length,
        lm.template,
        cfg.val_batch_size,
        cfg.max_new_tokens,
        accelerator=acc,
    )
    start = time.perf_counter()
    p0 = check_finite(validator(trainer.model), "step 0 (the initial model M_0)")
    log.info(
        "pool %d instructions, %d classes, batch %d = %d x %d; validation %d examples (P reads %d), metric %s; "
        "P(M_0) = %.5f (%.1fs)",
        len(pool),
        static.num_classes,
        batch,
        static.num_classes,
        per_class,
        len(val_examples),
        len(validator.examples),
        validator.metric,
        p0,
        time.perf_counter() - start,
    )
    return EpisodeJob(
        accelerator=acc,
        run=run,
        config=config,
        pool=pool,
        static=static,
        policy=policy,
        batch=batch,
        trainer=trainer,
        validator=validator,
        p0=p0,
        val_examples=val_examples,
    )
