"""Response log-probabilities and hidden-state embeddings from batched forward passes.

Every example d = (x, y) becomes two token sequences:

- conditional:   [s] + x + y   scores log P(y|x) and yields the hidden states for E(d);
- unconditional: [s] + y       scores log P(y) without the prompt.

`s` is the tokenizer's BOS token (EOS when it has none, the GPT-2 convention), so that the
first response token is scored after the same single token in the unconditional pass, as
the IFD reference code does by letting the tokenizer add BOS. The prompt and the response
are tokenized separately, so y is the same token sequence in both passes and the ratio of
eq. 3's two log-probabilities compares like with like. No EOS is appended to y.

Truncation to `max_length` (counted with the start token) keeps the response and cuts
the prompt from the left. A response that alone exceeds the limit keeps its first tokens
and leaves room for the last `min(len(x), max_length // 4)` prompt tokens, so that
log P(y|x) still conditions on a prompt; such rows are flagged `truncated`.

Speed: both sequences of every example of a shard are sorted by length and padded only
within a batch (length bucketing); the base model (`model.base_model`) runs once per
batch, and the LM head and the log-softmax normaliser are applied only to the rows that
predict response tokens, never to the prompt positions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch

from ..data.pools import Example
from ..data.templates import render_prompt
from ..errors import UserError

# Rows of the LM head computed at once: a (rows x vocab) logits block of 16 MiB stays close
# to the CPU caches while log_softmax reads it back (at 32k vocab, 4x faster than 128 MiB).
_LOGIT_ELEMENTS_PER_CHUNK = 1 << 22


@dataclass(frozen=True)
class EncodedExample:
    """Token ids of one example after truncation (prompt without the start token)."""

    prompt_ids: list[int]
    response_ids: list[int]
    response_truncated: bool  # the response alone was over max_length and was cut
    prompt_cut: int  # prompt tokens dropped from the left


def start_token_id(tokenizer) -> int:
    """The token that precedes x (conditional) or y (unconditional): BOS, else EOS."""
    for tid in (tokenizer.bos_token_id, tokenizer.eos_token_id):
        if tid is not None:
            return int(tid)
    raise UserError("the tokenizer has neither a BOS nor an EOS token to start the unconditional pass with")


def truncate(prompt_ids: Sequence[int], response_ids: Sequence[int], max_length: int) -> EncodedExample:
    """Fit [s] + x + y into `max_length` tokens (see the module docstring)."""
    budget = max_length - 1  # the start token
    p, r = len(prompt_ids), len(response_ids)
    if r <= budget:
        keep_p, keep_r = min(p, budget - r), r
    else:
        # The response alone is too long: keep a quarter of the budget for the end of the
        # prompt (at least one token, so y_1 is still predicted from its context).
        keep_p = min(p, max(1, budget // 4))
        keep_r = budget - keep_p
    return EncodedExample(
        prompt_ids=list(prompt_ids[p - keep_p :]),
        response_ids=list(response_ids[:keep_r]),
        response_truncated=keep_r < r,
        prompt_cut=p - keep_p,
    )


def encode_examples(examples: Sequence[Example], tokenizer, template: str, max_length: int) -> list[EncodedExample]:
    """Render each prompt with `template`, tokenize prompt and response, and truncate."""
    start = start_token_id(tokenizer)
    prompts = [render_prompt(e.prompt_messages, template, tokenizer, e.record) for e in examples]
    prompt_ids = tokenizer(prompts, add_special_tokens=False)["input_ids"]
    response_ids = tokenizer([e.response for e in examples], add_special_tokens=False)["input_ids"]
    out = []
    for p, r in zip(prompt_ids, response_ids):
        if p and p[0] == start:  # chat templates may write BOS themselves; we add it once
            p = p[1:]
        out.append(truncate(p, r, max_length))
    return out


@dataclass
class ResponseScores:
    """Per example: sums of log P(y|x) and log P(y) over response tokens, and E(d)."""

    logp_cond_sum: np.ndarray  # (n,) float64
    logp_uncond_sum: np.ndarray  # (n,) float64
    embedding: np.ndarray | None  # (n, hidden) float32: mean last hidden state over y's positions in [s]+x+y
    rds: np.ndarray | None = None  # (n, hidden) float32: RDS+ position-weighted mean over every position of [s]+x+y


def rds_weighted_mean(hidden: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """RDS+'s representation (hamishivi/automated-instruction-selection,
    `compute_influence_cosinesim.py`, `--pooling weighted_mean`, after SGPT): the last hidden
    state averaged over the positions of the sequence with weight p / sum(p) at position
    p = 1..L, so later tokens, which have read more of the sequence, count more.

    hidden (B, T, H), right-padded; lengths (B,) real tokens per row. The reference weights
    every position of its padded batch, pads included, so its vectors depend on the batch a row
    lands in; here the weights stop at each row's own length (the same as the reference with
    one row per batch)."""
    pos = torch.arange(1, hidden.shape[1] + 1, device=hidden.device, dtype=torch.float32)
    w = pos[None, :] * (pos[None, :] <= lengths[:, None].float())
    w = w / w.sum(dim=1, keepdim=True)
    return torch.einsum("bt,bth->bh", w, hidden.float())


def forwarded_tokens(len_prompt, len_response) -> int:
    """Tokens `ResponseScorer.score` feeds the model for examples of these prompt and response
    lengths: [start] + prompt + response, then [start] + response (no padding)."""
    return int(np.sum(2 + np.asarray(len_prompt, dtype=np.int64) + 2 * np.asarray(len_response, dtype=np.int64)))


class ResponseScorer:
    """Scores encoded examples with a causal LM in length-bucketed batches."""

    def __init__(
        self,
        model,
        start_id: int,
        pad_id: int,
        batch_size: int,
        device: torch.device,
        embed: bool = True,
        compile: bool = False,
        rds: bool = False,
    ):
        self.model = model
        self.base = torch.compile(model.base_model, dynamic=True) if compile else model.base_model
        self.compiled = compile
        self.head = model.get_output_embeddings()
        if self.head is None or self.base is model:
            raise UserError(f"{type(model).__name__}: need a causal LM with a separate base model and LM head")
        # Gemma-2 style models squash logits; apply the same transform the full model would.
        self.softcap = getattr(model.config, "final_logit_softcapping", None)
        # A model loaded in bfloat16 or float16 keeps its body in that dtype, but the head and
        # the normaliser run in float32: rounded logits would cost far more accuracy in log P
        # (a 16-bit logit of size 20 is off by up to 0.06) than the body's rounding does.
        self.head_weight = self.head.weight.float()
        self.head_bias = None if getattr(self.head, "bias", None) is None else self.head.bias.float()
        self.start_id, self.pad_id = start_id, pad_id
        self.batch_size = batch_size
        self.device = device
        self.embed = embed
        self.rds = rds

    @torch.inference_mode()
    def score(self, encoded: Sequence[EncodedExample], on_batch: Callable[[int], None] | None = None) -> ResponseScores:
        """Score every example; `on_batch(k)` is told after each batch of k sequences (2 per example)."""
        n = len(encoded)
        # (tokens, example index, is_conditional, index of the first response token)
        seqs: list[tuple[list[int], int, bool, int]] = []
        for i, e in enumerate(encoded):
            seqs.append(([self.start_id, *e.prompt_ids, *e.response_ids], i, True, 1 + len(e.prompt_ids)))
            seqs.append(([self.start_id, *e.response_ids], i, False, 1))
        order = sorted(range(len(seqs)), key=lambda k: len(seqs[k][0]))  # stable: same batches every run
        cond_sum = np.zeros(n, dtype=np.float64)
        uncond_sum = np.zeros(n, dtype=np.float64)
        hidden_size = self.head.weight.shape[1]
        embedding = np.zeros((n, hidden_size), dtype=np.float32) if self.embed else None
        rds = np.zeros((n, hidden_size), dtype=np.float32) if self.rds else None
        for b0 in range(0, len(order), self.batch_size):
            batch = [seqs[k] for k in order[b0 : b0 + self.batch_size]]
            sums, emb, rds_rows = self._score_batch_checked(batch)
            for (tokens, i, cond, _), s in zip(batch, sums):
                if cond:
                    cond_sum[i] = s
                else:
                    uncond_sum[i] = s
            if emb is not None:
                cond_idx = [i for _, i, cond, _ in batch if cond]
                embedding[cond_idx] = emb
            if rds_rows is not None:
                rds[[i for _, i, cond, _ in batch if cond]] = rds_rows
            if on_batch is not None:
                on_batch(len(batch))
        return ResponseScores(cond_sum, uncond_sum, embedding, rds)

    def _score_batch_checked(self, batch) -> tuple[list[float], np.ndarray | None, np.ndarray | None]:
        if not self.compiled:
            return self._score_batch(batch)
        try:
            return self._score_batch(batch)
        except torch._dynamo.exc.TorchDynamoException as e:  # no C++ compiler, an unsupported op, ...
            why = " ".join(str(e).split())[:300]
            raise UserError(
                f"torch.compile of the model failed ({type(e).__name__}: {why}); run without --compile"
            ) from None

    def _score_batch(self, batch) -> tuple[list[float], np.ndarray | None, np.ndarray | None]:
        dev = self.device
        width = max(len(t) for t, *_ in batch)
        ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
        for row, (tokens, *_) in enumerate(batch):
            ids[row, : len(tokens)] = torch.tensor(tokens)
        ids = ids.to(dev)
        # Padding is on the right and attention is causal, so no real position ever sees a
        # pad: no attention mask is needed (it would only cost a (B, T, T) mask per layer).
        hidden = self.base(input_ids=ids).last_hidden_state  # (B, T, H)

        # Row r of the gathered block is the position predicting one response token.
        n_resp = torch.tensor([len(t) - start for t, _, _, start in batch], device=dev)
        starts = torch.tensor([start for *_, start in batch], device=dev)
        seq_of_row = torch.repeat_interleave(torch.arange(len(batch), device=dev), n_resp)
        first_row = torch.cumsum(n_resp, 0) - n_resp
        offset = torch.arange(int(n_resp.sum()), device=dev) - first_row[seq_of_row]
        target_pos = starts[seq_of_row] + offset
        rows = hidden[seq_of_row, target_pos - 1]
        targets = ids[seq_of_row, target_pos]

        token_logp = torch.empty(rows.shape[0], dtype=torch.float32, device=dev)
        vocab = self.head.weight.shape[0]
        chunk = max(1, _LOGIT_ELEMENTS_PER_CHUNK // vocab)
        for c0 in range(0, rows.shape[0], chunk):
            logits = torch.nn.functional.linear(rows[c0 : c0 + chunk].float(), self.head_weight, self.head_bias)
            if self.softcap:
                logits = torch.tanh(logits / self.softcap) * self.softcap
            # One fused log_softmax pass is cheaper than logsumexp's max/sub/exp/sum passes.
            token_logp[c0 : c0 + chunk] = (
                torch.log_softmax(logits, dim=-1).gather(1, targets[c0 : c0 + chunk, None]).squeeze(1)
            )
        sums = torch.zeros(len(batch), dtype=torch.float64, device=dev)
        sums.index_add_(0, seq_of_row, token_logp.double())

        emb = None
        if self.embed:
            is_cond = torch.tensor([cond for _, _, cond, _ in batch], device=dev)
            keep = is_cond[seq_of_row]
            pooled = torch.zeros((len(batch), hidden.shape[-1]), dtype=torch.float32, device=dev)
            pooled.index_add_(0, seq_of_row[keep], hidden[seq_of_row[keep], target_pos[keep]].float())
            pooled = pooled[is_cond] / n_resp[is_cond, None].float()
            emb = pooled.cpu().numpy()
        rds = None
        if self.rds:
            cond_rows = [r for r, (_, _, cond, _) in enumerate(batch) if cond]
            if cond_rows:
                lengths = torch.tensor([len(batch[r][0]) for r in cond_rows], device=dev)
                rds = rds_weighted_mean(hidden[cond_rows], lengths).cpu().numpy()
        return sums.cpu().tolist(), emb, rds
