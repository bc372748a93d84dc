"""run_episode's contract with its policy (EpisodePolicy), the Choice each step travels as, and
the selection records it writes, on a stand-in trainer (no LLM)."""

from __future__ import annotations

import dataclasses
import json
import pickle
from types import SimpleNamespace

import pytest
import torch

from raise_select.policy import PolicyConfig, RaisePolicy, RolloutBuffer, StaticState
from raise_select.training.episode import Choice, EpisodePolicy, RandomBatches, run_episode
from test_policy_state import synthetic_features


class StandInTrainer:
    """One process; `step` records the batch; the model is the number of steps taken."""

    accelerator = SimpleNamespace(is_main_process=True, num_processes=1)

    def __init__(self):
        self.batches: list[list[int]] = []

    @property
    def model(self) -> int:
        return len(self.batches)

    def step(self, indices) -> float:
        self.batches.append(list(indices))
        return 1.0 / len(self.batches)


class Pool(list):
    """A pool as run_episode reads it: its length and each example's id."""

    @property
    def examples(self):
        return self


def test_both_policies_meet_the_episode_contract():
    static = StaticState.from_features(synthetic_features(40, sem_dim=3, classes=4))
    assert isinstance(RaisePolicy(static, PolicyConfig(per_class=2)), EpisodePolicy)
    assert isinstance(RandomBatches(static, 8), EpisodePolicy)
    assert not isinstance(object(), EpisodePolicy)


def test_choice_of_an_action_and_of_a_random_step():
    static = StaticState.from_features(synthetic_features(40, sem_dim=3, classes=4))
    policy = RaisePolicy(static, PolicyConfig(per_class=2))
    action = policy.act(
        -2.0, 0.0, torch.zeros(40, dtype=torch.int64), explore=True, generator=torch.Generator().manual_seed(0)
    )
    choice = Choice.of_action(action)
    assert choice.indices == tuple(action.indices.tolist()) and choice.scores == tuple(action.scores.tolist())
    assert (choice.log_prob, choice.value) == (action.log_prob, action.value)
    assert choice.item_log_prob == tuple(action.item_log_prob.tolist())
    assert pickle.loads(pickle.dumps(choice)) == choice  # what a broadcast to other processes does
    with pytest.raises(dataclasses.FrozenInstanceError):
        choice.indices = (0,)
    rand = Choice.random(40, 8, torch.Generator().manual_seed(5))
    assert rand.indices == tuple(torch.randperm(40, generator=torch.Generator().manual_seed(5))[:8].tolist())
    assert rand.scores == (None,) * 8 and rand.log_prob is None and rand.value is None and rand.item_log_prob is None
    assert Choice.of_action(RandomBatches(static, 8).act(0.0, 0.0, None)).item_log_prob is None


def test_run_episode_follows_the_policy_and_writes_the_selection_records():
    """T = 4, M = 2: policy steps 1 and 3, random steps 2 and 4, replayed by hand on a copy of
    the policy and the generator; the buffer holds the policy steps, the records keep their format."""
    n, steps = 40, 4
    static = StaticState.from_features(synthetic_features(n, sem_dim=3, classes=4))
    cfg = PolicyConfig(per_class=2, seed=3)
    policy, replay = RaisePolicy(static, cfg), RaisePolicy(static, cfg)
    pool = Pool(SimpleNamespace(id=f"{i:016x}") for i in range(n))
    trainer, records, buffer = StandInTrainer(), [], RolloutBuffer()
    perf = lambda model: -2.0 + 0.25 * model  # noqa: E731 (P after `model` steps)
    result = run_episode(
        trainer,
        perf,
        policy,
        pool,
        steps,
        select_every=2,
        explore=True,
        generator=torch.Generator().manual_seed(11),
        p0=-2.0,
        where="test",
        on_step=lambda metrics, selection: records.append(selection),
        buffer=buffer,
    )

    gen, counts, expected = torch.Generator().manual_seed(11), torch.zeros(n, dtype=torch.int64), []
    for t in range(1, steps + 1):
        if t % 2:
            action = replay.act(-2.0 + 0.25 * (t - 1), t / steps, counts, explore=True, generator=gen)
            expected.append(action)
            idx = action.indices
        else:
            idx = torch.randperm(n, generator=gen)[:8]
        assert trainer.batches[t - 1] == idx.tolist()
        counts += torch.bincount(idx, minlength=n)

    assert len(buffer) == 2 and buffer.reward == pytest.approx([0.5, 0.5])
    assert result.perf == pytest.approx([-1.5, -1.0]) and result.ret == pytest.approx(1.0)
    for t, action in enumerate(expected):
        assert torch.equal(buffer.chosen(t), action.indices)
        assert buffer.old_log_prob[t] == action.log_prob and buffer.value[t] == action.value
        assert torch.equal(buffer.item_log_prob[t], action.item_log_prob)
    assert [list(r) for r in records] == [["step", "ids", "indices", "scores", "classes", "random"]] * steps
    assert [r["random"] for r in records] == [False, True, False, True]
    assert records[0]["scores"] == expected[0].scores.tolist()
    assert json.dumps(records[1]["scores"]) == json.dumps([None] * 8)
    for r, batch in zip(records, trainer.batches):
        assert type(r["indices"]) is list and r["indices"] == batch
        assert r["ids"] == [f"{i:016x}" for i in batch] and r["classes"] == static.classes[batch].tolist()
