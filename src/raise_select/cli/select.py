"""`raise-select select`: export the instructions a run chose, in the pool's own format."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional

import typer

from .common import ConfigOption, SetOption, handle_errors
from .fields import ConfigOptions

ORDER = 40

# Option help comes from the fields of the config class.
OPTIONS = ConfigOptions("raise_select.cli.select:SelectConfig")


@dataclass
class SelectConfig:
    """Export a run's chosen instructions."""

    run: str = field(default="", metadata={"help": "run folder of finetune/train-policy, or its selections.jsonl"})
    out: str = field(default="", metadata={"help": "output file: chosen.jsonl (one record per line) or chosen.json (an array)"})
    pool: Optional[str] = field(default=None, metadata={"help": "pool the run used; default: `pool` in the run's config.yaml"})
    format: Optional[str] = field(default=None, metadata={"help": "output format (alpaca, sharegpt, messages); default: the pool's own"})
    include_random: bool = field(default=True, metadata={"help": "count the steps chosen at random between policy steps (--select-every)"})
    round: Optional[int] = field(default=None, metadata={"help": "train-policy run: the round whose choices to export (default: the last)"})


def run_pool(cfg: SelectConfig) -> str:
    """The pool to read: `--pool`, else the one named in the run folder's config."""
    from ..config import read_yaml
    from ..errors import UserError

    if cfg.pool:
        return cfg.pool
    run = Path(cfg.run).resolve()
    # A run folder, its selections.jsonl, or train-policy's selections/round_<k>.jsonl.
    candidates = [run / "config.yaml"] if run.is_dir() else [run.parent / "config.yaml", run.parent.parent / "config.yaml"]
    config = next((c for c in candidates if c.is_file()), None)
    if config is None:
        raise UserError(f"{cfg.run}: no config.yaml naming the run's pool; pass --pool")
    pool = read_yaml(config).get("pool")
    if not pool:
        raise UserError(f"{config}, field 'pool': missing; pass --pool")
    return str(pool)


def register(app: typer.Typer) -> None:
    @app.command("select", cls=OPTIONS.command)
    @handle_errors
    def select(
        run: Optional[str] = typer.Option(None, "--run"),
        out: Optional[str] = typer.Option(None, "--out"),
        pool: Optional[str] = typer.Option(None, "--pool"),
        fmt: Optional[str] = typer.Option(None, "--format", help="Output format: alpaca, sharegpt or messages (default: the pool's)."),
        include_random: Optional[bool] = typer.Option(
            None, "--include-random/--policy-only",
            help="Count the random batches between policy steps (--select-every > 1); on by default."),
        round: Optional[int] = typer.Option(
            None, "--round", help="train-policy run: the round whose rollout choices to export (default: the last round)."),
        config: Optional[Path] = ConfigOption,
        overrides: Optional[List[str]] = SetOption,
    ) -> None:
        """Export the instructions a run chose, with how many times and at which steps each was chosen.

        A finetune run exports its selections.jsonl; a train-policy run exports one round's
        rollout choices (selections/round_<k>.jsonl), the last round's unless --round is given.
        """
        from ..config import resolve
        from ..data.pools import load_pool
        from ..errors import UserError
        from ..io import check_output
        from ..training.export import export_chosen, finished_rounds, selections_path

        cfg = resolve(SelectConfig, "select", config, overrides,
                      {"run": run, "out": out, "pool": pool, "format": fmt, "include_random": include_random,
                       "round": round})
        missing = [f"--{k}" for k in ("run", "out") if not getattr(cfg, k)]
        if missing:
            raise UserError(f"missing required setting(s): {', '.join(missing)}")
        log = selections_path(cfg.run, cfg.round)  # a missing log is the first thing to report
        pool_spec = run_pool(cfg)
        check_output(cfg.out, {"--run": log, "--pool": pool_spec}, kind="file")
        summary = export_chosen(load_pool(pool_spec), cfg.run, cfg.out, cfg.format, cfg.include_random, cfg.round)
        rounds = finished_rounds(Path(cfg.run)) if Path(cfg.run).is_dir() and summary.log.parent.name == "selections" else []
        source = summary.log if not rounds else (
            f"round {summary.log.stem.removeprefix('round_')} of rounds {rounds[0]}-{rounds[-1]} ({summary.log}"
            + ("; the last round; --round picks another)" if cfg.round is None else ")"))
        typer.echo(f"wrote {summary.chosen} instructions chosen {summary.selections} times over {summary.steps} steps "
                   f"of {source} to {summary.out}"
                   + (f" ({summary.random_steps} random steps left out)" if summary.skipped_random and summary.random_steps else ""))
