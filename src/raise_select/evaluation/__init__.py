"""Evaluation with lm-evaluation-harness on the project's task definitions (`tasks/`)."""

from .evaluate import EvaluateConfig, available_tasks, evaluate, read_scores

__all__ = ["EvaluateConfig", "available_tasks", "evaluate", "read_scores"]
