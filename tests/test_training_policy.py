"""Algorithm 2 end to end (train_policy), resume, refused settings, finetune and the CLI, on a tiny Llama."""

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file
from typer.testing import CliRunner

from conftest import plus_rows, random_features
from raise_select.data.pools import load_pool
from raise_select.errors import UserError
from raise_select.features.table import FeatureTable
from raise_select.models import load_model_and_tokenizer
from raise_select.policy import PolicyConfig
from raise_select.training import FinetuneConfig, TrainPolicyConfig, Validator, finetune, train_policy

CLASSES = 3


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_model_dir):
    """A 24-row pool with random features in 3 classes and a 4-row validation file."""
    root = tmp_path_factory.mktemp("raise")
    rows = plus_rows(24)
    (root / "pool.json").write_text(json.dumps(rows))
    (root / "val.json").write_text(
        json.dumps(
            [
                {"instruction": "What is 3 plus 4?", "input": "", "output": "7"},
                {"instruction": "Say hi.", "input": "", "output": "Hi!"},
                {"instruction": "What is 10 plus 1?", "input": "", "output": "The answer is 11."},
                {"instruction": "Name a color.", "input": "", "output": "red"},
            ]
        )
    )
    pool = load_pool(root / "pool.json")
    random_features(pool.ids, CLASSES).write(root / "features")
    base = TrainPolicyConfig(
        pool=str(root / "pool.json"),
        features=str(root / "features"),
        model=str(tiny_model_dir),
        val=str(root / "val.json"),
        rounds=2,
        steps=3,
        lr=1e-3,
        max_length=64,
        policy=PolicyConfig(per_class=1),
    )
    return root, base


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def finished_run(setup):
    root, base = setup
    cfg = replace(base, out=str(root / "run"))
    return cfg, train_policy(cfg)


def test_train_policy_writes_the_run_folder(finished_run):
    cfg, policy_dir = finished_run
    out = policy_dir.parent
    assert policy_dir == out / "policy"
    for name in ("actor.safetensors", "critic.safetensors", "policy.json"):
        assert (policy_dir / name).is_file()
    assert (out / "config.yaml").is_file() and (out / "run.log").read_text()
    metrics = read_jsonl(out / "metrics.jsonl")
    steps = [m for m in metrics if m["kind"] == "step"]
    rounds = [m for m in metrics if m["kind"] == "round"]
    assert [(m["round"], m["step"]) for m in steps] == [(k, t) for k in range(2) for t in (1, 2, 3)]
    assert all(set(m["time"]) == {"train", "reward", "scoring"} and m["loss"] > 0 for m in steps)
    assert [m["round"] for m in rounds] == [0, 1]
    for m in rounds:
        assert {"return", "final_P", "actor_loss", "critic_loss", "entropy"} <= set(m)
        assert set(m["time"]) == {"train", "reward", "scoring", "ppo"}
    for k in range(2):
        sel = read_jsonl(out / "selections" / f"round_{k}.jsonl")
        assert [s["step"] for s in sel] == [1, 2, 3]
        for s in sel:
            assert len(s["ids"]) == len(s["indices"]) == len(s["scores"]) == CLASSES
            assert sorted(s["classes"]) == list(range(CLASSES)) and s["random"] is False
    for png in ("performance.png", "return.png"):
        assert (out / "plots" / png).read_bytes()[:4] == b"\x89PNG"


def test_reference_episode_and_step_baseline(finished_run):
    """A random-batch reference episode runs once before round 0; every round is shown against
    it; the step baseline is the running mean of the reference's and the rounds' rewards."""
    cfg, policy_dir = finished_run
    metrics = read_jsonl(policy_dir.parent / "metrics.jsonl")
    ref = [m for m in metrics if m["kind"] == "reference"]
    assert len(ref) == 1 and len(ref[0]["rewards"]) == 3
    assert ref[0]["return"] == pytest.approx(ref[0]["final_P"] - ref[0]["P0"], abs=1e-6)
    assert sum(ref[0]["rewards"]) == pytest.approx(ref[0]["return"], abs=1e-6)
    rounds = [m for m in metrics if m["kind"] == "round"]
    per_round = [[m["reward"] for m in metrics if m["kind"] == "step" and m["round"] == k] for k in range(2)]
    for m in rounds:
        assert m["reference_return"] == ref[0]["return"]
        assert m["vs_reference"] == pytest.approx(m["return"] - ref[0]["return"])
        assert m["cost_phi"] > 0 and m["selection"]["slots"] == 3 * CLASSES
    meta = json.loads((policy_dir / "policy.json").read_text())
    expected = [sum(x) / 3 for x in zip(ref[0]["rewards"], *per_round)]
    assert meta["step_baseline"] == pytest.approx(expected, abs=1e-9) and meta["baseline_episodes"] == 3


def test_finetune_sample_rule_and_compare_random(finished_run, setup, tmp_path):
    _, policy_dir = finished_run
    _, base = setup
    common = dict(
        policy=str(policy_dir),
        pool=base.pool,
        features=base.features,
        model=base.model,
        val=base.val,
        steps=3,
        lr=1e-3,
        max_length=64,
    )
    finetune(FinetuneConfig(**common, out=str(tmp_path / "a"), use_rule="sample", compare_random=True))
    finetune(FinetuneConfig(**common, out=str(tmp_path / "b"), use_rule="sample"))
    a = read_jsonl(tmp_path / "a" / "selections.jsonl")
    assert a == read_jsonl(tmp_path / "b" / "selections.jsonl")  # one seed, one selection
    summary = next(m for m in read_jsonl(tmp_path / "a" / "metrics.jsonl") if m["kind"] == "finetune")
    assert summary["use_rule"] == "sample" and isinstance(summary["random_final_P"], float)
    flat = [i for s in a for i in s["indices"]]
    stats = summary["selection"]
    assert stats["slots"] == len(flat) and stats["distinct"] == len(set(flat))
    assert stats["max_times"] == max(flat.count(i) for i in set(flat))
    assert stats["class_share"] == pytest.approx([1 / CLASSES] * CLASSES, abs=1e-4)  # b = 1 from each class


def test_rewards_telescope_to_the_change_of_p(finished_run, setup):
    cfg, policy_dir = finished_run
    _, base = setup
    metrics = read_jsonl(policy_dir.parent / "metrics.jsonl")
    model, tok = load_model_and_tokenizer(base.model)
    p0 = Validator(load_pool(base.val).examples, tok, "neg_loss", max_length=64)(model)  # P(M_0), independently
    for k in range(2):
        steps = [m for m in metrics if m["kind"] == "step" and m["round"] == k]
        summary = next(m for m in metrics if m["kind"] == "round" and m["round"] == k)
        assert sum(m["reward"] for m in steps) == pytest.approx(steps[-1]["P"] - p0, abs=1e-6)
        assert summary["return"] == pytest.approx(steps[-1]["P"] - p0, abs=1e-6)
        assert steps[0]["reward"] == pytest.approx(steps[0]["P"] - p0, abs=1e-6)


def test_select_every_m_credits_random_steps_to_the_policy_step(setup, tmp_path):
    _, base = setup
    cfg = replace(base, out=str(tmp_path / "run"), rounds=1, steps=5, select_every=2)
    train_policy(cfg)
    steps = [m for m in read_jsonl(tmp_path / "run" / "metrics.jsonl") if m["kind"] == "step"]
    assert [m["policy"] for m in steps] == [True, False, True, False, True]
    assert [m["P"] is not None for m in steps] == [False, True, False, True, True]  # P measured at interval ends
    sel = read_jsonl(tmp_path / "run" / "selections" / "round_0.jsonl")
    assert [s["random"] for s in sel] == [False, True, False, True, False]
    assert sel[1]["scores"] == [None] * CLASSES
    rewards = [m["reward"] for m in steps if m["reward"] is not None]
    p = [m["P"] for m in steps if m["P"] is not None]
    assert rewards[1:] == pytest.approx(np.diff(p).tolist(), abs=1e-9)


def test_between_policy_draws_the_batches_between_its_steps_from_the_policy(setup, tmp_path):
    """`between: policy`: the steps between the policy's own are drawn from it too (one row per
    class, with scores), counted but not PPO transitions; P and the rewards keep the intervals
    of `select_every`, and the use-time episode does the same."""
    from raise_select.training.finetune import train_and_finetune

    _, base = setup
    cfg = replace(base, rounds=1, steps=5, select_every=2, between="policy")
    train_and_finetune(cfg, tmp_path / "run")
    steps = [m for m in read_jsonl(tmp_path / "run" / "train_policy" / "metrics.jsonl") if m["kind"] == "step"]
    assert [m["policy"] for m in steps] == [True, False, True, False, True]
    assert [m["P"] is not None for m in steps] == [False, True, False, True, True]
    for path in (
        tmp_path / "run" / "train_policy" / "selections" / "round_0.jsonl",
        tmp_path / "run" / "finetune" / "selections.jsonl",
    ):
        sel = read_jsonl(path)
        assert [s["random"] for s in sel] == [False] * 5
        assert [s["transition"] for s in sel] == [True, False, True, False, True]
        for s in sel:
            assert sorted(s["classes"]) == list(range(CLASSES)) and None not in s["scores"]
    with pytest.raises(UserError, match="between"):
        replace(base, between="nope").check()


def test_resume_reaches_the_uninterrupted_result(setup, tmp_path):
    _, base = setup
    straight = replace(base, out=str(tmp_path / "straight"), rounds=3)
    train_policy(straight)
    resumed = replace(base, out=str(tmp_path / "resumed"), rounds=2)
    train_policy(resumed)
    # A crash mid-round 2 leaves lines of the unfinished round behind; they are replaced on resume.
    with open(tmp_path / "resumed" / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"kind": "step", "round": 2, "step": 1, "P": 0.0}) + "\n")
    train_policy(replace(resumed, rounds=3))
    for name in ("actor.safetensors", "critic.safetensors"):
        a = load_file(tmp_path / "straight" / "policy" / name)
        b = load_file(tmp_path / "resumed" / "policy" / name)
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), (name, key)
    strip = lambda ms: [{k: v for k, v in m.items() if k not in ("time", "cost_phi")} for m in ms]  # noqa: E731 (timings)
    assert strip(read_jsonl(tmp_path / "straight" / "metrics.jsonl")) == strip(
        read_jsonl(tmp_path / "resumed" / "metrics.jsonl")
    )
    with pytest.raises(UserError, match="different settings"):
        train_policy(replace(resumed, rounds=4, lr=1e-2))


def test_a_run_saved_before_a_setting_existed_resumes_at_its_default(setup, tmp_path):
    """A setting the saved config.yaml lacks (written by a version without it) counts as its default:
    the run resumes when it keeps the default and is refused when it sets another value."""
    import yaml

    _, base = setup
    cfg = replace(base, out=str(tmp_path / "old"), rounds=1)
    train_policy(cfg)
    path = tmp_path / "old" / "config.yaml"
    saved = yaml.safe_load(path.read_text())
    del saved["policy"]["label_lr"], saved["policy"]["refit_epochs"]  # as an older version wrote it
    path.write_text(yaml.safe_dump(saved))
    train_policy(replace(cfg, rounds=2))  # resumes: both at their defaults
    assert len([m for m in read_jsonl(tmp_path / "old" / "metrics.jsonl") if m.get("kind") == "round"]) == 2
    path.write_text(yaml.safe_dump(saved))
    with pytest.raises(UserError, match=r"different settings \(policy\)"):
        train_policy(replace(cfg, rounds=3, policy=replace(cfg.policy, label_lr=0.5)))


def _refused(cfg, match):
    with pytest.raises(UserError, match=match):
        train_policy(cfg)
    from pathlib import Path

    assert not (Path(cfg.out) / "metrics.jsonl").exists()  # refused before any training step


def test_invalid_settings_are_refused_before_training(setup, tmp_path, monkeypatch):
    root, base = setup
    out = str(tmp_path / "bad")
    with pytest.raises(UserError, match="per_class = 0"):  # refused where the setting is made
        replace(base, policy=replace(base.policy, per_class=0))
    with pytest.raises(UserError, match="rounds = -1"):
        replace(base, rounds=-1)
    _refused(replace(base, out=out, batch_size=2), r"more classes \(3\) than batch slots")
    _refused(replace(base, out=out, policy=replace(base.policy, per_class=9)), "fewer than one batch of 27")
    (tmp_path / "empty.json").write_text("[]")
    _refused(replace(base, out=out, val=str(tmp_path / "empty.json")), "no usable examples")
    table = FeatureTable.read(root / "features")
    FeatureTable(
        ids=table.ids[:-1],
        columns={k: v[:-1] for k, v in table.columns.items()},
        sem=table.sem[:-1],
        cluster=table.cluster[:-1],
        meta=table.meta,
    ).write(tmp_path / "partial")
    _refused(replace(base, out=out, features=str(tmp_path / "partial")), "features are missing for 1")
    (tmp_path / "nan_metric.py").write_text(
        "calls = [0]\n"
        "def always(model, tokenizer, examples):\n    return float('nan')\n"
        "def later(model, tokenizer, examples):\n    calls[0] += 1\n    return 0.0 if calls[0] < 3 else float('nan')\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    _refused(replace(base, out=out, metric="nan_metric:always"), "step 0")
    with pytest.raises(UserError, match=r"reference \(random batches\), step 2: validation performance P is nan"):
        train_policy(replace(base, out=str(tmp_path / "nan"), metric="nan_metric:later"))


def test_finetune_saves_a_loadable_model_and_top_b_selections(finished_run, setup, tmp_path):
    from raise_select.policy import RaisePolicy, StaticState, select_per_class

    cfg, policy_dir = finished_run
    _, base = setup
    ft = FinetuneConfig(
        policy=str(policy_dir),
        pool=base.pool,
        features=base.features,
        model=base.model,
        val=base.val,
        out=str(tmp_path / "ft"),
        steps=4,
        lr=1e-3,
        max_length=64,
        use_rule="topk",
    )
    model_dir = finetune(ft)
    model, _ = load_model_and_tokenizer(str(model_dir))
    assert model.config.num_hidden_layers == 2
    sel = read_jsonl(tmp_path / "ft" / "selections.jsonl")
    assert [s["step"] for s in sel] == [1, 2, 3, 4] and not any(s["random"] for s in sel)
    # Step 1 is the top-1 of every class under the trained policy at the stage state [P(M_0), 1/T].
    metrics = read_jsonl(tmp_path / "ft" / "metrics.jsonl")
    p0 = next(m for m in metrics if m["kind"] == "finetune")["P0"]
    pool = load_pool(base.pool)
    static = StaticState.from_features(
        FeatureTable.read(base.features).align(pool.ids), RaisePolicy.read_normalizer(policy_dir)
    )
    policy = RaisePolicy.load(policy_dir, static)
    scores = policy.scores(p0, 1 / 4, torch.zeros(len(pool), dtype=torch.int64))
    expected = select_per_class(scores, static.classes, CLASSES, 1).tolist()
    assert sel[0]["indices"] == expected
    assert sel[0]["ids"] == [pool.ids[i] for i in expected]
    assert sel[0]["scores"] == pytest.approx(scores[expected].tolist())


def test_finetune_with_lora_saves_an_adapter(finished_run, setup, tmp_path):
    _, policy_dir = finished_run
    _, base = setup
    ft = FinetuneConfig(
        policy=str(policy_dir),
        pool=base.pool,
        features=base.features,
        model=base.model,
        val=base.val,
        out=str(tmp_path / "ft"),
        steps=2,
        lr=1e-3,
        max_length=64,
        lora=True,
        select_every=2,
    )
    model_dir = finetune(ft)
    assert (model_dir / "adapter_config.json").is_file()
    assert len(read_jsonl(tmp_path / "ft" / "selections.jsonl")) == 2


def test_cli_train_policy_and_finetune(setup, tmp_path):
    from raise_select.cli.main import app

    _, base = setup
    runner = CliRunner()
    common = [
        "--pool",
        base.pool,
        "--features",
        base.features,
        "--model",
        base.model,
        "--val",
        base.val,
        "--steps",
        "2",
        "--lr",
        "1e-3",
        "--max-length",
        "64",
    ]
    res = runner.invoke(
        app,
        [
            "train-policy",
            *common,
            "--out",
            str(tmp_path / "run"),
            "--rounds",
            "1",
            "--set",
            "train_policy.policy.ppo_epochs=1",
            "--set",
            "policy.hidden=8",
        ],
    )
    assert res.exit_code == 0, res.output
    assert "policy saved to" in res.output
    written = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert written["policy"]["ppo_epochs"] == 1 and written["policy"]["hidden"] == 8
    assert json.loads((tmp_path / "run" / "policy" / "policy.json").read_text())["config"]["hidden"] == 8
    res = runner.invoke(
        app, ["finetune", *common, "--policy", str(tmp_path / "run" / "policy"), "--out", str(tmp_path / "ft")]
    )
    assert res.exit_code == 0, res.output
    assert len(read_jsonl(tmp_path / "ft" / "selections.jsonl")) == 2
    res = runner.invoke(app, ["train-policy", *common, "--out", str(tmp_path / "bad"), "--per-class", "0"])
    assert res.exit_code == 2 and "per_class" in res.output


DISTRIBUTED_SCRIPT = """
import json, sys, torch
torch.set_num_threads(1)
from raise_select.config import from_dict
from raise_select.training import TrainPolicyConfig, train_policy
train_policy(from_dict(TrainPolicyConfig, json.loads(sys.argv[1])))
"""


@pytest.mark.slow
def test_two_processes_match_one(setup, tmp_path):
    """torchrun with 2 CPU processes (gloo): same selections, and P and losses equal to one process up to float
    rounding, with a batch of 3 split unevenly over the processes."""
    import dataclasses
    import os
    import shutil
    import subprocess

    _, base = setup
    if shutil.which("torchrun") is None:
        pytest.skip("torchrun not found")
    one = replace(base, out=str(tmp_path / "one"), rounds=1, steps=2)
    train_policy(one)
    two = replace(one, out=str(tmp_path / "two"))
    (tmp_path / "run.py").write_text(DISTRIBUTED_SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [
            "torchrun",
            "--standalone",
            "--nproc_per_node",
            "2",
            str(tmp_path / "run.py"),
            json.dumps(dataclasses.asdict(two)),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    sel = [read_jsonl(tmp_path / name / "selections" / "round_0.jsonl") for name in ("one", "two")]
    assert [s["indices"] for s in sel[0]] == [s["indices"] for s in sel[1]]
    for a, b in zip(*sel):
        assert b["scores"] == pytest.approx(a["scores"], abs=1e-5)
    steps = [
        [m for m in read_jsonl(tmp_path / name / "metrics.jsonl") if m["kind"] == "step"] for name in ("one", "two")
    ]
    assert len(steps[1]) == 2  # only the main process writes
    for a, b in zip(*steps):
        assert b["P"] == pytest.approx(a["P"], abs=1e-5) and b["loss"] == pytest.approx(a["loss"], abs=1e-5)
