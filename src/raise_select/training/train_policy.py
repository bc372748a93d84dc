"""Algorithm 2 (appendix D): train the selection policy over K rounds.

Each round restarts the target model from the same M_0, runs T steps choosing batches with
the current policy (sampling within each class, so rollouts explore), then updates the
actor and critic with PPO on the round's buffer (`policy.round_update: refit`: fits the actor
again to every credit label so far instead). After every round the policy is saved to
`<out>/policy/` and a checkpoint (policy, critic, optimizer states, RNG states, round
counter) is committed, so a re-run with the same `--out` resumes from the last finished
round and ends with the same policy as an uninterrupted run with the same seed (one
process).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..config import check_fields
from ..costs import phi_seconds
from ..errors import UserError
from ..policy.agent import PolicyConfig
from .episode import (
    EpisodeConfig,
    RandomBatches,
    format_timing,
    run_episode,
    selection_stats,
    share_from_main,
    start_episode_job,
)
from .runs import random_episode_generator, rng_state, set_rng_state

log = logging.getLogger(__name__)


@dataclass
class TrainPolicyConfig(EpisodeConfig):
    """`raise-select train-policy`: Algorithm 2. LLM and PPO defaults follow appendix A.2."""

    rounds: int = field(
        default=20,
        metadata={
            "help": "K: policy-training rounds (episodes); 0 saves the initial policy untrained (with a "
            "prior: the prior's soft selection, the ablation of policy training)"
        },
    )
    policy: PolicyConfig = field(default_factory=PolicyConfig, metadata={"help": "the selection policy and PPO"})

    def check(self) -> None:
        super().check()
        decisions = -(-self.steps // self.select_every)  # the policy's steps per round: ceil(T / M)
        check_fields(self, [(self.rounds >= 0, "rounds", "must be >= 0")], "train-policy")
        if self.policy.minibatches > decisions:
            raise UserError(
                f"invalid train-policy settings: policy.minibatches = {self.policy.minibatches} is more "
                f"than the {decisions} policy step(s) of a round (steps {self.steps}, select_every "
                f"{self.select_every}), and a minibatch needs at least one; use at most {decisions}"
            )


# Fields that may change between a run and its resumption without changing the result.
RESUMABLE_CHANGES = ("rounds", "report_to", "tensorboard", "out")


def policy_settings(cfg: TrainPolicyConfig, per_class: int) -> PolicyConfig:
    """The job's `policy` section with b resolved (`batch_size`) and the job's seed when it names none."""
    seed = cfg.seed if cfg.policy.seed is None else cfg.policy.seed
    return dataclasses.replace(cfg.policy, per_class=per_class, seed=seed)


def refuse_fewer_rounds(cfg: TrainPolicyConfig) -> None:
    """Refuse, before anything is written, `rounds` below the rounds the run folder already holds:
    a trained policy cannot be untrained, and keeping it would label a K-round policy as fewer
    (`rounds 0`, the untrained prior, would measure a trained policy)."""
    from .runs import RunFolder

    done = RunFolder(cfg.out, enabled=False).latest_round() if cfg.out else 0
    if cfg.rounds < done:
        raise UserError(
            f"--out {cfg.out}: holds a run of {done} finished rounds, more than --rounds {cfg.rounds} asks for "
            f"(its policy cannot be untrained); use another --out for a {cfg.rounds}-round run"
        )


def start_policy_job(cfg: TrainPolicyConfig, accelerator=None, resumable: tuple[str, ...] | None = None):
    """`start_episode_job` for train-policy's settings: M_0, the validator, the pool and its features
    (with the policy's prior column) and a fresh policy of `cfg.policy`."""
    from ..policy import RaisePolicy

    return start_episode_job(
        cfg,
        accelerator,
        ("pool", "features", "model", "val", "out"),
        cfg.policy.per_class,
        lambda static, per_class, pool: RaisePolicy(static, policy_settings(cfg, per_class)),
        resumable=resumable,
        prior=cfg.policy,
    )


def fit_to_labels(
    cfg: TrainPolicyConfig, trainer, validator, policy, p0: float, out: Path, examples: list | None = None
) -> dict:
    """`policy.label_budget`: label a uniform sample of the pool with each row's credit at M_0
    (`training.credit`, on the validator's metric), fit F_theta to the order of all but the
    `label_holdout` share, and record in `<out>/labels.json` the rows, their credit, the fit's
    losses and the Spearman correlation of the scores with the held-out rows' credit before and
    after the fit (the learning curve of the amortized scorer). Returns that record. `examples`:
    the validation examples the labels read, the validator's own when None."""
    from ..io import write_json_atomic
    from ..policy.credit import spearman
    from .credit import RowCredit

    pc = cfg.policy
    n = len(trainer.pool)
    generator = torch.Generator().manual_seed(cfg.seed * 1_000_033 + 7)  # its own draws: the rounds' are untouched
    rows = torch.randperm(n, generator=generator)[: min(pc.label_budget, n)]
    labeller = RowCredit(
        trainer, validator, sample=0, val_norm=pc.credit_val_norm, examples=examples, row_norm=pc.credit_row_norm
    )
    start = time.perf_counter()
    credit = labeller.credit(rows.tolist(), lr=cfg.lr, desc="credit labels")  # one g_val for all rows
    label_seconds = time.perf_counter() - start
    held = int(round(pc.label_holdout * len(rows)))
    held = held if held >= 2 and len(rows) - held >= 2 else 0
    counts = torch.zeros(n, dtype=torch.int64)

    def held_out_rho() -> float | None:
        return spearman(policy.scores(p0, 0.0, counts)[rows[:held]], credit[:held]) if held else None

    before = held_out_rho()
    start = time.perf_counter()
    losses = policy.fit_labels(rows[held:], credit[held:], p0, pc.label_epochs, generator)
    record = {
        "objective": labeller.objective,
        "rows": rows.tolist(),
        "credit": credit.tolist(),
        "held_out": held,
        "spearman_before": before,
        "spearman_after": held_out_rho(),
        "fit_spearman": spearman(policy.scores(p0, 0.0, counts)[rows[held:]], credit[held:]),
        "fit_losses": [losses[0], losses[-1]],
        "label_seconds": round(label_seconds, 2),
        "fit_seconds": round(time.perf_counter() - start, 2),
    }
    write_json_atomic(out / "labels.json", record)
    log.info(
        "label budget: %d rows labelled (%s, %.0fs); F_theta fitted on %d, held-out Spearman %s -> %s",
        len(rows),
        labeller.objective,
        label_seconds,
        len(rows) - held,
        "n/a" if before is None else f"{before:+.3f}",
        "n/a" if record["spearman_after"] is None else f"{record['spearman_after']:+.3f}",
    )
    return record


def train_policy(cfg: TrainPolicyConfig, accelerator=None) -> Path:
    """Run Algorithm 2 into `cfg.out`; returns the folder of the trained policy (`<out>/policy`)."""
    from ..policy import RaisePolicy, RolloutBuffer
    from ..policy.provenance import trained_on, write_trained_on

    refuse_fewer_rounds(cfg)
    job = start_policy_job(cfg, accelerator, resumable=RESUMABLE_CHANGES)
    acc, run, pool, static, policy, batch = job.accelerator, job.run, job.pool, job.static, job.policy, job.batch
    trainer, validator, p0 = job.trainer, job.validator, job.p0

    prior_file = cfg.policy.prior_selection if cfg.policy.prior == "selection" else None
    record = trained_on(cfg.pool, pool.ids, cfg.features, prior_file)

    def save(folder: Path) -> None:  # the weights, and the rows and features they were trained on
        policy.save(folder)
        write_trained_on(folder, record)

    generator = torch.Generator().manual_seed(cfg.seed)
    history: list[dict] = []
    first_round = 0
    reference = None
    # round_update refit: every label so far, as (rows, credit) groups each measured on one model
    label_groups: list[tuple] = []
    saved = run.load_checkpoint() if acc.is_main_process else None
    if saved is not None:
        policy_dir, state = saved
        policy = RaisePolicy.load(policy_dir, static)
        policy.load_training_state(state["policy"])
        set_rng_state(state["rng"], generator)
        history = state["history"]
        reference = state.get("reference")
        label_groups = [tuple(group) for group in state.get("label_groups", [])]
        first_round = int(state["rounds_done"])
        run.truncate_metrics(first_round)
        log.info("resuming after round %d of %d from %s", first_round, cfg.rounds, run.out / "checkpoint")
    elif acc.is_main_process:
        run.start_over()
        if cfg.policy.label_budget > 0:  # before any round: the policy starts from the labels' fit
            fitted = fit_to_labels(cfg, trainer, validator, policy, p0, run.out, job.val_examples)
            if cfg.policy.round_update == "refit":  # the fit's labels stay among those refitted
                held = fitted["held_out"]
                label_groups.append(
                    (torch.tensor(fitted["rows"][held:]), torch.tensor(fitted["credit"][held:], dtype=torch.float64))
                )
    first_round = share_from_main(acc, first_round)
    if cfg.rounds == 0:  # no episode at all: the policy as initialised (its prior, if any)
        log.info("rounds 0: saving the initial policy untrained to %s", run.out / "policy")
        run.save_policy(save)
    elif first_round >= cfg.rounds:
        log.info("all %d rounds already done in %s", cfg.rounds, run.out)

    if first_round == 0 and cfg.rounds > 0:
        # The reference: one episode of uniformly random batches from M_0 (its own seeded
        # draws). Its per-step rewards start the step baseline; every round's return is shown
        # against its return.
        trainer.reset()
        ref = run_episode(
            trainer,
            validator,
            RandomBatches(static, batch),
            pool,
            cfg.steps,
            cfg.select_every,
            explore=True,
            generator=random_episode_generator(cfg.seed),
            p0=p0,
            where="reference (random batches)",
            on_step=lambda metrics, selection: None,
        )
        reference = {"return": ref.ret, "final_P": ref.final_p, "rewards": ref.rewards, "time": ref.time}
        if acc.is_main_process:
            policy.observe_episode(ref.rewards)
        run.metric(
            {
                "kind": "reference",
                "return": ref.ret,
                "P0": p0,
                "final_P": ref.final_p,
                "mean_loss": ref.mean_loss,
                "rewards": ref.rewards,
                "time": ref.time,
            }
        )
        log.info(
            "reference episode (uniformly random batches): return %+.5f, P(M_T) %.5f | %s",
            ref.ret,
            ref.final_p,
            format_timing(ref.time),
        )

    for k in range(first_round, cfg.rounds):
        trainer.reset()
        buffer = RolloutBuffer()
        write_selection = run.selection_writer(f"selections/round_{k}.jsonl")

        batches: list[list[int]] = []

        def on_step(metrics: dict, selection: dict, k=k) -> None:
            run.metric({"round": k, **metrics})
            write_selection(selection)
            batches.append(selection["indices"])

        result = run_episode(
            trainer,
            validator,
            policy,
            pool,
            cfg.steps,
            cfg.select_every,
            explore=True,
            generator=generator,
            p0=p0,
            where=f"round {k}",
            on_step=on_step,
            buffer=buffer,
            between=cfg.between,
            label_examples=job.val_examples,
        )
        start = time.perf_counter()
        if not acc.is_main_process:
            stats = {}
        elif cfg.policy.round_update == "refit":  # its own draws per round: a resumed run refits the same
            stats = policy.refit(buffer, label_groups, p0, torch.Generator().manual_seed(cfg.seed * 1_000_039 + k))
        else:
            stats = policy.update(buffer, last_value=0.0)
        ppo_time = time.perf_counter() - start
        timing = {**result.time, "ppo": ppo_time}
        phi = phi_seconds(train_seconds=result.time["train"], steps=cfg.steps, pool_size=len(pool), batch_size=batch)
        vs_reference = result.ret - reference["return"]
        summary = {
            "kind": "round",
            "round": k,
            "return": result.ret,
            "reference_return": reference["return"],
            "vs_reference": vs_reference,
            "P0": p0,
            "final_P": result.final_p,
            "mean_loss": result.mean_loss,
            **{key: v for key, v in stats.items() if key not in ("return", "steps")},
            "selection": selection_stats(batches, static.classes, static.num_classes),
            "time": timing,
            "cost_phi": sum(timing.values()) / max(phi, 1e-12),
        }
        run.metric(summary)
        history.append(
            {"round": k, "steps": result.steps, "P": result.perf, "return": result.ret, "cost_phi": summary["cost_phi"]}
        )
        log.info(
            "round %d/%d: return %+.5f (random batches %+.5f: %+.5f), P(M_T) %.5f, KL %.4f, entropy %.3f, "
            "cost %.2f Phi | %s",
            k + 1,
            cfg.rounds,
            result.ret,
            reference["return"],
            vs_reference,
            result.final_p,
            stats.get("approx_kl", float("nan")),
            stats.get("entropy", float("nan")),
            summary["cost_phi"],
            format_timing(timing),
        )
        run.save_policy(save)
        run.save_checkpoint(
            k + 1,
            save,
            {
                "rounds_done": k + 1,
                "policy": policy.training_state(),
                "rng": rng_state(generator),
                "history": history,
                "reference": reference,
                "label_groups": [list(group) for group in label_groups],
            },
        )
        run.plot(history, reference_return=reference["return"])
    if history and reference is not None:
        last = history[-min(3, len(history)) :]
        mean_last = sum(r["return"] for r in last) / len(last)
        total_phi = sum(r.get("cost_phi", 0.0) for r in history)
        log.info(
            "policy training: %d rounds, %.1f Phi in all (Phi = one epoch of plain training over the pool)",
            len(history),
            total_phi,
        )
        if mean_last <= reference["return"]:
            log.warning(
                "the policy is not above the reference: mean return of the last %d rounds %+.5f <= %+.5f of "
                "uniformly random batches; more rounds, a larger validation set or the settings in "
                "docs/policy.md may help",
                len(last),
                mean_last,
                reference["return"],
            )
    run.close()
    acc.wait_for_everyone()
    return run.out / "policy"
