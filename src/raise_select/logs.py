"""Logging of a run: stderr, plus a log file in the run folder (below the CLI, so every job can set it up)."""

from __future__ import annotations

import importlib.metadata
import logging
import sys
from pathlib import Path
from typing import Iterable, Optional

# The packages whose versions a run's records keep (a result that moves between two runs of the
# same settings is first checked against them).
RUN_PACKAGES = (
    "raise-select",
    "torch",
    "transformers",
    "accelerate",
    "peft",
    "scikit-learn",
    "pyarrow",
    "sentence-transformers",
)


def package_versions(packages: Iterable[str] = RUN_PACKAGES) -> dict[str, str]:
    """{package: installed version} of those installed among `packages`."""
    out = {}
    for pkg in packages:
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            pass
    return out


def setup_logging(run_dir: Optional[Path] = None, name: str = "run.log", verbose: bool = False) -> None:
    """Log to stderr and, when a run folder is given, to `run_dir/name` (replacing earlier handlers of ours)."""
    root = logging.getLogger()
    for h in list(root.handlers):
        if getattr(h, "_raise_select", False):
            root.removeHandler(h)
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S")
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if run_dir is not None:
        from .io import note_new_folder

        note_new_folder(run_dir)  # a refused command removes it again (cli.common.handle_errors)
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(Path(run_dir) / name, encoding="utf-8"))
    for h in handlers:
        h.setFormatter(fmt)
        h._raise_select = True  # type: ignore[attr-defined]
        root.addHandler(h)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    for noisy in ("httpx", "urllib3", "filelock", "datasets", "fsspec"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
