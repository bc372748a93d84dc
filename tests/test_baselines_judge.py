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
from raise_select.baselines.alpagasus import API_KEY_ENV, BASE_URL_ENV, judge_messages, parse_score
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
    assert FakeJudge.calls["down"] == 4            # first try + 3 retries, then counted as failed
    assert FakeJudge.calls["rate429"] == 3 and FakeJudge.calls["badjson"] == 3 and FakeJudge.calls["slow"] == 3
    assert set(FakeJudge.auth) == {f"Bearer {API_KEY}"}

    cache_file = tmp_path / "cache" / "alpagasus-judgments.jsonl"
    lines = [json.loads(line) for line in cache_file.read_text().splitlines()]
    assert len(lines) == 8                          # everything but the failed request
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
    assert msgs[1]["content"].startswith("###Instruction:\ngood5\n\n### Input:\n\n\n### Response:\nanswer of good5\n\nPlease rate according to the accuracy")


def test_local_judge_runs_and_counts_unrated(tiny_model_dir, tmp_path):
    pool = judge_pool()
    method = make_baseline("alpagasus", {"backend": "local", "judge_model": str(tiny_model_dir), "max_tokens": 4})
    sel = method.select(pool, 3, SelectionContext(out_dir=tmp_path))
    assert sel.info["requested"] == len(pool) and sel.info["failed"] == 0
    rated = len(pool) - sel.info["unrated"]
    assert len(sel.indices) == min(3, rated)
