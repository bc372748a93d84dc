"""The rollout buffer of one round, without the paper's O(T x N x M) fused states.

A PPO transition keeps only what changes at its step: the stage state (P_{t-1}, t/T), the
chosen indices, their old log-probability, the value and the reward. The fused states are
rebuilt on demand from the static features held once (`StaticState`) and the times-selected
counts, which are themselves rebuilt from the chosen indices of the earlier steps.

Batches trained on outside the policy (the random steps of `--select-every M`, appendix F)
are recorded with `add_counted`: they count towards times-selected but are no transitions.

With dense credit (`policy.credit: row`) a transition also holds its credit labels
(`add_labels`): the rows labelled at that step (its chosen rows first, then the sampled rows it
did not choose) and each one's first-order credit.
"""

from __future__ import annotations

import torch


class RolloutBuffer:
    def __init__(self) -> None:
        self.perf_prev: list[float] = []
        self.progress: list[float] = []
        self.old_log_prob: list[float] = []
        self.value: list[float] = []
        self.reward: list[float] = []
        self.item_log_prob: list[torch.Tensor] = []  # (B,) class log-probability of each chosen row (eq. 10)
        self._batches: list[torch.Tensor] = []  # every batch trained on, in order (policy and random)
        self._batch_of: list[int] = []  # transition -> position of its batch in _batches
        self._flat: torch.Tensor | None = None  # cached concatenation of _batches
        self._offsets: list[int] = [0]  # _offsets[k] = number of indices in _batches[:k]
        self.label_rows: list[torch.Tensor | None] = []  # per transition: rows labelled (chosen first), or None
        self.label_credit: list[torch.Tensor | None] = []  # per transition: (n,) float64 credit of those rows

    def __len__(self) -> int:
        return len(self.reward)

    def add(
        self,
        perf_prev: float,
        progress: float,
        chosen: torch.Tensor,
        old_log_prob: float,
        value: float,
        reward: float,
        item_log_prob: torch.Tensor | None = None,
    ) -> None:
        """Record one policy step: its stage state, chosen rows and the PPO quantities.

        `item_log_prob` holds each chosen row's own class log-probability (needed by the
        per-item ratio); `old_log_prob` is their sum (eq. 11).
        """
        self._batch_of.append(len(self._batches))
        self._push(chosen)
        if item_log_prob is None:
            item_log_prob = torch.full((self._batches[-1].numel(),), float("nan"), dtype=torch.float64)
        self.item_log_prob.append(
            torch.as_tensor(item_log_prob, dtype=torch.float64).detach().cpu().reshape(-1).clone()
        )
        self.perf_prev.append(float(perf_prev))
        self.progress.append(float(progress))
        self.old_log_prob.append(float(old_log_prob))
        self.value.append(float(value))
        self.reward.append(float(reward))
        self.label_rows.append(None)
        self.label_credit.append(None)

    def add_labels(self, rows: torch.Tensor, credit: torch.Tensor) -> None:
        """Attach credit labels to the last transition: `rows` (its chosen rows first) and each one's credit."""
        if not self.reward:
            raise IndexError("add_labels before any transition")
        rows = torch.as_tensor(rows, dtype=torch.int64).detach().cpu().reshape(-1).clone()
        credit = torch.as_tensor(credit, dtype=torch.float64).detach().cpu().reshape(-1).clone()
        if rows.numel() != credit.numel():
            raise ValueError(f"{rows.numel()} labelled rows but {credit.numel()} credits")
        self.label_rows[-1], self.label_credit[-1] = rows, credit

    def has_labels(self) -> bool:
        """Whether every transition carries credit labels."""
        return bool(self.label_rows) and all(r is not None for r in self.label_rows)

    def add_counted(self, chosen: torch.Tensor) -> None:
        """Record a batch chosen outside the policy: it only counts towards times-selected."""
        self._push(chosen)

    def add_reward(self, reward: float) -> None:
        """Add to the last transition's reward (the improvement over the random steps that follow it)."""
        if not self.reward:
            raise IndexError("add_reward before any transition")
        self.reward[-1] += float(reward)

    def _push(self, chosen: torch.Tensor) -> None:
        chosen = torch.as_tensor(chosen, dtype=torch.int64).detach().cpu().reshape(-1).clone()
        self._batches.append(chosen)
        self._offsets.append(self._offsets[-1] + chosen.numel())
        self._flat = None

    def chosen(self, t: int) -> torch.Tensor:
        """Rows chosen by the policy at transition t."""
        return self._batches[self._batch_of[t]]

    def counts_before(self, t: int, n: int) -> torch.Tensor:
        """(n,) int64 times-selected of every row before transition t (0-based), from the chosen indices."""
        if self._flat is None:
            self._flat = torch.cat(self._batches) if self._batches else torch.zeros(0, dtype=torch.int64)
        end = self._offsets[self._batch_of[t]] if t < len(self) else self._offsets[-1]
        return torch.bincount(self._flat[:end], minlength=n)

    def tensors(self) -> dict[str, torch.Tensor]:
        """Per-transition scalars as (T,) float64 tensors."""
        return {
            k: torch.tensor(getattr(self, k), dtype=torch.float64)
            for k in ("perf_prev", "progress", "old_log_prob", "value", "reward")
        }

    def nbytes(self) -> int:
        """Bytes held: the index batches, the per-row log-probabilities and the five scalars per transition
        (Python floats, 8 bytes of payload each)."""
        return (
            sum(b.numel() * b.element_size() for b in self._batches)
            + 5 * 8 * len(self)
            + 8 * len(self._batch_of)
            + sum(b.numel() * b.element_size() for b in self.item_log_prob)
            + sum(b.numel() * b.element_size() for b in (*self.label_rows, *self.label_credit) if b is not None)
        )
