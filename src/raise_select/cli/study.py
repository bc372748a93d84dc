"""`raise-select study CONFIG`: every method at matched update steps, in the paper's Table 1 layout."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from ..errors import UserError
from .common import SetOption, handle_errors, setup_logging

ORDER = 70


def check_method_options(options: dict[str, dict], source: str) -> None:
    """Every method section's option names and values, before any cell runs: a typo must not
    cost a computed cell, nor let the study end with status 0."""
    from ..baselines.registry import make_baseline
    from ..config import from_dict
    from ..reports.study import RAISE
    from ..training.train_policy import TrainPolicyConfig

    for method, opts in options.items():
        if method == RAISE:
            from_dict(TrainPolicyConfig, opts, f"{source}: section '{method}'")
        else:
            make_baseline(method, opts, source)


def register(app: typer.Typer) -> None:
    @app.command("study")
    @handle_errors
    def study_cmd(
        config: Path = typer.Argument(
            ...,
            help="Study YAML (or a shipped config's name, e.g. study_alpaca_cpu): "
            "a `study:` section (pool, model, val, tasks, budget, methods, ...) "
            "plus one section per method for its options.",
        ),
        out: Optional[Path] = typer.Option(None, "--out", help="Study folder (default: the config's `out`)."),
        report_to: Optional[str] = typer.Option(
            None,
            "--report-to",
            help="Every cell's training scalars also to: none, tensorboard, wandb, all "
            "(one run per cell, in its folder).",
        ),
        overrides: Optional[List[str]] = SetOption,
    ) -> None:
        """Run (or resume) a comparison study; write study_table.{md,csv,json} and study_plot.png."""
        import time

        from ..config import resolve
        from ..io import check_output, lock_output
        from ..reports.study import StudyConfig, method_sections, run_study

        cfg = resolve(
            StudyConfig, "study", config, overrides, {"out": str(out) if out else None, "report_to": report_to}
        )
        if cfg.out:
            check_output(
                cfg.out,
                {"pool": cfg.pool, "model": cfg.model, "aux_model": cfg.aux_model, "val": cfg.val, "config": config},
            )
            lock_output(cfg.out, "study")
            setup_logging(Path(cfg.out), name="study.log")
        options = method_sections(config, overrides, cfg.methods)
        check_method_options(options, str(config))
        start = time.perf_counter()
        result = run_study(cfg, options)
        typer.echo(result["markdown"])
        typer.echo(
            f"cells computed: {', '.join(result['computed']) or 'none (all reused)'}; "
            f"{time.perf_counter() - start:.0f} s; table in {result['paths']['md']}"
        )
        if result["failed"]:  # the table holds the other rows, but the study is not complete
            name, why = next(iter(result["failed"].items()))
            raise UserError(
                f"{len(result['failed'])} cell(s) failed ({', '.join(result['failed'])}); first, {name}: {why}"
            )
