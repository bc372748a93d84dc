"""A study checks its validation sets before any cell trains (issue 34, section 3): validation rows
that are also pool rows are warned about, naming the target; a held-out set (a target's held-out
items, the `loss_set`) sharing items with a validation set a method reads is refused in one line
naming the target, since the figure measured on it would not be held-out."""

from __future__ import annotations

import json
import logging

import pytest

import raise_select.experiments.study as study_module
from raise_select.data.pools import load_pool, to_format
from raise_select.data.validation import load_validation
from raise_select.errors import UserError
from raise_select.experiments.study import Study, StudyConfig


def _write(path, examples):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(to_format(e, "messages")) + "\n" for e in examples), encoding="utf-8")
    return path


@pytest.fixture()
def pool_file(tmp_path):
    from raise_select.data.synthetic import SyntheticConfig, generate_pool, write_jsonl

    return write_jsonl(tmp_path / "inputs" / "pool.jsonl", generate_pool(SyntheticConfig(size=16, seed=3)))


@pytest.fixture()
def no_training(monkeypatch):
    """Any cell that starts training fails the test: the checks come first."""

    def train(self, cell):
        raise AssertionError(f"cell {cell.name} trained before the overlap checks")

    monkeypatch.setattr(study_module.Study, "_train", train)


def config(pool, out, **changes) -> StudyConfig:
    return StudyConfig(
        **{
            "model": "m",  # never loaded: the checks run before any cell
            "pool": str(pool),
            "tasks": ["arc_challenge"],  # never evaluated here
            "methods": ["rds"],
            "seeds": [0],
            "budget": 4,
            "batch_size": 4,
            "out": str(out),
            **changes,
        }
    )


def _warnings(caplog):
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


def test_validation_rows_in_the_pool_are_warned_about_before_any_cell(pool_file, tmp_path, caplog, no_training):
    pool = load_pool(pool_file).examples
    val = _write(tmp_path / "inputs" / "val.jsonl", pool[:3])
    study = Study(config(pool_file, tmp_path / "study", val=str(val)))
    with caplog.at_level(logging.WARNING):
        study.prepare()
    warned = _warnings(caplog)
    assert len(warned) == 1 and f"study: the validation set val={val}" in warned[0]
    assert "3 of 3 validation rows are also pool rows" in warned[0] and pool[0].id in warned[0]


def test_a_loss_set_that_is_the_validation_set_is_refused_before_any_cell(pool_file, tmp_path, caplog, no_training):
    from raise_select.data.synthetic import SyntheticConfig, generate_pool

    val = tmp_path / "inputs" / "val.jsonl"
    val.write_text(
        "".join(json.dumps(r) + "\n" for r in generate_pool(SyntheticConfig(size=6, seed=11))), encoding="utf-8"
    )
    cfg = config(pool_file, tmp_path / "study", val=str(val), loss_set=str(val))
    with pytest.raises(UserError) as e:
        Study(cfg).run()
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"study: target {val}: the loss_set {val} shares 6 of its 6 items")
    assert not any((tmp_path / "study" / "cells").glob("*/cell.json"))
    # the same questions with other responses are the same items
    items = load_validation(str(val))
    changed = [
        {"messages": [{"role": r, "content": c + (" (reworded)" if r == "assistant" else "")} for r, c in x.messages]}
        for x in items[:2]
    ]
    loss = tmp_path / "inputs" / "loss.jsonl"
    loss.write_text("".join(json.dumps(r) + "\n" for r in changed), encoding="utf-8")
    with pytest.raises(UserError, match="shares 2 of its 2 items"):
        Study(config(pool_file, tmp_path / "study", val=str(val), loss_set=str(loss))).run()

    # a loss set apart from the validation set passes; so does any loss set when no method reads
    # a validation set (RAND and the 100% row)
    loss.write_text(
        "".join(json.dumps(r) + "\n" for r in generate_pool(SyntheticConfig(size=6, seed=12))), encoding="utf-8"
    )
    with caplog.at_level(logging.WARNING):
        Study(config(pool_file, tmp_path / "a", val=str(val), loss_set=str(loss))).prepare()
        Study(config(pool_file, tmp_path / "b", val=str(val), loss_set=str(val), methods=["random"])).prepare()
    assert not _warnings(caplog)


def test_targets_validation_sample_in_the_pool_warns_and_a_loss_set_of_it_is_refused(
    shared_data, pool_file, tmp_path, caplog, no_training
):
    sample = load_validation("gsm8k", shared_data, n=4, seed=0)
    pool = _write(tmp_path / "inputs" / "mixed.jsonl", [*load_pool(pool_file).examples, *sample[:2]])
    targeted = {"data_dir": str(shared_data), "targets": ["gsm8k"], "val_size": 4, "heldout_size": 3, "tasks": []}
    with caplog.at_level(logging.WARNING):
        Study(config(pool, tmp_path / "a", **targeted)).prepare()
    warned = _warnings(caplog)
    assert len(warned) == 1 and "study: target gsm8k's validation sample: 2 of 4 validation rows" in warned[0]

    # the held-out gsm8k:test items are apart from the sample: no refusal without a loss set
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        Study(config(pool_file, tmp_path / "b", **targeted, loss_set="gsm8k", loss_split="test")).prepare()
    assert not _warnings(caplog)
    cfg = config(pool_file, tmp_path / "c", **targeted, loss_set="gsm8k", loss_split="validation", loss_size=4)
    with pytest.raises(UserError) as e:
        Study(cfg).run()
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("study: target gsm8k: the loss_set gsm8k (validation split) shares 4")
    assert "target gsm8k's validation sample" in msg and sample[0].id in msg
    assert not any((tmp_path / "c" / "cells").glob("*/cell.json"))
