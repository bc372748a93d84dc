"""RaisePolicy: the actor F_theta, the critic V_phi, their optimizers and the static state.

Use in a round (Algorithm 2): `act` at every policy step (explore=True samples within each
class), `RolloutBuffer.add` with the reward, then `update` after the round. At use time
`act(..., explore=False)` gives the top-b of each class (Algorithm 1).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Optional

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ..config import check_fields
from ..errors import UserError
from ..io import atomic_path, write_json_atomic
from ..progress import progress_bar
from .acquisition import CRITIC_FEATURES, AcquisitionMLP, Critic, critic_features
from .buffer import RolloutBuffer
from .ppo import actor_loss, class_entropy, class_log_softmax, critic_loss, gae
from .prior import PRIORS, init_prior_actor
from .selection import select_per_class
from .state import Normalizer, StaticState

POLICY_FORMAT = 1
# The paper's literal form of the settings we depart from (everything else already is).
PAPER = {"gamma": 0.99, "ratio": "product", "advantage": "gae", "target_kl": 0.0, "use_rule": "topk"}
RATIOS = ("product", "per_item")
ADVANTAGES = ("gae", "step_baseline")
USE_RULES = ("topk", "sample")


@dataclass
class PolicyConfig:
    """Selection policy and PPO settings.

        Defaults follow appendix A.2 of the paper except three named departures, measured in
        docs/policy.md: gamma 0 (paper 0.99), advantage step_baseline (paper gae) and use_rule
        sample (paper topk); ratio per_item is an option that measured no better. `PAPER` holds the paper's
    literal values (`configs/policy_paper.yaml`).

        The jobs that train a policy (train-policy, demo, the study's RAISE cells) hold one as
        their `policy:` section; a field added here reaches their YAML, `--set` and the settings
        reference with its help text. Rules on a field go in `check()`.
    """

    hidden: int = field(default=64, metadata={"help": "width of the actor's and critic's hidden layers"})
    gamma: float = field(
        default=0.0,
        metadata={
            "help": "discount factor of the advantage (eq. 7-8); the paper's 0.99 credits a batch with every later "
            "step's reward, 0 with its own"
        },
    )
    lam: float = field(default=1.0, metadata={"help": "GAE lambda (eq. 8)"})
    clip: float = field(default=0.2, metadata={"help": "PPO clipping epsilon (eq. 12)"})
    actor_lr: float = field(
        default=1e-1, metadata={"help": "AdamW learning rate of the actor F_theta (scaled per layer by 1/sqrt(fan_in))"}
    )
    critic_lr: float = field(
        default=2e-1, metadata={"help": "AdamW learning rate of the critic V_phi (scaled per layer by 1/sqrt(fan_in))"}
    )
    weight_decay: float = field(default=1e-2, metadata={"help": "AdamW weight decay of actor and critic"})
    ppo_epochs: int = field(
        default=4, metadata={"help": "passes over a round's buffer per PPO update (K_2 of Algorithm 2)"}
    )
    per_class: int = field(default=1, metadata={"help": "b: items chosen per class and step; the batch is B = C x b"})
    seed: Optional[int] = field(
        default=None,
        metadata={
            "help": "seed of the initial weights and of the minibatch order of updates; none: the job's seed "
            "(0 for a policy built directly)"
        },
    )
    minibatches: int = field(
        default=1, metadata={"help": "optimizer steps per epoch: the round's steps are shuffled into this many groups"}
    )
    normalize_advantages: bool = field(
        default=True,
        metadata={"help": "standardise a round's advantages before eq. 12 (rewards are tiny validation deltas)"},
    )
    # Departures from the paper (docs/policy.md has the measured ablation); the paper's form in brackets.
    ratio: str = field(
        default="product",
        metadata={
            "help": "importance ratio: product of the B class probabilities [eq. 11] "
            "or per_item (each chosen row its own clipped ratio)"
        },
    )
    advantage: str = field(
        default="step_baseline",
        metadata={
            "help": "gae [eq. 7-9, critic V_phi as baseline] or step_baseline (reward minus the mean reward at the "
            "same step of earlier episodes)"
        },
    )
    target_kl: float = field(
        default=0.0,
        metadata={
            "help": "stop a round's PPO epochs once the approximate KL per chosen row exceeds this (0 = never [paper])"
        },
    )
    use_rule: str = field(
        default="sample",
        metadata={"help": "use time: topk [Algorithm 1] or sample (draw from the class softmax, as in rollouts)"},
    )
    prior: str = field(
        default="none",
        metadata={
            "help": "none [eq. 2-6], rds or selection: one more static state column, with an actor whose round 0 "
            "ranks rows by it (policy/prior.py); rds: the RDS+ similarity of each row to the validation set "
            "(needs featurize --rds); selection: the pool_scores of a baseline's selection.json (prior_selection)"
        },
    )
    prior_selection: str = field(
        default="",
        metadata={"help": "with prior selection: a scoring baseline's selection.json on the same pool"},
    )
    prior_scale: float = field(
        default=3.0,
        metadata={
            "help": "with a prior: round 0 scores are prior_scale * tanh(standardised prior), "
            "the logit range of each class softmax"
        },
    )

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        """Refuse invalid settings before any training, naming each bad field."""
        rules = [
            (self.hidden >= 1, "hidden", "must be >= 1"),
            (0.0 <= self.gamma <= 1.0, "gamma", "must lie in [0, 1]"),
            (0.0 <= self.lam <= 1.0, "lam", "must lie in [0, 1]"),
            (self.clip > 0.0, "clip", "must be > 0"),
            (self.actor_lr > 0.0, "actor_lr", "must be > 0"),
            (self.critic_lr > 0.0, "critic_lr", "must be > 0"),
            (self.weight_decay >= 0.0, "weight_decay", "must be >= 0"),
            (self.ppo_epochs >= 1, "ppo_epochs", "must be >= 1"),
            (self.per_class >= 1, "per_class", "must be >= 1"),
            (self.seed is None or self.seed >= 0, "seed", "must be >= 0"),
            (self.minibatches >= 1, "minibatches", "must be >= 1"),
            (self.ratio in RATIOS, "ratio", f"must be one of {', '.join(RATIOS)}"),
            (self.advantage in ADVANTAGES, "advantage", f"must be one of {', '.join(ADVANTAGES)}"),
            (self.target_kl >= 0.0, "target_kl", "must be >= 0 (0 = off)"),
            (self.use_rule in USE_RULES, "use_rule", f"must be one of {', '.join(USE_RULES)}"),
            (self.prior in PRIORS, "prior", f"must be one of {', '.join(PRIORS)}"),
            (math.isfinite(self.prior_scale) and self.prior_scale > 0.0, "prior_scale", "must be a finite number > 0"),
            (
                (self.prior == "selection") == bool(self.prior_selection),
                "prior_selection",
                "must name a selection.json exactly when prior is selection",
            ),
        ]
        check_fields(self, rules, "policy")


def layer_groups(module: nn.Module, lr: float) -> list[dict]:
    """One AdamW parameter group per linear layer, at lr / sqrt(fan_in) (an equalised learning rate).

    Adam moves every parameter by about lr per step whatever its gradient's size, so the
    paper's rates (1e-1, 2e-1) would change a 64-wide layer by far more than its own weight
    scale (~1/sqrt(fan_in)) in one step. Scaling each layer's rate by 1/sqrt(fan_in) makes
    the paper's rate a step relative to the layer's natural scale.
    """
    return [
        {"params": list(layer.parameters()), "lr": lr / math.sqrt(layer.in_features)}
        for layer in module.modules()
        if isinstance(layer, nn.Linear)
    ]


@dataclass
class Action:
    indices: torch.Tensor  # (B,) int64 rows of the pool
    scores: torch.Tensor  # (B,) acquisition scores of the chosen rows
    log_prob: float  # class_log_prob under the acting policy (sum of item_log_prob)
    value: float  # critic V(S_t)
    item_log_prob: torch.Tensor | None = None  # (B,) class log-probability of each chosen row (eq. 10)


@dataclass(frozen=True, eq=False)
class RoundInputs:
    """What every PPO step of one update reads: the round's buffer and its per-step inputs."""

    buffer: RolloutBuffer
    data: dict[str, torch.Tensor]  # buffer.tensors()
    stage: list[float]  # P_{t-1} - P(M_0) of every step (`RaisePolicy._stage`)
    advantages: torch.Tensor  # (T,) float64, eq. 8 or the step baseline's
    actor_advantages: torch.Tensor  # (T,) as eq. 12 uses them: standardised with normalize_advantages
    returns: torch.Tensor  # (T,) float64 critic targets (eq. 9)
    critic_in: torch.Tensor  # (T, len(CRITIC_FEATURES)) critic inputs


@dataclass
class UpdateStats:
    """What one PPO update records on its way, and the summary `RaisePolicy.update` returns."""

    actor_losses: list[float] = field(default_factory=list)  # eq. 12 of every (epoch, step)
    critic_losses: list[float] = field(default_factory=list)  # eq. 13 of every optimizer step
    entropies: list[float] = field(default_factory=list)  # class entropy of every step, first epoch
    clipped: list[float] = field(default_factory=list)  # clipped share of every step, this epoch
    epoch_clip_fraction: list[float] = field(default_factory=list)  # per finished epoch

    def end_epoch(self, steps: int) -> None:
        self.epoch_clip_fraction.append(sum(self.clipped) / steps)
        self.clipped = []

    def summary(self, rnd: RoundInputs, approx_kl: float) -> dict:
        data = rnd.data
        return {
            "actor_loss": sum(self.actor_losses) / len(self.actor_losses),
            "critic_loss": sum(self.critic_losses) / len(self.critic_losses),
            "entropy": sum(self.entropies) / len(self.entropies),
            "approx_kl": approx_kl,  # per chosen row, old policy -> policy after the update
            "clip_fraction": self.epoch_clip_fraction[
                -1
            ],  # share of (step, ratio) terms outside [1 - clip, 1 + clip] in the last epoch
            "ppo_epochs_done": len(self.epoch_clip_fraction),
            "return": float(data["reward"].sum()),
            "advantage_mean": float(rnd.advantages.mean()),
            "value_mean": float(data["value"].mean()),
            "steps": len(rnd.buffer),
        }


class RaisePolicy:
    def __init__(self, static: StaticState, cfg: PolicyConfig):
        cfg.check()
        if cfg.seed is None:
            cfg = replace(cfg, seed=0)
        batch = static.num_classes * cfg.per_class
        if len(static) < batch:
            raise UserError(
                f"the pool has {len(static)} instructions, fewer than one batch of {batch} "
                f"({static.num_classes} classes x per_class {cfg.per_class})"
            )
        if (cfg.prior != "none") != bool(static.prior_dim):
            raise UserError(
                f"policy.prior is {cfg.prior} but the state {'has' if static.prior_dim else 'has no'} prior "
                "column: build it with the prior (training.episode.load_static(..., prior=...)) or set "
                "policy.prior accordingly"
            )
        self.static = static
        self.cfg = cfg
        with torch.random.fork_rng(devices=[]):  # seeded weights without touching the caller's RNG
            torch.manual_seed(cfg.seed)
            self.actor = AcquisitionMLP(static.fused_dim, cfg.hidden)
            if cfg.prior != "none":
                init_prior_actor(self.actor, static.prior_column, cfg.prior_scale)
            self.critic = Critic(cfg.hidden)
        self.actor_opt = torch.optim.AdamW(layer_groups(self.actor, cfg.actor_lr), weight_decay=cfg.weight_decay)
        self.critic_opt = torch.optim.AdamW(layer_groups(self.critic, cfg.critic_lr), weight_decay=cfg.weight_decay)
        self.updates = 0  # PPO updates done (seeds the minibatch order)
        self.perf_reference: float | None = None  # P(M_0): the networks read P_{t-1} - P(M_0), see _stage
        self._projection: torch.Tensor | None = None  # static part of the first layer for the current actor
        # The actor's weights change only by its optimizer step (`_actor_step`) or load_state_dict;
        # both call `_actor_changed`, the latter as a module hook (kept by a deepcopy, unlike an optimizer hook).
        self.actor.register_load_state_dict_post_hook(self._actor_changed)
        # advantage = step_baseline: mean reward of the k-th policy step over the episodes seen
        # so far (a random-batch reference episode, then every round), and how many there were.
        self.step_baseline: list[float] | None = None
        self.baseline_episodes = 0

    @property
    def batch_size(self) -> int:
        return self.static.num_classes * self.cfg.per_class

    # ---- acting -------------------------------------------------------------------------
    def _actor_changed(self, *_) -> None:
        """Drop the cached static projection: the actor's weights changed (optimizer step, load_state_dict)."""
        self._projection = None

    def _static_projection(self) -> torch.Tensor:
        if self._projection is None:
            with torch.no_grad():
                self._projection = self.actor.static_projection(self.static.x)
        return self._projection

    def _stage(self, perf_prev: float) -> float:
        """P_{t-1} as the networks read it: relative to P(M_0), the first value this policy sees.

        Every round restarts from the same M_0, so the first perf_prev ever passed is P(M_0).
        The absolute level of P belongs to the metric and validation set (a loss of 2.3 or an
        accuracy of 0.4), not to the training stage; a constant shift changes no function an
        MLP can represent, but keeps the tanh units out of saturation at lr 1e-1.
        """
        if self.perf_reference is None:
            self.perf_reference = float(perf_prev)
        return float(perf_prev) - self.perf_reference

    def scores(self, perf_prev: float, progress: float, counts: torch.Tensor) -> torch.Tensor:
        """F_theta of every instruction at this state, (N,)."""
        with torch.no_grad():
            return self.actor.score(self._static_projection(), self._stage(perf_prev), progress, counts)

    def act(
        self,
        perf_prev: float,
        progress: float,
        counts: torch.Tensor,
        explore: bool,
        generator: torch.Generator | None = None,
    ) -> Action:
        """Choose a batch: explore=True samples within each class (rollouts), False takes the top-b (use time)."""
        scores = self.scores(perf_prev, progress, counts)
        if not bool(torch.isfinite(scores).all()):
            bad = torch.nonzero(~torch.isfinite(scores)).flatten()
            raise UserError(
                f"the policy's scores of {len(bad)} instruction(s) are not finite (first: pool row "
                f"{int(bad[0])}, P_prev = {perf_prev}); the policy weights or the state diverged"
            )
        idx = select_per_class(
            scores,
            self.static.classes,
            self.static.num_classes,
            self.cfg.per_class,
            sample=explore,
            generator=generator,
        )
        item_log_prob = class_log_softmax(scores, self.static.classes, self.static.num_classes)[idx].double()
        return Action(
            indices=idx,
            scores=scores[idx],
            log_prob=float(item_log_prob.sum()),
            value=self.value(perf_prev, progress, counts),
            item_log_prob=item_log_prob,
        )

    def use(
        self, perf_prev: float, progress: float, counts: torch.Tensor, generator: torch.Generator | None = None
    ) -> Action:
        """Choose a batch at use time with the configured rule (`use_rule`): topk or sample."""
        return self.act(perf_prev, progress, counts, explore=self.cfg.use_rule == "sample", generator=generator)

    def observe_episode(self, rewards: list[float]) -> None:
        """Fold one episode's per-policy-step rewards into the step baseline (running mean per step)."""
        r = [float(x) for x in rewards]
        if self.step_baseline is None or len(self.step_baseline) != len(r):
            if self.step_baseline is not None:
                raise ValueError(f"episode has {len(r)} policy steps, the step baseline {len(self.step_baseline)}")
            self.step_baseline, self.baseline_episodes = [0.0] * len(r), 0
        self.baseline_episodes += 1
        w = 1.0 / self.baseline_episodes
        self.step_baseline = [b + w * (x - b) for b, x in zip(self.step_baseline, r)]

    def value(self, perf_prev: float, progress: float, counts: torch.Tensor) -> float:
        with torch.no_grad():
            return float(self.critic(critic_features(self._stage(perf_prev), progress, counts)))

    # ---- learning -----------------------------------------------------------------------
    def advantages(self, buffer: RolloutBuffer, last_value: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
        """(advantages, critic targets) of a round, (T,) float64 each.

        gae: eq. 7-9 with V_phi. step_baseline: A_t = sum_l gamma^l (R_{t+l} - b_{t+l}), where
        b_k is the mean reward of the k-th policy step over the episodes observed so far
        (`observe_episode`): R_t is dominated by *when* a step happens (early steps gain far
        more), and b removes that part. Before any episode was observed it falls back to gae.
        The critic targets are the GAE returns in both cases.
        """
        data = buffer.tensors()
        adv, returns = gae(data["reward"], data["value"], last_value, self.cfg.gamma, self.cfg.lam)
        if self.cfg.advantage == "step_baseline" and self.step_baseline is not None:
            if len(self.step_baseline) != len(buffer):
                raise ValueError(f"round has {len(buffer)} policy steps, the step baseline {len(self.step_baseline)}")
            centred = data["reward"] - torch.tensor(self.step_baseline, dtype=data["reward"].dtype)
            adv, _ = gae(centred, torch.zeros_like(centred), 0.0, self.cfg.gamma, 1.0)
        return adv, returns

    def update(self, buffer: RolloutBuffer, last_value: float = 0.0) -> dict:
        """PPO after a round (eq. 7-13): up to `ppo_epochs` passes over the buffer.

        Each pass shuffles the round's steps into `minibatches` groups (in order when 1);
        every group gets one actor step (`_actor_step`) and then one critic step
        (`_critic_step`). With target_kl > 0 the epochs stop once the mean approximate KL
        per chosen row (E[(r - 1) - log r], `_approx_kl`) exceeds it. The round's rewards
        are then folded into the step baseline (`observe_episode`, whatever the advantage
        form: it is also the record of the mean reward per step). Returns the statistics
        of `UpdateStats.summary`.
        """
        cfg = self.cfg
        rnd = self._round_inputs(buffer, last_value)
        steps = len(buffer)
        order_gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + self.updates)
        stats = UpdateStats()
        # A bar only when the update is long (large pools): about 1e8 row-passes and more.
        bar = progress_bar(
            total=cfg.ppo_epochs * steps,
            desc="PPO update",
            unit="step",
            leave=False,
            disable=cfg.ppo_epochs * steps * len(self.static) < 100_000_000,
        )
        for epoch in range(cfg.ppo_epochs):
            order = torch.randperm(steps, generator=order_gen) if cfg.minibatches > 1 else torch.arange(steps)
            for group in order.chunk(min(cfg.minibatches, steps)):
                self._actor_step(rnd, group.tolist(), stats, with_entropy=epoch == 0, bar=bar)
                stats.critic_losses.append(self._critic_step(rnd, group))
            stats.end_epoch(steps)
            if cfg.target_kl > 0 and self._approx_kl(rnd) > cfg.target_kl:
                break
        bar.close()
        summary = stats.summary(rnd, approx_kl=self._approx_kl(rnd))
        self.observe_episode(buffer.reward)
        self.updates += 1
        return summary

    def _round_inputs(self, buffer: RolloutBuffer, last_value: float) -> RoundInputs:
        """The buffer checked, and what every PPO step of this update reads from it."""
        steps = len(buffer)
        if steps == 0:
            raise ValueError("update() needs at least one transition in the buffer")
        data = buffer.tensors()
        if not torch.isfinite(data["reward"]).all():
            bad = int((~torch.isfinite(data["reward"])).nonzero()[0])
            raise UserError(
                f"reward of step {bad} is not a finite number ({buffer.reward[bad]}); check the validation metric"
            )
        if self.cfg.ratio == "per_item" and any(bool(torch.isnan(x).any()) for x in buffer.item_log_prob):
            raise ValueError(
                "ratio = per_item needs the per-row log-probabilities in the buffer (RolloutBuffer.add item_log_prob)"
            )
        adv, returns = self.advantages(buffer, last_value)
        actor_adv = adv
        if self.cfg.normalize_advantages and steps > 1:
            actor_adv = (adv - adv.mean()) / (adv.std() + 1e-8)
        n = len(self.static)
        stage = [self._stage(p) for p in buffer.perf_prev]
        critic_in = torch.stack(
            [critic_features(stage[t], buffer.progress[t], buffer.counts_before(t, n)) for t in range(steps)]
        )
        return RoundInputs(
            buffer=buffer,
            data=data,
            stage=stage,
            advantages=adv,
            actor_advantages=actor_adv,
            returns=returns,
            critic_in=critic_in,
        )

    def _chosen_log_prob(self, projection: torch.Tensor, rnd: RoundInputs, t: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(scores of every row, (B,) float64 class log-probability of step t's chosen rows) under the current
        actor at step t's state; `projection` is the actor's static projection (or a leaf standing in for it)."""
        static, buffer = self.static, rnd.buffer
        scores = self.actor.score(projection, rnd.stage[t], buffer.progress[t], buffer.counts_before(t, len(static)))
        return scores, class_log_softmax(scores, static.classes, static.num_classes)[buffer.chosen(t)].double()

    @staticmethod
    def _log_ratio(new: torch.Tensor, rnd: RoundInputs, t: int, per_item: bool) -> torch.Tensor:
        """log r of step t: per chosen row, (B,), or of the chosen set as eq. 11, (1,)."""
        if per_item:
            return new - rnd.buffer.item_log_prob[t]
        return (new.sum() - rnd.data["old_log_prob"][t]).reshape(1)

    def _actor_step(self, rnd: RoundInputs, group: list[int], stats: UpdateStats, with_entropy: bool, bar) -> None:
        """One AdamW step of the actor on the steps in `group` (eq. 12, the mean over the group).

        ratio = product is eq. 11 (one ratio per step, the product over the B rows);
        per_item gives every chosen row its own clipped ratio with the step's advantage, so
        one row far from its old probability does not clip the whole step. The gradient of
        the static projection is accumulated on a detached leaf and pushed through the
        first layer once, so a step's graph holds only its own (N x hidden) activations.
        Records each step's loss, clipped share (and entropy) in `stats`.
        """
        cfg = self.cfg
        per_item = cfg.ratio == "per_item"
        self.actor_opt.zero_grad(set_to_none=True)
        projection = self.actor.static_projection(self.static.x)
        leaf = projection.detach().requires_grad_()
        for t in group:
            scores, new = self._chosen_log_prob(leaf, rnd, t)
            log_ratio = self._log_ratio(new, rnd, t, per_item)  # eq. 11
            loss = actor_loss(log_ratio, rnd.actor_advantages[t].expand_as(log_ratio), cfg.clip)  # eq. 12
            (loss / len(group)).backward()
            stats.actor_losses.append(loss.item())
            with torch.no_grad():
                stats.clipped.append(float(((log_ratio.exp() - 1.0).abs() > cfg.clip).double().mean()))
                if with_entropy:
                    stats.entropies.append(class_entropy(scores, self.static.classes, self.static.num_classes).item())
            bar.update()
        projection.backward(leaf.grad)
        self.actor_opt.step()
        self._actor_changed()

    def _critic_step(self, rnd: RoundInputs, group: torch.Tensor) -> float:
        """One AdamW step of the critic on the steps in `group` (eq. 13); returns its loss."""
        self.critic_opt.zero_grad(set_to_none=True)
        loss = critic_loss(self.critic(rnd.critic_in[group]), rnd.returns[group].float())  # eq. 13
        loss.backward()
        self.critic_opt.step()
        return loss.item()

    def _approx_kl(self, rnd: RoundInputs) -> float:
        """Mean approximate KL E[(r - 1) - log r] per chosen row between the acting and the current actor.

        Per row where the buffer holds the rows' own log-probabilities; otherwise the step's
        set ratio is spread evenly over its rows.
        """
        total, count = 0.0, 0
        with torch.no_grad():
            projection = self._static_projection()
            for t in range(len(rnd.buffer)):
                _, new = self._chosen_log_prob(projection, rnd, t)
                per_row = not bool(torch.isnan(rnd.buffer.item_log_prob[t]).any())
                log_ratio = self._log_ratio(new, rnd, t, per_item=per_row)
                if not per_row:
                    log_ratio = log_ratio / new.numel()
                total += float(((log_ratio.exp() - 1.0) - log_ratio).sum())
                count += log_ratio.numel()
        return total / max(count, 1)

    # ---- persistence --------------------------------------------------------------------
    def save(self, out_dir: str | Path) -> None:
        """actor.safetensors, critic.safetensors and policy.json (config, normaliser, dimensions)."""
        out_dir = Path(out_dir)
        for name, module in (("actor", self.actor), ("critic", self.critic)):
            check_finite_weights(module.state_dict(), f"the {name} being saved to {out_dir}", after_update=self.updates)
        for name, module in (("actor", self.actor), ("critic", self.critic)):
            with atomic_path(out_dir / f"{name}.safetensors") as tmp:
                save_file({k: v.detach().contiguous() for k, v in module.state_dict().items()}, str(tmp))
        write_json_atomic(
            out_dir / "policy.json",
            {
                "format": POLICY_FORMAT,
                "config": asdict(self.cfg),
                "normalizer": self.static.normalizer.to_dict(),
                "dims": {
                    "fused_dim": self.static.fused_dim,
                    "sem_dim": self.static.sem_dim,
                    "prior_dim": self.static.prior_dim,
                    "num_classes": self.static.num_classes,
                    "critic_features": list(CRITIC_FEATURES),
                },
                "updates": self.updates,
                "perf_reference": self.perf_reference,
                "step_baseline": self.step_baseline,
                "baseline_episodes": self.baseline_episodes,
            },
        )

    @staticmethod
    def _read_meta(out_dir: str | Path) -> dict:
        path = Path(out_dir) / "policy.json"
        if not path.is_file():
            raise UserError(f"{Path(out_dir)}: no policy.json here; point at the policy folder of a train-policy run")
        try:
            meta = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise UserError(f"{path}: not valid JSON ({e})") from None
        if not isinstance(meta, dict):
            raise UserError(f"{path}: expected a JSON object")
        for key, kind in (("config", dict), ("normalizer", dict), ("dims", dict)):
            if not isinstance(meta.get(key), kind):
                raise UserError(f"{path}, field '{key}': missing or not an object; the policy folder is damaged")
        for key in ("sem_dim", "num_classes"):
            if not isinstance(meta["dims"].get(key), int):
                raise UserError(f"{path}, field 'dims.{key}': missing or not an integer; the policy folder is damaged")
        return meta

    @classmethod
    def read_normalizer(cls, out_dir: str | Path) -> Normalizer:
        """The normaliser a saved policy was trained with: build the `StaticState` with it."""
        return Normalizer.from_dict(cls._read_meta(out_dir)["normalizer"])

    @classmethod
    def read_config(cls, out_dir: str | Path) -> PolicyConfig:
        """The settings a saved policy was trained with (fields this version does not know are left out)."""
        known = {f.name for f in fields(PolicyConfig)}
        return PolicyConfig(**{k: v for k, v in cls._read_meta(out_dir)["config"].items() if k in known})

    @classmethod
    def load(cls, out_dir: str | Path, static: StaticState) -> "RaisePolicy":
        """A saved policy over `static`, which must be built with `read_normalizer(out_dir)`."""
        out_dir = Path(out_dir)
        meta = cls._read_meta(out_dir)
        dims = meta["dims"]
        path = out_dir / "policy.json"
        if dims["sem_dim"] != static.sem_dim:
            raise UserError(
                f"{path}: field 'dims.sem_dim' is {dims['sem_dim']} but the features have sem_dim {static.sem_dim}"
            )
        if int(dims.get("prior_dim", 0)) != static.prior_dim:
            raise UserError(
                f"{path}: field 'dims.prior_dim' is {dims.get('prior_dim', 0)} but the state has "
                f"{static.prior_dim} prior column(s); policy.prior is {meta['config'].get('prior', 'none')}"
            )
        if dims["num_classes"] != static.num_classes:
            raise UserError(
                f"{path}: field 'dims.num_classes' is {dims['num_classes']} but the features have "
                f"{static.num_classes} classes"
            )
        if static.normalizer.to_dict() != meta["normalizer"]:
            raise UserError(
                f"{path}: field 'normalizer' differs from the features given: this policy was trained on "
                "other features; pass the --features it was trained with (or, to resume train-policy, the "
                "same --features; a new --out starts afresh). In Python, build the state with "
                "RaisePolicy.read_normalizer(policy_dir)"
            )
        policy = cls(static, cls.read_config(out_dir))
        for name, module in (("actor", policy.actor), ("critic", policy.critic)):
            module.load_state_dict(_read_weights(out_dir / f"{name}.safetensors", module))
        policy.updates = int(meta.get("updates", 0))
        policy.perf_reference = meta.get("perf_reference")
        policy.step_baseline = meta.get("step_baseline")
        policy.baseline_episodes = int(meta.get("baseline_episodes", 0))
        return policy

    def training_state(self) -> dict:
        """Optimizer states and the update count, for an exact resume (`torch.save` it; RNG is the caller's)."""
        return {
            "actor_opt": self.actor_opt.state_dict(),
            "critic_opt": self.critic_opt.state_dict(),
            "updates": self.updates,
        }

    def load_training_state(self, d: dict) -> None:
        self.actor_opt.load_state_dict(d["actor_opt"])
        self.critic_opt.load_state_dict(d["critic_opt"])
        self.updates = int(d["updates"])


def check_finite_weights(state: dict, what: str, after_update: int | None = None) -> None:
    """Refuse NaN or infinite policy weights (a diverged update must not be saved or used)."""
    for key, value in state.items():
        if torch.is_tensor(value) and value.is_floating_point() and not bool(torch.isfinite(value).all()):
            bad = int((~torch.isfinite(value)).sum())
            when = f" after {after_update} PPO update(s)" if after_update is not None else ""
            raise UserError(
                f"{what}: weight '{key}' has {bad} non-finite value(s){when}; the policy diverged "
                "(lower policy.actor_lr / policy.critic_lr, or check the features for extreme values)"
            )


def _read_weights(path: Path, module: nn.Module) -> dict:
    """A safetensors file of `module`'s weights, refused (file named) when missing, unreadable,
    of other shapes or non-finite."""
    if not path.is_file():
        raise UserError(f"{path}: missing; a policy folder holds actor.safetensors, critic.safetensors and policy.json")
    try:
        state = load_file(str(path))
    except Exception as e:  # safetensors raises its own error type for a truncated or corrupt file
        raise UserError(f"{path}: not a readable safetensors file ({' '.join(str(e).split())[:200]})") from None
    expected = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in state.items()}
    if got != expected:
        diff = sorted(set(expected) ^ set(got)) or [k for k in expected if expected[k] != got[k]]
        raise UserError(
            f"{path}: weights do not fit this policy (first difference: '{diff[0]}' "
            f"{got.get(diff[0])} vs {expected.get(diff[0])}); was it saved by another version or for other features?"
        )
    check_finite_weights(state, str(path))
    return state
