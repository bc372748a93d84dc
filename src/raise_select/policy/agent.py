"""RaisePolicy: the actor F_theta, the critic V_phi, their optimizers and the static state.

Use in a round (Algorithm 2): `act` at every policy step (explore=True samples within each
class), `RolloutBuffer.add` with the reward, then `update` after the round. At use time
`act(..., explore=False)` gives the top-b of each class (Algorithm 1).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from ..errors import UserError
from .acquisition import AcquisitionMLP, Critic, critic_features
from .checkpoint import POLICY_FORMAT, PolicyCheckpoint, check_finite_weights
from .config import ADVANTAGES, CREDIT, PAPER, RATIOS, USE_RULES, PolicyConfig
from .learner import PPOLearner, RoundInputs, UpdateStats, layer_groups
from .ppo import class_log_softmax
from .prior import init_prior_actor
from .selection import select_per_class
from .state import StaticState

__all__ = [
    "ADVANTAGES",
    "Action",
    "CREDIT",
    "PAPER",
    "POLICY_FORMAT",
    "PolicyConfig",
    "RATIOS",
    "RaisePolicy",
    "RoundInputs",
    "USE_RULES",
    "UpdateStats",
    "check_finite_weights",
    "layer_groups",
]


@dataclass
class Action:
    indices: torch.Tensor  # (B,) int64 rows of the pool
    scores: torch.Tensor  # (B,) acquisition scores of the chosen rows
    log_prob: float  # class_log_prob under the acting policy (sum of item_log_prob)
    value: float  # critic V(S_t)
    item_log_prob: torch.Tensor | None = None  # (B,) class log-probability of each chosen row (eq. 10)


class RaisePolicy(PPOLearner, PolicyCheckpoint):
    """F_theta and V_phi over a pool's static state: acting here, PPO in `PPOLearner` (policy/learner.py),
    save / load in `PolicyCheckpoint` (policy/checkpoint.py)."""

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
        # anchor_kl > 0: a frozen copy of the actor as it entered the first update (`set_anchor`)
        self.anchor: AcquisitionMLP | None = None
        self._anchor_projection: torch.Tensor | None = None

    @property
    def batch_size(self) -> int:
        return self.static.num_classes * self.cfg.per_class

    # ---- acting -------------------------------------------------------------------------
    def _actor_changed(self, *_) -> None:
        """Drop the cached static projection: the actor's weights changed (optimizer step, load_state_dict)."""
        self._projection = None

    def set_anchor(self, state: dict | None = None) -> None:
        """Freeze the actor as it is now (or the weights `state`) as the anchor of `anchor_kl`."""
        with torch.random.fork_rng(devices=[]):  # building the module draws weights: leave the caller's RNG as it was
            anchor = AcquisitionMLP(self.static.fused_dim, self.cfg.hidden)
        anchor.load_state_dict(self.actor.state_dict() if state is None else state)
        self.anchor = anchor.requires_grad_(False)
        with torch.no_grad():
            self._anchor_projection = anchor.static_projection(self.static.x)

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
        max_repeats: int = 0,
    ) -> Action:
        """Choose a batch: explore=True samples within each class (rollouts), False takes the top-b (use time).
        max_repeats > 0: rows already chosen that many times (`counts`) are left out while a batch of rows is
        not (the log-probabilities stay those of the unmasked class softmax)."""
        scores = self.scores(perf_prev, progress, counts)
        if not bool(torch.isfinite(scores).all()):
            bad = torch.nonzero(~torch.isfinite(scores)).flatten()
            raise UserError(
                f"the policy's scores of {len(bad)} instruction(s) are not finite (first: pool row "
                f"{int(bad[0])}, P_prev = {perf_prev}); the policy weights or the state diverged"
            )
        keys = scores
        if max_repeats > 0:
            spent = counts.to(scores.device) >= max_repeats
            if int((~spent).sum()) >= self.batch_size:
                keys = scores.masked_fill(spent, -torch.inf)
        idx = select_per_class(
            keys,
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

    def rollout(
        self, perf_prev: float, progress: float, counts: torch.Tensor, generator: torch.Generator | None = None
    ) -> Action:
        """Choose a batch in a policy-training rollout: sampled within each class, no row more than
        `rollout_max_repeats` times in the episode (0: no cap, the paper's form)."""
        return self.act(
            perf_prev, progress, counts, explore=True, generator=generator, max_repeats=self.cfg.rollout_max_repeats
        )

    def use(
        self, perf_prev: float, progress: float, counts: torch.Tensor, generator: torch.Generator | None = None
    ) -> Action:
        """Choose a batch at use time with the configured rule (`use_rule`): topk or sample, no row more than
        `use_max_repeats` times (0: no cap)."""
        return self.act(
            perf_prev,
            progress,
            counts,
            explore=self.cfg.use_rule == "sample",
            generator=generator,
            max_repeats=self.cfg.use_max_repeats,
        )

    def value(self, perf_prev: float, progress: float, counts: torch.Tensor) -> float:
        with torch.no_grad():
            return float(self.critic(critic_features(self._stage(perf_prev), progress, counts)))
