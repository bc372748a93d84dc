"""`raise-select convert-model`: a GGUF causal LM (or a packaged model's short name) as a
normal safetensors folder, so later loads skip the dequantisation."""

from __future__ import annotations

from pathlib import Path

import typer

from .common import handle_errors

ORDER = 91


def register(app: typer.Typer) -> None:
    @app.command("convert-model")
    @handle_errors
    def convert_model(
        source: str = typer.Argument(..., help="A .gguf file, or a packaged short name (smollm2-135m-instruct)."),
        out: Path = typer.Option(..., "--out", help="New folder for the safetensors model and its tokenizer."),
    ) -> None:
        """Convert a GGUF model (dequantised to float32) into a safetensors folder.

        Every command also takes the .gguf file itself as --model and converts it once into its cache \
($RAISE_SELECT_CACHE, default ~/.cache/raise-select); this writes the same folder where you choose.
        """
        from ..errors import UserError
        from ..io import check_output
        from ..models.resolve import PACKAGED, convert_gguf_folder, package_file

        if source.lower() in PACKAGED:
            if PACKAGED[source.lower()].kind != "gguf":
                raise UserError(f"'{source}' is not a GGUF model; it needs no conversion")
            source = str(package_file(source.lower()))
        elif not source.lower().endswith(".gguf") and not Path(source).expanduser().is_dir():
            raise UserError(
                f"{source}: expected a .gguf file or one of: "
                f"{', '.join(k for k, v in PACKAGED.items() if v.kind == 'gguf')}"
            )
        check_output(out, {"SOURCE": source})
        convert_gguf_folder(source, out)
        typer.echo(f"wrote {out} (from {source})")
