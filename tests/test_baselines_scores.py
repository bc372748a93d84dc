"""Every baseline score against a slow plain reference on tiny inputs."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from raise_select.baselines import (
    BASELINES,
    Selection,
    SelectionContext,
    budget_count,
    make_baseline,
    matched_batches,
    matched_steps,
)
from raise_select.baselines.deita import (
    diversity_filter,
    evol_scores,
    expected_scores,
    score_texts,
    score_token_ids,
    turns,
)
from raise_select.baselines.ifd import ifd_scores
from raise_select.baselines.less import RademacherProjector, adam_precondition, mean_cosine
from raise_select.baselines.registry import get_baseline_class
from raise_select.baselines.sspl import bucket_bounds, curriculum
from raise_select.data.pools import Example, Pool, example_id
from raise_select.errors import UserError
from raise_select.features.table import FEATURE_COLUMNS, FeatureTable


def make_pool(n: int) -> Pool:
    examples = []
    for i in range(n):
        msgs = (("user", f"What is {i} plus {i}?"), ("assistant", f"The answer is {2 * i}."))
        examples.append(
            Example(
                id=example_id(msgs),
                messages=msgs,
                record={"instruction": msgs[0][1], "input": "", "output": msgs[1][1]},
                row=i,
            )
        )
    return Pool(examples=examples, format="alpaca", sources=["test"])


def make_features(pool: Pool, logp_cond, logp_uncond, truncated=None, sem=None) -> FeatureTable:
    n = len(pool)
    cols = {c: np.zeros(n) for c in FEATURE_COLUMNS}
    cols["logp_cond"] = np.asarray(logp_cond, dtype=np.float64)
    cols["logp_uncond"] = np.asarray(logp_uncond, dtype=np.float64)
    cols["len_response"] = np.full(n, 5.0)
    cols["truncated"] = np.zeros(n) if truncated is None else np.asarray(truncated, dtype=np.float64)
    sem = np.random.default_rng(0).normal(size=(n, 4)).astype(np.float32) if sem is None else sem
    return FeatureTable(ids=pool.ids, columns=cols, sem=sem, cluster=np.zeros(n, dtype=np.int64))


# ---------------------------------------------------------------- registry, budgets, batches


def test_registry_lists_methods_on_unknown_name():
    assert set(BASELINES) == {
        "full",
        "random",
        "ifd",
        "deita",
        "alpagasus",
        "sspl",
        "less",
        "rose",
        "rds",
        "embed",
        "tsds",
        "greats",
        "rho",
    }
    with pytest.raises(
        UserError,
        match=r"unknown method 'nope'; available: full, random, ifd, deita, alpagasus, sspl, less, rose, rds, embed, "
        r"tsds, greats, rho",
    ):
        get_baseline_class("nope")
    with pytest.raises(UserError, match="unknown option"):
        make_baseline("deita", {"treshold": 0.8})
    assert make_baseline("deita", {"threshold": "0.8"}).threshold == 0.8


def test_budget_and_matched_steps():
    assert budget_count(0.01, 52002) == 520
    assert budget_count(7, 100) == 7
    with pytest.raises(UserError):
        budget_count(0, 10)
    with pytest.raises(UserError):
        budget_count(11, 10)
    assert matched_steps(520, 8, 3) == 195
    assert matched_steps(10, 4, 3) == 8  # ceil(30 / 4)


def test_static_batches_are_epochs_of_reshuffles():
    subset = [3, 8, 1, 9, 4, 6]
    steps = matched_steps(len(subset), 3, 3)
    batches = matched_batches(Selection(subset), 3, steps, seed=5)
    flat = [i for b in batches for i in b]
    assert len(batches) == 6 and all(len(b) == 3 for b in batches)
    for epoch in range(3):
        assert sorted(flat[epoch * 6 : (epoch + 1) * 6]) == sorted(subset)
    assert matched_batches(Selection(subset), 3, steps, seed=5) == batches
    assert matched_batches(Selection(subset), 3, steps, seed=6) != batches


def test_schedule_batches_keep_order():
    sched = list(range(12))
    assert matched_batches(Selection(sched), 4, 3, seed=0, dynamic=True) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]]
    with pytest.raises(UserError, match="schedule holds"):
        matched_batches(Selection(sched), 4, 4, seed=0, dynamic=True)


def test_random_is_seeded():
    pool = make_pool(50)
    method = make_baseline("random")
    a = method.select(pool, 10, SelectionContext(seed=1)).indices
    b = method.select(pool, 10, SelectionContext(seed=1)).indices
    c = method.select(pool, 10, SelectionContext(seed=2)).indices
    assert a == b and a != c
    assert len(set(a)) == 10 and all(0 <= i < 50 for i in a)


def test_full_takes_everything():
    pool = make_pool(5)
    assert make_baseline("full").select(pool, 1, SelectionContext()).indices == [0, 1, 2, 3, 4]


# ---------------------------------------------------------------- IFD


def test_ifd_against_plain_loop():
    pool = make_pool(9)
    logp_cond = [-1.0, -2.0, -0.5, -3.0, -0.1, -1.5, -2.5, -0.2, -1.0]
    logp_uncond = [-2.0, -1.0, -2.5, -3.5, -0.4, -1.5, -2.0, 0.0, -4.0]
    truncated = [0, 0, 0, 0, 0, 0, 0, 0, 1]
    ft = make_features(pool, logp_cond, logp_uncond, truncated)
    sel = make_baseline("ifd").select(pool, 4, SelectionContext(features=ft))

    expected = []
    for i in range(9):
        loss_c, loss_u = -logp_cond[i], -logp_uncond[i]
        if truncated[i] or loss_u <= 0:
            continue
        ratio = loss_c / loss_u
        if ratio > 1:  # the reference's `if mean_rate > 1: continue`
            continue
        expected.append((ratio, i))
    expected.sort(key=lambda t: (-t[0], t[1]))
    assert sel.indices == [i for _, i in expected[:4]]
    assert sel.scores == pytest.approx([r for r, _ in expected[:4]])
    assert sel.info["dropped"] == {"truncated_or_empty": 1, "undefined": 1, "ifd_above_max": 2}
    # Row 5 has IFD exactly 1: kept, as the reference keeps it.
    assert 5 in sel.indices
    assert ifd_scores(np.array([-1.0]), np.array([-4.0]))[0] == pytest.approx(0.25)


def test_ifd_needs_features():
    with pytest.raises(UserError, match="--features"):
        make_baseline("ifd").select(make_pool(3), 1, SelectionContext())


# ---------------------------------------------------------------- DEITA


def test_expected_score_against_manual_softmax():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 20, generator=gen) * 3
    ids = [7, 2, 11, 5, 19, 0]
    got = expected_scores(logits, ids)
    for b in range(4):
        exps = [math.exp(float(logits[b, t])) for t in ids]
        manual = sum((s + 1) * e for s, e in enumerate(exps)) / sum(exps)
        assert float(got[b]) == pytest.approx(manual, rel=1e-5)


def test_scorer_batches_with_left_padding_match_single_passes(tiny_model_dir):
    from raise_select.models.loading import load_model_and_tokenizer

    model, tok = load_model_and_tokenizer(str(tiny_model_dir))
    ids = score_token_ids(tok)
    assert len(set(ids)) == 6 and tok.convert_ids_to_tokens(ids) == list("123456")
    texts = ["Name three colors:", "What is 12 plus 7? The answer is", "Translate to French: good morning."]
    batched = score_texts(model, tok, texts, batch_size=3, max_length=64, desc="test")
    for text, got in zip(texts, batched):
        enc = tok(text, return_tensors="pt")
        with torch.no_grad():
            logits = model(**enc).logits[0, -1]
        p = torch.softmax(logits[ids].double(), 0)
        assert got == pytest.approx(float((p * torch.arange(1, 7, dtype=torch.double)).sum()), rel=1e-4)


def test_diversity_filter_against_double_loop():
    rng = np.random.default_rng(3)
    base = rng.normal(size=(6, 5))
    emb = np.concatenate([base, base[:4] + 0.05 * rng.normal(size=(4, 5)), rng.normal(size=(10, 5))])
    order = rng.permutation(len(emb)).tolist()
    for threshold, budget in [(0.9, 12), (0.5, 20), (0.99, 5)]:
        admitted, rejected = diversity_filter(emb, order, threshold, budget)
        expected, n_rejected = [], 0
        for i in order:
            if len(expected) >= budget:
                break
            sims = [float(np.dot(emb[i], emb[j]) / (np.linalg.norm(emb[i]) * np.linalg.norm(emb[j]))) for j in expected]
            if all(s <= threshold for s in sims):
                expected.append(i)
            else:
                n_rejected += 1
        assert admitted == expected and rejected == n_rejected


def test_evol_score_sums_turn_products():
    assert evol_scores([[2.0], [1.0, 3.0]], [[4.0], [5.0, 2.0]]).tolist() == [8.0, 11.0]
    msgs = (("system", "be brief"), ("user", "a"), ("assistant", "b"), ("user", "c"), ("assistant", "d"))
    assert turns(Example(id="x", messages=msgs, record={})) == [("a", "b"), ("c", "d")]


# ---------------------------------------------------------------- LESS


def test_projection_chunked_equals_dense_matrix():
    dim, k = 50, 16
    chunked = RademacherProjector(dim, k, seed=3, block_rows=8, cache_limit=0)
    dense = chunked.project(torch.eye(dim))  # the matrix R itself, row by row
    assert dense.shape == (dim, k)
    assert torch.allclose(dense.abs(), torch.full((dim, k), 1 / math.sqrt(k)))
    assert torch.equal(torch.cat([chunked.block(b) for b in range(7)]), dense)
    x = torch.randn(5, dim, generator=torch.Generator().manual_seed(1))
    manual = torch.tensor(
        [[sum(float(x[i, d]) * float(dense[d, j]) for d in range(dim)) for j in range(k)] for i in range(5)]
    )
    assert torch.allclose(chunked.project(x), manual, atol=1e-5)
    cached = RademacherProjector(dim, k, seed=3, block_rows=8)
    assert torch.allclose(cached.project(x), manual, atol=1e-5)
    assert not torch.equal(RademacherProjector(dim, k, seed=4, block_rows=8).project(torch.eye(dim)), dense)


def test_projection_preserves_inner_products_roughly():
    dim, k = 400, 2048
    x = torch.randn(3, dim, generator=torch.Generator().manual_seed(0))
    p = RademacherProjector(dim, k, seed=0, block_rows=128).project(x)
    assert torch.allclose(p @ p.T, x @ x.T, rtol=0.2, atol=0.15 * dim)


def test_mean_cosine_against_loop():
    gen = torch.Generator().manual_seed(2)
    train, val = torch.randn(4, 6, generator=gen), torch.randn(3, 6, generator=gen)
    got = mean_cosine(train, val)
    for i in range(4):
        cos = [float(train[i] @ val[j]) / (float(train[i].norm()) * float(val[j].norm())) for j in range(3)]
        assert float(got[i]) == pytest.approx(sum(cos) / 3, rel=1e-5)


def test_adam_preconditioning_formula():
    g = torch.tensor([0.5, -2.0, 0.0, 1e-3])
    m = torch.tensor([0.1, 0.2, -0.3, 0.0])
    v = torch.tensor([0.01, 0.5, 0.2, 0.0])
    got = adam_precondition(g, m, v)
    for i in range(4):
        m1 = 0.9 * float(m[i]) + 0.1 * float(g[i])
        v1 = 0.999 * float(v[i]) + 0.001 * float(g[i]) ** 2
        assert float(got[i]) == pytest.approx(m1 / math.sqrt(v1 + 1e-8), rel=1e-5)


LESS_TINY = {
    "warmup_fraction": 0.4,
    "warmup_epochs": 2,
    "warmup_batch_size": 2,
    "lr": 1e-3,
    "lora_r": 2,
    "lora_alpha": 4,
    "proj_dim": 32,
    "chunk": 4,
}


def test_less_end_to_end_is_deterministic(tiny_model_dir):
    pool = make_pool(10)
    val = make_pool(12).examples[10:]
    method = make_baseline("less", LESS_TINY)
    ctx = SelectionContext(model=str(tiny_model_dir), validation=val, seed=0, max_length=64)
    a = method.select(pool, 3, ctx)
    b = method.select(pool, 3, ctx)
    assert a.indices == b.indices and a.scores == pytest.approx(b.scores)
    assert len(a.indices) == 3 and a.scores == sorted(a.scores, reverse=True)
    assert all(-1 <= s <= 1 for s in a.scores)
    assert a.info["checkpoints"] == 2 and sum(a.info["checkpoint_weights"]) == pytest.approx(1.0)


def test_less_choice_target_is_the_gradient_of_the_scored_choice_ce(tiny_model_dir, tmp_path):
    """Under `target: choice_ce` each validation item's projected gradient, read along a column r_k of
    the projection, is the central difference along r_k of that item's gold-choice cross-entropy as the
    no-grad scorer (lm-eval's form, `score_items`) computes it; `auto` picks it for multiple-choice items
    only, and ROSE refuses it."""
    from peft import LoraConfig, get_peft_model

    from conftest import CHOICE_DOCS, write_choice_items
    from raise_select.baselines.less import LESS
    from raise_select.data.pools import load_pool
    from raise_select.models import load_model_and_tokenizer
    from raise_select.training.choices import item_from_example, score_items

    path = tmp_path / "items.jsonl"
    write_choice_items(path, CHOICE_DOCS[:2])
    val = load_pool(str(path)).examples
    base, tok = load_model_and_tokenizer(str(tiny_model_dir))
    torch.manual_seed(0)
    lora = LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    model = get_peft_model(base, lora).double()
    params = [p for p in model.parameters() if p.requires_grad]
    with torch.no_grad():  # B starts at 0: move off it so every adapter has a gradient
        for p in params:
            p.add_(0.2 * torch.randn_like(p))
    model.eval()
    dim = sum(p.numel() for p in params)
    projector = RademacherProjector(dim, 3, seed=1)
    got = LESS(target="choice_ce")._validation_grads(model, tok, val, SelectionContext(max_length=64), projector, "v")
    r = projector.project(torch.eye(dim)).double()  # (dim, 3): the columns r_k

    def ce_at(j: int, step: torch.Tensor) -> float:
        with torch.no_grad():
            offset = 0
            for p in params:
                p.add_(step[offset : offset + p.numel()].view_as(p))
                offset += p.numel()
            value = float(score_items(model, tok, [item_from_example(val[j])], max_length=64).ce[0])
            offset = 0
            for p in params:
                p.sub_(step[offset : offset + p.numel()].view_as(p))
                offset += p.numel()
        return value

    eps = 1e-3  # the scorer's logits are float32: a much smaller step would measure their rounding
    for j in range(2):
        for k in range(3):
            slope = (ce_at(j, eps * r[:, k]) - ce_at(j, -eps * r[:, k])) / (2 * eps)
            assert float(got[j, k]) == pytest.approx(slope, rel=1e-2, abs=2e-7)
    sft = LESS()._validation_grads(model, tok, val, SelectionContext(max_length=64), projector, "v")
    assert not torch.allclose(sft, got, atol=1e-3)  # the answer line's loss is another objective
    assert LESS(target="auto").resolved_target(val) == "choice_ce"
    assert LESS(target="auto").resolved_target(make_pool(3).examples) == "sft"
    with pytest.raises(UserError, match="target"):
        make_baseline("rose", {"target": "choice_ce"})
    with pytest.raises(UserError, match="target"):
        make_baseline("less", {"target": "choices"})


def test_less_pool_gradients_resume_from_their_cache_and_rose_shares_them(tiny_model_dir, tmp_path, monkeypatch):
    """A pass killed part-way keeps its finished chunks; the rerun computes only the rest and
    selects exactly what an uncached run does; a second target (other validation rows) and
    ROSE reuse the pool's gradients without one more backward."""
    from raise_select.baselines.less import LESS

    pool = make_pool(10)
    val = make_pool(12).examples[10:]
    ref = make_baseline("less", LESS_TINY).select(
        pool, 3, SelectionContext(model=str(tiny_model_dir), validation=val, max_length=64)
    )

    calls = {"n": 0, "fail_at": None}
    plain = LESS._sft_loss

    def counted(model, tok, ctx):
        loss = plain(model, tok, ctx)

        def f(e):
            calls["n"] += 1
            if calls["n"] == calls["fail_at"]:
                raise RuntimeError("killed")
            return loss(e)

        return f

    monkeypatch.setattr(LESS, "_sft_loss", staticmethod(counted))
    cache = tmp_path / "cache"
    ctx = SelectionContext(model=str(tiny_model_dir), validation=val, max_length=64, cache_dir=cache)
    # Checkpoint 1: 2 validation rows (calls 1-2), then pool chunks of 4 rows (3-6, 7-10, 11-12).
    calls["fail_at"] = 11
    with pytest.raises(RuntimeError, match="killed"):
        make_baseline("less", LESS_TINY).select(pool, 3, ctx)
    (store,) = (cache / "less-train-grads").iterdir()
    assert sorted(f.name for f in store.iterdir()) == ["0000000.npy", "0000004.npy"]

    calls.update(n=0, fail_at=None)
    resumed = make_baseline("less", LESS_TINY).select(pool, 3, ctx)
    # 2 + 2 (the missing chunk of checkpoint 1) + 2 + 10 (checkpoint 2).
    assert calls["n"] == 16
    assert resumed.indices == ref.indices and resumed.scores == pytest.approx(ref.scores, abs=1e-6)
    assert resumed.pool_scores == pytest.approx(ref.pool_scores, abs=1e-6)

    calls["n"] = 0
    other_target = make_pool(14).examples[12:]
    make_baseline("less", LESS_TINY).select(pool, 3, replace(ctx, validation=other_target))
    assert calls["n"] == 4  # the validation rows only, at each checkpoint

    calls["n"] = 0
    rose = make_baseline("rose", LESS_TINY).select(pool, 3, replace(ctx, out_dir=tmp_path / "rose"))
    assert calls["n"] == 0 and len(rose.indices) == 3  # ROSE's validation gradients are DPO ones
    assert len(list((cache / "less-train-grads").iterdir())) == 2  # one folder per checkpoint


def test_chunked_store_refuses_a_chunk_of_the_wrong_size(tmp_path):
    from raise_select.baselines.less import chunked_store

    rows = torch.arange(10, dtype=torch.float32).reshape(5, 2)
    got = chunked_store(tmp_path, 5, 2, lambda s, e: rows[s:e], "t")
    assert torch.equal(got, rows) and sorted(f.name for f in tmp_path.iterdir())[0] == "0000000.npy"
    assert torch.equal(chunked_store(tmp_path, 5, 2, lambda s, e: 1 / 0, "t"), rows)  # all from the files
    np.save(tmp_path / "0000002.npy", np.zeros((1, 2), dtype=np.float32))
    with pytest.raises(UserError, match=r"0000002.npy: holds 1 rows, expected 2"):
        chunked_store(tmp_path, 5, 2, lambda s, e: rows[s:e], "t")


# ---------------------------------------------------------------- SSPL


def test_sspl_buckets_go_easy_to_hard():
    assert bucket_bounds(10, 3) == [(0, 3), (3, 6), (6, 10)]
    losses = np.random.default_rng(0).uniform(size=60)
    batches = curriculum(losses, steps=5, batch_size=4, seed=0)
    ranks = np.empty(60, dtype=int)
    ranks[np.argsort(losses, kind="stable")] = np.arange(60)
    for t, batch in enumerate(batches):
        assert len(set(batch)) == 4
        assert all(12 * t <= ranks[i] < 12 * (t + 1) for i in batch)  # batch t from the t-th easiest bucket
    for earlier, later in zip(batches, batches[1:]):
        assert max(losses[earlier]) <= min(losses[later])


def test_sspl_schedule_from_features():
    pool = make_pool(40)
    logp = -np.random.default_rng(1).uniform(0.1, 3.0, size=40)
    ft = make_features(pool, logp, logp - 1)
    sel = make_baseline("sspl").select(pool, 8, SelectionContext(features=ft, batch_size=4, epochs=3))
    assert sel.info["steps"] == matched_steps(8, 4, 3) == 6
    assert len(sel.indices) == 24
    batches = matched_batches(sel, 4, 6, seed=0, dynamic=True)
    means = [float(np.mean(-logp[b])) for b in batches]
    assert means == sorted(means)
    with pytest.raises(UserError, match="unknown loss source"):
        make_baseline("sspl", {"loss": "nope"}).select(pool, 8, SelectionContext(features=ft))


def test_example_losses_match_the_model_loss_per_example(tiny_model_dir):
    from raise_select.baselines.lm import encoded_batch, example_losses
    from raise_select.models.loading import load_model_and_tokenizer

    model, tok = load_model_and_tokenizer(str(tiny_model_dir))
    examples = make_pool(5).examples
    batched = example_losses(model, tok, examples, "alpaca", 64, batch_size=3)
    for e, got in zip(examples, batched):
        with torch.no_grad():
            single = model(**encoded_batch([e], tok, "alpaca", 64, "cpu")).loss  # HF mean over labelled tokens
        assert float(got) == pytest.approx(float(single), rel=1e-4)


def test_sspl_target_loss_orders_by_the_models_loss(tiny_model_dir):
    from raise_select.baselines.lm import example_losses
    from raise_select.models.loading import load_model_and_tokenizer

    pool = make_pool(12)
    sel = make_baseline("sspl", {"loss": "target"}).select(
        pool, 4, SelectionContext(model=str(tiny_model_dir), batch_size=2, epochs=1, max_length=64)
    )
    model, tok = load_model_and_tokenizer(str(tiny_model_dir))
    losses = example_losses(model, tok, pool.examples, "alpaca", 64).numpy()
    assert sel.scores == pytest.approx(losses[sel.indices].tolist(), rel=1e-4)
    batches = matched_batches(sel, 2, sel.info["steps"], seed=0, dynamic=True)
    assert [max(losses[b]) <= min(losses[c]) for b, c in zip(batches, batches[1:])] == [True]


def test_last_token_embeddings_ignore_left_padding(tiny_model_dir):
    from raise_select.baselines.deita import last_token_embeddings
    from raise_select.models.loading import load_model_and_tokenizer

    model, tok = load_model_and_tokenizer(str(tiny_model_dir))
    texts = ["Name three colors: red, green and blue.", "What is 12 plus 7?"]
    batched = last_token_embeddings(model, tok, texts, batch_size=2, max_length=64)
    for text, got in zip(texts, batched):
        with torch.no_grad():
            hidden = model(**tok(text, return_tensors="pt"), output_hidden_states=True).hidden_states[-1][0, -1]
        assert np.allclose(got, hidden.numpy(), atol=1e-4)
