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
