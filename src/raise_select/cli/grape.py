"""`raise-select grape`: one response per instruction, the one the target model finds most likely."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from .common import ConfigOption, MaxLengthOption, SetOption, handle_errors, setup_logging

ORDER = 55


def register(app: typer.Typer) -> None:
    @app.command("grape")
    @handle_errors
    def grape_cmd(
        pool: Optional[str] = typer.Option(None, "--pool", help="Pool with several responses per instruction: file or folder."),
        format: Optional[str] = typer.Option(None, "--format", help="Pool format: alpaca, sharegpt or messages (default: detected)."),
        field: Optional[str] = typer.Option(
            None, "--field",
            help="List field holding the candidate responses (default: `output` when it is a list, else `responses` or "
                 "`completions`; without one, rows sharing a prompt are the candidates)."),
        model: Optional[str] = typer.Option(None, "--model", help="Target model that will be fine-tuned: hub id or folder."),
        out: Optional[str] = typer.Option(None, "--out", help="Output pool: .jsonl, .json, .parquet or .csv (Alpaca rows only)."),
        template: Optional[str] = typer.Option(None, "--template", help="Prompt template: alpaca (default) or chat."),
        max_length: Optional[int] = MaxLengthOption,
        batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Candidates scored per forward pass (default 8)."),
        limit: Optional[int] = typer.Option(None, "--limit", help="Read only the first N rows."),
        device: Optional[str] = typer.Option(None, "--device", help="Torch device (cpu, cuda); default: cuda when available."),
        config: Optional[Path] = ConfigOption,
        overrides: Optional[List[str]] = SetOption,
    ) -> None:
        """GRAPE: keep, per instruction, the candidate response with the highest mean token
        log-probability under the target model, and write a normal pool (with grape_score,
        grape_candidates and grape_choice per row) that any selector or `--pool` reads."""
        from ..baselines.grape import GrapeConfig, run_grape
        from ..config import resolve

        flags = {"pool": pool, "format": format, "field": field, "model": model, "out": out, "template": template,
                 "max_length": max_length, "batch_size": batch_size, "limit": limit, "device": device}
        cfg = resolve(GrapeConfig, "grape", config, overrides, flags)
        setup_logging()
        summary = run_grape(cfg)
        typer.echo(f"grape: {summary['instructions']} instructions ({summary['multi']} with several of "
                   f"{summary['candidates']} candidates; {summary['scored']} scored now) -> {summary['out']}")
