"""The trusted protocol of the study (issue 32) on the tests' tiny model: dev then test
evaluations of the same cells without retraining, the metric chosen per target, paired
differences against RAND and against the best static selector chosen on dev, provenance, and
the distinct rows each cell trained on, counted by hand."""

from __future__ import annotations

import json

import numpy as np
import pytest

from raise_select.errors import UserError
from raise_select.experiments.provenance import code_version, provenance_markdown
from raise_select.experiments.study import Study, StudyConfig, plan_cells
from raise_select.reports.intervals import difference_interval
from raise_select.reports.study import gain_rows


def tiny(shared_data, model, out, **changes) -> StudyConfig:
    return StudyConfig(
        **{
            "model": str(model),
            "pool": str(shared_data / "alpaca/alpaca_data.json"),
            "data_dir": str(shared_data),
            "pool_size": 24,
            "targets": ["gsm8k", "arc_challenge"],
            "val_size": 4,
            "heldout_size": {"gsm8k": 5, "arc_challenge": 6},
            "tasks": [],
            "methods": ["random", "rds", "ifd", "raise_rds"],
            "seeds": [0, 1],
            "raise_seeds": [0, 1],
            "method_seeds": [0, 1],
            "budget": 4,
            "batch_size": 4,
            "epochs": 1,
            "full_steps": 2,
            "rounds": 1,
            "max_length": 64,
            "classes": 2,
            "sem_dim": 4,
            "lr": 1e-3,
            "device": "cpu",
            "out": str(out),
            **changes,
        }
    )


OPTIONS = {"raise": {"val_size": 3}}


def test_dev_then_test_evaluates_the_same_cells_and_reads_the_best_static_row_from_dev(
    shared_data, tiny_model_dir, tmp_path
):
    from raise_select.data.validation import load_validation
    from raise_select.evaluation.loss import heldout_values

    out = tmp_path / "study"
    dev = Study(tiny(shared_data, tiny_model_dir, out, heldout_split="dev"), OPTIONS)
    dev_result = dev.run()
    trained = [c.name for c in dev.cells if c.method is not None]
    assert dev.trainings == len(trained) == 14  # full x2, random x2, rds x2 x2, ifd x2, raise_rds x2 x2
    # The metric per target (auto): choice cross-entropy on ARC, with accuracy; response loss on GSM8K.
    records = {r["name"]: r for r in dev_result["records"]}
    base = records["base"]
    assert base["evals"]["arc_challenge:dev"]["metric"] == "choice_ce" and "acc" in base["evals"]["arc_challenge:dev"]
    assert base["evals"]["gsm8k:dev"]["metric"] == "neg_loss" and "acc" not in base["evals"]["gsm8k:dev"]
    # ... the same figures as the evaluation package's own function gives the base model
    items = load_validation("arc_challenge:dev", shared_data, n=6, seed=0)
    ce = heldout_values(str(tiny_model_dir), items, "choice_ce", max_length=64)
    assert base["evals"]["arc_challenge:dev"]["values"] == pytest.approx(ce, abs=1e-5)
    acc = heldout_values(str(tiny_model_dir), items, "choice_acc", max_length=64)
    assert base["evals"]["arc_challenge:dev"]["acc"] == pytest.approx(acc)
    assert "choice cross-entropy" in dev_result["markdown"] and "arc_challenge acc (Δ)" in dev_result["markdown"]

    # The test split: the same cells, evaluated again, nothing trained.
    test = Study(tiny(shared_data, tiny_model_dir, out, heldout_split="test"), OPTIONS)
    result = test.run()
    assert test.trainings == 0 and result["computed"] == []
    records = {r["name"]: r for r in result["records"]}
    for name in ("base", *trained):
        evals = records[name]["evals"]
        targets = ["gsm8k", "arc_challenge"] if "@" not in name else [name.split("@")[1].split("-")[0]]
        for t in targets:
            assert evals[f"{t}:dev"]["key"] != evals[f"{t}:test"]["key"], name
            assert evals[f"{t}:dev"]["values"] != evals[f"{t}:test"]["values"], name
    held_test = {e.messages[0][1] for e in load_validation("arc_challenge:test", shared_data, n=6, seed=0)}
    assert not held_test & {e.messages[0][1] for e in items}

    # The best static selector on dev: the higher mean dev gain of RDS+ and IFD, by hand.
    def dev_gain(method, t):
        b = np.array(records["base"]["evals"][f"{t}:dev"]["values"])
        cells = [r for r in records.values() if r["method"] == method and r.get("target") in (None, t)]
        return np.mean([np.mean(b - np.array(r["evals"][f"{t}:dev"]["values"])) for r in cells])

    summary = json.loads((out / "study_gains.json").read_text())
    for t in ("gsm8k", "arc_challenge"):
        assert summary["best_static"][t] == max(("rds", "ifd"), key=lambda m: dev_gain(m, t))
    md = result["markdown"]
    assert "chosen on the dev split" in md and "| row - RAND |" in md and "| RAISE row - best static |" in md

    # Paired differences: each row minus RAND from the test figures, by hand.
    def gains(method, t):
        b = np.array(records["base"]["evals"][f"{t}:test"]["values"])
        cells = sorted(
            (r for r in records.values() if r["method"] == method and r.get("target") in (None, t)),
            key=lambda r: r["seed"],
        )
        return [b - np.array(r["evals"][f"{t}:test"]["values"]) for r in cells]

    d = result["differences"]["arc_challenge"]["vs_random"]["rds"]
    want = difference_interval(gains("rds", "arc_challenge"), gains("random", "arc_challenge"))
    assert (d["mean"], d["low"], d["high"]) == pytest.approx((want.mean, want.low, want.high))
    ref = summary["best_static"]["gsm8k"]
    d = result["differences"]["gsm8k"]["vs_static"]["raise_rds"]
    want = difference_interval(gains("raise_rds", "gsm8k"), gains(ref, "gsm8k"))
    assert d["mean"] == pytest.approx(want.mean) and d["high"] == pytest.approx(want.high)

    # Distinct rows trained on, by hand: a static selection's ids, RAISE's batches, the 100%
    # row's capped steps (2 steps of 4 rows).
    rows = result["gains"]
    sel = [json.loads((out / "cells" / f"rds@gsm8k-s{s}" / "selection.json").read_text())["ids"] for s in (0, 1)]
    counts = sorted(len(set(ids)) for ids in sel)
    assert rows["rds"]["gsm8k"]["distinct_rows"] == (
        f"{counts[0]}" if counts[0] == counts[1] else f"{counts[0]}-{counts[1]}"
    )
    raise_counts = []
    for s in (0, 1):
        log = out / "cells" / f"raise_rds@arc_challenge-s{s}" / "finetune" / "selections.jsonl"
        raise_counts.append(len({i for line in log.open() for i in json.loads(line)["ids"]}))
    lo, hi = min(raise_counts), max(raise_counts)
    assert rows["raise_rds"]["arc_challenge"]["distinct_rows"] == (f"{lo}" if lo == hi else f"{lo}-{hi}")
    assert rows["full"]["gsm8k"]["distinct_rows"] == "8"
    assert rows["ifd"]["gsm8k"]["runs"] == 2 and rows["random"]["gsm8k"]["seeds"] == [0, 1]

    # Provenance: every cell and evaluation records this process's code version and packages.
    version = code_version()
    for r in records.values():
        assert r["code"] == version and "torch" in r["versions"]
        assert all(e["code"] == version for e in r["evals"].values())
    assert "comes from one code version" in md
    assert "Provenance: every cell and evaluation" in (out / "study_gains.md").read_text()
    assert (out / "study_gains_test.md").read_text() == (out / "study_gains.md").read_text()
    assert "`dev` split" in (out / "study_gains_dev.md").read_text()  # the dev table kept beside it

    # Dev results missing (a static cell's dev evaluation removed): no best static row is chosen.
    path = out / "cells" / "ifd-s1" / "cell.json"
    record = json.loads(path.read_text())
    del record["evals"]["gsm8k:dev"]
    path.write_text(json.dumps(record))
    report = Study(tiny(shared_data, tiny_model_dir, out, heldout_split="test", report_only=True), OPTIONS).run()
    assert "gsm8k: dev results missing for IFD" in report["markdown"]
    assert report["differences"]["gsm8k"]["vs_static"] == {}
    assert report["differences"]["arc_challenge"]["best_static"] in ("rds", "ifd")


def test_settings_of_the_protocol_are_checked_and_keyed(tmp_path):
    cfg = StudyConfig(pool="p", model="m", out=str(tmp_path), targets=["gsm8k"], tasks=[])
    for change, message in [
        ({"heldout_split": "train"}, "heldout_split: 'train'"),
        ({"metric": "accuracy"}, "metric: 'accuracy'"),
        ({"heldout_size": {"gsm8k": 0}}, "heldout_size: 0 for gsm8k"),
        ({"heldout_size": {"arc_chalenge": 5}}, "heldout_size: 'arc_chalenge' is not a target with held-out sets"),
        ({"method_seeds": []}, "method_seeds: give at least one seed"),
    ]:
        with pytest.raises(UserError, match=message):
            plan_cells(StudyConfig(**{**cfg.__dict__, **change}))
    # a size for a target the study leaves out is ignored: a shipped grid cut down by `--set study.targets`
    assert [c.name for c in plan_cells(StudyConfig(**{**cfg.__dict__, "heldout_size": {"gsm8k": 8, "mmlu": 5}}))]
    # seeds: RAND `seeds`, RAISE `raise_seeds`, every other row (the 100% row too) `method_seeds`
    grid = {"methods": ["random", "less", "raise_less"], "seeds": [0, 1, 2], "raise_seeds": [4], "method_seeds": [4, 5]}
    names = [c.name for c in plan_cells(StudyConfig(**{**cfg.__dict__, **grid}))]
    assert names == ["base", "full-s4", "full-s5", "random-s0", "random-s1", "random-s2",
                     "less@gsm8k-s4", "less@gsm8k-s5", "raise_less@gsm8k-s4"]  # fmt: skip
    study = Study(StudyConfig(**{**cfg.__dict__, "methods": ["less", "raise_less"], "method_seeds": [0, 1]}))
    assert study._prior_cell_for("raise_less", "gsm8k", 1).name == "less@gsm8k-s1"  # its LESS warm-up's seed
    assert study._prior_cell_for("raise_less", "gsm8k", 7).name == "less@gsm8k-s0"  # the study's seed
    every = ["full", "random", "ifd", "sspl", "less", "rds", "greats", "rho", "raise", "raise_less", "deita"]
    assert study.static_methods(every) == ["ifd", "less", "rds", "deita"]  # one subset chosen before training
    # an evaluation's key: the split, the metric and the items' contents (the cell's key aside)
    study._digests.update({"heldout:gsm8k:dev": "a", "heldout:gsm8k:test": "b"})
    keys = {study.eval_key("k", "gsm8k:dev"), study.eval_key("k", "gsm8k:test")}
    other = Study(StudyConfig(**{**cfg.__dict__, "metric": "neg_loss"}))
    other._digests.update(study._digests)
    assert other.eval_key("k", "gsm8k:dev") in keys  # auto is neg_loss on GSM8K: the same evaluation
    acc = Study(StudyConfig(**{**cfg.__dict__, "targets": ["arc_challenge"], "metric": "choice_acc"}))
    ce = Study(StudyConfig(**{**cfg.__dict__, "targets": ["arc_challenge"]}))
    for s in (acc, ce):
        s._digests["heldout:arc_challenge:dev"] = "a"
    assert acc.eval_key("k", "arc_challenge:dev") != ce.eval_key("k", "arc_challenge:dev")
    assert len(keys) == 2
    with pytest.raises(UserError, match="metric: choice_ce scores choices; target 'gsm8k' is not multiple choice"):
        Study(StudyConfig(**{**cfg.__dict__, "metric": "choice_ce"}))


def test_gain_on_accuracy_is_the_row_minus_the_base_and_on_a_loss_the_base_minus_the_row():
    base = {"metric": "choice_acc", "values": [1.0, 0.0, 0.0, 1.0], "acc": [1.0, 0.0, 0.0, 1.0]}

    def cell(method, seed, values, acc=None):
        return {"method": method, "target": None, "seed": seed, "select_seconds": 1.0, "train_seconds": 1.0,
                "heldout": {"t": {"metric": base["metric"], "values": values, "acc": acc}}}  # fmt: skip

    records = [cell("random", 0, [1.0, 1.0, 0.0, 1.0], [1.0, 1.0, 0.0, 1.0]),
               cell("random", 1, [1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 1.0, 1.0])]  # fmt: skip
    rows = gain_rows(records, {"t": base}, ["t"], 0, 10.0, 0.0, ())
    assert rows["random"]["t"]["gain"] == pytest.approx((0.75 - 0.5 + 1.0 - 0.5) / 2)  # accuracy up: positive
    assert rows["random"]["t"]["acc_gain"] == pytest.approx(0.375) and rows["random"]["t"]["seeds"] == [0, 1]
    loss = {"metric": "choice_ce", "values": [2.0, 1.0], "acc": [0.0, 1.0]}
    records = [{**cell("x", 0, [1.5, 1.5], [1.0, 0.0]), "heldout": {"t": {"metric": "choice_ce", "values": [1.5, 1.5],
                                                                          "acc": [1.0, 0.0]}}}]  # fmt: skip
    rows = gain_rows(records, {"t": loss}, ["t"], 0, 10.0, 0.0, ())
    assert rows["x"]["t"]["gain"] == pytest.approx(1.5 - 1.5 + 0.0)  # (2 - 1.5 + 1 - 1.5) / 2
    assert rows["x"]["t"]["figure"] == pytest.approx(1.5) and rows["x"]["t"]["acc_gain"] == pytest.approx(0.0)


def test_provenance_names_every_code_version_and_has_a_fallback_outside_git(tmp_path):
    assert code_version(str(tmp_path)) == {"commit": None, "dirty": None, "source": "not a git checkout"}
    here = code_version()
    assert here["source"] == "git" and len(here["commit"]) == 40 and isinstance(here["dirty"], bool)
    one = {"name": "a", "code": {"commit": "1" * 40, "dirty": False}, "versions": {"torch": "2.1"}, "evals": {}}
    two = {"name": "b", "code": {"commit": "2" * 40, "dirty": True}, "versions": {"torch": "2.2"},
           "evals": {"t:test": {"code": {"commit": "1" * 40, "dirty": False}}}}  # fmt: skip
    assert "one code version (111111111111)" in provenance_markdown([one])
    md = provenance_markdown([one, two])
    assert "2 code versions" in md and "- 111111111111: a, b (t:test)" in md and "- 222222222222+changes: b" in md
    assert "torch 2.1, 2.2" in md


def test_trained_minus_its_untrained_initialisation_is_paired_by_seed():
    """The 'what policy training adds' difference: each trained RAISE row minus its 0-round row,
    paired by seed, against a hand computation of the paired row rule's mean; the registry names
    each trained preset's initialisation."""
    from raise_select.experiments.methods import METHODS
    from raise_select.reports.intervals import difference_interval
    from raise_select.reports.study import differences_markdown, paired_differences

    assert METHODS["raise"].initialisation == METHODS["raise_credit"].initialisation == "raise_untrained"
    assert METHODS["raise_less_credit"].initialisation == "raise_less_untrained"
    assert METHODS["raise_untrained"].episode == {"rounds": 0}
    rng = np.random.default_rng(0)
    base = {"metric": "choice_ce", "values": list(rng.normal(2.0, 0.5, 40))}
    seeds, recs, per = [0, 1, 2], [], {}
    for m, shift in (("raise_credit", 0.3), ("raise_untrained", 0.1), ("random", 0.0)):
        for s in seeds:
            v = np.asarray(base["values"]) - shift - rng.normal(0, 0.05) - rng.normal(0, 0.02, 40)
            recs.append(
                {"method": m, "seed": s, "target": "t", "heldout": {"t": {"metric": "choice_ce", "values": list(v)}}}
            )
            per.setdefault(m, {})[s] = np.asarray(base["values"]) - v
    diffs = paired_differences(
        recs,
        {"t": base},
        ["t"],
        ["raise_credit", "raise_untrained"],
        {"t": None},
        None,
        {"raise_credit": "raise_untrained"},
    )
    got = diffs["t"]["vs_init"]["raise_credit"]
    by_hand = np.mean([per["raise_credit"][s] - per["raise_untrained"][s] for s in seeds])
    assert got["mean"] == pytest.approx(by_hand) and got["low"] < by_hand < got["high"]
    want = difference_interval(
        [per["raise_credit"][s] for s in seeds], [per["raise_untrained"][s] for s in seeds], paired=True
    )
    assert (got["low"], got["high"]) == pytest.approx((want.low, want.high))
    assert got["low"] > 0  # a true difference of 0.2 nats, seed noise 0.05: detected
    md = differences_markdown(diffs, ["t"], {"raise_credit": "RAISE (credit)"}, "")
    assert "trained - untrained" in md and f"| RAISE (credit) | **{by_hand:+.4f} [" in md
    # A trained row with one seed of three: compared with its own seed's initialisation only
    one = [r for r in recs if not (r["method"] == "raise_credit" and r["seed"] != 1)]
    diffs = paired_differences(one, {"t": base}, ["t"], [], {"t": None}, None, {"raise_credit": "raise_untrained"})
    got = diffs["t"]["vs_init"]["raise_credit"]
    assert got["mean"] == pytest.approx(np.mean(per["raise_credit"][1] - per["raise_untrained"][1]))


def test_a_difference_table_with_rand_alone_says_so():
    from raise_select.reports.study import differences_markdown

    empty = {"t": {"vs_random": {}, "vs_static": {}, "vs_init": {}, "best_static": None}}
    md = differences_markdown(empty, ["t"], {}, "")
    assert "| (no RAND row, or no row beside it) | n/a |" in md and "trained - untrained" not in md


def test_a_preset_setting_that_overrides_the_study_s_does_not_key_its_cell(tmp_path):
    """raise_untrained trains 0 rounds whatever the study's `rounds`: its key must not follow
    `study.rounds`, while the trained rows' keys must."""
    keys = {}
    for rounds in (1, 2):
        study = Study(
            StudyConfig(
                pool="p", model="m", out=str(tmp_path), targets=["gsm8k"], tasks=[], rounds=rounds,
                methods=["raise", "raise_untrained"], raise_seeds=[0],
            )
        )  # fmt: skip
        study._digests.update({"model": "m", "val:gsm8k": "v", "aux_model": "a"})
        study.pool, study.model, study.steps = type("P", (), {"fingerprint": "f"})(), "m", 24  # as prepare() sets
        keys[rounds] = {c.method: study.cell_key(c) for c in study.cells if c.method in ("raise", "raise_untrained")}
    assert keys[1]["raise_untrained"] == keys[2]["raise_untrained"]
    assert keys[1]["raise"] != keys[2]["raise"]


def test_a_study_takes_its_code_version_when_it_starts(monkeypatch):
    """The commit is read when the study starts (its code loaded then), before any cell is computed
    or written: a commit made while it runs is not recorded as its code."""
    from raise_select.experiments import provenance
    from raise_select.experiments import study as study_module
    from raise_select.experiments.study import StudyConfig

    provenance.code_version.cache_clear()
    seen = {}
    monkeypatch.setattr(study_module.Study, "__init__", lambda self, cfg, options=None: None)
    monkeypatch.setattr(
        study_module.Study, "run", lambda self: seen.setdefault("cached", provenance.code_version.cache_info().currsize)
    )
    study_module.run_study(StudyConfig(pool="p.json", model="m", out="o"), {})
    assert seen["cached"] == 1
