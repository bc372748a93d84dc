"""The RAISE selection policy: state fusion (eq. 2-6), the acquisition function and critic,
Algorithm 1, and PPO with GAE and the per-class ratio (eq. 7-13). Pure torch, no LLM."""

from .acquisition import CRITIC_FEATURES, AcquisitionMLP, Critic, critic_features
from .agent import Action, PolicyConfig, RaisePolicy
from .buffer import RolloutBuffer
from .ppo import actor_loss, class_entropy, class_kl, class_log_prob, class_log_softmax, critic_loss, gae
from .selection import select_per_class
from .state import Normalizer, StaticState, fuse_state

__all__ = [
    "Action",
    "AcquisitionMLP",
    "CRITIC_FEATURES",
    "Critic",
    "Normalizer",
    "PolicyConfig",
    "RaisePolicy",
    "RolloutBuffer",
    "StaticState",
    "actor_loss",
    "class_entropy",
    "class_kl",
    "class_log_prob",
    "class_log_softmax",
    "critic_features",
    "critic_loss",
    "fuse_state",
    "gae",
    "select_per_class",
]
