"""`raise-select train-policy`: train the RAISE selection policy (Algorithm 2, K rounds of PPO)."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from .common import ConfigOption, handle_errors, set_option
from .fields import ConfigOptions

ORDER = 30

# Option help comes from the fields of TrainPolicyConfig (and its `policy` section).
OPTIONS = ConfigOptions("raise_select.training.train_policy:TrainPolicyConfig", per_class="policy.per_class")


def register(app: typer.Typer) -> None:
    @app.command("train-policy", cls=OPTIONS.command)
    @handle_errors
    def train_policy_cmd(
        pool: Optional[str] = typer.Option(None, "--pool"),
        features: Optional[str] = typer.Option(None, "--features"),
        model: Optional[str] = typer.Option(None, "--model"),
        val: Optional[str] = typer.Option(None, "--val"),
        data_dir: Optional[str] = typer.Option(None, "--data-dir"),
        val_size: Optional[int] = typer.Option(None, "--val-size"),
        state_val_size: Optional[int] = typer.Option(None, "--state-val-size"),
        out: Optional[Path] = typer.Option(
            None,
            "--out",
            help="Run folder; re-running with the same folder resumes after the last finished round, on the same "
            "settings and the same contents of the model, pool, features, validation set and prior file (a change is "
            "refused naming it); fewer --rounds than the folder holds are refused.",
        ),
        rounds: Optional[int] = typer.Option(None, "--rounds"),
        steps: Optional[int] = typer.Option(None, "--steps"),
        per_class: Optional[int] = typer.Option(None, "--per-class"),
        batch_size: Optional[int] = typer.Option(None, "--batch-size"),
        select_every: Optional[int] = typer.Option(None, "--select-every"),
        between: Optional[str] = typer.Option(None, "--between"),
        metric: Optional[str] = typer.Option(None, "--metric"),
        lr: Optional[float] = typer.Option(None, "--lr"),
        max_length: Optional[int] = typer.Option(None, "--max-length"),
        lora: Optional[bool] = typer.Option(None, "--lora/--no-lora"),
        report_to: Optional[str] = typer.Option(None, "--report-to"),
        tensorboard: Optional[bool] = typer.Option(None, "--tensorboard/--no-tensorboard"),
        seed: Optional[int] = typer.Option(None, "--seed"),
        config: Optional[Path] = ConfigOption,
        overrides: Optional[List[str]] = set_option("train_policy.rounds=2"),
    ) -> None:
        """Train the selection policy: K rounds of T steps from the same M_0, PPO after each round.

        Every setting, the policy's included, can go in a `train_policy:` section of the --config file or in --set: \
`--set train_policy.policy.gamma=0.9` (or, for this command alone, `--set policy.gamma=0.9`). \
docs/settings.md lists them all.
        """
        from ..config import resolve
        from ..features.table import check_same_encoding
        from ..io import check_output, lock_output
        from ..training.train_policy import TrainPolicyConfig, train_policy

        cfg = resolve(TrainPolicyConfig, "train_policy", config, overrides, OPTIONS.flags(locals()))
        if cfg.out:
            check_output(
                cfg.out, {"--pool": cfg.pool, "--features": cfg.features, "--model": cfg.model, "--val": cfg.val}
            )
            lock_output(cfg.out, "train-policy")
        if cfg.features:
            check_same_encoding(cfg.features, cfg.max_length, cfg.template)
        policy_dir = train_policy(cfg)
        typer.echo(f"policy saved to {policy_dir}; metrics, selections and plots in {cfg.out}")
