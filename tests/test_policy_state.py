"""State fusion (eq. 2-6), the normaliser, and the split first layer of F_theta."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from raise_select.errors import UserError
from raise_select.features.table import FEATURE_COLUMNS, FeatureTable
from raise_select.policy import AcquisitionMLP, Normalizer, StaticState, fuse_state


def synthetic_features(n: int, sem_dim: int = 4, classes: int = 4, seed: int = 0) -> FeatureTable:
    """A random feature table shaped like featurize's output (shared by the policy tests)."""
    rng = np.random.default_rng(seed)
    cols = {c: rng.normal(size=n) for c in FEATURE_COLUMNS}
    cols["len_prompt"] = rng.integers(1, 400, n).astype(np.float64)
    cols["len_response"] = rng.integers(1, 400, n).astype(np.float64)
    return FeatureTable(
        ids=[f"{i:016x}" for i in range(n)],
        columns=cols,
        sem=rng.normal(size=(n, sem_dim)).astype(np.float32),
        cluster=rng.integers(0, classes, n).astype(np.int64),
        meta={"classes": classes},
    )


def three_example_table() -> FeatureTable:
    cols = {c: np.zeros(3) for c in FEATURE_COLUMNS}
    cols["len_prompt"] = np.array([0.0, math.e - 1, math.e**2 - 1])  # log1p -> 0, 1, 2
    cols["len_response"] = np.array([3.0, 3.0, 3.0])  # constant column
    cols["logp_cond"] = np.array([-1.0, -2.0, -3.0])
    cols["logp_uncond"] = np.array([-2.0, -2.0, -5.0])
    sem = np.array([[2.0, -2.0], [2.0, 2.0], [-2.0, 2.0]], dtype=np.float32)  # RMS 2
    return FeatureTable(
        ids=["a" * 16, "b" * 16, "c" * 16], columns=cols, sem=sem, cluster=np.array([0, 1, 1]), meta={"classes": 2}
    )


def test_fuse_state_on_hand_made_table():
    static = StaticState.from_features(three_example_table())
    fused = fuse_state(static, perf_prev=-1.5, progress=0.25, counts=torch.tensor([0, 2, 1]))
    s = math.sqrt(1.5)  # 1 / std of [0, 1, 2] (= sqrt(2/3))
    r2 = math.sqrt(0.5)  # deviations [1, 1, -2] / sqrt(2)
    expected = torch.tensor(
        [
            # P_{t-1}, t/T, len(x), len(y), logP(y|x), logP(y), sem (2), log(1 + times selected)
            [-1.5, 0.25, -s, 0.0, s, r2, 1.0, -1.0, 0.0],
            [-1.5, 0.25, 0.0, 0.0, 0.0, r2, 1.0, 1.0, math.log(3.0)],
            [-1.5, 0.25, s, 0.0, -s, -2 * r2, -1.0, 1.0, math.log(2.0)],
        ]
    )
    assert fused.shape == (3, static.fused_dim) == (3, 2 + 4 + 2 + 1)
    torch.testing.assert_close(fused, expected, atol=1e-6, rtol=0)
    assert static.classes.tolist() == [0, 1, 1] and static.num_classes == 2


def test_normalizer_round_trip_and_reuse():
    ft = synthetic_features(50)
    norm = Normalizer.fit(ft.difficulty, ft.sem)
    again = Normalizer.from_dict(norm.to_dict())
    np.testing.assert_array_equal(norm(ft.difficulty), again(ft.difficulty))
    z = norm(ft.difficulty)
    np.testing.assert_allclose(z.mean(0), 0, atol=1e-5)
    np.testing.assert_allclose(z.std(0), 1, atol=1e-5)
    # A pool scored with a stored normaliser keeps the training statistics.
    other = synthetic_features(30, seed=1)
    st = StaticState.from_features(other, normalizer=norm)
    np.testing.assert_allclose(st.x[:, :4].numpy(), norm(other.difficulty), atol=1e-6)


def test_static_state_refuses_bad_classes():
    ft = three_example_table()
    ft.cluster = np.array([0, 1, 2])  # meta says 2 classes
    with pytest.raises(UserError, match="class ids"):
        StaticState.from_features(ft)


@pytest.mark.parametrize("chunk", [7, 65536])
def test_split_layer_scores_equal_fused_scores(chunk):
    static = StaticState.from_features(synthetic_features(101, sem_dim=5))
    torch.manual_seed(0)
    actor = AcquisitionMLP(static.fused_dim, hidden=16)
    counts = torch.randint(0, 4, (101,))
    for perf, prog in [(-2.3, 0.0), (0.7, 0.5), (-0.1, 1.0)]:
        reference = actor(fuse_state(static, perf, prog, counts))
        split = actor.score(actor.static_projection(static.x), perf, prog, counts, chunk=chunk)
        torch.testing.assert_close(split, reference, atol=1e-5, rtol=1e-5)
