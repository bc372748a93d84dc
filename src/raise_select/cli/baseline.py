"""`raise-select baseline`: a static selection method at a budget, optionally trained at matched steps."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from .common import ConfigOption, handle_errors, set_option, setup_logging
from .fields import ConfigOptions

ORDER = 50

# Option help comes from the fields of the config class.
OPTIONS = ConfigOptions("raise_select.baselines.run:BaselineConfig")


def methods_help() -> str:
    """`--method`'s help, from the method registry (read when --help is shown)."""
    from ..experiments.methods import method_names

    static, online = method_names("baseline", online=False), method_names("baseline", online=True)
    return f"Method: {', '.join(static)} (static); {', '.join(online)} (online, chosen while training)."


class BaselineCommand(OPTIONS.command):
    def format_help(self, ctx, formatter):
        for p in self.get_params(ctx):
            if p.name == "method":
                p.help = methods_help()
        return super().format_help(ctx, formatter)


def register(app: typer.Typer) -> None:
    @app.command("baseline", cls=BaselineCommand)
    @handle_errors
    def baseline_cmd(
        method: Optional[str] = typer.Option(None, "--method", help="Method (listed from the registry)."),
        pool: Optional[str] = typer.Option(None, "--pool"),
        format: Optional[str] = typer.Option(None, "--format"),
        limit: Optional[int] = typer.Option(None, "--limit"),
        features: Optional[str] = typer.Option(None, "--features"),
        model: Optional[str] = typer.Option(None, "--model"),
        val: Optional[str] = typer.Option(None, "--val"),
        data_dir: Optional[str] = typer.Option(None, "--data-dir"),
        val_size: Optional[int] = typer.Option(None, "--val-size"),
        budget: Optional[float] = typer.Option(None, "--budget"),
        batch_size: Optional[int] = typer.Option(None, "--batch-size"),
        epochs: Optional[int] = typer.Option(None, "--epochs"),
        steps: Optional[int] = typer.Option(None, "--steps"),
        out: Optional[Path] = typer.Option(
            None, "--out", help="Output folder: selection.json, cache/, model/, baseline.log."
        ),
        train: Optional[bool] = typer.Option(None, "--train/--no-train"),
        lr: Optional[float] = typer.Option(None, "--lr"),
        template: Optional[str] = typer.Option(None, "--template"),
        max_length: Optional[int] = typer.Option(None, "--max-length"),
        lora: Optional[bool] = typer.Option(None, "--lora/--no-lora"),
        seed: Optional[int] = typer.Option(None, "--seed"),
        device: Optional[str] = typer.Option(None, "--device"),
        export: Optional[str] = typer.Option(None, "--export"),
        export_format: Optional[str] = typer.Option(None, "--export-format"),
        report_to: Optional[str] = typer.Option(None, "--report-to"),
        config: Optional[Path] = ConfigOption,
        overrides: Optional[List[str]] = set_option("baseline.budget=0.05"),
    ) -> None:
        """Select with a baseline method and write <out>/selection.json (indices, ids, scores, info).

        Method options go in the method's own section: `--set deita.threshold=0.85`,
        `--set alpagasus.backend=local --set alpagasus.judge_model=./judge`, or a `less:`
        section of the --config file. The HTTP judge reads RAISE_SELECT_JUDGE_BASE_URL and
        RAISE_SELECT_JUDGE_API_KEY. The online methods greats and rho choose every batch
        from a candidate set with the model being trained (`--set greats.candidates=4`), so
        they always train and save <out>/model; their selection.json is the batches chosen.
        """
        flags = dict(locals())
        del flags["config"], flags["overrides"]
        flags["out"] = str(out) if out is not None else None
        from ..baselines.run import BaselineConfig, method_options, run_baseline
        from ..config import resolve
        from ..io import check_output, lock_output
        from ..training.publish import check_target
        from ..training.reporting import check_report_folders, parse_report_to

        cfg = resolve(BaselineConfig, "baseline", config, overrides, flags)
        if cfg.out:
            check_output(
                cfg.out, {"--pool": cfg.pool, "--features": cfg.features, "--model": cfg.model, "--val": cfg.val}
            )
        if cfg.export:
            check_output(
                cfg.export,
                {
                    "--pool": cfg.pool,
                    "--features": cfg.features,
                    "--model": cfg.model,
                    "--val": cfg.val,
                    "--out": cfg.out,
                },
                flag="--export",
                read_by_name=("--features", "--out"),
            )  # the baseline's folder is read by file name
            check_target(cfg.export, "--export")  # a folder of other files: refused before the selection runs
        if cfg.out:
            check_report_folders(cfg.out, parse_report_to(cfg.report_to))
            lock_output(cfg.out, "baseline")
        setup_logging(Path(cfg.out) if cfg.out else None, name="baseline.log")
        record = run_baseline(cfg, method_options(cfg.method, config, overrides))
        trained = (
            f"; model saved to {Path(cfg.out) / 'model'}"
            if cfg.train or record.get("info", {}).get("model_dir")
            else ""
        )
        typer.echo(
            f"{cfg.method}: {len(record['indices'])} rows selected ({record['steps']} steps of {record['batch_size']}) "
            f"-> {Path(cfg.out) / 'selection.json'}{trained}" + (f"; published to {cfg.export}" if cfg.export else "")
        )
