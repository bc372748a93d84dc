"""Fine-tune the target model for T steps with a trained policy (pipeline step 3).

At every policy step the batch is chosen by the policy's use rule: the top-b of each class
under the trained acquisition function (Algorithm 1) or b draws from each class softmax
(`use_rule = sample`, as in the rollouts the policy was trained on); with `select_every = M` the policy chooses every M
steps and random batches fill the steps between (appendix F). The stage state needs
P_{t-1}, so the validation set is scored before every policy step, as during training.
Writes `<out>/model/` (`save_pretrained`, or the LoRA adapter with `lora`),
`<out>/selections.jsonl`, `<out>/metrics.jsonl`, `<out>/config.yaml` and `<out>/run.log`;
the last metrics line says how the choices spread (distinct rows, repetition, class
shares) and, with `compare_random`, the final P of uniformly random batches at the same steps.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch

from ..config import check_fields, field_help, require_settings
from ..policy.agent import USE_RULES, PolicyConfig
from .episode import EpisodeConfig, RandomBatches, format_timing, run_episode, selection_stats, start_episode_job
from .runs import random_episode_generator

log = logging.getLogger(__name__)


@dataclass
class FinetuneConfig(EpisodeConfig):
    """`raise-select finetune`: LLM defaults lr 2e-5, cosine, no warm-up (appendix A.2)."""

    policy: str = field(default="", metadata={"help": "folder of a trained policy (<train-policy run>/policy)"})
    per_class: Optional[int] = field(
        default=None,
        metadata={
            "help": field_help(PolicyConfig, "per_class", with_default=False)
            + "; none: the value the policy was trained with"
        },
    )

    use_rule: Optional[str] = field(
        default=None,
        metadata={
            "help": field_help(PolicyConfig, "use_rule", with_default=False)
            + "; none: the rule the policy was trained with"
        },
    )
    compare_random: bool = field(
        default=False,
        metadata={"help": "also train M_0 on uniformly random batches for the same steps and report both final P"},
    )

    def check(self) -> None:
        super().check()
        check_fields(
            self,
            [
                (self.per_class is None or self.per_class >= 1, "per_class", "must be >= 1"),
                (
                    self.use_rule is None or self.use_rule in USE_RULES,
                    "use_rule",
                    f"must be one of {', '.join(USE_RULES)}",
                ),
            ],
            "finetune",
        )


def finetune(cfg: FinetuneConfig, accelerator=None) -> Path:
    """Fine-tune `cfg.model` with the policy in `cfg.policy`; returns the saved model folder."""
    from ..policy import RaisePolicy
    from ..policy.provenance import check_trained_on, prior_for_use, trained_on

    def load_policy(static, per_class: int, pool) -> RaisePolicy:
        check_trained_on(cfg.policy, trained_on(cfg.pool, pool.ids, cfg.features))
        policy = RaisePolicy.load(cfg.policy, static)
        policy.cfg = dataclasses.replace(policy.cfg, per_class=per_class, use_rule=cfg.use_rule or policy.cfg.use_rule)
        return policy

    required = ("policy", "pool", "features", "model", "val", "out")
    require_settings(cfg, required)  # before the policy folder is read for b and the normaliser
    # Score this pool exactly as during training: with the policy's own normaliser.
    job = start_episode_job(
        cfg,
        accelerator,
        required,
        cfg.per_class or RaisePolicy.read_config(cfg.policy).per_class,
        load_policy,
        normalizer=RaisePolicy.read_normalizer(cfg.policy),
        prior=prior_for_use(cfg.policy, RaisePolicy.read_config(cfg.policy)),  # its prior file, unchanged
    )
    run, static, policy, batch = job.run, job.static, job.policy, job.batch
    trainer, validator, p0 = job.trainer, job.validator, job.p0
    log.info(
        "fine-tuning %s for %d steps with the policy in %s (use rule %s)",
        cfg.model,
        cfg.steps,
        cfg.policy,
        policy.cfg.use_rule,
    )

    write_selection = run.selection_writer("selections.jsonl")
    batches: list[list[int]] = []

    def on_step(metrics: dict, selection: dict) -> None:
        run.metric({"round": 0, **metrics})
        write_selection(selection)
        batches.append(selection["indices"])

    generator = torch.Generator().manual_seed(cfg.seed)
    result = run_episode(
        trainer,
        validator,
        policy,
        job.pool,
        cfg.steps,
        cfg.select_every,
        explore=False,
        generator=generator,
        p0=p0,
        where="finetune",
        on_step=on_step,
        between=cfg.between,
    )
    model_dir = run.out / "model"
    trainer.save(model_dir)
    stats = selection_stats(batches, static.classes, static.num_classes)
    summary = {
        "kind": "finetune",
        "P0": p0,
        "final_P": result.final_p,
        "gain": result.ret,
        "mean_loss": result.mean_loss,
        "use_rule": policy.cfg.use_rule,
        "selection": stats,
        "time": result.time,
    }
    log.info(
        "P %.5f -> %.5f (use rule %s); model saved to %s | %s",
        p0,
        result.final_p,
        policy.cfg.use_rule,
        model_dir,
        format_timing(result.time),
    )
    log.info(
        "chose %d distinct rows over %d slots; most chosen row %d times; 10 most chosen rows %.1f%% of the "
        "slots; share per class %s",
        stats["distinct"],
        stats["slots"],
        stats["max_times"],
        100 * stats["top10_share"],
        stats["class_share"],
    )
    if cfg.compare_random:
        trainer.reset()
        rand = run_episode(
            trainer,
            validator,
            RandomBatches(static, batch),
            job.pool,
            cfg.steps,
            cfg.select_every,
            explore=True,
            generator=random_episode_generator(cfg.seed),
            p0=p0,
            where="random batches",
            on_step=lambda metrics, selection: None,
        )
        summary["random_final_P"] = rand.final_p
        log.info(
            "same steps on uniformly random batches: P %.5f -> %.5f; the policy %s them by %.5f",
            p0,
            rand.final_p,
            "beats" if result.final_p > rand.final_p else "does NOT beat",
            abs(result.final_p - rand.final_p),
        )
    run.metric(summary)
    run.close()
    return model_dir


def policy_training_episodes(metrics: Path) -> dict[str, float]:
    """Seconds per episode of a train-policy run folder, over every run that wrote to it (the
    reference episode and each round log their train, reward, scoring and PPO seconds), keyed
    `reference` and `round <k>`: what a resumed run cannot measure with its own clock."""
    from ..io import read_jsonl

    episodes: dict[str, float] = {}  # a round logged twice (redone after a crash): the later line
    if Path(metrics).is_file():
        for rec in read_jsonl(metrics, what="metrics log"):
            if rec.get("kind") in ("reference", "round"):
                key = "reference" if rec["kind"] == "reference" else f"round {rec.get('round')}"
                episodes[key] = sum(v for v in (rec.get("time") or {}).values() if isinstance(v, (int, float)))
    return episodes


def policy_training_seconds(metrics: Path) -> float:
    """The time a train-policy run folder has spent on its episodes (`policy_training_episodes`)."""
    return sum(policy_training_episodes(metrics).values())


def train_and_finetune(tp, out: str | Path) -> tuple[Path, float, float]:
    """RAISE end to end: `train_policy(tp)` into <out>/train_policy, then `finetune` with the
    trained policy and the same LLM and episode settings into <out>/finetune.

    Returns (model folder, policy-training seconds over every run of that folder, finetune
    seconds). `tp` is a TrainPolicyConfig whose `out` is replaced.
    """
    from .train_policy import train_policy

    out = Path(out)
    tp = dataclasses.replace(tp, out=str(out / "train_policy"))
    start = time.perf_counter()
    policy_dir = train_policy(tp)
    resumed_seconds = time.perf_counter() - start
    ft_fields = {f.name for f in dataclasses.fields(FinetuneConfig)}
    # `policy` of a FinetuneConfig is the trained policy's folder, not the settings section.
    ft = FinetuneConfig(
        **{k: getattr(tp, k) for k in ft_fields if hasattr(tp, k) and k not in ("out", "policy")},
        policy=str(policy_dir),
        out=str(out / "finetune"),
    )
    start = time.perf_counter()
    model_dir = finetune(ft)
    finetune_seconds = time.perf_counter() - start
    policy_seconds = max(resumed_seconds, policy_training_seconds(out / "train_policy" / "metrics.jsonl"))
    return model_dir, policy_seconds, finetune_seconds
