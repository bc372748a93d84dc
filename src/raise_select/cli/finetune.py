"""`raise-select finetune`: fine-tune a target LLM with a trained RAISE policy choosing every batch."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from .common import ConfigOption, handle_errors, set_option
from .fields import ConfigOptions

ORDER = 40

# Option help comes from the fields of FinetuneConfig.
OPTIONS = ConfigOptions("raise_select.training.finetune:FinetuneConfig")


def register(app: typer.Typer) -> None:
    @app.command("finetune", cls=OPTIONS.command)
    @handle_errors
    def finetune_cmd(
        policy: Optional[str] = typer.Option(None, "--policy"),
        pool: Optional[str] = typer.Option(None, "--pool"),
        features: Optional[str] = typer.Option(None, "--features"),
        model: Optional[str] = typer.Option(None, "--model"),
        val: Optional[str] = typer.Option(None, "--val"),
        data_dir: Optional[str] = typer.Option(None, "--data-dir"),
        val_size: Optional[int] = typer.Option(None, "--val-size"),
        state_val_size: Optional[int] = typer.Option(None, "--state-val-size"),
        out: Optional[Path] = typer.Option(
            None, "--out", help="Output folder: model/, selections.jsonl, metrics.jsonl, run.log."
        ),
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
        use_rule: Optional[str] = typer.Option(None, "--use-rule"),
        compare_random: Optional[bool] = typer.Option(None, "--compare-random/--no-compare-random"),
        config: Optional[Path] = ConfigOption,
        overrides: Optional[List[str]] = set_option("finetune.lr=1e-5"),
    ) -> None:
        """Fine-tune with a trained policy choosing every policy step's batch; save the model and the selection log."""
        from ..config import resolve
        from ..features.table import check_same_encoding
        from ..io import check_output, lock_output
        from ..training.finetune import FinetuneConfig, finetune

        cfg = resolve(FinetuneConfig, "finetune", config, overrides, OPTIONS.flags(locals()))
        if cfg.out:
            check_output(
                cfg.out,
                {
                    "--policy": cfg.policy,
                    "--pool": cfg.pool,
                    "--features": cfg.features,
                    "--model": cfg.model,
                    "--val": cfg.val,
                },
            )
            lock_output(cfg.out, "finetune")
        if cfg.features:
            check_same_encoding(cfg.features, cfg.max_length, cfg.template)
        model_dir = finetune(cfg)
        typer.echo(f"model saved to {model_dir}; selection log {Path(cfg.out) / 'selections.jsonl'}")
