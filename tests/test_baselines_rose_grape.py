"""ROSE's DPO gradient and preference sets, and GRAPE's choice, against values computed
another way (autograd of a plainly written loss, per-response log-probs from full logits)."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from raise_select.baselines import SelectionContext, make_baseline
from raise_select.baselines.grape import best_candidates, read_groups
from raise_select.baselines.rose import PreferencePair, dpo_loss, preference_pairs_from_qa, read_preferences
from raise_select.data.pools import Example, example_id, load_pool
from raise_select.data.templates import render_prompt
from raise_select.errors import UserError


def _qa(question: str, answer: str) -> Example:
    msgs = (("user", question), ("assistant", answer))
    return Example(id=example_id(msgs), messages=msgs, record={})


def _response_logps(model, tok, prompt: str, response: str) -> list[float]:
    """log p of every response token (and EOS) given the rendered prompt, one position at a time
    from the full log-softmax; no padding, no batching."""
    p_ids = tok(render_prompt((("user", prompt),), "alpaca", tok, {}), add_special_tokens=True)["input_ids"]
    r_ids = tok(response, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    ids = torch.tensor([p_ids + r_ids])
    logits = model(input_ids=ids).logits[0]
    return [logits[len(p_ids) + t - 1].float().log_softmax(-1)[r_ids[t]] for t in range(len(r_ids))]


# ---------------------------------------------------------------- ROSE


@pytest.mark.parametrize("normalize", [False, True])
def test_rose_dpo_gradient_equals_autograd_of_the_plain_loss(tiny_model_dir, normalize):
    from peft import LoraConfig, get_peft_model

    from raise_select.models.loading import load_model_and_tokenizer

    torch.manual_seed(0)
    base, tok = load_model_and_tokenizer(str(tiny_model_dir))
    model = get_peft_model(base, LoraConfig(r=2, lora_alpha=4, lora_dropout=0.0, task_type="CAUSAL_LM"))
    with torch.no_grad():  # move off the base model so the reference and policy differ (margin != 0)
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)
    params = [p for p in model.parameters() if p.requires_grad]
    pair = PreferencePair((("user", "What is 12 plus 7?"),), "The answer is 19.", "blue green red and the fox")
    rose = make_baseline("rose", {"beta": 0.5, "length_normalize": normalize})
    got = torch.autograd.grad(rose.dpo_objective(model, tok, "alpaca", 64)(pair), params)

    def logp(response, reference):
        if reference:
            with torch.no_grad(), model.disable_adapter():
                toks = _response_logps(model, tok, "What is 12 plus 7?", response)
        else:
            toks = _response_logps(model, tok, "What is 12 plus 7?", response)
        total = sum(toks)
        return total / len(toks) if normalize else total

    loss = dpo_loss(
        logp(pair.chosen, False), logp(pair.rejected, False), logp(pair.chosen, True), logp(pair.rejected, True), 0.5
    )
    assert abs(float(loss.detach()) - float(torch.log(torch.tensor(2.0)))) > 1e-3  # the margin is not zero
    want = torch.autograd.grad(loss, params)
    for g, w in zip(got, want):
        assert torch.allclose(g, w, rtol=1e-4, atol=1e-7)


def test_dpo_loss_closed_form():
    # margin = 0.5 * ((-1 - -2) - (-3 - -2)) = 1 -> -log sigmoid(1)
    loss = dpo_loss(torch.tensor(-1.0), torch.tensor(-3.0), torch.tensor(-2.0), torch.tensor(-2.0), 0.5)
    assert float(loss) == pytest.approx(-torch.nn.functional.logsigmoid(torch.tensor(1.0)).item())


def test_stand_in_preferences_reject_another_answer():
    val = [_qa(f"Q{i}?", "The answer is A." if i % 2 else "The answer is B.") for i in range(6)]
    pairs = preference_pairs_from_qa(val, seed=1)
    assert len(pairs) == 6
    for e, p in zip(val, pairs):
        assert p.prompt == e.prompt_messages and p.chosen == e.response and p.rejected != p.chosen
        assert p.rejected in {x.response for x in val}
    assert preference_pairs_from_qa(val, seed=1) == pairs
    with pytest.raises(UserError, match="every answer is the same"):
        preference_pairs_from_qa([_qa("a?", "x"), _qa("b?", "x")])


def test_read_trl_preferences_plain_and_conversational(tmp_path):
    path = tmp_path / "pref.jsonl"
    path.write_text(
        json.dumps({"prompt": "Hi?", "chosen": "Hello.", "rejected": "Go away."})
        + "\n"
        + json.dumps(
            {
                "prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"}],
                "chosen": [{"role": "assistant", "content": "4"}],
                "rejected": [{"role": "assistant", "content": "5"}],
            }
        )
        + "\n"
    )
    pairs = read_preferences(path)
    assert pairs[0] == PreferencePair((("user", "Hi?"),), "Hello.", "Go away.")
    assert pairs[1] == PreferencePair((("system", "Be brief."), ("user", "2+2?")), "4", "5")
    assert read_preferences(path, limit=1) == pairs[:1]
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "Hi?", "chosen": "Hello."}) + "\n")
    with pytest.raises(UserError, match=r"bad.jsonl, row 0, field 'rejected': missing"):
        read_preferences(bad)


def test_rose_selects_with_a_stand_in_and_writes_it(tiny_model_dir, tmp_path):
    from raise_select.data.pools import Pool

    pool = Pool(
        examples=[_qa(f"What is {i} plus 1?", f"The answer is {i + 1}.") for i in range(8)],
        format="messages",
        sources=["t"],
    )
    val = [_qa(f"What is {i} minus 1?", f"The answer is {i - 1}.") for i in range(3)]
    ctx = SelectionContext(model=str(tiny_model_dir), validation=val, out_dir=tmp_path, max_length=48)
    opts = {
        "lora_r": 2,
        "lora_alpha": 4,
        "proj_dim": 8,
        "warmup_epochs": 1,
        "warmup_batch_size": 4,
        "warmup_fraction": 0.5,
    }
    sel = make_baseline("rose", opts).select(pool, 3, ctx)
    assert len(sel.indices) == 3 and sel.info["validation_examples"] == 3
    assert sel.scores == sorted(sel.scores, reverse=True)
    written = read_preferences(tmp_path / "rose_preferences.jsonl")
    assert [p.chosen for p in written] == [e.response for e in val]
    # a given preference file replaces the stand-in (no validation set needed); same file, same choice
    given = SelectionContext(model=str(tiny_model_dir), out_dir=tmp_path / "given", max_length=48)
    again = make_baseline("rose", {**opts, "preference": str(tmp_path / "rose_preferences.jsonl")}).select(
        pool, 3, given
    )
    assert again.indices == sel.indices and again.scores == pytest.approx(sel.scores, abs=1e-6)
    assert not (tmp_path / "given" / "rose_preferences.jsonl").exists()


# ---------------------------------------------------------------- GRAPE


def test_best_candidate_ties_keep_the_first():
    assert best_candidates([[-1.0, -0.5, -0.5], [-2.0], [0.0, 0.0]]) == [1, 0, 0]


@pytest.mark.parametrize("layout", ["list", "rows"])
def test_grape_keeps_the_response_with_the_highest_mean_logprob(tiny_model_dir, tmp_path, layout):
    from raise_select.cli.main import app
    from raise_select.models.loading import load_model_and_tokenizer

    items = {
        "What is 12 plus 7?": ["The answer is 19.", "red green", "The quick brown fox jumps over the lazy dog."],
        "Name three colors.": ["red, green and blue.", "0123456789"],
        "Say hi.": ["Bonjour."],
    }
    pool = tmp_path / "multi.jsonl"
    if layout == "list":
        rows = [{"instruction": q, "input": "", "output": rs} for q, rs in items.items()]
    else:
        rows = [{"instruction": q, "input": "", "output": r} for q, rs in items.items() for r in rs]
    pool.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "chosen" / "chosen.jsonl"
    result = CliRunner().invoke(
        app,
        [
            "grape",
            "--pool",
            str(pool),
            "--model",
            str(tiny_model_dir),
            "--out",
            str(out),
            "--max-length",
            "64",
            "--batch-size",
            "2",
        ],
    )
    assert result.exit_code == 0, result.output
    model, tok = load_model_and_tokenizer(str(tiny_model_dir))
    chosen = load_pool(out.parent)  # the score cache beside it is not read as a pool file
    assert [e.messages[0][1] for e in chosen.examples] == list(items)
    records = [json.loads(line) for line in out.read_text().splitlines()]
    for (q, responses), rec in zip(items.items(), records):
        with torch.no_grad():
            ref = [float(sum(t) / len(t)) for t in (_response_logps(model, tok, q, r) for r in responses)]
        best = max(range(len(ref)), key=lambda j: ref[j])
        assert (
            rec["output"] == responses[best]
            and rec["grape_choice"] == best
            and rec["grape_candidates"] == len(responses)
        )
        assert rec["grape_score"] == pytest.approx(ref[best], abs=1e-4)
    # a re-run scores nothing again and writes the same pool; parquet is a pool too
    text = out.read_text()
    again = CliRunner().invoke(
        app, ["grape", "--pool", str(pool), "--model", str(tiny_model_dir), "--out", str(out), "--max-length", "64"]
    )
    assert again.exit_code == 0 and "0 scored now" in again.output and out.read_text() == text
    pq = tmp_path / "chosen.parquet"
    assert (
        CliRunner()
        .invoke(
            app, ["grape", "--pool", str(pool), "--model", str(tiny_model_dir), "--out", str(pq), "--max-length", "64"]
        )
        .exit_code
        == 0
    )
    assert [e.response for e in load_pool(pq).examples] == [r["output"] for r in records]


def test_grape_list_field_of_chat_rows_and_bad_rows(tmp_path):
    path = tmp_path / "chat.jsonl"
    path.write_text(
        json.dumps({"messages": [{"role": "user", "content": "Hi?"}], "responses": ["Hello.", "", "Hey."]}) + "\n"
    )
    groups, fmt = read_groups(str(path))
    assert fmt == "messages" and [e.response for e in groups[0].candidates] == ["Hello.", "Hey."]
    assert groups[0].prompt == (("user", "Hi?"),)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"instruction": "x", "output": ["a", 3]}) + "\n")
    with pytest.raises(UserError, match=r"row 0, field 'output\[1\]': expected text"):
        read_groups(str(bad))


def test_grape_user_errors_are_one_line_with_exit_2(tiny_model_dir, tmp_path):
    from raise_select.cli.main import app

    pool = tmp_path / "multi.jsonl"
    pool.write_text(json.dumps({"instruction": "Hi?", "output": ["a", "b"]}) + "\n")
    missing = CliRunner().invoke(app, ["grape", "--pool", str(pool), "--out", str(tmp_path / "o.jsonl")])
    assert missing.exit_code == 2 and "--model" in missing.output
    suffix = CliRunner().invoke(
        app, ["grape", "--pool", str(pool), "--model", str(tiny_model_dir), "--out", str(tmp_path / "o.txt")]
    )
    assert suffix.exit_code == 2 and "o.txt: output must end in one of .jsonl" in suffix.output
    chat = tmp_path / "chat.jsonl"
    chat.write_text(
        json.dumps({"messages": [{"role": "user", "content": "Hi?"}], "responses": ["Hello.", "Hey."]}) + "\n"
    )
    csv = CliRunner().invoke(
        app, ["grape", "--pool", str(chat), "--model", str(tiny_model_dir), "--out", str(tmp_path / "o.csv")]
    )
    assert csv.exit_code == 2 and "CSV holds flat (Alpaca) rows only" in csv.output
