"""The refactor onto the experiments layer keeps results: `raise-select demo --quick` gives the
validation losses and the chosen rows (every fine-tuning step and policy-training round) that the
code before it gave (pinned from commit 8a6c789 in tests/pins/refactor_pins.json; the real-data
benchmark's pins are checked in tests/test_bench_real.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from raise_select.cli.main import app

PINS = Path(__file__).parent / "pins" / "refactor_pins.json"


def test_quick_demo_matches_the_pinned_losses_and_rows(tmp_path):
    out = tmp_path / "demo"
    result = CliRunner().invoke(app, ["demo", "--quick", "--out", str(out)])
    assert result.exit_code == 0, result.output
    pinned = json.loads(PINS.read_text())["demo"]
    summary = json.loads((out / "summary.json").read_text())
    seen = set()
    for method, entry in summary["methods"].items():
        for run in entry["per_seed"]:
            name = f"{method}-s{run['seed']}"
            assert run["val_loss"] == pytest.approx(pinned[name]["val_loss"], abs=1e-6), name
            seen.add(name)
    for name, rows in pinned.items():
        if name.endswith(".jsonl"):
            lines = [json.loads(line) for line in (out / name).read_text().splitlines() if line.strip()]
            assert [line.get("indices") for line in lines] == rows, name
            seen.add(name)
    assert seen == set(pinned)
