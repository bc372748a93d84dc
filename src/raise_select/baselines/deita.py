"""`deita`: complexity x quality scores from scorer LMs, then a diversity filter (Liu et al.,
2024; reference code hkust-nlp/deita).

- Scores (`selection/scorer/base.py`, `llama_scorer.py`): the scorer reads the reference's
  prompt template and the score is the expectation over the softmax of the next-token
  logits of the tokens "1".."6" (weights 1..6). Complexity rates each user turn, quality
  each (user, assistant) pair.
- Evol score (`filter/combined_filter.py`): per turn complexity x quality, summed over the
  turns of a conversation (the product for a single-turn example).
- Diversity filter (`filter/base.py`): in order of decreasing evol score, an example is
  admitted only if its cosine similarity to every admitted one is at most `threshold`,
  until the budget is full. The reference embeds each conversation with a causal LM's
  last-layer hidden state at the last token (`embedder/clm_embedder.py`); this is what
  `embedder=<model id or folder>` does; a sentence-transformers model there (a folder with
  `modules.json`, e.g. the short name `all-minilm-l6-v2`) embeds the example's text with
  it instead. The default `embedder="features"` uses the
  featurized `sem` embedding instead (no extra LM pass; it is pooled to d_sem dimensions,
  so the same threshold admits fewer near-duplicates than on full hidden states).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import ClassVar, Sequence

import numpy as np
import torch

from ..data.pools import Example, Pool
from ..data.templates import render_prompt
from ..errors import UserError
from .base import Selection, SelectionContext
from .cache import JsonlCache
from .lm import left_padded_batch

log = logging.getLogger(__name__)

# Verbatim from the reference's Llama scorer (spaces and newlines included).
COMPLEXITY_TEMPLATE = (
    "You are a helpful assistant. Please identify the complexity score of the following user query. "
    "\n##Query: {instruction}  \n##Complexity: "
)
QUALITY_TEMPLATE = (
    "You are a helpful assistant. Please identify the quality score of the Response corresponding to the Question. "
    "\n #Question#:\n{instruction}\n#Response#:\n{output} \n##Quality: "
)
SCORE_WEIGHTS = (1.0, 2.0, 3.0, 4.0, 5.0, 6.0)


def score_token_ids(tokenizer) -> list[int]:
    """Ids of the tokens "1".."6" (Llama's sentencepiece gives 29896, 29906, ... as in the reference)."""
    ids = []
    for digit in "123456":
        tid = tokenizer.convert_tokens_to_ids(digit)
        if tid is None or tid == tokenizer.unk_token_id:
            tid = tokenizer(digit, add_special_tokens=False)["input_ids"][-1]
        ids.append(int(tid))
    return ids


def expected_scores(next_logits: torch.Tensor, token_ids: Sequence[int]) -> torch.Tensor:
    """(B,) sum_s s * softmax(logits["1".."6"])_s for next-token logits (B, V)."""
    probs = torch.softmax(next_logits[:, list(token_ids)].float(), dim=-1)
    return probs @ torch.tensor(SCORE_WEIGHTS, device=probs.device)


@torch.no_grad()
def score_texts(model, tokenizer, texts: Sequence[str], batch_size: int, max_length: int, desc: str) -> np.ndarray:
    """Expected 1..6 score of each prompt from the logits at its next position."""
    from ..progress import progress_bar

    ids = score_token_ids(tokenizer)
    device = next(model.parameters()).device
    model.eval()
    out = []
    for s in progress_bar(range(0, len(texts), batch_size), desc=desc, unit="batch"):
        enc = left_padded_batch(tokenizer, texts[s : s + batch_size], max_length, device)
        logits = model(**enc).logits[:, -1]
        out.append(expected_scores(logits, ids).cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0)


@torch.no_grad()
def last_token_embeddings(model, tokenizer, texts: Sequence[str], batch_size: int, max_length: int) -> np.ndarray:
    """(N, H) last-layer hidden state at each text's last token (the reference's CLM embedder)."""
    from ..progress import progress_bar

    device = next(model.parameters()).device
    model.eval()
    out = []
    for s in progress_bar(range(0, len(texts), batch_size), desc="deita embeddings", unit="batch"):
        enc = left_padded_batch(tokenizer, texts[s : s + batch_size], max_length, device)
        hidden = model(**enc, output_hidden_states=True).hidden_states[-1]
        out.append(hidden[:, -1].float().cpu().numpy())
    return np.concatenate(out)


def turns(example: Example) -> list[tuple[str, str]]:
    """(user turn, assistant reply) pairs of a conversation; system turns are not scored."""
    msgs = [(r, c) for r, c in example.messages if r != "system"]
    return [(c, msgs[i + 1][1]) for i, (r, c) in enumerate(msgs[:-1]) if r == "user" and msgs[i + 1][0] == "assistant"]


def evol_scores(complexity: list[list[float]], quality: list[list[float]]) -> np.ndarray:
    """Per example: sum over turns of complexity x quality (the reference's final_score)."""
    return np.array([float(np.sum(np.asarray(c) * np.asarray(q))) for c, q in zip(complexity, quality)])


def diversity_filter(
    embeddings: np.ndarray, order: Sequence[int], threshold: float, budget: int
) -> tuple[list[int], int]:
    """Walk `order`, admitting a row only if its cosine similarity to every admitted row is
    at most `threshold`; stop at `budget`. Returns (admitted rows, rows rejected)."""
    emb = torch.as_tensor(np.asarray(embeddings, dtype=np.float32))
    emb = emb / emb.norm(dim=1, keepdim=True).clamp(min=1e-12)
    admitted_vecs = torch.empty((budget, emb.shape[1]))
    admitted: list[int] = []
    rejected = 0
    for i in order:
        if len(admitted) >= budget:
            break
        if admitted and float((admitted_vecs[: len(admitted)] @ emb[i]).max()) > threshold:
            rejected += 1
            continue
        admitted_vecs[len(admitted)] = emb[i]
        admitted.append(int(i))
    return admitted, rejected


@dataclass
class Deita:
    """Evol score = complexity x quality, then the diversity filter, to the budget."""

    name: ClassVar[str] = "deita"
    dynamic: ClassVar[bool] = False

    complexity_scorer: str = field(
        default="hkust-nlp/deita-complexity-scorer", metadata={"help": "complexity scorer LM: hub id or folder"}
    )
    quality_scorer: str = field(
        default="hkust-nlp/deita-quality-scorer", metadata={"help": "quality scorer LM: hub id or folder"}
    )
    threshold: float = field(
        default=0.9,
        metadata={
            "help": "diversity filter: admit an example only if its cosine similarity to every admitted one is <= this"
        },
    )
    embedder: str = field(
        default="features",
        metadata={
            "help": "embedding of the diversity filter: features (the featurized `sem`), a sentence-transformers model "
            "(e.g. all-minilm-l6-v2), or an LM id/folder (last-token hidden state)"
        },
    )
    batch_size: int = field(default=8, metadata={"help": "examples per scorer / embedder forward pass"})
    max_length: int = field(
        default=2048, metadata={"help": "scorer / embedder token limit (prompts cut from the left)"}
    )
    dtype: str = field(default="float32", metadata={"help": "scorer / LM embedder weights dtype (bfloat16 on GPUs)"})

    def needs_features(self) -> bool:
        return self.embedder == "features"  # the featurized `sem` as the diversity filter's embedding

    def select(self, pool: Pool, budget: int, ctx: SelectionContext) -> Selection:
        if not -1.0 <= self.threshold <= 1.0:
            raise UserError(f"deita: threshold must be a cosine similarity in [-1, 1], got {self.threshold}")
        pairs = [turns(e) for e in pool.examples]
        complexity = self._score(pool, pairs, ctx, "complexity", self.complexity_scorer)
        quality = self._score(pool, pairs, ctx, "quality", self.quality_scorer)
        evol = evol_scores(complexity, quality)
        order = np.lexsort((np.arange(len(evol)), -evol))
        admitted, rejected = diversity_filter(self._embeddings(pool, ctx), order, self.threshold, budget)
        info = {
            "threshold": self.threshold,
            "embedder": self.embedder,
            "rejected_as_similar": rejected,
            "complexity_mean": float(np.mean([np.mean(c) for c in complexity])),
            "quality_mean": float(np.mean([np.mean(q) for q in quality])),
        }
        if len(admitted) < budget:
            info["short_of_budget"] = budget - len(admitted)
        return Selection(
            indices=admitted, scores=evol[admitted].tolist(), info=info, pool_scores=Selection.per_row(evol)
        )

    def _score(
        self, pool: Pool, pairs: list[list[tuple[str, str]]], ctx: SelectionContext, kind: str, scorer: str
    ) -> list[list[float]]:
        from ..features.featurize import model_fingerprint
        from ..io import sha256_text

        cache = JsonlCache(ctx.cache_path(f"deita-{kind}.jsonl"))
        scorer_key = f"{scorer}@{sha256_text(model_fingerprint(scorer))[:16]}"  # its contents, not only its path

        def key(e: Example) -> str:
            return f"{e.id}:{scorer_key}"

        todo = [i for i, e in enumerate(pool.examples) if key(e) not in cache]
        if todo:
            from ..models.loading import load_model_and_tokenizer

            model, tok = load_model_and_tokenizer(scorer, dtype=self.dtype, device=ctx.torch_device())
            texts, owner = [], []
            for i in todo:
                for instruction, response in pairs[i]:
                    texts.append(
                        COMPLEXITY_TEMPLATE.format(instruction=instruction)
                        if kind == "complexity"
                        else QUALITY_TEMPLATE.format(instruction=instruction, output=response)
                    )
                    owner.append(i)
            flat = score_texts(model, tok, texts, self.batch_size, self.max_length, f"deita {kind}")
            per_example: dict[int, list[float]] = {i: [] for i in todo}
            for i, s in zip(owner, flat.tolist()):
                per_example[i].append(s)
            for i in todo:
                cache.put(
                    key(pool.examples[i]), {"id": pool.examples[i].id, "scorer": scorer, "scores": per_example[i]}
                )
            del model
        return [cache.get(key(e))["scores"] for e in pool.examples]

    def _embeddings(self, pool: Pool, ctx: SelectionContext) -> np.ndarray:
        if self.embedder == "features":
            return ctx.require_features(self.name).sem
        from ..models.loading import load_model_and_tokenizer
        from ..models.resolve import is_sentence_transformer, resolve_model

        if is_sentence_transformer(resolve_model(self.embedder)):
            from ..features.semantic import encode_texts, example_text, load_sentence_encoder

            encoder = load_sentence_encoder(self.embedder, ctx.torch_device())
            return encode_texts(encoder, [example_text(e) for e in pool.examples], self.batch_size)
        model, tok = load_model_and_tokenizer(self.embedder, dtype=self.dtype, device=ctx.torch_device())
        texts = [render_prompt(e.prompt_messages, ctx.template, tok, e.record) + e.response for e in pool.examples]
        return last_token_embeddings(model, tok, texts, self.batch_size, self.max_length)
