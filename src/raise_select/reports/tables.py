"""The paper's Table 1 layout: per-task scores, Avg and Avg.Q per row, as Markdown, CSV and JSON.

Avg is the mean of the task scores of a row. Avg.Q (Table 1's caption) puts a row's Avg on
the scale of the full-data gain:

    Avg.Q = (Avg - Avg(0%)) / (Avg(100%) - Avg(0%))

so the base model (0%) is 0 and full data (100%) is 1 (100%). The numbers printed in the
paper's Table 1 are this value minus 1 (its 0% rows read -100%, its 100% rows 0%; e.g.
Llama-3.2-3B RAND: (54.20 - 52.67) / (54.32 - 52.67) - 1 = -7.3%); the caption's formula
is the one computed here.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Sequence

from ..errors import UserError
from ..io import write_json_atomic, write_text_atomic
from ..markdown import markdown_table

BASE_ROW = "0%"
FULL_ROW = "100%"


def average(scores: dict[str, float], tasks: Sequence[str]) -> float:
    """Avg: the mean over `tasks` of a row's scores."""
    missing = [t for t in tasks if t not in scores]
    if missing:
        raise UserError(f"no score for task(s) {', '.join(missing)}")
    return sum(scores[t] for t in tasks) / len(tasks)


def avg_q(avg: float, avg_base: float, avg_full: float) -> float:
    """Avg.Q = (Avg - Avg(0%)) / (Avg(100%) - Avg(0%)); NaN when full data gained nothing."""
    gain = avg_full - avg_base
    return (avg - avg_base) / gain if gain != 0 else math.nan


def build_table(rows: Sequence[tuple[str, dict[str, float]]], tasks: Sequence[str]) -> list[dict]:
    """One dict per row: `row`, `avg_q`, `avg` and the score of every task, in row order.

    `rows` holds `(label, {task: score})` and must include the `0%` and `100%` rows.
    """
    labels = [label for label, _ in rows]
    for needed in (BASE_ROW, FULL_ROW):
        if needed not in labels:
            raise UserError(f"the table needs a '{needed}' row; rows: {', '.join(labels)}")
    avgs = {label: average(scores, tasks) for label, scores in rows}
    return [
        {
            "row": label,
            "avg_q": avg_q(avgs[label], avgs[BASE_ROW], avgs[FULL_ROW]),
            "avg": avgs[label],
            **{t: float(scores[t]) for t in tasks},
        }
        for label, scores in rows
    ]


def _pct(x: float) -> str:
    return "n/a" if math.isnan(x) else f"{100 * x:.2f}"


def _signed_pct(x: float) -> str:
    return "n/a" if math.isnan(x) else f"{100 * x:+.2f}%"


def table_markdown(table: list[dict], tasks: Sequence[str]) -> str:
    """Table 1's columns: DATA, Avg.Q, Avg., then the tasks; scores in percent."""
    rows = [[r["row"], _signed_pct(r["avg_q"]), _pct(r["avg"]), *(_pct(r[t]) for t in tasks)] for r in table]
    return markdown_table(["DATA", "Avg.Q", "Avg.", *tasks], rows)


def table_csv(table: list[dict], tasks: Sequence[str]) -> str:
    """Raw fractions (not percent) with full precision; NaN written as an empty cell."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["row", "avg_q", "avg", *tasks])
    for r in table:
        writer.writerow([r["row"], *("" if math.isnan(r[k]) else repr(r[k]) for k in ("avg_q", "avg", *tasks))])
    return buf.getvalue()


def write_table(
    out_dir: str | Path, table: list[dict], tasks: Sequence[str], extra: dict | None = None, notes: Sequence[str] = ()
) -> dict[str, Path]:
    """Write `study_table.md` (with `notes` as a list below it), `.csv` and `.json`
    atomically into `out_dir`; return their paths."""
    out_dir = Path(out_dir)
    paths = {ext: out_dir / f"study_table.{ext}" for ext in ("md", "csv", "json")}
    md = table_markdown(table, tasks) + ("\n" + "".join(f"- {n}\n" for n in notes) if notes else "")
    write_text_atomic(paths["md"], md)
    write_text_atomic(paths["csv"], table_csv(table, tasks))
    json_rows = [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()} for r in table]
    write_json_atomic(paths["json"], {"tasks": list(tasks), "rows": json_rows, **(extra or {})})
    return paths
