"""`report_to`: the same scalars to TensorBoard and to an offline W&B run, for train-policy,
baseline training and the older `--tensorboard` flag."""

import json
import struct
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import plus_rows, random_features
from raise_select.errors import UserError
from raise_select.training.reporting import parse_report_to
from raise_select.training.runs import RunFolder

wandb = pytest.importorskip("wandb", reason="wandb not installed (pip install -e '.[wandb]')")


def read_wandb_history(run_dir: Path, wait: float = 60.0) -> list[dict]:
    """The `history` records of an offline run's `run-<id>.wandb` file, decoded with wandb's own
    protobuf classes. The file is a LevelDB-style log (a 7-byte header, then 32 KiB blocks of
    chunks `crc32c:4 length:2 type:1 data`); wandb 0.31 ships no Python reader of it.

    wandb's service process writes the file on its own time: `finish()` can return before the
    last records are on disk (seen on a loaded machine), so the file is read again until its
    `exit` record is there, for up to `wait` seconds."""
    import time

    deadline = time.monotonic() + wait
    while True:
        rows, complete = _read_wandb_records(run_dir)
        if complete or time.monotonic() > deadline:
            assert complete, f"{run_dir}: no exit record after {wait:.0f} s"
            return rows
        time.sleep(0.5)


def _read_wandb_records(run_dir: Path) -> tuple[list[dict], bool]:
    from wandb.proto import wandb_internal_pb2

    (path,) = run_dir.glob("run-*.wandb")
    raw = path.read_bytes()
    complete = False
    assert raw[:4] == b":W&B"
    block, pos, pending, rows = 32768, 7, b"", []
    while pos + 7 <= len(raw):
        if block - pos % block < 7:  # a block's tail too short for a chunk header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", raw[pos : pos + 7])
        if (kind == 0 and length == 0) or pos + 7 + length > len(raw):  # the end, or a chunk still being written
            break
        pending += raw[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL or LAST: one record complete
            rec = wandb_internal_pb2.Record()
            rec.ParseFromString(pending)
            pending = b""
            if rec.WhichOneof("record_type") == "history":
                rows.append(
                    {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in rec.history.item}
                )
            complete |= rec.WhichOneof("record_type") == "exit"
    return rows, complete


def scalars_by_tag(history: list[dict]) -> dict[str, dict[int, float]]:
    """W&B history as TensorBoard holds it: tag -> {x: value}, x from the family's own axis."""
    out: dict[str, dict[int, float]] = {}
    for row in history:
        for key, value in row.items():
            family = key.split("/")[0]
            if key.startswith("_") or key == f"{family}/x":
                continue
            out.setdefault(key, {})[int(row[f"{family}/x"])] = value
    return out


def read_tensorboard(folder: Path) -> dict[str, dict[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder))
    acc.Reload()
    return {tag: {e.step: e.value for e in acc.Scalars(tag)} for tag in acc.Tags()["scalars"]}


@pytest.fixture
def wandb_offline(monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_PROJECT", "raise-select-tests")


def test_parse_report_to(wandb_offline):
    assert parse_report_to("none") == [] and parse_report_to(None) == []
    assert parse_report_to("all") == ["tensorboard", "wandb"]
    assert parse_report_to("wandb, tensorboard") == ["tensorboard", "wandb"]
    assert parse_report_to(["wandb"]) == ["wandb"]
    assert parse_report_to("none", tensorboard=True) == ["tensorboard"]  # the older flag
    assert parse_report_to("tensorboard", tensorboard=True) == ["tensorboard"]
    with pytest.raises(UserError, match="report_to: unknown target 'mlflow'; available: none, tensorboard, wandb, all"):
        parse_report_to("mlflow")


def test_tensorboard_flag_still_logs_steps_at_the_global_step(tmp_path):
    run = RunFolder(tmp_path, report_to=parse_report_to("none", tensorboard=True))
    for k in range(2):
        for t in (1, 2, 3):
            run.metric({"kind": "step", "round": k, "steps": 3, "step": t, "P": -float(10 * k + t), "loss": 1.0})
        run.metric({"kind": "round", "round": k, "return": 0.5 * k, "time": {"train": 1.0}})
    run.close()
    tb = read_tensorboard(tmp_path / "tensorboard")
    # x = round x steps + step: 1, 2, 3 then 4, 5, 6
    assert tb["step/P"] == {1: -1.0, 2: -2.0, 3: -3.0, 4: -11.0, 5: -12.0, 6: -13.0}
    assert tb["round/return"] == {0: 0.0, 1: 0.5}
    assert set(tb) == {"step/P", "step/loss", "round/return"}  # nested and non-numeric fields are not scalars


def test_train_policy_sends_the_same_scalars_to_tensorboard_and_wandb(tmp_path, tiny_model_dir, wandb_offline):
    from raise_select.data.pools import load_pool
    from raise_select.policy import PolicyConfig
    from raise_select.training import TrainPolicyConfig, train_policy

    rows = plus_rows(8)
    (tmp_path / "pool.json").write_text(json.dumps(rows))
    (tmp_path / "val.json").write_text(json.dumps(rows[:2]))
    pool = load_pool(tmp_path / "pool.json")
    random_features(pool.ids, 2).write(tmp_path / "features")
    out = tmp_path / "run"
    train_policy(
        TrainPolicyConfig(
            pool=str(tmp_path / "pool.json"),
            features=str(tmp_path / "features"),
            model=str(tiny_model_dir),
            val=str(tmp_path / "val.json"),
            rounds=2,
            steps=2,
            lr=1e-3,
            max_length=64,
            policy=PolicyConfig(per_class=1),
            out=str(out),
            report_to="tensorboard,wandb",
        )
    )
    (run_dir,) = (out / "wandb").glob("offline-run-*")
    logged = scalars_by_tag(read_wandb_history(run_dir))
    tb = read_tensorboard(out / "tensorboard")
    assert set(logged) == set(tb) and {"step/P", "step/reward", "step/loss", "round/return", "round/final_P"} <= set(tb)
    for tag in tb:
        assert logged[tag].keys() == tb[tag].keys(), tag
        np.testing.assert_allclose([logged[tag][x] for x in tb[tag]], list(tb[tag].values()), rtol=1e-6, err_msg=tag)
    # ... and both are metrics.jsonl's numbers
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [m for m in metrics if m["kind"] == "step"]
    assert logged["step/loss"] == {m["round"] * 2 + m["step"]: m["loss"] for m in steps}
    assert logged["round/return"] == {m["round"]: m["return"] for m in metrics if m["kind"] == "round"}


def test_baseline_training_reports_every_step_loss(tmp_path, tiny_model_dir, wandb_offline):
    from raise_select.cli.main import app

    rows = [{"instruction": f"Say {i}.", "input": "", "output": f"{i}"} for i in range(12)]
    (tmp_path / "pool.json").write_text(json.dumps(rows))
    out = tmp_path / "rand"
    result = CliRunner().invoke(
        app,
        [
            "baseline",
            "--method",
            "random",
            "--pool",
            str(tmp_path / "pool.json"),
            "--model",
            str(tiny_model_dir),
            "--budget",
            "4",
            "--batch-size",
            "2",
            "--epochs",
            "2",
            "--train",
            "--max-length",
            "32",
            "--out",
            str(out),
            "--report-to",
            "wandb",
        ],
    )
    assert result.exit_code == 0, result.output
    (run_dir,) = (out / "wandb").glob("offline-run-*")
    logged = scalars_by_tag(read_wandb_history(run_dir))
    assert set(logged) == {"step/loss"}
    assert sorted(logged["step/loss"]) == [1, 2, 3, 4]  # 2 epochs x 4 rows / B = 2
    assert all(v > 0 for v in logged["step/loss"].values())


def test_unknown_report_target_is_one_line_exit_2(tmp_path):
    from raise_select.cli.main import app

    (tmp_path / "pool.json").write_text(json.dumps([{"instruction": "a", "input": "", "output": "b"}] * 4))
    result = CliRunner().invoke(
        app,
        [
            "baseline",
            "--method",
            "random",
            "--pool",
            str(tmp_path / "pool.json"),
            "--out",
            str(tmp_path / "o"),
            "--report-to",
            "mlflow",
        ],
    )
    assert result.exit_code == 2
    assert "report_to: unknown target 'mlflow'" in result.output and "Traceback" not in result.output
