"""Pieces every command shares: clean errors, the config/override options, run-folder logs."""

from __future__ import annotations

import errno
import functools
import logging
import os
import tempfile
import traceback
from typing import Callable

import typer

from ..errors import UserError
from ..logs import setup_logging  # noqa: F401  (the commands import it from here)

ConfigOption = typer.Option(
    None, "--config", "-c", help="YAML config; this command reads its own section (flags win over it)."
)


def set_option(example: str):
    """The `--set` option of one command; `example` is a true override of that command (its own
    section, `SECTION.KEY=VALUE`), so each command's help shows one it accepts."""
    return typer.Option(None, "--set", help=f"Dotted override SECTION.KEY=VALUE, repeatable, e.g. --set {example}.")


# Commands with a config class take their options' help from its fields (cli/fields.py);
# this one is for a command without one (grape).
MaxLengthOption = typer.Option(None, "--max-length", help="Tokens per example (default 512).")


def _command_line_errors() -> tuple[type[BaseException], ...]:
    """The exception types of a malformed command line: typer's own (newer typer bundles
    its click) and click's (older typer)."""
    types: list[type[BaseException]] = [t for t in (getattr(typer, "TyperException", None),) if t is not None]
    try:
        import click

        types.append(click.exceptions.ClickException)
    except ImportError:
        pass
    return tuple(types)


COMMAND_LINE_ERRORS = _command_line_errors()
DEBUG_ENV = "RAISE_SELECT_DEBUG"  # set (or `raise-select --debug`) to see the traceback of an unexpected error


def debug_enabled() -> bool:
    return os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no", "off")


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def write_traceback(exc: BaseException) -> str:
    """Write `exc`'s traceback to the run folder's log (the file handlers `setup_logging`
    installed) or, without one, to a new file in the temp folder; return where it went."""
    record = logging.LogRecord(
        "raise_select",
        logging.ERROR,
        __file__,
        0,
        "unexpected error (a bug)",
        None,
        (type(exc), exc, exc.__traceback__),
    )
    files = [
        h
        for h in logging.getLogger().handlers
        if isinstance(h, logging.FileHandler) and getattr(h, "_raise_select", False)
    ]
    written = []
    for h in files:
        try:
            h.handle(record)
            h.flush()
            written.append(h.baseFilename)
        except Exception:  # a full disk must not hide the error itself
            continue
    if written:
        return ", ".join(written)
    fd, path = tempfile.mkstemp(prefix="raise-select-traceback-", suffix=".log")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write("".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))
    return path


def check_environment() -> None:
    """The environment variables the commands read, refused in one line before any work."""
    from ..progress import check_interval

    check_interval()


def _end(refused: bool) -> None:
    """After a command: release its output locks; after a refusal, also drop the run-folder
    logs it opened and the output folders it created that hold nothing else."""
    from ..io import end_of_command

    ours = [
        h
        for h in logging.getLogger().handlers
        if isinstance(h, logging.FileHandler) and getattr(h, "_raise_select", False)
    ]
    if refused:
        for h in ours:
            logging.getLogger().removeHandler(h)
            h.close()
    end_of_command(refused, keep=tuple(os.path.basename(h.baseFilename) for h in ours))


def handle_errors(fn: Callable) -> Callable:
    """One line on stderr for every failure, never a traceback (unless asked for):
    `UserError` (and a refused permission) exit 2; any other exception is a bug: one line
    saying so and where the traceback was written, exit 1."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        refused = False  # a user error: the outputs it created empty are removed again
        _end(False)
        try:
            check_environment()
            return fn(*args, **kwargs)
        except UserError as e:
            refused = True
            typer.secho(f"error: {_one_line(e)}", fg=typer.colors.RED, err=True)
            raise typer.Exit(code=2) from None
        except PermissionError as e:
            refused = True
            typer.secho(
                f"error: {e.filename or ''}: permission denied ({e.strerror or e}); choose a path you can write to",
                fg=typer.colors.RED,
                err=True,
            )
            raise typer.Exit(code=2) from None
        except KeyboardInterrupt:
            refused = True
            typer.secho("interrupted; finished work is kept and the next run resumes from it", err=True)
            raise typer.Exit(code=130) from None
        except (typer.Exit, typer.Abort, *COMMAND_LINE_ERRORS):
            raise
        except Exception as e:
            if isinstance(e, OSError) and e.errno in (
                errno.ENOSPC,
                errno.EDQUOT,
                errno.EROFS,
            ):  # the machine, not a bug
                refused = True
                typer.secho(
                    f"error: {e.filename or ''}: {e.strerror}; free space or choose another output path",
                    fg=typer.colors.RED,
                    err=True,
                )
                raise typer.Exit(code=2) from None
            if debug_enabled():
                raise
            where = write_traceback(e)
            typer.secho(
                f"internal error (a bug in raise-select, not in your input): {type(e).__name__}: "
                f"{_one_line(e)[:300]}; full traceback in {where} (set {DEBUG_ENV}=1 or pass "
                "`raise-select --debug` to print it)",
                fg=typer.colors.RED,
                err=True,
            )
            raise typer.Exit(code=1) from None
        finally:
            _end(refused)

    wrapper.handles_errors = True  # type: ignore[attr-defined]  (tests check every command has it)
    return wrapper
