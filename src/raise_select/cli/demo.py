"""`raise-select demo`: the whole pipeline on built-in generated data, RAISE against RAND."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from .common import ConfigOption, handle_errors, set_option
from .fields import ConfigOptions

ORDER = 1

# Option help comes from the fields of DemoConfig.
OPTIONS = ConfigOptions("raise_select.demo:DemoConfig")


def register(app: typer.Typer) -> None:
    @app.command("demo", cls=OPTIONS.command)
    @handle_errors
    def demo(
        out: Optional[str] = typer.Option(None, "--out"),
        seeds: Optional[int] = typer.Option(None, "--seeds"),
        testbed: Optional[str] = typer.Option(None, "--testbed"),
        quick: bool = typer.Option(
            False,
            "--quick",
            help="A tiny version of the same pipeline (seconds; for tests); --set and the flags apply over it.",
        ),
        config: Optional[Path] = ConfigOption,
        overrides: Optional[List[str]] = set_option("demo.rounds=2"),
    ) -> None:
        """Generate a pool and a target task, train a RAISE policy, and compare it with RAND (and the oracle).

        Every setting is in DemoConfig (docs/settings.md; the shipped config: `--config demo`); the policy's go in its \
`policy:` section, e.g. `--set demo.policy.ppo_epochs=4`.
        """
        from ..config import resolve
        from ..demo import QUICK, DemoConfig, format_table, run_demo
        from ..io import check_output, lock_output

        flags = OPTIONS.flags({"out": out, "seeds": seeds, "testbed": testbed})
        cfg = resolve(DemoConfig, "demo", config, overrides, flags, preset=QUICK if quick else None)
        check_output(cfg.out, {"--config": config})
        lock_output(cfg.out, "demo")
        summary = run_demo(cfg, progress=typer.echo)
        typer.echo("")
        typer.echo(
            f"{cfg.seeds} seed(s), {summary['steps']} steps of batch {summary['batch_size']}, "
            f"{summary['pool_clean_on_target']:.1%} of the pool is clean and on-target:"
        )
        typer.echo(format_table(summary))
        verdict = "beats" if summary["raise_beats_rand"] else "does NOT beat"
        typer.echo(
            f"\nRAISE {verdict} RAND on the final validation loss; {summary['seconds']:.0f}s in all; "
            f"summary in {Path(cfg.out) / 'summary.json'}"
        )
