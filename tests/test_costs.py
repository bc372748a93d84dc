"""Costs in Φ (one epoch of plain training over the pool) and counted token passes."""

import math

import pytest

from raise_select.costs import phi_from_runs, phi_seconds, steps_per_epoch
from raise_select.errors import UserError
from raise_select.experiments import costs


def test_phi_seconds_by_hand():
    assert steps_per_epoch(100, 8) == 13 and steps_per_epoch(96, 8) == 12 and steps_per_epoch(1, 8) == 1
    # 100 s over 10 steps = 10 s a step; ceil(100 / 8) = 13 steps an epoch
    assert phi_seconds(train_seconds=100.0, steps=10, pool_size=100, batch_size=8) == pytest.approx(130.0)
    with pytest.raises(TypeError):  # keyword-only: the old helper took the same numbers in another order
        phi_seconds(100.0, 10, 100, 8)
    with pytest.raises(UserError, match="at least 1 step"):
        phi_seconds(train_seconds=1.0, steps=0, pool_size=10, batch_size=2)
    with pytest.raises(UserError, match="pool 0"):
        steps_per_epoch(0, 2)


def test_phi_from_runs_prefers_the_full_row_then_rand():
    full = [{"train_seconds": 40.0, "steps": 4}]
    rand = [{"train_seconds": 12.0, "steps": 2}, {"train_seconds": 30.0, "steps": 3}]
    assert phi_from_runs(full, rand, 20, 4) == (pytest.approx(40.0 / 4 * 5), "the 100% row (one epoch)")
    phi, where = phi_from_runs([], rand, 20, 4)
    assert phi == pytest.approx((6.0 + 10.0) / 2 * 5) and where.startswith("RAND")
    phi, where = phi_from_runs([], [], 20, 4)
    assert math.isnan(phi) and where == "no plain training cell"
    assert costs.phi_seconds is phi_seconds  # one definition, re-exported by the experiments layer
