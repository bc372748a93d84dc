"""`alpagasus`: an LLM judge rates every example 0-5 and the high-rated ones are kept
(Chen et al., 2024; reference code gpt4life/alpagasus, `rating/chatgpt_rating.py`,
`rating/filter.py`).

The prompt is the reference's: its system prompt, the Alpaca triplet, and the "accuracy"
rating request (the one the reference's script runs; `dimension="helpfulness"` gives its
other prompt). The score is parsed from the answer's first line as the reference does,
then, more leniently, from a "score: x" phrase or the first number in [0, 5]; an answer
with no score is kept as unrated and counted. Examples scoring >= `threshold` (4.5) are
kept, best first; when fewer than the budget pass, the next best fill it (the reference
keeps only those above the threshold, whatever their number).

Two judges: an OpenAI-compatible HTTP endpoint (`/v1/chat/completions`; base URL and key
from the environment variables `RAISE_SELECT_JUDGE_BASE_URL` and
`RAISE_SELECT_JUDGE_API_KEY`; the key is sent only in the Authorization header and never
logged or written), queried by a bounded thread pool with retries and exponential backoff
on 429, 5xx, timeouts and connection errors; or a local HF model (`backend="local"`,
greedy generation). Judgments are cached as JSON Lines keyed by example id + judge +
prompt hash, so a re-run makes no request for what it already has. Requests that still
fail after the retries are counted and not cached (a re-run tries them again).
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from typing import Callable, ClassVar

import numpy as np

from ..data.pools import Example, Pool
from ..errors import UserError
from ..io import sha256_text
from .base import Selection, SelectionContext
from .cache import JsonlCache

log = logging.getLogger(__name__)

BASE_URL_ENV = "RAISE_SELECT_JUDGE_BASE_URL"
API_KEY_ENV = "RAISE_SELECT_JUDGE_API_KEY"
BACKENDS = ("http", "local")

SYSTEM_PROMPT = "We would like to request your feedback on the performance of AI assistant in response to the instruction and the given input displayed following."
RATING_PROMPTS = {
    "accuracy": "Please rate according to the accuracy of the response to the instruction and the input. Each assistant receives a score on a scale of 0 to 5, where a higher score indicates higher level of the accuracy. Please first output a single line containing value indicating the scores. In the subsequent line, please provide a comprehensive explanation of your evaluation, avoiding any potential bias. \n\n",
    "helpfulness": "Please rate according to the helpfulness of the response to the instruction and the input. Each assistant receives an score on a scale of 0 to 5, where a higher score indicates higher level of the helpfulness. Please first output a single line containing value indicating the scores. In the subsequent line, please provide a comprehensive explanation of your evaluation, avoiding any potential bias. \n\n",
}
TRIPLET = "###Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n{output}\n\n"
_NUMBER = r"(\d+(?:\.\d+)?)"


def judge_messages(example: Example, dimension: str) -> list[dict]:
    """The reference's chat messages for one example (Alpaca rows keep their input field)."""
    rec = example.record or {}
    if "instruction" in rec and len(example.messages) <= 3:
        instruction, inp = str(rec.get("instruction") or ""), str(rec.get("input") or "")
    else:
        instruction = "\n\n".join(c for r, c in example.prompt_messages if r != "system")
        inp = ""
    user = TRIPLET.format(instruction=instruction, input=inp, output=example.response) + RATING_PROMPTS[dimension]
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user}]


def parse_score(review: str) -> float | None:
    """The rating in [0, 5], or None when the answer holds none."""
    text = review.strip()
    first = text.split("\n")[0].strip()
    candidates = []
    try:
        candidates.append(float(first))
    except ValueError:
        m = re.search(r"score\s*[:=]?\s*" + _NUMBER, text, flags=re.IGNORECASE)
        if m:
            candidates.append(float(m.group(1)))
        candidates += [float(x) for x in re.findall(_NUMBER, first)]
        candidates += [float(x) for x in re.findall(_NUMBER, text)]
    for c in candidates:
        if 0.0 <= c <= 5.0:
            return c
    return None


class RetryableError(Exception):
    """A failure worth another try: rate limit, server error, timeout, broken body."""


@dataclass
class HttpJudge:
    """Chat completions from an OpenAI-compatible endpoint."""

    base_url: str
    api_key: str | None
    model: str
    timeout: float = 60.0
    max_retries: int = 5
    backoff: float = 1.0          # seconds before the first retry; doubles after each
    max_backoff: float = 60.0
    max_tokens: int = 256
    temperature: float = 0.0

    @property
    def url(self) -> str:
        base = self.base_url.rstrip("/")
        return base + ("/chat/completions" if base.endswith("/v1") else "/v1/chat/completions")

    def _post(self, messages: list[dict]) -> str:
        body = json.dumps({"model": self.model, "messages": messages, "temperature": self.temperature,
                           "max_tokens": self.max_tokens, "top_p": 1.0}).encode()
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        req = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as e:
            if e.code in (401, 403):
                raise UserError(f"judge endpoint {self.url} refused the request (HTTP {e.code}); check ${API_KEY_ENV}") from None
            if e.code == 429 or e.code >= 500:
                retry_after = e.headers.get("Retry-After") if e.headers else None
                raise RetryableError(f"HTTP {e.code}", retry_after) from None
            raise ValueError(f"HTTP {e.code}") from None
        except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as e:
            raise RetryableError(f"{type(e).__name__}: {getattr(e, 'reason', e)}") from None
        try:
            return json.loads(raw)["choices"][0]["message"]["content"] or ""
        except (ValueError, KeyError, IndexError, TypeError):
            raise RetryableError("malformed response body") from None

    def __call__(self, messages: list[dict]) -> str:
        """The judge's answer; retries transient failures, raises the last one when they run out."""
        delay = self.backoff
        for attempt in range(self.max_retries + 1):
            try:
                return self._post(messages)
            except RetryableError as e:
                if attempt == self.max_retries:
                    raise
                wait = delay
                if len(e.args) > 1 and e.args[1]:
                    try:
                        wait = max(wait, float(e.args[1]))
                    except ValueError:
                        pass
                log.debug("judge request failed (%s); retry %d in %.1fs", e.args[0], attempt + 1, wait)
                time.sleep(min(wait, self.max_backoff))
                delay *= 2
        raise AssertionError("unreachable")


class LocalJudge:
    """Greedy generation from a local (or hub) causal LM, one example at a time."""

    def __init__(self, model: str, max_tokens: int, dtype: str, device):
        from ..models.loading import load_model_and_tokenizer

        self.model, self.tokenizer = load_model_and_tokenizer(model, dtype=dtype, device=device)
        self.max_tokens = max_tokens

    def __call__(self, messages: list[dict]) -> str:
        import torch

        tok = self.tokenizer
        if getattr(tok, "chat_template", None):
            prompt = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        else:
            prompt = "\n\n".join(m["content"] for m in messages)
        enc = tok(prompt, return_tensors="pt").to(self.model.device)
        with torch.no_grad():
            out = self.model.generate(**enc, max_new_tokens=self.max_tokens, do_sample=False, pad_token_id=tok.pad_token_id)
        return tok.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)


def rate_pool(examples: list[Example], judge: Callable[[list[dict]], str], judge_name: str, dimension: str,
              cache: JsonlCache, concurrency: int) -> tuple[list[float | None], dict]:
    """Scores of all examples (None: unrated) and counts of what happened."""
    prompt_hash = sha256_text(SYSTEM_PROMPT, TRIPLET, RATING_PROMPTS[dimension])[:12]
    keys = [f"{e.id}:{judge_name}:{prompt_hash}" for e in examples]
    todo = [i for i, k in enumerate(keys) if k not in cache]
    counts = {"cached": len(examples) - len(todo), "requested": len(todo), "failed": 0, "unrated": 0}
    from tqdm.auto import tqdm

    with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
        futures = {pool.submit(judge, judge_messages(examples[i], dimension)): i for i in todo}
        for fut in tqdm(as_completed(futures), total=len(futures), desc="alpagasus judge", unit="ex"):
            i = futures[fut]
            try:
                review = fut.result()
            except UserError:
                for f in futures:
                    f.cancel()
                raise
            except (RetryableError, ValueError) as e:
                counts["failed"] += 1
                log.warning("judge gave up on example %s: %s", examples[i].id, e.args[0])
                continue
            cache.put(keys[i], {"id": examples[i].id, "judge": judge_name, "prompt": prompt_hash,
                                "review": review, "score": parse_score(review)})
    scores = [cache.get(k)["score"] if k in cache else None for k in keys]
    counts["unrated"] = sum(1 for k in keys if k in cache and cache.get(k)["score"] is None)
    return scores, counts


@dataclass
class AlpaGasus:
    """Keep judge scores >= `threshold`, best first, filled to the budget by the next best."""

    name: ClassVar[str] = "alpagasus"
    dynamic: ClassVar[bool] = False

    backend: str = "http"               # "http": OpenAI-compatible endpoint from the environment; "local": an HF model
    judge_model: str = "gpt-3.5-turbo"  # model name sent to the endpoint, or the local model's id/folder
    dimension: str = "accuracy"         # rating prompt of the reference: "accuracy" (its default) or "helpfulness"
    threshold: float = 4.5              # keep scores at or above this
    concurrency: int = 8                # parallel HTTP requests
    max_retries: int = 5                # retries of a request on 429/5xx/timeouts before giving up on it
    timeout: float = 60.0               # seconds per HTTP request
    backoff: float = 1.0                # seconds before the first retry (doubles each time; Retry-After honoured)
    max_tokens: int = 256               # tokens the judge may answer with
    dtype: str = "float32"              # local judge weights dtype

    def select(self, pool: Pool, budget: int, ctx: SelectionContext) -> Selection:
        if self.backend not in BACKENDS:
            raise UserError(f"alpagasus: unknown backend '{self.backend}'; available: {', '.join(BACKENDS)}")
        if self.dimension not in RATING_PROMPTS:
            raise UserError(f"alpagasus: unknown dimension '{self.dimension}'; available: {', '.join(RATING_PROMPTS)}")
        cache = JsonlCache(ctx.cache_path("alpagasus-judgments.jsonl"))
        scores, counts = rate_pool(pool.examples, self._judge(ctx), f"{self.backend}:{self.judge_model}",
                                   self.dimension, cache, self.concurrency if self.backend == "http" else 1)
        rated = np.array([i for i, s in enumerate(scores) if s is not None], dtype=np.int64)
        values = np.array([s if s is not None else -np.inf for s in scores], dtype=np.float64)
        order = rated[np.lexsort((rated, -values[rated]))] if rated.size else rated
        chosen = order[:budget]
        info = {**counts, "threshold": self.threshold, "judge": f"{self.backend}:{self.judge_model}",
                "above_threshold": int((values >= self.threshold).sum()),
                "filled_below_threshold": int((values[chosen] < self.threshold).sum())}
        if chosen.size < budget:
            info["short_of_budget"] = int(budget - chosen.size)
        return Selection(indices=chosen.tolist(), scores=values[chosen].tolist(), info=info)

    def _judge(self, ctx: SelectionContext) -> Callable[[list[dict]], str]:
        if self.backend == "local":
            return LocalJudge(self.judge_model, self.max_tokens, self.dtype, ctx.torch_device())
        base_url = os.environ.get(BASE_URL_ENV)
        if not base_url:
            raise UserError(f"alpagasus: set ${BASE_URL_ENV} to an OpenAI-compatible endpoint (and ${API_KEY_ENV}), or use --set alpagasus.backend=local")
        return HttpJudge(base_url=base_url, api_key=os.environ.get(API_KEY_ENV), model=self.judge_model,
                         timeout=self.timeout, max_retries=self.max_retries, backoff=self.backoff, max_tokens=self.max_tokens)
