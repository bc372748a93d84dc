"""`raise-select finetune`: fine-tune a target LLM with a trained RAISE policy choosing every batch."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from .common import ConfigOption, SetOption, handle_errors

ORDER = 40


def register(app: typer.Typer) -> None:
    @app.command("finetune")
    @handle_errors
    def finetune_cmd(
        policy: Optional[str] = typer.Option(None, "--policy", help="Trained policy folder (<train-policy run>/policy)."),
        pool: Optional[str] = typer.Option(None, "--pool", help="Instruction pool: file, folder or `datasets` name."),
        features: Optional[str] = typer.Option(None, "--features", help="Featurize output folder of this pool."),
        model: Optional[str] = typer.Option(None, "--model", help="Target LLM: hub id or local folder."),
        val: Optional[str] = typer.Option(None, "--val", help="Validation set giving P_{t-1} of the stage state: named set or pool file/folder."),
        data_dir: Optional[str] = typer.Option(None, "--data-dir", help="Folder of the named validation sets' original files."),
        val_size: Optional[int] = typer.Option(None, "--val-size", help="Use at most this many validation examples."),
        out: Optional[Path] = typer.Option(None, "--out", help="Output folder: model/, selections.jsonl, metrics.jsonl, run.log."),
        steps: Optional[int] = typer.Option(None, "--steps", help="T: LLM updates (default 100)."),
        per_class: Optional[int] = typer.Option(None, "--per-class", help="b: items per class and step (default the policy's)."),
        batch_size: Optional[int] = typer.Option(None, "--batch-size", help="B instead of --per-class (a multiple of the number of classes)."),
        select_every: Optional[int] = typer.Option(None, "--select-every", help="M: the policy chooses every M steps, random batches in between (default 1)."),
        metric: Optional[str] = typer.Option(None, "--metric", help="P(M): neg_loss, accuracy or module:function (default neg_loss)."),
        lr: Optional[float] = typer.Option(None, "--lr", help="LLM learning rate (default 2e-5, cosine, no warm-up)."),
        max_length: Optional[int] = typer.Option(None, "--max-length", help="Tokens per example (default 512)."),
        lora: Optional[bool] = typer.Option(None, "--lora/--no-lora", help="Train and save a LoRA adapter (peft) instead of all weights."),
        tensorboard: Optional[bool] = typer.Option(None, "--tensorboard/--no-tensorboard", help="Also log to <out>/tensorboard."),
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
