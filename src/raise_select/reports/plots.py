"""The study's bar plot: every row's score per task and its Avg (matplotlib, Agg backend)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from ..io import atomic_path


def plot_study(table: list[dict], tasks: Sequence[str], path: str | Path, title: str = "") -> Path:
    """Grouped bars: one group per column (the tasks, then Avg), one bar per table row."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    columns = [*tasks, "avg"]
    x = np.arange(len(columns))
    width = 0.8 / max(len(table), 1)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.6 * len(columns) + 0.25 * len(table)), 4.0))
    for i, row in enumerate(table):
        ax.bar(x + (i - (len(table) - 1) / 2) * width, [100 * row[c] for c in columns], width, label=row["row"])
    ax.set_xticks(x, [*tasks, "Avg."])
    ax.set_ylabel("score (%)")
    if title:
        ax.set_title(title)
    ax.legend(fontsize="small", ncol=min(len(table), 5), loc="upper center", bbox_to_anchor=(0.5, -0.12))
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
    return path
