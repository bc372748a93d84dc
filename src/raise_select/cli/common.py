"""Pieces every command shares: clean errors, the config/override options, run-folder logs."""

from __future__ import annotations

import functools
import logging
import sys
from pathlib import Path
from typing import Callable, Optional

import typer

from ..errors import UserError

ConfigOption = typer.Option(
    None, "--config", "-c", help="YAML config; this command reads its own section (flags win over it)."
)
SetOption = typer.Option(
    None, "--set", help="Dotted override KEY=VALUE, repeatable, e.g. --set train_policy.rounds=2."
)

# Options shared, word for word, by the commands that train on a pool.
PoolOption = typer.Option(None, "--pool", help="Instruction pool: file, folder or `datasets` name.")
FeaturesOption = typer.Option(None, "--features", help="Featurize output folder of this pool.")
DataDirOption = typer.Option(None, "--data-dir", help="Folder of the named validation sets' original files.")
ValSizeOption = typer.Option(None, "--val-size", help="Use at most this many validation examples.")
BatchSizeOption = typer.Option(None, "--batch-size", help="B instead of --per-class (a multiple of the number of classes).")
SelectEveryOption = typer.Option(None, "--select-every", help="M: the policy chooses every M steps, random batches in between (default 1).")
MetricOption = typer.Option(None, "--metric", help="P(M): neg_loss, accuracy or module:function (default neg_loss).")
LrOption = typer.Option(None, "--lr", help="LLM learning rate (default 2e-5, cosine, no warm-up).")
MaxLengthOption = typer.Option(None, "--max-length", help="Tokens per example (default 512).")
TensorboardOption = typer.Option(None, "--tensorboard/--no-tensorboard", help="Also log to <out>/tensorboard.")


def handle_errors(fn: Callable) -> Callable:
    """Turn `UserError` into a one-line message and exit status 2 (no traceback)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UserError as e:
            typer.secho(f"error: {e}", fg=typer.colors.RED, err=True)
            raise typer.Exit(code=2) from None
        except KeyboardInterrupt:
            typer.secho("interrupted; finished work is kept and the next run resumes from it", err=True)
            raise typer.Exit(code=130) from None

    return wrapper


def setup_logging(run_dir: Optional[Path] = None, name: str = "run.log", verbose: bool = False) -> None:
    """Log to stderr and, when a run folder is given, to `run_dir/name`."""
    root = logging.getLogger()
    for h in list(root.handlers):
        if getattr(h, "_raise_select", False):
            root.removeHandler(h)
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S")
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if run_dir is not None:
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(Path(run_dir) / name, encoding="utf-8"))
    for h in handlers:
        h.setFormatter(fmt)
        h._raise_select = True  # type: ignore[attr-defined]
        root.addHandler(h)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    for noisy in ("httpx", "urllib3", "filelock", "datasets", "fsspec"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
