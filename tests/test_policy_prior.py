"""`policy.prior` (policy/prior.py): the standardised column, the RDS+ similarity against a
loop of hand-computed cosines, the round-0 actor against its closed form, its per-class
ranking against the prior's, save/load, refusals, and train-policy + finetune end to end."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from conftest import random_features
from raise_select.errors import UserError
from raise_select.policy import PolicyConfig, RaisePolicy, StaticState, fuse_state
from raise_select.policy.prior import init_prior_actor, rds_prior, rds_similarity, standardize
from test_policy_state import synthetic_features


def _prior_static(n=60, classes=4, seed=0):
    ft = synthetic_features(n, sem_dim=3, classes=classes, seed=seed)
    z = standardize(np.random.default_rng(seed + 1).normal(size=n))
    return ft, z, StaticState.from_features(ft, prior=z)


def test_standardize_by_hand():
    z = standardize(np.array([1.0, 2.0, 3.0, 6.0]))
    mean, std = 3.0, np.sqrt(((1 - 3) ** 2 + (2 - 3) ** 2 + 0 + (6 - 3) ** 2) / 4)
    assert z == pytest.approx([(1 - mean) / std, (2 - mean) / std, 0.0, (6 - mean) / std], abs=1e-6)
    assert standardize(np.full(3, 7.0)).tolist() == [0.0, 0.0, 0.0]
    with pytest.raises(UserError, match="row 1 is not finite"):
        standardize(np.array([0.0, np.nan]))


def test_rds_similarity_is_the_mean_cosine_of_a_loop():
    rng = np.random.default_rng(0)
    pool, val = rng.normal(size=(7, 5)), rng.normal(size=(3, 5))
    loop = [np.mean([p @ v / np.linalg.norm(p) / np.linalg.norm(v) for v in val]) for p in pool]
    assert rds_similarity(pool, val) == pytest.approx(loop, abs=1e-12)
    with pytest.raises(UserError, match="dimensions"):
        rds_similarity(pool, val[:, :4])


def test_state_with_a_prior_keeps_the_paper_layout_and_appends_one_column():
    ft, z, static = _prior_static()
    plain = StaticState.from_features(ft)
    assert static.sem_dim == plain.sem_dim == 3 and static.prior_dim == 1 and plain.prior_column is None
    assert static.fused_dim == plain.fused_dim + 1
    fused = fuse_state(static, -1.0, 0.5, torch.zeros(len(static), dtype=torch.int64))
    assert torch.equal(fused[:, static.prior_column], torch.from_numpy(z))
    assert torch.equal(fused[:, :-2], fuse_state(plain, -1.0, 0.5, torch.zeros(len(plain), dtype=torch.int64))[:, :-1])
    with pytest.raises(UserError, match="prior column has 3 rows"):
        StaticState.from_features(ft, prior=z[:3])


def test_round_zero_scores_are_the_closed_form_and_rank_each_class_by_the_prior():
    _, z, static = _prior_static()
    policy = RaisePolicy(static, PolicyConfig(per_class=2, prior="rds", prior_scale=2.5))
    counts = torch.zeros(len(static), dtype=torch.int64)
    counts[::5] = 3  # times selected must not move a round-0 score
    for perf, progress in ((-2.0, 0.0), (-1.5, 0.7)):
        scores = policy.scores(perf, progress, counts)
        assert scores.detach().numpy() == pytest.approx(2.5 * np.tanh(z), abs=1e-6)
        # The materialised path (eq. 6 + F_theta) agrees with the cached projection.
        assert policy.actor(fuse_state(static, perf, progress, counts)).detach().numpy() == pytest.approx(
            2.5 * np.tanh(z), abs=1e-6
        )
    policy.cfg = replace(policy.cfg, use_rule="topk")
    chosen = policy.use(-2.0, 0.0, counts).indices.tolist()
    classes = static.classes.numpy()
    expected = []
    for c in range(static.num_classes):
        members = np.flatnonzero(classes == c)
        expected += members[np.argsort(-z[members], kind="stable")[:2]].tolist()
    assert sorted(chosen) == sorted(expected)


def test_prior_and_state_must_agree_and_survive_save_load(tmp_path):
    ft, z, static = _prior_static()
    with pytest.raises(UserError, match="policy.prior is rds but the state has no prior column"):
        RaisePolicy(StaticState.from_features(ft), PolicyConfig(prior="rds"))
    with pytest.raises(UserError, match="policy.prior is none but the state has prior"):
        RaisePolicy(static, PolicyConfig())
    with pytest.raises(UserError, match="prior"):
        PolicyConfig(prior="ifd")
    with pytest.raises(UserError, match="prior_scale"):
        PolicyConfig(prior="rds", prior_scale=float("nan"))
    policy = RaisePolicy(static, PolicyConfig(per_class=1, prior="rds"))
    policy.save(tmp_path)
    assert json.loads((tmp_path / "policy.json").read_text())["dims"]["prior_dim"] == 1
    assert RaisePolicy.read_config(tmp_path).prior == "rds"
    again = RaisePolicy.load(tmp_path, StaticState.from_features(ft, RaisePolicy.read_normalizer(tmp_path), prior=z))
    counts = torch.zeros(len(static), dtype=torch.int64)
    assert torch.equal(again.scores(-1.0, 0.0, counts), policy.scores(-1.0, 0.0, counts))
    with pytest.raises(UserError, match="dims.prior_dim"):
        RaisePolicy.load(tmp_path, StaticState.from_features(ft, RaisePolicy.read_normalizer(tmp_path)))


def test_init_prior_actor_on_a_plain_mlp():
    from raise_select.policy.acquisition import AcquisitionMLP

    actor = AcquisitionMLP(6, 5)
    init_prior_actor(actor, column=3, scale=4.0)
    x = torch.randn(9, 6)
    assert actor(x).detach().numpy() == pytest.approx((4.0 * torch.tanh(x[:, 3])).numpy(), abs=1e-6)


@pytest.fixture(scope="module")
def rds_setup(tmp_path_factory, tiny_model_dir):
    """A 24-row pool with random features in 3 classes, true RDS+ vectors of the tiny model, a 4-row validation file."""
    from raise_select.baselines.rds import rds_vectors
    from raise_select.data.pools import load_pool

    root = tmp_path_factory.mktemp("prior")
    rows = [
        {
            "instruction": f"What is {i} plus {i + 1}?" if i % 2 else f"Name animal number {i}.",
            "input": "",
            "output": f"The answer is {2 * i + 1}." if i % 2 else "A cat.",
        }
        for i in range(24)
    ]
    (root / "pool.json").write_text(json.dumps(rows))
    val = [
        {"instruction": "What is 3 plus 4?", "input": "", "output": "The answer is 7."},
        {"instruction": "What is 10 plus 1?", "input": "", "output": "The answer is 11."},
    ]
    (root / "val.json").write_text(json.dumps(val))
    pool = load_pool(root / "pool.json")
    random_features(
        pool.ids,
        3,
        meta={"model": str(tiny_model_dir), "max_length": 64, "rds": {"pooling": "weighted_mean"}},
        rds=rds_vectors(str(tiny_model_dir), pool.examples, "alpaca", 64),
    ).write(root / "features")
    return root, pool, load_pool(root / "val.json").examples


def test_rds_prior_matches_hand_computed_cosines(rds_setup, tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from raise_select.features.scoring import encode_examples
    from raise_select.features.table import FeatureTable
    from test_targeted_selectors import slow_rds

    root, pool, val = rds_setup
    table = FeatureTable.read(root / "features").align(pool.ids)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    vec = lambda exs: [
        slow_rds(model, [tok.bos_token_id, *e.prompt_ids, *e.response_ids]).numpy()  # noqa: E731
        for e in encode_examples(exs, tok, "alpaca", 64)
    ]
    pv, vv = vec(pool.examples), vec(val)
    sim = np.array([np.mean([p @ v / np.linalg.norm(p) / np.linalg.norm(v) for v in vv]) for p in pv])
    expected = (sim - sim.mean()) / sim.std()
    assert rds_prior(table, val, str(tiny_model_dir), "alpaca", 64) == pytest.approx(expected, abs=1e-4)
    plain = FeatureTable(ids=table.ids, columns=table.columns, sem=table.sem, cluster=table.cluster, meta=table.meta)
    with pytest.raises(UserError, match="featurize the pool with --rds"):
        rds_prior(plain, val, str(tiny_model_dir), "alpaca", 64)


def test_train_policy_and_finetune_with_the_rds_prior(rds_setup, tiny_model_dir, tmp_path):
    from raise_select.training import FinetuneConfig, TrainPolicyConfig, finetune, train_policy

    root, pool, _ = rds_setup
    cfg = TrainPolicyConfig(
        pool=str(root / "pool.json"),
        features=str(root / "features"),
        model=str(tiny_model_dir),
        val=str(root / "val.json"),
        out=str(tmp_path / "run"),
        rounds=1,
        steps=2,
        lr=1e-3,
        max_length=64,
        policy=PolicyConfig(per_class=1, prior="rds"),
    )
    policy_dir = train_policy(cfg)
    meta = json.loads((policy_dir / "policy.json").read_text())
    assert meta["config"]["prior"] == "rds" and meta["dims"]["prior_dim"] == 1
    out = finetune(
        FinetuneConfig(
            policy=str(policy_dir),
            pool=cfg.pool,
            features=cfg.features,
            model=cfg.model,
            val=cfg.val,
            out=str(tmp_path / "ft"),
            steps=2,
            lr=1e-3,
            max_length=64,
        )
    )
    assert out.is_dir()


def _selection_file(path, pool, scores, **extra):
    record = {"method": "less", "pool_scores": scores, "pool_fingerprint": pool.fingerprint, **extra}
    path.write_text(json.dumps(record))
    return path


def test_selection_prior_is_the_standardised_pool_scores_with_nulls_lowest(rds_setup, tmp_path):
    from raise_select.policy.prior import selection_prior

    root, pool, _ = rds_setup
    raw = np.random.default_rng(3).normal(size=len(pool))
    scores = raw.tolist()
    scores[5] = None  # a row the method left unscored
    filled = raw.copy()
    filled[5] = np.delete(raw, 5).min()
    expected = (filled - filled.mean()) / filled.std()
    got = selection_prior(_selection_file(tmp_path / "sel.json", pool, scores), pool)
    assert got == pytest.approx(expected, abs=1e-5)
    with pytest.raises(UserError, match="no such file"):
        selection_prior(tmp_path / "missing.json", pool)
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(UserError, match="bad.json: not a readable JSON"):
        selection_prior(tmp_path / "bad.json", pool)
    with pytest.raises(UserError, match="pool_scores is missing; method 'random'"):
        selection_prior(_selection_file(tmp_path / "r.json", pool, None, method="random"), pool)
    with pytest.raises(UserError, match="another pool"):
        selection_prior(_selection_file(tmp_path / "o.json", pool, scores, pool_fingerprint="x"), pool)
    with pytest.raises(UserError, match="row 2 is not a number"):
        selection_prior(_selection_file(tmp_path / "s.json", pool, [0.0, 1.0, "high", *scores[3:]]), pool)


def test_prior_selection_must_be_named_exactly_with_prior_selection():
    with pytest.raises(UserError, match="prior_selection"):
        PolicyConfig(prior="selection")
    with pytest.raises(UserError, match="prior_selection"):
        PolicyConfig(prior="rds", prior_selection="sel.json")
    assert PolicyConfig(prior="selection", prior_selection="sel.json").prior_selection == "sel.json"


def _selection_prior_job(root, tiny_model_dir, tmp_path, pcfg, rounds):
    """A 2-step train-policy job on `rds_setup`'s pool with policy settings `pcfg`."""
    from raise_select.training import TrainPolicyConfig

    return TrainPolicyConfig(
        pool=str(root / "pool.json"),
        features=str(root / "features"),
        model=str(tiny_model_dir),
        val=str(root / "val.json"),
        out=str(tmp_path / "run"),
        rounds=rounds,
        steps=2,
        lr=1e-3,
        max_length=64,
        policy=pcfg,
    )


def test_train_policy_and_finetune_with_a_selection_prior(rds_setup, tiny_model_dir, tmp_path):
    """Round 0 ranks each class by the selection's scores; the saved policy scores the pool with
    the same column at use time."""
    from raise_select.training import FinetuneConfig, finetune, train_policy
    from raise_select.training.episode import load_static, prior_column

    root, pool, _ = rds_setup
    raw = np.random.default_rng(4).normal(size=len(pool))
    sel = _selection_file(tmp_path / "sel.json", pool, raw.tolist())
    pcfg = PolicyConfig(per_class=1, prior="selection", prior_selection=str(sel), use_rule="topk")
    _, static = load_static(str(root / "pool.json"), str(root / "features"), prior=prior_column(pcfg, [], None, ""))
    first = RaisePolicy(static, pcfg).use(-1.0, 0.0, torch.zeros(len(static), dtype=torch.int64)).indices.tolist()
    classes = static.classes.numpy()
    best = [int(np.flatnonzero(classes == c)[np.argmax(raw[classes == c])]) for c in range(static.num_classes)]
    assert sorted(first) == sorted(best)
    cfg = _selection_prior_job(root, tiny_model_dir, tmp_path, pcfg, rounds=1)
    policy_dir = train_policy(cfg)
    saved = RaisePolicy.read_config(policy_dir)
    assert saved.prior == "selection" and saved.prior_selection == str(sel)
    out = finetune(
        FinetuneConfig(
            policy=str(policy_dir),
            pool=cfg.pool,
            features=cfg.features,
            model=cfg.model,
            val=cfg.val,
            out=str(tmp_path / "ft"),
            steps=2,
            lr=1e-3,
            max_length=64,
        )
    )
    assert out.is_dir()


def test_zero_rounds_saves_the_untrained_prior_policy(rds_setup, tiny_model_dir, tmp_path):
    """`rounds: 0`: no episode runs, and the saved policy scores every row by the closed form
    prior_scale * tanh(z) of the standardised selection scores (the prior alone)."""
    from raise_select.training import train_policy
    from raise_select.training.episode import load_static, prior_column

    root, pool, _ = rds_setup
    raw = np.random.default_rng(5).normal(size=len(pool))
    sel = _selection_file(tmp_path / "sel.json", pool, raw.tolist())
    pcfg = PolicyConfig(per_class=1, prior="selection", prior_selection=str(sel), prior_scale=10.0)
    cfg = _selection_prior_job(root, tiny_model_dir, tmp_path, pcfg, rounds=0)
    policy_dir = train_policy(cfg)
    metrics = tmp_path / "run" / "metrics.jsonl"
    kinds = [json.loads(x)["kind"] for x in metrics.read_text().splitlines()] if metrics.is_file() else []
    assert "reference" not in kinds and "round" not in kinds
    _, static = load_static(str(root / "pool.json"), str(root / "features"), prior=prior_column(pcfg, [], None, ""))
    saved = RaisePolicy.load(policy_dir, static)
    z = (raw - raw.mean()) / raw.std()
    got = saved.scores(-1.0, 0.0, torch.zeros(len(static), dtype=torch.int64)).numpy()
    assert got == pytest.approx(10.0 * np.tanh(z), abs=1e-4)
    with pytest.raises(UserError, match="rounds"):
        replace(cfg, rounds=-1).check()
