"""`raise-select grape`: one response per instruction, the one the target model finds most likely."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from .common import ConfigOption, handle_errors, set_option, setup_logging
from .fields import ConfigOptions

ORDER = 55

# Option help comes from the fields of the config class.
OPTIONS = ConfigOptions("raise_select.baselines.grape:GrapeConfig")


def register(app: typer.Typer) -> None:
    @app.command("grape", cls=OPTIONS.command)
    @handle_errors
    def grape_cmd(
        pool: Optional[str] = typer.Option(None, "--pool"),
        format: Optional[str] = typer.Option(None, "--format"),
        field: Optional[str] = typer.Option(None, "--field"),
        model: Optional[str] = typer.Option(None, "--model"),
        out: Optional[str] = typer.Option(None, "--out"),
        template: Optional[str] = typer.Option(None, "--template"),
        max_length: Optional[int] = typer.Option(None, "--max-length"),
        batch_size: Optional[int] = typer.Option(None, "--batch-size"),
        limit: Optional[int] = typer.Option(None, "--limit"),
        device: Optional[str] = typer.Option(None, "--device"),
        config: Optional[Path] = ConfigOption,
        overrides: Optional[List[str]] = set_option("grape.batch_size=4"),
    ) -> None:
        """GRAPE: keep, per instruction, the candidate response with the highest mean token
        log-probability under the target model, and write a normal pool (with grape_score,
        grape_candidates and grape_choice per row) that any selector or `--pool` reads."""
        from ..baselines.grape import GrapeConfig, run_grape
        from ..config import resolve
        from ..io import check_output

        cfg = resolve(GrapeConfig, "grape", config, overrides, OPTIONS.flags(locals()))
        if cfg.out:
            check_output(cfg.out, {"--pool": cfg.pool, "--model": cfg.model}, kind="file")
        setup_logging()
        summary = run_grape(cfg)
        typer.echo(
            f"grape: {summary['instructions']} instructions ({summary['multi']} with several of "
            f"{summary['candidates']} candidates; {summary['scored']} scored now"
            + (f"; {summary['blank']} blank candidates skipped" if summary["blank"] else "")
            + f") -> {summary['out']}"
        )
