"""`raise-select study CONFIG`: every method at matched update steps, in the paper's Table 1 layout."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from typer.core import TyperCommand

from ..errors import UserError
from .common import handle_errors, set_option, setup_logging

ORDER = 70


class StudyCommand(TyperCommand):
    """`study --help` lists the methods from the registry (read when the help is shown)."""

    def format_help(self, ctx, formatter):
        from ..experiments.methods import METHODS

        base = (self.help or "").split("\n\nMethods:")[0]
        names = ", ".join(f"{n} ({m.label})" for n, m in METHODS.items())
        self.help = f"{base}\n\nMethods: {names}."
        return super().format_help(ctx, formatter)


def check_method_options(options: dict[str, dict], source: str) -> None:
    """Every method section's option names and values, before any cell runs: a typo must not
    cost a computed cell, nor let the study end with status 0. RAISE's presets take
    train-policy settings; the other sections are a selection method's options."""
    from ..baselines.registry import make_baseline
    from ..config import from_dict
    from ..experiments.methods import METHODS
    from ..experiments.study import check_placeholders
    from ..training.train_policy import TrainPolicyConfig

    check_placeholders(options, source)
    for method, opts in options.items():
        if METHODS.lookup(method, f"{source}: section").runs == "raise":
            from_dict(TrainPolicyConfig, opts, f"{source}: section '{method}'")
        else:
            make_baseline(METHODS[method].runs_as, opts, source)


def register(app: typer.Typer) -> None:
    @app.command("study", cls=StudyCommand)
    @handle_errors
    def study_cmd(
        config_arg: Optional[Path] = typer.Argument(
            None,
            metavar="CONFIG",
            help="Study YAML (or a shipped config's name, e.g. study_alpaca_cpu, study_real_smollm2): "
            "a `study:` section (pool, model, targets or val, tasks, budget, methods, ...) "
            "plus one section per method for its options. Also --config.",
        ),
        config_opt: Optional[Path] = typer.Option(None, "--config", "-c", help="The study YAML, as CONFIG."),
        out: Optional[Path] = typer.Option(None, "--out", help="Study folder (default: the config's `out`)."),
        report_to: Optional[str] = typer.Option(
            None,
            "--report-to",
            help="Every cell's training scalars also to: none, tensorboard, wandb, all "
            "(one run per cell, in its folder).",
        ),
        report: bool = typer.Option(
            False,
            "--report",
            help="Write the tables from the finished cells only: nothing is selected, trained or evaluated.",
        ),
        overrides: Optional[List[str]] = set_option(
            "study.budget=0.05 or, for a method's options, --set deita.threshold=0.85"
        ),
    ) -> None:
        """Run (or resume) a comparison study; write its tables (study_table.*, study_gains.*) and plot."""
        import time

        from ..config import resolve
        from ..experiments.study import StudyConfig, method_sections, run_study
        from ..io import check_output, lock_output

        if config_arg is not None and config_opt is not None and config_arg != config_opt:
            raise UserError(f"two configs given ({config_arg} and --config {config_opt}); give one")
        config = config_arg or config_opt
        if config is None:
            raise UserError("study needs a config: raise-select study CONFIG (a YAML file or a shipped config's name)")
        flags = {"out": str(out) if out else None, "report_to": report_to, "report_only": True if report else None}
        cfg = resolve(StudyConfig, "study", config, overrides, flags)
        if cfg.out:
            check_output(
                cfg.out,
                {"pool": cfg.pool, "model": cfg.model, "aux_model": cfg.aux_model, "val": cfg.val, "config": config},
            )
            if not cfg.report_only:
                lock_output(cfg.out, "study")
            setup_logging(Path(cfg.out), name="study.log")
        options = method_sections(config, overrides, cfg.methods)
        check_method_options(options, str(config))
        start = time.perf_counter()
        result = run_study(cfg, options)
        typer.echo(result["markdown"])
        typer.echo(
            f"cells computed: {', '.join(result['computed']) or 'none (all reused)'}; "
            f"{time.perf_counter() - start:.0f} s; tables in {cfg.out}"
        )
        if result["failed"]:  # the table holds the other rows, but the study is not complete
            name, why = next(iter(result["failed"].items()))
            raise UserError(
                f"{len(result['failed'])} cell(s) failed ({', '.join(result['failed'])}); first, {name}: {why}"
            )
