"""What the online batch selectors (`greats`, `rho`) share.

An online selector chooses batch t from the model M_t being trained, so its choice cannot be
made before training: `select` trains the target model (`training.loop.train_on_schedule`
with a per-step batch function), and the batches it chose become the schedule recorded in
`selection.json`; the trained model is saved to `<out>/model`. At every step a candidate
set of `candidates` x B rows is drawn the way a shuffled data loader with large batches
draws them (seeded epochs of permutations of the pool, the last incomplete set of an epoch
dropped), and the method keeps B of them. Dynamic methods train for the matched number of
steps T = ceil(epochs x budget / B), the same as RAISE's. A run saves its state every
`CHECKPOINT_SECONDS` to `<out>/checkpoint/<method>.pt` (atomically); a rerun with the same
settings continues from there and ends with the model and batches an uninterrupted run has;
the checkpoint is keyed on the settings and on the contents of the model, pool and validation
set, so a checkpoint of another model at the same path is not resumed (training starts over).
"""

from __future__ import annotations

import logging
import pickle
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import ClassVar, Iterator, Sequence

import numpy as np
import torch

from ..config import check_fields
from ..data.pools import Pool
from ..errors import UserError
from ..io import atomic_path, fingerprint
from .base import Selection, SelectionContext, matched_steps

log = logging.getLogger(__name__)

# A run saves its state (weights, optimizer, schedule, RNG, the batches chosen so far) to
# `<out>/checkpoint/<method>.pt` at most this often, so a rerun resumes from there.
CHECKPOINT_SECONDS = 600.0


def candidate_sets(n: int, size: int, seed: int) -> Iterator[np.ndarray]:
    """Endless candidate sets of `size` distinct pool rows: seeded epochs of permutations of
    0..n-1 cut into sets, the incomplete last set of an epoch dropped (`size` >= n: the whole
    pool, reshuffled, every time)."""
    if size < 1 or n < 1:
        raise UserError(f"a candidate set needs at least one row of a non-empty pool, got {size} of {n}")
    rng = np.random.default_rng(seed)
    size = min(size, n)
    while True:
        perm = rng.permutation(n)
        for s in range(0, n - size + 1, size):
            yield perm[s : s + size]


@torch.no_grad()
def row_losses(model, encoded: Sequence, pad_id: int, batch_size: int = 16, eval_mode: bool = True) -> torch.Tensor:
    """(N,) mean response-token loss of each encoded row under `model`, without gradients (in
    eval mode unless `eval_mode` is False; the model's mode is restored after). Rows are batched
    by length, so little is padding."""
    from ..training.loop import collate
    from .lm import batch_response_losses

    device = next(model.parameters()).device
    was_training = model.training
    if eval_mode:
        model.eval()
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i].input_ids))
    out = torch.zeros(len(encoded))
    try:
        for s in range(0, len(order), batch_size):
            rows = order[s : s + batch_size]
            batch = {k: v.to(device) for k, v in collate([encoded[i] for i in rows], pad_id).items()}
            out[rows] = batch_response_losses(model, batch).float().cpu()
    finally:
        model.train(was_training)
    return out


@dataclass
class OnlineSelector:
    """Base of the online methods: subclasses set `name` and implement `choose` (and
    `prepare` when they need something before the first step)."""

    name: ClassVar[str] = ""
    dynamic: ClassVar[bool] = True
    online: ClassVar[bool] = True

    candidates: int = field(
        default=4, metadata={"help": "candidate set per step, in batches: `candidates` x B rows drawn uniformly"}
    )

    def needs_features(self) -> bool:
        return False  # the model being trained and the validation set

    def prepare(self, pool: Pool, trainer, ctx: SelectionContext) -> dict:
        """Work done once before the first step (with the trainer's M_0); returns info to record."""
        return {}

    def __post_init__(self) -> None:
        check_fields(self, self._rules(), self.name)

    def _rules(self) -> list[tuple[bool, str, str]]:
        """The rules on the options, checked when the method is built (a subclass adds its own)."""
        return [(self.candidates >= 1, "candidates", "must be >= 1 (batches per candidate set)")]

    def check_inputs(self, ctx: SelectionContext) -> None:
        """Refuse, before the model is loaded, a run missing what the method needs (by default
        the validation set)."""
        ctx.require_validation(self.name)

    def choose(self, trainer, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """`k` of the candidate `rows` for the next update, and their scores."""
        raise NotImplementedError

    def given_gradients(self, trainer, rows: np.ndarray):
        """The update's gradient on the chosen `rows` when choosing computed it already (a
        `GivenGradients`), or None: the trainer takes a pass of its own."""
        return None

    def online_state(self) -> dict:
        """The method's own state between steps (its random generators), for a resume."""
        return {}

    def load_online_state(self, state: dict) -> None:
        """Back to the point `online_state` recorded."""

    def select(self, pool: Pool, budget: int, ctx: SelectionContext) -> Selection:
        from ..features.featurize import model_fingerprint
        from ..training.loop import LMConfig, train_on_schedule

        model = ctx.require_model(self.name)
        self.check_inputs(ctx)
        b = ctx.batch_size
        if len(pool) < b:
            raise UserError(f"{self.name}: the pool has {len(pool)} examples, fewer than one batch of {b}")
        steps = ctx.steps or matched_steps(budget, b, ctx.epochs)
        lm = ctx.lm or LMConfig(template=ctx.template, max_length=ctx.max_length, seed=ctx.seed)
        size = min(self.candidates * b, len(pool))
        chosen: list[int] = []
        scores: list[float] = []
        info: dict = {}
        clock = {"prepare": 0.0, "select": 0.0, "train": 0.0}
        checkpoint = None if ctx.out_dir is None else Path(ctx.out_dir) / "checkpoint" / f"{self.name}.pt"
        run_key = fingerprint(
            {
                "method": self.name,
                "options": asdict(self),
                "pool": pool.fingerprint,
                "steps": steps,
                "batch_size": b,
                "seed": ctx.seed,
                "lm": asdict(lm),
                "model": model_fingerprint(model),  # its files' contents: a model rebuilt at the path is another M_0
                "validation": [e.id for e in ctx.validation or []],
            }
        )

        def batches(trainer):
            start = time.perf_counter()
            info.update(self.prepare(pool, trainer, ctx))
            clock["prepare"] = time.perf_counter() - start
            sets = candidate_sets(len(pool), size, ctx.seed)
            saved = _load_checkpoint(checkpoint, run_key)
            if saved is not None:
                trainer.load_training_state(saved["trainer"])
                self.load_online_state(saved["method"])
                torch.set_rng_state(saved["torch_rng"])
                chosen.extend(saved["chosen"])
                scores.extend(saved["scores"])
                clock["select"], clock["train"] = saved["clock"]
                for _ in range(trainer.step_count):
                    next(sets)
                log.info("%s: resuming after step %d of %d from %s", self.name, trainer.step_count, steps, checkpoint)
            last_save = time.monotonic()
            while trainer.step_count < steps:
                start = time.perf_counter()
                rows, s = self.choose(trainer, next(sets), b)
                given = self.given_gradients(trainer, rows)
                clock["select"] += time.perf_counter() - start
                chosen.extend(int(i) for i in rows)
                scores.extend(float(x) for x in s)
                start = time.perf_counter()
                yield [int(i) for i in rows] if given is None else given
                clock["train"] += time.perf_counter() - start
                if (
                    checkpoint is not None
                    and trainer.step_count < steps
                    and time.monotonic() - last_save >= CHECKPOINT_SECONDS
                ):
                    with atomic_path(checkpoint) as tmp:
                        torch.save(
                            {
                                "key": run_key,
                                "trainer": trainer.training_state(),
                                "method": self.online_state(),
                                "torch_rng": torch.get_rng_state(),
                                "chosen": chosen,
                                "scores": scores,
                                "clock": [clock["select"], clock["train"]],
                            },
                            tmp,
                        )
                    last_save = time.monotonic()

        out_dir = None if ctx.out_dir is None else Path(ctx.out_dir) / "model"
        train_on_schedule(model, pool, batches, lm, out_dir, steps, ctx.report)
        if checkpoint is not None:
            checkpoint.unlink(missing_ok=True)  # the trained model is saved
        info.update(
            {
                "steps": steps,
                "batch_size": b,
                "candidate_set": size,
                "model_dir": None if out_dir is None else str(out_dir),
                "seconds_prepare": round(clock["prepare"], 3),
                "seconds_per_step_select": round(clock["select"] / steps, 4),
                "seconds_per_step_train": round(clock["train"] / steps, 4),
            }
        )
        log.info(
            "%s: %d steps; per step %.3fs choosing, %.3fs training",
            self.name,
            steps,
            clock["select"] / steps,
            clock["train"] / steps,
        )
        return Selection(indices=chosen, scores=scores, info=info)


def _load_checkpoint(path: Path | None, key: str) -> dict | None:
    """The checkpoint of this run at `path`, or None (none there, or one of other settings)."""
    if path is None or not path.is_file():
        return None
    try:
        saved = torch.load(path, map_location="cpu", weights_only=False)
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as e:
        log.warning("%s: unreadable checkpoint (%s); training from the start", path, e)
        return None
    if saved.get("key") != key:
        log.info("%s: checkpoint of other settings; training from the start", path)
        return None
    return saved
