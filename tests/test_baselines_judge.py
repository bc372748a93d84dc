"""The AlpaGasus judge against a real OpenAI-compatible HTTP server on loopback."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from raise_select.baselines import SelectionContext, make_baseline
from raise_select.baselines.alpagasus import (
    API_KEY_ENV,
    BASE_URL_ENV,
    LocalJudge,
    judge_messages,
    parse_score,
    rating_token_ids,
)
from raise_select.data.pools import Example, Pool, example_id
from raise_select.errors import UserError

API_KEY = "sk-test-SECRET-0123456789"

# What the fake judge answers, by the example's instruction. "first" behaviours fail the
# first two requests of that example and answer well afterwards.
BEHAVIOURS = {
    "good5": "5\nAccurate and complete.",
    "good48": "Score: 4.8\nVery accurate.",
    "good3": "3.0\nPartly right.",
    "good2": "2\nMostly wrong.",
    "malformed": "I would rather not give a number here.",
    "rate429": "4.5\nFine after waiting.",
    "slow": "4.9\nFine after a timeout.",
    "badjson": "4.6\nFine after a broken body.",
    "down": None,  # always HTTP 500
}


class FakeJudge(BaseHTTPRequestHandler):
    calls: Counter = Counter()
    auth: list = []
    lock = threading.Lock()

    def log_message(self, *args):  # keep test output quiet
        pass

    def _reply(self, code: int, body: bytes, headers: dict | None = None):
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        if self.path != "/v1/chat/completions":
            return self._reply(404, b"{}")
        req = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        user = req["messages"][1]["content"]
        name = user.split("###Instruction:\n", 1)[1].split("\n", 1)[0]
        with self.lock:
            FakeJudge.calls[name] += 1
            n = FakeJudge.calls[name]
            FakeJudge.auth.append(self.headers.get("Authorization"))
        if self.headers.get("Authorization") != f"Bearer {API_KEY}":
            return self._reply(401, b'{"error": "bad key"}')
        if name == "down":
            return self._reply(500, b'{"error": "down"}')
        if name == "rate429" and n <= 2:
            return self._reply(429, b'{"error": "slow down"}', {"Retry-After": "0"})
        if name == "slow" and n <= 2:
            time.sleep(0.6)
        if name == "badjson" and n <= 2:
            return self._reply(200, b"<html>proxy error</html>")
        answer = {"choices": [{"message": {"role": "assistant", "content": BEHAVIOURS[name]}}]}
        self._reply(200, json.dumps(answer).encode())


@pytest.fixture()
def judge_server(monkeypatch):
    FakeJudge.calls = Counter()
    FakeJudge.auth = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeJudge)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv(BASE_URL_ENV, f"http://127.0.0.1:{server.server_address[1]}")
    monkeypatch.setenv(API_KEY_ENV, API_KEY)
    yield server
    server.shutdown()
    server.server_close()


def judge_pool() -> Pool:
    examples = []
    for row, name in enumerate(BEHAVIOURS):
        rec = {"instruction": name, "input": "", "output": f"answer of {name}"}
        msgs = (("user", name), ("assistant", rec["output"]))
        examples.append(Example(id=example_id(msgs), messages=msgs, record=rec, row=row))
    return Pool(examples=examples, format="alpaca", sources=["test"])


OPTIONS = {"timeout": 0.3, "backoff": 0.01, "max_retries": 3, "concurrency": 4, "judge_model": "fake-judge"}


def test_judge_scores_retries_caches_and_hides_the_key(judge_server, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    pool = judge_pool()
    names = list(BEHAVIOURS)
    ctx = SelectionContext(out_dir=tmp_path, seed=0)
    method = make_baseline("alpagasus", OPTIONS)

    sel = method.select(pool, 6, ctx)
    chosen = [names[i] for i in sel.indices]
    # >= 4.5 first, best first; then the next best fill the budget.
    assert chosen == ["good5", "slow", "good48", "badjson", "rate429", "good3"]
    assert sel.scores == [5.0, 4.9, 4.8, 4.6, 4.5, 3.0]
    assert sel.info["above_threshold"] == 5 and sel.info["filled_below_threshold"] == 1
    assert sel.info["failed"] == 1 and sel.info["unrated"] == 1 and sel.info["requested"] == 9
    assert FakeJudge.calls["down"] == 4  # first try + 3 retries, then counted as failed
    assert FakeJudge.calls["rate429"] == 3 and FakeJudge.calls["badjson"] == 3 and FakeJudge.calls["slow"] == 3
    assert set(FakeJudge.auth) == {f"Bearer {API_KEY}"}

    cache_file = tmp_path / "cache" / "alpagasus-judgments.jsonl"
    lines = [json.loads(line) for line in cache_file.read_text().splitlines()]
    assert len(lines) == 8  # everything but the failed request
    assert API_KEY not in cache_file.read_text()
    assert API_KEY not in caplog.text
    assert API_KEY not in json.dumps(sel.info)

    # A re-run asks only for what failed; cached judgments (unrated ones too) are reused.
    before = FakeJudge.calls.copy()
    again = make_baseline("alpagasus", OPTIONS).select(pool, 6, ctx)
    assert again.indices == sel.indices
    assert again.info["cached"] == 8 and again.info["requested"] == 1
    assert {k: FakeJudge.calls[k] - before[k] for k in BEHAVIOURS if FakeJudge.calls[k] != before[k]} == {"down": 4}


def test_judge_refuses_a_bad_key_with_a_user_error(judge_server, tmp_path, monkeypatch):
    monkeypatch.setenv(API_KEY_ENV, "wrong-key")
    with pytest.raises(UserError, match="HTTP 401") as err:
        make_baseline("alpagasus", OPTIONS).select(judge_pool(), 2, SelectionContext(out_dir=tmp_path))
    assert "wrong-key" not in str(err.value)


def test_judge_needs_an_endpoint(monkeypatch):
    monkeypatch.delenv(BASE_URL_ENV, raising=False)
    with pytest.raises(UserError, match=BASE_URL_ENV):
        make_baseline("alpagasus").select(judge_pool(), 2, SelectionContext())


def test_parse_score_lenient():
    assert parse_score("4.5\nGood.") == 4.5
    assert parse_score("Score: 4\nGood.") == 4.0
    assert parse_score("score = 3.5") == 3.5
    assert parse_score("The response deserves 2 points.") == 2.0
    assert parse_score("I rate it 9 out of 10") is None
    assert parse_score("no idea") is None
    assert parse_score("") is None


def test_prompt_is_the_reference_triplet():
    ex = judge_pool().examples[0]
    msgs = judge_messages(ex, "accuracy")
    assert msgs[0]["content"].startswith("We would like to request your feedback")
    assert msgs[1]["content"].startswith(
        "###Instruction:\ngood5\n\n### Input:\n\n\n### Response:\nanswer of good5\n\n"
        "Please rate according to the accuracy"
    )


def test_local_judge_runs_and_counts_unrated(tiny_model_dir, tmp_path):
    pool = judge_pool()
    method = make_baseline(
        "alpagasus", {"backend": "local", "scoring": "generate", "judge_model": str(tiny_model_dir), "max_tokens": 4}
    )
    sel = method.select(pool, 3, SelectionContext(out_dir=tmp_path))
    assert sel.info["scoring"] == "generate"
    assert sel.info["requested"] == len(pool) and sel.info["failed"] == 0
    rated = len(pool) - sel.info["unrated"]
    assert len(sel.indices) == min(3, rated)


# ---------------------------------------------------------------- scoring="expectation"


def manual_expectations(model_dir, examples) -> list[float]:
    """sum_k k * p_k with p the softmax over the logits of "0".."5", one plain unpadded forward per example."""
    import math

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    digit_ids = []
    for d in "012345":
        ids = tok.encode(d, add_special_tokens=False)
        assert len(ids) == 1
        digit_ids.append(ids[0])
    out = []
    for ex in examples:
        text = tok.apply_chat_template(judge_messages(ex, "accuracy"), tokenize=False, add_generation_prompt=True)
        assert text.endswith("<|assistant|>\n")  # the tiny template's generation prompt, nothing after it
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([tok.encode(text)])).logits[0, -1]
        z = [float(logits[i]) for i in digit_ids]
        m = max(z)
        e = [math.exp(v - m) for v in z]
        out.append(sum(k * e[k] for k in range(6)) / sum(e))
    return out


def local_options(model_dir, **extra) -> dict:
    return {"backend": "local", "judge_model": str(model_dir), **extra}


def scores_by_row(sel) -> dict[int, float]:
    return dict(zip(sel.indices, sel.scores))


def test_expectation_is_the_softmax_over_the_digit_logits(tiny_model_dir, tmp_path):
    pool = judge_pool()
    pool = Pool(examples=pool.examples[:3], format=pool.format, sources=pool.sources)
    sel = make_baseline("alpagasus", local_options(tiny_model_dir)).select(pool, 3, SelectionContext(out_dir=tmp_path))
    assert sel.info["scoring"] == "expectation"  # the local judge's default
    assert sel.info["unrated"] == 0 and sel.info["requested"] == 3
    got = scores_by_row(sel)
    want = manual_expectations(tiny_model_dir, pool.examples)
    assert sorted(got) == [0, 1, 2]
    for row, w in enumerate(want):
        assert got[row] == pytest.approx(w, abs=1e-5)
    lines = [json.loads(x) for x in (tmp_path / "cache" / "alpagasus-judgments.jsonl").read_text().splitlines()]
    for rec in lines:
        assert sum(rec["probs"]) == pytest.approx(1.0, abs=1e-6)
        assert rec["score"] == pytest.approx(sum(k * p for k, p in enumerate(rec["probs"])), abs=1e-6)


def test_left_padded_batch_equals_single_passes(tiny_model_dir):
    import numpy as np

    judge = LocalJudge(str(tiny_model_dir), "float32", "cpu", batch_size=4)
    prompts = [judge.prompt(judge_messages(ex, "accuracy")) for ex in judge_pool().examples[:4]]
    prompts[1] += " The quick brown fox jumps over the lazy dog." * 3  # lengths differ: padding is real
    lengths = {len(judge.tokenizer(p)["input_ids"]) for p in prompts}
    assert len(lengths) > 1
    ratings, probs = judge.expectations(prompts)
    singles = [judge.expectations([p]) for p in prompts]
    np.testing.assert_allclose(ratings, [r[0] for r, _ in singles], atol=1e-5)
    np.testing.assert_allclose(probs, np.concatenate([p for _, p in singles]), atol=1e-5)


def test_expectation_judgments_are_cached_per_scoring_mode(tiny_model_dir, tmp_path):
    pool = judge_pool()
    ctx = SelectionContext(out_dir=tmp_path)
    first = make_baseline("alpagasus", local_options(tiny_model_dir, batch_size=4)).select(pool, 4, ctx)
    cache_file = tmp_path / "cache" / "alpagasus-judgments.jsonl"
    assert len(cache_file.read_text().splitlines()) == len(pool)
    again = make_baseline("alpagasus", local_options(tiny_model_dir, batch_size=4)).select(pool, 4, ctx)
    assert again.info["cached"] == len(pool) and again.info["requested"] == 0
    assert again.indices == first.indices and again.scores == first.scores
    assert len(cache_file.read_text().splitlines()) == len(pool)
    # The other scoring mode of the same judge is another judgment.
    gen = make_baseline("alpagasus", local_options(tiny_model_dir, scoring="generate", max_tokens=2)).select(
        pool, 4, ctx
    )
    assert gen.info["cached"] == 0 and gen.info["requested"] == len(pool)


@pytest.fixture(scope="module")
def rigged_judge_dir(tiny_model_dir, tmp_path_factory):
    """The tiny model with an LM head that rates example 0 near 5 and example 1 near 2: the
    rows of "0".."4" are zero and the row of "5" is c (h0 - h1), h the final hidden state at
    the last prompt token. RMSNorm gives |h0| = |h1|, so (h0 - h1).h0 = -(h0 - h1).h1 =
    |h0 - h1|^2 / 2 = 10 / c, and the score is 2 + 3 p5 with p5 = e^x / (5 + e^x)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    hidden = []
    for ex in judge_pool().examples[:2]:
        text = tok.apply_chat_template(judge_messages(ex, "accuracy"), tokenize=False, add_generation_prompt=True)
        with torch.no_grad():
            hidden.append(model.model(input_ids=torch.tensor([tok.encode(text)])).last_hidden_state[0, -1])
    d = hidden[0] - hidden[1]
    ids = rating_token_ids(tok)
    with torch.no_grad():
        model.lm_head.weight[ids[:5]] = 0.0
        model.lm_head.weight[ids[5]] = 20.0 * d / d.dot(d)
    out = tmp_path_factory.mktemp("rigged-judge")
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def test_threshold_then_fill_with_expectation_scores(rigged_judge_dir, tmp_path):
    pool = judge_pool()
    want = manual_expectations(rigged_judge_dir, pool.examples)
    assert want[0] > 4.99 and 2.0 < want[1] < 2.01  # the rigging works as its docstring says
    above = [i for i, w in enumerate(want) if w >= 4.5]
    assert 0 < len(above) < len(pool)
    budget = min(len(pool), len(above) + 2)
    sel = make_baseline("alpagasus", local_options(rigged_judge_dir)).select(
        pool, budget, SelectionContext(out_dir=tmp_path)
    )
    best_first = sorted(range(len(pool)), key=lambda i: (-want[i], i))
    assert sel.indices == best_first[:budget]
    assert sel.indices[: len(above)] == sorted(above, key=lambda i: -want[i])
    assert sel.info["above_threshold"] == len(above)
    assert sel.info["filled_below_threshold"] == budget - len(above)
    assert "short_of_budget" not in sel.info and sel.info["unrated"] == 0


def test_digit_tokens_must_be_distinct(tiny_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    ids = rating_token_ids(tok)
    assert ids == [tok.convert_tokens_to_ids(d) for d in "012345"] and len(set(ids)) == 6

    class OneTokenForAllDigits:
        unk_token_id = 3

        def convert_tokens_to_ids(self, token):
            return self.unk_token_id

        def __call__(self, text, add_special_tokens=True):
            return {"input_ids": [7, 100 + int(text)]}  # a shared prefix token, then the digit

    with pytest.raises(UserError, match="two of the digits"):
        rating_token_ids(OneTokenForAllDigits())


def test_expectation_needs_a_local_judge(monkeypatch):
    monkeypatch.setenv(BASE_URL_ENV, "http://127.0.0.1:9")
    with pytest.raises(UserError, match="backend=local"):
        make_baseline("alpagasus", {"scoring": "expectation"}).select(judge_pool(), 2, SelectionContext())
    with pytest.raises(UserError, match="unknown scoring"):
        make_baseline("alpagasus", {"backend": "local", "scoring": "mean"}).select(judge_pool(), 2, SelectionContext())
