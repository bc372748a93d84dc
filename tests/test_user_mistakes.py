"""User mistakes around `select`, the exports and `--report-to`: each is one line naming the
file, field or setting and exit 2, refused before any work and leaving nothing behind, or it
works. No test here reaches a network: the W&B settings are checked from the environment."""

import json
import subprocess
import sys
import time

import pytest
from typer.testing import CliRunner

from raise_select.cli.main import app
from raise_select.data.pools import load_pool
from raise_select.errors import UserError

runner = CliRunner()
N = 12


def _refused(result, *fragments):
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert result.exit_code == 2 and len(lines) == 1, result.output
    assert "Traceback" not in result.output and "internal error" not in result.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def _cli(*args):
    return runner.invoke(app, [str(a) for a in args])


def _pool(path, n=N, order=None):
    rows = [{"instruction": f"do {i}", "input": "", "output": f"y{i}"} for i in range(n)]
    rows = [rows[i] for i in order] if order is not None else rows
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _selection(tmp_path, name="b", **changes):
    """A baseline folder whose selection.json is what `baseline` writes for a static method
    with scores (rows 2, 5, 7, 9 chosen), edited by `changes`."""
    pool_path = tmp_path / "pool.jsonl"
    if not pool_path.exists():
        _pool(pool_path)
    pool = load_pool(pool_path)
    indices = [2, 5, 7, 9]
    record = {
        "method": "ifd",
        "options": {},
        "dynamic": False,
        "budget": 4.0,
        "budget_count": 4,
        "pool_size": len(pool),
        "batch_size": 2,
        "steps": 6,
        "epochs": 3,
        "seed": 0,
        "indices": indices,
        "ids": [pool.ids[i] for i in indices],
        "scores": [0.9, 0.8, 0.7, 0.6],
        "info": {},
        "pool_scores": [i / 10 for i in range(len(pool))],
        "pool": str(pool_path),
        "pool_format": "alpaca",
        "limit": None,
        "features": "",
        "fingerprint": "x",
        "pool_fingerprint": pool.fingerprint,
    }
    record.update(changes)
    folder = tmp_path / name
    folder.mkdir()
    (folder / "selection.json").write_text(json.dumps(record))
    return folder, pool


def _no_temp_leftovers(folder):
    return [p.name for p in folder.rglob("*") if ".tmp" in p.name or p.name.endswith(".old")]


# ---------------------------------------------------------------- select: the run's pool and files


def test_a_pool_with_two_unchosen_rows_swapped_is_refused_by_its_fingerprint(tmp_path):
    run, _ = _selection(tmp_path)
    order = list(range(N))
    order[0], order[1] = order[1], order[0]  # rows 0 and 1 are not chosen: same size, same chosen ids
    other = _pool(tmp_path / "swapped.jsonl", order=order)
    _refused(
        _cli("select", "--run", run, "--pool", other, "--out", tmp_path / "hf"),
        "selection.json",
        "fingerprint",
        "--pool",
    )
    assert not (tmp_path / "hf").exists()
    assert _cli("select", "--run", run, "--out", tmp_path / "hf").exit_code == 0  # its own pool still works


def test_select_features_that_do_not_exist_are_refused(tmp_path):
    run, _ = _selection(tmp_path)
    _refused(
        _cli("select", "--run", run, "--out", tmp_path / "hf", "--features", tmp_path / "nope"),
        "--features",
        "nope",
        "not found",
    )
    assert not (tmp_path / "hf").exists()


@pytest.mark.parametrize(
    "change,fragments",
    [
        ({"pool_scores": [0.5] * 5}, ["pool_scores", "5 values", f"{N} rows"]),
        ({"indices": [2, 5, 7, 40]}, ["indices", "40", f"{N} rows"]),
        ({"indices": [2, 5, 7, 9, 10]}, ["5 indices", "ids"]),  # 5 indices, 4 ids
        ({"ids": None}, ["ids"]),
        ({"scores": [0.9]}, ["scores", "1 value", "4 indices"]),
        ({"indices": [2, 5, "7", 9]}, ["indices", "'7'"]),
    ],
    ids=["pool-scores-short", "index-past-end", "indices-vs-ids", "ids-null", "scores-short", "index-text"],
)
def test_a_hand_edited_selection_json_is_one_line(tmp_path, change, fragments):
    run, pool = _selection(tmp_path, **change)
    _refused(_cli("select", "--run", run, "--out", tmp_path / "hf"), "selection.json", *fragments)
    assert not (tmp_path / "hf").exists() and _no_temp_leftovers(tmp_path) == []


def test_eight_ids_for_five_indices_is_refused(tmp_path):
    pool_path = _pool(tmp_path / "pool.jsonl")
    ids = load_pool(pool_path).ids
    run, _ = _selection(tmp_path, indices=[1, 2, 3, 4, 5], ids=ids[1:9], scores=None)
    _refused(_cli("select", "--run", run, "--out", tmp_path / "hf"), "selection.json", "5 indices", "8 ids")


# ---------------------------------------------------------------- select: where it writes


def test_select_out_dot_in_an_empty_folder_writes_there(tmp_path, monkeypatch):
    run, _ = _selection(tmp_path)
    here = tmp_path / "empty"
    here.mkdir()
    monkeypatch.chdir(here)
    result = _cli("select", "--run", run, "--out", ".")
    assert result.exit_code == 0, result.output
    assert (here / "scores.parquet").is_file() and (here / "README.md").is_file()
    assert _no_temp_leftovers(tmp_path) == []


@pytest.mark.parametrize("name", ["chosen.parquet", "chosen.csv", "chosen.arrow"])
def test_an_out_named_like_a_file_of_another_kind_is_refused(tmp_path, name):
    run, _ = _selection(tmp_path)
    _refused(_cli("select", "--run", run, "--out", tmp_path / name), name, ".json", ".jsonl", "folder")
    assert not (tmp_path / name).exists()


def test_a_second_select_into_a_busy_folder_is_refused(tmp_path):
    run, _ = _selection(tmp_path)
    hf = tmp_path / "hf"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from raise_select.io import lock_output; lock_output(sys.argv[1], 'select'); "
            "print('locked', flush=True); time.sleep(60)",
            str(hf),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        _refused(_cli("select", "--run", run, "--out", hf), "--out", "in use by another run")
        assert sorted(p.name for p in hf.iterdir()) == [".raise-select.lock"]
    finally:
        holder.kill()
        holder.wait()
    result = _cli("select", "--run", run, "--out", hf)  # the lock died with its holder
    assert result.exit_code == 0, result.output
    assert _no_temp_leftovers(tmp_path) == []


def test_an_export_leaves_another_exports_temporary_folder_alone(tmp_path):
    """Temporary folders are per process: a name a second export could also pick (the fixed
    `.hf.tmp` of earlier versions) is neither used nor removed."""
    run, _ = _selection(tmp_path)
    other = tmp_path / ".hf.tmp"
    other.mkdir()
    (other / "half-written").write_text("another export's")
    assert _cli("select", "--run", run, "--out", tmp_path / "hf").exit_code == 0
    assert (other / "half-written").read_text() == "another export's"
    assert not [p for p in (tmp_path / "hf").iterdir() if p.name.endswith(".tmp")]


# ---------------------------------------------------------------- --report-to


@pytest.fixture
def no_wandb_login(tmp_path, monkeypatch):
    """An environment without any W&B login: no key, no netrc, no mode."""
    for name in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_PROJECT", "WANDB_BASE_URL", "WANDB_IDENTITY_TOKEN_FILE"):
        monkeypatch.delenv(name, raising=False)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("NETRC", str(home / ".netrc"))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(home / ".config" / "wandb"))
    monkeypatch.chdir(tmp_path)  # no wandb/settings of the working directory
    return home


def _jobs(tmp_path):
    pool = _pool(tmp_path / "pool.jsonl")
    common = ["--pool", pool, "--features", tmp_path / "feats", "--model", tmp_path / "model", "--val", pool]
    study = tmp_path / "study.yaml"
    study.write_text(json.dumps({"study": {"pool": str(pool), "model": str(tmp_path / "model"), "val": str(pool)}}))
    return {
        "train-policy": ["train-policy", *common, "--out", tmp_path / "tp", "--report-to", "wandb"],
        "finetune": ["finetune", *common, "--policy", tmp_path / "p", "--out", tmp_path / "ft", "--report-to", "wandb"],
        "baseline": ["baseline", "--method", "random", "--pool", pool, "--out", tmp_path / "bl", "--report-to", "all"],
        "study": ["study", study, "--out", tmp_path / "st", "--report-to", "wandb"],
    }


@pytest.mark.parametrize(
    "env,fragments",
    [
        ({}, ["report_to wandb", "no W&B login", "wandb login", "WANDB_API_KEY", "WANDB_MODE=offline"]),
        ({"WANDB_MODE": "bogus"}, ["WANDB_MODE=bogus", "offline", "online", "disabled"]),
        ({"WANDB_MODE": "offline", "WANDB_PROJECT": "team/run?x#1"}, ["WANDB_PROJECT", "team/run?x#1", "cannot"]),
        ({"WANDB_API_KEY": "not-a-key"}, ["WANDB_API_KEY", "malformed", "wandb.ai/authorize"]),
    ],
    ids=["no-login", "bad-mode", "bad-project", "bad-key"],
)
def test_wandb_settings_are_refused_before_any_work(tmp_path, monkeypatch, no_wandb_login, env, fragments):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    for command, args in _jobs(tmp_path).items():
        _refused(_cli(*args), *fragments)
    assert not any((tmp_path / d).exists() for d in ("tp", "ft", "bl", "st"))  # not even a lock


def test_wandb_settings_that_work_without_a_network_pass(tmp_path, monkeypatch, no_wandb_login):
    from raise_select.training.reporting import parse_report_to

    monkeypatch.setenv("WANDB_MODE", "offline")
    assert parse_report_to("wandb") == ["wandb"]
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert parse_report_to("all") == ["tensorboard", "wandb"]
    monkeypatch.delenv("WANDB_MODE")
    with pytest.raises(UserError, match="no W&B login"):
        parse_report_to("wandb")
    # a login: `wandb login` writes the key to the netrc file, for the server's host
    (no_wandb_login / ".netrc").write_text(f"machine api.wandb.ai\n  login user\n  password {'a' * 40}\n")
    assert parse_report_to("wandb") == ["wandb"]
    monkeypatch.setenv("WANDB_BASE_URL", "https://wandb.example.com")  # another server: another login
    with pytest.raises(UserError, match="wandb.example.com"):
        parse_report_to("wandb")
    monkeypatch.setenv("WANDB_API_KEY", "local-" + "0123456789abcdef" * 3)
    assert parse_report_to("wandb") == ["wandb"]
    # what `wandb offline` and `wandb login --host` write into wandb's settings file
    monkeypatch.delenv("WANDB_API_KEY")
    monkeypatch.delenv("WANDB_BASE_URL")
    settings = no_wandb_login / ".config" / "wandb" / "settings"
    settings.parent.mkdir(parents=True)
    settings.write_text("[default]\nbase_url = https://wandb.example.com\n")
    with pytest.raises(UserError, match="no W&B login for wandb.example.com"):
        parse_report_to("wandb")
    settings.write_text("[default]\nbase_url = https://wandb.example.com\nmode = offline\n")
    assert parse_report_to("wandb") == ["wandb"]
    settings.write_text("[default]\nmode = nonsense\n")
    with pytest.raises(UserError, match="mode \\(wandb settings file\\)=nonsense"):
        parse_report_to("wandb")
    assert parse_report_to("tensorboard") == ["tensorboard"]  # W&B settings are not read without wandb


@pytest.mark.parametrize("name", ["tensorboard", "wandb"])
def test_a_report_folder_that_is_a_file_is_refused_before_work(tmp_path, monkeypatch, name):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    pool = _pool(tmp_path / "pool.jsonl")
    out = tmp_path / "bl"
    out.mkdir()
    (out / name).write_text("not a folder")
    started = time.perf_counter()
    _refused(
        _cli("baseline", "--method", "random", "--pool", pool, "--out", out, "--report-to", name),
        str(out / name),
        "is a file",
    )
    assert time.perf_counter() - started < 60
    assert sorted(p.name for p in out.iterdir() if p.name != ".raise-select.lock") == [name]


def test_a_report_folder_that_is_a_file_is_one_line_for_a_training_run(tmp_path):
    from raise_select.training.runs import RunFolder

    (tmp_path / "tensorboard").write_text("x")
    with pytest.raises(UserError, match="tensorboard: exists and is a file"):
        RunFolder(tmp_path, report_to=["tensorboard"])
