"""The settings of the selection policy and its PPO learner (`PolicyConfig`), and the paper's literal form of
the settings the package departs from (`PAPER`), and the dense per-row credit preset (`CREDIT`)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

from ..config import check_fields
from .prior import PRIORS

# The paper's literal form of the settings we depart from (everything else already is).
PAPER = {
    "gamma": 0.99,
    "ratio": "product",
    "advantage": "gae",
    "target_kl": 0.0,
    "use_rule": "topk",
    "credit": "batch",
}
# Dense per-row credit, the best form measured on the generated testbeds (docs/policy.md, "Dense
# per-row credit"; `configs/policy_credit.yaml` holds the same settings): each policy step labels
# its rows and 8 unchosen ones with lr <g_val, g_i> (g_val from 8 validation rows); F_theta learns
# their order and each chosen row gets its own credit as its PPO advantage.
CREDIT = {
    "credit": "row",
    "credit_sample": 8,
    "credit_val": 8,
    "row_loss": "ranking",
    "row_loss_weight": 1.0,
    "ratio": "per_item",
    "row_advantage": True,
}
RATIOS = ("product", "per_item")
ADVANTAGES = ("gae", "step_baseline")
USE_RULES = ("topk", "sample")
CREDITS = ("batch", "row")
CREDIT_VAL_NORMS = ("mean", "unit")
CREDIT_ROW_NORMS = ("none", "unit")
ROW_LOSSES = ("none", "regression", "ranking")
ROUND_UPDATES = ("ppo", "refit")
ANCHOR_DIRECTIONS = ("forward", "reverse")
REFIT_STATES = ("first", "own")


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

    # Dense per-row credit (docs/policy.md, "Dense per-row credit"); the paper's form is credit batch.
    credit: str = field(
        default="batch",
        metadata={
            "help": "batch [section 3.2: one scalar reward per policy step] or row: also a first-order credit label "
            "lr <g_val, g_i> for every row trained on and for credit_sample rows not chosen (training/credit.py)"
        },
    )
    credit_sample: int = field(
        default=32,
        metadata={"help": "with credit row: rows not chosen, drawn uniformly from the pool, labelled per policy step"},
    )
    credit_val: int = field(
        default=0,
        metadata={
            "help": "with credit row: validation rows drawn per policy step for g_val (0: the whole validation set)"
        },
    )
    credit_val_norm: str = field(
        default="mean",
        metadata={
            "help": "g_val of the credit labels (label_budget and credit row): mean [the mean validation objective's "
            "gradient] or unit [the mean of each validation item's gradient scaled to unit norm, as LESS averages "
            "cosines over validation examples: no item outweighs another]"
        },
    )
    credit_row_norm: str = field(
        default="none",
        metadata={
            "help": "each row's credit label (label_budget and credit row): none [lr <g_val, g_i>] or unit "
            "[lr <g_val, g_i> / |g_i|: the row's direction only, as LESS normalises its rows' gradients; a short "
            "row's large gradient no longer makes its label large whichever way it points]"
        },
    )
    row_loss: str = field(
        default="ranking",
        metadata={
            "help": "with credit row: the auxiliary loss on F_theta's scores of a step's labelled rows, added to "
            "eq. 12: none, regression (centred scores against the step's standardised credit) or ranking "
            "(pairwise logistic over pairs of unequal credit)"
        },
    )
    row_loss_weight: float = field(
        default=1.0, metadata={"help": "with credit row: the weight of row_loss against the PPO loss of a step"}
    )
    ppo_weight: float = field(
        default=1.0,
        metadata={
            "help": "the weight of the PPO actor loss (eq. 12) in a step's actor loss; 0 with credit row: the actor "
            "learns from the row loss on the labels of the states its rollouts visit only (no policy gradient)"
        },
    )
    use_max_repeats: int = field(
        default=0,
        metadata={
            "help": "at use time (finetune, select), a row is chosen at most this many times in the run, as a "
            "static selector's rows are trained once per epoch; rollouts are not capped. 0: no cap (the paper's form)"
        },
    )
    rollout_max_repeats: int = field(
        default=0,
        metadata={
            "help": "in a policy-training rollout, a row is chosen at most this many times in the episode (as "
            "use_max_repeats at use time); the log-probabilities stay those of the uncapped softmax. 0: no cap "
            "(the paper's form)"
        },
    )
    # Amortized labels (docs/policy.md, "Labels before round 1"); 0 is the paper's form.
    label_budget: int = field(
        default=0,
        metadata={
            "help": "rows of the pool, drawn uniformly, labelled before round 1 with their credit at M_0 "
            "(lr <g_val, g_i>, training/credit.py); F_theta is fitted to their order (row_loss) so it scores every "
            "row of the pool from its features alone. 0: off"
        },
    )
    label_epochs: int = field(
        default=200, metadata={"help": "with label_budget: passes of the row loss over the labelled rows"}
    )
    label_lr: float = field(
        default=0.0,
        metadata={
            "help": "with label_budget: the actor's AdamW learning rate during the fit (scaled per layer as "
            "actor_lr); the rounds after it train at actor_lr. 0: actor_lr for both"
        },
    )
    label_holdout: float = field(
        default=0.2,
        metadata={
            "help": "with label_budget: share of the labelled rows left out of the fit; their Spearman correlation "
            "with the fitted scores is the fit's learning curve (labels.json). 0: fit on all"
        },
    )
    round_update: str = field(
        default="ppo",
        metadata={
            "help": "what each round's episode teaches the actor: ppo [Algorithm 2: eq. 12-13 on the round's buffer] "
            "or refit (credit row): no PPO; F_theta is fitted again, refit_epochs passes of the row loss at the "
            "first step's state at the fit's rate, to every label so far: the label fit's rows and, per policy "
            "step, the rows it sampled without choosing them (the chosen rows' credit reflects their use)"
        },
    )
    refit_state: str = field(
        default="first",
        metadata={
            "help": "with round_update refit: the state each step's labels are fitted at: first (the first step's, "
            "as the label fit) or own (the stage, progress and counts of the step that measured them)"
        },
    )
    refit_epochs: int = field(
        default=50, metadata={"help": "with round_update refit: passes over all labels so far after each round"}
    )
    anchor_kl: float = field(
        default=0.0,
        metadata={
            "help": "with round_update ppo: weight of a KL divergence between pi, the class softmax of F_theta's "
            "scores at a step's state, and pi_anchor, that of the actor as it entered the first update (after "
            "the label fit or the prior), added to every actor step's loss (anchor_direction), so the rounds "
            "move the policy only as far as their signal outweighs it. 0: off (the paper's form)"
        },
    )
    anchor_direction: str = field(
        default="reverse",
        metadata={
            "help": "with anchor_kl: reverse, KL(pi || pi_anchor) (as in KL-regularised RL fine-tuning; "
            "collapsing onto the anchor's likeliest rows costs little), or forward, KL(pi_anchor || pi) "
            "(mass-covering: keeps mass on every row the anchor would sample, so the policy cannot collapse "
            "onto a few)"
        },
    )
    row_advantage: bool = field(
        default=False,
        metadata={
            "help": "with credit row and ratio per_item: each chosen row's advantage is its own credit, standardised "
            "over the round's chosen rows, instead of the step's (the first-order reward is additive over rows)"
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
            (self.credit in CREDITS, "credit", f"must be one of {', '.join(CREDITS)}"),
            (self.credit_sample >= 0, "credit_sample", "must be >= 0"),
            (self.credit_val >= 0, "credit_val", "must be >= 0 (0: the whole validation set)"),
            (
                self.credit_val_norm in CREDIT_VAL_NORMS,
                "credit_val_norm",
                f"must be one of {', '.join(CREDIT_VAL_NORMS)}",
            ),
            (
                self.credit_row_norm in CREDIT_ROW_NORMS,
                "credit_row_norm",
                f"must be one of {', '.join(CREDIT_ROW_NORMS)}",
            ),
            (self.row_loss in ROW_LOSSES, "row_loss", f"must be one of {', '.join(ROW_LOSSES)}"),
            (
                math.isfinite(self.row_loss_weight) and self.row_loss_weight >= 0.0,
                "row_loss_weight",
                "must be a finite number >= 0",
            ),
            (math.isfinite(self.ppo_weight) and self.ppo_weight >= 0.0, "ppo_weight", "must be a finite number >= 0"),
            (
                self.ppo_weight > 0.0
                or (self.credit == "row" and self.row_loss != "none" and self.row_loss_weight > 0),
                "ppo_weight",
                "0 needs credit row with a row_loss and row_loss_weight > 0 (else the actor learns from nothing)",
            ),
            (self.use_max_repeats >= 0, "use_max_repeats", "must be >= 0 (0: no cap)"),
            (self.rollout_max_repeats >= 0, "rollout_max_repeats", "must be >= 0 (0: no cap)"),
            (self.label_budget >= 0, "label_budget", "must be >= 0 (0: off)"),
            (self.label_epochs >= 1, "label_epochs", "must be >= 1"),
            (0.0 <= self.label_holdout < 1.0, "label_holdout", "must lie in [0, 1)"),
            (
                math.isfinite(self.label_lr) and self.label_lr >= 0.0,
                "label_lr",
                "must be a finite number >= 0 (0: actor_lr)",
            ),
            (
                self.label_budget == 0 or self.row_loss != "none",
                "row_loss",
                "must be regression or ranking with label_budget > 0 (the loss F_theta is fitted to the labels by)",
            ),
            (self.round_update in ROUND_UPDATES, "round_update", f"must be one of {', '.join(ROUND_UPDATES)}"),
            (
                self.round_update == "ppo" or (self.credit == "row" and self.row_loss != "none"),
                "round_update",
                "refit needs credit row and a row_loss (the labels it fits, and the loss it fits them by)",
            ),
            (self.refit_epochs >= 1, "refit_epochs", "must be >= 1"),
            (math.isfinite(self.anchor_kl) and self.anchor_kl >= 0.0, "anchor_kl", "must be a finite number >= 0"),
            (
                self.anchor_kl == 0.0 or self.round_update == "ppo",
                "anchor_kl",
                "applies to round_update ppo only (refit has no actor step to add it to)",
            ),
            (
                self.anchor_direction in ANCHOR_DIRECTIONS,
                "anchor_direction",
                f"must be one of {', '.join(ANCHOR_DIRECTIONS)}",
            ),
            (self.refit_state in REFIT_STATES, "refit_state", f"must be one of {', '.join(REFIT_STATES)}"),
            (
                not self.row_advantage or (self.credit == "row" and self.ratio == "per_item"),
                "row_advantage",
                "needs credit row and ratio per_item (one clipped ratio per chosen row)",
            ),
        ]
        check_fields(self, rules, "policy")
