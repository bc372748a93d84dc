"""RDS+, EMBED, the aggregation rules, per-item held-out losses, the 95% intervals and the
real-data benchmark's quick path (on a tiny model)."""

from __future__ import annotations

import itertools
import json
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
