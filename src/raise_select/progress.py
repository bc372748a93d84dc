"""Progress reporting that suits where stderr goes.

On a terminal, `progress_bar` is a tqdm bar. Anywhere else (`nohup`, a batch scheduler, a pipe)
a bar would write every refresh as a new line, thousands in a long run; there `progress_bar`
logs one line every `RAISE_SELECT_PROGRESS_SECONDS` (default 30; 0: at every update) seconds instead, and a
last line when a loop that logged ends, through `logging` so the line also lands in the run
folder's log.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import Any, Iterable, Iterator

log = logging.getLogger("raise_select.progress")

INTERVAL_ENV = "RAISE_SELECT_PROGRESS_SECONDS"
DEFAULT_INTERVAL = 30.0


def check_interval() -> float:
    """Seconds between progress lines: `RAISE_SELECT_PROGRESS_SECONDS` (0: a line at every
    update), refused in one line when it is not a finite number >= 0."""
    import math

    from .errors import UserError

    raw = os.environ.get(INTERVAL_ENV, "").strip()
    if not raw:
        return DEFAULT_INTERVAL
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not (math.isfinite(value) and value >= 0):
        raise UserError(
            f"{INTERVAL_ENV}={raw!r}: give seconds between progress lines, a number >= 0 "
            f"(0: a line at every update; unset: {DEFAULT_INTERVAL:g})"
        )
    return value


def _interval() -> float:
    return check_interval()


def stderr_is_terminal() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced or closed stderr
        return False


def progress_bar(
    iterable: Iterable | None = None,
    *,
    total: int | None = None,
    desc: str = "",
    unit: str = "it",
    initial: int = 0,
    disable: bool = False,
    **tqdm_kwargs: Any,
):
    """A tqdm bar on a terminal, a `LogProgress` elsewhere (the same calls work on both:
    iteration, `update`, `set_postfix`, `close`, `with`)."""
    if disable or stderr_is_terminal():
        from tqdm.auto import tqdm

        return tqdm(iterable, total=total, desc=desc, unit=unit, initial=initial, disable=disable, **tqdm_kwargs)
    return LogProgress(iterable, total=total, desc=desc, unit=unit, initial=initial, interval=_interval())


class LogProgress:
    """Counts like a tqdm bar and logs `desc: n/total unit (p%), rate, elapsed[, postfix]`
    at most once per `interval` seconds."""

    def __init__(
        self,
        iterable: Iterable | None = None,
        total: int | None = None,
        desc: str = "",
        unit: str = "it",
        initial: int = 0,
        interval: float = DEFAULT_INTERVAL,
        clock=time.monotonic,
    ):
        self.iterable = iterable
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)  # type: ignore[arg-type]
        self.total = total
        self.desc = desc or "progress"
        self.unit = unit
        self.n = initial
        self.interval = interval
        self._clock = clock
        self._start = self._last = clock()
        self._initial = initial
        self._postfix = ""
        self.lines = 0
        self._last_n = initial
        self._closed = False

    def __iter__(self) -> Iterator:
        if self.iterable is None:
            raise TypeError("LogProgress without an iterable: use update()")
        try:
            for item in self.iterable:
                yield item
                self.update(1)
        finally:
            self.close()

    def __enter__(self) -> "LogProgress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def update(self, n: int = 1) -> None:
        self.n += n
        now = self._clock()
        if now - self._last >= self.interval:
            self._last = now
            self._emit(now)

    def set_postfix(self, ordered_dict: dict | None = None, refresh: bool = True, **kwargs: Any) -> None:
        items = {**(ordered_dict or {}), **kwargs}
        self._postfix = ", ".join(f"{k}={v}" for k, v in items.items())

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self.lines and self.n != self._last_n:  # a loop long enough to report also reports its end
            self._emit(self._clock(), done=True)

    def _emit(self, now: float, done: bool = False) -> None:
        elapsed = now - self._start
        count = f"{self.n}/{self.total}" if self.total else f"{self.n}"
        pct = f" ({100.0 * self.n / self.total:.0f}%)" if self.total else ""
        rate = (self.n - self._initial) / elapsed if elapsed > 0 else 0.0
        eta = ""
        if self.total and rate > 0 and not done:
            eta = f", about {duration((self.total - self.n) / rate)} left"
        post = f" [{self._postfix}]" if self._postfix else ""
        log.info(
            "%s: %s %s %s%s, %.3g %s/s, %s elapsed%s%s",
            self.desc,
            "done" if done else "at",
            count,
            self.unit,
            pct,
            rate,
            self.unit,
            duration(elapsed),
            eta,
            post,
        )
        self.lines += 1
        self._last_n = self.n


def duration(seconds: float) -> str:
    """`42s`, `3m05s`, `1h07m`."""
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"
