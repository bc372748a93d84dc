"""`rose`: ROSE, reward-oriented selection (Wu et al., "ROSE: A Reward-Oriented Data Selection
Framework for LLM Task-Specific Instruction Tuning", 2024; `../shared/papers/rose-summary.txt`).

ROSE is LESS's pipeline (`less.py`: LoRA warm-up on a random 5%, per-checkpoint
Adam-preconditioned LoRA gradients of every pool example, random projection, checkpoint-
weighted mean cosine similarity) with the validation gradient taken from a pairwise
preference loss instead of the SFT loss. For a preference triple (x, y_w, y_l):

    L = -log sigmoid(beta * [(log p(y_w|x) - log p_ref(y_w|x)) - (log p(y_l|x) - log p_ref(y_l|x))])
    grad L = -beta * sigmoid(-margin) * (grad log p(y_w|x) - grad log p(y_l|x))

(the DPO loss; the closed form is what is computed, in one backward per pair). log p is the
sum of the response tokens' log-probabilities (`length_normalize: true` for their mean), and
the reference policy p_ref is the base model, i.e. the warm-up model with its LoRA adapter
switched off. Against length effects ROSE normalises the gradients: every projected training
and validation gradient is scaled to unit L2 norm before the inner products (LESS's cosine),
so a short sequence's larger gradient norm does not decide its score.

No reference code of ROSE is public; the loss and its gradient follow the paper's equations,
everything else LESS's reference code. The preference validation set is a file in TRL's
`prompt` / `chosen` / `rejected` format (strings, or conversational lists of
`{role, content}` messages); without one, `preference_pairs_from_qa` builds a stand-in from
the QA validation set: the gold answer is chosen, another validation question's answer
(seeded, never the same text) rejected. That stand-in tests answer relevance, not the
quality judgments of a real preference set, and is written to `<out>/rose_preferences.jsonl`.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Sequence

import numpy as np
import torch

from ..data.pools import Example, example_id
from ..errors import UserError, where
from ..io import write_text_atomic
from .base import SelectionContext
from .less import LESS, RademacherProjector

log = logging.getLogger(__name__)

_ROLES = {"user": "user", "human": "user", "system": "system", "assistant": "assistant", "gpt": "assistant"}


@dataclass(frozen=True)
class PreferencePair:
    """A prompt (as `(role, content)` turns) with a chosen and a rejected response."""

    prompt: tuple[tuple[str, str], ...]
    chosen: str
    rejected: str

    def example(self, response: str) -> Example:
        msgs = (*self.prompt, ("assistant", response))
        return Example(id=example_id(msgs), messages=msgs, record={})

    def to_trl(self) -> dict:
        prompt = (
            self.prompt[0][1]
            if len(self.prompt) == 1 and self.prompt[0][0] == "user"
            else [{"role": r, "content": c} for r, c in self.prompt]
        )
        return {"prompt": prompt, "chosen": self.chosen, "rejected": self.rejected}


def _prompt_turns(value, at: str) -> tuple[tuple[str, str], ...]:
    if isinstance(value, str):
        if not value.strip():
            raise UserError(f"{at}: empty prompt")
        return (("user", value),)
    if isinstance(value, list) and value and all(isinstance(t, dict) and "role" in t and "content" in t for t in value):
        turns = []
        for t in value:
            role = _ROLES.get(str(t["role"]).lower())
            if role is None:
                raise UserError(f"{at}: unknown role {t['role']!r}")
            turns.append((role, str(t["content"])))
        return tuple(turns)
    raise UserError(f"{at}: expected a string or a list of {{role, content}} messages")


def _response(value, at: str) -> str:
    if isinstance(value, list):  # conversational: the assistant turn(s)
        value = "".join(
            str(t.get("content", "")) for t in value if isinstance(t, dict) and t.get("role") == "assistant"
        )
    if not isinstance(value, str) or not value.strip():
        raise UserError(f"{at}: expected a non-empty response (a string or assistant messages)")
    return value


def read_preferences(spec: str | Path, limit: int | None = None) -> list[PreferencePair]:
    """Preference triples from a JSON/JSONL/Parquet/CSV file or folder in TRL's format."""
    from ..data.pools import rows_from_path

    path = Path(spec)
    if not path.exists():
        raise UserError(f"{spec}: preference file or folder not found")
    pairs = []
    for source, row, rec in rows_from_path(path):
        at = where(source, row)
        if not isinstance(rec, dict):
            raise UserError(f"{at}: expected a record with 'prompt', 'chosen' and 'rejected'")
        for name in ("prompt", "chosen", "rejected"):
            if name not in rec or rec[name] is None:
                raise UserError(f"{at}, field '{name}': missing (TRL preference format: prompt, chosen, rejected)")
        pairs.append(
            PreferencePair(
                _prompt_turns(rec["prompt"], f"{at}, field 'prompt'"),
                _response(rec["chosen"], f"{at}, field 'chosen'"),
                _response(rec["rejected"], f"{at}, field 'rejected'"),
            )
        )
        if limit is not None and len(pairs) >= limit:
            break
    if not pairs:
        raise UserError(f"{spec}: no preference triples")
    return pairs


def preference_pairs_from_qa(examples: Sequence[Example], seed: int = 0) -> list[PreferencePair]:
    """A stand-in preference set: each example's gold answer chosen, the answer of another
    example (seeded, with a different text) rejected. Examples whose answer no other example
    differs from are left out."""
    if len(examples) < 2:
        raise UserError(
            f"rose: the validation set has {len(examples)} example(s); the stand-in preference set pairs each "
            "answer with another example's, so it needs at least 2 with different answers; give a "
            "preference file with rose.preference=FILE (prompt/chosen/rejected)"
        )
    answers = [e.response for e in examples]
    rng = np.random.default_rng(seed)
    pairs = []
    for i, e in enumerate(examples):
        others = [j for j, a in enumerate(answers) if j != i and a.strip() != e.response.strip()]
        if others:
            pairs.append(
                PreferencePair(tuple(e.prompt_messages), e.response, answers[others[int(rng.integers(len(others)))]])
            )
    if not pairs:
        raise UserError(
            "rose: cannot build a preference set from the validation set: every answer is the same text; "
            "give one with rose.preference=FILE (prompt/chosen/rejected)"
        )
    return pairs


def sequence_logps(logits: torch.Tensor, labels: torch.Tensor, normalize: bool = False) -> torch.Tensor:
    """(B,) sum (or, `normalize`, mean) of log p over each row's labelled (response) tokens."""
    from ..training.loop import IGNORE_INDEX

    shift_logits = logits[:, :-1].float()
    shift_labels = labels[:, 1:]
    mask = shift_labels != IGNORE_INDEX
    tok = torch.gather(shift_logits.log_softmax(-1), 2, shift_labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    total = (tok * mask).sum(1)
    return total / mask.sum(1).clamp(min=1) if normalize else total


def dpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta: float) -> torch.Tensor:
    """The DPO loss -log sigmoid(beta * ((pi_w - ref_w) - (pi_l - ref_l)))."""
    margin = beta * ((policy_chosen - ref_chosen) - (policy_rejected - ref_rejected))
    return -torch.nn.functional.logsigmoid(margin)


@dataclass
class ROSE(LESS):
    """LESS with the validation gradient of the DPO loss on a preference validation set."""

    name: ClassVar[str] = "rose"
    dynamic: ClassVar[bool] = False

    preference: str = field(
        default="",
        metadata={
            "help": "TRL preference file (prompt/chosen/rejected); empty: a stand-in built from the validation set"
        },
    )
    preference_size: int = field(default=0, metadata={"help": "use at most this many preference triples (0: all)"})
    beta: float = field(default=0.1, metadata={"help": "DPO temperature beta of the validation loss"})
    length_normalize: bool = field(
        default=False, metadata={"help": "log p(y|x) as the mean over response tokens instead of the sum"}
    )

    def _rules(self) -> list[tuple[bool, str, str]]:
        return [
            *super()._rules(),
            (self.beta > 0, "beta", "must be > 0"),
            (self.target == "sft", "target", "must be sft: ROSE's validation gradient is its DPO loss's"),
            (self.preference_size >= 0, "preference_size", "must be >= 0 (0: all)"),
        ]

    def _validation(self, ctx: SelectionContext) -> list[PreferencePair]:
        if self.preference:
            pairs = read_preferences(self.preference, self.preference_size or None)
        else:
            pairs = preference_pairs_from_qa(ctx.require_validation(self.name), ctx.seed)
            if self.preference_size:
                pairs = pairs[: self.preference_size]
            log.warning(
                "rose: no preference set given (rose.preference); using a stand-in built from the validation set "
                "(gold answer chosen, another question's answer rejected)"
            )
            if ctx.out_dir is not None:
                write_text_atomic(
                    Path(ctx.out_dir) / "rose_preferences.jsonl", "".join(json.dumps(p.to_trl()) + "\n" for p in pairs)
                )
        return pairs

    def _validation_grads(
        self,
        model,
        tok,
        validation: Sequence[PreferencePair],
        ctx: SelectionContext,
        projector: RademacherProjector,
        desc: str,
    ) -> torch.Tensor:
        return self._projected_grads(
            model, validation, self.dpo_objective(model, tok, ctx.template, ctx.max_length), projector, None, desc
        )

    def dpo_objective(self, model, tok, template: str, max_length: int):
        """pair -> a scalar whose gradient is the DPO loss's: w * (log p(y_w|x) - log p(y_l|x))
        with w = -beta * sigmoid(-margin) held constant; the reference log-probs come from the
        model with its adapter switched off."""
        from .lm import encoded_batch

        device = next(model.parameters()).device

        def objective(pair: PreferencePair) -> torch.Tensor:
            batch = encoded_batch(
                [pair.example(pair.chosen), pair.example(pair.rejected)], tok, template, max_length, device
            )
            inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
            with torch.no_grad(), model.disable_adapter():
                ref = sequence_logps(model(**inputs).logits, batch["labels"], self.length_normalize)
            policy = sequence_logps(model(**inputs).logits, batch["labels"], self.length_normalize)
            margin = self.beta * ((policy[0] - ref[0]) - (policy[1] - ref[1])).detach()
            weight = -self.beta * torch.sigmoid(-margin)
            return weight * (policy[0] - policy[1])

        return objective
