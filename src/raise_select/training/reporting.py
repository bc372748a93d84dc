"""Where training scalars go besides `metrics.jsonl`: `report_to` as in `transformers`'
`TrainingArguments` (`none`, `tensorboard`, `wandb`, `all`, or a comma-separated list).

- `tensorboard`: event files in `<out>/tensorboard` (`torch.utils.tensorboard`);
- `wandb`: a Weights & Biases run whose files live in `<out>/wandb` (project `$WANDB_PROJECT`,
  default `raise-select`; `WANDB_MODE=offline` writes the run there without a network, to
  sync later with `wandb sync`). Every process start is a new W&B run.

Both get the same scalars under the same names: `step/<key>` against the global step
(`round x steps + step`), `round/<key>` against the round, and `<kind>/<key>` at 0 for a
one-off record (train-policy's `reference` episode, finetune's `finetune` summary). W&B needs one increasing
step per run, so each family carries its own x axis (`step/x`, `round/x`, `define_metric`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

from ..errors import UserError

REPORT_TO = ("tensorboard", "wandb")
WANDB_PROJECT_ENV = "WANDB_PROJECT"
DEFAULT_PROJECT = "raise-select"


def parse_report_to(value: str | Iterable[str] | None, tensorboard: bool = False) -> list[str]:
    """The targets named by `value` (`none` / `all` / names, comma-separated or a list);
    `tensorboard=True` is the older `--tensorboard` flag and adds `tensorboard`."""
    if value is None:
        names: list[str] = []
    elif isinstance(value, str):
        names = [v.strip().lower() for v in value.split(",") if v.strip()]
    else:
        names = [str(v).strip().lower() for v in value]
    if "all" in names:
        names = list(REPORT_TO)
    names = [n for n in names if n != "none"]
    unknown = [n for n in names if n not in REPORT_TO]
    if unknown:
        raise UserError(f"report_to: unknown target '{unknown[0]}'; available: none, {', '.join(REPORT_TO)}, all")
    if tensorboard:
        names.append("tensorboard")
    return [n for n in REPORT_TO if n in names]


class Reporter:
    """Opens the named targets for a run folder; `log` sends one family of scalars to each."""

    def __init__(self, out: str | Path, targets: list[str], config: dict | None = None):
        self.out = Path(out)
        self._tb = None
        self._wandb = None
        if "tensorboard" in targets:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(self.out / "tensorboard"))
        if "wandb" in targets:
            try:
                import wandb
            except ImportError:
                raise UserError(
                    "report_to wandb: the wandb package is not installed; pip install 'raise-select[wandb]'"
                ) from None
            self.out.mkdir(parents=True, exist_ok=True)
            self._wandb = wandb.init(
                project=os.environ.get(WANDB_PROJECT_ENV) or DEFAULT_PROJECT,
                name=self.out.resolve().name,
                dir=str(self.out),
                config=config or {},
            )
            for family in ("step", "round"):
                self._wandb.define_metric(f"{family}/x")
                self._wandb.define_metric(f"{family}/*", step_metric=f"{family}/x")

    @property
    def active(self) -> bool:
        return self._tb is not None or self._wandb is not None

    def log(self, family: str, scalars: dict[str, float], x: int) -> None:
        """`scalars` as `<family>/<key>` at x (`family` is `step` or `round`)."""
        if self._tb is not None:
            for key, value in scalars.items():
                self._tb.add_scalar(f"{family}/{key}", value, x)
            self._tb.flush()
        if self._wandb is not None:
            self._wandb.log({f"{family}/x": x, **{f"{family}/{k}": v for k, v in scalars.items()}})

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        if self._wandb is not None:
            self._wandb.finish()
            self._wandb = None
