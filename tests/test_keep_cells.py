"""benchmarks/keep_cells.py: which cells count as finished, what is copied (never weights), and the
copy back into a fresh study folder."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import benchmark_module


def _module():
    return benchmark_module("keep_cells")


def _cell(root: Path, name: str, target, evals, done=True) -> Path:
    d = root / "cells" / name
    (d / "model").mkdir(parents=True)
    (d / "model" / "adapter_model.safetensors").write_bytes(b"weights")
    record = {"name": name, "target": target, "done": done, "evals": {k: {"values": [1.0]} for k in evals}}
    (d / "cell.json").write_text(json.dumps(record))
    (d / "selection.json").write_text("{}")
    return d


def test_keeps_finished_cells_records_only_and_restores_them(tmp_path):
    keep = _module()
    study = tmp_path / "study"
    targets = ["gsm8k", "arc_challenge"]
    _cell(study, "random-s0", None, ["gsm8k:dev", "arc_challenge:dev"])
    _cell(study, "random-s1", None, ["gsm8k:dev"])  # one target still to evaluate
    _cell(study, "less@gsm8k-s0", "gsm8k", ["gsm8k:dev"])
    raise_cell = _cell(study, "raise@gsm8k-s0", "gsm8k", ["gsm8k:dev"])
    (raise_cell / "finetune").mkdir()
    (raise_cell / "finetune" / "selections.jsonl").write_text('{"indices": [1, 2]}\n')
    _cell(study, "less@arc_challenge-s0", "arc_challenge", ["arc_challenge:test"])  # test only
    _cell(study, "rho@gsm8k-s0", "gsm8k", ["gsm8k:dev"], done=False)
    (study / "features_time.json").write_text('{"seconds": 12.5}')
    into = tmp_path / "kept" / "cells"
    argv = ["--study", str(study), "--into", str(into), "--targets", *targets]
    assert keep.main(argv) == 0
    assert sorted(p.name for p in into.iterdir()) == ["less@gsm8k-s0", "raise@gsm8k-s0", "random-s0"]
    assert sorted(p.name for p in (into / "random-s0").iterdir()) == ["cell.json", "selection.json"]
    assert keep.main([*argv, "--split", "test"]) == 0
    assert (into / "less@arc_challenge-s0" / "cell.json").is_file()
    fresh = tmp_path / "fresh"
    assert keep.main(["--study", str(fresh), "--into", str(into), "--restore"]) == 0
    assert (fresh / "cells" / "random-s0" / "cell.json").read_text() == (into / "random-s0" / "cell.json").read_text()
    assert json.loads((fresh / "features_time.json").read_text()) == {"seconds": 12.5}
    assert (fresh / "cells" / "raise@gsm8k-s0" / "finetune" / "selections.jsonl").is_file()
    assert not (fresh / "cells" / "random-s0" / "model").exists()
