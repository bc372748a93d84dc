"""The LLM side of RAISE: the update loop, the validation reward, Algorithm 2 (policy
training) and fine-tuning with a trained policy."""

from .episode import EpisodeConfig
from .finetune import FinetuneConfig, finetune
from .loop import LMConfig, LMTrainer, encode_example, train_on_schedule
from .reward import Validator, final_answer
from .train_policy import TrainPolicyConfig, train_policy

__all__ = [
    "EpisodeConfig",
    "FinetuneConfig",
    "LMConfig",
    "LMTrainer",
    "TrainPolicyConfig",
    "Validator",
    "encode_example",
    "final_answer",
    "finetune",
    "train_on_schedule",
    "train_policy",
]
