"""Entry point of `raise-select`. Each stage module in this package defines
`register(app)` and an integer `ORDER` (its place in `--help`)."""

from __future__ import annotations

import importlib
import pkgutil

import typer

from .. import __version__

app = typer.Typer(
    name="raise-select",
    help="Choose the instruction data an LLM is fine-tuned on, step by step (RAISE), "
    "and compare with static selection baselines at matched budgets.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(__version__)
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version.")) -> None:
    pass


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
    app()


if __name__ == "__main__":
    main()
