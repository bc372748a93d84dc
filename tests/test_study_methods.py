"""The per-method figures of a study: the math/quantitative labelling, the math share of what
a method chose, the held-out loss and the cost in units of Φ."""

from __future__ import annotations

import json
import math

import pytest
import yaml
from typer.testing import CliRunner

from raise_select.costs import phi_seconds
from raise_select.data.pools import Example, example_id, load_pool
from raise_select.data.quantitative import is_quantitative, quantitative_share
from raise_select.reports.method_stats import method_stats


def _ex(prompt: str, response: str) -> Example:
    messages = (("user", prompt), ("assistant", response))
    return Example(id=example_id(messages), messages=messages, record={}, source="t", row=0)


@pytest.mark.parametrize(
    "prompt,response,expected",
    [
        ("Calculate the area of a square with sides of 4 cm.", "16 cm2", True),  # math word
        ("What is 12 * 7?", "84", True),  # arithmetic in the prompt
        ("Find x.", "We have 3 + 4 = 7, so x is 7.", True),  # worked result in the response
        ("What share of voters turned out?", "About 61% of them.", False),  # a percentage in the response only
        ("Increase the price by 15%.", "The new price.", True),  # a percentage in the prompt
        ("Write a poem about the sea.", "Waves in 2 - 3 rows.", False),  # numbers but no worked result
        ("Describe a computer.", "A machine that computes.", False),  # 'computer' is not 'compute'
        ("List multiple colours.", "Red, green.", False),  # 'multiple' is not 'multiply'
    ],
)
def test_quantitative_rule(prompt, response, expected):
    assert is_quantitative(_ex(prompt, response)) is expected


def test_share_counts_repeats_and_phi_by_hand(tmp_path):
    labels = {"a": True, "b": False, "c": False}
    assert quantitative_share(["a", "b", "a", "c"], labels) == 0.5
    assert math.isnan(quantitative_share([], labels))
    # 100 s for 10 steps of B = 8 on a 100-row pool: 13 steps per epoch -> 130 s.
    assert phi_seconds(train_seconds=100.0, steps=10, pool_size=100, batch_size=8) == pytest.approx(130.0)


def test_method_stats_from_cell_folders(tmp_path):
    from raise_select.data.synthetic import SyntheticConfig, generate_pool, write_jsonl

    pool = load_pool(write_jsonl(tmp_path / "pool.jsonl", generate_pool(SyntheticConfig(size=20))))
    ids = pool.ids
    cells = tmp_path / "cells"
    (cells / "full").mkdir(parents=True)
    (cells / "full" / "selection.json").write_text(json.dumps({"ids": ids, "steps": 4}))
    (cells / "random-s0").mkdir()
    (cells / "random-s0" / "selection.json").write_text(json.dumps({"ids": ids[:4], "steps": 2}))
    (cells / "raise" / "finetune").mkdir(parents=True)
    steps = [{"step": 0, "ids": ids[:2]}, {"step": 1, "ids": ids[2:4]}, {"step": 1, "ids": ids[:2]}]  # step 1 redone
    # the last line was cut short by a crash mid-write: dropped, not a traceback
    (cells / "raise" / "finetune" / "selections.jsonl").write_text(
        "".join(json.dumps(s) + "\n" for s in steps) + json.dumps({"step": 2, "ids": ids[4:6]})[:20]
    )
    records = [
        {"name": "base", "row": "0%", "method": None, "loss": 2.0, "train_seconds": None},
        {"name": "full", "row": "100%", "method": "full", "loss": 1.0, "train_seconds": 40.0},
        {"name": "random-s0", "row": "RAND", "method": "random", "loss": 1.5, "train_seconds": 12.0},
        {"name": "raise", "row": "RAISE", "method": "raise", "loss": 1.2, "train_seconds": 30.0},
    ]
    stats = method_stats(records, cells, pool, batch_size=4, features_seconds=6.0, feature_readers={"raise"})
    labels = {e.id: is_quantitative(e) for e in pool.examples}
    phi = 40.0 * 5 / 4  # ceil(20 / 4) = 5 steps per epoch, the 100% row trained 4
    assert stats["phi_seconds"] == pytest.approx(phi)
    assert stats["pool_math_share"] == pytest.approx(sum(labels.values()) / 20)
    rows = stats["rows"]
    assert (
        rows["100%"]["cost_phi"] == pytest.approx(40.0 / phi) and rows["100%"]["math_share"] == stats["pool_math_share"]
    )
    assert rows["RAND"]["cost_phi"] == pytest.approx(12.0 / phi)
    assert rows["RAISE"]["cost_phi"] == pytest.approx((30.0 + 6.0) / phi)  # RAISE reads the features
    chosen = ids[:2] + ids[:2]
    assert rows["RAISE"]["math_share"] == pytest.approx(sum(labels[i] for i in chosen) / 4)
    assert rows["0%"]["cost_phi"] is None and rows["0%"]["math_share"] is None and rows["0%"]["loss"] == 2.0


def test_study_reports_heldout_loss_math_share_and_cost(shared_data, tmp_path):
    from raise_select.cli.main import app
    from raise_select.data.synthetic import SyntheticConfig, generate_pool, write_jsonl
    from raise_select.data.validation import load_validation
    from raise_select.evaluation.loss import response_loss

    pool = write_jsonl(tmp_path / "pool.jsonl", generate_pool(SyntheticConfig(size=24)))
    config = {
        "study": {
            "pool": str(pool),
            "build_model": "test",
            "val": "arc_challenge",
            "val_size": 4,
            "data_dir": str(shared_data),
            "tasks": ["arc_challenge"],
            "methods": ["random"],
            "budget": 4,
            "batch_size": 4,
            "seeds": [0],
            "full_steps": 2,
            "classes": 2,
            "sem_dim": 4,
            "eval_limit": 2,
            "max_length": 48,
            "max_gen_toks": 4,
            "loss_set": "gsm8k",
            "loss_split": "test",
            "loss_size": 3,
            "out": str(tmp_path / "study"),
        }
    }
    cfg_path = tmp_path / "study.yaml"
    cfg_path.write_text(yaml.safe_dump(config))
    result = CliRunner().invoke(app, ["study", str(cfg_path)])
    assert result.exit_code == 0, result.output
    out = tmp_path / "study"
    data = json.loads((out / "study_table.json").read_text())
    stats = data["method_stats"]
    examples = load_validation("gsm8k", shared_data, n=3, seed=0, split="test")
    for name, row in (("base", "0%"), ("random-s0", "RAND")):
        model = data["cells"][name]["model"]
        assert stats["rows"][row]["loss"] == pytest.approx(response_loss(model, examples, max_length=48), rel=1e-5)
    assert stats["rows"]["100%"]["cost_phi"] == pytest.approx(2 / math.ceil(24 / 4))  # 2 of 6 steps per epoch
    assert stats["rows"]["RAND"]["cost_phi"] > 0
    assert "gsm8k test loss" in (out / "study_methods.md").read_text() and "math share" in result.output


def test_per_seed_losses_and_raise_versus_random_by_hand(tmp_path):
    from raise_select.reports.method_stats import seeds_versus_random, stats_markdown

    rand = {"loss_per_seed": {0: 1.22, 1: 1.20, 2: 1.24}}  # mean 1.22, best 1.20
    raise_row = {"loss_per_seed": {0: 1.19, 1: 1.21, 2: 1.23}}
    # below the mean: 1.19 and 1.21 (2 of 3); below every seed (< 1.20): 1.19 only.
    assert seeds_versus_random(raise_row, rand) == (
        "RAISE's held-out loss is below the RAND mean on 2 of 3 seed(s) and below every RAND seed (3) on 1 of 3."
    )
    assert seeds_versus_random(None, rand) is None
    row = lambda seeds: {
        "loss": sum(seeds.values()) / len(seeds),
        "math_share": None,
        "seconds": None,  # noqa: E731
        "cost_phi": None,
        "loss_per_seed": seeds,
    }
    stats = {
        "rows": {"RAND": row(rand["loss_per_seed"]), "RAISE": row({0: 1.19})},
        "phi_seconds": None,
        "pool_math_share": 0.1,
        "features_seconds": 1.0,
    }
    text = stats_markdown(stats, "gsm8k test")
    assert "| RAND | 1.2200 | s0: 1.2200, s1: 1.2000, s2: 1.2400 |" in text
    assert "| RAISE | 1.1900 |  |" in text  # one seed: no per-seed list
    assert "below the RAND mean on 1 of 1 seed(s) and below every RAND seed (3) on 1 of 1" in text
