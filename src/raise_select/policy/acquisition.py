"""The acquisition function F_theta (actor) and the critic V_phi.

F_theta is an MLP over the fused state of eq. 6. Its first linear layer is split by the
blocks of the state: W x' = W_stage [P, t/T] + W_static [diff, sem] + w_avail log1p(nu). The
static product (N x hidden) is computed once per actor version and cached; a step then
costs one broadcast add, one activation and one matrix-vector product per chunk of rows,
with the same numbers as scoring `fuse_state`'s matrix (tested).
"""

from __future__ import annotations

import torch
from torch import nn

from .state import STAGE_DIM, availability

SCORE_CHUNK = 65536  # rows per chunk: bounds the (chunk x hidden) activations


class AcquisitionMLP(nn.Module):
    """F_theta: fused state (M) -> tanh(hidden) -> score. Layout of the input as in eq. 6."""

    def __init__(self, fused_dim: int, hidden: int):
        super().__init__()
        self.fused_dim = fused_dim
        self.hidden_layer = nn.Linear(fused_dim, hidden)
        # No output bias: the class softmax (eq. 10) and the top-b are shift-invariant, so it
        # would get a zero gradient that Adam turns into full steps of rounding noise.
        self.out = nn.Linear(hidden, 1, bias=False)

    def forward(self, fused: torch.Tensor) -> torch.Tensor:
        """Scores of materialised fused states (N, M) -> (N,)."""
        return self.out(torch.tanh(self.hidden_layer(fused))).squeeze(-1)

    def static_projection(self, static_x: torch.Tensor) -> torch.Tensor:
        """W_static [diff, sem] + bias: the (N, hidden) part of the first layer that never changes in a round."""
        w_static = self.hidden_layer.weight[:, STAGE_DIM:-1]
        return torch.addmm(self.hidden_layer.bias, static_x, w_static.t())

    def score(
        self,
        projection: torch.Tensor,
        perf_prev: float,
        progress: float,
        counts: torch.Tensor,
        chunk: int = SCORE_CHUNK,
    ) -> torch.Tensor:
        """Scores of all N rows from the cached static projection, chunked over N (eq. 6 + F_theta)."""
        w = self.hidden_layer.weight
        stage = w[:, 0] * perf_prev + w[:, 1] * progress  # (hidden,), shared by all rows
        w_avail = w[:, -1]
        w_out = self.out.weight[0]
        avail = availability(counts, projection.dtype)  # the same scaling as fuse_state
        parts = []
        for start in range(0, projection.shape[0], chunk):
            # one fused pass for proj + avail x w_avail, then in place (autograd-safe: addr and
            # add_ keep no output for backward, tanh_ keeps its own result)
            pre = torch.addr(projection[start : start + chunk], avail[start : start + chunk], w_avail).add_(stage)
            parts.append(torch.mv(pre.tanh_(), w_out))
        return parts[0] if len(parts) == 1 else torch.cat(parts)


# What the critic reads: the stage state plus summary statistics of where the pool stands.
CRITIC_FEATURES = ("perf_prev", "progress", "used_fraction", "mean_times_used", "max_times_selected")


def critic_features(perf_prev: float, progress: float, counts: torch.Tensor) -> torch.Tensor:
    """V_phi's input (see docs/policy.md): stage [P_{t-1}, t/T] and three statistics of the counts.

    used_fraction: share of the pool selected at least once; mean_times_used: mean count of
    those items (how much the run repeats itself); max_times_selected: the worst repetition.
    """
    counts = counts.to(torch.float32)
    used = counts > 0
    n_used = int(used.sum())
    mean_used = float(counts[used].mean()) if n_used else 0.0
    max_count = float(counts.max()) if counts.numel() else 0.0
    return torch.tensor(
        [perf_prev, progress, n_used / max(counts.numel(), 1), mean_used, max_count], dtype=torch.float32
    )


class Critic(nn.Module):
    """V_phi: critic features (5) -> tanh(hidden) -> tanh(hidden) -> value."""

    def __init__(self, hidden: int, in_dim: int = len(CRITIC_FEATURES)):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(in_dim, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh(), nn.Linear(hidden, 1)
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net(features).squeeze(-1)
