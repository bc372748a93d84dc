"""Costs in Φ (one epoch of plain training over the pool) and counted token passes."""

import copy
import math

import pytest
import torch

from raise_select.costs import phi_from_runs, phi_seconds, steps_per_epoch
from raise_select.errors import UserError
from raise_select.experiments import costs


def test_phi_seconds_by_hand():
    assert steps_per_epoch(100, 8) == 13 and steps_per_epoch(96, 8) == 12 and steps_per_epoch(1, 8) == 1
    # 100 s over 10 steps = 10 s a step; ceil(100 / 8) = 13 steps an epoch
    assert phi_seconds(train_seconds=100.0, steps=10, pool_size=100, batch_size=8) == pytest.approx(130.0)
    with pytest.raises(TypeError):  # keyword-only: the old helper took the same numbers in another order
        phi_seconds(100.0, 10, 100, 8)
    with pytest.raises(UserError, match="at least 1 step"):
        phi_seconds(train_seconds=1.0, steps=0, pool_size=10, batch_size=2)
    with pytest.raises(UserError, match="pool 0"):
        steps_per_epoch(0, 2)


def test_phi_from_runs_prefers_the_full_row_then_rand():
    full = [{"train_seconds": 40.0, "steps": 4}]
    rand = [{"train_seconds": 12.0, "steps": 2}, {"train_seconds": 30.0, "steps": 3}]
    assert phi_from_runs(full, rand, 20, 4) == (pytest.approx(40.0 / 4 * 5), "the 100% row (one epoch)")
    phi, where = phi_from_runs([], rand, 20, 4)
    assert phi == pytest.approx((6.0 + 10.0) / 2 * 5) and where.startswith("RAND")
    phi, where = phi_from_runs([], [], 20, 4)
    assert math.isnan(phi) and where == "no plain training cell"
    assert costs.phi_seconds is phi_seconds  # one definition, re-exported by the experiments layer


# ---- counted token passes -------------------------------------------------------------------


def _lengths(pool, tok):
    from raise_select.training import encode_example

    return [len(encode_example(e, tok, "alpaca", 512).input_ids) for e in pool.examples]


def test_flop_parameters_by_hand(tiny_model_tok):
    model, _ = tiny_model_tok
    emb, head = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    total = sum(p.numel() for p in model.parameters())
    assert emb is not head and costs.flop_parameters(model) == total - emb.numel()  # the lookup is not a product
    layer_sum = sum(p.numel() for n, p in model.named_parameters() if "embed_tokens" not in n)
    assert costs.flop_parameters(model) == layer_sum


def test_an_epoch_of_training_is_one_phi_and_a_scoring_pass_a_third_more(tiny_pool, tiny_model_tok, tiny_model_dir):
    from raise_select.baselines.lm import example_losses
    from raise_select.models import load_model_and_tokenizer
    from raise_select.training import LMConfig, LMTrainer

    model, tok = load_model_and_tokenizer(str(tiny_model_dir))
    lengths = _lengths(tiny_pool, tok)
    t_pool = sum(lengths)
    assert costs.pool_tokens(tiny_pool, tok, "alpaca", 512) == t_pool
    trainer = LMTrainer(model, tiny_pool, LMConfig(lr=1e-3, micro_batch_size=2), total_steps=2, tokenizer=tok)
    with costs.PassCounter() as counter:
        trainer.step([0, 1, 2])  # micro-batches of 2 and 1 rows, padded to their longest row
        trainer.step([3, 4, 5])
    (passes,) = counter.models.values()
    assert passes.forward_tokens == passes.backward_tokens == t_pool  # padding is not counted
    assert passes.forward_calls == passes.backward_calls == 4  # 2 micro-batches a step
    n = costs.flop_parameters(trainer.unwrapped)
    assert passes.parameters == n
    summary = costs.cost_summary(counter.models, n, t_pool)
    assert summary["phi"] == pytest.approx(1.0)  # one epoch of the pool
    assert summary["forward_tokens"] == summary["backward_tokens"] == t_pool
    # A no-grad scoring pass over rows 0..3 in batches of 3: forward only, 2N a token.
    with counter:
        example_losses(trainer.unwrapped, tok, tiny_pool.examples[:4], "alpaca", 512, batch_size=3)
    assert passes.forward_tokens == t_pool + sum(lengths[:4]) and passes.backward_tokens == t_pool
    assert passes.forward_calls == 6 and passes.backward_calls == 4
    record = {"method": "x"}
    out = costs.record_costs(record, counter, target_parameters=n, pool_tokens=t_pool, seconds=2.5)
    assert record["costs"] is out and out["seconds"] == 2.5
    assert out["phi"] == pytest.approx((2 * (t_pool + sum(lengths[:4])) + 4 * t_pool) / (6 * t_pool))
    assert out["models"][passes.name]["forward_tokens"] == t_pool + sum(lengths[:4])


def test_nested_model_calls_count_once_and_an_inactive_counter_counts_nothing(tiny_pool, tiny_model_tok):
    from raise_select.baselines.lm import batch_response_losses
    from raise_select.training import LMConfig
    from raise_select.training.loop import _lora_model, collate, encode_example

    base, tok = tiny_model_tok
    batch = collate([encode_example(e, tok, "alpaca", 512) for e in tiny_pool.examples[:2]], tok.pad_token_id)
    tokens = int(batch["attention_mask"].sum())
    assert tokens < batch["input_ids"].numel()  # the batch has padding
    counter = costs.PassCounter()
    loss = batch_response_losses(base, batch).sum()  # before: not counted, nor its backward inside
    with counter:
        loss.backward()
        late = batch_response_losses(base, batch).sum()  # forward inside, backward after: forward only
    late.backward()
    batch_response_losses(base, batch)
    (passes,) = counter.models.values()
    assert (passes.forward_tokens, passes.backward_tokens, passes.forward_calls) == (tokens, 0, 1)
    # PeftModel -> LoraModel -> LlamaForCausalLM -> LlamaModel: four modules, one model call
    lora = _lora_model(copy.deepcopy(base), LMConfig(lora=True))
    with costs.PassCounter() as counter:
        batch_response_losses(lora, batch).sum().backward()
        lora(**batch)  # positional-free call with labels: logits still carry the backward hook
    (passes,) = counter.models.values()
    assert passes.name.startswith("PeftModel") and passes.forward_calls == 2 and passes.backward_calls == 1
    assert (passes.forward_tokens, passes.backward_tokens) == (2 * tokens, tokens)
    # a call that raises inside the nest leaves the next call counted
    with costs.PassCounter() as counter:
        with pytest.raises(IndexError):
            base(
                input_ids=batch["input_ids"] + 10**6, attention_mask=batch["attention_mask"]
            )  # ids past the vocabulary
        base(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    assert [p.forward_tokens for p in counter.models.values()] == [tokens]


def test_an_auxiliary_model_is_weighted_by_its_size(tiny_pool, tiny_model_tok):
    from transformers import LlamaForCausalLM

    from raise_select.models.tiny import TinySpec, tiny_config
    from raise_select.training.loop import collate, encode_example

    target, tok = tiny_model_tok
    torch.manual_seed(0)
    judge = LlamaForCausalLM(tiny_config(TinySpec(64, 128, 3, 4, 2, vocab_size=len(tok)), tok))  # a bigger model
    batch = collate([encode_example(e, tok, "alpaca", 512) for e in tiny_pool.examples[:3]], tok.pad_token_id)
    tokens = int(batch["attention_mask"].sum())
    with costs.PassCounter() as counter:
        with torch.no_grad():
            judge(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        target(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.sum().backward()
    assert len(counter.models) == 2
    n_t, n_j = costs.flop_parameters(target), costs.flop_parameters(judge)
    assert n_j > n_t
    s = costs.cost_summary(counter.models, n_t, 1000)
    assert s["forward_tokens"] == pytest.approx(tokens + tokens * n_j / n_t)
    assert s["backward_tokens"] == pytest.approx(tokens)
    assert s["phi"] == pytest.approx((2 * n_j * tokens + 6 * n_t * tokens) / (6 * n_t * 1000))
    with pytest.raises(UserError, match="pool's tokens"):
        costs.cost_summary(counter.models, n_t, 0)


def test_generation_with_a_cache_counts_new_tokens(tiny_model_tok):
    model, tok = tiny_model_tok
    ids = torch.tensor([tok("What is 12 plus 7?")["input_ids"]])
    with costs.PassCounter() as counter:
        model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=4, min_new_tokens=4, do_sample=False)
    (passes,) = counter.models.values()
    # the prompt once, then one new token in each of the 3 later steps (the 4th token needs no pass after it)
    assert passes.forward_calls == 4 and passes.forward_tokens == ids.shape[1] + 3


def test_a_truncated_backward_counts_as_a_full_one(tiny_pool, tiny_model_tok):
    from raise_select.baselines.greats import per_example_gram, scored_linears
    from raise_select.training.loop import collate, encode_example

    model, tok = tiny_model_tok
    batch = collate([encode_example(e, tok, "alpaca", 512) for e in tiny_pool.examples[:3]], tok.pad_token_id)
    with costs.PassCounter() as counter:
        per_example_gram(
            model, [m for _, m in scored_linears(model, last_layers=1)], batch
        )  # backward through the last block only
    (passes,) = counter.models.values()
    assert passes.backward_tokens == passes.forward_tokens == int(batch["attention_mask"].sum())


def test_costs_add_up_and_refuse_another_target():
    a = costs.ModelPasses("target", 100, forward_tokens=10, backward_tokens=10, forward_calls=1, backward_calls=1)
    judge = costs.ModelPasses("judge", 300, forward_tokens=4, forward_calls=2)
    cache = costs.cost_summary([judge], 100, 50)  # a shared cache, charged in full to each method reading it
    train = costs.cost_summary([a], 100, 50)
    train["seconds"] = 3.0
    both = costs.add_costs(cache, train)
    assert both["phi"] == pytest.approx((300 * 2 * 4 + 100 * 6 * 10) / (6 * 100 * 50))
    assert both["phi"] == pytest.approx(costs.cost_summary([a, judge], 100, 50)["phi"])
    assert (both["forward_tokens"], both["backward_tokens"], both["seconds"]) == (10 + 12, 10, 3.0)
    twice = costs.add_costs(cache, cache)
    assert twice["models"]["judge"]["forward_tokens"] == 8 and twice["models"]["judge"]["parameters"] == 300
    with pytest.raises(UserError, match="different target models or pools"):
        costs.add_costs(train, costs.cost_summary([a], 100, 60))
