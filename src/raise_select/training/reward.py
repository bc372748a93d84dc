"""The performance P(M) of a model on the validation set, whose step-to-step change is the
RAISE reward R_t = P(M_t) - P(M_{t-1}) (section 3.2).

Metrics:
- `neg_loss` (default, appendix A.2): minus the mean, over validation examples, of each
  example's mean cross-entropy on its response tokens (+ EOS). Every example weighs the
  same whatever its length, and the value does not depend on the batch size.
- `accuracy`: greedy generation, then exact match of the normalised final answer (see
  `final_answer`): the text after the last `####` (GSM8K), else after the last
  "answer is", else the last non-empty line; lower-cased, `$`, thousands commas, a
  trailing period and repeated spaces removed. Meant for short-answer sets; anything
  finer belongs in a user metric.
- `choice_ce` (multiple-choice sets): minus the mean, over items, of the gold choice's
  cross-entropy over the choices, `-log softmax(ll)[gold]`, where `ll` are the choices'
  log-likelihoods as lm-evaluation-harness's `multiple_choice` computes them
  (`evaluation.choices`, cloze form by default). Continuous and free of the answer's format.
- `choice_acc`: the share of items whose most likely choice is the gold one (lm-eval's `acc`).
- `module:function`: a user function `(model, tokenizer, examples) -> float`.

`auto` (train-policy's default) is `choice_ce` when every validation example is a
multiple-choice item and `neg_loss` otherwise (`metric_for`), as the held-out figures of
`evaluation.loss.default_metric`.

Every built-in metric has a per-item figure (`ITEM_FIGURES`: the response loss, 0/1 exact
match, the choice cross-entropy, 0/1 choice accuracy), given in the examples' order by
`Validator.item_values`; P is its mean, negated where lower is better (`LOWER_IS_BETTER`).

Multi-process: built-in metrics score each process's share of the examples and sum the
totals across processes; a user metric runs on the main process and its value is sent to
the others.
"""

from __future__ import annotations

import importlib
import math
import re
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from ..data.pools import Example
from ..errors import UserError
from .loop import IGNORE_INDEX, Encoded, collate, encode_example

BUILTIN_METRICS = ("neg_loss", "accuracy", "choice_ce", "choice_acc")
CHOICE_METRICS = ("choice_ce", "choice_acc")
# What one item contributes under each built-in metric, and whether P negates its mean.
ITEM_FIGURES = {
    "neg_loss": "response loss",
    "accuracy": "exact match",
    "choice_ce": "choice cross-entropy",
    "choice_acc": "choice accuracy",
}
LOWER_IS_BETTER = ("neg_loss", "choice_ce")


AUTO = "auto"


def metric_for(spec: str, examples) -> str:
    """The metric `spec` names for validation `examples`: `auto` is `choice_ce` when every example
    is a multiple-choice item (record fields or the lettered prompt, `training.choices`), else
    `neg_loss`; any other spec is itself."""
    if spec != AUTO:
        return spec
    from .choices import item_from_example

    try:
        for e in examples:
            item_from_example(e)
    except UserError:
        return "neg_loss"
    return "choice_ce" if examples else "neg_loss"


def resolve_metric(spec: str) -> Callable | None:
    """None for a built-in metric (or `auto`, which names one), else the user function named `module:function`."""
    if spec in BUILTIN_METRICS or spec == AUTO:
        return None
    if ":" not in spec:
        raise UserError(f"unknown metric '{spec}'; use {', '.join(BUILTIN_METRICS)} or module:function")
    module_name, fn_name = spec.split(":", 1)
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise UserError(f"metric '{spec}': cannot import module '{module_name}' ({e})") from None
    fn = getattr(module, fn_name, None)
    if not callable(fn):
        raise UserError(f"metric '{spec}': module '{module_name}' has no function '{fn_name}'")
    return fn


_NUMBER_COMMA = re.compile(r"(?<=\d),(?=\d{3})")


def final_answer(text: str) -> str:
    """The normalised final answer of a response (see the module doc)."""
    if "####" in text:
        text = text.rsplit("####", 1)[1]
    else:
        m = list(re.finditer(r"answer is[:\s]*", text, flags=re.IGNORECASE))
        if m:
            text = text[m[-1].end() :]
        else:
            lines = [ln for ln in text.splitlines() if ln.strip()]
            text = lines[-1] if lines else ""
    text = text.strip().splitlines()[0] if text.strip() else ""
    text = _NUMBER_COMMA.sub("", text.lower().replace("$", ""))
    return " ".join(text.split()).rstrip(".").strip()


class Validator:
    """P(M) on a fixed validation set; `__call__(model)` runs without gradients in eval mode."""

    def __init__(
        self,
        examples: list[Example],
        tokenizer,
        metric: str = "neg_loss",
        max_length: int = 512,
        template: str = "alpaca",
        batch_size: int = 16,
        max_new_tokens: int = 128,
        accelerator=None,
        choice_form: str = "cloze",
    ):
        if not examples:
            raise UserError("the validation set is empty")
        if batch_size < 1:
            raise UserError(f"validation batch size must be at least 1, got {batch_size}")
        self.examples = examples
        self.tokenizer = tokenizer
        metric = metric_for(metric, examples)
        self.metric = metric
        self.user_fn = resolve_metric(metric)
        self.template = template
        self.max_length = max_length
        self.batch_size = batch_size
        self.max_new_tokens = max_new_tokens
        self.accelerator = accelerator
        rank, world = (accelerator.process_index, accelerator.num_processes) if accelerator else (0, 1)
        mine = range(rank, len(examples), world)
        self.choice_form = choice_form
        self._choices = None  # multiple-choice items and their encoded requests (choice metrics)
        if metric in CHOICE_METRICS:
            from .choices import ChoiceRequests

            self._encoded = {}
            self._mine = list(mine)
            self._choices = ChoiceRequests(
                [examples[i] for i in self._mine], tokenizer, form=choice_form, max_length=max_length
            )
        else:
            self._encoded = (
                {i: encode_example(examples[i], tokenizer, template, max_length) for i in mine}
                if self.user_fn is None
                else {}
            )
            # Batches of similar lengths waste little on padding; the metrics do not depend on the order.
            self._mine = sorted(mine, key=lambda i: -len(self._encoded[i].input_ids)) if self._encoded else list(mine)
        self._collated: list[dict[str, torch.Tensor]] | None = None  # neg_loss batches, built on first use

    def __call__(self, model) -> float:
        acc = self.accelerator
        # The bare model: evaluation needs no DDP collectives, and processes may hold unequal shares.
        model = acc.unwrap_model(model) if acc is not None else model
        if self.user_fn is not None:
            value = None
            if acc is None or acc.is_main_process:
                value = float(self._with_eval(model, self._user))
            if acc is not None and acc.num_processes > 1:
                from accelerate.utils import broadcast_object_list

                value = broadcast_object_list([value])[0]
            return value
        values = self._with_eval(model, self._my_values)
        total, count = float(values.sum()), float(len(values))
        if self.metric in LOWER_IS_BETTER:
            total = -total
        if acc is not None and acc.num_processes > 1:
            t = acc.reduce(torch.tensor([total, count], dtype=torch.float64, device=acc.device), reduction="sum")
            total, count = float(t[0]), float(t[1])
        return total / count

    @staticmethod
    def _with_eval(model, fn):
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                return fn(model)
        finally:
            model.train(was_training)

    def _user(self, model) -> float:
        return self.user_fn(model, self.tokenizer, self.examples)

    def _batches(self):
        for i in range(0, len(self._mine), self.batch_size):
            yield [self._encoded[j] for j in self._mine[i : i + self.batch_size]]

    def _my_values(self, model) -> np.ndarray:
        """The per-item figure of the metric for each of my examples, in the order of `self._mine`."""
        if self.metric == "neg_loss":
            return self._row_losses(model)
        if self.metric == "accuracy":
            return self._accuracy_items(model)
        scores = self._choices.score(model, self.batch_size)
        return scores.ce if self.metric == "choice_ce" else scores.acc

    def item_values(self, model) -> np.ndarray:
        """(n,) float64: each example's figure under the built-in metric (`ITEM_FIGURES`), in
        the order of `examples` (one process; the held-out figures of a benchmark,
        bootstrapped over items). P is their mean, negated for `LOWER_IS_BETTER` metrics."""
        if self.user_fn is not None:
            raise UserError(f"metric '{self.metric}' is a user function; it has no per-item values")
        if self.accelerator is not None and self.accelerator.num_processes > 1:
            raise UserError("per-example validation figures are computed in one process")
        values = self._with_eval(model, self._my_values)
        out = np.empty(len(self.examples), dtype=np.float64)
        out[np.asarray(self._mine, dtype=np.int64)] = values
        return out

    def example_losses(self, model) -> np.ndarray:
        """(n,) float64: each example's mean response-token loss, in the order of `examples`
        (`item_values` of the `neg_loss` metric)."""
        if self.metric != "neg_loss":
            raise UserError(f"example losses need metric neg_loss, not '{self.metric}'")
        return self.item_values(model)

    def _row_losses(self, model) -> np.ndarray:
        """Mean response-token loss of each of my examples, in the order of `self._mine`.

        The validation set is fixed, so its padded batches are built once. Where the model has
        a separate base and LM head (not a PEFT wrapper), the head runs only at the positions
        that predict a response token: the prompt positions' logits, most of a validation
        forward for a large vocabulary, are never computed. Same numbers as the full logits
        (tested)."""
        device = next(model.parameters()).device
        if self._collated is None:
            self._collated = [collate(items, self.tokenizer.pad_token_id) for items in self._batches()]
        base, head = model.base_model, model.get_output_embeddings()
        split = head is not None and base is not model and not hasattr(model, "peft_config")
        softcap = getattr(model.config, "final_logit_softcapping", None)
        rows = []
        for cpu_batch in self._collated:
            batch = {k: v.to(device) for k, v in cpu_batch.items()}
            labels = batch["labels"][:, 1:]
            mask = labels != IGNORE_INDEX
            if split:
                hidden = base(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
                logits = head(hidden[:, :-1][mask]).float()
                if softcap:
                    logits = torch.tanh(logits / softcap) * softcap
                tok_loss = F.cross_entropy(logits, labels[mask], reduction="none")
                per_row = torch.zeros(labels.shape[0], dtype=tok_loss.dtype, device=device)
                per_row.index_add_(0, mask.nonzero()[:, 0], tok_loss)
            else:
                logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()
                per_row = F.cross_entropy(
                    logits[:, :-1].transpose(1, 2), labels, ignore_index=IGNORE_INDEX, reduction="none"
                ).sum(dim=1)
            rows.append((per_row / mask.sum(dim=1)).double().cpu())
        return torch.cat(rows).numpy() if rows else np.zeros(0)

    def _accuracy_items(self, model) -> np.ndarray:
        """1.0 for each of my examples whose greedy answer matches, else 0.0 (order of `self._mine`)."""
        device = next(model.parameters()).device
        correct = []
        for start in range(0, len(self._mine), self.batch_size):
            chunk = self._mine[start : start + self.batch_size]
            prompts = []
            for j in chunk:
                enc = self._encoded[j]
                n_prompt = sum(1 for x in enc.labels if x == IGNORE_INDEX)
                prompts.append(Encoded(enc.input_ids[:n_prompt], enc.labels[:n_prompt]))
            batch = collate(prompts, self.tokenizer.pad_token_id, padding_side="left")
            out = model.generate(
                input_ids=batch["input_ids"].to(device),
                attention_mask=batch["attention_mask"].to(device),
                max_new_tokens=self.max_new_tokens,
                do_sample=False,
                pad_token_id=self.tokenizer.pad_token_id,
                eos_token_id=self.tokenizer.eos_token_id,
            )
            texts = self.tokenizer.batch_decode(out[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)
            for j, text in zip(chunk, texts):
                correct.append(float(final_answer(text) == final_answer(self.examples[j].response)))
        return np.asarray(correct, dtype=np.float64)


def check_finite(value: float, where: str) -> float:
    """`value` of P, refused when it is NaN or infinite (no reward or stage state can use it)."""
    if not math.isfinite(value):
        raise UserError(
            f"{where}: validation performance P is {value}, so no reward or stage state can use it; "
            "lower the learning rate or check the validation set and metric"
        )
    return value
