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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch

from ..config import check_fields, field_help, require_settings, to_dict
from ..policy.agent import USE_RULES, PolicyConfig
from .episode import (EpisodeConfig, RandomBatches, check_batch, format_timing, lm_config, load_static, resolve_per_class,
                      run_episode, selection_stats)
from .loop import LMTrainer, full_precision_accelerator
from .reporting import parse_report_to
from .reward import Validator, check_finite
from .runs import RunFolder

log = logging.getLogger(__name__)

RANDOM_SEED_OFFSET = 7919   # --compare-random's draws (as train-policy's reference episode)


@dataclass
class FinetuneConfig(EpisodeConfig):
    """`raise-select finetune`: LLM defaults lr 2e-5, cosine, no warm-up (appendix A.2)."""

    policy: str = field(default="", metadata={"help": "folder of a trained policy (<train-policy run>/policy)"})
    per_class: Optional[int] = field(default=None, metadata={
        "help": field_help(PolicyConfig, "per_class", with_default=False) + "; none: the value the policy was trained with"})

    use_rule: Optional[str] = field(default=None, metadata={
        "help": field_help(PolicyConfig, "use_rule", with_default=False) + "; none: the rule the policy was trained with"})
    compare_random: bool = field(default=False, metadata={
        "help": "also train M_0 on uniformly random batches for the same steps and report both final P"})

    def check(self) -> None:
        super().check()
        check_fields(self, [(self.per_class is None or self.per_class >= 1, "per_class", "must be >= 1"),
                            (self.use_rule is None or self.use_rule in USE_RULES, "use_rule",
                             f"must be one of {', '.join(USE_RULES)}")], "finetune")


def finetune(cfg: FinetuneConfig, accelerator=None) -> Path:
    """Fine-tune `cfg.model` with the policy in `cfg.policy`; returns the saved model folder."""
    from transformers import set_seed

    from ..logs import setup_logging
    from ..data.validation import load_validation
    from ..policy import RaisePolicy
    from ..policy.provenance import check_trained_on, trained_on

    require_settings(cfg, ("policy", "pool", "features", "model", "val", "out"))
    acc = accelerator or full_precision_accelerator()
    run = RunFolder(cfg.out, enabled=acc.is_main_process, report_to=parse_report_to(cfg.report_to, cfg.tensorboard),
                    config=to_dict(cfg))
    if acc.is_main_process:
        setup_logging(run.out)

    # Score this pool exactly as during training: with the policy's own normaliser.
    pool, static = load_static(cfg.pool, cfg.features, RaisePolicy.read_normalizer(cfg.policy))
    check_trained_on(cfg.policy, trained_on(cfg.pool, pool.ids, cfg.features))
    policy = RaisePolicy.load(cfg.policy, static)
    per_class = resolve_per_class(cfg.per_class or policy.cfg.per_class, cfg.batch_size, static.num_classes)
    policy.cfg = dataclasses.replace(policy.cfg, per_class=per_class, use_rule=cfg.use_rule or policy.cfg.use_rule)
    batch = check_batch(static, per_class, len(pool), acc.num_processes)
    val_examples = load_validation(cfg.val, cfg.data_dir, cfg.val_size, cfg.seed)
    run.write_config(to_dict(cfg))  # once the inputs are checked: a refused run leaves no config behind
    set_seed(cfg.seed)
    trainer = LMTrainer(cfg.model, pool, lm_config(cfg), total_steps=cfg.steps, accelerator=acc)
    validator = Validator(val_examples, trainer.tokenizer, cfg.metric, cfg.max_length, cfg.template,
                          cfg.val_batch_size, cfg.max_new_tokens, accelerator=acc)
    p0 = check_finite(validator(trainer.model), "step 0 (the initial model)")
    log.info("fine-tuning %s for %d steps, batch %d = %d classes x %d; P(M_0) = %.5f",
             cfg.model, cfg.steps, batch, static.num_classes, per_class, p0)

    write_selection = run.selection_writer("selections.jsonl")
    batches: list[list[int]] = []

    def on_step(metrics: dict, selection: dict) -> None:
        run.metric({"round": 0, **metrics})
        write_selection(selection)
        batches.append(selection["indices"])

    generator = torch.Generator().manual_seed(cfg.seed)
    result = run_episode(trainer, validator, policy, pool, cfg.steps, cfg.select_every, explore=False,
                         generator=generator, p0=p0, where="finetune", on_step=on_step)
    model_dir = run.out / "model"
    trainer.save(model_dir)
    stats = selection_stats(batches, static.classes, static.num_classes)
    summary = {"kind": "finetune", "P0": p0, "final_P": result.final_p, "gain": result.ret,
               "mean_loss": result.mean_loss, "use_rule": policy.cfg.use_rule, "selection": stats, "time": result.time}
    log.info("P %.5f -> %.5f (use rule %s); model saved to %s | %s", p0, result.final_p, policy.cfg.use_rule,
             model_dir, format_timing(result.time))
    log.info("chose %d distinct rows over %d slots; most chosen row %d times; 10 most chosen rows %.1f%% of the "
             "slots; share per class %s", stats["distinct"], stats["slots"], stats["max_times"],
             100 * stats["top10_share"], stats["class_share"])
    if cfg.compare_random:
        trainer.reset()
        rand = run_episode(trainer, validator, RandomBatches(static, batch), pool, cfg.steps, cfg.select_every,
                           explore=True, generator=torch.Generator().manual_seed(cfg.seed + RANDOM_SEED_OFFSET),
                           p0=p0, where="random batches", on_step=lambda metrics, selection: None)
        summary["random_final_P"] = rand.final_p
        log.info("same steps on uniformly random batches: P %.5f -> %.5f; the policy %s them by %.5f",
                 p0, rand.final_p, "beats" if result.final_p > rand.final_p else "does NOT beat",
                 abs(result.final_p - rand.final_p))
    run.metric(summary)
    run.close()
    return model_dir
