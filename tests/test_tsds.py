"""TSDS (`baselines.tsds`) against slow references: nearest neighbours and kernel densities
by loops over all pairs, and the probability assignment by scanning every breakpoint of s in
increasing order and computing each query's transport cost from scratch."""

from __future__ import annotations

import numpy as np
import pytest

from raise_select.baselines import SelectionContext, make_baseline, needs_features
from raise_select.baselines.registry import needs_rds_vectors
from raise_select.baselines.tsds import kernel_density, knn, probabilities
from raise_select.data.pools import Example, Pool, example_id
from raise_select.errors import UserError


def test_knn_matches_a_loop():
    rng = np.random.default_rng(0)
    pool, queries = rng.normal(size=(30, 4)), rng.normal(size=(3, 4))
    d, idx = knn(pool, queries, 5)
    for j, q in enumerate(queries):
        full = np.linalg.norm(pool - q, axis=1)
        want = sorted(range(30), key=lambda i: (full[i], i))[:5]
        assert idx[j].tolist() == want
        assert d[j] == pytest.approx(full[want])


def test_kernel_density_matches_a_loop():
    rng = np.random.default_rng(1)
    x = rng.normal(scale=0.3, size=(12, 3))
    got = kernel_density(x, 4, 0.75)
    for i in range(12):
        d2 = sorted(float(((x[i] - x[j]) ** 2).sum()) for j in range(12))[:4]  # itself (0) included
        assert got[i] == pytest.approx(sum(max(0.0, 1 - v / 0.75**2) for v in d2))
    assert kernel_density(x, 4, 0.0).tolist() == [1.0] * 12


def slow_probabilities(dists, kdes, idx, n, alpha, c):
    """Every breakpoint s = sum_{k' <= k} 1 / kde_jk' (k <= K - 2) in increasing order; at each,
    each query's last neighbour reached and its cost d_{j,K+1} s_j - sum d / kde, from scratch;
    stop at the first s where alpha / C x the total cost reaches (1 - alpha) M."""
    m, kmax = dists.shape
    prefix = np.cumsum(1 / kdes, axis=1)
    points = sorted((prefix[j, k], k, j) for j in range(m) for k in range(kmax - 1))
    reached = [-1] * m  # the last neighbour whose breakpoint is passed
    s, last = 0.0, [-1] * m
    for s, k, j in points:
        reached[j] = k
        total = 0.0
        for jj in range(m):
            kk = reached[jj]
            if kk >= 0:
                total += dists[jj, kk + 1] * prefix[jj, kk] - float((dists[jj, : kk + 1] / kdes[jj, : kk + 1]).sum())
        if alpha / c * total >= (1 - alpha) * m:
            break
        last[j] = k
    probs = np.zeros(n)
    for jj in range(m):
        mass = 1 / (m * s * kdes[jj, : last[jj] + 1])
        np.add.at(probs, idx[jj, : last[jj] + 1], mass)
        probs[idx[jj, last[jj] + 1]] += max(1 / m - mass.sum(), 0.0)
    return probs


# (0.5, 0.05): the cost passes the bar at the first breakpoint, before most queries have one.
@pytest.mark.parametrize("alpha,c", [(0.5, 5.0), (0.9, 1.0), (0.1, 10.0), (0.5, 0.05)])
def test_probabilities_match_the_breakpoint_scan(alpha, c):
    rng = np.random.default_rng(2)
    m, k, n = 4, 7, 25
    dists = np.sort(rng.uniform(0.1, 2.0, size=(m, k)), axis=1)
    kdes = rng.uniform(1.0, 3.0, size=(m, k))
    idx = np.stack([rng.choice(n, size=k, replace=False) for _ in range(m)])
    got = probabilities(dists, kdes, idx, n, alpha, c)
    assert got == pytest.approx(slow_probabilities(dists, kdes, idx, n, alpha, c), abs=1e-12)
    assert got.sum() == pytest.approx(1.0) and (got >= 0).all()


def test_probabilities_spread_with_diversity_and_by_density():
    """alpha near 1 (matching only): each query's mass on its nearest row; alpha small: spread
    over more rows; a dense neighbour (kde 2) gets half of a lone one's mass."""
    dists = np.array([[0.1, 0.2, 0.3, 0.4, 0.5]])
    idx = np.array([[0, 1, 2, 3, 4]])
    tight = probabilities(dists, np.ones((1, 5)), idx, 5, 0.99, 1.0)
    assert tight.tolist() == [1.0, 0, 0, 0, 0]
    wide = probabilities(dists, np.ones((1, 5)), idx, 5, 0.01, 100.0)
    assert (wide > 0).sum() == 4  # K - 1: the K-th neighbour only ever takes a remainder
    kdes = np.array([[1.0, 2.0, 1.0, 1.0, 1.0]])
    dense = probabilities(dists, kdes, idx, 5, 0.01, 100.0)
    assert dense[1] == pytest.approx(dense[0] / 2)


def _pool(n: int) -> Pool:
    examples = []
    for i in range(n):
        msgs = (("user", f"Question {i}: what is {i} times {i % 5}?"), ("assistant", "a" * (i % 9 + 1) + "e" * (i % 4)))
        examples.append(Example(id=example_id(msgs), messages=msgs, record={}, row=i))
    return Pool(examples=examples, format="messages", sources=["test"])


def test_tsds_end_to_end_with_a_stub_encoder(tmp_path, monkeypatch):
    import raise_select.features.semantic as semantic

    def fake_encode(_encoder, texts, _batch):
        return np.array([[len(t) / 10, t.count("a") + 1.0, t.count("e") + 0.5] for t in texts], dtype=np.float32)

    monkeypatch.setattr(semantic, "load_sentence_encoder", lambda *a, **k: object())
    monkeypatch.setattr(semantic, "encode_texts", fake_encode)
    pool = _pool(60)
    val = _pool(64).examples[60:]
    method = make_baseline("tsds", {"representation": "embed", "sigma": 0.1})
    ctx = SelectionContext(validation=val, out_dir=tmp_path, seed=3)
    sel = method.select(pool, 10, ctx)
    assert len(sel.indices) == 10 and sel.indices == sorted(sel.indices)
    assert sel.indices == method.select(pool, 10, ctx).indices  # seeded
    # the same probabilities from the pieces, by hand
    x = fake_encode(None, [semantic.example_text(e) for e in pool.examples], 0).astype(np.float64)
    q = fake_encode(None, [semantic.example_text(e) for e in val], 0).astype(np.float64)
    x, q = x / np.linalg.norm(x, axis=1, keepdims=True), q / np.linalg.norm(q, axis=1, keepdims=True)
    d, idx = knn(x, q, 6)
    near = np.unique(idx)
    kde = dict(zip(near.tolist(), kernel_density(x[near], 6, 0.1)))
    probs = probabilities(d, np.vectorize(kde.get)(idx).astype(float), idx, 60, 0.5, 5.0)
    assert sel.pool_scores == pytest.approx(probs.tolist())
    assert all(probs[i] > 0 for i in sel.indices)
    assert not needs_features("tsds", {"representation": "embed"}) and needs_rds_vectors("tsds")


def test_tsds_refuses_bad_options_and_nan_vectors(monkeypatch):
    with pytest.raises(UserError, match="representation"):
        make_baseline("tsds", {"representation": "nope"})
    with pytest.raises(UserError, match="alpha"):
        make_baseline("tsds", {"alpha": 1.0})
    import raise_select.features.semantic as semantic

    monkeypatch.setattr(semantic, "load_sentence_encoder", lambda *a, **k: object())
    monkeypatch.setattr(semantic, "encode_texts", lambda _e, texts, _b: np.full((len(texts), 2), np.nan))
    with pytest.raises(UserError, match="tsds: pool row 0 has a NaN"):
        make_baseline("tsds", {"representation": "embed"}).select(
            _pool(30), 5, SelectionContext(validation=_pool(32).examples[30:])
        )
