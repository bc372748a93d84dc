"""Reuse decisions keyed on what their inputs hold, not on their paths (issue 34): content
digests, resume points of train-policy and the online selectors, baseline reuse, the
selection prior of a trained policy, and validation rows that are also pool rows."""

from __future__ import annotations

import hashlib
import logging
import os

from raise_select.io import path_digest


def test_path_digest_is_the_sha256_of_the_contents_and_follows_them(tmp_path):
    f = tmp_path / "weights.bin"
    f.write_bytes(b"abc")
    assert path_digest(f) == hashlib.sha256(b"abc").hexdigest()
    folder = tmp_path / "model"
    (folder / "sub").mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    (folder / "sub" / "w.bin").write_bytes(b"\x00\x01")
    (folder / ".raise-select.lock").write_text("pid 1")  # dot files are not contents
    by_hand = hashlib.sha256(b"config.json\x00{}" + b"sub/w.bin\x00\x00\x01").hexdigest()
    assert path_digest(folder) == by_hand
    st = (folder / "sub" / "w.bin").stat()
    (folder / "sub" / "w.bin").write_bytes(b"\x00\x02")  # same size, rewritten
    os.utime(folder / "sub" / "w.bin", ns=(st.st_atime_ns, st.st_mtime_ns + 1))
    assert path_digest(folder) != by_hand
    assert path_digest(folder) == hashlib.sha256(b"config.json\x00{}" + b"sub/w.bin\x00\x00\x02").hexdigest()


# ---------------------------------------------------------------- train-policy: resume keyed on contents

import json  # noqa: E402
import shutil  # noqa: E402
from dataclasses import replace  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import yaml  # noqa: E402

from conftest import plus_rows, random_features  # noqa: E402
from raise_select.errors import UserError  # noqa: E402

CLASSES = 3


def _write_features(pool_file, out, seed: int = 0):
    from raise_select.data.pools import load_pool

    random_features(load_pool(pool_file).ids, CLASSES, seed=seed).write(out)


@pytest.fixture(scope="module")
def episode_inputs(tmp_path_factory, tiny_model_dir):
    """A 12-row pool with random features in 3 classes, a 2-row validation file, and a copy of
    the tiny model at a path of its own (tests rebuild it there)."""
    root = tmp_path_factory.mktemp("reuse")
    (root / "pool.json").write_text(json.dumps(plus_rows(12)))
    (root / "val.json").write_text(
        json.dumps(
            [
                {"instruction": "What is 3 plus 4?", "input": "", "output": "7"},
                {"instruction": "Name a color.", "input": "", "output": "red"},
            ]
        )
    )
    _write_features(root / "pool.json", root / "features")
    return root


def _tp_config(root, model, out, **kw):
    from raise_select.policy import PolicyConfig
    from raise_select.training import TrainPolicyConfig

    settings = dict(
        pool=str(root / "pool.json"),
        features=str(root / "features"),
        model=str(model),
        val=str(root / "val.json"),
        out=str(out),
        rounds=2,
        steps=2,
        lr=1e-3,
        max_length=48,
        policy=PolicyConfig(per_class=1),
    )
    settings.update(kw)
    return TrainPolicyConfig(**settings)


def _rebuild_model(path, seed: int):
    from raise_select.models.tiny import build_tiny_model

    texts = ["What is 12 plus 7? The answer is 19.", "Name three colors: red, green and blue.", "### Response:"] * 20
    shutil.rmtree(path, ignore_errors=True)
    return build_tiny_model(path, texts, preset="test", seed=seed)


@pytest.fixture(scope="module")
def two_round_run(episode_inputs, tiny_model_dir, tmp_path_factory):
    """A finished 2-round train-policy run (its folder is copied by the tests that change it)."""
    from raise_select.training import train_policy

    out = tmp_path_factory.mktemp("tp") / "run"
    cfg = _tp_config(episode_inputs, tiny_model_dir, out)
    train_policy(cfg)
    return cfg


def _copy_run(cfg, tmp_path, **kw):
    out = tmp_path / "run"
    shutil.copytree(cfg.out, out)
    return replace(cfg, out=str(out), **kw)


def _policy_bytes(out) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((out / "policy").iterdir()) if p.suffix == ".safetensors"}


def test_train_policy_resume_is_refused_after_the_model_was_rebuilt_at_the_same_path(episode_inputs, tmp_path, caplog):
    """Round 2 of a run whose rounds 0-1 were trained from another M_0 would mix two starts."""
    from raise_select.training import train_policy

    model = _rebuild_model(tmp_path / "model", seed=0)
    cfg = _tp_config(episode_inputs, model, tmp_path / "run", rounds=1)
    train_policy(cfg)
    _rebuild_model(model, seed=1)  # another M_0 at the same path
    config_before = (tmp_path / "run" / "config.yaml").read_text()
    metrics_before = (tmp_path / "run" / "metrics.jsonl").read_text()
    with pytest.raises(UserError, match=r"--model .*changed") as e:
        train_policy(replace(cfg, rounds=2))
    assert "\n" not in str(e.value) and "--out" in str(e.value)
    assert (tmp_path / "run" / "config.yaml").read_text() == config_before
    assert (tmp_path / "run" / "metrics.jsonl").read_text() == metrics_before
    _rebuild_model(model, seed=0)  # the same contents again (new files, new mtimes): resumes
    train_policy(replace(cfg, rounds=2))
    assert json.loads((tmp_path / "run" / "checkpoint" / "latest.json").read_text())["rounds_done"] == 2


def test_train_policy_resume_is_refused_after_the_validation_or_features_changed(
    episode_inputs, tiny_model_dir, tmp_path
):
    from raise_select.training import train_policy

    root = tmp_path / "inputs"
    shutil.copytree(episode_inputs, root)
    cfg = _tp_config(root, tiny_model_dir, tmp_path / "run", rounds=1)
    train_policy(cfg)
    val = (root / "val.json").read_text()
    (root / "val.json").write_text(json.dumps([{"instruction": "Say hi.", "input": "", "output": "Hi!"}] * 2))
    with pytest.raises(UserError, match=r"--val .*changed"):
        train_policy(replace(cfg, rounds=2))
    (root / "val.json").write_text(val)
    _write_features(root / "pool.json", root / "features", seed=1)  # re-featurized in place
    with pytest.raises(UserError, match=r"--features .*changed"):
        train_policy(replace(cfg, rounds=2))


def test_fewer_rounds_than_a_folder_holds_are_refused_before_anything_is_written(two_round_run, tmp_path):
    """`--rounds 0` (the untrained prior) or `--rounds 1` into a finished 2-round folder would keep the
    2-round policy under another label."""
    from raise_select.training import train_policy

    for rounds in (0, 1):
        cfg = _copy_run(two_round_run, tmp_path / str(rounds), rounds=rounds)
        out = tmp_path / str(rounds) / "run"
        before = ((out / "config.yaml").read_text(), _policy_bytes(out), (out / "metrics.jsonl").read_text())
        with pytest.raises(UserError, match=r"holds a run of 2 finished rounds.*--rounds %d.*another --out" % rounds):
            train_policy(cfg)
        assert ((out / "config.yaml").read_text(), _policy_bytes(out), (out / "metrics.jsonl").read_text()) == before
        assert yaml.safe_load((out / "config.yaml").read_text())["rounds"] == 2
    # the same number of rounds again: nothing to do, the policy kept
    cfg = _copy_run(two_round_run, tmp_path / "2")
    before = _policy_bytes(tmp_path / "2" / "run")
    train_policy(cfg)
    assert _policy_bytes(tmp_path / "2" / "run") == before


# ---------------------------------------------------------------- finetune: the selection prior it was trained on


def _selection_file(path, pool, scores) -> None:
    path.write_text(
        json.dumps({"method": "rds", "pool": "pool.json", "pool_fingerprint": pool.fingerprint, "pool_scores": scores})
    )


def test_finetune_uses_the_prior_file_the_policy_was_trained_on_from_any_folder_and_refuses_an_edited_one(
    episode_inputs, tiny_model_dir, tmp_path, monkeypatch
):
    from raise_select.data.pools import load_pool
    from raise_select.policy import PolicyConfig
    from raise_select.training import FinetuneConfig, finetune, train_policy

    pool = load_pool(episode_inputs / "pool.json")
    work = tmp_path / "work"
    work.mkdir()
    _selection_file(work / "sel.json", pool, list(range(len(pool))))
    monkeypatch.chdir(work)  # train-policy run where the selection file is given by a relative path
    pcfg = PolicyConfig(per_class=1, prior="selection", prior_selection="sel.json", use_rule="topk")
    policy_dir = train_policy(_tp_config(episode_inputs, tiny_model_dir, tmp_path / "run", rounds=0, policy=pcfg))
    record = json.loads((policy_dir / "trained_on.json").read_text())["prior_selection"]
    assert record["sha256"] == hashlib.sha256((work / "sel.json").read_bytes()).hexdigest()
    assert record["path"] == str(work / "sel.json")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    ft = FinetuneConfig(
        policy=str(policy_dir),
        pool=str(episode_inputs / "pool.json"),
        features=str(episode_inputs / "features"),
        model=str(tiny_model_dir),
        val=str(episode_inputs / "val.json"),
        out=str(tmp_path / "ft"),
        steps=1,
        lr=1e-3,
        max_length=48,
    )
    assert (finetune(ft) / "config.json").is_file()
    first = json.loads((tmp_path / "ft" / "selections.jsonl").read_text().splitlines()[0])
    assert sorted(first["indices"]) == [9, 10, 11]  # top-1 of each class by the prior (scores = row number)
    _selection_file(work / "sel.json", pool, list(range(len(pool)))[::-1])  # edited after training
    with pytest.raises(UserError, match=r"sel.json.*changed since the policy .* was trained") as e:
        finetune(replace(ft, out=str(tmp_path / "ft2")))
    assert "\n" not in str(e.value)
    (work / "sel.json").unlink()
    with pytest.raises(UserError, match=r"sel.json.*no such file"):
        finetune(replace(ft, out=str(tmp_path / "ft3")))


# ---------------------------------------------------------------- baselines: reuse keyed on the model's contents


def _baseline(root, model, out, **kw):
    from raise_select.baselines.run import BaselineConfig

    settings = dict(
        method="random",
        pool=str(root / "pool.json"),
        model=str(model),
        out=str(out),
        budget=4,
        batch_size=2,
        epochs=1,
        train=True,
        lr=1e-3,
        max_length=48,
    )
    settings.update(kw)
    return BaselineConfig(**settings)


def _weights(folder) -> bytes:
    return (folder / "model.safetensors").read_bytes()


def test_baseline_train_retrains_when_its_model_was_deleted_or_its_base_model_rebuilt(episode_inputs, tmp_path, caplog):
    from raise_select.baselines.run import run_baseline

    caplog.set_level(logging.INFO)
    base = _rebuild_model(tmp_path / "base", seed=0)
    cfg = _baseline(episode_inputs, base, tmp_path / "out")
    run_baseline(cfg)
    model = tmp_path / "out" / "model"
    first = _weights(model)
    shutil.rmtree(model)  # the trained model deleted: trained again, never "already trained"
    run_baseline(cfg)
    assert _weights(model) == first
    run_baseline(cfg)  # nothing changed: reused as it is
    assert "already trained" in caplog.text
    _rebuild_model(base, seed=1)  # another M_0 at the same path: trained again from it
    caplog.clear()
    run_baseline(cfg)
    assert "already trained" not in caplog.text and _weights(model) != first
    (model / "model.safetensors").write_bytes(b"damaged")  # the saved model is not the one trained
    caplog.clear()
    run_baseline(cfg)
    assert "already trained" not in caplog.text and (model / "model.safetensors").stat().st_size > 100


def test_an_online_checkpoint_of_another_model_at_the_same_path_is_not_resumed(episode_inputs, tmp_path, monkeypatch):
    from raise_select.baselines import online
    from raise_select.baselines.base import SelectionContext
    from raise_select.baselines.registry import make_baseline
    from raise_select.data.pools import load_pool
    from raise_select.training.loop import LMConfig

    monkeypatch.setattr(online, "CHECKPOINT_SECONDS", 0.0)  # a checkpoint after every step
    pool = load_pool(episode_inputs / "pool.json")
    val = load_pool(episode_inputs / "val.json").examples
    model = _rebuild_model(tmp_path / "base", seed=0)
    ctx = SelectionContext(
        model=str(model),
        validation=val,
        out_dir=tmp_path / "out",
        batch_size=2,
        max_length=48,
        steps=4,
        lm=LMConfig(max_length=48, lr=5e-3, seed=1),
    )
    cls = type(make_baseline("greats"))
    choose, calls, killed = cls.choose, [], []

    def dies_at_step_3(self, trainer, rows, k):
        calls.append(trainer.step_count)
        if len(calls) == 3 and not killed:
            killed.append(True)
            raise RuntimeError("killed")
        return choose(self, trainer, rows, k)

    monkeypatch.setattr(cls, "choose", dies_at_step_3)
    options = {"candidates": 2, "last_layers": 1}
    with pytest.raises(RuntimeError, match="killed"):
        make_baseline("greats", options).select(pool, 4, ctx)
    assert (tmp_path / "out" / "checkpoint" / "greats.pt").is_file()
    _rebuild_model(model, seed=1)
    calls.clear()
    make_baseline("greats", options).select(pool, 4, ctx)
    assert calls == [0, 1, 2, 3]  # from the start, not after step 2 of the other model


def test_rho_irreducible_losses_are_not_reused_across_models_at_the_same_path(episode_inputs, tmp_path):
    from raise_select.baselines.base import SelectionContext
    from raise_select.baselines.registry import make_baseline
    from raise_select.data.pools import load_pool
    from raise_select.training.loop import LMConfig, LMTrainer

    pool = load_pool(episode_inputs / "pool.json")
    val = load_pool(episode_inputs / "val.json").examples
    model = _rebuild_model(tmp_path / "base", seed=0)
    ctx = SelectionContext(model=str(model), validation=val, out_dir=tmp_path, max_length=48, batch_size=2)

    def prepare():
        trainer = LMTrainer(str(model), pool, LMConfig(max_length=48), total_steps=1)
        return make_baseline("rho", {"il_epochs": 1}).prepare(pool, trainer, ctx)

    assert prepare()["irreducible_scored_now"] == len(pool)
    assert prepare()["irreducible_scored_now"] == 0  # the same model: from the cache
    _rebuild_model(model, seed=1)
    assert prepare()["irreducible_scored_now"] == len(pool)


# ---------------------------------------------------------------- validation rows that are also pool rows


def _overlapping_val(tmp_path, shared: int = 7):
    """A validation file of the pool's rows 0..shared-1 (one of them twice: read once) and one row of its own."""
    rows = plus_rows(12)[:shared] + plus_rows(12)[:1] + [{"instruction": "Name a color.", "input": "", "output": "red"}]
    (tmp_path / "val.json").write_text(json.dumps(rows))
    return tmp_path / "val.json"


def test_shared_rows_are_the_validation_rows_found_in_the_pool(episode_inputs, caplog):
    from raise_select.data.overlap import shared_rows, warn_shared_rows
    from raise_select.data.pools import load_pool

    pool = load_pool(episode_inputs / "pool.json")
    val = [*pool.examples[:7], pool.examples[0], *load_pool(episode_inputs / "val.json").examples]
    assert [e.id for e in shared_rows(pool, val)] == [e.id for e in pool.examples[:7]]
    caplog.set_level(logging.WARNING)
    assert warn_shared_rows(pool, val, where="--val v.json") == 7
    (line,) = [r.getMessage() for r in caplog.records]
    assert line.startswith("--val v.json: 7 of 10 validation rows are also pool rows (ids ")
    assert all(e.id in line for e in pool.examples[:5]) and pool.examples[5].id not in line and ", ...)" in line
    caplog.clear()
    assert warn_shared_rows(pool, load_pool(episode_inputs / "val.json").examples) == 0 and not caplog.records


def test_baseline_and_train_policy_warn_of_validation_rows_in_the_pool(
    episode_inputs, tiny_model_dir, tmp_path, caplog
):
    from raise_select.baselines.run import run_baseline
    from raise_select.training import train_policy

    val = _overlapping_val(tmp_path, shared=2)
    caplog.set_level(logging.WARNING)
    run_baseline(_baseline(episode_inputs, tiny_model_dir, tmp_path / "b", val=str(val), train=False))
    assert [r.getMessage().split(" (ids")[0] for r in caplog.records if "also pool rows" in r.getMessage()] == [
        f"--val {val}: 2 of 3 validation rows are also pool rows"
    ]
    caplog.clear()
    train_policy(_tp_config(episode_inputs, tiny_model_dir, tmp_path / "tp", val=str(val), rounds=0))
    assert sum("2 of 3 validation rows are also pool rows" in r.getMessage() for r in caplog.records) == 1


# ---------------------------------------------------------------- per-row caches keyed on the scoring model's contents


def test_grape_and_local_judge_caches_are_not_reused_for_another_model_at_the_same_path(episode_inputs, tmp_path):
    from raise_select.baselines.base import SelectionContext
    from raise_select.baselines.grape import GrapeConfig, run_grape
    from raise_select.baselines.registry import make_baseline
    from raise_select.data.pools import load_pool

    model = _rebuild_model(tmp_path / "scorer", seed=0)
    cfg = GrapeConfig(pool=str(episode_inputs / "pool.json"), model=str(model), out=str(tmp_path / "g.jsonl"))
    assert run_grape(cfg)["scored"] == 12
    assert run_grape(cfg)["scored"] == 0  # the same model: from the cache
    pool = load_pool(episode_inputs / "pool.json")
    ctx = SelectionContext(out_dir=tmp_path / "j")
    judge = {"backend": "local", "judge_model": str(model), "batch_size": 12, "max_length": 48}
    assert make_baseline("alpagasus", judge).select(pool, 4, ctx).info["requested"] == 12
    assert make_baseline("alpagasus", judge).select(pool, 4, ctx).info["cached"] == 12
    _rebuild_model(model, seed=1)
    assert run_grape(cfg)["scored"] == 12
    assert make_baseline("alpagasus", judge).select(pool, 4, ctx).info["requested"] == 12


def test_a_baseline_selection_is_made_again_when_its_features_or_validation_file_changed_in_place(
    episode_inputs, tiny_model_dir, tmp_path, caplog
):
    from raise_select.baselines.run import run_baseline

    root = tmp_path / "inputs"
    shutil.copytree(episode_inputs, root)
    caplog.set_level(logging.INFO)
    cfg = _baseline(root, tiny_model_dir, tmp_path / "out", method="ifd", features=str(root / "features"), train=False)
    run_baseline(cfg)
    run_baseline(cfg)
    assert "reusing the selection" in caplog.text
    meta = (root / "features" / "meta.json").read_text()
    _write_features(root / "pool.json", root / "features", seed=1)  # other values, the same meta.json
    assert (root / "features" / "meta.json").read_text() == meta
    caplog.clear()
    run_baseline(cfg)
    assert "reusing the selection" not in caplog.text
    cfg = replace(cfg, val=str(root / "val.json"))
    run_baseline(cfg)
    (root / "val.json").write_text(json.dumps(plus_rows(12)[:1]))  # another validation set at the same path
    caplog.clear()
    run_baseline(cfg)
    assert "reusing the selection" not in caplog.text
    for damaged in ("{", "[]"):  # a damaged selection.json is selected again, not a traceback
        (tmp_path / "out" / "selection.json").write_text(damaged)
        caplog.clear()
        assert run_baseline(cfg)["fingerprint"] and "damaged; selecting again" in caplog.text


def test_the_cli_refuses_rounds_0_into_a_trained_folder_in_one_line_with_exit_2(two_round_run, tmp_path):
    from typer.testing import CliRunner

    from raise_select.cli.main import app

    cfg = _copy_run(two_round_run, tmp_path)
    out = tmp_path / "run"
    before = (out / "config.yaml").read_text()
    args = ["train-policy", "--pool", cfg.pool, "--features", cfg.features, "--model", cfg.model, "--val", cfg.val]
    args += ["--out", str(out), "--rounds", "0", "--steps", "2", "--per-class", "1", "--lr", "0.001"]
    result = CliRunner().invoke(app, [*args, "--max-length", "48"])
    assert result.exit_code == 2, result.output
    assert "holds a run of 2 finished rounds" in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert (out / "config.yaml").read_text() == before


def test_features_digest_covers_every_file_a_feature_table_is_read_from(episode_inputs, tmp_path):
    from raise_select.io import fingerprint
    from raise_select.training.runs import features_digest

    folder = tmp_path / "features"
    shutil.copytree(episode_inputs / "features", folder)
    sha = lambda name: hashlib.sha256((folder / name).read_bytes()).hexdigest()  # noqa: E731
    assert features_digest(folder) == fingerprint({n: sha(n) for n in ("features.parquet", "meta.json")})
    assert features_digest(folder / "features.parquet") == features_digest(folder)
    np.save(folder / "rds.npy", np.zeros((12, 2), dtype=np.float32))
    assert features_digest(folder) == fingerprint({n: sha(n) for n in ("features.parquet", "meta.json", "rds.npy")})


def test_a_fresh_start_drops_what_an_unfinished_first_round_left(episode_inputs, tiny_model_dir, tmp_path):
    """A run killed in its reference episode or round 0 has no checkpoint: the next run starts over, and
    its metrics and round logs hold nothing of the killed one (a 0-round policy would otherwise carry
    the killed run's reference time and round-0 selections)."""
    from raise_select.training import train_policy

    out = tmp_path / "run"
    (out / "selections").mkdir(parents=True)
    (out / "selections" / "round_0.jsonl").write_text(json.dumps({"step": 1, "indices": [0, 1, 2]}) + "\n")
    (out / "metrics.jsonl").write_text(json.dumps({"kind": "reference", "return": 0.5, "time": {"train": 9.0}}) + "\n")
    train_policy(_tp_config(episode_inputs, tiny_model_dir, out, rounds=0))
    assert not (out / "selections" / "round_0.jsonl").exists()
    assert "reference" not in (out / "metrics.jsonl").read_text()
