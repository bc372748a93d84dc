"""Hostile and awkward input through every command: each user error is one line on stderr
naming the file, row and field (or the flag) with exit status 2, never a traceback, and no
input is destroyed. Most cases run in process (CliRunner); a few run `raise-select` as a
real subprocess, where the entry point, exit codes and non-terminal logging are what is
being tested. One tiny pool, features folder and train-policy run serve the whole module.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from conftest import plus_rows, random_features
from raise_select.cli.main import app
from raise_select.data.pools import load_pool
from raise_select.progress import LogProgress

CLASSES = 3
LOG_LINE = re.compile(r"^\d\d:\d\d:\d\d (DEBUG|INFO|WARNING) ")
runner = CliRunner()


def cli(*args):
    return runner.invoke(app, [str(a) for a in args])


def subprocess_cli(*args, env=None, code=None):
    """`raise-select ARGS` in a fresh interpreter (stderr is a pipe, not a terminal)."""
    cmd = [sys.executable, "-c", code or "from raise_select.cli.main import main; main()", *map(str, args)]
    return subprocess.run(
        cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    )


TQDM_BAR = re.compile(r"\d+%\|")


def problem_lines(stderr: str) -> list[str]:
    """stderr without the log lines of work done before the error (nor, in process, a library's
    progress bar: `raise-select` itself turns those off when stderr is not a terminal, which
    the subprocess tests check)."""
    return [
        line for line in stderr.splitlines() if line.strip() and not LOG_LINE.match(line) and not TQDM_BAR.search(line)
    ]


def assert_user_error(result, *fragments):
    """Exit 2, exactly one line that starts with `error:` and holds every fragment, no traceback."""
    code = getattr(result, "exit_code", getattr(result, "returncode", None))
    stderr = result.stderr
    lines = problem_lines(stderr)
    assert code == 2, (code, stderr, getattr(result, "exception", None))
    assert "Traceback" not in stderr + (result.stdout or "")
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


# ---------------------------------------------------------------- fixtures (built once)


@pytest.fixture(scope="module")
def env(tmp_path_factory, tiny_model_dir):
    """A 12-row pool, a 3-row validation file, random features in 3 classes and a 2-round
    train-policy run made by a real subprocess (its stderr is kept for the progress check)."""
    root = tmp_path_factory.mktemp("bad-input")
    rows = plus_rows(12)
    (root / "pool.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (root / "val.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:3]))
    pool = load_pool(root / "pool.jsonl")
    random_features(pool.ids, CLASSES).write(root / "features")
    common = [
        "--pool",
        root / "pool.jsonl",
        "--features",
        root / "features",
        "--model",
        tiny_model_dir,
        "--val",
        root / "val.jsonl",
        "--steps",
        2,
        "--per-class",
        1,
        "--lr",
        1e-3,
        "--max-length",
        64,
    ]
    run = subprocess_cli(
        "train-policy", *common, "--out", root / "run", "--rounds", 2, env={"RAISE_SELECT_PROGRESS_SECONDS": "0"}
    )
    assert run.returncode == 0, run.stderr
    return {"root": root, "model": tiny_model_dir, "common": common, "train_stderr": run.stderr}


def features_copy(env, name: str) -> Path:
    dst = env["root"] / f"features-{name}"
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(env["root"] / "features", dst)
    return dst


def rewrite_parquet(folder: Path, column: str, values) -> None:
    table = pq.read_table(folder / "features.parquet")
    i = table.column_names.index(column)
    array = values if isinstance(values, (pa.Array, pa.ChunkedArray)) else pa.array(values)
    pq.write_table(table.set_column(i, column, array), folder / "features.parquet")


def train_policy(env, features, out_name="tp", *extra):
    args = list(env["common"])
    args[args.index("--features") + 1] = features
    return cli("train-policy", *args, "--rounds", 1, "--out", env["root"] / out_name, *extra)


def _with(args, **flags):
    """`args` (a flag list) with the values of some flags replaced: `_with(common, pool=p)`."""
    args = list(args)
    for flag, value in flags.items():
        args[args.index(f"--{flag}") + 1] = value
    return args


# ---------------------------------------------------------------- pools

POOL_FILES = [
    (
        "bad.jsonl",
        b'{"instruction": "a", "output": "b"}\n{"instruction": "a\xff", "output": "c"}\n',
        ["bad.jsonl, row 1, line 2", "not UTF-8"],
    ),
    (
        "bad.json",
        b'[{"instruction": "a", "output": "b"},\n {"instruction": "\xfe", "output": "c"}]',
        ["bad.json: line 2", "not UTF-8"],
    ),
    ("bad.csv", b"instruction,output\na,b\n\xff,c\n", ["bad.csv: line 3", "not UTF-8"]),
    ("surrogate.jsonl", b'{"instruction": "a\\ud800", "output": "b"}\n', ["row 0, field 'instruction'", "surrogate"]),
    ("number.jsonl", b'{"instruction": "a", "output": 42}\n', ["row 0, field 'output'", "expected text, got int 42"]),
    ("bool.jsonl", b'{"instruction": "a", "output": true}\n', ["row 0, field 'output'", "got bool true"]),
    ("short.csv", b"instruction,input,output\na,b,c\nd,e\n", ["short.csv, row 1, field 'output'", "missing cell"]),
    ("long.csv", b"instruction,output\na,b,c\n", ["long.csv, row 0", "3 cells, the header has 2"]),
]


@pytest.mark.parametrize("name,content,fragments", POOL_FILES, ids=[p[0] for p in POOL_FILES])
def test_bad_pool_files_name_file_row_and_field(env, tmp_path, name, content, fragments):
    (tmp_path / name).write_bytes(content)
    result = cli("featurize", "--pool", tmp_path / name, "--model", env["model"], "--out", tmp_path / "feats")
    assert_user_error(result, *fragments)


def test_integer_parquet_response_is_refused_and_a_csv_byte_order_mark_is_not_part_of_the_header(tmp_path):
    pq.write_table(
        pa.table({"instruction": ["a", "b"], "output": pa.array([1, 2], pa.int64())}), tmp_path / "p.parquet"
    )
    result = cli("tiny-model", "--pool", tmp_path / "p.parquet", "--out", tmp_path / "m")
    assert_user_error(result, "p.parquet, row 0, field 'output'", "expected text, got int 1")
    (tmp_path / "bom.csv").write_bytes(b"\xef\xbb\xbfinstruction,output\nhello,world\n")
    assert load_pool(tmp_path / "bom.csv").examples[0].messages == (("user", "hello"), ("assistant", "world"))


def test_non_utf8_validation_file_and_config(env, tmp_path):
    (tmp_path / "val.jsonl").write_bytes(b'{"instruction": "\xc3(", "output": "x"}\n')
    args = list(env["common"])
    args[args.index("--val") + 1] = tmp_path / "val.jsonl"
    result = cli("train-policy", *args, "--rounds", 1, "--out", tmp_path / "run")
    assert_user_error(result, "val.jsonl, row 0, line 1", "not UTF-8")
    (tmp_path / "c.yaml").write_bytes(b"featurize:\n  classes: \xff\n")
    result = cli(
        "featurize",
        "--pool",
        env["root"] / "pool.jsonl",
        "--model",
        env["model"],
        "--out",
        tmp_path / "f",
        "--config",
        tmp_path / "c.yaml",
    )
    assert_user_error(result, "c.yaml: line 2", "not UTF-8")


# ---------------------------------------------------------------- settings

SETTINGS = [
    (["--set", "featurize.classes=[1,"], ["--set featurize.classes=[1,", "not valid YAML"]),
    (["--set", "featurize.classes=true"], ["'classes' must be a whole number, got true"]),
    (["--set", "featurize.sem_dim=null"], ["'sem_dim' needs a value"]),
    (["--set", "featurize.classes=.inf"], ["'classes' must be a whole number"]),
    (["--limit", "0"], ["--limit 0", "at least 1"]),
    (["--limit", "-5"], ["--limit -5", "at least 1"]),
    (["--device", "foo"], ["--device 'foo': not a torch device"]),
    (["--set", "=3"], ["override '=3': the key before '=' is empty"]),
    (["--set", "featurize.template=[a]"], ["'template' must be text, got ['a']"]),
]


@pytest.mark.parametrize("args,fragments", SETTINGS, ids=[" ".join(a) for a, _ in SETTINGS])
def test_bad_featurize_settings(env, tmp_path, args, fragments):
    result = cli(
        "featurize", "--pool", env["root"] / "pool.jsonl", "--model", env["model"], "--out", tmp_path / "f", *args
    )
    assert_user_error(result, *fragments)


EVALUATE_SETTINGS = [
    ("--limit", "0", "limit = 0"),
    ("--limit", "-1", "limit = -1"),
    ("--batch-size", "0", "batch_size = 0"),
    ("--num-fewshot", "-1", "num_fewshot = -1"),
    ("--max-length", "1", "max_length = 1"),
]


def test_bad_evaluate_settings(env, tmp_path):
    for flag, value, fragment in EVALUATE_SETTINGS:
        result = cli("evaluate", "--model", env["model"], "--out", tmp_path / "res", flag, value)
        assert_user_error(result, "invalid evaluate settings", fragment)


def test_a_max_length_that_leaves_no_response_or_too_few_distinct_rows(env, tmp_path):
    pool = env["root"] / "pool.jsonl"
    result = cli("featurize", "--pool", pool, "--model", env["model"], "--out", tmp_path / "f2", "--max-length", 2)
    assert_user_error(result, "no example is left to featurize", "raise --max-length")
    result = cli(
        "featurize",
        "--pool",
        pool,
        "--model",
        env["model"],
        "--out",
        tmp_path / "f3",
        "--max-length",
        3,
        "--classes",
        2,
    )
    assert_user_error(result, "--classes 2: K-means found only 1 distinct class(es)", "use --classes 1")
    assert not (tmp_path / "f3" / "features.parquet").exists()


def test_null_in_a_config_file_and_a_non_finite_budget(env, tmp_path):
    (tmp_path / "c.yaml").write_text("featurize:\n  sem_dim: null\n")
    result = cli(
        "featurize",
        "--pool",
        env["root"] / "pool.jsonl",
        "--model",
        env["model"],
        "--out",
        tmp_path / "f",
        "--config",
        tmp_path / "c.yaml",
    )
    assert_user_error(result, "c.yaml", "'sem_dim' needs a value")
    (tmp_path / "c.yaml").write_text("featurize: 5\n")
    result = cli(
        "featurize",
        "--pool",
        env["root"] / "pool.jsonl",
        "--model",
        env["model"],
        "--out",
        tmp_path / "f",
        "--config",
        tmp_path / "c.yaml",
    )
    assert_user_error(result, "c.yaml: section 'featurize' must be a mapping of settings, got 5")
    for budget in ("nan", "inf"):
        result = cli(
            "baseline",
            "--method",
            "random",
            "--pool",
            env["root"] / "pool.jsonl",
            "--budget",
            budget,
            "--out",
            tmp_path / "b",
        )
        assert_user_error(result, "'budget' must be a finite number")


def test_an_unknown_option_in_a_study_method_section_stops_the_study_before_any_cell(env, tmp_path):
    head = (
        f"study:\n  pool: {env['root'] / 'pool.jsonl'}\n  build_model: test\n"
        f"  out: {tmp_path / 'st'}\n  methods: [random, raise]\n"
    )
    for section, fragments in (
        ("random:\n  foo: 1\n", ["method 'random': unknown option(s) foo; it takes no options"]),
        ("raise:\n  roundz: 1\n", ["section 'raise': unknown option(s) roundz; available: batch_size"]),
    ):
        (tmp_path / "study.yaml").write_text(head + section)
        assert_user_error(cli("study", tmp_path / "study.yaml"), "study.yaml", *fragments)
        assert not (tmp_path / "st" / "base_model").exists()


# ---------------------------------------------------------------- features


def _inf_logp(folder):
    t = pq.read_table(folder / "features.parquet").column("logp_cond").to_numpy().copy()
    t[2] = np.inf
    rewrite_parquet(folder, "logp_cond", t)


def _huge_length(folder):
    rewrite_parquet(folder, "len_prompt", np.r_[8.0, 1e308, np.full(10, 8.0)])


def _inf_sem(folder):
    sem = pq.read_table(folder / "features.parquet").column("sem").combine_chunks()
    flat = sem.flatten().to_numpy().copy()
    flat[5] = -np.inf
    rewrite_parquet(folder, "sem", pa.FixedSizeListArray.from_arrays(pa.array(flat), 4))


def _ragged_sem(folder):
    rewrite_parquet(folder, "sem", pa.array([[0.1] * (1 + i % 2) for i in range(12)], pa.list_(pa.float32())))


def _meta(update):
    def edit(folder):
        meta = json.loads((folder / "meta.json").read_text())
        (folder / "meta.json").write_text(json.dumps({**meta, **update}))

    return edit


def _corrupt_meta(folder):
    (folder / "meta.json").write_text('{"classes": 3,')


def _negative_cluster(folder):
    rewrite_parquet(folder, "cluster", pa.array([-1] + [i % CLASSES for i in range(1, 12)], pa.int32()))


FEATURE_CASES = [
    ("inf-logp", _inf_logp, ["features.parquet: row 2, field 'logp_cond': infinite feature"]),
    ("huge-length", _huge_length, ["row 1, field 'len_prompt': out-of-range (|x| > 1e+15) feature (1e+308)"]),
    ("inf-sem", _inf_sem, ["row 1, field 'sem': infinite feature"]),
    ("ragged-sem", _ragged_sem, ["field 'sem': expected a fixed-size list"]),
    ("meta-10-classes", _meta({"classes": 10}), ["meta.json (field 'classes') says 10 classes", "3, 4, 5"]),
    ("meta-classes-text", _meta({"classes": "three"}), ["meta.json, field 'classes'", "'three'"]),
    ("meta-corrupt", _corrupt_meta, ["meta.json: not valid JSON"]),
    ("negative-cluster", _negative_cluster, ["row 0, field 'cluster'", "negative class id"]),
    (
        "float-cluster",
        lambda d: rewrite_parquet(d, "cluster", pa.array([float(i % CLASSES) for i in range(12)])),
        ["field 'cluster': expected integer class ids, got double"],
    ),
    (
        "missing-id",
        lambda d: rewrite_parquet(d, "id", pa.array([None] + [f"x{i}" for i in range(1, 12)], pa.string())),
        ["row 0, field 'id': missing value"],
    ),
    (
        "made-at-512",
        _meta({"max_length": 512}),
        [
            "meta.json, field 'max_length': the features were computed with max_length 512, "
            "this run uses --max-length 64"
        ],
    ),
]


@pytest.mark.parametrize("name,corrupt,fragments", FEATURE_CASES, ids=[c[0] for c in FEATURE_CASES])
def test_corrupt_features_are_refused_before_training(env, name, corrupt, fragments):
    folder = features_copy(env, name)
    corrupt(folder)
    result = train_policy(env, folder, f"tp-{name}")
    assert_user_error(result, *fragments)
    assert not (env["root"] / f"tp-{name}" / "policy").exists()


def test_features_given_as_a_file_and_finetune_with_infinite_features(env):
    result = train_policy(env, env["root"] / "pool.jsonl")
    line = assert_user_error(result, "pool.jsonl: a file, not a featurize output folder")
    assert "featurize --out" not in line.replace("`raise-select featurize --out` wrote", "")
    folder = features_copy(env, "ft-inf")
    _inf_logp(folder)
    args = list(env["common"])
    args[args.index("--features") + 1] = folder
    result = cli("finetune", "--policy", env["root"] / "run" / "policy", *args, "--out", env["root"] / "ft-inf")
    assert_user_error(result, "row 2, field 'logp_cond': infinite feature")


# ---------------------------------------------------------------- model and policy files


def _truncate(path: Path) -> None:
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size // 2)


def test_broken_model_folders(env, tmp_path):
    truncated = tmp_path / "truncated"
    shutil.copytree(env["model"], truncated)
    _truncate(truncated / "model.safetensors")
    no_tokenizer = tmp_path / "no-tokenizer"
    shutil.copytree(env["model"], no_tokenizer)
    for f in no_tokenizer.iterdir():
        if f.name.startswith(("tokenizer", "special_tokens")):
            f.unlink()
    pool = env["root"] / "pool.jsonl"
    result = cli("featurize", "--pool", pool, "--model", truncated, "--out", tmp_path / "f1")
    assert_user_error(result, "truncated: cannot load a causal LM", "truncated or corrupt")
    result = cli("featurize", "--pool", pool, "--model", no_tokenizer, "--out", tmp_path / "f2")
    assert_user_error(result, "no-tokenizer: no tokenizer files here", "tokenizer.json")
    data = tmp_path / "data" / "arc_challenge"
    data.mkdir(parents=True)
    for split in ("Train", "Test"):
        (data / f"ARC-Challenge-{split}.jsonl").write_text(json.dumps(ARC_ROW) + "\n")
    result = cli(
        "evaluate",
        "--model",
        truncated,
        "--tasks",
        "arc_challenge",
        "--data-dir",
        tmp_path / "data",
        "--out",
        tmp_path / "res",
    )
    assert_user_error(result, "truncated': cannot be loaded")


def _nan_actor(folder: Path) -> None:
    from safetensors.torch import load_file, save_file

    weights = load_file(str(folder / "actor.safetensors"))
    key = sorted(weights)[0]
    weights[key].view(-1)[0] = float("nan")
    save_file(weights, str(folder / "actor.safetensors"))


POLICY_CASES = [
    (
        "truncated-actor",
        lambda d: _truncate(d / "actor.safetensors"),
        ["actor.safetensors: not a readable safetensors file"],
    ),
    ("missing-critic", lambda d: (d / "critic.safetensors").unlink(), ["critic.safetensors: missing"]),
    ("nan-actor", _nan_actor, ["actor.safetensors: weight", "1 non-finite value(s)"]),
    ("empty-policy-json", lambda d: (d / "policy.json").write_text("{}"), ["policy.json, field 'config': missing"]),
]


@pytest.mark.parametrize("name,corrupt,fragments", POLICY_CASES, ids=[c[0] for c in POLICY_CASES])
def test_broken_policy_folders(env, tmp_path, name, corrupt, fragments):
    policy = tmp_path / "policy"
    shutil.copytree(env["root"] / "run" / "policy", policy)
    corrupt(policy)
    result = cli("finetune", "--policy", policy, *env["common"], "--out", tmp_path / "ft")
    assert_user_error(result, *fragments)
    assert not (tmp_path / "ft" / "model").exists()


def test_a_damaged_run_folder_is_refused_on_resume(env, tmp_path):
    for name, damage, fragment in (
        ("latest.json", "{oops", "checkpoint/latest.json: damaged checkpoint pointer"),
        ("config.yaml", "a: [\n", "config.yaml: damaged"),
    ):
        run = tmp_path / f"run-{name}"
        shutil.copytree(env["root"] / "run", run)
        (run / ("checkpoint/latest.json" if name == "latest.json" else name)).write_text(damage)
        result = cli("train-policy", *env["common"], "--rounds", 3, "--out", run)
        assert_user_error(result, fragment, "use a new --out")


def test_non_finite_policy_weights_are_neither_used_nor_saved(tmp_path):
    import torch

    from raise_select.errors import UserError
    from raise_select.policy import PolicyConfig, RaisePolicy, StaticState

    n = 12
    table = random_features([f"x{i}" for i in range(n)], CLASSES)
    policy = RaisePolicy(StaticState.from_features(table), PolicyConfig(per_class=1, hidden=8))
    with torch.no_grad():
        next(policy.actor.parameters()).view(-1)[0] = float("inf")
    with pytest.raises(UserError, match="scores of .* instruction\\(s\\) are not finite"):
        policy.act(0.0, 0.0, torch.zeros(n), explore=True)
    with pytest.raises(UserError, match="the actor being saved .* non-finite value"):
        policy.save(tmp_path / "policy")
    assert not (tmp_path / "policy" / "actor.safetensors").exists()


def test_a_metrics_line_cut_short_by_a_crash_is_dropped_and_a_damaged_middle_line_refused(tmp_path):
    from raise_select.errors import UserError
    from raise_select.training.runs import RunFolder

    run = RunFolder(tmp_path)
    (tmp_path / "metrics.jsonl").write_text('{"round": 0, "kind": "step"}\n{"round": 0, "ki')
    assert run.read_metrics() == [{"round": 0, "kind": "step"}]
    (tmp_path / "metrics.jsonl").write_text('{"round": 0}\n{oops\n{"round": 1}\n')
    with pytest.raises(UserError, match="metrics.jsonl: row 1: not a JSON line"):
        run.read_metrics()


# ---------------------------------------------------------------- output paths


def test_outputs_that_would_destroy_or_mix_with_inputs(env, tmp_path):
    pool, root = env["root"] / "pool.jsonl", env["root"]
    before = pool.read_bytes()
    log = root / "run" / "selections" / "round_1.jsonl"
    log_before = log.read_bytes()
    pool_dir = tmp_path / "pooldir"
    pool_dir.mkdir()
    shutil.copy(pool, pool_dir / "pool.jsonl")
    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    cases = [
        (("select", "--run", root / "run", "--out", pool), ["--out", "is also the input --pool"]),
        (("select", "--run", root / "run", "--out", log), ["is also the input --run"]),
        (("select", "--run", root / "run", "--out", tmp_path), ["exists and holds other files"]),
        (("featurize", "--pool", pool, "--model", env["model"], "--out", pool), ["exists and is a file"]),
        (("featurize", "--pool", pool_dir, "--model", env["model"], "--out", pool_dir), ["is also the input --pool"]),
        (
            ("featurize", "--pool", pool_dir, "--model", env["model"], "--out", pool_dir / "feats"),
            ["lies inside the input folder --pool"],
        ),
        (("train-policy", *env["common"], "--out", pool), ["--out", "exists and is a file"]),
        (
            ("finetune", "--policy", root / "run" / "policy", *env["common"], "--out", root / "run" / "policy"),
            ["is also the input --policy"],
        ),
        (("baseline", "--method", "random", "--pool", pool, "--out", pool), ["exists and is a file"]),
        (("evaluate", "--model", env["model"], "--out", pool), ["exists and is a file"]),
        (("tiny-model", "--pool", pool_dir, "--out", pool_dir), ["is also the input --pool"]),
        (("demo", "--quick", "--out", pool), ["exists and is a file"]),
        (
            ("grape", "--pool", pool_dir, "--model", env["model"], "--out", pool_dir / "out.jsonl"),
            ["lies inside the input folder --pool"],
        ),
        (("convert-model", tmp_path / "m.gguf", "--out", tmp_path / "m.gguf"), ["m.gguf: exists and is a file"]),
    ]
    for args, fragments in cases:
        assert_user_error(cli(*args), *fragments)
    assert pool.read_bytes() == before and log.read_bytes() == log_before
    assert sorted(p.name for p in pool_dir.iterdir()) == ["pool.jsonl"]


def test_check_output_allows_what_cannot_mix(tmp_path):
    from raise_select.errors import UserError
    from raise_select.io import check_output

    pool_dir, feats = tmp_path / "pool", tmp_path / "feats"
    pool_dir.mkdir()
    feats.mkdir()
    check_output(feats / "ifd", {"--features": feats, "--pool": pool_dir})  # features are read by file name
    check_output(tmp_path, {"--pool": pool_dir})  # beside the pool folder, not in it
    check_output(tmp_path / "new" / "deeper", {"--model": "org/hub-id"})  # a hub id is not a path
    with pytest.raises(UserError, match="lies inside the input folder --pool"):
        check_output(pool_dir / "out", {"--pool": pool_dir})
    with pytest.raises(UserError, match="is also the input --features"):
        check_output(feats, {"--features": feats})


def test_an_output_folder_without_write_permission(env, tmp_path, monkeypatch):
    # Root may write anywhere, so the refusal is checked through os.access.
    locked = tmp_path / "locked"
    locked.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if Path(p) == locked else real_access(p, mode))
    result = cli("featurize", "--pool", env["root"] / "pool.jsonl", "--model", env["model"], "--out", locked / "f")
    assert_user_error(result, "--out", "no permission to write in", "locked")
    result = cli("select", "--run", env["root"] / "run", "--out", locked / "chosen.jsonl")
    assert_user_error(result, "no permission to write in")


# ---------------------------------------------------------------- evaluation files

ARC_ROW = {
    "id": "q1",
    "answerKey": "A",
    "question": {"stem": "Which?", "choices": [{"label": "A", "text": "x"}, {"label": "B", "text": "y"}]},
}
EVAL_CASES = [
    (
        "arc-malformed",
        "arc_challenge",
        {"ARC-Challenge-Test.jsonl": json.dumps(ARC_ROW) + "\n{oops\n"},
        ["ARC-Challenge-Test.jsonl: row 1 (line 2): malformed JSON"],
    ),
    ("arc-empty", "arc_challenge", {"ARC-Challenge-Test.jsonl": ""}, ["ARC-Challenge-Test.jsonl: file is empty"]),
    (
        "arc-choices-text",
        "arc_challenge",
        {
            "ARC-Challenge-Test.jsonl": json.dumps({**ARC_ROW, "question": {"stem": "Which?", "choices": "A x B y"}})
            + "\n"
        },
        ["ARC-Challenge-Test.jsonl, row 0, field 'question.choices'"],
    ),
    (
        "mmlu-3-columns",
        "mmlu",
        {"abstract_algebra_test.csv": "q,a,b\n"},
        ["abstract_algebra_test.csv, row 0", "expected 6 columns"],
    ),
]


@pytest.mark.parametrize("name,task,files,fragments", EVAL_CASES, ids=[c[0] for c in EVAL_CASES])
def test_bad_evaluation_files_name_the_file(env, tmp_path, name, task, files, fragments):
    data = tmp_path / "data"
    if task == "arc_challenge":
        folder = data / "arc_challenge"
        folder.mkdir(parents=True)
        (folder / "ARC-Challenge-Train.jsonl").write_text(json.dumps(ARC_ROW) + "\n")
    else:
        for split in ("dev", "test"):
            (data / "mmlu" / split).mkdir(parents=True)
        (data / "mmlu" / "dev" / "abstract_algebra_dev.csv").write_text("q,a,b,c,d,A\n")
        folder = data / "mmlu" / "test"
    for file_name, text in files.items():
        (folder / file_name).write_text(text)
    result = cli("evaluate", "--model", env["model"], "--tasks", task, "--data-dir", data, "--out", tmp_path / "res")
    assert_user_error(result, *fragments)


# ---------------------------------------------------------------- select on a train-policy run


def test_select_exports_a_train_policy_run_and_says_which_round(env, tmp_path):
    run = env["root"] / "run"
    result = cli("select", "--run", run, "--out", tmp_path / "last.jsonl")
    assert result.exit_code == 0, result.output
    assert "round 1 of rounds 0-1" in result.stdout and "the last round" in result.stdout
    log_ids = {
        i for line in (run / "selections" / "round_1.jsonl").read_text().splitlines() for i in json.loads(line)["ids"]
    }
    exported = [json.loads(line) for line in (tmp_path / "last.jsonl").read_text().splitlines()]
    pool = load_pool(env["root"] / "pool.jsonl")
    by_instruction = {e.record["instruction"]: e.id for e in pool.examples}
    assert {by_instruction[r["instruction"]] for r in exported} == log_ids
    result = cli("select", "--run", run, "--round", 0, "--out", tmp_path / "first.jsonl")
    assert result.exit_code == 0 and "round 0 of rounds 0-1" in result.stdout
    assert_user_error(
        cli("select", "--run", run, "--round", 7, "--out", tmp_path / "x.jsonl"), "--round 7", "rounds 0, 1"
    )
    broken = tmp_path / "run-copy"
    shutil.copytree(run, broken)
    (broken / "config.yaml").write_text("pool: [unclosed\n")
    assert_user_error(cli("select", "--run", broken, "--out", tmp_path / "y.jsonl"), "config.yaml: not valid YAML")
    assert_user_error(
        cli("select", "--run", run, "--out", tmp_path / "z.jsonl", "--set", "select.round=true"),
        "'round' must be a whole number, got true",
    )


# ---------------------------------------------------------------- the entry point, as a real process


def test_subprocess_user_errors_are_one_line(env, tmp_path):
    pool = env["root"] / "pool.jsonl"
    before = pool.read_bytes()
    assert_user_error(subprocess_cli("featurize", "--limit", "abc"), "Invalid value for '--limit'", "--help")
    (tmp_path / "bad.jsonl").write_bytes(b'{"instruction": "\xff", "output": "b"}\n')
    assert_user_error(
        subprocess_cli("featurize", "--pool", tmp_path / "bad.jsonl", "--model", env["model"], "--out", tmp_path / "f"),
        "bad.jsonl, row 0, line 1",
        "not UTF-8",
    )
    assert_user_error(subprocess_cli("select", "--run", env["root"] / "run", "--out", pool), "is also the input --pool")
    assert pool.read_bytes() == before


def test_every_command_turns_errors_into_one_line():
    unguarded = [c.name for c in app.registered_commands if not getattr(c.callback, "handles_errors", False)]
    assert unguarded == []


def test_a_full_disk_or_a_refused_permission_is_one_line_and_other_os_errors_are_bugs(tmp_path, monkeypatch):
    import errno

    import typer

    from raise_select.cli.common import handle_errors

    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))  # where the bug's traceback goes
    errors = {
        "nospc": OSError(errno.ENOSPC, "No space left on device", "/data/f"),
        "perm": PermissionError(errno.EACCES, "Permission denied", "/data/g"),
        "eio": OSError(errno.EIO, "Input/output error", "/data/h"),
    }
    tiny = typer.Typer()

    @tiny.command()
    @handle_errors
    def fail(kind: str) -> None:
        raise errors[kind]

    assert_user_error(runner.invoke(tiny, ["nospc"]), "/data/f: No space left on device")
    assert_user_error(runner.invoke(tiny, ["perm"]), "/data/g: permission denied")
    bug = runner.invoke(tiny, ["eio"])
    assert bug.exit_code == 1 and "a bug in raise-select" in bug.stderr and len(problem_lines(bug.stderr)) == 1


BUG = (
    "import raise_select.data.pools as pools\n"
    "def boom(*a, **k):\n    raise RuntimeError('simulated defect')\n"
    "pools.load_pool = boom\n"
    "from raise_select.cli.main import main; main()"
)


def test_an_unexpected_exception_is_one_line_naming_the_traceback_file(env, tmp_path, monkeypatch):
    args = ("select", "--run", env["root"] / "run", "--out", tmp_path / "c.jsonl")
    result = subprocess_cli(*args, code=BUG)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    lines = problem_lines(result.stderr)
    assert len(lines) == 1 and "a bug in raise-select" in lines[0] and "simulated defect" in lines[0], result.stderr
    where = re.search(r"full traceback in (\S+) \(", lines[0]).group(1)
    text = Path(where).read_text()
    assert "Traceback" in text and "RuntimeError: simulated defect" in text
    Path(where).unlink()
    # With the debug switch the exception itself comes out (in process: CliRunner holds it).
    import raise_select.data.pools as pools

    def boom(*a, **k):
        raise RuntimeError("simulated defect")

    monkeypatch.setattr(pools, "load_pool", boom)
    monkeypatch.setenv("RAISE_SELECT_DEBUG", "1")
    shown = cli(*args)
    assert shown.exit_code == 1 and isinstance(shown.exception, RuntimeError) and "a bug" not in shown.stderr
    monkeypatch.delenv("RAISE_SELECT_DEBUG")
    shown = cli("--debug", *args)
    assert isinstance(shown.exception, RuntimeError)


def test_progress_is_logged_not_redrawn_when_stderr_is_not_a_terminal(env):
    stderr = env["train_stderr"]
    assert "\r" not in stderr
    progress = [line for line in stderr.splitlines() if "raise_select.progress" in line]
    assert progress and all(LOG_LINE.match(line) for line in progress)
    assert any(re.search(r"round 1: at 2/2 it \(100%\)", line) for line in progress)


def test_log_progress_reports_once_per_interval_and_once_at_the_end(caplog):
    now = [0.0]
    bar = LogProgress(total=100, desc="work", unit="ex", interval=30.0, clock=lambda: now[0])
    with caplog.at_level("INFO", logger="raise_select.progress"):
        for _ in range(100):  # 1 s per update: 100 updates over 100 s
            now[0] += 1.0
            bar.update()
        bar.close()
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 4  # at 30 s, 60 s, 90 s, then done
    assert lines[0].startswith("work: at 30/100 ex (30%), 1 ex/s, 30s elapsed, about 1m10s left")
    assert lines[-1].startswith("work: done 100/100 ex (100%)")
    caplog.clear()
    with caplog.at_level("INFO", logger="raise_select.progress"):
        for _ in LogProgress(range(5), interval=30.0, clock=lambda: 0.0):
            pass
    assert caplog.records == []  # a short loop says nothing


# ---------------------------------------------------------------- second round: settings checked before any write


def _baseline(env, out, *extra):
    return ("baseline", "--pool", env["root"] / "pool.jsonl", "--budget", 4, "--out", out, *extra)


def _grape(env, out, *extra):
    return ("grape", "--pool", env["root"] / "pool.jsonl", "--model", env["model"], "--out", out, *extra)


EARLY_REFUSALS = [
    ("seed-negative", _baseline, ("--method", "random", "--seed", -1), ["seed = -1", "0 .. 2**32 - 1"]),
    (
        "steps-zero",
        _baseline,
        ("--method", "random", "--steps", 0, "--train", "--model", "MODEL"),
        ["steps = 0", "leave it unset for the matched count"],
    ),
    (
        "steps-negative-train",
        _baseline,
        ("--method", "random", "--steps", -2, "--train", "--model", "MODEL"),
        ["steps = -2"],
    ),
    ("epochs-zero", _baseline, ("--method", "random", "--epochs", 0), ["epochs = 0"]),
    (
        "less-proj-dim-zero",
        _baseline,
        ("--method", "less", "--model", "MODEL", "--val", "VAL", "--set", "less.proj_dim=0"),
        ["method 'less'", "proj_dim = 0", "every score would be 0"],
    ),
    (
        "ifd-without-features",
        _baseline,
        (
            "--method",
            "ifd",
        ),
        ["needs featurized pool features"],
    ),
    ("grape-batch-zero", _grape, ("--batch-size", 0), ["grape settings: batch_size = 0"]),
    ("grape-limit-zero", _grape, ("--limit", 0), ["limit = 0", "leave it unset for every row"]),
]


@pytest.mark.parametrize("name,command,extra,fragments", EARLY_REFUSALS, ids=[c[0] for c in EARLY_REFUSALS])
def test_settings_are_refused_before_any_output_is_written(env, tmp_path, name, command, extra, fragments):
    names = {"MODEL": env["model"], "VAL": env["root"] / "val.jsonl"}
    out = tmp_path / ("out.jsonl" if command is _grape else "out")
    result = cli(*command(env, out, *[names.get(a, a) if isinstance(a, str) else a for a in extra]))
    assert_user_error(result, *fragments)
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no folder, log, selection.json or cache


def test_a_refused_finetune_or_evaluate_leaves_no_config_or_task_files(env, tmp_path):
    folder = features_copy(env, "ft-early")
    _inf_logp(folder)
    args = list(env["common"])
    args[args.index("--features") + 1] = folder
    result = cli("finetune", "--policy", env["root"] / "run" / "policy", *args, "--out", tmp_path / "ft")
    assert_user_error(result, "infinite feature")
    data = tmp_path / "data" / "arc_challenge"
    data.mkdir(parents=True)
    for split in ("Train", "Test"):
        (data / f"ARC-Challenge-{split}.jsonl").write_text(json.dumps(ARC_ROW) + "\n")
    broken = tmp_path / "broken-model"
    broken.mkdir()
    (broken / "config.json").write_text("{}")
    result = cli(
        "evaluate",
        "--model",
        broken,
        "--tasks",
        "arc_challenge",
        "--data-dir",
        tmp_path / "data",
        "--out",
        tmp_path / "ev",
    )
    assert_user_error(result, "cannot be loaded")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken-model", "data"]


def test_a_resumed_run_folder_is_kept_when_a_later_run_into_it_is_refused(env, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(env["root"] / "run", run)
    before = sorted(p.relative_to(run) for p in run.rglob("*"))
    assert_user_error(cli("train-policy", *env["common"], "--rounds", 3, "--out", run, "--seed", -1), "seed = -1")
    assert sorted(p.relative_to(run) for p in run.rglob("*")) == before


# ---------------------------------------------------------------- second round: grape candidates


def test_grape_skips_blank_candidates_and_its_choice_indexes_the_rows_own_list(env, tmp_path):
    rows = [
        {"instruction": "What is 1 plus 2?", "responses": ["", "The answer is 3.", "  ", "3"]},
        {"instruction": "What is 2 plus 2?", "responses": ["The answer is 4.", "four", ""]},
    ]
    (tmp_path / "multi.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = cli("grape", "--pool", tmp_path / "multi.jsonl", "--model", env["model"], "--out", tmp_path / "g.jsonl")
    assert result.exit_code == 0, result.output
    assert "3 blank candidates skipped" in result.stdout
    out = [json.loads(line) for line in (tmp_path / "g.jsonl").read_text().splitlines()]
    for row, rec in zip(rows, out):
        assert row["responses"][rec["grape_choice"]] == rec["output"]
        assert rec["grape_candidates"] == sum(bool(c.strip()) for c in row["responses"])


# ---------------------------------------------------------------- second round: select --run


def test_select_refuses_a_run_with_a_deleted_round_log_or_two_kinds_of_log(env, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(env["root"] / "run", run)
    (run / "selections" / "round_1.jsonl").unlink()
    assert_user_error(
        cli("select", "--run", run, "--out", tmp_path / "a.jsonl"),
        "round_1.jsonl: missing, but the run finished rounds 0-1",
    )
    result = cli("select", "--run", run, "--round", 0, "--out", tmp_path / "a.jsonl")
    assert result.exit_code == 0 and "round 0 of rounds 0-1" in result.stdout
    both = tmp_path / "both"
    shutil.copytree(env["root"] / "run", both)
    shutil.copy(both / "selections" / "round_0.jsonl", both / "selections.jsonl")  # a finetune written into it
    assert_user_error(
        cli("select", "--run", both, "--out", tmp_path / "b.jsonl"),
        "holds both a finetune's selections.jsonl and train-policy round logs",
        "--round K",
    )
    result = cli("select", "--run", both, "--round", 1, "--out", tmp_path / "b.jsonl")
    assert result.exit_code == 0 and "round 1 of rounds 0-1" in result.stdout, result.output
    result = cli("select", "--run", both / "selections.jsonl", "--out", tmp_path / "c.jsonl")
    assert result.exit_code == 0 and "rounds" not in result.stdout
    assert_user_error(
        cli("select", "--run", both, "--round", -1, "--out", tmp_path / "d.jsonl"), "--round -1", "rounds 0, 1"
    )
    cut = tmp_path / "cut"  # a crash in round 1: its log exists, but only round 0 finished
    shutil.copytree(env["root"] / "run", cut)
    (cut / "checkpoint" / "latest.json").write_text(json.dumps({"rounds_done": 1, "folder": "round_0001"}))
    result = cli("select", "--run", cut, "--out", tmp_path / "e.jsonl")
    assert result.exit_code == 0 and "round 0 of rounds 0-0" in result.stdout, result.output
    assert_user_error(cli("select", "--run", cut, "--round", 1, "--out", tmp_path / "e.jsonl"), "cut short")
    (tmp_path / "notarun").mkdir()
    assert_user_error(
        cli("select", "--run", tmp_path / "notarun", "--out", tmp_path / "f.jsonl"), "no selection log here"
    )


# ---------------------------------------------------------------- second round: study settings


@pytest.mark.parametrize(
    "setting,fragments",
    [
        ("seeds: [-1, -1]", ["seeds: -1 is not a seed"]),
        ("raise_seeds: [5, -3]", ["raise_seeds: -3 is not a seed"]),
        ("tasks: []", ["tasks: no task given"]),
        ("tasks: [mmlu, nope]", ["tasks: unknown task(s) nope"]),
        ("full_steps: 0", ["full_steps: 0"]),
    ],
    ids=["seeds", "raise-seeds", "no-tasks", "unknown-task", "full-steps"],
)
def test_study_settings_are_refused_before_the_first_cell(env, tmp_path, setting, fragments):
    (tmp_path / "study.yaml").write_text(
        f"study:\n  pool: {env['root'] / 'pool.jsonl'}\n  build_model: test\n"
        f"  out: {tmp_path / 'st'}\n  methods: [random, raise]\n  {setting}\n"
    )
    assert_user_error(cli("study", tmp_path / "study.yaml"), *fragments)
    assert not (tmp_path / "st").exists()


# ---------------------------------------------------------------- second round: the environment


def test_a_model_cache_that_cannot_be_a_folder_or_written(env, tmp_path, monkeypatch):
    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    (tmp_path / "afile").write_text("x")
    args = ("featurize", "--pool", env["root"] / "pool.jsonl", "--model", tmp_path / "m.gguf", "--out", tmp_path / "f")
    monkeypatch.setenv("RAISE_SELECT_CACHE", str(tmp_path / "afile"))
    assert_user_error(cli(*args), "RAISE_SELECT_CACHE=", "afile is a file, not a folder")
    monkeypatch.delenv("RAISE_SELECT_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path / "afile"))
    assert_user_error(cli(*args), "HOME=", "is a file, not a folder", "set RAISE_SELECT_CACHE")
    locked = tmp_path / "cache"
    locked.mkdir()
    monkeypatch.setenv("RAISE_SELECT_CACHE", str(locked))
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if Path(p) == locked else real_access(p, mode))
    result = cli(*args)
    assert_user_error(result, "no permission to write in", "cache")
    assert "converting" not in result.stderr  # refused before anything is announced
    assert not (tmp_path / "f").exists()


@pytest.mark.parametrize("value", ["abc", "-1", "nan", "inf"])
def test_a_progress_interval_that_is_not_seconds(env, tmp_path, monkeypatch, value):
    monkeypatch.setenv("RAISE_SELECT_PROGRESS_SECONDS", value)
    result = cli("featurize", "--pool", env["root"] / "pool.jsonl", "--model", env["model"], "--out", tmp_path / "f")
    assert_user_error(result, f"RAISE_SELECT_PROGRESS_SECONDS='{value}'", "0: a line at every update")
    assert not (tmp_path / "f").exists()


# ---------------------------------------------------------------- second round: two runs into one --out

HOLD_LOCK = (
    "import sys, time\nfrom raise_select.io import lock_output\n"
    "lock_output(sys.argv[1], 'train-policy')\nprint('held', flush=True)\ntime.sleep(120)\n"
)


def test_a_second_run_into_a_busy_out_is_refused_and_a_dead_runs_lock_is_not(env, tmp_path):
    out = tmp_path / "busy"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(out)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        for args in (
            ("train-policy", *env["common"], "--rounds", 1, "--out", out),
            _baseline(env, out, "--method", "random"),
        ):
            assert_user_error(cli(*args), "in use by another run", f"pid {holder.pid}", "`raise-select train-policy`")
        assert sorted(p.name for p in out.iterdir()) == [".raise-select.lock"]  # the holder's folder is left alone
    finally:
        holder.kill()  # SIGKILL: no clean-up runs, the lock file stays
        holder.wait()
    result = cli(*_baseline(env, out, "--method", "random"))
    assert result.exit_code == 0, result.output
    assert json.loads((out / "selection.json").read_text())["budget_count"] == 4
    result = cli(*_baseline(env, out, "--method", "random"))  # the same process again: its lock was released
    assert result.exit_code == 0, result.output


# ---------------------------------------------------------------- third round: model files and names


def _gguf_header(tensors: int = 0, fields: int = 0) -> bytes:
    import struct

    return b"GGUF" + struct.pack("<IQQ", 3, tensors, fields)  # a version-3 header and nothing after it


def test_empty_short_and_header_only_gguf_files_and_folders_named_gguf(env, tmp_path, monkeypatch):
    monkeypatch.setenv("RAISE_SELECT_CACHE", str(tmp_path / "cache"))
    files = {"zero.gguf": b"", "magic.gguf": b"GGUF", "header.gguf": _gguf_header()}
    for name, content in files.items():
        (tmp_path / name).write_bytes(content)
    (tmp_path / "folder.gguf").mkdir()
    two = tmp_path / "two"
    two.mkdir()
    for name in ("a.gguf", "b.gguf"):
        (two / name).write_bytes(_gguf_header())
    featurize = ("featurize", "--pool", env["root"] / "pool.jsonl", "--out", tmp_path / "f")
    cases = [
        (("--model", tmp_path / "zero.gguf"), ["zero.gguf: is empty (0 bytes)", "not a GGUF model file"]),
        (("--model", tmp_path / "magic.gguf"), ["magic.gguf: has only 4 bytes, fewer than a GGUF header (24)"]),
        (
            ("--model", tmp_path / "header.gguf"),
            ["header.gguf: GGUF file has no 'general.architecture' field", "0 tensor(s)"],
        ),
        (("--model", tmp_path / "folder.gguf"), ["folder.gguf: a folder without a model", "no config.json"]),
        (("--model", env["model"], "--embed-model", tmp_path / "zero.gguf"), ["zero.gguf: is empty"]),
    ]
    for extra, fragments in cases:
        assert_user_error(cli(*featurize, *extra), *fragments)
    for source, fragments in (
        (tmp_path / "folder.gguf", ["folder.gguf: a folder holding no .gguf file"]),
        (two, ["two: holds 2 GGUF files (a.gguf, b.gguf)"]),
        (tmp_path / "zero.gguf", ["zero.gguf: is empty"]),
    ):
        assert_user_error(cli("convert-model", source, "--out", tmp_path / "c"), *fragments)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "folder.gguf",
        "header.gguf",
        "magic.gguf",
        "two",
        "zero.gguf",
    ]


def test_short_names_in_any_case_and_near_misses_refused_before_the_hub(env, tmp_path, monkeypatch):
    import raise_select.models.resolve as resolve

    asked = []
    monkeypatch.setattr(resolve, "_packaged", lambda name: asked.append(name) or tmp_path)
    assert resolve.resolve_model("SmolLM2-135M-Instruct") == str(tmp_path)
    assert resolve.resolve_model("ALL-MINILM-L6-V2") == str(tmp_path)
    assert asked == ["smollm2-135m-instruct", "all-minilm-l6-v2"]
    assert resolve.resolve_model("gpt2") == "gpt2" and resolve.resolve_model("org/SmolLM2") == "org/SmolLM2"
    featurize = ("featurize", "--pool", env["root"] / "pool.jsonl", "--out", tmp_path / "f")
    for name, near in (("SmolLM2", "smollm2-135m-instruct"), ("smollm2-135m", "smollm2-135m-instruct")):
        assert_user_error(
            cli(*featurize, "--model", name),
            f"model '{name}': not a local path",
            f"did you mean '{near}'",
            "short names, any case",
        )
    assert_user_error(
        cli(*featurize, "--model", env["model"], "--embed-model", "all-MiniLM"), "did you mean 'all-minilm-l6-v2'"
    )


# ---------------------------------------------------------------- third round: nested lists in text or flat-list fields


def test_nested_lists_in_grape_and_pool_rows(env, tmp_path):
    rows = {
        "nested.jsonl": (
            {"instruction": "What is 1 plus 2?", "responses": [["The answer is 3.", "3"], "three"]},
            ["nested.jsonl, row 0, field 'responses[0]': expected text, got list"],
        ),
        "empty-inner.jsonl": (
            {"instruction": "What is 1 plus 2?", "output": [[]]},
            ["field 'output[0]': expected text, got list"],
        ),
        "one-text.jsonl": (
            {"instruction": "What is 1 plus 2?", "responses": "just one"},
            ["one-text.jsonl, row 0, field 'responses': expected a list of candidate responses, got str"],
        ),
        "parts.jsonl": (
            {"instruction": ["What is", "1 plus 2?"], "output": "3"},
            [
                'parts.jsonl, row 0, field \'instruction\': expected text, got list ["What is", "1 plus 2?"]',
                "join the parts into one string",
            ],
        ),
        "turns.jsonl": (
            {"messages": [[{"role": "user", "content": "hi"}], {"role": "assistant", "content": "x"}]},
            ["turns.jsonl, row 0, field 'messages[0]': each turn needs 'role' and 'content'"],
        ),
    }
    for name, (row, fragments) in rows.items():
        (tmp_path / name).write_text(json.dumps(row) + "\n")
        assert_user_error(
            cli("grape", "--pool", tmp_path / name, "--model", env["model"], "--out", tmp_path / "g.jsonl"), *fragments
        )
    result = cli(
        "train-policy", *_with(env["common"], val=tmp_path / "parts.jsonl"), "--rounds", 1, "--out", tmp_path / "tp"
    )
    assert_user_error(result, "parts.jsonl, row 0, field 'instruction'")
    assert not (tmp_path / "g.jsonl").exists() and not (tmp_path / "tp").exists()


# ---------------------------------------------------------------- third round: validation sets of 0 and 1 rows

VAL_METHODS = ("rds", "embed", "less", "rose", "greats", "rho")


def test_an_empty_validation_set_is_refused_by_every_method_before_any_work(env, tmp_path):
    empties = {
        "empty.jsonl": ("", "empty.jsonl: file is empty"),
        "header.csv": ("instruction,output\n", "only a header"),
        "none.json": ("[]", "none.json: no usable examples"),
    }
    for name, (text, _) in empties.items():
        (tmp_path / name).write_text(text)
    for i, method in enumerate(VAL_METHODS):
        name = list(empties)[i % len(empties)]
        result = cli(
            *_baseline(
                env,
                tmp_path / "out",
                "--method",
                method,
                "--model",
                env["model"],
                "--features",
                env["root"] / "features",
                "--val",
                tmp_path / name,
                "--max-length",
                64,
            )
        )
        assert_user_error(result, empties[name][1])
    assert not (tmp_path / "out").exists()


def test_one_validation_row_is_enough_except_for_rho_and_roses_stand_in(env, tmp_path):
    (tmp_path / "one.jsonl").write_text(
        json.dumps({"instruction": "What is 1 plus 2?", "output": "The answer is 3."}) + "\n"
    )
    args = (
        "--model",
        env["model"],
        "--val",
        tmp_path / "one.jsonl",
        "--max-length",
        64,
        "--batch-size",
        2,
        "--steps",
        2,
    )
    assert_user_error(
        cli(*_baseline(env, tmp_path / "rho", "--method", "rho", *args)),
        "rho: the holdout set has 1 example(s)",
        "needs at least 2",
    )
    assert_user_error(
        cli(*_baseline(env, tmp_path / "rose", "--method", "rose", *args)),
        "rose: the validation set has 1 example(s)",
        "rose.preference=FILE",
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "one.jsonl"
    ]  # refused before the model loaded or a file was written
    result = cli(*_baseline(env, tmp_path / "greats", "--method", "greats", *args, "--lr", 1e-3))
    assert result.exit_code == 0, result.output
    record = json.loads((tmp_path / "greats" / "selection.json").read_text())
    assert (
        record["info"]["validation_examples"] == 1 and record["info"]["val_batch"] == 1 and len(record["indices"]) == 4
    )


# ---------------------------------------------------------------- third round: online and gradient methods' options

METHOD_OPTIONS = [
    ("greats", "greats.candidates=0", ["method 'greats'", "candidates = 0 (must be >= 1"]),
    ("greats", "greats.candidates=abc", ["'candidates' must be a whole number, got 'abc'"]),
    ("greats", "greats.candidates=2.5", ["'candidates' must be an integer, got 2.5"]),
    (
        "greats",
        "greats.candidate=2",
        [
            "unknown option(s) candidate; available: candidates, last_layers, lora_last_layers, "
            "reuse_gradients, val_batch"
        ],
    ),
    ("greats", "greats.val_batch=0", ["val_batch = 0 (must be >= 1)"]),
    ("greats", "greats.last_layers=-1", ["last_layers = -1 (must be >= 0"]),
    ("rho", "rho.candidates=-3", ["method 'rho'", "candidates = -3"]),
    ("rho", "rho.holdout_size=-1", ["holdout_size = -1 (must be >= 0 (0: all))"]),
    ("rho", "rho.il_select_fraction=1", ["il_select_fraction = 1.0 (must lie in (0, 1))"]),
    ("rho", "rho.il_epochs=0", ["il_epochs = 0 (must be >= 1)"]),
    ("rho", "rho.il_lr=-1", ["il_lr = -1.0 (must be >= 0"]),
    ("rho", "rho.il_lr=.nan", ["'il_lr' must be a finite number"]),
    ("rho", "rho.holdout=[a]", ["'holdout' must be text, got ['a']"]),
    ("less", "less.aggregation=foo", ["method 'less'", "less.aggregation: unknown rule 'foo'"]),
    ("rose", "rose.beta=0", ["method 'rose'", "beta = 0.0 (must be > 0)"]),
    ("rose", "rose.aggregation=median", ["rose.aggregation: unknown rule 'median'"]),
]


@pytest.mark.parametrize("method,setting,fragments", METHOD_OPTIONS, ids=[c[1] for c in METHOD_OPTIONS])
def test_method_options_are_refused_before_the_model_loads(env, tmp_path, method, setting, fragments):
    result = cli(
        *_baseline(
            env,
            tmp_path / "out",
            "--method",
            method,
            "--model",
            env["model"],
            "--val",
            env["root"] / "val.jsonl",
            "--set",
            setting,
        )
    )
    assert_user_error(result, *fragments)
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- third round: policy settings at their edges

POLICY_EDGES = [
    ("policy.actor_lr=0", "actor_lr = 0.0 (must be > 0)"),
    ("policy.critic_lr=-1", "critic_lr = -1.0 (must be > 0)"),
    ("policy.critic_lr=nan", "'policy.critic_lr' must be a finite number"),
    ("policy.clip=0", "clip = 0.0 (must be > 0)"),
    ("policy.ppo_epochs=0", "ppo_epochs = 0 (must be >= 1)"),
    ("policy.minibatches=0", "minibatches = 0 (must be >= 1)"),
    ("policy.minibatches=3", "policy.minibatches = 3 is more than the 2 policy step(s) of a round"),
    ("policy.gamma=1.5", "gamma = 1.5 (must lie in [0, 1])"),
    ("policy.lam=-0.1", "lam = -0.1 (must lie in [0, 1])"),
    ("policy.gamma=true", "'policy.gamma' must be a number, got true"),
    ("policy.hidden=0", "hidden = 0 (must be >= 1)"),
    ("policy.use_rule=foo", "use_rule = 'foo' (must be one of"),
    ("policy.target_kl=-1", "target_kl = -1.0"),
    ("policy.weight_decay=-1", "weight_decay = -1.0 (must be >= 0)"),
    ("policy.seed=-1", "seed = -1 (must be >= 0)"),
]


def test_policy_settings_at_their_edges_are_refused_before_any_work(env, tmp_path):
    for setting, fragment in POLICY_EDGES:
        result = cli("train-policy", *env["common"], "--rounds", 1, "--out", tmp_path / "tp", "--set", setting)
        assert_user_error(result, fragment)
    assert not (tmp_path / "tp").exists()


# ---------------------------------------------------------------- third round: features or a policy of another pool


@pytest.fixture(scope="module")
def other_pool(env):
    """Another 12-row pool and random features of it (3 classes, like the module's)."""
    root = env["root"]
    rows = [{"instruction": f"Name colour {i}.", "input": "", "output": f"Colour {i} is red."} for i in range(12)]
    (root / "pool2.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    pool = load_pool(root / "pool2.jsonl")
    random_features(pool.ids, CLASSES, seed=1).write(root / "features2")
    return {"pool": root / "pool2.jsonl", "features": root / "features2"}


def test_features_and_a_policy_of_another_pool_are_refused(env, other_pool, tmp_path):
    result = cli(
        "train-policy", *_with(env["common"], pool=other_pool["pool"]), "--rounds", 1, "--out", tmp_path / "tp"
    )
    assert_user_error(
        result,
        f"{env['root'] / 'features'}: features are missing for 12 pool example(s)",
        "these features were made from another pool",
    )
    policy = env["root"] / "run" / "policy"
    other = _with(env["common"], pool=other_pool["pool"], features=other_pool["features"])
    assert_user_error(
        cli("finetune", "--policy", policy, *other, "--out", tmp_path / "ft"),
        f"--policy {policy}: trained on another pool (12 rows of {env['root'] / 'pool.jsonl'}",
        f"not on the 12 rows of {other_pool['pool']}",
    )
    copy = tmp_path / "policy"  # the same rows, but the features were computed otherwise
    shutil.copytree(policy, copy)
    record = json.loads((copy / "trained_on.json").read_text())
    (copy / "trained_on.json").write_text(json.dumps({**record, "features_fingerprint": "a" * 64}))
    feats = features_copy(env, "refeaturized")
    _meta({"fingerprint": "b" * 64})(feats)
    assert_user_error(
        cli("finetune", "--policy", copy, *_with(env["common"], features=feats), "--out", tmp_path / "ft"),
        "trained on other features of this pool",
    )
    (copy / "trained_on.json").write_text("{oops")
    assert_user_error(
        cli("finetune", "--policy", copy, *env["common"], "--out", tmp_path / "ft"),
        "trained_on.json: not valid JSON",
        "damaged",
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["policy"]
    # The same rows in another order are the same pool: features and policy are matched by row id.
    rows = (env["root"] / "pool.jsonl").read_text().splitlines(keepends=True)
    (tmp_path / "reversed.jsonl").write_text("".join(reversed(rows)))
    result = cli(
        "finetune",
        "--policy",
        policy,
        *_with(env["common"], pool=tmp_path / "reversed.jsonl"),
        "--out",
        tmp_path / "ft",
    )
    assert result.exit_code == 0, result.output


# ---------------------------------------------------------------- third round: study configs


def test_study_config_paths_and_shapes(env, tmp_path):
    (tmp_path / "folder").mkdir()
    assert_user_error(cli("study", tmp_path / "folder"), "folder: a folder; give the YAML config file itself")
    (tmp_path / "list.yaml").write_text("- study:\n    pool: x\n")
    assert_user_error(
        cli("study", tmp_path / "list.yaml"), "list.yaml: expected a mapping of sections at the top level", "got a list"
    )
    head = f"study:\n  pool: {env['root'] / 'pool.jsonl'}\n  build_model: test\n  out: {tmp_path / 'st'}\n"
    (tmp_path / "section.yaml").write_text(head + "  methods: [random, ifd]\nifd: [1]\n")
    assert_user_error(
        cli("study", tmp_path / "section.yaml"),
        "section.yaml: section 'ifd' holds the method's options as a mapping",
        "got [1]",
    )
    assert_user_error(
        cli(
            "featurize",
            "--pool",
            env["root"] / "pool.jsonl",
            "--model",
            env["model"],
            "--out",
            tmp_path / "f",
            "--config",
            tmp_path / "folder",
        ),
        "a folder; give the YAML config file itself",
    )
    assert not (tmp_path / "st").exists() and not (tmp_path / "f").exists()
    from raise_select.experiments.study import StudyConfig, plan_cells

    cells = plan_cells(
        StudyConfig(methods=["random", "ifd", "random"], seeds=[1, 1])
    )  # a repeat is one cell (documented)
    assert [c.name for c in cells] == ["base", "full", "random-s1", "ifd"]


# ---------------------------------------------------------------- third round: paths and output folders


def test_paths_with_spaces_and_non_ascii_and_an_out_that_is_a_symlink(env, tmp_path):
    folder = tmp_path / "sp ace" / "dätä ü"
    folder.mkdir(parents=True)
    shutil.copy(env["root"] / "pool.jsonl", folder / "pööl 1.jsonl")
    out = tmp_path / "sp ace" / "bäse ö"
    result = cli("baseline", "--method", "random", "--pool", folder / "pööl 1.jsonl", "--budget", 4, "--out", out)
    assert result.exit_code == 0, result.output
    assert json.loads((out / "selection.json").read_text())["pool"] == str(folder / "pööl 1.jsonl")
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    assert cli(*_baseline(env, tmp_path / "link", "--method", "random")).exit_code == 0
    assert (tmp_path / "real" / "selection.json").is_file()  # written through the link
    (tmp_path / "feats-link").symlink_to(env["root"] / "features")
    assert_user_error(
        cli(*_baseline(env, tmp_path / "feats-link", "--method", "ifd", "--features", env["root"] / "features")),
        "is also the input --features",
    )
    assert_user_error(
        cli("train-policy", *env["common"], "--rounds", 1, "--out", env["model"] / "run"),
        "lies inside the input folder --model",
    )
    assert not (env["model"] / "run").exists()


def test_an_out_folder_holding_another_kind_of_run_is_refused(env, tmp_path):
    run = env["root"] / "run"
    before = {p.relative_to(run): p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file()}
    holds_run = [
        "holds the output of `raise-select train-policy` (policy/policy.json)",
        "a folder holds one kind of run",
    ]
    assert_user_error(cli("finetune", "--policy", run / "policy", *env["common"], "--out", run), *holds_run)
    assert_user_error(cli(*_baseline(env, run, "--method", "random")), *holds_run)
    assert {p.relative_to(run): p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file()} == before
    base = tmp_path / "base"
    assert cli(*_baseline(env, base, "--method", "random")).exit_code == 0
    assert_user_error(
        cli("train-policy", *env["common"], "--rounds", 1, "--out", base),
        "holds the output of `raise-select baseline` (selection.json)",
    )
    assert_user_error(
        cli("featurize", "--pool", env["root"] / "pool.jsonl", "--model", env["model"], "--out", base),
        "holds the output of `raise-select baseline`",
    )
    assert cli(*_baseline(env, base, "--method", "random", "--seed", 3)).exit_code == 0  # the same kind again: fine
    assert sorted(p.name for p in base.iterdir()) == [".raise-select.lock", "baseline.log", "selection.json"]
    old = tmp_path / "old"  # a folder of an older version, without a lock file: none is left behind
    old.mkdir()
    (old / "selection.json").write_text("{}")
    assert_user_error(cli("train-policy", *env["common"], "--rounds", 1, "--out", old), "`raise-select baseline`")
    assert sorted(p.name for p in old.iterdir()) == ["selection.json"]


def test_evaluate_without_data_dir_and_an_unreachable_hub_is_one_line(monkeypatch, tmp_path):
    import lm_eval
    import lm_eval.tasks

    from raise_select.errors import UserError
    from raise_select.evaluation.evaluate import EvaluateConfig, evaluate

    def offline(**kwargs):
        raise ConnectionError("Couldn't reach 'cais/mmlu' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setattr(lm_eval, "simple_evaluate", offline)
    monkeypatch.setattr(lm_eval.tasks, "TaskManager", lambda *a, **k: None)
    with pytest.raises(
        UserError,
        match=r"mmlu: no --data-dir given and loading the tasks' data from the hub failed "
        r"\(ConnectionError: Couldn't reach 'cais/mmlu'.*pass --data-dir",
    ):
        evaluate(EvaluateConfig(model="m", tasks=["mmlu"], out=str(tmp_path / "ev")), lm=object())
    assert not (tmp_path / "ev").exists()
