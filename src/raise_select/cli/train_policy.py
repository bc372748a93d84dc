"""`raise-select train-policy`: train the RAISE selection policy (Algorithm 2, K rounds of PPO)."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from .common import BatchSizeOption, ConfigOption, DataDirOption, FeaturesOption, LrOption, MaxLengthOption, MetricOption, PoolOption, SelectEveryOption, SetOption, TensorboardOption, ValSizeOption, handle_errors

ORDER = 30


def register(app: typer.Typer) -> None:
    @app.command("train-policy")
    @handle_errors
    def train_policy_cmd(
        pool: Optional[str] = PoolOption,
        features: Optional[str] = FeaturesOption,
        model: Optional[str] = typer.Option(None, "--model", help="Target LLM M_0: hub id or local folder."),
        val: Optional[str] = typer.Option(None, "--val", help="Validation set: a named set (gsm8k, mmlu, ...) or a pool file/folder."),
        data_dir: Optional[str] = DataDirOption,
        val_size: Optional[int] = ValSizeOption,
        out: Optional[Path] = typer.Option(None, "--out", help="Run folder; re-running with the same folder resumes after the last finished round."),
        rounds: Optional[int] = typer.Option(None, "--rounds", help="K: policy-training rounds (default 20)."),
        steps: Optional[int] = typer.Option(None, "--steps", help="T: LLM updates per round (default 100)."),
        per_class: Optional[int] = typer.Option(None, "--per-class", help="b: items per class and step; batch B = classes x b (default 1)."),
        batch_size: Optional[int] = BatchSizeOption,
        select_every: Optional[int] = SelectEveryOption,
        metric: Optional[str] = MetricOption,
        lr: Optional[float] = LrOption,
        max_length: Optional[int] = MaxLengthOption,
        lora: Optional[bool] = typer.Option(None, "--lora/--no-lora", help="Train a LoRA adapter (peft) instead of all weights."),
        tensorboard: Optional[bool] = TensorboardOption,
        seed: Optional[int] = typer.Option(None, "--seed", help="Seed of the LLM, the policy and the rollouts (default 0)."),
        config: Optional[Path] = ConfigOption,
        overrides: Optional[List[str]] = SetOption,
    ) -> None:
        """Train the selection policy: K rounds of T steps from the same M_0, PPO after each round."""
        flags = dict(locals())  # every option above, by its config field name
        del flags["config"], flags["overrides"]
        flags["out"] = str(out) if out is not None else None
        from ..config import resolve
        from ..training.train_policy import TrainPolicyConfig, train_policy

        cfg = resolve(TrainPolicyConfig, "train_policy", config, overrides, flags)
        policy_dir = train_policy(cfg)
        typer.echo(f"policy saved to {policy_dir}; metrics, selections and plots in {cfg.out}")
