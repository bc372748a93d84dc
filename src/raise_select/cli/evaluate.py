"""`raise-select evaluate`: lm-evaluation-harness on a model folder or hub id."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from .common import ConfigOption, handle_errors, set_option, setup_logging
from .fields import ConfigOptions

ORDER = 60

# Option help comes from the fields of the config class.
OPTIONS = ConfigOptions("raise_select.evaluation.evaluate:EvaluateConfig")


def register(app: typer.Typer) -> None:
    @app.command("evaluate", cls=OPTIONS.command)
    @handle_errors
    def evaluate_cmd(
        model: Optional[str] = typer.Option(None, "--model"),
        tasks: Optional[str] = typer.Option(
            None,
            "--tasks",
            help="Comma-separated tasks: mmlu, arc_challenge, commonsenseqa, gsm8k, mathqa, mmlu_college_mathematics "
            "(default: mmlu,arc_challenge,commonsenseqa).",
        ),
        data_dir: Optional[Path] = typer.Option(
            None,
            "--data-dir",
            help="Folder with the original task files (e.g. ../shared/data); omit to use lm-eval's hub tasks.",
        ),
        num_fewshot: Optional[int] = typer.Option(None, "--num-fewshot"),
        limit: Optional[int] = typer.Option(None, "--limit"),
        batch_size: Optional[int] = typer.Option(None, "--batch-size"),
        device: Optional[str] = typer.Option(None, "--device"),
        max_length: Optional[int] = typer.Option(None, "--max-length"),
        metric: Optional[str] = typer.Option(None, "--metric"),
        split: Optional[str] = typer.Option(None, "--split"),
        out: Optional[Path] = typer.Option(None, "--out"),
        config: Optional[Path] = ConfigOption,
        overrides: Optional[List[str]] = set_option("evaluate.limit=50"),
    ) -> None:
        """Score a model on the named tasks; write per-task metrics (JSON) and a Markdown table
        (with --metric choice_ce, main, ...: per-item figures on each task's held-out split)."""
        from ..config import resolve
        from ..evaluation.evaluate import EvaluateConfig, evaluate, results_markdown
        from ..io import check_output, lock_output

        flags = {
            "model": model,
            "tasks": tasks,
            "data_dir": str(data_dir) if data_dir else None,
            "num_fewshot": num_fewshot,
            "limit": limit,
            "batch_size": batch_size,
            "device": device,
            "max_length": max_length,
            "metric": metric,
            "split": split,
            "out": str(out) if out else None,
        }
        cfg = resolve(EvaluateConfig, "evaluate", config, overrides, flags)
        check_output(cfg.out, {"--model": cfg.model})
        lock_output(cfg.out, "evaluate")
        setup_logging(Path(cfg.out), name="evaluate.log")
        scores = evaluate(cfg)
        typer.echo(results_markdown(cfg.model, scores))
        typer.echo(f"wrote {Path(cfg.out) / 'metrics.json'} and {Path(cfg.out) / 'results.md'}")
        if cfg.metric != "harness":
            typer.echo(f"per-item values in {Path(cfg.out) / 'items'}")
