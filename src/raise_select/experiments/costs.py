"""Costs of a cell, in seconds and in counted token passes, both as Φ.

Φ is the unit of every cost: one epoch of plain training of the target model over the pool.

- **In seconds** (`phi_seconds`, `phi_from_runs`, `steps_per_epoch`): plain training's seconds
  per step times ceil(pool / batch). The arithmetic is defined once, in `raise_select.costs`,
  below the training and report layers that also log or tabulate it, and re-exported here.
- **Counted** (`PassCounter`, `cost_summary`, `record_costs`): while a counter is active it
  sees every top-level forward call of a Hugging Face model (`transformers.PreTrainedModel` or
  `peft.PeftModel`) in the process and every backward pass through that call's output, and
  adds up the tokens of each, per model. A model's tokens are weighted by its size, so an
  auxiliary model (a featurizer, a judge) counts in proportion to the target. FLOP convention
  (Kaplan et al. 2020): a forward pass costs 2N FLOPs per token and a backward pass 4N, N the
  model's parameters that enter a matrix product (`flop_parameters`: all of them except an
  input embedding not tied to the LM head). One epoch of the pool is a forward and a backward
  pass over every pool token of the target model, so

      Φ_counted = Σ_models N_m (2 F_m + 4 B_m) / (6 N_target T_pool),

  F_m, B_m the forward and backward tokens of model m and T_pool the pool's tokens as the
  trainer encodes them (`pool_tokens`): one epoch of `LMTrainer` over the pool is exactly 1 Φ.

Where the count is approximate (each a documented convention, not an estimate from time):

- **Tokens** are non-padding positions: the attention mask's sum over the positions of the
  call (its last `input_ids.shape[1]` columns, so a generation step with a KV cache counts its
  new tokens), else every position of `input_ids` / `inputs_embeds`. Padding costs compute
  but depends on batching, not on the method. Attention's own FLOPs (quadratic in length)
  are not in 2N/4N.
- **A backward pass** is counted when a gradient reaches the call's output (its `logits`, else
  its first tensor) and is charged 4N per token of that call, whatever it reaches below: a
  backward that stops early (GREATS scoring the last `last_layers` blocks, or the adapters of
  the last `lora_last_layers` blocks) counts as a full backward, an upper bound; so does a
  backward under LoRA or frozen layers (no weight gradients for frozen weights: really about
  2N, not 4N). Upper bounds never flatter a method that computes gradients.
- **Not counted**: work outside a model call (GREATS's per-example gradient products, PPO's
  MLPs, K-means, an optimizer step), a gradient-checkpointing re-forward, a model call that
  started before the counter was entered, a backward after it exited. Under several
  processes each counts its own slice: sum the processes' counts.
"""

from __future__ import annotations

import contextlib
import sys
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import torch

from ..costs import phi_from_runs, phi_seconds, steps_per_epoch
from ..errors import UserError

__all__ = [
    "ModelPasses",
    "PassCounter",
    "add_costs",
    "cost_summary",
    "flop_parameters",
    "phi_from_runs",
    "phi_seconds",
    "pool_tokens",
    "record_costs",
    "steps_per_epoch",
]

_CALL_CODE = torch.nn.Module._call_impl.__code__  # the frame of every module call (hooks run inside it)
FORWARD_FLOPS = 2  # per parameter and token
BACKWARD_FLOPS = 4


@dataclass
class ModelPasses:
    """The counted passes of one model: `parameters` N (`flop_parameters`), the tokens of its
    top-level forward calls and of the backward passes through them, and the calls."""

    name: str
    parameters: int
    forward_tokens: int = 0
    backward_tokens: int = 0
    forward_calls: int = 0
    backward_calls: int = 0

    @property
    def flops(self) -> int:
        return self.parameters * (FORWARD_FLOPS * self.forward_tokens + BACKWARD_FLOPS * self.backward_tokens)


def flop_parameters(model: torch.nn.Module) -> int:
    """Parameters that enter a matrix product per token: every parameter (shared ones once)
    but the input embedding's, unless it is tied to the LM head (a lookup costs no FLOPs)."""
    total = sum(p.numel() for p in model.parameters())
    try:
        emb, head = model.get_input_embeddings(), model.get_output_embeddings()
    except (AttributeError, NotImplementedError):
        return total
    weight = getattr(emb, "weight", None)
    if weight is not None and (head is None or getattr(head, "weight", None) is not weight):
        total -= weight.numel()
    return total


def _model_classes() -> tuple[type, ...]:
    from transformers import PreTrainedModel

    classes: list[type] = [PreTrainedModel]
    with contextlib.suppress(ImportError):
        from peft import PeftModel

        classes.append(PeftModel)
    return tuple(classes)


def _call_tokens(args: tuple, kwargs: Mapping) -> int | None:
    """Non-padding tokens of one model call, None when it has no token input to count."""
    ids = kwargs.get("input_ids")
    if ids is None and args and torch.is_tensor(args[0]):
        ids = args[0]
    embeds = kwargs.get("inputs_embeds")
    if ids is not None:
        shape = tuple(ids.shape) if ids.dim() > 1 else (1, ids.numel())
    elif embeds is not None:
        shape = tuple(embeds.shape[:2])
    else:
        return None
    rows, width = shape
    mask = kwargs.get("attention_mask")
    if torch.is_tensor(mask) and mask.dim() == 2 and mask.shape[0] == rows and mask.shape[1] >= width:
        return int(mask[:, mask.shape[1] - width :].sum())
    return rows * width


def _output_tensor(output) -> torch.Tensor | None:
    """The tensor a backward pass through a model call goes through: its logits, else its
    last hidden state, else its first tensor."""
    for name in ("logits", "last_hidden_state"):
        t = getattr(output, name, None)
        if torch.is_tensor(t):
            return t
    if torch.is_tensor(output):
        return output
    if isinstance(output, (tuple, list)) and output and torch.is_tensor(output[0]):
        return output[0]
    return None


class PassCounter(contextlib.ContextDecorator):
    """Counts forward and backward token passes of every Hugging Face model called while it is
    active (`with PassCounter() as counter: ...`; also a decorator). Only the outermost model
    call counts (a `PeftModel` around a `LlamaForCausalLM` around a `LlamaModel` is one call),
    per model keyed by its class and parameter count. Entering it again adds to its counts."""

    def __init__(self) -> None:
        self.models: dict[str, ModelPasses] = {}
        self.uncounted_calls = 0  # top-level calls with no token input (neither ids nor embeddings)
        self.active = False
        self._handles: list = []
        self._keys: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> key
        self._classes: tuple[type, ...] = ()

    def __enter__(self) -> "PassCounter":
        if self.active:
            raise RuntimeError("this PassCounter is active already")
        from torch.nn.modules.module import register_module_forward_hook

        self._classes = _model_classes()
        self._handles = [register_module_forward_hook(self._post, with_kwargs=True)]
        self.active = True
        return self

    def __exit__(self, *exc) -> bool:
        for h in self._handles:
            h.remove()
        self._handles = []
        self.active = False
        return False

    def _key(self, module: torch.nn.Module) -> str:
        key = self._keys.get(module)
        if key is None:
            n = flop_parameters(module)
            key = f"{type(module).__name__} ({n:,} parameters)"
            self._keys[module] = key
            self.models.setdefault(key, ModelPasses(key, n))
        return key

    def _outermost(self, module: torch.nn.Module) -> bool:
        """No other model's call is running around this one in this thread (read off the call
        stack, so a call that raised leaves nothing behind)."""
        frame = sys._getframe(2)
        while frame is not None:
            if frame.f_code is _CALL_CODE:
                owner = frame.f_locals.get("self")
                if owner is not module and isinstance(owner, self._classes):
                    return False
            frame = frame.f_back
        return True

    def _post(self, module, args, kwargs, output) -> None:
        if not isinstance(module, self._classes) or not self._outermost(module):
            return
        tokens = _call_tokens(args, kwargs)
        if tokens is None:
            self.uncounted_calls += 1
            return
        passes = self.models[self._key(module)]
        passes.forward_tokens += tokens
        passes.forward_calls += 1
        out = _output_tensor(output)
        if out is not None and out.requires_grad:
            out.register_hook(lambda grad, passes=passes, tokens=tokens: self._backward(passes, tokens))

    def _backward(self, passes: ModelPasses, tokens: int) -> None:
        if self.active:
            passes.backward_tokens += tokens
            passes.backward_calls += 1

    @property
    def forward_tokens(self) -> int:
        """Forward tokens of every model, unweighted."""
        return sum(p.forward_tokens for p in self.models.values())

    @property
    def backward_tokens(self) -> int:
        """Backward tokens of every model, unweighted."""
        return sum(p.backward_tokens for p in self.models.values())


def pool_tokens(pool, tokenizer, template: str, max_length: int) -> int:
    """T_pool: the tokens of every pool row as `LMTrainer` encodes them (prompt and response,
    truncated to `max_length`), one tokenisation pass over the pool."""
    from ..training.loop import encode_example

    return sum(len(encode_example(e, tokenizer, template, max_length).input_ids) for e in pool.examples)


def cost_summary(
    models: Mapping[str, ModelPasses] | Sequence[ModelPasses], target_parameters: int, pool_tokens: int
) -> dict:
    """The counted cost: `forward_tokens` and `backward_tokens` in target-model tokens (each
    model's tokens x N_m / N_target), `phi` (Φ_counted, see the module docstring) and each
    model's own counts under `models`."""
    if target_parameters < 1 or pool_tokens < 1:
        raise UserError(
            f"counted Φ needs the target model's parameters and the pool's tokens, "
            f"got {target_parameters} parameters, {pool_tokens} tokens"
        )
    passes = list(models.values()) if isinstance(models, Mapping) else list(models)
    flops = sum(p.flops for p in passes)
    return {
        "forward_tokens": sum(p.forward_tokens * p.parameters for p in passes) / target_parameters,
        "backward_tokens": sum(p.backward_tokens * p.parameters for p in passes) / target_parameters,
        "phi": flops / ((FORWARD_FLOPS + BACKWARD_FLOPS) * target_parameters * pool_tokens),
        "target_parameters": int(target_parameters),
        "pool_tokens": int(pool_tokens),
        "models": {p.name: asdict(p) for p in passes},
    }


def record_costs(
    record: dict,
    counter: PassCounter,
    *,
    target_parameters: int,
    pool_tokens: int,
    key: str = "costs",
    seconds: float | None = None,
) -> dict:
    """Put `counter`'s `cost_summary` (plus `seconds`, when given) under `record[key]` (a cell
    record) and return it."""
    summary = cost_summary(counter.models, target_parameters, pool_tokens)
    if seconds is not None:
        summary["seconds"] = float(seconds)
    record[key] = summary
    return summary


def add_costs(*summaries: Mapping) -> dict:
    """The sum of `cost_summary` records of one target model and pool (a method's selection, its
    training, a shared cache charged to it in full): tokens, Φ and seconds add; each model's
    counts add."""
    if not summaries:
        raise UserError("add_costs needs at least one cost record")
    keys = {(s["target_parameters"], s["pool_tokens"]) for s in summaries}
    if len(keys) > 1:
        raise UserError(f"cost records of different target models or pools cannot be added: {sorted(keys)}")
    models: dict[str, dict] = {}
    for s in summaries:
        for name, counts in s["models"].items():
            into = models.setdefault(name, {**counts, **{k: 0 for k in counts if k.endswith(("tokens", "calls"))}})
            for k, v in counts.items():
                if k.endswith(("tokens", "calls")):
                    into[k] += v
    out = {
        "forward_tokens": sum(s["forward_tokens"] for s in summaries),
        "backward_tokens": sum(s["backward_tokens"] for s in summaries),
        "phi": sum(s["phi"] for s in summaries),
        "target_parameters": summaries[0]["target_parameters"],
        "pool_tokens": summaries[0]["pool_tokens"],
        "models": models,
    }
    if any("seconds" in s for s in summaries):
        out["seconds"] = sum(s.get("seconds", 0.0) for s in summaries)
    return out
