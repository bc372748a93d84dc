"""The PPO learner of `RaisePolicy` (eq. 7-13): advantages, the actor and critic steps of an update after a round,
and the step baseline. A mixin: it reads the policy's `static`, `cfg`, `actor`, `critic`, their optimizers and
`_stage` (policy/agent.py)."""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn

from ..errors import UserError
from ..progress import progress_bar
from .acquisition import critic_features
from .buffer import RolloutBuffer
from .credit import row_advantages, row_loss, spearman
from .ppo import actor_loss, class_entropy, class_kl, class_log_softmax, critic_loss, gae


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
    # credit row: per step its labelled rows and their credit, and with row_advantage the chosen rows' advantages
    labels: list[tuple[torch.Tensor, torch.Tensor]] | None = None
    row_advantages: list[torch.Tensor] | None = None
    # anchor_kl: the anchor's scores of every row at every step's state (fixed through the update's epochs)
    anchor_scores: list[torch.Tensor] | None = None


@dataclass
class UpdateStats:
    """What one PPO update records on its way, and the summary `RaisePolicy.update` returns."""

    actor_losses: list[float] = field(default_factory=list)  # eq. 12 of every (epoch, step)
    critic_losses: list[float] = field(default_factory=list)  # eq. 13 of every optimizer step
    entropies: list[float] = field(default_factory=list)  # class entropy of every step, first epoch
    clipped: list[float] = field(default_factory=list)  # clipped share of every step, this epoch
    epoch_clip_fraction: list[float] = field(default_factory=list)  # per finished epoch
    row_losses: list[float] = field(default_factory=list)  # credit row: row_loss of every (epoch, step)
    anchor_kls: list[float] = field(default_factory=list)  # anchor_kl: KL to the anchor of every (epoch, step)

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
            **({"row_loss": sum(self.row_losses) / len(self.row_losses)} if self.row_losses else {}),
            **({"anchor_kl": self.anchor_kls[-1]} if self.anchor_kls else {}),  # at the last step
        }


class PPOLearner:
    """PPO after a round (`update`) and the step baseline (`observe_episode`) of a `RaisePolicy`."""

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
        if cfg.anchor_kl > 0 and self.anchor is None:  # the actor that acted in the first round
            self.set_anchor()
        rnd = self._round_inputs(buffer, last_value)
        steps = len(buffer)
        # The learning curve of dense credit: this round's labels, not yet learnt from, against the scores.
        held_out = self.credit_spearman(rnd) if rnd.labels is not None else None
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
        if held_out is not None:
            summary["credit_spearman"] = held_out
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
        labels = row_adv = None
        if self.cfg.credit == "row":
            if not buffer.has_labels():
                raise ValueError("credit = row needs credit labels on every step (RolloutBuffer.add_labels)")
            labels = list(zip(buffer.label_rows, buffer.label_credit))
            if self.cfg.row_advantage:  # the chosen rows come first among a step's labelled rows
                row_adv = row_advantages([c[: len(buffer.chosen(t))] for t, (_, c) in enumerate(labels)])
        anchor_scores = None
        if self.cfg.anchor_kl > 0 and self.anchor is not None:
            with torch.no_grad():
                anchor_scores = [
                    self.anchor.score(self._anchor_projection, stage[t], buffer.progress[t], buffer.counts_before(t, n))
                    for t in range(steps)
                ]
        return RoundInputs(
            anchor_scores=anchor_scores,
            buffer=buffer,
            data=data,
            stage=stage,
            advantages=adv,
            actor_advantages=actor_adv,
            returns=returns,
            critic_in=critic_in,
            labels=labels,
            row_advantages=row_adv,
        )

    def credit_spearman(self, rnd: RoundInputs) -> float:
        """Mean over the round's steps of the Spearman correlation between the current actor's scores at the
        step's state and the credit of the rows the step labelled without choosing them (nan when none)."""
        values = []
        with torch.no_grad():
            projection = self._static_projection()
            for t, (rows, credit) in enumerate(rnd.labels):
                b = len(rnd.buffer.chosen(t))
                scores, _ = self._chosen_log_prob(projection, rnd, t)
                rho = spearman(scores[rows[b:]], credit[b:])
                if not math.isnan(rho):
                    values.append(rho)
        return sum(values) / len(values) if values else math.nan

    def fit_labels(
        self, rows: torch.Tensor, credit: torch.Tensor, perf_prev: float, epochs: int, generator: torch.Generator
    ) -> list[float]:
        """Fit F_theta to credit labels measured on one model (`policy.label_budget`): `epochs` passes of the
        row loss (`cfg.row_loss`) over the labelled `rows`, in shuffled minibatches of 64 rows, at the state
        of a first step (P = `perf_prev`, progress 0, nothing selected yet), the actor's AdamW at `label_lr`
        (0: `actor_lr`); its rates are `actor_lr`'s again afterwards. Returns each pass's mean loss."""
        kind = self.cfg.row_loss
        if kind == "none":
            raise UserError("fitting labels needs policy.row_loss regression or ranking, not none")
        counts = torch.zeros(len(self.static), dtype=torch.int64)
        stage = self._stage(perf_prev)
        losses = []
        with self._fit_rate():
            for _ in range(epochs):
                order = torch.randperm(len(rows), generator=generator)
                total = 0.0
                for group in order.split(64):
                    if len(group) < 2:
                        continue
                    self.actor_opt.zero_grad(set_to_none=True)
                    scores = self.actor.score(self.actor.static_projection(self.static.x), stage, 0.0, counts)
                    loss = row_loss(kind, scores[rows[group]], credit[group])
                    loss.backward()
                    self.actor_opt.step()
                    total += loss.item() * len(group)
                self._actor_changed()
                losses.append(total / len(rows))
        return losses

    @contextmanager
    def _fit_rate(self):
        """The actor's AdamW at `label_lr` (0: `actor_lr`) inside the block, at `actor_lr` again after it."""
        rates = [group["lr"] for group in self.actor_opt.param_groups]
        scale = self.cfg.label_lr / self.cfg.actor_lr if self.cfg.label_lr > 0 else 1.0
        for group in self.actor_opt.param_groups:
            group["lr"] *= scale
        try:
            yield
        finally:
            for group, lr in zip(self.actor_opt.param_groups, rates):
                group["lr"] = lr

    def fit_groups(
        self,
        groups: list[tuple],
        perf_prev: float,
        epochs: int,
        generator: torch.Generator,
        per_step: int = 16,
    ) -> list[float]:
        """Fit F_theta to groups of credit labels, each measured on its own model (`round_update: refit`):
        `epochs` passes; each pass shuffles the groups, and each optimizer step (at the fit's rate) takes the
        mean of the row loss of up to `per_step` groups, each group's rows compared only among themselves.
        A group (rows, credit) is scored at the state of a first step (P = `perf_prev`, progress 0, nothing
        selected); a group (rows, credit, stage, progress, counts) at that state of its own. Groups of fewer
        than 2 rows are skipped. Returns each pass's mean loss over groups."""
        kind = self.cfg.row_loss
        if kind == "none":
            raise UserError("fitting labels needs policy.row_loss regression or ranking, not none")
        groups = [g for g in groups if len(g[0]) >= 2]
        if not groups:
            return []
        first = (self._stage(perf_prev), 0.0, torch.zeros(len(self.static), dtype=torch.int64))
        losses = []
        with self._fit_rate():
            for _ in range(epochs):
                order = torch.randperm(len(groups), generator=generator)
                total = 0.0
                for chunk in order.split(per_step):
                    self.actor_opt.zero_grad(set_to_none=True)
                    projection = self.actor.static_projection(self.static.x)
                    scored: dict[int, torch.Tensor] = {}  # one pass over the pool per distinct state
                    terms = []
                    for g in chunk.tolist():
                        state = tuple(groups[g][2:]) or first
                        key = g if len(groups[g]) > 2 else -1
                        if key not in scored:
                            scored[key] = self.actor.score(projection, *state)
                        terms.append(row_loss(kind, scored[key][groups[g][0]], groups[g][1]))
                    loss = torch.stack(terms).mean()
                    loss.backward()
                    self.actor_opt.step()
                    total += loss.item() * len(chunk)
                self._actor_changed()
                losses.append(total / len(groups))
        return losses

    def refit(
        self,
        buffer: RolloutBuffer,
        groups: list[tuple],
        perf_prev: float,
        generator: torch.Generator,
    ) -> dict:
        """`round_update: refit` after a round: the held-out Spearman of the round's sampled labels (before they
        are learnt from, as `update` measures it), then each step's sampled (not chosen) rows and their credit
        appended to `groups` (in place; with `refit_state: own` with the step's stage, progress and counts)
        and F_theta fitted to all of them (`fit_groups`, `refit_epochs` passes). The critic is not trained.
        The round's rewards go into the step baseline as after `update`."""
        rnd = self._round_inputs(buffer, 0.0)
        held_out = self.credit_spearman(rnd)
        n, own = len(self.static), self.cfg.refit_state == "own"
        for t, (rows, credit) in enumerate(rnd.labels):
            b = len(buffer.chosen(t))
            state = (rnd.stage[t], buffer.progress[t], buffer.counts_before(t, n)) if own else ()
            groups.append((rows[b:].clone(), credit[b:].clone(), *state))
        losses = self.fit_groups(groups, perf_prev, self.cfg.refit_epochs, generator)
        self.observe_episode(buffer.reward)
        self.updates += 1
        return {
            "credit_spearman": held_out,
            "refit_groups": len(groups),
            "refit_loss_first": losses[0] if losses else math.nan,
            "refit_loss_last": losses[-1] if losses else math.nan,
            "return": float(rnd.data["reward"].sum()),
            "steps": len(buffer),
        }

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
        per_item gives every chosen row its own clipped ratio with the step's advantage (with
        row_advantage, its own credit's), so one row far from its old probability does not clip
        the whole step. With credit row and a row_loss, row_loss_weight x the step's row loss on
        its labelled rows' scores is added to ppo_weight x the step's eq. 12 loss, and with anchor_kl
        anchor_kl x the KL between the class softmax of the actor and of the anchor at the step's state
        (KL(pi_anchor || pi) forward, KL(pi || pi_anchor) reverse). The gradient of
        the static projection is accumulated on a detached leaf and pushed through the first
        layer once, so a step's graph holds only its own (N x hidden) activations.
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
            adv = rnd.actor_advantages[t].expand_as(log_ratio) if rnd.row_advantages is None else rnd.row_advantages[t]
            loss = actor_loss(log_ratio, adv, cfg.clip)  # eq. 12
            total = cfg.ppo_weight * loss
            if rnd.labels is not None and cfg.row_loss != "none":
                rows, credit = rnd.labels[t]
                extra = row_loss(cfg.row_loss, scores[rows], credit)
                stats.row_losses.append(extra.item())
                total = total + cfg.row_loss_weight * extra
            if rnd.anchor_scores is not None:
                anchor = rnd.anchor_scores[t]
                pair = (anchor, scores) if cfg.anchor_direction == "forward" else (scores, anchor)
                kl = class_kl(*pair, self.static.classes, self.static.num_classes)
                stats.anchor_kls.append(kl.item())
                total = total + cfg.anchor_kl * kl
            (total / len(group)).backward()
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
