"""`raise-select tiny-model`: build a tiny Llama and a BPE tokenizer locally (no hub needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .common import handle_errors

ORDER = 90


def register(app: typer.Typer) -> None:
    @app.command("tiny-model")
    @handle_errors
    def tiny_model(
        out: Path = typer.Option(..., "--out", help="Folder to write the model and tokenizer to."),
        pool: Optional[str] = typer.Option(
            None, "--pool", help="Pool whose texts train the tokenizer (default: the built-in demo pool)."
        ),
        preset: str = typer.Option(
            "test", "--preset", help="Size: test (~20k params), 1m or 10m (non-embedding parameters)."
        ),
        max_texts: int = typer.Option(20000, "--max-texts", help="Train the tokenizer on at most this many examples."),
        seed: int = typer.Option(0, "--seed", help="Seed of the random weights."),
    ) -> None:
        """Build a tiny Llama-architecture model with a tokenizer trained on the spot."""
        from ..data.pools import load_pool
        from ..errors import UserError
        from ..io import check_output
        from ..models.tiny import PRESETS, build_tiny_model

        if preset not in PRESETS:
            raise UserError(f"unknown preset '{preset}'; available: {', '.join(PRESETS)}")
        if max_texts < 1:
            raise UserError(f"--max-texts {max_texts}: must be at least 1")
        check_output(out, {"--pool": pool})
        if pool is None:
            from ..data.synthetic import demo_texts

            texts = demo_texts()
        else:
            p = load_pool(pool, limit=max_texts)
            texts = ["\n".join(c for _, c in e.messages) for e in p.examples]
        build_tiny_model(out, texts, preset=preset, seed=seed)
        typer.echo(f"wrote {preset} model and tokenizer to {out}")
