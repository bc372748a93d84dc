"""`raise-select study CONFIG`: every method at matched update steps, in the paper's Table 1 layout."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from .common import SetOption, handle_errors, setup_logging

ORDER = 70


def register(app: typer.Typer) -> None:
    @app.command("study")
    @handle_errors
    def study_cmd(
        config: Path = typer.Argument(..., help="Study YAML (or a shipped config's name, e.g. study_alpaca_cpu): a `study:` section (pool, model, val, tasks, budget, methods, ...) "
                                      "plus one section per method for its options."),
        out: Optional[Path] = typer.Option(None, "--out", help="Study folder (default: the config's `out`)."),
        overrides: Optional[List[str]] = SetOption,
    ) -> None:
        """Run (or resume) a comparison study; write study_table.{md,csv,json} and study_plot.png."""
        import time

        from ..config import resolve
        from ..io import check_output
        from ..reports.study import StudyConfig, method_sections, run_study

        cfg = resolve(StudyConfig, "study", config, overrides, {"out": str(out) if out else None})
        if cfg.out:
            check_output(cfg.out, {"pool": cfg.pool, "model": cfg.model, "aux_model": cfg.aux_model, "val": cfg.val,
                                   "config": config})
            setup_logging(Path(cfg.out), name="study.log")
        start = time.perf_counter()
        result = run_study(cfg, method_sections(config, overrides, cfg.methods))
        typer.echo(result["markdown"])
        typer.echo(f"cells computed: {', '.join(result['computed']) or 'none (all reused)'}; "
                   f"{time.perf_counter() - start:.0f} s; table in {result['paths']['md']}")
