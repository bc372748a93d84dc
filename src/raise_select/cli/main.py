"""Entry point of `raise-select`. Each stage module in this package defines
`register(app)` and an integer `ORDER` (its place in `--help`)."""

from __future__ import annotations

import importlib
import os
import pkgutil
import sys

import typer

from .. import __version__
from ..progress import stderr_is_terminal
from .common import COMMAND_LINE_ERRORS, DEBUG_ENV

app = typer.Typer(
    name="raise-select",
    help="Choose the instruction data an LLM is fine-tuned on, step by step (RAISE), "
    "and compare with static and online selection baselines at matched budgets.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(__version__)
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
    debug: bool = typer.Option(
        False, "--debug", help="Print the full traceback of an unexpected error (or set RAISE_SELECT_DEBUG=1)."
    ),
) -> None:
    if debug:
        os.environ[DEBUG_ENV] = "1"


def _register_stages() -> None:
    pkg = importlib.import_module(__package__)
    mods = []
    for info in pkgutil.iter_modules(pkg.__path__):
        if info.name in ("main", "common"):
            continue
        mod = importlib.import_module(f"{__package__}.{info.name}")
        if hasattr(mod, "register"):
            mods.append(mod)
    for mod in sorted(mods, key=lambda m: getattr(m, "ORDER", 100)):
        mod.register(app)


_register_stages()


def main() -> None:
    """Run the app; a malformed command line gets one line and exit status 2, like any user error."""
    if not stderr_is_terminal():  # libraries' own bars would print every refresh as a new line
        for var in ("TQDM_DISABLE", "HF_HUB_DISABLE_PROGRESS_BARS", "HF_DATASETS_DISABLE_PROGRESS_BARS"):
            os.environ.setdefault(var, "1")
    try:
        code = app(standalone_mode=False)
    except COMMAND_LINE_ERRORS as e:
        if type(e).__name__ == "NoArgsIsHelpError":  # a bare command: its help
            e.show()  # type: ignore[attr-defined]
            sys.exit(0)
        ctx = getattr(e, "ctx", None)
        path = ctx.command_path if ctx is not None else "raise-select"
        typer.secho(
            f"error: {path}: {' '.join(e.format_message().split())} (see `{path} --help`)",
            fg=typer.colors.RED,
            err=True,
        )
        sys.exit(getattr(e, "exit_code", 2))
    except typer.Abort:
        typer.secho("aborted", err=True)
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
