"""Per-row losses and gradient inner products of a causal LM, below the methods that use them.

`response_losses` / `batch_response_losses`: each row's mean response-token loss (the training
loop's tokenisation: labels on the response only). `per_example_gram`: the inner products
<g_i, g_j> of the rows' gradients over chosen linear layers from one forward and one truncated
backward pass (`grad_from`, `layer_gram`); GREATS (`baselines.greats`) scores candidates with
them. `objective_gradient` (the gradient of any scalar objective over those layers, e.g. a
validation set's choice cross-entropy) and `per_example_dots` (each row's <g_i, d> with such a
gradient d, one forward and one truncated backward pass) give the policy's per-row credit
(`training.credit`) without the rows' Gram matrix.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterable, Sequence

import torch

from .loop import IGNORE_INDEX


def response_losses(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(B,) mean next-token cross-entropy over each row's labelled (response) tokens."""
    shift_logits = logits[:, :-1].float()
    shift_labels = labels[:, 1:]
    tok = torch.nn.functional.cross_entropy(
        shift_logits.reshape(-1, shift_logits.size(-1)),
        shift_labels.reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction="none",
    ).view(shift_labels.shape)
    n = (shift_labels != IGNORE_INDEX).sum(1).clamp(min=1)
    return tok.sum(1) / n


def _keeps_logits(model) -> bool:
    import inspect

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "logits_to_keep" in inspect.signature(base.forward).parameters


def batch_response_losses(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """`response_losses` of a batch under `model`, with the LM head applied only from the first
    position that predicts a response token of any row: the prompt positions before it need
    no logits (for a large vocabulary, a good share of the forward pass)."""
    ids, labels = batch["input_ids"], batch["labels"]
    width = ids.shape[1]
    kwargs = {}
    labelled = (labels != IGNORE_INDEX).any(0).nonzero()
    if len(labelled) and _keeps_logits(model):
        first = max(int(labelled[0]) - 1, 0)  # logits at t - 1 predict the label at t
        kwargs["logits_to_keep"] = width - first
        labels = labels[:, first:]
    logits = model(input_ids=ids, attention_mask=batch["attention_mask"], **kwargs).logits
    return response_losses(logits, labels)


def layer_gram(a, b, bias: bool, ghost: bool | None = None) -> torch.Tensor:
    """(N, N) inner products of the per-example gradients of one linear layer from its inputs
    `a` (N, T, d_in) and output gradients `b` (N, T, d_out), or from lists of such chunks
    (the rows of every chunk in order; chunks may differ in T): the ghost form or
    materialised per-example gradients (`ghost` None: whichever costs fewer multiplications)."""
    a_parts = [x if x.dim() == 3 else x.unsqueeze(1) for x in (a if isinstance(a, (list, tuple)) else [a])]
    b_parts = [x if x.dim() == 3 else x.unsqueeze(1) for x in (b if isinstance(b, (list, tuple)) else [b])]
    a_parts, b_parts = [x.float() for x in a_parts], [x.float() for x in b_parts]
    tokens = sum(x.shape[0] * x.shape[1] for x in a_parts)
    d_in, d_out = a_parts[0].shape[-1], b_parts[0].shape[-1]
    if ghost is None:
        ghost = tokens**2 * (d_in + d_out) < tokens * d_in * d_out
    if ghost:
        blocks = []
        for a1, b1 in zip(a_parts, b_parts):
            row = []
            for a2, b2 in zip(a_parts, b_parts):
                aa = (a1.reshape(-1, d_in) @ a2.reshape(-1, d_in).T).view(
                    a1.shape[0], a1.shape[1], a2.shape[0], a2.shape[1]
                )
                bb = (b1.reshape(-1, d_out) @ b2.reshape(-1, d_out).T).view_as(aa)
                row.append((aa * bb).sum(dim=(1, 3)))
            blocks.append(torch.cat(row, dim=1))
        gram = torch.cat(blocks, dim=0)
    else:
        g = torch.cat(
            [torch.bmm(y.transpose(1, 2), x).reshape(x.shape[0], d_out * d_in) for x, y in zip(a_parts, b_parts)]
        )
        gram = g @ g.T
    if bias:
        gb = torch.cat([y.sum(dim=1) for y in b_parts])
        gram = gram + gb @ gb.T
    return gram


@contextlib.contextmanager
def grad_from(modules: Sequence[torch.nn.Module]):
    """Autograd off during a forward pass until the first of `modules` runs: nothing below the
    first scored layer is recorded, so the backward pass stops there."""

    def on(module, args):
        torch.set_grad_enabled(True)

    handles = [m.register_forward_pre_hook(on) for m in modules]
    previous = torch.is_grad_enabled()
    torch.set_grad_enabled(False)
    try:
        yield
    finally:
        torch.set_grad_enabled(previous)
        for h in handles:
            h.remove()


def layer_signals(
    model: torch.nn.Module, modules: Sequence[torch.nn.Linear], batch: dict[str, torch.Tensor]
) -> tuple[torch.Tensor, list[tuple[torch.nn.Linear, torch.Tensor, torch.Tensor]]]:
    """Each row's response loss (detached) and, per call of each of `modules`, its inputs `a` and the
    gradients `b` of the summed row losses with respect to its outputs: one forward and one backward
    pass that runs only through the layers above the first of `modules`. Rows do not interact in the
    forward pass, so the gradient of the sum holds each row's own output gradients, and row i's
    gradient of a layer's weight is sum_t b_it a_it^T."""
    captured: list[tuple[torch.nn.Linear, torch.Tensor, torch.Tensor]] = []

    def hook(mod, inputs, output):
        captured.append((mod, inputs[0].detach(), output))

    handles = [m.register_forward_hook(hook) for m in modules]
    try:
        with grad_from(modules):
            losses = batch_response_losses(model, batch)
    finally:
        for h in handles:
            h.remove()
    grads = torch.autograd.grad(losses.sum(), [out for _, _, out in captured])
    return losses.detach(), [(mod, a, b.detach()) for (mod, a, _), b in zip(captured, grads)]


def per_example_gram(
    model: torch.nn.Module,
    modules: Sequence[torch.nn.Linear],
    batches: dict[str, torch.Tensor] | Sequence[dict[str, torch.Tensor]],
    capture: dict | None = None,
) -> torch.Tensor:
    """(N, N) float64 inner products <g_i, g_j> of the rows' gradients (each row's mean
    response-token loss) over the parameters of `modules`, the rows of every batch in order,
    from one forward and one backward pass per batch; the backward pass runs only through the
    layers above the first of `modules` and the LM head only where a response token is
    predicted. Parameters' `.grad` is left untouched. `capture` (a dict), when given, receives
    `parts` (module -> (inputs, output gradients), one pair of tensors per batch) and `losses`
    (each row's loss, the rows of every batch in order)."""
    batches = [batches] if isinstance(batches, dict) else list(batches)
    parts: dict[torch.nn.Linear, tuple[list, list]] = {m: ([], []) for m in modules}
    row_losses = []
    for batch in batches:
        losses, captured = layer_signals(model, modules, batch)
        row_losses.append(losses)
        for mod, a, b in captured:
            parts[mod][0].append(a)
            parts[mod][1].append(b)
    n = sum(batch["input_ids"].shape[0] for batch in batches)
    gram = torch.zeros((n, n), dtype=torch.float64, device=batches[0]["input_ids"].device)
    for mod, (a, b) in parts.items():
        if a:
            gram += layer_gram(a, b, mod.bias is not None and mod.bias.requires_grad).double()
    if capture is not None:
        capture.update(parts=parts, losses=torch.cat(row_losses))
    return gram


def _params(module: torch.nn.Linear) -> list[torch.Tensor]:
    """The trained parameters of a linear layer: its weight, and its bias when that is trained."""
    bias = module.bias if module.bias is not None and module.bias.requires_grad else None
    return [module.weight] if bias is None else [module.weight, bias]


def objective_gradient(
    modules: Sequence[torch.nn.Linear], parts: Iterable[Callable[[], torch.Tensor]], unit: bool = False
) -> list[list[torch.Tensor]]:
    """The gradient of an objective over the parameters of `modules` (per module: its weight's,
    then its bias's when trained), the objective being the sum of the scalars the closures
    `parts` return; each part is computed and differentiated on its own (the memory of one
    part at a time), the backward pass only through the layers above the first of `modules`.
    With `unit`, the mean of the parts' gradients each scaled to unit norm (a part whose gradient
    is zero counts as zero). Parameters' `.grad` is left untouched."""
    params = [p for m in modules for p in _params(m)]
    total = [torch.zeros_like(p, dtype=torch.float32) for p in params]
    count = 0
    for part in parts:
        count += 1
        with grad_from(modules):
            value = part()
        if not value.requires_grad:  # nothing of the part depends on the scored layers
            continue
        grads = [None if g is None else g.float() for g in torch.autograd.grad(value, params, allow_unused=True)]
        scale = 1.0
        if unit:
            size = float(sum((g.double() ** 2).sum() for g in grads if g is not None)) ** 0.5
            scale = 1.0 / size if size > 0 else 0.0
        for acc, g in zip(total, grads):
            if g is not None:
                acc += scale * g
    if unit and count:
        total = [t / count for t in total]
    out, k = [], 0
    for m in modules:
        n = len(_params(m))
        out.append(total[k : k + n])
        k += n
    return out


def per_example_dots(
    model: torch.nn.Module,
    modules: Sequence[torch.nn.Linear],
    batches: dict[str, torch.Tensor] | Sequence[dict[str, torch.Tensor]],
    direction: Sequence[Sequence[torch.Tensor]],
) -> torch.Tensor:
    """(N,) float64 inner products <g_i, d> of each row's gradient (its mean response-token
    loss, as `per_example_gram`) with a fixed direction `d` over the parameters of `modules`
    (`direction`: per module its weight's part (d_out, d_in), then its bias's when trained, as
    `objective_gradient` returns), the rows of every batch in order. For a linear layer
    g_i = sum_t b_it a_it^T, so <g_i, D> = sum_t b_it^T D a_it: one forward and one truncated
    backward pass, no per-row gradient is materialised. Parameters' `.grad` is left untouched."""
    return per_example_projections(model, modules, batches, [direction])[0][:, 0]


def per_example_projections(
    model: torch.nn.Module,
    modules: Sequence[torch.nn.Linear],
    batches: dict[str, torch.Tensor] | Sequence[dict[str, torch.Tensor]],
    directions: Sequence[Sequence[Sequence[torch.Tensor]]],
    norms: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """`per_example_dots` for several directions from the same pass: (N, K) float64 <g_i, d_k>,
    and with `norms` (N,) float64 squared norms |g_i|^2 over the same parameters (the diagonal of
    `per_example_gram`, per layer from its calls' inputs and output gradients), else None."""
    batches = [batches] if isinstance(batches, dict) else batches  # any iterable, read lazily (a progress bar)
    parts = [dict(zip(modules, d)) for d in directions]
    out, sq = [], []
    for batch in batches:
        losses, captured = layer_signals(model, modules, batch)
        dots = torch.zeros((batch["input_ids"].shape[0], len(parts)), dtype=torch.float64, device=losses.device)
        calls: dict[torch.nn.Linear, tuple[list, list]] = {}
        for mod, a, b in captured:
            a3 = a.float() if a.dim() == 3 else a.float().unsqueeze(1)
            b3 = b.float() if b.dim() == 3 else b.float().unsqueeze(1)
            for k, part in enumerate(parts):
                d = part[mod]
                dots[:, k] += ((b3 @ d[0].float()) * a3).sum(dim=(1, 2)).double()
                if len(d) > 1:
                    dots[:, k] += (b3 @ d[1].float()).sum(dim=1).double()
            calls.setdefault(mod, ([], []))
            calls[mod][0].append(a3)
            calls[mod][1].append(b3)
        out.append(dots)
        if norms:  # a layer called more than once: its calls' tokens are one row's sum, so join them
            n2 = torch.zeros(dots.shape[0], dtype=torch.float64, device=losses.device)
            for mod, (a, b) in calls.items():
                bias = mod.bias is not None and mod.bias.requires_grad
                n2 += layer_gram(torch.cat(a, dim=1), torch.cat(b, dim=1), bias).diagonal().double()
            sq.append(n2)
    return torch.cat(out), (torch.cat(sq) if norms else None)


def per_example_gradients(
    model: torch.nn.Module,
    modules: Sequence[torch.nn.Linear],
    batches: dict[str, torch.Tensor] | Sequence[dict[str, torch.Tensor]],
) -> torch.Tensor:
    """(N, P) float32 gradients of each row's mean response-token loss over the parameters of
    `modules`, flattened in `objective_gradient`'s order (per module its weight's (d_out, d_in),
    then its bias's when trained), the rows of every batch in order: g_i = sum_t b_it a_it^T per
    layer from one forward and one truncated backward pass. For small trained parts (adapters):
    the matrix holds N x P numbers."""
    batches = [batches] if isinstance(batches, dict) else batches
    out = []
    for batch in batches:
        _, captured = layer_signals(model, modules, batch)
        per_module: dict[torch.nn.Linear, list[torch.Tensor]] = {}
        for mod, a, b in captured:
            a3 = a.float() if a.dim() == 3 else a.float().unsqueeze(1)
            b3 = b.float() if b.dim() == 3 else b.float().unsqueeze(1)
            parts = [torch.bmm(b3.transpose(1, 2), a3)]
            if mod.bias is not None and mod.bias.requires_grad:
                parts.append(b3.sum(dim=1))
            if mod in per_module:  # a layer called more than once: its calls add up
                per_module[mod] = [x + y for x, y in zip(per_module[mod], parts)]
            else:
                per_module[mod] = parts
        n = batch["input_ids"].shape[0]
        out.append(torch.cat([p.reshape(n, -1) for mod in modules for p in per_module.get(mod, [])], dim=1))
    return torch.cat(out)
