"""`raise-select featurize`: lengths, log-probabilities, IFD, semantic state and classes of a pool."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from .common import ConfigOption, handle_errors, set_option, setup_logging
from .fields import ConfigOptions

ORDER = 10

# Option help comes from the fields of the config class.
OPTIONS = ConfigOptions("raise_select.features.featurize:FeaturizeConfig")


def register(app: typer.Typer) -> None:
    @app.command("featurize", cls=OPTIONS.command)
    @handle_errors
    def featurize_cmd(
        pool: Optional[str] = typer.Option(None, "--pool"),
        format: Optional[str] = typer.Option(None, "--format"),
        limit: Optional[int] = typer.Option(None, "--limit"),
        model: Optional[str] = typer.Option(None, "--model"),
        out: Optional[str] = typer.Option(None, "--out"),
        template: Optional[str] = typer.Option(None, "--template"),
        max_length: Optional[int] = typer.Option(None, "--max-length"),
        batch_size: Optional[int] = typer.Option(None, "--batch-size"),
        sem_dim: Optional[int] = typer.Option(None, "--sem-dim"),
        sem_pool: Optional[str] = typer.Option(None, "--sem-pool"),
        embed_model: Optional[str] = typer.Option(None, "--embed-model"),
        classes: Optional[int] = typer.Option(None, "--classes"),
        seed: Optional[int] = typer.Option(None, "--seed"),
        shard_size: Optional[int] = typer.Option(None, "--shard-size"),
        trust_remote_code: Optional[bool] = typer.Option(None, "--trust-remote-code/--no-trust-remote-code"),
        dtype: Optional[str] = typer.Option(None, "--dtype"),
        device: Optional[str] = typer.Option(None, "--device"),
        compile: Optional[bool] = typer.Option(None, "--compile/--no-compile"),
        rds: Optional[bool] = typer.Option(None, "--rds/--no-rds"),
        config: Optional[Path] = ConfigOption,
        overrides: Optional[List[str]] = set_option("featurize.classes=16"),
    ) -> None:
        """Featurize a pool with an auxiliary LM (pipeline step 1); reuses or resumes earlier output.

        Several GPUs: `accelerate launch --multi_gpu --num_processes N -m raise_select.cli.main
        featurize ...` (or `torchrun --nproc-per-node N -m raise_select.cli.main featurize ...`)
        gives every process its share of the shards.
        """
        from ..config import require_settings, resolve
        from ..features.featurize import FeaturizeConfig, featurize, featurize_inputs, process_state
        from ..io import check_output, lock_output

        flags = dict(
            pool=pool,
            format=format,
            limit=limit,
            model=model,
            out=out,
            template=template,
            max_length=max_length,
            batch_size=batch_size,
            sem_dim=sem_dim,
            sem_pool=sem_pool,
            embed_model=embed_model,
            classes=classes,
            seed=seed,
            shard_size=shard_size,
            trust_remote_code=trust_remote_code,
            dtype=dtype,
            device=device,
            compile=compile,
            rds=rds,
        )
        cfg = resolve(FeaturizeConfig, "featurize", config, overrides, flags)
        require_settings(cfg, ("pool", "model", "out"))
        check_output(cfg.out, featurize_inputs(cfg))
        lock_output(cfg.out, "featurize")
        state = process_state(cfg.device)
        setup_logging(
            Path(cfg.out), name=f"featurize.{state.process_index}.log" if state.num_processes > 1 else "featurize.log"
        )
        table = featurize(cfg)
        if state.is_main_process:
            counts = table.meta["counts"]
            typer.echo(
                f"{len(table)} examples featurized to {cfg.out} "
                f"(skipped {counts['skipped'] or 'none'}, truncated responses {counts['truncated_responses']})"
            )
