"""Algorithm 2 (appendix D): train the selection policy over K rounds.

Each round restarts the target model from the same M_0, runs T steps choosing batches with
the current policy (sampling within each class, so rollouts explore), then updates the
actor and critic with PPO on the round's buffer. After every round the policy is saved to
`<out>/policy/` and a checkpoint (policy, critic, optimizer states, RNG states, round
counter) is committed, so a re-run with the same `--out` resumes from the last finished
round and ends with the same policy as an uninterrupted run with the same seed (one
process).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ..config import to_dict
from ..errors import UserError
from .episode import EpisodeConfig, check_batch, check_common, load_static, resolve_per_class, lm_config, run_episode, share_from_main
from .loop import LMTrainer, full_precision_accelerator
from .reward import Validator, check_finite
from .runs import RunFolder, rng_state, set_rng_state

log = logging.getLogger(__name__)


@dataclass
class TrainPolicyConfig(EpisodeConfig):
    """`raise-select train-policy`: Algorithm 2. LLM and PPO defaults follow appendix A.2."""

    rounds: int = 20                  # K: policy-training rounds (episodes)
    per_class: int = 1                # b: items per class and step; the batch is B = C x b
    # Selection policy and PPO (PolicyConfig)
    hidden: int = 64                  # hidden width of actor and critic
    gamma: float = 0.99               # GAE discount (eq. 7-8)
    lam: float = 1.0                  # GAE lambda (eq. 8)
    clip: float = 0.2                 # PPO clip epsilon (eq. 12)
    actor_lr: float = 1e-1            # actor learning rate
    critic_lr: float = 2e-1           # critic learning rate
    policy_weight_decay: float = 1e-2 # actor and critic AdamW weight decay
    ppo_epochs: int = 4               # PPO epochs per round (K_2)
    minibatches: int = 1              # PPO optimizer steps per epoch (the round's steps split into groups)
    normalize_advantages: bool = True # standardise a round's advantages before eq. 12


# Fields that may change between a run and its resumption without changing the result.
RESUMABLE_CHANGES = ("rounds", "tensorboard", "out")


def policy_config(cfg: TrainPolicyConfig):
    from ..policy import PolicyConfig

    names = {f.name for f in dataclasses.fields(PolicyConfig)}
    values = {k: getattr(cfg, k) for k in names if hasattr(cfg, k) and k != "weight_decay"}
    return PolicyConfig(**values, weight_decay=cfg.policy_weight_decay)


def train_policy(cfg: TrainPolicyConfig, accelerator=None) -> Path:
    """Run Algorithm 2 into `cfg.out`; returns the folder of the trained policy (`<out>/policy`)."""
    from transformers import set_seed

    from ..cli.common import setup_logging
    from ..data.validation import load_validation
    from ..policy import RaisePolicy, RolloutBuffer

    check_common(cfg, ("pool", "features", "model", "val", "out"))
    if cfg.rounds < 1:
        raise UserError(f"invalid settings: rounds = {cfg.rounds} (must be >= 1)")
    acc = accelerator or full_precision_accelerator()
    run = RunFolder(cfg.out, enabled=acc.is_main_process, tensorboard=cfg.tensorboard)
    if acc.is_main_process:
        setup_logging(run.out)
    config = to_dict(cfg)
    run.check_config(config, RESUMABLE_CHANGES)

    pool, static = load_static(cfg.pool, cfg.features)
    cfg = dataclasses.replace(cfg, per_class=resolve_per_class(cfg.per_class, cfg.batch_size, static.num_classes))
    batch = check_batch(static, cfg.per_class, len(pool), acc.num_processes)
    val_examples = load_validation(cfg.val, cfg.data_dir, cfg.val_size, cfg.seed)
    set_seed(cfg.seed)
    policy = RaisePolicy(static, policy_config(cfg))
    lm = lm_config(cfg)
    trainer = LMTrainer(cfg.model, pool, lm, total_steps=cfg.steps, accelerator=acc)
    validator = Validator(val_examples, trainer.tokenizer, cfg.metric, lm.max_length, lm.template,
                          cfg.val_batch_size, cfg.max_new_tokens, accelerator=acc)
    start = time.perf_counter()
    p0 = check_finite(validator(trainer.model), "step 0 (the initial model M_0)")
    log.info("pool %d instructions, %d classes, batch %d = %d x %d; validation %d examples; P(M_0) = %.5f (%.1fs)",
             len(pool), static.num_classes, batch, static.num_classes, cfg.per_class, len(val_examples), p0,
             time.perf_counter() - start)

    generator = torch.Generator().manual_seed(cfg.seed)
    history: list[dict] = []
    first_round = 0
    saved = run.load_checkpoint() if acc.is_main_process else None
    if saved is not None:
        policy_dir, state = saved
        policy = RaisePolicy.load(policy_dir, static)
        policy.load_training_state(state["policy"])
        set_rng_state(state["rng"], generator)
        history = state["history"]
        first_round = int(state["rounds_done"])
        run.truncate_metrics(first_round)
        log.info("resuming after round %d of %d from %s", first_round, cfg.rounds, run.out / "checkpoint")
    first_round = share_from_main(acc, first_round)
    if first_round >= cfg.rounds:
        log.info("all %d rounds already done in %s", cfg.rounds, run.out)
    run.write_config(config)

    for k in range(first_round, cfg.rounds):
        trainer.reset()
        buffer = RolloutBuffer()
        write_selection = run.selection_writer(f"selections/round_{k}.jsonl")

        def on_step(metrics: dict, selection: dict, k=k) -> None:
            run.metric({"round": k, **metrics})
            write_selection(selection)

        result = run_episode(trainer, validator, policy, pool, cfg.steps, cfg.select_every, explore=True,
                             generator=generator, p0=p0, where=f"round {k}", on_step=on_step, buffer=buffer)
        start = time.perf_counter()
        stats = policy.update(buffer, last_value=0.0) if acc.is_main_process else {}
        ppo_time = time.perf_counter() - start
        timing = {**result.time, "ppo": ppo_time}
        summary = {"kind": "round", "round": k, "return": result.ret, "P0": p0, "final_P": result.final_p,
                   "mean_loss": sum(result.losses) / len(result.losses),
                   **{key: v for key, v in stats.items() if key not in ("return", "steps")}, "time": timing}
        run.metric(summary)
        history.append({"round": k, "steps": result.steps, "P": result.perf, "return": result.ret})
        total = sum(timing.values())
        log.info("round %d/%d: return %+.5f, P(M_T) %.5f, actor %.4f, critic %.4g, entropy %.3f | time %.1fs: %s",
                 k + 1, cfg.rounds, result.ret, result.final_p, stats.get("actor_loss", float("nan")),
                 stats.get("critic_loss", float("nan")), stats.get("entropy", float("nan")), total,
                 ", ".join(f"{key} {v:.1f}s ({100 * v / max(total, 1e-9):.0f}%)" for key, v in timing.items()))
        run.save_policy(policy.save)
        run.save_checkpoint(k + 1, policy.save, {"rounds_done": k + 1, "policy": policy.training_state(),
                                                 "rng": rng_state(generator), "history": history})
        run.plot(history)
    run.close()
    acc.wait_for_everyone()
    return run.out / "policy"
