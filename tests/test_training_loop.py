"""LMTrainer (tokenisation, masking, truncation, loss, schedule) and Validator, against plain reference loops."""

import math

import pytest
import torch

from raise_select.data.templates import render_prompt
from raise_select.errors import UserError
from raise_select.models import load_model_and_tokenizer
from raise_select.training import LMConfig, LMTrainer, Validator, encode_example, final_answer, train_on_schedule
from raise_select.training.loop import IGNORE_INDEX


def test_labels_cover_only_the_response_and_eos(tiny_pool, tiny_model_tok):
    _, tok = tiny_model_tok
    ex = tiny_pool.examples[0]
    enc = encode_example(ex, tok, "alpaca", 512)
    prompt_ids = tok(render_prompt(ex.prompt_messages, "alpaca", tok, ex.record))["input_ids"]
    response_ids = tok("The answer is 19.", add_special_tokens=False)["input_ids"]
    assert enc.input_ids == prompt_ids + response_ids + [tok.eos_token_id]
    assert enc.labels == [IGNORE_INDEX] * len(prompt_ids) + response_ids + [tok.eos_token_id]
    kept = [t for t in enc.labels if t != IGNORE_INDEX]
    assert tok.decode(kept) == "The answer is 19.</s>"


def test_truncation_cuts_the_prompt_from_the_left_and_keeps_the_response(tiny_pool, tiny_model_tok):
    _, tok = tiny_model_tok
    ex = tiny_pool.examples[1]
    full = encode_example(ex, tok, "alpaca", 512)
    n_resp = sum(1 for t in full.labels if t != IGNORE_INDEX)
    n_prompt = len(full.input_ids) - n_resp
    short = encode_example(ex, tok, "alpaca", n_resp + 3)
    assert len(short.input_ids) == n_resp + 3
    assert short.input_ids == full.input_ids[n_prompt - 3 :]  # the last 3 prompt tokens + the whole response
    assert short.labels == [IGNORE_INDEX] * 3 + full.labels[n_prompt:]
    # A response longer than max_length: cut from the right, one prompt token kept before it.
    tiny = encode_example(ex, tok, "alpaca", 3)
    assert tiny.input_ids == [full.input_ids[n_prompt - 1]] + full.input_ids[n_prompt : n_prompt + 2]
    assert tiny.labels[0] == IGNORE_INDEX and tiny.labels[1:] == full.labels[n_prompt : n_prompt + 2]
    # A response longer than a larger max_length: the featurizer's rule, a quarter of the
    # budget for the end of the prompt.
    limit = n_resp - 1
    cut = encode_example(ex, tok, "alpaca", limit)
    keep = max(1, limit // 4)
    assert (
        cut.input_ids == full.input_ids[n_prompt - keep : n_prompt] + full.input_ids[n_prompt : n_prompt + limit - keep]
    )
    assert cut.labels[:keep] == [IGNORE_INDEX] * keep


def _reference_mean_loss(model, encs) -> float:
    """Batch loss by hand: sum over every response token of -log p, divided by their number."""
    total, count = 0.0, 0
    with torch.no_grad():
        for e in encs:
            logits = model(input_ids=torch.tensor([e.input_ids])).logits[0]
            logp = torch.log_softmax(logits.double(), dim=-1)
            for pos in range(1, len(e.input_ids)):
                if e.labels[pos] != IGNORE_INDEX:
                    total -= float(logp[pos - 1, e.labels[pos]])
                    count += 1
    return total / count


def test_step_loss_is_the_mean_over_response_tokens_and_micro_batches_give_the_same_update(tiny_pool, tiny_model_dir):
    cfg = LMConfig(lr=1e-3, max_length=64)
    whole = LMTrainer(str(tiny_model_dir), tiny_pool, cfg, total_steps=4)
    batch = [0, 1, 4]
    expected = _reference_mean_loss(whole.unwrapped, [whole.encode(i) for i in batch])
    whole_grads = _capture_gradients(whole)
    assert whole.step(batch) == pytest.approx(expected, rel=1e-5)
    micro = LMTrainer(
        str(tiny_model_dir), tiny_pool, LMConfig(lr=1e-3, max_length=64, micro_batch_size=1), total_steps=4
    )
    micro_grads = _capture_gradients(micro)
    assert micro.step(batch) == pytest.approx(expected, rel=1e-5)
    # Gradients, not updated weights: Adam's first step is about lr * sign(g), which turns
    # rounding noise in near-zero gradients into lr-sized differences.
    for name, g in whole_grads.items():
        torch.testing.assert_close(g, micro_grads[name], rtol=1e-4, atol=1e-7, msg=name)


def _capture_gradients(trainer) -> dict:
    """Record the gradients the optimizer steps with (after accumulation and clipping)."""
    grads: dict = {}
    step = trainer.optimizer.step

    def capture(*args, **kwargs):
        grads.update(
            {n: p.grad.detach().clone() for n, p in trainer.unwrapped.named_parameters() if p.grad is not None}
        )
        return step(*args, **kwargs)

    trainer.optimizer.step = capture
    return grads


def test_bf16_left_by_an_earlier_trainer_is_not_inherited(tiny_pool, tiny_model_dir):
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=False)
    Accelerator(cpu=True, mixed_precision="bf16")  # what an HF Trainer run with bf16=True leaves behind
    trainer = LMTrainer(str(tiny_model_dir), tiny_pool, LMConfig(max_length=64), total_steps=1)
    assert trainer.accelerator.mixed_precision == "no"


def test_cosine_schedule_without_warmup_matches_closed_form(tiny_pool, tiny_model_dir):
    total, lr = 5, 1e-3
    trainer = LMTrainer(str(tiny_model_dir), tiny_pool, LMConfig(lr=lr, max_length=64), total_steps=total)
    seen = [trainer.scheduler.get_last_lr()[0]]
    for s in range(total):
        trainer.step([s % len(tiny_pool)])
        seen.append(trainer.scheduler.get_last_lr()[0])
    closed = [lr * 0.5 * (1 + math.cos(math.pi * s / total)) for s in range(total + 1)]
    assert seen == pytest.approx(closed, rel=1e-9, abs=1e-15)


def test_reset_restores_m0_and_replays_identically(tiny_pool, tiny_model_dir):
    trainer = LMTrainer(str(tiny_model_dir), tiny_pool, LMConfig(lr=1e-2, max_length=64), total_steps=3)
    before = {n: p.detach().clone() for n, p in trainer.unwrapped.named_parameters()}
    first = [trainer.step([0, 1]), trainer.step([2, 3])]
    assert any(not torch.equal(before[n], p) for n, p in trainer.unwrapped.named_parameters())
    trainer.reset()
    for n, p in trainer.unwrapped.named_parameters():
        assert torch.equal(before[n], p), n
    assert trainer.step_count == 0 and trainer.scheduler.get_last_lr()[0] == pytest.approx(1e-2)
    assert [trainer.step([0, 1]), trainer.step([2, 3])] == first


def test_validator_neg_loss_equals_per_example_reference(tiny_pool, tiny_model_tok):
    model, tok = tiny_model_tok
    model.train()
    examples = tiny_pool.examples
    validator = Validator(examples, tok, "neg_loss", max_length=64, batch_size=4)  # padded batches of 4 and 2
    value = validator(model)
    per_example = [-_reference_mean_loss(model, [encode_example(e, tok, "alpaca", 64)]) for e in examples]
    assert value == pytest.approx(sum(per_example) / len(per_example), rel=1e-5)
    assert model.training  # restored after evaluation


def test_validator_response_only_head_matches_full_logits_and_follows_the_weights(tiny_pool, tiny_model_tok):
    """The split path (base + LM head at response positions) against the full-logits path of a
    PEFT-wrapped copy (always full), before and after a weight change (batches are cached,
    the model is not)."""
    import copy

    from peft import LoraConfig, get_peft_model

    model, tok = tiny_model_tok
    model = copy.deepcopy(model)
    validator = Validator(tiny_pool.examples, tok, "neg_loss", max_length=64, batch_size=4)
    wrapped = get_peft_model(copy.deepcopy(model), LoraConfig(r=2, target_modules=["q_proj"]))
    assert validator(model) == pytest.approx(validator(wrapped), rel=1e-6)
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(1.5)
        wrapped.get_output_embeddings().weight.mul_(1.5)
    changed = validator(model)
    assert changed == pytest.approx(validator(wrapped), rel=1e-6)
    per_example = [-_reference_mean_loss(model, [encode_example(e, tok, "alpaca", 64)]) for e in tiny_pool.examples]
    assert changed == pytest.approx(sum(per_example) / len(per_example), rel=1e-5)


def test_final_answer_normalisation():
    assert final_answer("Natalia sold 48/2 = 24 clips.\n#### 1,000") == "1000"
    assert final_answer("So the answer is $72.") == "72"
    assert final_answer("Let me think.\n\nThe Answer is: B") == "b"
    assert final_answer("first line\n  Blue  Whale. \n\n") == "blue whale"
    assert final_answer("") == ""


def test_accuracy_is_exact_match_of_greedy_answers(tiny_pool, tiny_model_tok):
    model, tok = tiny_model_tok
    model.eval()
    greedy = []
    for ex in tiny_pool.examples[:4]:
        enc = encode_example(ex, tok, "alpaca", 64)
        prompt = [t for t, lab in zip(enc.input_ids, enc.labels) if lab == IGNORE_INDEX]
        out = model.generate(
            torch.tensor([prompt]),
            max_new_tokens=8,
            do_sample=False,
            pad_token_id=tok.pad_token_id,
            eos_token_id=tok.eos_token_id,
        )
        greedy.append(tok.decode(out[0, len(prompt) :], skip_special_tokens=True))
    # Examples 0 and 2 answer with what the model generates, 1 and 3 with something else.
    from dataclasses import replace

    examples = []
    for k, ex in enumerate(tiny_pool.examples[:4]):
        text = greedy[k] if k % 2 == 0 else "#### 123456789"
        examples.append(replace(ex, messages=ex.messages[:-1] + (("assistant", text),)))
    assert final_answer(greedy[0]) != "123456789"
    validator = Validator(examples, tok, "accuracy", max_length=64, batch_size=3, max_new_tokens=8)
    assert validator(model) == pytest.approx(0.5)


def test_user_metric_and_unknown_metric(tiny_pool, tiny_model_tok, tmp_path, monkeypatch):
    model, tok = tiny_model_tok
    (tmp_path / "my_metric.py").write_text(
        "def n_examples(model, tokenizer, examples):\n    return float(len(examples)) + float(model.training)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    model.train()
    assert Validator(tiny_pool.examples[:3], tok, "my_metric:n_examples")(model) == 3.0  # called in eval mode
    for bad in ("bleu", "my_metric:missing", "no_such_module_xyz:f"):
        with pytest.raises(UserError):
            Validator(tiny_pool.examples[:3], tok, bad)
    with pytest.raises(UserError, match="empty"):
        Validator([], tok)


def test_lora_trains_only_the_adapter_and_saves_it(tiny_pool, tiny_model_dir, tmp_path):
    trainer = LMTrainer(
        str(tiny_model_dir), tiny_pool, LMConfig(lr=1e-2, max_length=64, lora=True, lora_r=2), total_steps=2
    )
    frozen = {n: p.detach().clone() for n, p in trainer.unwrapped.named_parameters() if not p.requires_grad}
    trainer.step([0, 1])
    assert all(torch.equal(frozen[n], p) for n, p in trainer.unwrapped.named_parameters() if n in frozen)
    trainer.save(tmp_path / "adapter")
    assert (tmp_path / "adapter" / "adapter_config.json").is_file()
    from peft import AutoPeftModelForCausalLM

    AutoPeftModelForCausalLM.from_pretrained(tmp_path / "adapter")


def test_train_on_schedule_saves_a_loadable_model(tiny_pool, tiny_model_dir, tmp_path):
    out = train_on_schedule(
        str(tiny_model_dir), tiny_pool, [[0, 1], [2, 3], [4, 5]], LMConfig(lr=1e-3, max_length=64), tmp_path / "m", 3
    )
    model, _ = load_model_and_tokenizer(str(out))
    original, _ = load_model_and_tokenizer(str(tiny_model_dir))
    assert not torch.equal(model.lm_head.weight, original.lm_head.weight)
    with pytest.raises(UserError, match="more than total_steps"):
        train_on_schedule(str(tiny_model_dir), tiny_pool, [[0], [1], [2]], LMConfig(max_length=64), tmp_path / "m2", 2)
