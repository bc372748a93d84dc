"""Multiple-choice scoring (`evaluation.choices`): the per-choice log-likelihoods against
lm-evaluation-harness's own `HFLM.loglikelihood`, the choice cross-entropy and accuracy by
hand, malformed items refused."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from conftest import CHOICE_DOCS, random_features, write_choice_items
from raise_select.data.pools import Example, load_pool
from raise_select.errors import UserError
from raise_select.evaluation import choices as ch

ITEMS = [
    ch.ChoiceItem("What is 12 plus 7?", ("19", "21 apples", "the lazy dog"), 0),
    ch.ChoiceItem("Name three colors:  ", ("red, green and blue", " Bonjour.", "fox " * 6, "0123"), 2),
    ch.ChoiceItem("Translate to French: good morning.\nThen say it twice.", ("Bonjour. Bonjour.", "Good night"), 1),
]


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    return AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32), tok


def _harness(model, tok, requests, max_length):
    """lm-eval's own log-likelihoods of `(context, continuation)` requests."""
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    lm = HFLM(pretrained=model, tokenizer=tok, max_length=max_length, batch_size=2)
    return np.array(
        [ll for ll, _ in lm.loglikelihood([Instance("loglikelihood", {}, r, i) for i, r in enumerate(requests)])]
    )


@pytest.mark.parametrize("max_length", [512, 14])  # 14: long contexts truncated from the left
def test_loglikelihoods_equal_lm_evaluation_harness(tiny, max_length):
    model, tok = tiny
    requests = [r for it in ITEMS for form in ch.FORMS for r in ch.requests_of(it, form)]
    requests.append(("Translate to French: good morning. ", "Bonjour."))  # a trailing space moves over
    ref = _harness(model, tok, requests, max_length)
    for batch_size in (1, 4, 64):
        mine = ch.loglikelihoods(model, tok, requests, batch_size=batch_size, max_length=max_length)
        np.testing.assert_allclose(mine, ref, rtol=1e-5, atol=1e-5)
    # ... and scored through the items, one array of choice log-likelihoods per item
    scores = ch.score_items(model, tok, ITEMS, form="cloze", batch_size=3, max_length=max_length)
    n_cloze = [len(it.choices) for it in ITEMS]
    starts = np.cumsum([0] + [2 * n for n in n_cloze])
    for k, it in enumerate(ITEMS):
        np.testing.assert_allclose(scores.loglik[k], ref[starts[k] : starts[k] + n_cloze[k]], rtol=1e-5, atol=1e-5)


def test_a_tokenizer_that_adds_bos_is_encoded_as_the_harness_encodes_it(tiny_model_dir):
    """Llama-style tokenizers prepend BOS: lm-eval keeps it, except on a text that already
    starts with the BOS text."""
    from tokenizers.processors import TemplateProcessing
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    bos = tok.convert_tokens_to_ids("<s>")
    tok._tokenizer.post_processor = TemplateProcessing(single="<s> $A", special_tokens=[("<s>", bos)])
    assert tok.encode("Say hi")[0] == bos and tok.bos_token == "<s>"
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    requests = [("Question: Say hi\nAnswer:", " red"), ("<s>Question: Say hi\nAnswer:", " red"), ("Say ", "hi.")]
    assert ch.encode_pair(tok, *requests[0])[0][0] == bos and ch.encode_pair(tok, *requests[1])[0].count(bos) == 1
    mine = ch.loglikelihoods(model, tok, requests)
    np.testing.assert_allclose(mine, _harness(model, tok, requests, 512), rtol=1e-5, atol=1e-5)


def test_requests_follow_the_harness_forms():
    item = ITEMS[0]
    assert ch.requests_of(item, "cloze") == [
        ("Question: What is 12 plus 7?\nAnswer:", " 19"),
        ("Question: What is 12 plus 7?\nAnswer:", " 21 apples"),
        ("Question: What is 12 plus 7?\nAnswer:", " the lazy dog"),
    ]
    letters = ch.requests_of(item, "letters")
    assert [c for _, c in letters] == [" A", " B", " C"]
    assert letters[0][0] == "Question: What is 12 plus 7?\nA. 19\nB. 21 apples\nC. the lazy dog\nAnswer:"
    with pytest.raises(UserError, match="unknown choice form 'mcq'; available: cloze, letters"):
        ch.requests_of(item, "mcq")
    many = ch.ChoiceItem("q", tuple("abcdefghijkl"), 0, "f.jsonl", 3)
    assert len(ch.requests_of(many, "cloze")) == 12
    with pytest.raises(UserError, match="f.jsonl, row 3, field 'mc_choices': 12 choices, more than the 10 letters"):
        ch.requests_of(many, "letters")


def test_a_lora_model_and_a_model_folder_score_the_same(tiny, tiny_model_dir):
    """A PEFT/LoRA model scores as its merged weights do under the harness; a folder as its model."""
    from peft import LoraConfig, get_peft_model

    model, tok = tiny
    from_folder = ch.score_choices(str(tiny_model_dir), ITEMS, form="letters", batch_size=5, device="cpu")
    from_object = ch.score_choices(model, ITEMS, tokenizer=tok, form="letters", batch_size=2)
    for a, b in zip(from_folder.loglik, from_object.loglik):
        np.testing.assert_allclose(a, b, rtol=1e-6)

    torch.manual_seed(0)
    peft = get_peft_model(
        type(model).from_pretrained(tiny_model_dir),
        LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False),
    )
    requests = [r for it in ITEMS for r in ch.requests_of(it, "cloze")]
    mine = ch.loglikelihoods(peft, tok, requests, batch_size=4)
    merged = peft.merge_and_unload()
    np.testing.assert_allclose(mine, _harness(merged, tok, requests, 512), rtol=1e-5, atol=1e-5)
    assert np.abs(mine - ch.loglikelihoods(model, tok, requests)).max() > 1e-3  # the adapter counts


def test_choice_cross_entropy_by_hand():
    # -log softmax([-1, -2, -3])[1] = 2 + log(e^-1 + e^-2 + e^-3)
    by_hand = 2 + math.log(math.exp(-1) + math.exp(-2) + math.exp(-3))
    assert ch.choice_cross_entropy([-1.0, -2.0, -3.0], 1) == pytest.approx(by_hand, rel=1e-12)
    assert by_hand == pytest.approx(1.40760596, abs=1e-8)
    # two equal choices: log 2, whatever their level (no overflow far from zero)
    assert ch.choice_cross_entropy([-1000.0, -1000.0], 0) == pytest.approx(math.log(2), rel=1e-12)
    assert ch.choice_cross_entropy([0.0, -800.0, -800.0], 0) == pytest.approx(2 * math.exp(-800), abs=1e-300)


def test_accuracy_and_summary_by_hand():
    items = [
        ch.ChoiceItem("q1", ("a", "bb"), 0),  # argmax 0: right
        ch.ChoiceItem("q2", ("a", "bbbb", "c"), 2),  # argmax 1: wrong; per character argmax 1 as well
        ch.ChoiceItem("q3", ("aaaa", "b"), 0),  # tie: the first maximum, right; per character b wins
    ]
    lls = [[-1.0, -2.0], [-9.0, -4.0, -5.0], [-3.0, -3.0]]
    s = ch.scores_from_loglik(items, lls, "cloze")
    assert s.acc.tolist() == [1.0, 0.0, 1.0]
    # acc_norm divides by characters: q2 [-9, -1, -5] -> 1 (wrong); q3 [-0.75, -3] -> 0 (right)
    assert s.acc_norm.tolist() == [1.0, 0.0, 1.0]
    lls[2] = [-8.0, -3.0]  # q3: argmax 1 (wrong); per character [-2, -3] -> 0 (right)
    s = ch.scores_from_loglik(items, lls, "cloze")
    assert s.acc.tolist() == [1.0, 0.0, 0.0] and s.acc_norm.tolist() == [1.0, 0.0, 1.0]
    ce = [math.log(math.exp(-1) + math.exp(-2)) + 1, math.log(math.exp(-9) + math.exp(-4) + math.exp(-5)) + 5]
    ce.append(math.log(math.exp(-8) + math.exp(-3)) + 8)
    np.testing.assert_allclose(s.ce, ce, rtol=1e-12)
    summary = s.summary()
    assert summary["choice_ce"] == pytest.approx(sum(ce) / 3) and summary["choice_acc"] == pytest.approx(1 / 3)
    assert summary["n"] == 3


def test_malformed_items_are_refused_with_file_row_and_field(tmp_path):
    with pytest.raises(UserError, match=r"f.jsonl, row 4, field 'mc_choices': expected a list of at least 2"):
        ch.ChoiceItem("q", (), 0, "f.jsonl", 4)
    with pytest.raises(UserError, match=r"f.jsonl, row 4, field 'mc_gold': gold index 3 is not one of 0..2"):
        ch.ChoiceItem("q", ("a", "b", "c"), 3, "f.jsonl", 4)
    with pytest.raises(UserError, match=r"field 'mc_gold': gold index True"):
        ch.ChoiceItem("q", ("a", "b"), True)
    with pytest.raises(UserError, match=r"f.jsonl, row 4, field 'mc_choices': choice 1 is empty"):
        ch.ChoiceItem("q", ("a", "  "), 0, "f.jsonl", 4)
    # the same from a file's record fields
    path = tmp_path / "items.jsonl"

    def msgs(k: int) -> list[dict]:
        return [{"role": "user", "content": f"hi {k}"}, {"role": "assistant", "content": "yo"}]

    rows = [
        {"messages": msgs(0), "mc_question": "q", "mc_choices": ["a", "b"], "mc_gold": 1},
        {"messages": msgs(1), "mc_question": "q", "mc_choices": ["a", "b"], "mc_gold": -1},
        {"messages": msgs(2), "mc_question": "q", "mc_choices": ["a", "b"]},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    examples = load_pool(str(path)).examples
    assert ch.item_from_example(examples[0]) == ch.ChoiceItem("q", ("a", "b"), 1)
    with pytest.raises(UserError, match=rf"{path}, row 1, field 'mc_gold': gold index -1"):
        ch.item_from_example(examples[1])
    with pytest.raises(UserError, match=rf"{path}, row 2, field 'mc_gold': missing field"):
        ch.item_from_example(examples[2])
    with pytest.raises(UserError, match=rf"{path}, row 0, field 'messages': not a multiple-choice item"):
        ch.score_choices("unused", [Example("x", (("user", "hi"), ("assistant", "yo")), {}, str(path), 0)])


def test_items_parsed_back_from_the_lettered_prompt():
    """A file written in the project's prompt format (messages only) is read back into items;
    a prompt that does not re-render exactly is refused."""
    from raise_select.data.benchmarks import format_prompt, format_response

    doc = {"question": "Which is warm?\nPick one.", "choices": ["ice", "the sun", "snow"], "label": 1}
    msgs = (("user", format_prompt(doc)), ("assistant", format_response(doc)))
    assert ch.item_from_example(Example("x", msgs, {}, "v.jsonl", 3)) == ch.ChoiceItem(
        "Which is warm?\nPick one.", ("ice", "the sun", "snow"), 1
    )
    bad = (("user", format_prompt(doc)), ("assistant", "The answer is D."))
    with pytest.raises(UserError, match=r"v.jsonl, row 3, field 'mc_gold': gold index 3"):
        ch.item_from_example(Example("x", bad, {}, "v.jsonl", 3))
    empty = {"question": "Which?", "choices": ["ice", ""], "label": 0}
    msgs = (("user", format_prompt(empty)), ("assistant", format_response(empty)))
    with pytest.raises(UserError, match=r"choice 1 is empty"):
        ch.item_from_example(Example("x", msgs, {}, "v.jsonl", 3))


def test_real_items_score_in_both_forms(shared_data, tiny):
    """Named-set examples of ARC-Challenge and CommonsenseQA score as the harness on their requests."""
    from raise_select.data.validation import load_validation

    model, tok = tiny
    for name in ("arc_challenge:test", "commonsenseqa:test"):
        examples = load_validation(name, shared_data, n=3, seed=0)
        for form in ch.FORMS:
            s = ch.score_choices(model, examples, tokenizer=tok, form=form, batch_size=8)
            requests = [r for e in examples for r in ch.requests_of(ch.item_from_example(e), form)]
            np.testing.assert_allclose(np.concatenate(s.loglik), _harness(model, tok, requests, 512), rtol=1e-5)
            assert s.ce.shape == (3,) and np.all(s.ce > 0)


# ---------------------------------------------------------------- the metric in the reward and held-out figures


def test_validator_choice_metrics_are_the_mean_choice_figures(shared_data, tiny, tiny_model_dir):
    """P = -mean choice CE (`choice_ce`) and mean accuracy (`choice_acc`), with the per-item
    figures in the examples' order, from a model object or a model folder."""
    from raise_select.data.validation import load_validation
    from raise_select.evaluation.loss import default_metric, heldout_values
    from raise_select.training.reward import Validator, resolve_metric

    model, tok = tiny
    examples = load_validation("commonsenseqa:dev", shared_data, n=5, seed=1)
    s = ch.score_choices(model, examples, tokenizer=tok, batch_size=7)
    ce_by_hand = [
        math.log(sum(math.exp(x) for x in ll)) - ll[it.gold]
        for ll, it in zip(s.loglik, ch.items_from_examples(examples))
    ]
    assert resolve_metric("choice_ce") is None and resolve_metric("choice_acc") is None
    p = Validator(examples, tok, "choice_ce", batch_size=3)(model)
    assert p == pytest.approx(-sum(ce_by_hand) / 5, rel=1e-6)  # other batches: float32 rounding
    assert Validator(examples, tok, "choice_acc", batch_size=2)(model) == pytest.approx(s.acc.mean())
    values = heldout_values(str(tiny_model_dir), examples, metric="choice_ce", batch_size=4, device="cpu")
    np.testing.assert_allclose(values, ce_by_hand, rtol=1e-6)
    letters = heldout_values(model, examples, metric="choice_acc", tokenizer=tok, choice_form="letters")
    assert letters.tolist() == ch.score_choices(model, examples, tokenizer=tok, form="letters").acc.tolist()
    # the response loss per item is the existing example loss
    from raise_select.evaluation.loss import example_losses

    gsm = load_validation("gsm8k:test", shared_data, n=3, seed=0)
    np.testing.assert_allclose(
        heldout_values(str(tiny_model_dir), gsm, max_length=64, batch_size=2, device="cpu"),
        example_losses(str(tiny_model_dir), gsm, max_length=64, batch_size=2, device="cpu"),
        rtol=1e-9,
    )
    assert [default_metric(n) for n in ("gsm8k", "commonsenseqa:test", "arc_challenge", "my.jsonl")] == [
        "neg_loss",
        "choice_ce",
        "choice_ce",
        "neg_loss",
    ]


def test_choice_metrics_refuse_sets_without_choices(shared_data, tiny):
    from raise_select.data.validation import load_validation
    from raise_select.evaluation.loss import heldout_values
    from raise_select.training.reward import Validator

    model, tok = tiny
    gsm = load_validation("gsm8k", shared_data, n=2, seed=0)
    with pytest.raises(UserError, match=r"train.jsonl, row \d+, field 'messages': not a multiple-choice item"):
        Validator(gsm, tok, "choice_ce")
    with pytest.raises(UserError, match="unknown choice form 'mcq'"):
        Validator(load_validation("arc_challenge", shared_data, n=2), tok, "choice_ce", choice_form="mcq")
    with pytest.raises(UserError, match="unknown held-out metric 'f1'; available: neg_loss, accuracy, choice_ce"):
        heldout_values(model, gsm, metric="f1", tokenizer=tok)


def test_train_policy_rewards_are_changes_of_minus_the_choice_ce(tmp_path, tiny, tiny_model_dir):
    """RAISE with `metric: choice_ce` on a multiple-choice validation file written in the
    project's prompt format: the rewards telescope to P(M_T) - P(M_0), P(M_0) being minus the
    mean choice cross-entropy of the untouched model, computed here independently."""
    from raise_select.policy import PolicyConfig
    from raise_select.training import TrainPolicyConfig, train_policy

    rows = [{"instruction": f"What is {i} plus {i + 1}?", "input": "", "output": f"{2 * i + 1}"} for i in range(12)]
    (tmp_path / "pool.json").write_text(json.dumps(rows))
    docs = CHOICE_DOCS[:3]
    write_choice_items(tmp_path / "val.jsonl", docs)
    pool = load_pool(str(tmp_path / "pool.json"))
    random_features(pool.ids, 2, len_response=2.0).write(tmp_path / "features")
    cfg = TrainPolicyConfig(
        pool=str(tmp_path / "pool.json"),
        features=str(tmp_path / "features"),
        model=str(tiny_model_dir),
        val=str(tmp_path / "val.jsonl"),
        metric="choice_ce",
        rounds=1,
        steps=2,
        lr=1e-2,
        max_length=64,
        policy=PolicyConfig(per_class=1),
        out=str(tmp_path / "run"),
    )
    train_policy(cfg)
    model, tok = tiny
    items = [ch.ChoiceItem(d["question"], tuple(d["choices"]), d["label"]) for d in docs]
    p0 = -float(ch.score_items(model, tok, items, max_length=64).ce.mean())
    steps = [
        m
        for m in (json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines())
        if m["kind"] == "step"
    ]
    assert steps[0]["reward"] == pytest.approx(steps[0]["P"] - p0, abs=1e-6)
    assert sum(m["reward"] for m in steps) == pytest.approx(steps[-1]["P"] - p0, abs=1e-6)
    assert steps[-1]["P"] != pytest.approx(p0, abs=1e-6)  # training moved the figure


def test_auto_metric_scores_choices_only_when_every_example_is_an_item(shared_data, tiny):
    """train-policy's default `metric: auto`: choice_ce on a multiple-choice validation set (named set
    or the lettered prompt), neg_loss as soon as one example is not an item (GSM8K, a free-form row)."""
    from raise_select.data.validation import load_validation
    from raise_select.training.reward import Validator, metric_for

    model, tok = tiny
    arc = load_validation("arc_challenge:dev", shared_data, n=4, seed=0)
    gsm = load_validation("gsm8k", shared_data, n=2, seed=0)
    assert metric_for("auto", arc) == "choice_ce" and metric_for("auto", gsm) == "neg_loss"
    assert metric_for("auto", arc + gsm) == "neg_loss" and metric_for("neg_loss", arc) == "neg_loss"
    v = Validator(arc, tok, "auto", batch_size=4)
    assert v.metric == "choice_ce" and v(model) == pytest.approx(Validator(arc, tok, "choice_ce")(model))
    assert Validator(gsm, tok, "auto").metric == "neg_loss"
