"""`raise-select baseline` end to end through typer's CliRunner on a tiny pool and model."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import plus_rows
from raise_select.cli.main import app
from raise_select.data.pools import load_pool
from raise_select.features.table import FEATURE_COLUMNS, FeatureTable

runner = CliRunner()


@pytest.fixture(scope="module")
def pool_and_features(tmp_path_factory):
    folder = tmp_path_factory.mktemp("baseline-pool")
    rows = plus_rows(24)
    pool_file = folder / "pool.json"
    pool_file.write_text(json.dumps(rows))
    pool = load_pool(pool_file)
    rng = np.random.default_rng(0)
    n = len(pool)
    cols = {c: np.zeros(n) for c in FEATURE_COLUMNS}
    cols["logp_cond"] = -rng.uniform(0.2, 2.0, n)
    cols["logp_uncond"] = cols["logp_cond"] - rng.uniform(-0.3, 1.0, n)
    cols["len_response"] = np.full(n, 6.0)
    FeatureTable(
        ids=pool.ids, columns=cols, sem=rng.normal(size=(n, 8)).astype(np.float32), cluster=np.zeros(n, dtype=np.int64)
    ).write(folder / "features")
    return pool_file, folder / "features", pool


def invoke(*args):
    result = runner.invoke(app, ["baseline", *map(str, args)])
    return result, (result.output + (result.stderr if result.stderr_bytes is not None else ""))


@pytest.mark.parametrize("method", ["full", "random", "ifd", "sspl"])
def test_feature_methods_write_a_selection(method, pool_and_features, tmp_path):
    pool_file, features, pool = pool_and_features
    result, text = invoke(
        "--method",
        method,
        "--pool",
        pool_file,
        "--features",
        features,
        "--budget",
        0.25,
        "--batch-size",
        2,
        "--out",
        tmp_path,
    )
    assert result.exit_code == 0, text
    sel = json.loads((tmp_path / "selection.json").read_text())
    assert sel["method"] == method and sel["budget_count"] == 6
    assert sel["ids"] == [pool.ids[i] for i in sel["indices"]]
    expected_steps = {"full": 36, "random": 9, "ifd": 9, "sspl": 9}[method]  # ceil(3 x 24 / 2), ceil(3 x 6 / 2)
    assert sel["steps"] == expected_steps
    assert len(sel["indices"]) == {"full": 24, "sspl": 18}.get(method, 6)
    assert (tmp_path / "baseline.log").is_file()


def test_unknown_method_lists_the_available_ones(pool_and_features, tmp_path):
    pool_file, _, _ = pool_and_features
    result, text = invoke("--method", "magic", "--pool", pool_file, "--out", tmp_path)
    assert result.exit_code == 2
    assert "unknown method 'magic'; available: full, random, ifd, deita, alpagasus, sspl, less" in text


def test_method_options_from_set_and_missing_inputs(pool_and_features, tmp_path):
    pool_file, features, _ = pool_and_features
    result, text = invoke("--method", "ifd", "--pool", pool_file, "--out", tmp_path)
    assert result.exit_code == 2 and "--features" in text
    result, text = invoke(
        "--method",
        "ifd",
        "--pool",
        pool_file,
        "--features",
        features,
        "--out",
        tmp_path,
        "--budget",
        4,
        "--set",
        "ifd.max_ifd=0.5",
    )
    assert result.exit_code == 0, text
    sel = json.loads((tmp_path / "selection.json").read_text())
    assert sel["options"] == {"max_ifd": 0.5} and all(s <= 0.5 for s in sel["scores"])
    result, text = invoke(
        "--method", "ifd", "--pool", pool_file, "--features", features, "--out", tmp_path, "--set", "ifd.nope=1"
    )
    assert result.exit_code == 2 and "unknown option(s) nope" in text


def test_deita_with_local_scorers_from_a_config_file(pool_and_features, tiny_model_dir, tmp_path):
    pool_file, features, _ = pool_and_features
    cfg = tmp_path / "study.yaml"
    cfg.write_text(
        f"baseline:\n  budget: 5\ndeita:\n  complexity_scorer: {tiny_model_dir}\n"
        f"  quality_scorer: {tiny_model_dir}\n  threshold: 0.5\n"
    )
    args = (
        "--method",
        "deita",
        "--pool",
        pool_file,
        "--features",
        features,
        "--out",
        tmp_path / "run",
        "--config",
        cfg,
    )
    result, text = invoke(*args)
    assert result.exit_code == 0, text
    sel = json.loads((tmp_path / "run" / "selection.json").read_text())
    assert sel["budget_count"] == 5 and sel["options"]["threshold"] == 0.5
    assert all(1.0 <= s <= 36.0 for s in sel["scores"]) and sel["scores"] == sorted(sel["scores"], reverse=True)
    assert (tmp_path / "run" / "cache" / "deita-complexity.jsonl").is_file()
    # A second run with the same settings reuses the selection without scoring again.
    mtime = (tmp_path / "run" / "selection.json").stat().st_mtime_ns
    result, text = invoke(*args)
    assert result.exit_code == 0, text
    assert (tmp_path / "run" / "selection.json").stat().st_mtime_ns == mtime


def test_train_on_the_selection_at_matched_steps(pool_and_features, tiny_model_dir, tmp_path):
    pool_file, _, _ = pool_and_features
    result, text = invoke(
        "--method",
        "random",
        "--pool",
        pool_file,
        "--model",
        tiny_model_dir,
        "--budget",
        4,
        "--batch-size",
        2,
        "--epochs",
        1,
        "--max-length",
        64,
        "--out",
        tmp_path,
        "--train",
    )
    assert result.exit_code == 0, text
    sel = json.loads((tmp_path / "selection.json").read_text())
    assert sel["steps"] == 2
    assert (tmp_path / "model" / "config.json").is_file()
    assert json.loads((tmp_path / "train_done.json").read_text())["steps"] == 2
