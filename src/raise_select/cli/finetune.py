"""`raise-select finetune`: fine-tune a target LLM with a trained RAISE policy choosing every batch."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from .common import BatchSizeOption, ConfigOption, DataDirOption, FeaturesOption, LrOption, MaxLengthOption, MetricOption, PoolOption, SelectEveryOption, SetOption, TensorboardOption, ValSizeOption, handle_errors

ORDER = 40


def register(app: typer.Typer) -> None:
    @app.command("finetune")
    @handle_errors
    def finetune_cmd(
        policy: Optional[str] = typer.Option(None, "--policy", help="Trained policy folder (<train-policy run>/policy)."),
        pool: Optional[str] = PoolOption,
        features: Optional[str] = FeaturesOption,
        model: Optional[str] = typer.Option(None, "--model", help="Target LLM: hub id or local folder."),
        val: Optional[str] = typer.Option(None, "--val", help="Validation set giving P_{t-1} of the stage state: named set or pool file/folder."),
        data_dir: Optional[str] = DataDirOption,
        val_size: Optional[int] = ValSizeOption,
        out: Optional[Path] = typer.Option(None, "--out", help="Output folder: model/, selections.jsonl, metrics.jsonl, run.log."),
        steps: Optional[int] = typer.Option(None, "--steps", help="T: LLM updates (default 100)."),
        per_class: Optional[int] = typer.Option(None, "--per-class", help="b: items per class and step (default the policy's)."),
        batch_size: Optional[int] = BatchSizeOption,
        select_every: Optional[int] = SelectEveryOption,
        metric: Optional[str] = MetricOption,
        lr: Optional[float] = LrOption,
        max_length: Optional[int] = MaxLengthOption,
        lora: Optional[bool] = typer.Option(None, "--lora/--no-lora", help="Train and save a LoRA adapter (peft) instead of all weights."),
        tensorboard: Optional[bool] = TensorboardOption,
        seed: Optional[int] = typer.Option(None, "--seed", help="Seed of the LLM and of the random steps (default 0)."),
        config: Optional[Path] = ConfigOption,
        overrides: Optional[List[str]] = SetOption,
    ) -> None:
        """Fine-tune with a trained policy (top-b per class at every policy step); save the model and the selection log."""
        flags = dict(locals())  # every option above, by its config field name
        del flags["config"], flags["overrides"]
        flags["out"] = str(out) if out is not None else None
        from ..config import resolve
        from ..training.finetune import FinetuneConfig, finetune

        cfg = resolve(FinetuneConfig, "finetune", config, overrides, flags)
        model_dir = finetune(cfg)
        typer.echo(f"model saved to {model_dir}; selection log {Path(cfg.out) / 'selections.jsonl'}")
