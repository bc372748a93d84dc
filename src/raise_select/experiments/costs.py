"""Costs of a cell in Φ (one epoch of plain training of the target model over the pool).

Φ's arithmetic (`phi_seconds`, `phi_from_runs`, `steps_per_epoch`) is defined once, in
`raise_select.costs`, below the training and report layers that also need it; it is
re-exported here so the experiments layer has its cost accounting in one module.
"""

from __future__ import annotations

from ..costs import phi_from_runs, phi_seconds, steps_per_epoch

__all__ = ["phi_from_runs", "phi_seconds", "steps_per_epoch"]
