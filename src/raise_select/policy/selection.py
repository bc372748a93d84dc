"""Algorithm 1: choose B = C x b instructions, b from each class (the diversity constraint).

At use time the batch is the top-b scores of each class. During rollouts the policy must
explore, so each class draws b items without replacement from its softmax (eq. 10); this
is done with the Gumbel-top-k trick: adding i.i.d. Gumbel(0, 1) noise to the scores and
taking the top b of a class samples b items without replacement from that class's softmax
(successive draws, Plackett-Luce). Both modes then share one vectorised per-class top-b.
"""

from __future__ import annotations

import torch

from ..errors import UserError


def _gumbel(
    shape: torch.Size, generator: torch.Generator | None, dtype: torch.dtype, device: torch.device
) -> torch.Tensor:
    u = torch.rand(shape, generator=generator, dtype=torch.float64, device=device)
    return (-torch.log(-torch.log(u.clamp_min(1e-300)))).to(dtype)


def select_per_class(
    scores: torch.Tensor,
    classes: torch.Tensor,
    num_classes: int,
    per_class: int,
    sample: bool = False,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Algorithm 1: (B,) int64 row indices, B = num_classes * per_class, grouped by class.

    sample=False: top-b per class. sample=True: b draws without replacement from each class
    softmax (eq. 10). A class with fewer than b members gives its unused slots to the best
    remaining items of the whole pool (by score, or by perturbed score when sampling, i.e.
    further draws from the pool softmax), so the batch always holds B distinct items.
    """
    n = scores.shape[0]
    batch = num_classes * per_class
    if per_class < 1:
        raise UserError(f"per_class (b) must be at least 1, got {per_class}")
    if n < batch:
        raise UserError(
            f"the pool has {n} instructions, fewer than one batch of {batch} (= {num_classes} classes x {per_class})"
        )
    keys = scores.detach().clone()
    if sample:
        keys += _gumbel(keys.shape, generator, keys.dtype, keys.device)
    # b rounds of "best remaining row of every class": O(b N) scatter ops instead of sorting
    # the pool; ties go to the lowest row index. A taken row's key becomes -inf.
    rows = torch.arange(n, device=keys.device)
    chosen = []
    for _ in range(per_class):
        best = torch.full((num_classes,), -torch.inf, dtype=keys.dtype, device=keys.device)
        best = best.scatter_reduce(0, classes, keys, reduce="amax")
        hit = (keys == best[classes]) & torch.isfinite(keys)
        first = torch.full((num_classes,), n, dtype=torch.int64, device=keys.device)
        first = first.scatter_reduce(0, classes, torch.where(hit, rows, n), reduce="amin")
        taken = first[first < n]
        keys[taken] = -torch.inf
        chosen.append(taken)
    chosen = torch.cat(chosen)
    short = batch - chosen.numel()
    if short:
        chosen = torch.cat([chosen, torch.argsort(keys, descending=True, stable=True)[:short]])
    return chosen
