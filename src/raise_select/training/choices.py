"""Multiple-choice items scored as lm-evaluation-harness's `multiple_choice` output type does.

Each choice `c` of an item is one request `(context, target_delimiter + c)`; its score is the
log-likelihood of the continuation's tokens given the context, summed over the continuation
tokens, computed exactly as lm-eval 0.4's `HFLM.loglikelihood` computes it:

- a trailing space of the context moves to the continuation (`LM._encode_pair`);
- the context and the whole string `context + continuation` are each encoded with
  `tokenizer.encode` (special tokens as the tokenizer adds them by default, none when the
  string already starts with the prefix token's text, `HFLM.tok_encode`); the continuation
  tokens are the whole string's tokens past the context's;
- the model reads `(context + continuation)[-(max_length + 1):][:-1]` (left truncation) and
  the log-softmax of its logits at the continuation positions is gathered and summed.

From the choices' log-likelihoods `ll` of an item with gold index `g`:

- `acc`: 1 when `argmax(ll) == g` (the first maximum on ties, as `np.argmax`);
- `acc_norm`: the same with `ll / len(choice)` (characters of the choice text, lm-eval's
  `acc_norm`);
- `ce`: the gold choice's cross-entropy over the choices, `-log softmax(ll)[g]`
  = `logsumexp(ll) - ll[g]`: a continuous, format-free figure (0 when the model puts all the
  choices' mass on the gold one, `log(k)` when it cannot tell k choices apart).

Two prompt forms (`FORMS`):

- `cloze` (default): context ``Question: <question>\\nAnswer:``, continuation `` <choice
  text>``: lm-eval's own `arc_challenge` / `arc_easy` / `mathqa` form, the one in which small
  models are above chance; nothing but the choice's content is scored.
- `letters`: the project's lettered prompt (`data.benchmarks.format_prompt`, the choices
  listed A., B., ...) and the continuation `` A``, `` B``, ...: the form of the shipped task
  YAMLs and of lm-eval's `commonsense_qa` / `mmlu`.

Items come from `data.benchmarks` named sets (record fields `mc_question`, `mc_choices`,
`mc_gold`) or from any example in the project's prompt format (the lettered prompt and
"The answer is X." response are parsed back, and refused unless they re-render exactly).

This is the training layer's part (the validation reward's `choice_ce` / `choice_acc` read
it); `evaluation.choices` is the public face, with `score_choices` on a model spec.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np
import torch

from ..data.benchmarks import CHOICES_FIELD, GOLD_FIELD, QUESTION_FIELD
from ..errors import UserError, where

FORMS = ("cloze", "letters")
TARGET_DELIMITER = " "  # lm-eval's default `target_delimiter`


@dataclass(frozen=True)
class ChoiceItem:
    """One multiple-choice item: the bare question, its choice texts in order, the gold index."""

    question: str
    choices: tuple[str, ...]
    gold: int
    source: str = field(default="", compare=False)
    row: int | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        check_item(self.question, self.choices, self.gold, self.source, self.row)


def check_item(question, choices, gold, source: str = "", row: int | None = None) -> None:
    """Refuse an item no choice score can be computed for, naming its file, row and field."""
    if not isinstance(question, str):
        raise UserError(f"{where(source, row, QUESTION_FIELD)}: expected the question text, got {question!r}")
    if not isinstance(choices, (list, tuple)) or len(choices) < 2:
        got = len(choices) if isinstance(choices, (list, tuple)) else type(choices).__name__
        raise UserError(f"{where(source, row, CHOICES_FIELD)}: expected a list of at least 2 choices, got {got}")
    for i, c in enumerate(choices):
        if not isinstance(c, str) or not c.strip():
            raise UserError(f"{where(source, row, CHOICES_FIELD)}: choice {i} is empty or not text ({c!r})")
    if isinstance(gold, bool) or not isinstance(gold, (int, np.integer)) or not 0 <= int(gold) < len(choices):
        raise UserError(
            f"{where(source, row, GOLD_FIELD)}: gold index {gold!r} is not one of 0..{len(choices) - 1} "
            f"({len(choices)} choices)"
        )


# ---------------------------------------------------------------- items from examples

_ANSWER = re.compile(r"The answer is ([A-J])\.")


def item_from_example(example) -> ChoiceItem:
    """The item of an `Example`: its record fields, else its lettered prompt parsed back."""
    from ..data.benchmarks import LETTERS, format_prompt

    rec = example.record or {}
    src, row = example.source, (example.row if example.row is not None and example.row >= 0 else None)
    if CHOICES_FIELD in rec or GOLD_FIELD in rec:
        for name in (QUESTION_FIELD, CHOICES_FIELD, GOLD_FIELD):
            if name not in rec:
                raise UserError(f"{where(src, row, name)}: missing field (a multiple-choice item needs all three)")
        choices = rec[CHOICES_FIELD]
        check_item(rec[QUESTION_FIELD], choices, rec[GOLD_FIELD], src, row)
        return ChoiceItem(rec[QUESTION_FIELD], tuple(choices), int(rec[GOLD_FIELD]), src, row)
    prompt = example.prompt_messages[-1][1] if example.prompt_messages else ""
    lines = prompt.split("\n")
    # Walk back from the last line: the choices are the longest run ending in "A." .. "<X>.".
    choices: list[str] = []
    question_lines: list[str] = []
    if lines[-1] != "Answer:":
        lines = []
    for n in range(min(len(LETTERS), len(lines) - 2), 1, -1):
        tail = lines[-1 - n : -1]
        if all(line.startswith(f"{LETTERS[i]}. ") for i, line in enumerate(tail)):
            choices = [line[3:] for line in tail]
            question_lines = lines[: -1 - n]
            break
    m = _ANSWER.fullmatch(example.response.strip()) if choices else None
    if not choices or m is None or not question_lines or not question_lines[0].startswith("Question: "):
        raise UserError(
            f"{where(src, row, 'messages')}: not a multiple-choice item: no fields {CHOICES_FIELD!r}/{GOLD_FIELD!r} "
            "and not the lettered prompt ('Question: ...', 'A. ...', ..., 'Answer:') with 'The answer is X.'"
        )
    question = "\n".join(question_lines)[len("Question: ") :]
    gold = LETTERS.index(m.group(1))
    check_item(question, choices, gold, src, row)
    doc = {"question": question, "choices": choices, "label": gold}
    if format_prompt(doc) != prompt:
        raise UserError(f"{where(src, row, 'messages')}: the lettered prompt does not parse back into one item")
    return ChoiceItem(question, tuple(choices), gold, src, row)


def items_from_examples(examples: Iterable) -> list[ChoiceItem]:
    return [item_from_example(e) for e in examples]


# ---------------------------------------------------------------- requests


def requests_of(item: ChoiceItem, form: str = "cloze") -> list[tuple[str, str]]:
    """The `(context, continuation)` request of each choice, in choice order."""
    from ..data.benchmarks import LETTERS, format_prompt

    if form == "cloze":
        context = f"Question: {item.question}\nAnswer:"
        conts = list(item.choices)
    elif form == "letters":
        if len(item.choices) > len(LETTERS):
            raise UserError(
                f"{where(item.source, item.row, CHOICES_FIELD)}: {len(item.choices)} choices, more than the "
                f"{len(LETTERS)} letters of the letters form; use the cloze form"
            )
        context = format_prompt({"question": item.question, "choices": list(item.choices)})
        conts = list(LETTERS[: len(item.choices)])
    else:
        raise UserError(f"unknown choice form '{form}'; available: {', '.join(FORMS)}")
    return [(context, TARGET_DELIMITER + c) for c in conts]


def _prefix_token_id(tokenizer) -> int:
    return tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id


def _tok_encode(tokenizer, text: str, prefix_text: str | None) -> list[int]:
    """`HFLM.tok_encode`: the tokenizer's default special tokens, none when `text` already
    starts with the prefix token's text."""
    if prefix_text is not None and text.startswith(prefix_text):
        return tokenizer.encode(text, add_special_tokens=False)
    return tokenizer.encode(text)


def encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """`(context tokens, continuation tokens)` as lm-eval's `LM._encode_pair` makes them for a
    causal model (the context must not be empty)."""
    if not context:
        raise UserError("a multiple-choice context must not be empty")
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        continuation = context[-n_spaces:] + continuation
        context = context[:-n_spaces]
    prefix_id = _prefix_token_id(tokenizer)
    prefix_text = tokenizer.decode(prefix_id) if prefix_id is not None else None
    whole = _tok_encode(tokenizer, context + continuation, prefix_text)
    ctx = _tok_encode(tokenizer, context, prefix_text)
    return ctx, whole[len(ctx) :]


# ---------------------------------------------------------------- log-likelihoods


def _is_peft(model) -> bool:
    return hasattr(model, "peft_config")


def encode_requests(
    tokenizer, requests: Sequence[tuple[str, str]], max_length: int = 512
) -> list[tuple[list[int], list[int], int]]:
    """`(input tokens, target tokens, continuation length)` of each request: the model reads
    `(context + continuation)[-(max_length + 1):][:-1]`, as lm-eval's HFLM does."""
    if max_length < 2:
        raise UserError(f"max_length must be at least 2, got {max_length}")
    encoded = []
    for context, continuation in requests:
        ctx, cont = encode_pair(tokenizer, context, continuation)
        if not cont:
            raise UserError(f"continuation {continuation!r} of context {context[-60:]!r} has no tokens of its own")
        if len(cont) > max_length:
            raise UserError(f"continuation {continuation[:60]!r} is longer than max_length {max_length} tokens")
        tokens = (ctx + cont)[-(max_length + 1) :]
        encoded.append((tokens[:-1], tokens[1:], len(cont)))
    return encoded


def loglikelihoods(
    model, tokenizer, requests: Sequence[tuple[str, str]], batch_size: int = 16, max_length: int = 512
) -> np.ndarray:
    """(n,) float64: the summed continuation log-likelihood of each `(context, continuation)`
    request under `model` (lm-eval's `HFLM.loglikelihood`, its first element). Runs in eval
    mode without gradients; the model's training mode is restored."""
    return encoded_loglikelihoods(model, encode_requests(tokenizer, requests, max_length), batch_size)


def encoded_loglikelihoods(model, encoded: Sequence[tuple[list[int], list[int], int]], batch_size: int = 16):
    """`loglikelihoods` of requests already encoded by `encode_requests`.

    Requests with the same input tokens and continuation length (the choices of one item in
    the `letters` form: one-token continuations after the same context) share one forward
    row, as lm-eval's logits cache does; batches hold rows of similar lengths."""
    if batch_size < 1:
        raise UserError(f"batch size must be at least 1, got {batch_size}")
    out = np.zeros(len(encoded), dtype=np.float64)
    if not encoded:
        return out
    groups: dict[tuple, list[int]] = {}
    for i, (inp, _, n_cont) in enumerate(encoded):
        groups.setdefault((tuple(inp), n_cont), []).append(i)
    rows = list(groups.values())  # request indices that share one forward row
    order = sorted(range(len(rows)), key=lambda g: -len(encoded[rows[g][0]][0]))  # little padding per batch
    device = next(model.parameters()).device
    base, head = getattr(model, "base_model", None), model.get_output_embeddings()
    split = head is not None and base is not None and base is not model and not _is_peft(model)
    softcap = getattr(model.config, "final_logit_softcapping", None)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for start in range(0, len(order), batch_size):
                chunk = [rows[g] for g in order[start : start + batch_size]]
                width = len(encoded[chunk[0][0]][0])
                ids = torch.zeros((len(chunk), width), dtype=torch.long)
                attn = torch.zeros_like(ids)
                scored = torch.zeros((len(chunk), width), dtype=torch.bool)
                for r, members in enumerate(chunk):
                    inp, _, n_cont = encoded[members[0]]
                    ids[r, : len(inp)] = torch.tensor(inp)
                    attn[r, : len(inp)] = 1
                    scored[r, len(inp) - n_cont : len(inp)] = True
                ids, attn, scored = ids.to(device), attn.to(device), scored.to(device)
                if split:  # the LM head only at the scored positions
                    hidden = base(input_ids=ids, attention_mask=attn).last_hidden_state
                    logits = head(hidden[scored]).float()
                else:
                    logits = model(input_ids=ids, attention_mask=attn).logits[scored].float()
                if softcap:
                    logits = torch.tanh(logits / softcap) * softcap
                logp = torch.log_softmax(logits, dim=-1)  # (scored positions, vocabulary), row by row
                index, positions, targets = [], [], []
                offset = 0
                for members in chunk:
                    n_cont = encoded[members[0]][2]
                    for i in members:
                        index.append(i)
                        positions.append(range(offset, offset + n_cont))
                        targets.append(encoded[i][1][-n_cont:])
                    offset += n_cont
                flat_pos = torch.tensor([p for ps in positions for p in ps], device=device)
                flat_tgt = torch.tensor([t for ts in targets for t in ts], device=device)
                owner = torch.tensor([k for k, ps in enumerate(positions) for _ in ps], device=device)
                per_request = torch.zeros(len(index), dtype=torch.float64, device=device)
                per_request.index_add_(0, owner, logp[flat_pos, flat_tgt].double())
                out[np.asarray(index)] = per_request.cpu().numpy()
    finally:
        model.train(was_training)
    return out


def request_loglikelihoods(model, encoded: Sequence[tuple[list[int], list[int], int]], batch_size: int = 8):
    """(n,) float32 tensor: `encoded_loglikelihoods` with autograd on (each request its own
    row; the model's mode and grad setting are the caller's), for an objective over the choices
    that is differentiated, e.g. `choice_ce_sum`. The LM head runs only from the first scored
    position of each batch where the model allows it."""
    from .gradients import _keeps_logits

    device = next(model.parameters()).device
    softcap = getattr(model.config, "final_logit_softcapping", None)
    keeps = _keeps_logits(model)
    values: list = [None] * len(encoded)
    order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i][0]))
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        width = len(encoded[chunk[0]][0])
        ids = torch.zeros((len(chunk), width), dtype=torch.long)
        attn = torch.zeros_like(ids)
        for r, i in enumerate(chunk):
            inp = encoded[i][0]
            ids[r, : len(inp)] = torch.tensor(inp)
            attn[r, : len(inp)] = 1
        first = min(len(encoded[i][0]) - encoded[i][2] for i in chunk)  # the first scored position
        kwargs = {"logits_to_keep": width - first} if keeps else {}
        logits = model(input_ids=ids.to(device), attention_mask=attn.to(device), **kwargs).logits
        offset = width - logits.shape[1]  # column 0 of `logits` is position `offset`
        for r, i in enumerate(chunk):
            inp, tgt, n_cont = encoded[i]
            rows = logits[r, len(inp) - n_cont - offset : len(inp) - offset].float()
            if softcap:
                rows = torch.tanh(rows / softcap) * softcap
            target = torch.tensor(tgt[-n_cont:], device=device)
            values[i] = torch.log_softmax(rows, dim=-1).gather(1, target[:, None]).sum()
    return torch.stack(values) if values else torch.zeros(0)


def choice_ce_sum(model, requests: "ChoiceRequests", items: Sequence[int], batch_size: int = 8):
    """Differentiable sum over `items` (indices into `requests.items`) of each item's gold-choice
    cross-entropy over its choices, `logsumexp(ll) - ll[gold]` (`choice_cross_entropy`)."""
    spans = [(requests.bounds[j], requests.bounds[j + 1]) for j in items]
    encoded = [requests.encoded[k] for a, b in spans for k in range(a, b)]
    ll = request_loglikelihoods(model, encoded, batch_size)
    total, k = ll.new_zeros(()), 0
    for j, (a, b) in zip(items, spans):
        item_ll = ll[k : k + b - a]
        total = total + torch.logsumexp(item_ll, 0) - item_ll[requests.items[j].gold]
        k += b - a
    return total


# ---------------------------------------------------------------- per-item figures


def choice_cross_entropy(ll: Sequence[float], gold: int) -> float:
    """`-log softmax(ll)[gold]`: the gold choice's cross-entropy over the choices."""
    ll = np.asarray(ll, dtype=np.float64)
    top = ll.max()
    return float(top + math.log(np.exp(ll - top).sum()) - ll[gold])


@dataclass
class ChoiceScores:
    """Per item: `loglik` (each choice's summed log-likelihood), `gold` (its index), `ce` (gold choice's
    cross-entropy over the choices), `acc` and `acc_norm` (0/1)."""

    loglik: list[np.ndarray]
    gold: np.ndarray
    ce: np.ndarray
    acc: np.ndarray
    acc_norm: np.ndarray
    form: str

    def summary(self) -> dict[str, float]:
        return {
            "choice_ce": float(self.ce.mean()),
            "choice_acc": float(self.acc.mean()),
            "choice_acc_norm": float(self.acc_norm.mean()),
            "n": len(self.ce),
        }


def scores_from_loglik(items: Sequence[ChoiceItem], loglik: Sequence[Sequence[float]], form: str) -> ChoiceScores:
    """Per-item figures from each item's choice log-likelihoods."""
    if len(items) != len(loglik):
        raise ValueError(f"{len(items)} items but {len(loglik)} log-likelihood lists")
    lls = [np.asarray(x, dtype=np.float64) for x in loglik]
    ce = np.array([choice_cross_entropy(x, it.gold) for x, it in zip(lls, items)])
    acc = np.array([float(int(np.argmax(x)) == it.gold) for x, it in zip(lls, items)])
    lengths = [np.array([float(len(c)) for c in _continuations(it, form)]) for it in items]
    acc_norm = np.array([float(int(np.argmax(x / n)) == it.gold) for x, n, it in zip(lls, lengths, items)])
    gold = np.array([it.gold for it in items], dtype=np.int64)
    return ChoiceScores(loglik=lls, gold=gold, ce=ce, acc=acc, acc_norm=acc_norm, form=form)


def _continuations(item: ChoiceItem, form: str) -> list[str]:
    """The choice strings lm-eval's `acc_norm` divides by (without the delimiter)."""
    from ..data.benchmarks import LETTERS

    return list(item.choices) if form == "cloze" else list(LETTERS[: len(item.choices)])


class ChoiceRequests:
    """Items with their requests encoded once (a validation set scored at every step)."""

    def __init__(self, items: Sequence, tokenizer, form: str = "cloze", max_length: int = 512):
        if form not in FORMS:
            raise UserError(f"unknown choice form '{form}'; available: {', '.join(FORMS)}")
        self.items = [e if isinstance(e, ChoiceItem) else item_from_example(e) for e in items]
        self.form = form
        requests, self.bounds = [], [0]
        for it in self.items:
            requests += requests_of(it, form)
            self.bounds.append(len(requests))
        self.encoded = encode_requests(tokenizer, requests, max_length)

    def score(self, model, batch_size: int = 16) -> ChoiceScores:
        flat = encoded_loglikelihoods(model, self.encoded, batch_size)
        lls = [flat[a:b] for a, b in zip(self.bounds, self.bounds[1:])]
        return scores_from_loglik(self.items, lls, self.form)


def score_items(
    model,
    tokenizer,
    items: Sequence[ChoiceItem],
    form: str = "cloze",
    batch_size: int = 16,
    max_length: int = 512,
) -> ChoiceScores:
    """Score `items` with a loaded model (a `PreTrainedModel` or a PEFT/LoRA model)."""
    return ChoiceRequests(items, tokenizer, form=form, max_length=max_length).score(model, batch_size)
