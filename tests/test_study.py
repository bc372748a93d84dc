"""A small study with every registered method on a tiny pool and a tiny model: it finishes,
writes Table 1's layout, and a re-run recomputes nothing."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import yaml
from typer.testing import CliRunner

from raise_select.baselines import BASELINES
from raise_select.errors import UserError
from raise_select.experiments.methods import ROW_LABELS
from raise_select.experiments.study import StudyConfig, plan_cells


class _Judge(BaseHTTPRequestHandler):
    """An OpenAI-compatible judge on loopback that rates every example 5 (AlpaGasus' reply format)."""

    def do_POST(self):  # noqa: N802
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        body = json.dumps({"choices": [{"message": {"content": "5.0\nAccurate and helpful."}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture()
def judge_url(monkeypatch):
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Judge)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("RAISE_SELECT_JUDGE_BASE_URL", f"http://127.0.0.1:{server.server_address[1]}/v1")
    monkeypatch.setenv("RAISE_SELECT_JUDGE_API_KEY", "test-key")
    yield
    server.shutdown()


def test_small_study_with_every_method_finishes_and_resumes(shared_data, tmp_path, judge_url):
    from raise_select.cli.main import app
    from raise_select.data.synthetic import SyntheticConfig, generate_pool, write_jsonl

    pool = write_jsonl(tmp_path / "pool.jsonl", generate_pool(SyntheticConfig(size=32)))
    methods = ["random", *(m for m in BASELINES if m not in ("full", "random")), "raise"]
    config = {
        "study": {
            "pool": str(pool),
            "build_model": "test",
            "val": "arc_challenge",
            "val_size": 4,
            "data_dir": str(shared_data),
            "tasks": ["arc_challenge"],
            "methods": methods,
            "budget": 4,
            "batch_size": 4,
            "seeds": [0, 1],
            "full_steps": 2,
            "classes": 2,
            "sem_dim": 4,
            "rounds": 1,
            "eval_limit": 2,
            "max_length": 48,
            "max_gen_toks": 4,
            "out": str(tmp_path / "study"),
        },
        "deita": {"complexity_scorer": "{model}", "quality_scorer": "{model}"},
        "alpagasus": {"concurrency": 2, "max_retries": 0},
        "less": {"lora_r": 2, "lora_alpha": 4, "proj_dim": 16, "warmup_epochs": 1, "warmup_batch_size": 4},
    }
    cfg_path = tmp_path / "study.yaml"
    cfg_path.write_text(yaml.safe_dump(config))

    result = CliRunner().invoke(app, ["study", str(cfg_path)])
    assert result.exit_code == 0, result.output
    out = tmp_path / "study"
    data = json.loads((out / "study_table.json").read_text())
    assert data["failed"] == {}
    labels = [r["row"] for r in data["rows"]]
    assert labels == ["0%", "100%", *(ROW_LABELS[m] for m in methods)]
    # every method trained at the matched step count: ceil(3 epochs x 4 / 4) = 3
    assert data["steps"] == 3
    cells = data["cells"]
    rand = next(r for r in data["rows"] if r["row"] == "RAND")
    assert rand["arc_challenge"] == pytest.approx(
        (cells["random-s0"]["scores"]["arc_challenge"] + cells["random-s1"]["scores"]["arc_challenge"]) / 2
    )
    base, full = data["rows"][0]["avg"], data["rows"][1]["avg"]
    for r in data["rows"]:
        assert 0.0 <= r["avg"] <= 1.0
        if full != base:
            assert r["avg_q"] == pytest.approx((r["avg"] - base) / (full - base))
    md = (out / "study_table.md").read_text()
    assert md.startswith("| DATA | Avg.Q | Avg. | arc_challenge |") and "| RAISE |" in md
    assert (out / "study_table.csv").read_text().startswith("row,avg_q,avg,arc_challenge")
    assert (out / "study_plot.png").read_bytes()[:4] == b"\x89PNG"

    stamps = {p: p.stat().st_mtime_ns for p in out.glob("cells/*/eval/metrics.json")}
    stamps.update({p: p.stat().st_mtime_ns for p in out.glob("cells/**/model.safetensors")})
    again = CliRunner().invoke(app, ["study", str(cfg_path)])
    assert again.exit_code == 0, again.output
    assert "cells computed: none (all reused)" in again.output
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items()) and len(stamps) >= 2 * len(cells) - 1


def test_unknown_methods_list_what_exists():
    with pytest.raises(UserError, match="unknown method 'magic'; available: full, random, ifd"):
        plan_cells(StudyConfig(methods=["magic"]))
    with pytest.raises(UserError, match="unknown method 'raise_rsd'; did you mean 'raise_rds'"):
        plan_cells(StudyConfig(methods=["raise_rsd"]))
    cells = plan_cells(StudyConfig(methods=["random", "raise"], seeds=[3, 4]))
    assert [c.name for c in cells] == ["base", "full", "random-s3", "random-s4", "raise"]
    cells = plan_cells(StudyConfig(methods=["random", "raise"], seeds=[3], raise_seeds=[0, 2, 0]))
    assert [(c.name, c.seed) for c in cells] == [
        ("base", 0),
        ("full", 0),
        ("random-s3", 3),
        ("raise-s0", 0),
        ("raise-s2", 2),
    ]
    with pytest.raises(UserError, match="raise_seeds"):
        plan_cells(StudyConfig(raise_seeds=[]))


def test_base_cell_of_a_short_name_model_is_reused(tmp_path, monkeypatch):
    """The 0% cell's model is the study's model: a short name or hub id is no path, and a
    finished base cell must still be reused rather than evaluated again on every resume."""
    import raise_select.experiments.study as study_module
    from raise_select.experiments.study import Study

    study = Study(StudyConfig(pool="p.jsonl", model="smollm2-135m-instruct", methods=[], out=str(tmp_path)))
    study.model, study.steps, study.val_files, study.heldout = "smollm2-135m-instruct", 4, {}, {}
    study.digest = lambda what: f"digest of {what}"  # the weights are not read here
    calls = []
    monkeypatch.setattr(
        study_module, "evaluate", lambda cfg: calls.append(cfg.model) or {t: {"score": 0.5} for t in cfg.tasks}
    )
    base = study.cells[0]
    first = study.run_cell(base)
    again = study.run_cell(base)
    assert calls == ["smollm2-135m-instruct"] and again == first and first["model"] is None
    assert study.model_path(first) == "smollm2-135m-instruct"


def test_a_setting_retrains_only_the_cells_it_reaches():
    """RAISE's rounds reach the RAISE cell alone; the featurizer's classes reach the methods
    that read features (IFD, RAISE) and not RAND; the LLM's lr reaches every trained cell."""
    from types import SimpleNamespace

    from raise_select.experiments.study import Study

    def fingerprints(**changes):
        cfg = StudyConfig(
            **{
                "pool": "p.jsonl",
                "model": "m",
                "methods": ["random", "ifd", "raise"],
                "seeds": [0],
                "out": "o",
                **changes,
            }
        )
        study = Study(cfg)
        study.pool, study.model, study.steps = SimpleNamespace(fingerprint="pool"), "m", 4
        study.digest = lambda what: f"{what}={getattr(cfg, what, '')}"
        return {c.name: study.cell_key(c) for c in study.cells}

    base = fingerprints()
    changed = lambda **kw: {name for name, fp in fingerprints(**kw).items() if fp != base.get(name)}  # noqa: E731
    assert changed(rounds=3) == {"raise"}
    assert changed(classes=3) == {"ifd", "raise"}
    assert changed(lr=1e-3) == {"full", "random-s0", "ifd", "raise"}
    assert changed(seeds=[0, 2]) == {"random-s2"}  # a new seed is a new cell; s0 keeps its key
    assert changed(eval_limit=3) == set()
    assert changed(full_steps=2) == changed(full_epochs=1) == {"full"}


def test_policy_training_time_counts_every_run_of_a_resumed_folder(tmp_path):
    """A RAISE cell resumed from its round checkpoints costs the earlier rounds too: its
    time is the episodes' logged seconds (a redone round once, the later line)."""
    import json

    from raise_select.training.finetune import policy_training_episodes, policy_training_seconds

    lines = [
        {"kind": "reference", "time": {"train": 10.0, "reward": 5.0}},
        {"kind": "step", "round": 1, "time": {"train": 99.0}},  # steps are inside their round
        {"kind": "round", "round": 1, "time": {"train": 20.0, "reward": 6.0, "ppo": 1.0}},
        {"kind": "round", "round": 2, "time": {"train": 30.0, "reward": 7.0}},
        {"kind": "round", "round": 2, "time": {"train": 31.0, "reward": 8.0}},  # redone: counted once
    ]
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    assert policy_training_seconds(path) == pytest.approx(15.0 + 27.0 + 39.0)
    assert policy_training_episodes(path) == {"reference": 15.0, "round 1": 27.0, "round 2": 39.0}
    with open(path, "a") as f:  # a line cut short by a crash mid-write: dropped
        f.write('{"kind": "round", "round": 3, "ti')
    assert policy_training_seconds(path) == pytest.approx(15.0 + 27.0 + 39.0)
    assert policy_training_seconds(tmp_path / "missing.jsonl") == 0.0


def _fingerprints_of(methods, options=None, **changes):
    from types import SimpleNamespace

    from raise_select.experiments.study import Study

    cfg = StudyConfig(**{"pool": "p.jsonl", "model": "m", "methods": methods, "seeds": [0], "out": "o", **changes})
    study = Study(cfg, options)
    study.pool, study.model, study.steps = SimpleNamespace(fingerprint="pool"), "m", 4
    study.digest = lambda what: f"{what}={getattr(cfg, what, '')}"  # the model's weights, by their settings here
    return {c.name: study.cell_key(c) for c in study.cells}


def test_featurize_settings_reach_only_the_methods_that_read_the_features():
    """classes, sem_dim and aux_model retrain the cells whose method reads the features, as the
    method says with its options; LESS, AlpaGasus, EMBED (and DEITA on another embedder, SSPL
    on the target's loss) keep their keys."""
    methods = ["random", "ifd", "deita", "alpagasus", "sspl", "less", "embed", "rds", "raise"]
    for options, readers in (
        ({}, {"ifd", "deita", "sspl", "rds", "raise"}),
        ({"deita": {"embedder": "all-minilm-l6-v2"}, "sspl": {"loss": "target"}}, {"ifd", "rds", "raise"}),
    ):
        base = _fingerprints_of(methods, options)
        for change in ({"classes": 3}, {"sem_dim": 8}, {"aux_model": "other"}):
            after = _fingerprints_of(methods, options, **change)
            assert {n for n, fp in after.items() if fp != base[n]} == readers, change


def test_a_study_of_methods_that_read_no_features_never_featurizes(tmp_path, monkeypatch):
    """A study with only LESS, AlpaGasus and EMBED featurizes nothing, hands no features to the
    methods, and charges no featurize time to their cost; a cell runs without `prepare`."""
    import importlib
    from pathlib import Path

    import raise_select.experiments.study as study_module
    from raise_select.data.synthetic import SyntheticConfig, generate_pool, write_jsonl
    from raise_select.experiments.study import Study
    from raise_select.io import write_json_atomic

    pool = write_jsonl(tmp_path / "pool.jsonl", generate_pool(SyntheticConfig(size=16)))
    handed = {}

    def fake_baseline(cfg, options):
        handed[cfg.method] = cfg.features
        write_json_atomic(Path(cfg.out) / "selection.json", {"ids": [], "steps": 2})
        (Path(cfg.out) / "model").mkdir(exist_ok=True)
        return {"steps": 2}

    def no_featurize(*a, **k):
        raise AssertionError("featurized a pool no method reads")

    monkeypatch.setattr(study_module, "run_baseline", fake_baseline)
    # the module, not the function the package exports under the same name
    monkeypatch.setattr(importlib.import_module("raise_select.features.featurize"), "featurize", no_featurize)
    monkeypatch.setattr(study_module, "featurize", no_featurize)
    monkeypatch.setattr(study_module, "evaluate", lambda cfg: {"arc_challenge": {"score": 0.5}})
    monkeypatch.setattr(Study, "features_seconds", lambda self: 100.0)  # as if an earlier run had featurized
    monkeypatch.setattr(Study, "counted_basis", lambda self: (1000, 100))  # the fake model "m" is never loaded
    cfg = StudyConfig(
        pool=str(pool),
        model="m",
        methods=["less", "alpagasus", "embed"],
        val=str(pool),  # the targeted methods' validation set (a file: no named set is read here)
        tasks=["arc_challenge"],
        budget=4,
        batch_size=4,
        out=str(tmp_path / "study"),
    )
    alone = Study(cfg)
    assert alone.run_cell(alone.cells[2])["name"] == "less"  # no prepare() first
    result = Study(cfg).run()
    assert handed == {"full": "", "less": "", "alpagasus": "", "embed": ""}
    assert not (tmp_path / "study" / "features").exists()
    stats = json.loads((tmp_path / "study" / "study_table.json").read_text())["method_stats"]["rows"]
    assert all(stats[row]["seconds"] < 100.0 for row in ("LESS", "AlpaGasus", "EMBED")), stats
    assert result["failed"] == {}


def test_study_jobs_take_their_settings_from_one_mapping():
    """Every job field named in JOB_FIELDS exists in its job's config and takes a study setting;
    every study setting reaches a job or is read by the study itself (a new one must be routed)."""
    import dataclasses

    from raise_select.baselines.run import BaselineConfig
    from raise_select.evaluation.evaluate import EvaluateConfig
    from raise_select.experiments.study import _NOT_TRAINING, JOB_FIELDS, job_settings
    from raise_select.features.featurize import FeaturizeConfig
    from raise_select.training.train_policy import TrainPolicyConfig

    jobs = {
        "featurize": FeaturizeConfig,
        "train_policy": TrainPolicyConfig,
        "baseline": BaselineConfig,
        "evaluate": EvaluateConfig,
    }
    assert set(JOB_FIELDS) == set(jobs)
    cfg = StudyConfig(seed=7, eval_limit=3, eval_batch_size=5, aux_model="aux", classes=4)
    for job, cls in jobs.items():
        built = cls(**job_settings(cfg, job))
        for name, study_name in JOB_FIELDS[job].items():
            assert getattr(built, name) == getattr(cfg, study_name), (job, name)
    assert job_settings(cfg, "evaluate")["limit"] == 3 and job_settings(cfg, "evaluate")["batch_size"] == 5
    read_by_study = {
        "pool",
        "format",
        "pool_size",
        "model",
        "build_model",
        "methods",
        "seeds",
        "raise_seeds",
        "full_steps",
        "full_epochs",
        "targets",
        "heldout_size",
        "report_only",
        "loss_set",
        "loss_split",
        "loss_size",
        "out",
    }
    routed = {f for m in JOB_FIELDS.values() for f in m.values()} | read_by_study | set(_NOT_TRAINING)
    assert {f.name for f in dataclasses.fields(StudyConfig)} == routed
