"""`raise-select select`: export the instructions a run chose, in the pool's own format, or as a
folder to publish or train on elsewhere (`training.publish`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional

import typer

from .common import ConfigOption, handle_errors, set_option
from .fields import ConfigOptions

ORDER = 40

# Option help comes from the fields of the config class.
OPTIONS = ConfigOptions("raise_select.cli.select:SelectConfig")


@dataclass
class SelectConfig:
    """Export a run's chosen instructions."""

    run: str = field(
        default="",
        metadata={
            "help": "run folder of finetune/train-policy (or its selections.jsonl), "
            "or a baseline's output folder (selection.json)"
        },
    )
    out: str = field(
        default="",
        metadata={
            "help": "output: chosen.jsonl (one record per line) or chosen.json (an array); any other name is a folder "
            "to publish: a `datasets` folder (save_to_disk) with a dataset card README.md and scores.parquet"
        },
    )
    pool: Optional[str] = field(
        default=None,
        metadata={
            "help": "pool the run used; default: `pool` in the run's config.yaml (a baseline's: its selection.json)"
        },
    )
    format: Optional[str] = field(
        default=None,
        metadata={
            "help": "output format (alpaca, sharegpt, messages); default: the pool's own. "
            "llamafactory (a folder --out): data.json and its dataset_info.json entry"
        },
    )
    features: Optional[str] = field(
        default=None, metadata={"help": "feature table of the pool, for the card's share per class; default: the run's"}
    )
    include_random: bool = field(
        default=True, metadata={"help": "count the steps chosen at random between policy steps (--select-every)"}
    )
    round: Optional[int] = field(
        default=None, metadata={"help": "train-policy run: the round whose choices to export (default: the last)"}
    )


# Names a user may give --out meaning a file that select does not write (it would become a folder).
OTHER_FILE_SUFFIXES = (".parquet", ".csv", ".tsv", ".arrow", ".txt", ".yaml", ".yml", ".gz", ".zip", ".tar", ".md")


def _multi_turn_note(count: int, total: int) -> str:
    if not count:
        return ""
    return (
        f"; {count} of the {total} are multi-turn conversations, written as Alpaca with their earlier "
        "exchanges in `history` (LLaMA-Factory's field; --format sharegpt or messages keeps the turns as turns)"
    )


def multi_turn_count(pool, rows: list[int], fmt: str | None) -> int:
    """How many of the exported rows go out as Alpaca records with a `history` (an Alpaca pool's
    rows, and so its llamafactory export, have one turn)."""
    if (fmt or pool.format) != "alpaca":
        return 0
    return sum(any(r == "assistant" for r, _ in pool.examples[i].messages[:-1]) for i in rows)


def run_pool(cfg: SelectConfig) -> str:
    """The pool to read: `--pool`, else the one named in the run folder's config."""
    from ..config import read_yaml
    from ..errors import UserError
    from ..training.publish import baseline_record

    if cfg.pool:
        return cfg.pool
    found = baseline_record(cfg.run)
    if found is not None:
        if not found[1].get("pool"):
            raise UserError(f"{found[0]}, field 'pool': missing (written by an older version); pass --pool")
        return str(found[1]["pool"])
    run = Path(cfg.run).resolve()
    # A run folder, its selections.jsonl, or train-policy's selections/round_<k>.jsonl.
    candidates = (
        [run / "config.yaml"] if run.is_dir() else [run.parent / "config.yaml", run.parent.parent / "config.yaml"]
    )
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
        fmt: Optional[str] = typer.Option(
            None,
            "--format",
            help="Output format: alpaca, sharegpt or messages (default: the pool's); llamafactory for a folder --out.",
        ),
        features: Optional[str] = typer.Option(None, "--features"),
        include_random: Optional[bool] = typer.Option(
            None,
            "--include-random/--policy-only",
            help="Count the random batches between policy steps (--select-every > 1); on by default.",
        ),
        round: Optional[int] = typer.Option(
            None,
            "--round",
            help="train-policy run: the round whose rollout choices to export (default: the last round).",
        ),
        config: Optional[Path] = ConfigOption,
        overrides: Optional[List[str]] = set_option("select.round=2"),
    ) -> None:
        """Export the instructions a run chose, with how many times and at which steps each was chosen.

        A finetune run exports its selections.jsonl; a train-policy run exports one round's
        rollout choices (selections/round_<k>.jsonl), the last round's unless --round is given;
        a baseline's output folder exports its selection.json. An --out that is not a .json or
        .jsonl file is a folder to publish: the chosen rows as a `datasets` folder
        (load_from_disk), or with --format llamafactory data.json + dataset_info.json; both
        with a dataset card (README.md) and scores.parquet (every pool row).
        """
        from ..config import command_line, resolve
        from ..data.pools import load_pool
        from ..errors import UserError
        from ..io import check_output, lock_output
        from ..training.export import OUTPUT_SUFFIXES, export_chosen, finished_rounds, selections_path
        from ..training.publish import baseline_record, check_target, chosen_from_run, publish

        cfg = resolve(
            SelectConfig,
            "select",
            config,
            overrides,
            {
                "run": run,
                "out": out,
                "pool": pool,
                "format": fmt,
                "include_random": include_random,
                "round": round,
                "features": features,
            },
        )
        missing = [f"--{k}" for k in ("run", "out") if not getattr(cfg, k)]
        if missing:
            raise UserError(f"missing required setting(s): {', '.join(missing)}")
        if cfg.features and not Path(cfg.features).expanduser().exists():
            raise UserError(
                f"--features {cfg.features}: not found; give the pool's feature table (a featurize --out folder) "
                "or leave --features out"
            )
        suffix = Path(cfg.out).suffix.lower()
        if suffix in OTHER_FILE_SUFFIXES:
            raise UserError(
                f"--out {cfg.out}: select writes a {' or '.join(OUTPUT_SUFFIXES)} file, or a folder (a name "
                f"without a file suffix); not a {suffix} file"
            )
        found = baseline_record(cfg.run)
        # a missing log is the first thing to report
        log = found[0] if found is not None else selections_path(cfg.run, cfg.round)
        pool_spec = run_pool(cfg)
        if Path(cfg.out).suffix.lower() not in OUTPUT_SUFFIXES:
            check_output(cfg.out, {"--run": log, "--pool": pool_spec})
            check_target(cfg.out)
            lock_output(cfg.out, "select (export)")
            record = found[1] if found is not None else {}
            the_pool = load_pool(pool_spec, fmt=record.get("pool_format"), limit=record.get("limit"))
            chosen = chosen_from_run(the_pool, cfg.run, cfg.include_random, cfg.round)
            folder = publish(the_pool, chosen, cfg.out, command_line("select", cfg), cfg.format, cfg.features)
            kind = "LLaMA-Factory data.json + dataset_info.json" if cfg.format == "llamafactory" else "datasets folder"
            typer.echo(
                f"wrote {len(chosen.rows)} instructions chosen by {chosen.method} ({chosen.source}) to {folder} "
                f"({kind}, README.md, scores.parquet)"
                + _multi_turn_note(multi_turn_count(the_pool, chosen.rows, cfg.format), len(chosen.rows))
            )
            return
        if found is not None:
            raise UserError(f"{cfg.run}: a baseline's selection is exported as a folder; give --out a folder name")
        if cfg.format == "llamafactory":
            raise UserError(f"--format llamafactory writes a folder; give --out a folder name, not {cfg.out}")
        check_output(cfg.out, {"--run": log, "--pool": pool_spec}, kind="file")
        summary = export_chosen(load_pool(pool_spec), cfg.run, cfg.out, cfg.format, cfg.include_random, cfg.round)
        rounds = (
            finished_rounds(Path(cfg.run)) if Path(cfg.run).is_dir() and summary.log.parent.name == "selections" else []
        )
        source = (
            summary.log
            if not rounds
            else (
                f"round {summary.log.stem.removeprefix('round_')} of rounds {rounds[0]}-{rounds[-1]} ({summary.log}"
                + ("; the last round; --round picks another)" if cfg.round is None else ")")
            )
        )
        typer.echo(
            f"wrote {summary.chosen} instructions chosen {summary.selections} times over {summary.steps} steps "
            f"of {source} to {summary.out}"
            + (
                f" ({summary.random_steps} random steps left out)"
                if summary.skipped_random and summary.random_steps
                else ""
            )
            + _multi_turn_note(summary.multi_turn, summary.chosen)
        )
