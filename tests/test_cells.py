"""The experiments layer's cell store and registry: a killed grid resumes to the same cells and
trains nothing twice; keys follow the contents of the model, pool and validation set, never their
paths; the issue-34 cases of the study and the real-data benchmark (another model, pool or
validation size into an existing folder, a base model replaced at the same path, a damaged
cell.json, a vanished model) give the right result or one line; unknown names say what is close."""

from __future__ import annotations

import dataclasses
import json
import shutil

import pytest
from typer.testing import CliRunner

import raise_select.experiments.study as study_module
from raise_select.errors import UserError
from raise_select.experiments.study import Study, StudyConfig
from raise_select.models.tiny import build_tiny_model

TEXTS = ["What is 12 plus 7? The answer is 19.", "Name three colors: red, green and blue."] * 20


class Killed(BaseException):
    """A kill -9 stand-in: nothing catches it, nothing after it runs."""


@pytest.fixture()
def pool_file(tmp_path):
    from raise_select.data.synthetic import SyntheticConfig, generate_pool, write_jsonl

    return write_jsonl(tmp_path / "inputs" / "pool.jsonl", generate_pool(SyntheticConfig(size=16, seed=3)))


def config(shared_data, model, pool, out, **changes) -> StudyConfig:
    return StudyConfig(
        **{
            "model": str(model),
            "pool": str(pool),
            "data_dir": str(shared_data),
            "targets": ["gsm8k"],
            "val_size": 4,
            "heldout_size": 3,
            "tasks": [],
            "methods": ["random"],
            "seeds": [0],
            "budget": 4,
            "batch_size": 4,
            "max_length": 48,
            "classes": 2,
            "sem_dim": 4,
            "lr": 1e-3,
            "device": "cpu",
            "out": str(out),
            **changes,
        }
    )


@pytest.fixture()
def trainings(monkeypatch):
    """The cells trained (run_baseline with train=True), in order; `kill_at` a cell name to kill there."""
    real = study_module.run_baseline
    state = {"trained": [], "kill_at": None}

    def counting(cfg, options):
        name = cfg.out.rsplit("/", 1)[-1]
        if cfg.train:
            if name == state["kill_at"]:
                raise Killed(name)
            state["trained"].append(name)
        return real(cfg, options)

    monkeypatch.setattr(study_module, "run_baseline", counting)
    return state


def losses(result) -> dict:
    return {r["name"]: (r["key"], r["evals"]) for r in result["records"]}


def test_a_killed_grid_resumes_to_the_same_cells_and_trains_nothing_twice(
    shared_data, tiny_model_dir, pool_file, tmp_path, trainings
):
    kw = dict(methods=["random", "rds"], seeds=[0, 1])
    whole = Study(config(shared_data, tiny_model_dir, pool_file, tmp_path / "whole", **kw)).run()
    assert trainings["trained"] == ["random-s0", "random-s1", "rds@gsm8k", "full"]
    trainings["trained"].clear()

    cfg = config(shared_data, tiny_model_dir, pool_file, tmp_path / "killed", **kw)
    trainings["kill_at"] = "random-s1"  # killed after random-s1 selected, while it trains
    with pytest.raises(Killed):
        Study(cfg).run()
    assert trainings["trained"] == ["random-s0"]
    trainings["trained"].clear()
    trainings["kill_at"] = None
    resumed = Study(cfg).run()
    assert trainings["trained"] == ["random-s1", "rds@gsm8k", "full"]  # nothing finished is trained again
    # The same cells as the uninterrupted run: keys (no path in them) and per-item losses.
    assert losses(resumed) == losses(whole)
    # A study folder moved elsewhere keeps every cell.
    trainings["trained"].clear()
    moved = tmp_path / "elsewhere" / "study"
    shutil.copytree(tmp_path / "whole", moved)
    again = Study(config(shared_data, tiny_model_dir, pool_file, moved, **kw))
    assert again.run()["computed"] == [] and trainings["trained"] == []


def test_keys_follow_the_contents_of_model_pool_and_validation_not_their_paths(
    shared_data, tiny_model_dir, pool_file, tmp_path
):
    val = tmp_path / "inputs" / "val.jsonl"
    shutil.copy(pool_file, val)
    model = tmp_path / "inputs" / "model"
    shutil.copytree(tiny_model_dir, model)

    def keys(model=model, pool=pool_file, val=val, **changes) -> dict:
        cfg = config(shared_data, model, pool, tmp_path / "s", targets=[], tasks=["arc_challenge"], val=str(val))
        cfg.methods = ["random", "rds"]
        for k, v in changes.items():
            setattr(cfg, k, v)
        study = Study(cfg)
        return {c.name: study.cell_key(c) for c in study.cells}

    first = keys()
    # Copies at other paths: the same keys.
    moved = tmp_path / "moved"
    moved.mkdir()
    shutil.copytree(model, moved / "model")
    shutil.copy(pool_file, moved / "pool.jsonl")
    shutil.copy(val, moved / "val.jsonl")
    assert keys(model=moved / "model", pool=moved / "pool.jsonl", val=moved / "val.jsonl") == first
    # The validation rows changed at the same path: the targeted cell only.
    rows = val.read_text().splitlines()
    val.write_text("\n".join(rows[1:]) + "\n")
    changed = {n for n, k in keys().items() if k != first[n]}
    assert changed == {"rds"}
    shutil.copy(pool_file, val)
    # A pool row changed at the same path: every trained cell (the base model is the same).
    pool_rows = pool_file.read_text().splitlines()
    record = json.loads(pool_rows[0])
    record["output"] = record.get("output", "") + " (edited)"
    pool_file.write_text("\n".join([json.dumps(record), *pool_rows[1:]]) + "\n")
    assert {n for n, k in keys().items() if k != first[n]} == {"full", "random-s0", "rds"}
    pool_file.write_text("\n".join(pool_rows) + "\n")
    assert keys() == first
    # The base model rebuilt at the same path with other weights: every cell, the 0% row too.
    shutil.rmtree(model)
    build_tiny_model(model, TEXTS, preset="test", seed=1)
    assert {n for n, k in keys().items() if k != first[n]} == set(first)


def test_issue_34_another_model_or_size_into_an_existing_folder(
    shared_data, tiny_model_dir, pool_file, tmp_path, trainings
):
    """Another model into an existing study folder re-evaluates the zero-shot row (its losses
    are the new model's, as in a fresh folder); another pool size retrains every cell and the
    table names the new size; another validation size retrains the targeted cells alone."""
    out = tmp_path / "study"
    first = Study(config(shared_data, tiny_model_dir, pool_file, out)).run()
    other = build_tiny_model(tmp_path / "other", TEXTS, preset="test", seed=5)
    swapped = Study(config(shared_data, other, pool_file, out)).run()
    fresh = Study(config(shared_data, other, pool_file, tmp_path / "fresh")).run()
    base = lambda r: next(x for x in r["records"] if x["name"] == "base")["evals"]["gsm8k:test"]["values"]  # noqa: E731
    assert swapped["computed"] == ["base", "random-s0", "full"]
    assert base(swapped) == base(fresh) != base(first)
    trainings["trained"].clear()
    smaller = Study(config(shared_data, tiny_model_dir, pool_file, out, pool_size=12)).run()
    assert trainings["trained"] == ["random-s0", "full"] and "Pool 12 rows" in smaller["markdown"]
    assert json.loads((out / "study_gains.json").read_text())["config"]["pool_size"] == 12
    # val_size: the validation sample of the targeted methods; RAND keeps its cell.
    cfg = config(shared_data, tiny_model_dir, pool_file, out, pool_size=12)
    keys = {c.name: Study(cfg).cell_key(c) for c in Study(cfg).cells}
    cfg3 = config(
        shared_data, tiny_model_dir, pool_file, out / "v", pool_size=12, val_size=3, methods=["random", "rds"]
    )
    cfg4 = config(shared_data, tiny_model_dir, pool_file, out / "v", pool_size=12, methods=["random", "rds"])
    k3 = {c.name: Study(cfg3).cell_key(c) for c in Study(cfg3).cells}
    k4 = {c.name: Study(cfg4).cell_key(c) for c in Study(cfg4).cells}
    assert k3["rds@gsm8k"] != k4["rds@gsm8k"] and k3["random-s0"] == k4["random-s0"] == keys["random-s0"]


def test_issue_34_base_model_replaced_at_the_same_path_recomputes_every_cell(
    shared_data, tiny_model_dir, pool_file, tmp_path
):
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    cfg = config(shared_data, model, pool_file, tmp_path / "study")
    first = Study(cfg).run()
    shutil.rmtree(model)
    build_tiny_model(model, TEXTS, preset="test", seed=9)
    again = Study(cfg).run()
    assert again["computed"] == ["base", "random-s0", "full"]
    assert losses(again)["base"] != losses(first)["base"]


@pytest.mark.parametrize(
    "damage,retrained",
    [
        (lambda text, rec: text[: len(text) // 2], True),  # cut short
        (lambda text, rec: "", True),  # empty
        (lambda text, rec: json.dumps([rec]), True),  # a list
        (lambda text, rec: json.dumps({**rec, "scores": ["x"]}), True),  # scores of the wrong kind
        (lambda text, rec: json.dumps({k: v for k, v in rec.items() if k != "key"}), True),  # no key
        # a shortened per-item list: evaluated again, not retrained
        (
            lambda text, rec: json.dumps(
                {
                    **rec,
                    "evals": {
                        "gsm8k:test": {**rec["evals"]["gsm8k:test"], "values": rec["evals"]["gsm8k:test"]["values"][:2]}
                    },
                }
            ),
            False,
        ),
    ],
    ids=["truncated", "empty", "list", "bad-scores", "no-key", "short-losses"],
)
def test_issue_34_a_damaged_cell_json_is_recomputed_never_a_traceback(
    shared_data, tiny_model_dir, pool_file, tmp_path, trainings, caplog, damage, retrained
):
    cfg = config(shared_data, tiny_model_dir, pool_file, tmp_path / "study")
    first = Study(cfg).run()
    path = tmp_path / "study" / "cells" / "random-s0" / "cell.json"
    text = path.read_text()
    path.write_text(damage(text, json.loads(text)))
    # report_only: the damaged cell is left out, in one line; nothing is computed
    trainings["trained"].clear()
    report = Study(config(shared_data, tiny_model_dir, pool_file, tmp_path / "study", report_only=True))
    assert "random" not in report.run()["gains"] and trainings["trained"] == []
    again = Study(cfg).run()
    assert trainings["trained"] == (["random-s0"] if retrained else [])
    assert losses(again) == losses(first)
    assert "Traceback" not in caplog.text


def test_issue_34_task_scores_missing_or_empty_and_a_vanished_model(
    shared_data, tiny_model_dir, pool_file, tmp_path, trainings, monkeypatch
):
    """lm-eval scores (stubbed here) missing from the record are taken from its evaluation, empty
    ones are evaluated again; a cell whose model folder is gone is trained again, and a report-only
    run reports its record without training."""
    calls = []
    monkeypatch.setattr(
        study_module, "evaluate", lambda c: calls.append(c.model) or {t: {"score": 0.25} for t in c.tasks}
    )
    cfg = config(shared_data, tiny_model_dir, pool_file, tmp_path / "study", tasks=["arc_challenge"])
    Study(cfg).run()
    assert len(calls) == 3
    path = tmp_path / "study" / "cells" / "random-s0" / "cell.json"
    record = json.loads(path.read_text())
    path.write_text(json.dumps({k: v for k, v in record.items() if k != "scores"}))
    calls.clear()
    Study(cfg).run()
    assert calls == []
    record["evals"]["tasks"]["scores"] = {}
    path.write_text(json.dumps(record))
    Study(cfg).run()
    assert len(calls) == 1 and json.loads(path.read_text())["scores"] == {"arc_challenge": 0.25}
    trainings["trained"].clear()
    shutil.rmtree(tmp_path / "study" / "cells" / "random-s0" / "model")
    # report_only reads the record of a cell kept without its weights (benchmarks/keep_cells.py): nothing runs
    kept = Study(dataclasses.replace(cfg, report_only=True)).run()
    assert trainings["trained"] == [] and "random-s0" in {r["name"] for r in kept["records"]}
    Study(cfg).run()
    assert trainings["trained"] == ["random-s0"] and (tmp_path / "study" / "cells" / "random-s0" / "model").is_dir()


def test_a_damaged_cell_through_the_command_line_is_one_warning_and_exit_0(
    shared_data, tiny_model_dir, pool_file, tmp_path
):
    import yaml

    from raise_select.cli.main import app

    cfg = config(shared_data, tiny_model_dir, pool_file, tmp_path / "study")
    path = tmp_path / "study.yaml"
    names = ("model", "pool", "data_dir", "targets", "val_size", "heldout_size", "tasks", "methods", "seeds")
    names += ("budget", "batch_size", "max_length", "classes", "sem_dim", "lr", "device", "out")
    path.write_text(yaml.safe_dump({"study": {k: getattr(cfg, k) for k in names}}))
    assert CliRunner().invoke(app, ["study", "--config", str(path)]).exit_code == 0
    (tmp_path / "study" / "cells" / "full" / "cell.json").write_text('{"key": "ab')
    result = CliRunner().invoke(app, ["study", str(path), "--report"])
    assert result.exit_code == 0 and "Traceback" not in result.output and "| 100% |" not in result.output
    result = CliRunner().invoke(app, ["study", str(path)])
    assert result.exit_code == 0 and "cells computed: full" in result.output


# ---------------------------------------------------------------- the registry


def test_unknown_names_say_what_is_close_and_what_exists():
    from raise_select.baselines import get_baseline_class
    from raise_select.experiments.methods import METHODS
    from raise_select.registry import Registry, UnknownName

    reg = Registry("testbed", {"demo": 1, "math": 2})
    with pytest.raises(UserError, match=r"^unknown testbed 'dmeo'; did you mean 'demo'\? available: demo, math$"):
        reg["dmeo"]
    with pytest.raises(UserError, match=r"^unknown testbed 'zzz'; available: demo, math$"):
        reg.lookup("zzz")
    assert "dmeo" not in reg and reg.get("dmeo") is None and dict(reg) == {"demo": 1, "math": 2}
    with pytest.raises(ValueError, match="two testbeds are named 'demo'"):
        reg.register("demo", 3)
    with pytest.raises(UnknownName, match="did you mean 'rds'"):
        get_baseline_class("rsd")
    with pytest.raises(UserError, match="study.yaml: unknown method 'raise_les'; did you mean 'raise_less'"):
        METHODS.lookup("raise_les", "study.yaml")


def test_every_method_is_registered_with_what_it_reads():
    from raise_select.baselines import BASELINES
    from raise_select.experiments.methods import METHODS, method_names

    assert set(BASELINES) <= set(METHODS)
    assert {m for m, e in METHODS.items() if e.runs == "raise"} >= {"raise", "raise_rds", "raise_less"}
    targeted = {m for m, e in METHODS.items() if e.reads_validation and e.runs == "baseline"}
    assert targeted == {"less", "less_metric", "rose", "rds", "embed", "tsds", "greats", "rho"}
    assert {m for m, e in METHODS.items() if e.shared_cache} == {"less", "less_metric", "rose"}
    assert METHODS["raise_less"].prior_from == "less" and METHODS["raise_less_untrained"].episode["rounds"] == 0
    assert METHODS["raise"].needs_features() and not METHODS["random"].needs_features()
    assert METHODS["raise_rds"].needs_rds_vectors() and not METHODS["raise"].needs_rds_vectors()
    assert method_names("baseline", online=True) == ["greats", "rho"]


def test_a_baseline_preset_runs_its_method_with_its_options_over_that_methods_section(tmp_path):
    """less_metric runs LESS with target auto laid over the study's `less:` section, then its own section;
    its cell key differs from LESS's (other options) and a typo in its section is refused as LESS's would be."""
    from raise_select.baselines.registry import make_baseline
    from raise_select.cli.study import check_method_options
    from raise_select.experiments.methods import METHODS
    from raise_select.experiments.plan import method_sections

    entry = METHODS["less_metric"]
    assert entry.runs_as == "less" and METHODS["less"].runs_as == "less" and not entry.dynamic and not entry.online
    cfg = StudyConfig(pool="p.json", out=str(tmp_path), model="m", methods=["less", "less_metric"])
    sections = {"less": {"lora_r": 4, "proj_dim": 64}, "less_metric": {"proj_dim": 32}}
    study = Study(cfg, sections)
    assert study.method_options("less_metric") == {"lora_r": 4, "proj_dim": 32, "target": "auto"}
    assert study.method_options("less") == {"lora_r": 4, "proj_dim": 64}
    built = make_baseline(entry.runs_as, study.method_options("less_metric"))
    assert (built.target, built.lora_r, built.proj_dim) == ("auto", 4, 32)
    check_method_options(sections, "study.yaml")
    # run alone, it still reads the `less:` section (else LESS's defaults: rank 128, batches of 32)
    config = tmp_path / "study.yaml"
    config.write_text("less: {lora_r: 4}\nrose: {beta: 0.2}\n")
    assert method_sections(config, None, ["less_metric"]) == {"less_metric": {}, "less": {"lora_r": 4}, "full": {}}
    assert method_sections(config, None, ["raise_less"])["less"] == {"lora_r": 4}  # its prior's cell
    with pytest.raises(UserError, match="proj_dimm"):
        check_method_options({"less_metric": {"proj_dimm": 3}}, "study.yaml")


def test_every_raise_preset_is_a_valid_policy_and_episode():
    """Each preset's `policy` and `episode` settings build (refused settings would surface only when a
    cell runs); the label presets cap the uses of a row at the study's epochs and label 200 rows."""
    from raise_select.config import from_dict
    from raise_select.experiments.methods import METHODS
    from raise_select.policy.config import PolicyConfig
    from raise_select.training import TrainPolicyConfig

    for name, m in METHODS.items():
        if m.runs == "raise":
            settings = dict(m.policy)
            if m.prior_from:  # the study fills in its source cell's selection
                settings["prior_selection"] = "selection.json"
            policy = from_dict(PolicyConfig, settings, name)
            from_dict(TrainPolicyConfig, {**m.episode, "policy": settings}, name)
            if name.startswith("raise_labels"):
                assert policy.label_budget == 200 and policy.use_max_repeats == 3
    assert METHODS["raise_labels"].initialisation == "raise_labels_untrained"
    assert METHODS["raise_labels_untrained"].episode["rounds"] == 0


def test_help_texts_list_the_methods_from_the_registry():
    from raise_select.cli.main import app

    text = " ".join(CliRunner().invoke(app, ["baseline", "--help"], terminal_width=200).output.split())
    for m in ("rds", "embed", "tsds", "greats"):
        assert m in text
    text = " ".join(CliRunner().invoke(app, ["study", "--help"], terminal_width=200).output.split())
    assert "raise_less_untrained" in text and "tsds (TSDS)" in text


def test_the_old_placeholder_is_named(tmp_path):
    with pytest.raises(UserError, match=r"section 'deita', option 'quality_scorer': write \{model\}"):
        Study(StudyConfig(pool="p", model="m", out=str(tmp_path)), {"deita": {"quality_scorer": "{base_model}"}})


def test_the_table_says_what_a_shared_gradient_cache_leaves_out_of_counted_phi():
    from raise_select.experiments.report import StudyTables

    assert StudyTables.cache_note(["random", "rds"]) == []
    (note,) = StudyTables.cache_note(["random", "less", "less_metric"])
    assert note.startswith("LESS, LESS (metric target): one pool-gradient pass per seed") and "about 1 Φ" in note
