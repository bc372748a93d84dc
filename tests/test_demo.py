"""`raise-select demo --quick` end to end: data, tiny model, features, policy, RAISE vs RAND."""

import json
import math
import statistics

import pytest
import torch
from typer.testing import CliRunner

from raise_select.cli.main import app
from raise_select.data.pools import load_pool
from raise_select.data.synthetic import is_clean_on_target
from raise_select.demo import oracle_gain


def test_quick_demo_writes_summary_for_both_methods(tmp_path):
    out = tmp_path / "demo"
    result = CliRunner().invoke(app, ["demo", "--quick", "--out", str(out), "--seeds", "2", "--set", "demo.ifd=true"])
    assert result.exit_code == 0, result.output
    assert "| RAISE |" in result.output and "| RAND |" in result.output

    summary = json.loads((out / "summary.json").read_text())
    pool = load_pool(out / "data" / "pool.jsonl")
    records = {e.id: e.record for e in pool.examples}
    assert summary["pool_clean_on_target"] == sum(is_clean_on_target(r, "add") for r in records.values()) / len(pool)
    for method in ("raise", "rand", "perfect", "ifd"):
        m = summary["methods"][method]
        assert [r["seed"] for r in m["per_seed"]] == [0, 1]
        losses = [r["val_loss"] for r in m["per_seed"]]
        assert all(math.isfinite(x) and x > 0 for x in losses)
        assert m["val_loss_mean"] == statistics.fmean(losses)
        assert m["val_loss_std"] == statistics.stdev(losses)
        # The share is recomputed from the run's own selection log.
        for r in m["per_seed"]:
            lines = [
                json.loads(line)
                for line in (out / f"seed_{r['seed']}" / method / "selections.jsonl").read_text().splitlines()
            ]
            chosen = [i for line in lines for i in line["ids"]]
            assert len(lines) == summary["steps"] and len(chosen) == summary["steps"] * summary["batch_size"]
            assert r["clean_on_target"] == sum(is_clean_on_target(records[i], "add") for i in chosen) / len(chosen)
    assert summary["methods"]["perfect"]["clean_on_target_mean"] == 1.0
    # PERFECT's batches: B distinct clean on-target rows per step, drawn with the seed (computed by hand here)
    perfect = [i for i, e in enumerate(pool.examples) if is_clean_on_target(e.record, "add")]
    for seed in (0, 1):
        gen = torch.Generator().manual_seed(seed)
        expected = [
            [perfect[i] for i in torch.randperm(len(perfect), generator=gen)[: summary["batch_size"]].tolist()]
            for _ in range(summary["steps"])
        ]
        lines = [
            json.loads(line)
            for line in (out / f"seed_{seed}" / "perfect" / "selections.jsonl").read_text().splitlines()
        ]
        assert [line["indices"] for line in lines] == expected
        assert all(line["ids"] == [pool.examples[i].id for i in line["indices"]] and line["random"] for line in lines)
    # oracle gain = (RAND - method) / (RAND - PERFECT), per seed, from the per-seed losses
    loss = {(m, r["seed"]): r["val_loss"] for m in summary["methods"] for r in summary["methods"][m]["per_seed"]}
    for method in ("raise", "ifd"):
        expected = [(loss["rand", s] - loss[method, s]) / (loss["rand", s] - loss["perfect", s]) for s in (0, 1)]
        assert summary["methods"][method]["oracle_gain_per_seed"] == pytest.approx(expected)
    assert summary["raise_beats_rand_seeds"] == sum(loss["raise", s] < loss["rand", s] for s in (0, 1))
    assert summary["raise_beats_rand"] == (
        summary["methods"]["raise"]["val_loss_mean"] < summary["methods"]["rand"]["val_loss_mean"]
    )
    # A RAND run killed while writing its metrics (no final line, the last line cut) is redone
    # on the next run, without a traceback, to the same result: one seed, one result.
    metrics = out / "seed_0" / "rand" / "metrics.jsonl"
    kept = [line for line in metrics.read_text().splitlines() if json.loads(line)["kind"] != "final"]
    metrics.write_text("\n".join(kept[:-1] + [kept[-1][:30]]))
    result = CliRunner().invoke(app, ["demo", "--quick", "--out", str(out), "--seeds", "2", "--set", "demo.ifd=true"])
    assert result.exit_code == 0, result.output
    again = json.loads((out / "summary.json").read_text())
    for method in ("raise", "rand", "perfect", "ifd"):
        assert [r["val_loss"] for r in again["methods"][method]["per_seed"]] == [
            r["val_loss"] for r in summary["methods"][method]["per_seed"]
        ]
    final = [r for r in map(json.loads, metrics.read_text().splitlines()) if r["kind"] == "final"]
    assert len(final) == 1 and -final[0]["final_P"] == summary["methods"]["rand"]["per_seed"][0]["val_loss"]
    # The RAISE runs are ordinary run folders: `select` exports them.
    result = CliRunner().invoke(
        app, ["select", "--run", str(out / "seed_0" / "raise"), "--out", str(tmp_path / "chosen.jsonl")]
    )
    assert result.exit_code == 0, result.output
    assert all(r["times_selected"] >= 1 for r in map(json.loads, (tmp_path / "chosen.jsonl").read_text().splitlines()))


def test_demo_with_zero_rounds_uses_the_initial_policy_fitted_to_labels(tmp_path):
    """rounds 0 (the ablation of policy training): no episode is run, the policy is the label fit
    (policy.label_budget) and fine-tunes M_0 as a trained one would."""
    out = tmp_path / "demo0"
    sets = ["demo.rounds=0", "demo.policy.label_budget=40", "demo.policy.use_max_repeats=3"]
    args = ["demo", "--quick", "--out", str(out), "--seeds", "1", *[a for s in sets for a in ("--set", s)]]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    run = out / "seed_0" / "policy"
    assert not (run / "metrics.jsonl").exists() and (run / "policy" / "actor.safetensors").is_file()  # no episode
    labels = json.loads((run / "labels.json").read_text())
    assert len(labels["rows"]) == 40 and labels["held_out"] == 8
    chosen = [
        json.loads(line)["indices"] for line in (out / "seed_0" / "raise" / "selections.jsonl").read_text().splitlines()
    ]
    counts = {}
    for batch in chosen:
        for i in batch:
            counts[i] = counts.get(i, 0) + 1
    assert max(counts.values()) <= 3  # the use cap reached the fine-tuning


def test_oracle_gain_by_hand():
    assert oracle_gain(3.0, 4.0, 2.0) == 0.5  # half of the way from RAND to PERFECT
    assert oracle_gain(4.5, 4.0, 2.0) == -0.25  # worse than random
    assert oracle_gain(2.0, 4.0, 2.0) == 1.0
    assert math.isnan(oracle_gain(3.0, 2.0, 2.0))  # the oracle gains nothing: undefined


def test_summary_and_table_with_an_undefined_oracle_gain():
    """A seed where PERFECT does not beat RAND has no oracle gain; the others still count."""
    from raise_select.demo import DemoConfig, MethodRun, format_table, summarize

    runs = [
        MethodRun("raise", 0, 3.0, 0.5, 10, 1.0),
        MethodRun("rand", 0, 4.0, 0.1, 10, 1.0),
        MethodRun("perfect", 0, 2.0, 1.0, 5, 1.0),
        MethodRun("raise", 1, 3.0, 0.5, 10, 1.0),
        MethodRun("rand", 1, 4.0, 0.1, 10, 1.0),
        MethodRun("perfect", 1, 4.5, 1.0, 5, 1.0),
    ]
    summary = summarize(DemoConfig(seeds=2), runs, 1.0, pool_share=0.1)
    gains = summary["methods"]["raise"]["oracle_gain_per_seed"]
    assert gains[0] == 0.5 and math.isnan(gains[1])
    assert summary["methods"]["raise"]["oracle_gain_mean"] == 0.5
    assert "| RAISE | 3.000 ± 0.000 | 50% ± 0% |" in format_table(summary)
    only_nan = summarize(DemoConfig(seeds=1), runs[3:], 1.0, pool_share=0.1)
    assert "n/a (the oracle gains nothing)" in format_table(only_nan)


def test_every_testbed_is_a_demo_setting(tmp_path):
    result = CliRunner().invoke(app, ["demo", "--quick", "--out", str(tmp_path), "--testbed", "nope"])
    assert result.exit_code == 2 and "testbed" in result.output and "rare" in result.output


def test_bad_demo_settings_are_refused(tmp_path):
    result = CliRunner().invoke(app, ["demo", "--quick", "--out", str(tmp_path), "--set", "demo.preset=huge"])
    assert result.exit_code == 2 and "preset" in result.output


def test_demo_cells_are_named_by_their_folder_under_the_run(tmp_path):
    """Two seed folders with the same last name (a benchmark's `seed_<s>/ablation/<setting>`) are two
    cells: each keeps its record, so a re-run reuses both and recomputes neither."""
    from raise_select.config import from_dict
    from raise_select.demo import QUICK, DemoConfig, prepare, run_method

    cfg = from_dict(DemoConfig, {**QUICK, "out": str(tmp_path / "d"), "rounds": 0}, "demo")
    paths = prepare(cfg)
    pool = load_pool(paths["pool"])
    val = load_pool(paths["val"]).examples
    folders = [tmp_path / "d" / f"seed_{s}" / "ablation" / "same" for s in (0, 1)]
    first = [run_method(cfg, paths, pool, val, "rand", s, f, list(range(len(pool)))) for s, f in enumerate(folders)]
    cells = sorted(p.name for p in (tmp_path / "d" / "demo_cells").iterdir())
    assert cells == ["seed_0__ablation__same-rand", "seed_1__ablation__same-rand"]
    assert first[0].val_loss != first[1].val_loss  # two seeds, two runs
    again = [run_method(cfg, paths, pool, val, "rand", s, f, list(range(len(pool)))) for s, f in enumerate(folders)]
    assert [r.seconds for r in again] == [r.seconds for r in first]  # reused records, not new runs
