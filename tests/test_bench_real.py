"""The real-data benchmark as a study (`configs/study_real_smollm2.yaml`) and its extra tables
(`experiments.bench`, `reports.study`), on a tiny model: package code only."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest

from raise_select.experiments.study import Study, StudyConfig, method_sections
from raise_select.reports.study import ablation_markdown, prior_markdown, topic_markdown

CONFIG = "study_real_smollm2"
PINS = Path(__file__).parent / "pins" / "refactor_pins.json"


def real_study(shared_data, model, out, **changes) -> StudyConfig:
    """The shipped benchmark config at a tiny size (what the refactor pinned: see docs/benchmarks.md)."""
    from raise_select.config import resolve

    settings = {
        "model": str(model),
        "pool": str(shared_data / "alpaca/alpaca_data.json"),
        "data_dir": str(shared_data),
        "pool_size": 40,
        "budget": 8,
        "val_size": 4,
        "heldout_size": 6,
        "max_length": 96,
        "classes": 2,
        "methods": ["random", "rds", "ifd", "raise_rds"],
        "seeds": [0, 1],
        "raise_seeds": [0],
        "rounds": 1,
        "select_every": 2,
        "targets": ["gsm8k", "arc_challenge"],
        "out": str(out),
        **changes,
    }
    cfg = resolve(StudyConfig, "study", CONFIG, None, settings)
    # the shipped 3 seeds per method are out of a test's time: one cell per method unless asked
    return dataclasses.replace(cfg, method_seeds=changes.get("method_seeds"))


def options(cfg, **extra):
    sections = method_sections(CONFIG, None, cfg.methods)
    sections.setdefault("raise", {})["val_size"] = 3
    return {**sections, **extra}


def test_topic_table_lists_each_row_once():
    """Rows in the order given, a RAISE row's policy-only share under it, labelled."""
    share = {"share": 0.25, "cells": 3}
    topics = {
        "gsm8k": {
            "rule": "math",
            "pool": 0.05,
            "methods": {
                "raise_rds": share,
                "raise_rds:policy": {"share": 0.5, "cells": 3},
                "full": share,
                "rds": share,
            },
        }
    }
    labels = {"full": "100%", "rds": "RDS+", "raise_rds": "RAISE (+RDS+ prior)"}
    md = topic_markdown(topics, ["gsm8k"], labels)
    rows = [line.split(" | ")[0] for line in md.splitlines() if line[:2] == "| "]
    assert rows == [
        "| rows trained on",
        "| the pool (base rate)",
        "| 100%",
        "| RDS+",
        "| RAISE (+RDS+ prior)",
        "| RAISE (+RDS+ prior), the policy's own batches",
    ]
    assert "| RAISE (+RDS+ prior), the policy's own batches | 50.0% (3) |" in md


def test_ablation_table_is_each_cells_gain_and_cost():
    """Per RAISE cell: base loss - its mean held-out loss, and (selection + training + prior +
    featurize seconds) / Φ, by hand; a target without a cell reads n/a."""

    def cell(method, label, seed, losses, prior=0.0, runs="raise"):
        return {
            "method": method,
            "row": label,
            "runs": runs,
            "target": "gsm8k",
            "seed": seed,
            "select_seconds": 30.0,
            "train_seconds": 10.0,
            "prior_seconds": prior,
            "evals": {"gsm8k": {"losses": losses}},
        }

    records = [
        cell("raise_rds", "RAISE (+RDS+ prior)", 1, [1.2, 1.0]),
        cell("raise_rds", "RAISE (+RDS+ prior)", 0, [0.9, 1.1]),
        cell("raise_less", "RAISE (+LESS prior, policy between)", 0, [1.0, 0.8], prior=40.0),
        cell("random", "RAND", 0, [0.0, 0.0], runs="baseline"),  # not a RAISE row
    ]
    md = ablation_markdown(
        records, {"gsm8k": [1.5, 1.3], "arc_challenge": [2.0]}, ["gsm8k", "arc_challenge"], 100.0, 20.0
    )
    rows = [line for line in md.splitlines() if line.startswith("| RAISE (")]
    assert rows == [
        "| RAISE (+RDS+ prior) | 0 | +0.4000 (0.60) | n/a |",  # 1.4 - 1.0; (30 + 10 + 20) / 100
        "| RAISE (+RDS+ prior) | 1 | +0.3000 (0.60) | n/a |",
        "| RAISE (+LESS prior, policy between) | 0 | +0.5000 (1.00) | n/a |",  # (30 + 10 + 40 + 20) / 100
    ]
    assert ablation_markdown(records[3:], {"gsm8k": [1.0]}, ["gsm8k"], 100.0, 0.0) == ""


def test_prior_table_against_hand_counts():
    """The share inside the source selection, distinct rows and mean score percentile, against
    counts by hand on a 5-row pool (an unscored row ranks lowest)."""
    ids = ["a", "b", "c", "d", "e"]
    # ascending ranks: b (None) 1, a 2, d 3, c 4, e 5 -> percentiles a .4, b .2, c .8, d .6, e 1
    sel = {"ids": ["e", "c"], "pool_scores": [0.1, None, 0.5, 0.3, 0.9]}
    label = "RAISE (+LESS prior, policy between)"
    records = [
        {"method": "raise_less", "row": label, "target": "gsm8k", "seed": 0, "chosen": ["e", "e", "a", "c"]},
        {"method": "raise", "row": "RAISE", "target": "gsm8k", "seed": 0, "chosen": ["a"]},  # no prior from a cell
        {"method": "raise_less", "row": label, "target": "arc_challenge", "seed": 0, "chosen": ["a"]},  # no source
    ]
    prior_from = {"raise_less": "less", "raise": None}
    md = prior_markdown(records, {("less", "gsm8k"): sel}, ids, prior_from)
    rows = [line for line in md.splitlines() if line.startswith("| RAISE (")]
    # inside: e, e, c of 4 = 75%; distinct e, a, c = 3; mean percentile (1 + 1 + .4 + .8) / 4 = 0.80
    assert rows == [f"| {label} | gsm8k | 0 | 75% | 3 | 0.80 |"]
    assert prior_markdown(records[1:], {}, ids, prior_from) == ""


def test_less_and_rose_cells_share_one_gradient_cache(tmp_path, monkeypatch):
    """LESS's pool gradients do not depend on the target: every less and rose cell points at one
    cache (the methods' registry entries say so), rds at none, and the cache's folder is no part
    of a cell's key."""
    import raise_select.experiments.study as study_module

    jobs = {}

    def fake(cfg, opts):
        jobs[(cfg.method, cfg.val)] = cfg.cache
        return {"steps": 1}

    monkeypatch.setattr(study_module, "run_baseline", fake)
    cfg = StudyConfig(
        pool="p", model="m", methods=["less", "rose", "rds"], targets=["gsm8k"], tasks=[], out=str(tmp_path)
    )
    study = Study(cfg)
    study.pool_spec, study.steps, study.val_files = "p", 3, {"gsm8k": "v.jsonl"}
    study.pool = type("P", (), {"format": "alpaca", "fingerprint": "x"})()
    study.model, study._features = "m", "features"  # featurized already
    for cell in study.cells[2:]:
        study._train(cell)
    assert {jobs[m, "v.jsonl"] for m in ("less", "rose")} == {str(tmp_path / "cache")}
    assert jobs["rds", "v.jsonl"] == ""


def test_the_benchmark_study_and_its_tables_on_a_tiny_model(shared_data, tiny_model_dir, tmp_path):
    """The shipped config at a tiny size: the gain table, RAISE's costs from its metrics log, the
    on-topic shares counted by hand, the held-out items from another split than the validation
    items; a rerun trains nothing, and --report (report_only) computes nothing."""
    from raise_select.data.quantitative import is_quantitative
    from raise_select.data.validation import load_validation
    from raise_select.experiments.bench import bench_tables
    from raise_select.training.finetune import policy_training_seconds

    out = tmp_path / "bench"
    cfg = real_study(shared_data, tiny_model_dir, out)
    study = Study(cfg, options(cfg))
    result = study.run()
    summary = bench_tables(study, result)
    rows = summary["rows"]
    assert list(rows) == ["full", "random", "rds", "ifd", "raise_rds"]
    assert set(rows["rds"]) == {"gsm8k", "arc_challenge"} and set(rows["ifd"]) == {"gsm8k", "arc_challenge"}
    assert rows["random"]["gsm8k"]["runs"] == 2 and "2 seeds" in rows["random"]["gsm8k"]["rule"]
    assert rows["rds"]["gsm8k"]["runs"] == 1
    for by_target in rows.values():
        for c in by_target.values():
            assert c["low"] <= c["gain"] <= c["high"]
    # Counted Φ: the 100% row is one epoch, a forward and a backward pass over every pool token, so
    # 1 Φ at the target's size (here a LoRA model, weighted by its own parameter count).
    full = json.loads((out / "cells" / "full" / "cell.json").read_text())["costs"]
    (model,) = full["models"].values()
    assert model["forward_tokens"] == model["backward_tokens"] == full["pool_tokens"]
    assert rows["full"]["gsm8k"]["phi_counted"] == pytest.approx(model["parameters"] / full["target_parameters"])
    # a 3-epoch pass over 8 of the 40 rows: about 3 x 8 / 40 = 0.6 of that (rows differ in length)
    assert 0.2 < rows["random"]["gsm8k"]["phi_counted"] / rows["full"]["gsm8k"]["phi_counted"] < 1.2
    # RAISE: a policy with the RDS+ prior, then fine-tuning; its cost per part from its metrics log.
    cells = [out / "cells" / f"raise_rds@{t}-s0" for t in cfg.targets]
    policy = json.loads((cells[0] / "train_policy" / "policy" / "policy.json").read_text())
    assert policy["config"]["prior"] == "rds" and policy["dims"]["prior_dim"] == 1
    costs = summary["raise_costs"]["raise_rds"]
    assert costs["cells"] == 2 and costs["rounds"] == 1
    total = sum(policy_training_seconds(c / "train_policy" / "metrics.jsonl") for c in cells) / 2
    assert costs["reference"] + costs["round"] == pytest.approx(total)
    md = (out / "bench_real.md").read_text()
    assert "reference episode" in md and "On-topic share" in md and (out / "bench_real.png").is_file()
    # On-topic shares by hand.
    maths = {e.id for e in study.pool.examples if is_quantitative(e)}
    topics = summary["topics"]["gsm8k"]
    assert topics["pool"] == pytest.approx(len(maths) / len(study.pool))
    rds_ids = json.loads((out / "cells" / "rds@gsm8k" / "selection.json").read_text())["ids"]
    assert topics["methods"]["rds"]["share"] == pytest.approx(sum(i in maths for i in rds_ids) / len(rds_ids))
    lines = [json.loads(line) for line in (cells[0] / "finetune" / "selections.jsonl").open()]
    raise_ids = [i for line in lines for i in line["ids"]]
    own = [i for line in lines if line["step"] % 2 == 1 for i in line["ids"]]
    assert len(raise_ids) == study.steps * cfg.batch_size and 0 < len(own) < len(raise_ids)
    assert topics["methods"]["raise_rds"]["share"] == pytest.approx(sum(i in maths for i in raise_ids) / len(raise_ids))
    assert topics["methods"]["raise_rds:policy"]["share"] == pytest.approx(sum(i in maths for i in own) / len(own))
    # The held-out items (the test split) share no question with the validation items.
    for t in cfg.targets:
        val = {
            json.loads(line)["messages"][0]["content"] for line in (out / "targets" / f"{t}_validation.jsonl").open()
        }
        held = {e.messages[0][1] for e in load_validation(f"{t}:test", shared_data, n=6, seed=0)}
        assert len(val) == 4 and len(held) == 6 and not val & held
    # The refactor kept the chosen rows of the code before the experiments layer (pinned from
    # commit 8a6c789). The trusted protocol changed the held-out items and metric (so the pinned
    # per-item losses no longer apply) and GSM8K's validation sample (now drawn from the rows
    # outside its dev part); the cells whose inputs it left alone still choose the pinned rows.
    # RAISE's reward on a multiple-choice target is now the choice cross-entropy (train-policy's
    # `metric: auto`), which changes what its policy reads and so its rows there.
    pinned = json.loads(PINS.read_text())["bench_real"]
    records = {r["name"]: r for r in result["records"]}
    assert set(records) == set(pinned)
    for name, pin in pinned.items():
        if "gsm8k" in name or (records[name]["runs"] == "raise" and records[name]["target"] != "gsm8k"):
            continue
        folder = out / "cells" / name
        if "indices" in pin:
            assert json.loads((folder / "selection.json").read_text())["indices"] == pin["indices"], name
        if "finetune" in pin:
            steps = [json.loads(line)["indices"] for line in (folder / "finetune" / "selections.jsonl").open()]
            rounds = [json.loads(line)["indices"] for line in (folder / "train_policy/selections/round_0.jsonl").open()]
            assert steps == pin["finetune"] and rounds == pin["policy_round_0"], name
    reward_log = {
        t: (out / "cells" / f"raise_rds@{t}-s0" / "train_policy" / "run.log").read_text() for t in cfg.targets
    }
    assert "metric choice_ce" in reward_log["arc_challenge"] and "metric neg_loss" in reward_log["gsm8k"]
    # A rerun trains nothing; report_only computes nothing and leaves a method never run out.
    again = Study(cfg, options(cfg))
    assert again.run()["computed"] == [] and again.trainings == 0
    report_cfg = real_study(shared_data, tiny_model_dir, out, report_only=True, methods=["random", "sspl"])
    report = Study(report_cfg, options(report_cfg))
    result = report.run()
    assert report.trainings == 0 and "sspl" not in result["gains"] and "random" in result["gains"]
    assert not (out / "cells" / "sspl").exists()


def test_a_less_prior_raise_cell_runs_its_less_cell_first(shared_data, tiny_model_dir, tmp_path):
    """raise_less_untrained (0 rounds) runs the LESS cell of its target first (listed after it,
    it is one cell) and takes its pool scores as the prior; its cost counts that selection; a LESS
    cell killed after selecting trains on the kept selection, priced with the seconds the
    selecting run recorded, and the RAISE cell, whose key holds the LESS cell's, is kept."""
    out = tmp_path / "bench"
    cfg = real_study(
        shared_data,
        tiny_model_dir,
        out,
        pool_size=24,
        heldout_size=4,
        max_length=64,
        methods=["raise_less_untrained", "less"],
        targets=["gsm8k"],
    )
    sections = options(cfg)
    sections["less"] = {"lora_r": 2, "lora_alpha": 4, "proj_dim": 16, "warmup_epochs": 1, "warmup_batch_size": 4}
    first = Study(cfg, sections)
    first.run()
    assert first.computed == ["base", "less@gsm8k", "raise_less_untrained@gsm8k-s0", "full"]
    assert first.trainings == 3  # the base cell trains nothing
    less, cell = out / "cells" / "less@gsm8k", out / "cells" / "raise_less_untrained@gsm8k-s0"
    record = json.loads((cell / "cell.json").read_text())
    assert record["prior_seconds"] == json.loads((less / "cell.json").read_text())["select_seconds"]
    policy = json.loads((cell / "train_policy" / "policy" / "policy.json").read_text())
    assert policy["config"]["prior"] == "selection" and policy["config"]["prior_scale"] == 10.0
    seconds = json.loads((less / "selection.json").read_text())["select_seconds"]
    # Killed after selecting, before training: the cell's record says it was begun with its key.
    key = json.loads((less / "cell.json").read_text())["key"]
    (less / "cell.json").write_text(json.dumps({"key": key, "done": False}))
    (less / "train_done.json").unlink()
    shutil.rmtree(less / "model")
    study = Study(cfg, sections)
    study.run()
    assert study.computed == ["less@gsm8k"] and study.trainings == 1
    assert json.loads((less / "cell.json").read_text())["select_seconds"] == pytest.approx(seconds, abs=0.02)
