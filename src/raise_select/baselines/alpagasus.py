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
on 429, 5xx, timeouts and connection errors; or a local HF model (`backend="local"`).
Judgments are cached as JSON Lines keyed by example id + judge + scoring mode + prompt
hash, so a re-run makes no request for what it already has. Requests that still fail after
the retries are counted and not cached (a re-run tries them again).

Scoring modes (`scoring`):

- `generate` (the only one of the HTTP judge): the judge writes its review (greedy) and
  the score is parsed from it as above.
- `expectation` (the default of the local judge): the probability-weighted score of
  G-Eval (Liu et al., 2023) and of DEITA's scorers, sum_k k * p_k over k = 0..5, where
  p = softmax of the next-token logits of the tokens "0".."5" alone. The prompt is the
  same messages rendered with the judge's chat template and its generation prompt (plain
  text, the messages' contents joined by blank lines, when it has none), with nothing
  appended: the reference asks for "a single line containing value indicating the scores"
  first and reads the score as `float(review.split("\n")[0])`, so the answer's very first
  token is the score's leading digit (a "Score: " prefix would be a format the reference
  neither asks for nor parses). A rating like "4.5" starts with "4", so the expectation
  over the integer digits is what the first token can tell. Every example gets a score, so
  this mode never leaves one unrated. A digit's token is its own vocabulary entry (Llama's
  sentencepiece "5", a byte-level BPE's "5"); a tokenizer without one uses the first token
  of the digit's encoding; two digits on one token is an error. With the tiny random
  models of the tests and the CPU study the scores carry no meaning (as for DEITA's tiny
  scorers): they exercise the pipeline, not the judge.
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
from dataclasses import dataclass, field
from typing import Callable, ClassVar, Optional

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
SCORINGS = ("expectation", "generate")
RATING_DIGITS = "012345"  # the scale 0..5 of the reference's prompt

SYSTEM_PROMPT = (
    "We would like to request your feedback on the performance of AI assistant in response to the instruction "
    "and the given input displayed following."
)
RATING_PROMPTS = {
    "accuracy": (
        "Please rate according to the accuracy of the response to the instruction and the input. Each assistant "
        "receives a score on a scale of 0 to 5, where a higher score indicates higher level of the accuracy. "
        "Please first output a single line containing value indicating the scores. In the subsequent line, please "
        "provide a comprehensive explanation of your evaluation, avoiding any potential bias. \n\n"
    ),
    "helpfulness": (
        "Please rate according to the helpfulness of the response to the instruction and the input. Each assistant "
        "receives an score on a scale of 0 to 5, where a higher score indicates higher level of the helpfulness. "
        "Please first output a single line containing value indicating the scores. In the subsequent line, please "
        "provide a comprehensive explanation of your evaluation, avoiding any potential bias. \n\n"
    ),
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
    backoff: float = 1.0  # seconds before the first retry; doubles after each
    max_backoff: float = 60.0
    max_tokens: int = 256
    temperature: float = 0.0

    @property
    def url(self) -> str:
        base = self.base_url.rstrip("/")
        return base + ("/chat/completions" if base.endswith("/v1") else "/v1/chat/completions")

    def _post(self, messages: list[dict]) -> str:
        body = json.dumps(
            {
                "model": self.model,
                "messages": messages,
                "temperature": self.temperature,
                "max_tokens": self.max_tokens,
                "top_p": 1.0,
            }
        ).encode()
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        req = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as e:
            if e.code in (401, 403):
                raise UserError(
                    f"judge endpoint {self.url} refused the request (HTTP {e.code}); check ${API_KEY_ENV}"
                ) from None
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


def rating_token_ids(tokenizer) -> list[int]:
    """Ids of the tokens "0".."5": the digit's own vocabulary entry, else the first token of its encoding."""
    ids = []
    for digit in RATING_DIGITS:
        tid = tokenizer.convert_tokens_to_ids(digit)
        if tid is None or tid == tokenizer.unk_token_id:
            encoded = tokenizer(digit, add_special_tokens=False)["input_ids"]
            if not encoded:
                raise UserError(
                    f"alpagasus: the judge's tokenizer encodes the digit '{digit}' as nothing; use scoring=generate"
                )
            tid = encoded[0]
        ids.append(int(tid))
    if len(set(ids)) < len(ids):
        raise UserError(
            f"alpagasus: the judge's tokenizer maps two of the digits 0-5 to one token (ids {ids}); "
            f"use scoring=generate"
        )
    return ids


def expected_ratings(next_logits, token_ids: list[int]):
    """(B,) expectations sum_k k * p_k and (B, 6) p = softmax over the digit tokens' logits of (B, V)."""
    import torch

    probs = torch.softmax(next_logits[:, token_ids].float(), dim=-1)
    return probs @ torch.arange(len(token_ids), dtype=probs.dtype, device=probs.device), probs


class LocalJudge:
    """A local (or hub) causal LM as the judge: greedy reviews, or next-token expectations."""

    def __init__(
        self, model: str, dtype: str, device, max_tokens: int = 256, batch_size: int = 8, max_length: int = 2048
    ):
        from ..models.loading import load_model_and_tokenizer

        self.model, self.tokenizer = load_model_and_tokenizer(model, dtype=dtype, device=device)
        self.model.eval()
        self.max_tokens = max_tokens
        self.batch_size = batch_size
        self.max_length = max_length

    def prompt(self, messages: list[dict]) -> str:
        """The messages with the chat template and its generation prompt, or joined as plain text."""
        tok = self.tokenizer
        if not getattr(tok, "chat_template", None):
            return "\n\n".join(m["content"] for m in messages)
        text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        # The tokenizer adds its BOS itself; a template that writes it too would double it.
        bos = tok.bos_token
        return text[len(bos) :] if bos and text.startswith(bos) else text

    def __call__(self, messages: list[dict]) -> str:
        """The greedy review of one example (`scoring="generate"`)."""
        import torch

        tok = self.tokenizer
        enc = tok(self.prompt(messages), return_tensors="pt").to(self.model.device)
        with torch.inference_mode():
            out = self.model.generate(
                **enc, max_new_tokens=self.max_tokens, do_sample=False, pad_token_id=tok.pad_token_id
            )
        return tok.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True)

    def expectations(self, prompts: list[str]):
        """(B,) expected ratings and (B, 6) digit probabilities of one left-padded batch of prompts."""
        import torch

        from .lm import left_padded_batch

        if not hasattr(self, "_digit_ids"):
            self._digit_ids = rating_token_ids(self.tokenizer)
        enc = left_padded_batch(self.tokenizer, prompts, self.max_length, self.model.device)
        with torch.inference_mode():
            logits = self.model(**enc).logits[:, -1]
        ratings, probs = expected_ratings(logits, self._digit_ids)
        return ratings.cpu().numpy(), probs.cpu().numpy()


def judgment_keys(examples: list[Example], judge_name: str, scoring: str, dimension: str) -> tuple[list[str], str]:
    """Cache keys of the examples' judgments and the hash of the prompt they were asked with."""
    prompt_hash = sha256_text(SYSTEM_PROMPT, TRIPLET, RATING_PROMPTS[dimension])[:12]
    return [f"{e.id}:{judge_name}:{scoring}:{prompt_hash}" for e in examples], prompt_hash


def cached_scores(keys: list[str], cache: JsonlCache, counts: dict) -> list[float | None]:
    """Scores of the keys from the cache (None: not judged or unrated); counts the unrated."""
    counts["unrated"] = sum(1 for k in keys if k in cache and cache.get(k)["score"] is None)
    return [cache.get(k)["score"] if k in cache else None for k in keys]


def rate_pool(
    examples: list[Example],
    judge: Callable[[list[dict]], str],
    judge_name: str,
    dimension: str,
    cache: JsonlCache,
    concurrency: int,
) -> tuple[list[float | None], dict]:
    """Scores parsed from the judge's reviews (None: unrated) and counts of what happened."""
    keys, prompt_hash = judgment_keys(examples, judge_name, "generate", dimension)
    todo = [i for i, k in enumerate(keys) if k not in cache]
    counts = {"cached": len(examples) - len(todo), "requested": len(todo), "failed": 0, "unrated": 0}
    from ..progress import progress_bar

    with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
        futures = {pool.submit(judge, judge_messages(examples[i], dimension)): i for i in todo}
        for fut in progress_bar(as_completed(futures), total=len(futures), desc="alpagasus judge", unit="ex"):
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
            cache.put(
                keys[i],
                {
                    "id": examples[i].id,
                    "judge": judge_name,
                    "scoring": "generate",
                    "prompt": prompt_hash,
                    "review": review,
                    "score": parse_score(review),
                },
            )
    return cached_scores(keys, cache, counts), counts


def rate_pool_expectation(
    examples: list[Example], judge: LocalJudge, judge_name: str, dimension: str, cache: JsonlCache
) -> tuple[list[float | None], dict]:
    """Expected 0-5 ratings from the judge's next-token digit probabilities, in batches, cached per batch."""
    from ..progress import progress_bar

    keys, prompt_hash = judgment_keys(examples, judge_name, "expectation", dimension)
    todo = [i for i, k in enumerate(keys) if k not in cache]
    counts = {"cached": len(examples) - len(todo), "requested": len(todo), "failed": 0, "unrated": 0}
    step = max(1, judge.batch_size)
    for start in progress_bar(range(0, len(todo), step), desc="alpagasus judge (expectation)", unit="batch"):
        batch = todo[start : start + step]
        ratings, probs = judge.expectations([judge.prompt(judge_messages(examples[i], dimension)) for i in batch])
        for i, rating, p in zip(batch, ratings, probs):
            cache.put(
                keys[i],
                {
                    "id": examples[i].id,
                    "judge": judge_name,
                    "scoring": "expectation",
                    "prompt": prompt_hash,
                    "probs": [float(x) for x in p],
                    "score": float(rating),
                },
            )
    return cached_scores(keys, cache, counts), counts


@dataclass
class AlpaGasus:
    """Keep judge scores >= `threshold`, best first, filled to the budget by the next best."""

    name: ClassVar[str] = "alpagasus"
    dynamic: ClassVar[bool] = False

    backend: str = field(
        default="http",
        metadata={
            "help": "judge: http (OpenAI-compatible endpoint at $RAISE_SELECT_JUDGE_BASE_URL, "
            "key $RAISE_SELECT_JUDGE_API_KEY) or local (an HF model)"
        },
    )
    judge_model: str = field(
        default="gpt-3.5-turbo",
        metadata={"help": "judge: model name sent to the endpoint (http), or the model's hub id/folder (local)"},
    )
    dimension: str = field(
        default="accuracy", metadata={"help": "rating prompt of the reference: accuracy (its default) or helpfulness"}
    )
    threshold: float = field(
        default=4.5,
        metadata={"help": "keep judge scores (0-5) at or above this, best first; the next best fill the budget"},
    )
    concurrency: int = field(default=8, metadata={"help": "http: parallel requests"})
    max_retries: int = field(
        default=5, metadata={"help": "http: retries of a request on 429/5xx/timeouts before giving up on it"}
    )
    timeout: float = field(default=60.0, metadata={"help": "http: seconds per request"})
    backoff: float = field(
        default=1.0, metadata={"help": "http: seconds before the first retry (doubles each time; Retry-After honoured)"}
    )
    max_tokens: int = field(default=256, metadata={"help": "tokens the judge may answer with (scoring=generate)"})
    dtype: str = field(default="float32", metadata={"help": "local: judge weights dtype"})
    scoring: Optional[str] = field(
        default=None,
        metadata={
            "help": "expectation (sum_k k p_k over the digits 0-5; local only) or generate (parse a written review); "
            "none: expectation for local, generate for http"
        },
    )
    batch_size: int = field(default=8, metadata={"help": "local: prompts per forward pass (scoring=expectation)"})
    max_length: int = field(
        default=2048,
        metadata={"help": "local: token limit of a prompt (cut from the left, keeping the rating request)"},
    )

    def needs_features(self) -> bool:
        return False

    def select(self, pool: Pool, budget: int, ctx: SelectionContext) -> Selection:
        if self.backend not in BACKENDS:
            raise UserError(f"alpagasus: unknown backend '{self.backend}'; available: {', '.join(BACKENDS)}")
        if self.dimension not in RATING_PROMPTS:
            raise UserError(f"alpagasus: unknown dimension '{self.dimension}'; available: {', '.join(RATING_PROMPTS)}")
        scoring = self.scoring or ("expectation" if self.backend == "local" else "generate")
        if scoring not in SCORINGS:
            raise UserError(f"alpagasus: unknown scoring '{scoring}'; available: {', '.join(SCORINGS)}")
        if scoring == "expectation" and self.backend != "local":
            raise UserError(
                "alpagasus: scoring=expectation needs the judge's logits: use backend=local, or scoring=generate"
            )
        cache = JsonlCache(ctx.cache_path("alpagasus-judgments.jsonl"))
        judge_name = f"{self.backend}:{self.judge_model}"
        if self.backend == "local":  # a local judge by its contents: one rebuilt at the same path judges again
            from ..features.featurize import model_fingerprint

            judge_name += f"@{sha256_text(model_fingerprint(self.judge_model))[:16]}"
        if scoring == "expectation":
            scores, counts = rate_pool_expectation(pool.examples, self._judge(ctx), judge_name, self.dimension, cache)
        else:
            scores, counts = rate_pool(
                pool.examples,
                self._judge(ctx),
                judge_name,
                self.dimension,
                cache,
                self.concurrency if self.backend == "http" else 1,
            )
        rated = np.array([i for i, s in enumerate(scores) if s is not None], dtype=np.int64)
        values = np.array([s if s is not None else -np.inf for s in scores], dtype=np.float64)
        order = rated[np.lexsort((rated, -values[rated]))] if rated.size else rated
        chosen = order[:budget]
        info = {
            **counts,
            "threshold": self.threshold,
            "judge": judge_name,
            "scoring": scoring,
            "above_threshold": int((values >= self.threshold).sum()),
            "filled_below_threshold": int((values[chosen] < self.threshold).sum()),
        }
        if chosen.size < budget:
            info["short_of_budget"] = int(budget - chosen.size)
        return Selection(
            indices=chosen.tolist(), scores=values[chosen].tolist(), info=info, pool_scores=Selection.per_row(values)
        )

    def _judge(self, ctx: SelectionContext) -> HttpJudge | LocalJudge:
        if self.backend == "local":
            return LocalJudge(
                self.judge_model,
                self.dtype,
                ctx.torch_device(),
                max_tokens=self.max_tokens,
                batch_size=self.batch_size,
                max_length=self.max_length,
            )
        base_url = os.environ.get(BASE_URL_ENV)
        if not base_url:
            raise UserError(
                f"alpagasus: set ${BASE_URL_ENV} to an OpenAI-compatible endpoint (and ${API_KEY_ENV}), "
                f"or use --set alpagasus.backend=local"
            )
        return HttpJudge(
            base_url=base_url,
            api_key=os.environ.get(API_KEY_ENV),
            model=self.judge_model,
            timeout=self.timeout,
            max_retries=self.max_retries,
            backoff=self.backoff,
            max_tokens=self.max_tokens,
        )
