"""The online batch selectors (GREATS, RHO-LOSS) against values computed another way: full
per-example gradients one example at a time, the actual validation-loss change of an SGD
step, reducible losses by hand; and both end to end through `raise-select baseline`."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from conftest import messages_pool
from raise_select.baselines import SelectionContext, make_baseline
from raise_select.baselines.greats import greedy_selection, layer_gram, per_example_gram, scored_linears
from raise_select.baselines.lm import encoded_batch, response_losses
from raise_select.baselines.online import candidate_sets, row_losses
from raise_select.baselines.rho import reducible_loss
from raise_select.errors import UserError
from raise_select.training.loop import LMConfig, LMTrainer, collate, encode_example


def _model(tiny_model_dir, lora: bool = False):
    from raise_select.models.loading import load_model_and_tokenizer

    torch.manual_seed(0)
    model, tok = load_model_and_tokenizer(str(tiny_model_dir))
    if lora:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=2, lora_alpha=4, lora_dropout=0.0, task_type="CAUSAL_LM"))
        with torch.no_grad():  # B starts at zero: move it so A's gradients are not zero too
            for n, p in model.named_parameters():
                if "lora_B" in n:
                    p.normal_(0, 0.1)
    return model, tok


def _direct_grads(model, tok, examples, params) -> torch.Tensor:
    """(N, P): each example's gradient of its own mean response loss, one example per pass."""
    rows = []
    for e in examples:
        batch = encoded_batch([e], tok, "alpaca", 64, "cpu")
        loss = response_losses(
            model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits, batch["labels"]
        )[0]
        rows.append(torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params)]))
    return torch.stack(rows).double()


# ---------------------------------------------------------------- GREATS


def _gram_recording_blocks(model, modules, batch) -> tuple[torch.Tensor, list[bool]]:
    """`per_example_gram`, and whether each of the 2 blocks' outputs was recorded for autograd."""
    blocks = [m for n, m in model.named_modules() if n.endswith("layers.0") or n.endswith("layers.1")]
    seen: list[bool] = []
    handles = [
        blk.register_forward_hook(
            lambda mod, i, out: seen.append(out[0].requires_grad if isinstance(out, tuple) else out.requires_grad)
        )
        for blk in blocks
    ]
    try:
        return per_example_gram(model, modules, batch), seen
    finally:
        for h in handles:
            h.remove()


def test_greedy_selection_by_hand():
    scores = np.array([3.0, 2.5, 1.0, 0.5])
    inter = np.array([[9.0, 2.0, -1.0, 0.0], [2.0, 9.0, 0.0, 0.0], [-1.0, 0.0, 9.0, 0.0], [0.0, 0.0, 0.0, 9.0]])
    # pick 0 (3.0); scores - row 0 = [., 0.5, 2.0, 0.5] -> pick 2 (2.0);
    # minus row 2 -> [., 0.5, ., 0.5] -> pick 1 (first max)
    picks, gains = greedy_selection(scores, inter, 3)
    assert picks == [0, 2, 1] and gains == [3.0, 2.0, 0.5]
    assert greedy_selection(scores, inter, 9)[0] == [0, 2, 1, 3]


@pytest.mark.parametrize("bias", [False, True])
def test_layer_gram_ghost_and_materialised_equal_the_explicit_gradients(bias):
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(5, 7, 3, generator=gen), torch.randn(5, 7, 4, generator=gen)
    grads = [torch.cat([(b[i].T @ a[i]).reshape(-1), *([b[i].sum(0)] if bias else [])]) for i in range(5)]
    want = torch.stack(grads) @ torch.stack(grads).T
    for ghost in (True, False, None):
        assert torch.allclose(layer_gram(a, b, bias, ghost=ghost), want, atol=1e-4)


@pytest.mark.parametrize("lora", [False, True])
def test_greats_inner_products_match_full_per_example_gradients(tiny_model_dir, lora):
    model, tok = _model(tiny_model_dir, lora)
    modules = scored_linears(model, last_layers=1)
    if lora:
        assert all("lora_" in n for n, _ in modules)
    else:
        assert {n.split("layers.")[1].split(".")[0] for n, _ in modules} == {"1"}  # the last of 2 blocks
    examples = messages_pool(5).examples
    batch = encoded_batch(examples, tok, "alpaca", 64, "cpu")
    gram = per_example_gram(model, [m for _, m in modules], batch)
    direct = _direct_grads(model, tok, examples, [m.weight for _, m in modules])
    assert torch.allclose(gram, direct @ direct.T, rtol=1e-4, atol=1e-9)
    assert all(p.grad is None for p in model.parameters())
    # GREATS's validation term for rows 0-2 with rows 3-4 as validation: <g_i, mean g_val>
    tracin = gram[:3, 3:].mean(1)
    assert torch.allclose(tracin, direct[:3] @ direct[3:].mean(0), rtol=1e-4, atol=1e-9)
    # The rows in chunks of their own widths (as `choose` passes them): the same inner products.
    chunks = [
        encoded_batch(examples[:2], tok, "alpaca", 64, "cpu"),
        encoded_batch(examples[2:], tok, "alpaca", 64, "cpu"),
    ]
    assert chunks[0]["input_ids"].shape[1] < batch["input_ids"].shape[1]
    assert torch.allclose(
        per_example_gram(model, [m for _, m in modules], chunks), direct @ direct.T, rtol=1e-4, atol=1e-9
    )


@pytest.mark.parametrize("lora", [False, True])
def test_greats_backward_stops_below_the_first_scored_layer(tiny_model_dir, lora):
    """The truncated pass records no graph below the first scored layer (full fine-tuning:
    the last block's; LoRA: the first adapter's), and its inner products equal those of a
    full backward pass, which reaches every layer."""
    model, tok = _model(tiny_model_dir, lora)
    modules = [m for _, m in scored_linears(model, last_layers=1)]
    batch = encoded_batch(messages_pool(4).examples, tok, "alpaca", 64, "cpu")
    truncated, seen = _gram_recording_blocks(model, modules, batch)
    assert seen == ([True, True] if lora else [False, True])  # block 0's output: only LoRA needs its graph
    # the same products from a full backward pass (autograd on everywhere, gradients of the weights)
    direct = _direct_grads(model, tok, messages_pool(4).examples, [m.weight for m in modules])
    assert torch.allclose(truncated, direct @ direct.T, rtol=1e-4, atol=1e-9)


def test_greats_lora_last_layers_scores_the_last_blocks_adapters_and_stops_there(tiny_model_dir):
    model, tok = _model(tiny_model_dir, lora=True)
    named = scored_linears(model, last_layers=2, lora_last_layers=1)
    assert named and all("lora_" in n and "layers.1." in n for n, _ in named)
    assert len(named) < len(scored_linears(model, last_layers=2))  # 0: every adapter
    modules = [m for _, m in named]
    batch = encoded_batch(messages_pool(4).examples, tok, "alpaca", 64, "cpu")
    truncated, seen = _gram_recording_blocks(model, modules, batch)
    assert seen == [False, True]
    direct = _direct_grads(model, tok, messages_pool(4).examples, [m.weight for m in modules])
    assert torch.allclose(truncated, direct @ direct.T, rtol=1e-4, atol=1e-9)


def test_greats_choice_equals_the_greedy_over_direct_per_example_gradients(tiny_model_dir):
    pool, val = messages_pool(12), messages_pool(20).examples[14:]
    trainer = LMTrainer(str(tiny_model_dir), pool, LMConfig(max_length=64, lr=3.0), total_steps=2)
    ctx = SelectionContext(model=str(tiny_model_dir), validation=val, seed=4, max_length=64)
    greats = make_baseline("greats", {"last_layers": 1})
    greats.prepare(pool, trainer, ctx)
    rows = np.array([9, 2, 7, 4, 11, 0])
    picks, gains = greats.choose(trainer, rows, 3)
    # the same validation rows (the method's generator, seed + 1), gradients one example at a time
    val_rows = np.random.default_rng(ctx.seed + 1).choice(len(val), size=2, replace=False)
    model = trainer.unwrapped
    params = [m.weight for _, m in scored_linears(model, 1)]
    g = _direct_grads(model, trainer.tokenizer, [pool.examples[i] for i in rows], params).numpy()
    gv = _direct_grads(model, trainer.tokenizer, [val[i] for i in val_rows], params).numpy().mean(0)
    want, want_gains = greedy_selection(3.0 * g @ gv, 9.0 * g @ g.T, 3)
    assert picks.tolist() == rows[want].tolist()
    assert gains == pytest.approx(want_gains, rel=1e-4)
    assert gains[1] != pytest.approx(3.0 * float(g[want[1]] @ gv), rel=1e-3)  # the interaction term is applied


@pytest.mark.parametrize("lora", [True, False])
def test_greats_update_from_its_scoring_pass_equals_a_step_of_its_own(tiny_model_dir, lora):
    """Under LoRA every trainable weight is scored, so the chosen rows' gradients from the
    scoring pass (weighted by their response tokens, as the trainer's token mean) are the
    update's: the same gradient as `LMTrainer.step`'s own pass, the same loss, the same picks.
    Under full fine-tuning with `last_layers` the scored layers are a part: the trainer's pass."""
    pool, val = messages_pool(12), messages_pool(20).examples[14:]
    ctx = SelectionContext(model=str(tiny_model_dir), validation=val, seed=4, max_length=64)
    rows = np.array([9, 2, 7, 4, 11, 0])
    seen = {}
    for reuse in (True, False):
        trainer = LMTrainer(str(tiny_model_dir), pool, LMConfig(max_length=64, lr=1e-2, lora=lora), total_steps=3)
        torch.manual_seed(1)
        with torch.no_grad():  # B starts at zero: move it so A's gradients are not zero too
            for n, p in trainer.unwrapped.named_parameters():
                if "lora_B" in n:
                    p.normal_(0, 0.1)
        grads = {}
        update = trainer._update

        def spy(trainer=trainer, grads=grads, update=update):
            grads.update({n: p.grad.clone() for n, p in trainer.unwrapped.named_parameters() if p.requires_grad})
            update()

        trainer._update = spy
        greats = make_baseline("greats", {"reuse_gradients": reuse, "last_layers": 1})
        info = greats.prepare(pool, trainer, ctx)
        assert info["update_from_scoring_pass"] is (reuse and lora)
        picks, _ = greats.choose(trainer, rows, 3)
        given = greats.given_gradients(trainer, picks)
        assert (given is None) is not (reuse and lora)
        loss = trainer.step(picks) if given is None else trainer.step_with_gradients(given)
        seen[reuse] = picks.tolist(), loss, grads
    assert seen[True][0] == seen[False][0]
    assert seen[True][1] == pytest.approx(seen[False][1], rel=1e-5)
    assert seen[True][2].keys() == seen[False][2].keys()
    for n, g in seen[False][2].items():
        assert float(g.abs().max()) > 0
        assert torch.allclose(seen[True][2][n], g, rtol=1e-4, atol=1e-7), n


def test_greats_lora_run_with_the_update_from_the_scoring_pass_chooses_as_before(tiny_model_dir, tmp_path):
    """End to end under LoRA: the run that takes its updates from the scoring pass chooses the
    same rows at every step as the run that takes a pass of its own, and trains to the same
    adapter (up to rounding)."""
    from safetensors.torch import load_file

    pool, val = messages_pool(16), messages_pool(24).examples[18:]
    runs = {}
    for reuse in (True, False):
        ctx = SelectionContext(
            model=str(tiny_model_dir),
            validation=val,
            seed=2,
            batch_size=2,
            steps=4,
            max_length=48,
            out_dir=tmp_path / str(reuse),
            lm=LMConfig(max_length=48, lr=1e-2, lora=True, seed=2),
        )
        sel = make_baseline("greats", {"candidates": 3, "reuse_gradients": reuse}).select(pool, 8, ctx)
        assert sel.info["update_from_scoring_pass"] is reuse
        runs[reuse] = sel.indices, load_file(tmp_path / str(reuse) / "model" / "adapter_model.safetensors")
    assert runs[True][0] == runs[False][0]
    for name, w in runs[False][1].items():
        assert torch.allclose(runs[True][1][name], w, rtol=1e-4, atol=1e-6), name


def test_given_gradients_must_cover_the_trainable_weights(tiny_model_dir):
    from raise_select.training.loop import GivenGradients

    trainer = LMTrainer(str(tiny_model_dir), messages_pool(8), LMConfig(max_length=64, lora=True), total_steps=2)
    names = [n for n, p in trainer.unwrapped.named_parameters() if p.requires_grad]
    with pytest.raises(ValueError, match="missing"):
        trainer.step_with_gradients(GivenGradients([0, 1], {n: torch.zeros(1) for n in names[1:]}, 1.0))
    with pytest.raises(UserError, match="training loss is nan"):
        zeros = {n: torch.zeros_like(p) for n, p in trainer.unwrapped.named_parameters() if p.requires_grad}
        trainer.step_with_gradients(GivenGradients([0, 1], zeros, float("nan")))


def test_first_order_estimate_predicts_the_validation_loss_change_of_a_small_sgd_step(tiny_model_dir):
    model, tok = _model(tiny_model_dir)
    modules = [m for _, m in scored_linears(model, last_layers=1)]
    params = [m.weight for m in modules]
    train, val = messages_pool(6).examples[:2], messages_pool(12).examples[8:]
    g = _direct_grads(model, tok, train, params)
    vb = encoded_batch(val, tok, "alpaca", 64, "cpu")

    def val_loss() -> float:
        with torch.no_grad():
            return float(
                response_losses(
                    model(input_ids=vb["input_ids"], attention_mask=vb["attention_mask"]).logits, vb["labels"]
                ).mean()
            )

    batch = encoded_batch(train + val, tok, "alpaca", 64, "cpu")
    gram = per_example_gram(model, modules, batch)
    lr = 0.05
    before = val_loss()
    for i in range(2):
        estimate = -lr * float(gram[i, 2:].mean())  # GREATS's lr * <g_i, g_val>, with the sign of a loss change
        offsets, start = [], 0
        for p in params:
            offsets.append(g[i, start : start + p.numel()].view_as(p).float())
            start += p.numel()
        with torch.no_grad():
            for p, d in zip(params, offsets):
                p -= lr * d
        actual = val_loss() - before
        with torch.no_grad():
            for p, d in zip(params, offsets):
                p += lr * d
        assert abs(estimate) > 1e-4
        assert actual == pytest.approx(estimate, rel=0.1)


# ---------------------------------------------------------------- RHO-LOSS


def test_reducible_loss_by_hand_and_rho_keeps_the_largest(tiny_model_dir):
    assert reducible_loss([2.0, 1.5, 3.0], [0.5, 1.5, 2.0]).tolist() == [1.5, 0.0, 1.0]
    pool = messages_pool(8)
    trainer = LMTrainer(str(tiny_model_dir), pool, LMConfig(max_length=64), total_steps=1)
    rho = make_baseline("rho")
    rho._il = np.array([0.0, 5.0, 1.0, 0.0, 2.0, 0.0, 0.0, 0.5])
    rows = np.array([1, 2, 4, 7])
    picks, scores = rho.choose(trainer, rows, 2)
    # the training loss computed another way: the model's own loss on each example alone
    own = []
    for i in rows:
        b = {k: v for k, v in encoded_batch([pool.examples[i]], trainer.tokenizer, "alpaca", 64, "cpu").items()}
        with torch.no_grad():
            own.append(float(trainer.unwrapped(**b).loss))
    red = np.array(own) - rho._il[rows]
    order = np.argsort(-red)[:2]
    assert picks.tolist() == rows[order].tolist()
    assert scores == pytest.approx(red[order], abs=1e-5)
    assert trainer.unwrapped.training  # the scoring pass left train mode on


def test_rho_irreducible_losses_are_cached_and_reused(tiny_model_dir, tmp_path):
    pool = messages_pool(10)
    val = messages_pool(16).examples[10:]
    ctx = SelectionContext(model=str(tiny_model_dir), validation=val, out_dir=tmp_path, max_length=64, batch_size=2)
    trainer = LMTrainer(str(tiny_model_dir), pool, LMConfig(max_length=64, lr=1e-2), total_steps=1)
    rho = make_baseline("rho", {"il_epochs": 2})
    info = rho.prepare(pool, trainer, ctx)
    assert info["il_train_examples"] + info["il_select_examples"] == 6 and info["irreducible_scored_now"] == 10
    assert len(info["il_loss_by_epoch"]) == 3 and info["il_best_epoch"] in (1, 2)
    first = rho._il.copy()
    again = make_baseline("rho", {"il_epochs": 2})
    assert again.prepare(pool, trainer, ctx)["irreducible_scored_now"] == 0
    assert np.array_equal(again._il, first)
    with pytest.raises(UserError, match="holdout set has 1 example"):
        make_baseline("rho").prepare(pool, trainer, SelectionContext(model=str(tiny_model_dir), validation=val[:1]))


def test_cached_irreducible_losses_equal_the_il_models_losses_per_step(tiny_model_dir, tmp_path):
    """The irreducible losses are computed once, before training, and looked up at every step:
    they equal the IL model's own losses of each step's candidates, computed at that step."""
    pool, val = messages_pool(10), messages_pool(30).examples[20:]
    trainer = LMTrainer(str(tiny_model_dir), pool, LMConfig(max_length=48), total_steps=3)
    ctx = SelectionContext(model=str(tiny_model_dir), validation=val, out_dir=tmp_path, max_length=48, batch_size=2)
    rho = make_baseline("rho", {"il_epochs": 2, "candidates": 2})
    rho.prepare(pool, trainer, ctx)
    il_model, _ = make_baseline("rho", {"il_epochs": 2})._train_il_model(rho._holdout(ctx), trainer, ctx)
    sets = candidate_sets(len(pool), 4, seed=0)
    for _ in range(3):
        rows = next(sets)
        per_step = row_losses(
            il_model, [trainer.encode(int(i)) for i in rows], trainer.tokenizer.pad_token_id, batch_size=3
        )
        assert np.allclose(rho._il[rows], per_step.numpy(), rtol=1e-5, atol=1e-6)
        trainer.step(rho.choose(trainer, rows, 2)[0].tolist())
    assert len(set(np.round(rho._il, 6))) > 1  # not one value for every row


# ---------------------------------------------------------------- the online loop


@pytest.mark.parametrize(
    "method,options", [("greats", {"candidates": 2, "last_layers": 1}), ("rho", {"candidates": 2, "il_epochs": 1})]
)
def test_online_run_killed_part_way_resumes_to_the_uninterrupted_result(
    method, options, tiny_model_dir, tmp_path, monkeypatch
):
    from safetensors.torch import load_file

    from raise_select.baselines import online

    monkeypatch.setattr(online, "CHECKPOINT_SECONDS", 0.0)  # a checkpoint after every step
    pool, val = messages_pool(12), messages_pool(30).examples[20:]

    def ctx(out):
        return SelectionContext(
            model=str(tiny_model_dir),
            validation=val,
            out_dir=out,
            batch_size=2,
            max_length=48,
            steps=6,
            lm=LMConfig(max_length=48, lr=5e-3, seed=1),
        )

    whole = make_baseline(method, options).select(pool, 4, ctx(tmp_path / "whole"))
    cls = type(make_baseline(method))
    choose, calls = cls.choose, []

    def dies_at_step_4(self, trainer, rows, k):
        calls.append(trainer.step_count)
        if len(calls) == 4 and not getattr(self, "_resumed", False):
            raise RuntimeError("killed")
        return choose(self, trainer, rows, k)

    monkeypatch.setattr(cls, "choose", dies_at_step_4)
    with pytest.raises(RuntimeError, match="killed"):
        make_baseline(method, options).select(pool, 4, ctx(tmp_path / "cut"))
    assert (tmp_path / "cut" / "checkpoint" / f"{method}.pt").is_file() and not (tmp_path / "cut" / "model").exists()
    again = make_baseline(method, options)
    again._resumed = True
    resumed = again.select(pool, 4, ctx(tmp_path / "cut"))
    assert calls == [0, 1, 2, 3, 3, 4, 5]  # the rerun chose only steps 4-6
    assert resumed.indices == whole.indices and resumed.scores == whole.scores
    want, got = (load_file(tmp_path / d / "model" / "model.safetensors") for d in ("whole", "cut"))
    assert want.keys() == got.keys() and all(torch.equal(want[n], got[n]) for n in want)
    assert not (tmp_path / "cut" / "checkpoint" / f"{method}.pt").exists()  # removed once the model is saved
    # a checkpoint of other settings is not resumed from
    calls.clear()
    with pytest.raises(RuntimeError, match="killed"):
        make_baseline(method, options).select(pool, 4, ctx(tmp_path / "cut"))
    calls.clear()
    other = make_baseline(method, {**options, "candidates": 3})
    other._resumed = True
    assert other.select(pool, 4, ctx(tmp_path / "cut")).info["candidate_set"] == 6
    assert calls == [0, 1, 2, 3, 4, 5]


def test_candidate_sets_are_epochs_of_distinct_rows():
    sets = candidate_sets(10, 4, seed=3)
    first = [next(sets) for _ in range(4)]
    assert all(len(set(s.tolist())) == 4 for s in first)
    # 10 rows in sets of 4: two sets per epoch, the last two rows of each epoch dropped
    assert len(set(first[0].tolist()) | set(first[1].tolist())) == 8
    again = candidate_sets(10, 4, seed=3)
    assert all(np.array_equal(next(again), s) for s in first)
    assert sorted(next(candidate_sets(3, 8, seed=0)).tolist()) == [0, 1, 2]


def test_row_losses_match_the_models_own_loss(tiny_model_dir):
    model, tok = _model(tiny_model_dir)
    examples = messages_pool(4).examples
    enc = [encode_example(e, tok, "alpaca", 64) for e in examples]
    got = row_losses(model, enc, tok.pad_token_id, batch_size=3)
    for e, v in zip(examples, got):
        b = collate([encode_example(e, tok, "alpaca", 64)], tok.pad_token_id)
        with torch.no_grad():
            assert float(model(**b).loss) == pytest.approx(float(v), abs=1e-5)


@pytest.mark.parametrize(
    "method,options",
    [("greats", ["--set", "greats.candidates=3"]), ("rho", ["--set", "rho.candidates=3", "--set", "rho.il_epochs=1"])],
)
def test_online_method_trains_at_matched_steps_and_reuses_its_run(method, options, tiny_model_dir, tmp_path):
    from raise_select.cli.main import app
    from raise_select.data.synthetic import SyntheticConfig, generate_pool, write_jsonl

    pool = write_jsonl(tmp_path / "pool.jsonl", generate_pool(SyntheticConfig(size=24)))
    val = write_jsonl(tmp_path / "val.jsonl", generate_pool(SyntheticConfig(size=30, seed=5))[:4])
    out = tmp_path / method
    args = [
        "baseline",
        "--method",
        method,
        "--pool",
        str(pool),
        "--model",
        str(tiny_model_dir),
        "--val",
        str(val),
        "--budget",
        "4",
        "--batch-size",
        "2",
        "--max-length",
        "48",
        "--lr",
        "1e-3",
        "--out",
        str(out),
        "--train",
        *options,
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    record = json.loads((out / "selection.json").read_text())
    assert record["steps"] == 6 and record["dynamic"]  # ceil(3 x 4 / 2), as every other method
    assert len(record["indices"]) == 12 and (out / "model" / "config.json").is_file()
    assert record["info"]["candidate_set"] == 6 and record["info"]["seconds_per_step_select"] > 0
    sets = candidate_sets(24, 6, seed=0)
    for s in range(6):  # every batch is 2 distinct rows of that step's candidate set
        batch = record["indices"][2 * s : 2 * s + 2]
        assert len(set(batch)) == 2 and set(batch) <= set(next(sets).tolist())
    stamp = (out / "model" / "model.safetensors").stat().st_mtime_ns
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 0, again.output
    assert (out / "model" / "model.safetensors").stat().st_mtime_ns == stamp
    assert json.loads((out / "train_done.json").read_text())["steps"] == 6


def test_online_methods_need_the_model_and_a_validation_set(tiny_model_dir, tmp_path):
    pool = messages_pool(8)
    with pytest.raises(UserError, match="greats.*needs a validation set"):
        make_baseline("greats").select(
            pool, 2, SelectionContext(model=str(tiny_model_dir), batch_size=2, max_length=48)
        )
    with pytest.raises(UserError, match="needs the target model"):
        make_baseline("rho").select(pool, 2, SelectionContext(batch_size=2))
