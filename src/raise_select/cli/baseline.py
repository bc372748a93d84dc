"""`raise-select baseline`: a static selection method at a budget, optionally trained at matched steps."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from .common import ConfigOption, DataDirOption, PoolOption, SetOption, ValSizeOption, handle_errors, setup_logging

ORDER = 50


def register(app: typer.Typer) -> None:
    @app.command("baseline")
    @handle_errors
    def baseline_cmd(
        method: Optional[str] = typer.Option(None, "--method", help="Method: full, random, ifd, deita, alpagasus, sspl, less, rose (static); greats, rho (online, chosen while training)."),
        pool: Optional[str] = PoolOption,
        format: Optional[str] = typer.Option(None, "--format", help="Pool format: alpaca, sharegpt or messages (default: detected)."),
        limit: Optional[int] = typer.Option(None, "--limit", help="Use only the first N pool examples."),
        features: Optional[str] = typer.Option(None, "--features", help="Featurize output folder of this pool (ifd, sspl; deita's default embeddings)."),
        model: Optional[str] = typer.Option(None, "--model", help="Target LLM: hub id or folder (for --train, less, rose, greats, rho, and sspl with loss=target)."),
        val: Optional[str] = typer.Option(None, "--val", help="Validation set for less, rose, greats, rho: a named set (gsm8k, mmlu, ...) or a pool file/folder."),
        data_dir: Optional[str] = DataDirOption,
        val_size: Optional[int] = ValSizeOption,
        budget: Optional[float] = typer.Option(None, "--budget", help="Fraction of the pool (< 1) or number of examples [default: 0.01]."),
        batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Training batch size [default: 8]."),
        epochs: Optional[int] = typer.Option(None, "--epochs", help="Epochs over a static subset [default: 3, as in the paper]."),
        steps: Optional[int] = typer.Option(None, "--steps", help="Update steps [default: ceil(epochs x budget / batch size)]."),
        out: Optional[Path] = typer.Option(None, "--out", help="Output folder: selection.json, cache/, model/, baseline.log."),
        train: Optional[bool] = typer.Option(None, "--train/--no-train", help="Also train the target model on the selection and save it to <out>/model (greats, rho: always)."),
        lr: Optional[float] = typer.Option(None, "--lr", help="LLM learning rate [default: 2e-5, cosine, no warm-up]."),
        template: Optional[str] = typer.Option(None, "--template", help="Prompt template: alpaca (default) or chat."),
        max_length: Optional[int] = typer.Option(None, "--max-length", help="Tokens per example [default: 512]."),
        lora: Optional[bool] = typer.Option(None, "--lora/--no-lora", help="Train and save a LoRA adapter instead of all weights."),
        seed: Optional[int] = typer.Option(None, "--seed", help="Seed of the selection and of training [default: 0]."),
        device: Optional[str] = typer.Option(None, "--device", help="Device of the selection passes (cpu, cuda); default: cuda when available."),
        config: Optional[Path] = ConfigOption,
        overrides: Optional[List[str]] = SetOption,
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

        cfg = resolve(BaselineConfig, "baseline", config, overrides, flags)
        setup_logging(Path(cfg.out) if cfg.out else None, name="baseline.log")
        record = run_baseline(cfg, method_options(cfg.method, config, overrides))
        trained = f"; model saved to {Path(cfg.out) / 'model'}" if cfg.train or record.get("info", {}).get("model_dir") else ""
        typer.echo(f"{cfg.method}: {len(record['indices'])} rows selected ({record['steps']} steps of {record['batch_size']}) "
                   f"-> {Path(cfg.out) / 'selection.json'}{trained}")
