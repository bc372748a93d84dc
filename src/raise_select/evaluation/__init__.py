"""Evaluation with lm-evaluation-harness on the project's task definitions (`tasks/`), and
per-item held-out figures (`loss.heldout_values`): the choice cross-entropy and accuracy of
multiple-choice items scored as lm-eval's `multiple_choice` does (`choices`), the response
loss (docs/metrics.md)."""

from .evaluate import EvaluateConfig, available_tasks, evaluate, read_scores

__all__ = ["EvaluateConfig", "available_tasks", "evaluate", "read_scores"]
