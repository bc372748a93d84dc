"""Table 1 arithmetic (Avg, Avg.Q) on hand-computed numbers, and the table and plot writers."""

from __future__ import annotations

import csv
import io
import json
import math

import pytest

from raise_select.errors import UserError
from raise_select.reports.plots import plot_study
from raise_select.reports.tables import average, avg_q, build_table, table_csv, table_markdown, write_table

# Table 1, Llama-3.2-3B rows (percent): MMLU, ARC-C, ComQA
PAPER = {
    "0%": {"mmlu": 51.66, "arc": 42.15, "csqa": 64.21},
    "100%": {"mmlu": 52.76, "arc": 43.77, "csqa": 66.42},
    "RAND": {"mmlu": 52.86, "arc": 42.32, "csqa": 65.11},
}
TASKS = ["mmlu", "arc", "csqa"]


def test_average_is_the_mean_of_the_tasks():
    # the paper's Avg column for these rows: 52.67 and 54.32
    assert average(PAPER["0%"], TASKS) == pytest.approx((51.66 + 42.15 + 64.21) / 3)
    assert round(average(PAPER["0%"], TASKS), 2) == 52.67
    assert round(average(PAPER["100%"], TASKS), 2) == 54.32
    with pytest.raises(UserError, match="no score for task"):
        average({"mmlu": 1.0}, TASKS)


def test_avg_q_on_hand_computed_numbers():
    # (54.20 - 52.67) / (54.32 - 52.67) = 1.53 / 1.65
    assert avg_q(54.20, 52.67, 54.32) == pytest.approx(1.53 / 1.65)
    assert avg_q(52.67, 52.67, 54.32) == 0.0 and avg_q(54.32, 52.67, 54.32) == 1.0
    assert avg_q(0.40, 0.50, 0.60) == pytest.approx(-1.0)
    assert math.isnan(avg_q(0.5, 0.4, 0.4))


def test_build_table_rows_and_required_rows():
    table = build_table([(k, {t: v / 100 for t, v in s.items()}) for k, s in PAPER.items()], TASKS)
    assert [r["row"] for r in table] == ["0%", "100%", "RAND"]
    rand = table[2]
    a0, a100, ar = (sum(PAPER[k].values()) / 300 for k in ("0%", "100%", "RAND"))
    assert rand["avg"] == pytest.approx(ar)
    assert rand["avg_q"] == pytest.approx((ar - a0) / (a100 - a0))
    assert table[0]["avg_q"] == 0.0 and table[1]["avg_q"] == 1.0
    with pytest.raises(UserError, match="needs a '100%' row"):
        build_table([("0%", PAPER["0%"])], TASKS)


def _small_table():
    return build_table(
        [("0%", {"a": 0.25, "b": 0.5}), ("100%", {"a": 0.5, "b": 0.75}), ("X", {"a": 0.125, "b": 0.5})], ["a", "b"]
    )


def test_markdown_layout():
    md = table_markdown(_small_table(), ["a", "b"])
    assert md.splitlines() == [
        "| DATA | Avg.Q | Avg. | a | b |",
        "|---|---|---|---|---|",
        "| 0% | +0.00% | 37.50 | 25.00 | 50.00 |",
        "| 100% | +100.00% | 62.50 | 50.00 | 75.00 |",
        "| X | -25.00% | 31.25 | 12.50 | 50.00 |",  # (0.3125 - 0.375) / 0.25
    ]


def test_csv_and_json_round_trip(tmp_path):
    table = _small_table()
    rows = list(csv.DictReader(io.StringIO(table_csv(table, ["a", "b"]))))
    assert [r["row"] for r in rows] == ["0%", "100%", "X"]
    assert float(rows[2]["avg_q"]) == -0.25 and float(rows[2]["a"]) == 0.125
    flat = build_table([("0%", {"a": 0.5}), ("100%", {"a": 0.5})], ["a"])  # no gain: Avg.Q undefined
    paths = write_table(tmp_path, flat, ["a"], {"note": 1}, notes=["less failed: x"])
    assert "n/a" in paths["md"].read_text() and "- less failed: x" in paths["md"].read_text()
    assert list(csv.DictReader(paths["csv"].open()))[0]["avg_q"] == ""
    data = json.loads(paths["json"].read_text())
    assert data["rows"][0]["avg_q"] is None and data["note"] == 1 and data["tasks"] == ["a"]


def test_bar_plot_is_a_png(tmp_path):
    path = plot_study(_small_table(), ["a", "b"], tmp_path / "plot.png", title="t")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
