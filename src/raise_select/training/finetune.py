"""Fine-tune the target model for T steps with a trained policy (pipeline step 3).

At every policy step the batch is the top-b of each class under the trained acquisition
function (Algorithm 1, no sampling); with `select_every = M` the policy chooses every M
steps and random batches fill the steps between (appendix F). The stage state needs
P_{t-1}, so the validation set is scored before every policy step, as during training.
Writes `<out>/model/` (`save_pretrained`, or the LoRA adapter with `lora`),
`<out>/selections.jsonl`, `<out>/metrics.jsonl`, `<out>/config.yaml` and `<out>/run.log`.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch

from ..config import check_fields, field_help, require_settings, to_dict
from ..policy.agent import PolicyConfig
from .episode import EpisodeConfig, check_batch, format_timing, lm_config, load_static, resolve_per_class, run_episode
from .loop import LMTrainer, full_precision_accelerator
from .reward import Validator, check_finite
from .runs import RunFolder

log = logging.getLogger(__name__)


@dataclass
class FinetuneConfig(EpisodeConfig):
    """`raise-select finetune`: LLM defaults lr 2e-5, cosine, no warm-up (appendix A.2)."""

    policy: str = field(default="", metadata={"help": "folder of a trained policy (<train-policy run>/policy)"})
    per_class: Optional[int] = field(default=None, metadata={
        "help": field_help(PolicyConfig, "per_class", with_default=False) + "; none: the value the policy was trained with"})

    def check(self) -> None:
        super().check()
        check_fields(self, [(self.per_class is None or self.per_class >= 1, "per_class", "must be >= 1")], "finetune")


def finetune(cfg: FinetuneConfig, accelerator=None) -> Path:
    """Fine-tune `cfg.model` with the policy in `cfg.policy`; returns the saved model folder."""
    from transformers import set_seed

    from ..logs import setup_logging
    from ..data.validation import load_validation
    from ..policy import RaisePolicy

    require_settings(cfg, ("policy", "pool", "features", "model", "val", "out"))
    acc = accelerator or full_precision_accelerator()
    run = RunFolder(cfg.out, enabled=acc.is_main_process, tensorboard=cfg.tensorboard)
    if acc.is_main_process:
        setup_logging(run.out)
    run.write_config(to_dict(cfg))

    # Score this pool exactly as during training: with the policy's own normaliser.
    pool, static = load_static(cfg.pool, cfg.features, RaisePolicy.read_normalizer(cfg.policy))
    policy = RaisePolicy.load(cfg.policy, static)
    per_class = resolve_per_class(cfg.per_class or policy.cfg.per_class, cfg.batch_size, static.num_classes)
    policy.cfg = dataclasses.replace(policy.cfg, per_class=per_class)
    batch = check_batch(static, per_class, len(pool), acc.num_processes)
    val_examples = load_validation(cfg.val, cfg.data_dir, cfg.val_size, cfg.seed)
    set_seed(cfg.seed)
    trainer = LMTrainer(cfg.model, pool, lm_config(cfg), total_steps=cfg.steps, accelerator=acc)
    validator = Validator(val_examples, trainer.tokenizer, cfg.metric, cfg.max_length, cfg.template,
                          cfg.val_batch_size, cfg.max_new_tokens, accelerator=acc)
    p0 = check_finite(validator(trainer.model), "step 0 (the initial model)")
    log.info("fine-tuning %s for %d steps, batch %d = %d classes x %d; P(M_0) = %.5f",
             cfg.model, cfg.steps, batch, static.num_classes, per_class, p0)

    write_selection = run.selection_writer("selections.jsonl")

    def on_step(metrics: dict, selection: dict) -> None:
        run.metric({"round": 0, **metrics})
        write_selection(selection)

    generator = torch.Generator().manual_seed(cfg.seed)
    result = run_episode(trainer, validator, policy, pool, cfg.steps, cfg.select_every, explore=False,
                         generator=generator, p0=p0, where="finetune", on_step=on_step)
    model_dir = run.out / "model"
    trainer.save(model_dir)
    run.metric({"kind": "finetune", "P0": p0, "final_P": result.final_p, "gain": result.ret,
                "mean_loss": result.mean_loss, "time": result.time})
    log.info("P %.5f -> %.5f; model saved to %s | %s", p0, result.final_p, model_dir, format_timing(result.time))
    run.close()
    return model_dir
