"""RDS+, EMBED, the aggregation rules, per-item held-out losses, the 95% intervals and the
real-data benchmark's quick path (on a tiny model)."""

from __future__ import annotations

import itertools
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from raise_select.baselines import SelectionContext, make_baseline
from raise_select.baselines.aggregate import aggregate_select, cosine_matrix
from raise_select.data.pools import load_pool
from raise_select.errors import UserError
from raise_select.features import FeatureTable, FeaturizeConfig, featurize

ROOT = Path(__file__).resolve().parents[1]

WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho sigma tau".split()
ROWS = [
    {
        "instruction": f"Say {' '.join(WORDS[i % 7 : (i % 7) + 2 + i % 3])}.",
        "input": "",
        "output": " ".join(WORDS[(3 * i) % 11 : (3 * i) % 11 + 3 + i % 5]),
    }
    for i in range(12)
]


@pytest.fixture
def pool_file(tmp_path):
    path = tmp_path / "pool.json"
    path.write_text(json.dumps(ROWS))
    return path


# ---------------------------------------------------------------- aggregation

S = np.array([[0.9, 0.1, 0.3], [0.8, 0.7, 0.2], [0.1, 0.6, 0.95], [0.5, 0.5, 0.5], [0.2, 0.9, 0.1], [0.85, 0.0, 0.6]])


def brute_round_robin(scores, budget):
    chosen, v = [], 0
    while len(chosen) < budget:
        rest = [r for r in range(len(scores)) if r not in chosen]
        best = max(rest, key=lambda r: (scores[r, v], -r))
        chosen.append(best)
        v = (v + 1) % scores.shape[1]
    return chosen


def test_aggregation_rules_against_brute_force():
    for budget in range(1, 7):
        for rule, per_row in (("mean", S.mean(1)), ("max", S.max(1))):
            got, scores = aggregate_select(S, budget, rule)
            best = max(itertools.combinations(range(6), budget), key=lambda c: (sum(per_row[list(c)]), [-x for x in c]))
            assert sorted(got.tolist()) == sorted(best)
            assert list(scores) == sorted(scores, reverse=True)
        got, _ = aggregate_select(S, budget, "round_robin")
        assert got.tolist() == brute_round_robin(S, budget)


def test_round_robin_order_by_hand():
    # turn 1 (column 0): row 0 (0.9); turn 2 (column 1): row 4 (0.9); turn 3 (column 2): row 2 (0.95);
    # turn 4 (column 0): row 5 (0.85, row 0 taken); turn 5 (column 1): row 1 (0.7); turn 6: row 3.
    got, scores = aggregate_select(S, 6, "round_robin")
    assert got.tolist() == [0, 4, 2, 5, 1, 3]
    assert scores.tolist() == [0.9, 0.9, 0.95, 0.85, 0.7, 0.5]


def test_aggregation_refuses_bad_input():
    with pytest.raises(UserError, match="unknown rule 'median'"):
        make_baseline("rds", {"aggregation": "median"})
    with pytest.raises(UserError, match="pool row 1 has a non-finite"):
        aggregate_select(np.array([[0.1], [np.nan]]), 1, "max")
    with pytest.raises(UserError, match="budget 3"):
        aggregate_select(S[:2], 3, "mean")


def test_cosine_matrix_against_loop():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(5, 4)), rng.normal(size=(3, 4))
    ref = [[float(x @ y / np.linalg.norm(x) / np.linalg.norm(y)) for y in b] for x in a]
    assert cosine_matrix(a, b) == pytest.approx(np.array(ref), abs=1e-12)


# ---------------------------------------------------------------- RDS+


def slow_rds(model, seq):
    """The reference's weighted mean for one unpadded sequence: weights 1..L / sum."""
    with torch.no_grad():
        h = model(input_ids=torch.tensor([seq]), output_hidden_states=True).hidden_states[-1][0].double()
    w = torch.arange(1, len(seq) + 1, dtype=torch.float64)
    return (w[:, None] * h).sum(0) / w.sum()


def test_featurize_rds_vectors_match_slow_reference(pool_file, tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from raise_select.features.scoring import encode_examples

    cfg = FeaturizeConfig(
        pool=str(pool_file),
        model=str(tiny_model_dir),
        out=str(tmp_path / "f"),
        shard_size=5,
        batch_size=3,
        classes=2,
        sem_dim=4,
        max_length=64,
        rds=True,
    )
    table = featurize(cfg)
    again = FeatureTable.read(tmp_path / "f")
    assert again.rds is not None and again.rds.shape == (len(ROWS), table.rds.shape[1])
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    pool = load_pool(pool_file)
    encoded = encode_examples(pool.examples, tok, "alpaca", 64)
    aligned = again.align(pool.ids)
    for k, e in enumerate(encoded):
        ref = slow_rds(model, [tok.bos_token_id, *e.prompt_ids, *e.response_ids])
        assert aligned.rds[k] == pytest.approx(ref.numpy(), abs=1e-5)
    # Without --rds there are none, and the rds method says how to get them.
    plain = featurize(FeaturizeConfig(**{**cfg.__dict__, "out": str(tmp_path / "g"), "rds": False}))
    assert plain.rds is None


def test_rds_selection_is_round_robin_over_hand_computed_cosines(pool_file, tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from raise_select.features.scoring import encode_examples

    cfg = FeaturizeConfig(
        pool=str(pool_file),
        model=str(tiny_model_dir),
        out=str(tmp_path / "f"),
        shard_size=5,
        batch_size=3,
        classes=2,
        sem_dim=4,
        max_length=64,
        rds=True,
    )
    featurize(cfg)
    pool = load_pool(pool_file)
    val = load_pool(pool_file).examples[:3]
    ctx = SelectionContext(features=FeatureTable.read(tmp_path / "f").align(pool.ids), validation=val, max_length=64)
    sel = make_baseline("rds", {}).select(pool, 5, ctx)

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    vec = lambda exs: np.stack(
        [
            slow_rds(model, [tok.bos_token_id, *e.prompt_ids, *e.response_ids]).numpy()  # noqa: E731
            for e in encode_examples(exs, tok, "alpaca", 64)
        ]
    )
    pv, vv = vec(pool.examples), vec(val)
    cos = np.array([[x @ y / np.linalg.norm(x) / np.linalg.norm(y) for y in vv] for x in pv])
    assert sel.indices == brute_round_robin(cos, 5)
    # Validation rows are pool rows here: each takes itself first.
    assert sel.indices[:3] == [0, 1, 2]

    ctx_plain = SelectionContext(
        features=featurize(FeaturizeConfig(**{**cfg.__dict__, "out": str(tmp_path / "g"), "rds": False})).align(
            pool.ids
        ),
        validation=val,
    )
    with pytest.raises(UserError, match="featurize the pool with --rds"):
        make_baseline("rds", {}).select(pool, 5, ctx_plain)


def test_embed_with_a_stub_encoder(pool_file, tmp_path, monkeypatch):
    """The embed method's cosine and aggregation, with a deterministic stand-in encoder."""
    import raise_select.features.semantic as semantic

    def fake_encode(_encoder, texts, _batch):
        return np.array([[len(t), t.count("a") + 1.0, t.count("e") + 0.5] for t in texts], dtype=np.float32)

    monkeypatch.setattr(semantic, "load_sentence_encoder", lambda *a, **k: object())
    monkeypatch.setattr(semantic, "encode_texts", fake_encode)
    pool = load_pool(pool_file)
    val = pool.examples[4:6]
    for rule in ("round_robin", "max", "mean"):
        sel = make_baseline("embed", {"aggregation": rule}).select(
            pool, 4, SelectionContext(validation=val, out_dir=tmp_path)
        )
        texts = lambda exs: [semantic.example_text(e) for e in exs]  # noqa: E731
        cos = cosine_matrix(fake_encode(None, texts(pool.examples), 0), fake_encode(None, texts(val), 0))
        assert sel.indices == aggregate_select(cos, 4, rule)[0].tolist()
    assert list((tmp_path / "cache").glob("embed-*.npy"))  # the pool's embeddings are cached


# ---------------------------------------------------------------- per-item losses


def test_example_losses_match_the_mean_and_a_loop(pool_file, tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from raise_select.evaluation.loss import example_losses, response_loss
    from raise_select.training.loop import encode_example

    examples = load_pool(pool_file).examples[:7]
    losses = example_losses(str(tiny_model_dir), examples, max_length=64, batch_size=3)
    assert losses.shape == (7,)
    assert response_loss(str(tiny_model_dir), examples, max_length=64, batch_size=3) == pytest.approx(
        losses.mean(), abs=1e-6
    )
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    for k, e in enumerate(examples):
        enc = encode_example(e, tok, "alpaca", 64)
        ids = torch.tensor([enc.input_ids])
        labels = torch.tensor([enc.labels])
        with torch.no_grad():
            ref = model(input_ids=ids, labels=labels).loss.item()
        assert losses[k] == pytest.approx(ref, abs=1e-5)


# ---------------------------------------------------------------- the benchmark


def test_bench_real_topic_table_lists_each_row_once(monkeypatch):
    """The 100% row leads the table once (it is also in the run order), and a RAISE row's
    policy-only share sits under it, labelled."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import bench_real

    share = {"share": 0.25, "cells": 3}
    topics = {
        "gsm8k": {
            "rule": "math",
            "pool": 0.05,
            "methods": {"raise": share, "raise:policy": {"share": 0.5, "cells": 3}, "full": share, "rds": share},
        }
    }
    rows = [
        line.split(" | ")[0] for line in bench_real.topic_markdown(topics, ["gsm8k"]).splitlines() if line[:2] == "| "
    ]
    assert rows == [
        "| rows trained on",
        "| the pool (base rate)",
        "| 100%",
        "| RDS+",
        "| RAISE (+RDS+ prior)",
        "| RAISE (+RDS+ prior), the policy's own batches",
    ]
    assert "| RAISE (+RDS+ prior), the policy's own batches | 50.0% (3) |" in bench_real.topic_markdown(
        topics, ["gsm8k"]
    )


def test_bench_real_ablation_table_is_each_cells_gain_and_cost(monkeypatch):
    """Per RAISE cell: base loss - its mean held-out loss, and (selection + training + prior +
    featurize seconds) / Φ, by hand; a target without a cell reads n/a."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import bench_real

    def cell(method, seed, losses, prior=0.0):
        return {
            "method": method,
            "target": "gsm8k",
            "seed": seed,
            "select_seconds": 30.0,
            "train_seconds": 10.0,
            "prior_seconds": prior,
            "evals": {"gsm8k": {"losses": losses}},
        }

    records = [
        cell("raise_less", 0, [1.0, 0.8], prior=40.0),
        cell("raise", 1, [1.2, 1.0]),
        cell("raise", 0, [0.9, 1.1]),
        {**cell("random", 0, [0.0, 0.0])},  # not a RAISE row
    ]
    md = bench_real.ablation_markdown(
        records, {"gsm8k": [1.5, 1.3], "arc_challenge": [2.0]}, ["gsm8k", "arc_challenge"], 100.0, 20.0
    )
    rows = [line for line in md.splitlines() if line.startswith("| RAISE (")]
    assert rows == [
        "| RAISE (+RDS+ prior) | 0 | +0.4000 (0.60) | n/a |",  # 1.4 - 1.0; (30 + 10 + 20) / 100
        "| RAISE (+RDS+ prior) | 1 | +0.3000 (0.60) | n/a |",
        "| RAISE (+LESS prior, policy between) | 0 | +0.5000 (1.00) | n/a |",  # (30 + 10 + 40 + 20) / 100
    ]
    assert bench_real.ablation_markdown(records[3:], {"gsm8k": [1.0]}, ["gsm8k"], 100.0, 0.0) == ""


def test_bench_real_less_and_rose_cells_share_one_gradient_cache(tmp_path, monkeypatch):
    """The pool's LESS gradients do not depend on the target: every less and rose cell points
    at one cache, and the cache folder is not part of a cell's key (moving it keeps the cells)."""
    from dataclasses import replace

    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import bench_real

    bench = bench_real.Bench(bench_real.BenchConfig(out=str(tmp_path / "b")))
    bench.pool_path = tmp_path / "b" / "pool.jsonl"
    bench.val_files = {t: str(tmp_path / f"{t}.jsonl") for t in bench.cfg.targets}
    jobs = {
        (m, t): bench.baseline_job(bench_real.cell_name(m, t, 0), m, t, 0, "")
        for m in ("less", "rose", "rds")
        for t in ("gsm8k", "arc_challenge")
    }
    assert {jobs[k].cache for k in jobs if k[0] != "rds"} == {str(tmp_path / "b" / "cache")}
    assert {jobs["rds", t].cache for t in ("gsm8k", "arc_challenge")} == {""}
    leave_out = bench_real.NOT_IN_KEY
    job = jobs["less", "gsm8k"]
    assert bench.cell_key(job, leave_out) == bench.cell_key(replace(job, cache=""), leave_out)
    assert bench.cell_key(job, leave_out) != bench.cell_key(jobs["less", "arc_challenge"], leave_out)


def test_bench_real_quick_path_on_a_tiny_model(shared_data, tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import bench_real

    out = tmp_path / "bench"
    argv = [
        "--quick",
        "--out",
        str(out),
        "--model",
        str(tiny_model_dir),
        "--pool",
        str(shared_data / "alpaca/alpaca_data.json"),
        "--data-dir",
        str(shared_data),
        "--pool-size",
        "40",
        "--budget",
        "8",
        "--val-size",
        "4",
        "--heldout-size",
        "6",
        "--max-length",
        "96",
        "--classes",
        "2",
        "--methods",
        "random,rds,ifd,raise",
        "--raise-seeds",
        "0",
        "--raise-rounds",
        "1",
        "--raise-val-size",
        "3",
        "--raise-select-every",
        "2",
    ]
    assert bench_real.main(argv) == 0
    result = json.loads((out / "bench_real.json").read_text())
    rows = result["rows"]
    assert set(rows) == {"random", "rds", "ifd", "raise"}
    # A RAISE cell trains a policy with the RDS+ prior, then fine-tunes with it; its cost counts both.
    policy = json.loads((out / "cells" / "raise@gsm8k-s0" / "train_policy" / "policy" / "policy.json").read_text())
    assert policy["config"]["prior"] == "rds" and policy["dims"]["prior_dim"] == 1
    raise_cell = json.loads((out / "cells" / "raise@gsm8k-s0" / "cell.json").read_text())
    assert raise_cell["select_seconds"] > 0 and raise_cell["train_seconds"] > 0
    # ... and its cost is also given per part: the reference episode and each round, from its metrics log.
    from raise_select.training.finetune import policy_training_seconds

    costs = result["raise_costs"]["raise"]
    cells = [out / "cells" / f"raise@{t}-s0" for t in bench_real.TARGETS]  # one cell per target
    assert costs["cells"] == 3 and costs["rounds"] == 1
    assert costs["finetune"] == pytest.approx(
        np.mean([json.loads((c / "cell.json").read_text())["train_seconds"] for c in cells])
    )
    total = np.mean([policy_training_seconds(c / "train_policy" / "metrics.jsonl") for c in cells])
    assert costs["reference"] + costs["round"] == pytest.approx(total)
    assert "reference episode" in (out / "bench_real.md").read_text()
    assert set(rows["rds"]) == {"gsm8k", "arc_challenge", "commonsenseqa"}
    assert "2 seeds" in rows["random"]["gsm8k"]["rule"] and rows["rds"]["gsm8k"]["rule"].startswith("1 seed")
    for m in rows:
        for cell in rows[m].values():
            assert cell["low"] <= cell["gain"] <= cell["high"]
    assert (out / "bench_real.png").is_file() and "RDS+" in (out / "bench_real.md").read_text()
    # On-topic shares: the pool's base rate and each cell's chosen rows, counted by hand.
    from raise_select.data.pools import load_pool
    from raise_select.data.quantitative import is_quantitative

    pool = load_pool(out / "pool.jsonl")
    maths = {e.id for e in pool.examples if is_quantitative(e)}
    topics = result["topics"]["gsm8k"]
    assert topics["rule"] == "math" and topics["pool"] == pytest.approx(len(maths) / len(pool))
    rds_ids = json.loads((out / "cells" / "rds@gsm8k" / "selection.json").read_text())["ids"]
    assert topics["methods"]["rds"] == {
        "share": pytest.approx(sum(i in maths for i in rds_ids) / len(rds_ids)),
        "cells": 1,
    }
    raise_ids = [
        i
        for line in (out / "cells" / "raise@gsm8k-s0" / "finetune" / "selections.jsonl").open()
        for i in json.loads(line)["ids"]
    ]
    assert len(raise_ids) == raise_cell["steps"] * result["config"]["batch_size"]
    assert topics["methods"]["raise"]["share"] == pytest.approx(sum(i in maths for i in raise_ids) / len(raise_ids))
    # ... and apart, the batches the policy chose (steps 1, 3, ...: random batches in between).
    own = [
        i
        for line in (out / "cells" / "raise@gsm8k-s0" / "finetune" / "selections.jsonl").open()
        if json.loads(line)["step"] % 2 == 1
        for i in json.loads(line)["ids"]
    ]
    assert 0 < len(own) < len(raise_ids) and raise_cell["chosen_by_policy"] == own
    assert topics["methods"]["raise:policy"]["share"] == pytest.approx(sum(i in maths for i in own) / len(own))
    assert "the policy's own batches" in (out / "bench_real.md").read_text()
    assert topics["methods"]["random"]["cells"] == 2 and "On-topic share" in (out / "bench_real.md").read_text()
    # The held-out items come from another split than the validation items.
    from raise_select.data.validation import load_validation

    for t, (val_split, held_split) in bench_real.TARGETS.items():
        val = {
            json.loads(line)["messages"][0]["content"] for line in (out / "targets" / f"{t}_validation.jsonl").open()
        }
        held = {e.messages[0][1] for e in load_validation(t, shared_data, n=6, seed=0, split=held_split)}
        assert len(val) == 4 and not val & held
    # A rerun reuses every cell: nothing is trained again.
    before = {p: p.stat().st_mtime for p in out.glob("cells/*/cell.json")}
    assert bench_real.main(argv) == 0
    assert {p: p.stat().st_mtime for p in out.glob("cells/*/cell.json")} == before
    # ... and so does a part of the table whose methods read no RDS+ vectors: the features (kept
    # with their vectors) are not computed again.
    feats = {p: p.stat().st_mtime for p in (out / "features").rglob("*") if p.is_file()}
    methods = argv.index("--methods") + 1
    assert bench_real.main([*argv[:methods], "random,ifd", *argv[methods + 1 :]]) == 0
    assert {p: p.stat().st_mtime for p in (out / "features").rglob("*") if p.is_file()} == feats
    assert (out / "features" / "rds.npy").is_file()
    # So does a copy of the run folder elsewhere (keys hold paths relative to --out).
    import shutil

    moved = tmp_path / "moved"
    shutil.copytree(out, moved)
    before = {p.relative_to(moved): p.read_text() for p in moved.glob("cells/*/cell.json")}
    assert bench_real.main([*argv[: argv.index("--out")], "--out", str(moved), *argv[argv.index("--out") + 2 :]]) == 0
    assert {p.relative_to(moved): p.read_text() for p in moved.glob("cells/*/cell.json")} == before
    # A copied cell without its selection file (as in a committed run) is selected again, untrained,
    # to the same rows.
    cell = moved / "cells" / "rds@gsm8k" / "cell.json"
    record = json.loads(cell.read_text())
    chosen = record.pop("chosen")
    cell.write_text(json.dumps(record))
    (moved / "cells" / "rds@gsm8k" / "selection.json").unlink()
    trained = {p: p.stat().st_mtime for p in (moved / "cells" / "rds@gsm8k" / "model").rglob("*")}
    assert bench_real.main([*argv[: argv.index("--out")], "--out", str(moved), *argv[argv.index("--out") + 2 :]]) == 0
    assert json.loads(cell.read_text()) == {**record, "chosen": chosen}
    assert {p: p.stat().st_mtime for p in (moved / "cells" / "rds@gsm8k" / "model").rglob("*")} == trained
    # --report: the tables from the finished cells; a method never run (sspl) is left out, untrained.
    assert bench_real.main([*argv[:methods], "random,sspl", *argv[methods + 1 :], "--report"]) == 0
    assert not (out / "cells" / "sspl").exists()
    report = json.loads((out / "bench_real.json").read_text())
    assert "random" in report["rows"] and "sspl" not in report["rows"]


def test_bench_real_prior_table_against_hand_counts(monkeypatch):
    """The prior table's share inside the source selection, distinct rows and mean score
    percentile, against counts done by hand on a 5-row pool (an unscored row ranks lowest)."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import bench_real

    ids = ["a", "b", "c", "d", "e"]
    # ascending ranks: b (None) 1, a 2, d 3, c 4, e 5 -> percentiles a .4, b .2, c .8, d .6, e 1
    sel = {"ids": ["e", "c"], "pool_scores": [0.1, None, 0.5, 0.3, 0.9]}
    records = [
        {"method": "raise_less", "target": "gsm8k", "seed": 0, "chosen": ["e", "e", "a", "c"]},
        {"method": "raise", "target": "gsm8k", "seed": 0, "chosen": ["a"]},  # no prior from a cell
        {"method": "raise_less", "target": "arc_challenge", "seed": 0, "chosen": ["a"]},  # no source on record
    ]
    md = bench_real.prior_markdown(records, {("less", "gsm8k"): sel}, ids)
    rows = [line for line in md.splitlines() if line.startswith("| RAISE (")]
    # inside: e, e, c of 4 = 75%; distinct e, a, c = 3; mean percentile (1 + 1 + .4 + .8) / 4 = 0.80
    assert rows == ["| RAISE (+LESS prior, policy between) | gsm8k | 0 | 75% | 3 | 0.80 |"]
    assert bench_real.prior_markdown(records[1:], {}, ids) == ""


def test_bench_real_prior_from_a_copied_less_cell_and_report_without_features(
    shared_data, tiny_model_dir, tmp_path, monkeypatch, capsys
):
    """A LESS-prior RAISE cell (here the untrained one: 0 rounds) whose LESS cell was copied
    without its selection file selects LESS again, untrained, to the same scores, and the RAISE
    cell to the same rows; --report on a run never made computes nothing and says so."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import bench_real

    def argv(out, methods, *extra):
        return [
            "--quick", "--out", str(out), "--model", str(tiny_model_dir),
            "--pool", str(shared_data / "alpaca/alpaca_data.json"), "--data-dir", str(shared_data),
            "--pool-size", "24", "--budget", "8", "--val-size", "4", "--heldout-size", "4",
            "--max-length", "64", "--classes", "2", "--targets", "gsm8k", "--methods", methods,
            "--raise-seeds", "0", "--raise-val-size", "3", "--raise-select-every", "2", *extra,
        ]  # fmt: skip

    out = tmp_path / "bench"
    assert bench_real.main(argv(out, "raise_less_untrained")) == 0
    less, cell = out / "cells" / "less@gsm8k", out / "cells" / "raise_less_untrained@gsm8k-s0"
    record = json.loads((cell / "cell.json").read_text())
    assert not record["policy_episodes"]  # no reference episode, no round: no policy training
    assert record["versions"]["torch"] == torch.__version__  # what a rerun that differs is checked against
    assert record["prior_seconds"] == json.loads((less / "cell.json").read_text())["select_seconds"]
    scores = json.loads((less / "selection.json").read_text())["pool_scores"]
    # Killed after selecting, before training: the rerun trains on the kept selection and
    # prices the cell with the seconds the selecting run recorded.
    seconds = json.loads((less / "selection.json").read_text())["select_seconds"]
    assert seconds > 0
    for part in ("cell.json", "train_done.json", "model"):
        (shutil.rmtree if (less / part).is_dir() else Path.unlink)(less / part)
    shutil.rmtree(cell)
    assert bench_real.main(argv(out, "raise_less_untrained")) == 0
    assert json.loads((less / "cell.json").read_text())["select_seconds"] == pytest.approx(seconds, abs=0.01)
    record = json.loads((cell / "cell.json").read_text())
    # The committed form of a run: cell.json files only. Both cells come back from LESS's scores.
    (less / "selection.json").unlink()
    shutil.rmtree(cell)
    assert bench_real.main(argv(out, "raise_less_untrained")) == 0
    assert json.loads((less / "selection.json").read_text())["pool_scores"] == scores
    again = json.loads((cell / "cell.json").read_text())
    assert again["chosen"] == record["chosen"] and again["evals"] == record["evals"]
    # --report on a folder never run: nothing featurized or evaluated, one line saying so.
    fresh = tmp_path / "fresh"
    assert bench_real.main(argv(fresh, "rds", "--report")) == 2
    assert "holds no zero-shot evaluation" in capsys.readouterr().err
    assert not (fresh / "features" / "features.parquet").exists()
