"""`raise-select featurize`: lengths, log-probabilities, IFD, semantic state and classes of a pool."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from .common import ConfigOption, SetOption, handle_errors, setup_logging

ORDER = 10


def register(app: typer.Typer) -> None:
    @app.command("featurize")
    @handle_errors
    def featurize_cmd(
        pool: Optional[str] = typer.Option(None, "--pool", help="Pool file, folder or `datasets` name."),
        format: Optional[str] = typer.Option(None, "--format", help="Pool format: alpaca, sharegpt or messages (default: detected)."),
        limit: Optional[int] = typer.Option(None, "--limit", help="Featurize only the first N examples of the pool."),
        model: Optional[str] = typer.Option(None, "--model", help="Auxiliary causal LM: hub id or local folder."),
        out: Optional[str] = typer.Option(None, "--out", help="Output folder for features.parquet, meta.json and shards/."),
        template: Optional[str] = typer.Option(None, "--template", help="Prompt template: alpaca (default) or chat (the tokenizer's chat template)."),
        max_length: Optional[int] = typer.Option(None, "--max-length", help="Max tokens per example (default 512); the prompt is cut from the left first."),
        batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Token sequences per forward pass, two per example (default: 8 on CPU, 32 on GPU)."),
        sem_dim: Optional[int] = typer.Option(None, "--sem-dim", help="Size of the semantic state d_sem (default 32)."),
        sem_pool: Optional[str] = typer.Option(None, "--sem-pool", help="Reduce the embedding to d_sem by 'mean' (adaptive average pooling, default) or 'pca'."),
        embed_model: Optional[str] = typer.Option(None, "--embed-model", help="sentence-transformers model (name or folder) to embed with instead of the LM's hidden states."),
        classes: Optional[int] = typer.Option(None, "--classes", help="K-means classes C for the diversity constraint (default 8)."),
        seed: Optional[int] = typer.Option(None, "--seed", help="Seed of K-means and of the PCA sample (default 0)."),
        shard_size: Optional[int] = typer.Option(None, "--shard-size", help="Examples per shard file; an interruption loses at most one (default 2048)."),
        trust_remote_code: Optional[bool] = typer.Option(None, "--trust-remote-code/--no-trust-remote-code", help="Run code shipped with a hub model (off by default)."),
        dtype: Optional[str] = typer.Option(None, "--dtype", help="Model dtype: float32 (default), bfloat16, float16 or auto."),
        device: Optional[str] = typer.Option(None, "--device", help="Device (cpu, cuda, cuda:1); default: this process's accelerate device."),
        config: Optional[Path] = ConfigOption,
        overrides: Optional[List[str]] = SetOption,
    ) -> None:
        """Featurize a pool with an auxiliary LM (pipeline step 1); reuses or resumes earlier output.

        Several GPUs: `accelerate launch --multi_gpu --num_processes N -m raise_select.cli.main
        featurize ...` (or `torchrun --nproc-per-node N -m raise_select.cli.main featurize ...`)
        gives every process its share of the shards.
        """
        from ..config import resolve
        from ..features.featurize import FeaturizeConfig, featurize, featurize_inputs, process_state
        from ..io import check_output

        flags = dict(
            pool=pool, format=format, limit=limit, model=model, out=out, template=template, max_length=max_length,
            batch_size=batch_size, sem_dim=sem_dim, sem_pool=sem_pool, embed_model=embed_model, classes=classes,
            seed=seed, shard_size=shard_size, trust_remote_code=trust_remote_code, dtype=dtype, device=device,
        )
        cfg = resolve(FeaturizeConfig, "featurize", config, overrides, flags)
        cfg.validate()
        check_output(cfg.out, featurize_inputs(cfg))
        state = process_state(cfg.device)
        setup_logging(Path(cfg.out), name=f"featurize.{state.process_index}.log" if state.num_processes > 1 else "featurize.log")
        table = featurize(cfg)
        if state.is_main_process:
            counts = table.meta["counts"]
            typer.echo(
                f"{len(table)} examples featurized to {cfg.out} "
                f"(skipped {counts['skipped'] or 'none'}, truncated responses {counts['truncated_responses']})"
            )
