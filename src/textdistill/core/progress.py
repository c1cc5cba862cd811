"""Progress reporting that reads well both in a terminal and in a log file.

In a terminal (stderr is a TTY) a tqdm bar redraws itself in place. Under ``nohup``, in CI
or behind a pipe, the same carriage-return redraws would pile thousands of fragments into
one log line, so there a :class:`LogProgress` writes a plain log line at a bounded rate
instead: every ``every_fraction`` of the total (10 % by default) or every ``every_s``
seconds (60 s), whichever comes first (never two within 2 s), with the rate and the time
left, the way Hugging Face and Lightning logs read in CI. Both offer the part of tqdm's
interface the loops use: iteration, ``update``, ``set_postfix``, ``close``, ``disable``,
and use as a context manager.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Protocol, TypeVar

from tqdm.auto import tqdm

logger = logging.getLogger(__name__)

T = TypeVar("T")


class Progress(Protocol):
    """What the training loop and the batch loops ask of a progress reporter."""

    disable: bool

    def update(self, n: int = 1) -> Any: ...

    def set_postfix(self, **values: Any) -> Any: ...

    def close(self) -> Any: ...

    def __iter__(self) -> Iterator[Any]: ...

    def __enter__(self) -> Any: ...

    def __exit__(self, *exc: object) -> Any: ...


def progress(
    iterable: Iterable[T] | None = None,
    *,
    total: int | None = None,
    desc: str,
    unit: str = "it",
    initial: int = 0,
    disable: bool = False,
    interactive: bool | None = None,
) -> Progress:
    """A tqdm bar when stderr is a terminal, else a :class:`LogProgress` (same calls).

    ``interactive`` forces one or the other (tests); ``None`` asks ``sys.stderr.isatty()``.
    """
    if interactive is None:
        interactive = _stderr_is_a_terminal()
    if interactive:
        bar: Progress = tqdm(
            iterable,
            total=total,
            desc=desc,
            unit=unit,
            initial=initial,
            disable=disable,
            dynamic_ncols=True,
        )
        return bar
    return LogProgress(
        iterable, total=total, desc=desc, unit=unit, initial=initial, disable=disable
    )


def _stderr_is_a_terminal() -> bool:
    isatty = getattr(sys.stderr, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:  # a closed stream
        return False


class LogProgress:
    """Plain progress lines at a bounded rate, for logs that are not terminals.

    A line is written when the count crosses the next ``every_fraction`` of ``total`` or when
    ``every_s`` seconds passed since the last line, and once at the end (``close``); a tenth
    reached less than ``min_gap_s`` after the last line waits for the next one, so a job of a
    few seconds writes one line, not ten. E.g.
    ``train: 300/1,000 step (30%), 41.7 step/s, 0:00:16 left, loss=0.4120``. Without a
    ``total`` only the time rule applies. ``clock`` is injectable for tests.
    """

    def __init__(
        self,
        iterable: Iterable[Any] | None = None,
        *,
        total: int | None = None,
        desc: str,
        unit: str = "it",
        initial: int = 0,
        disable: bool = False,
        every_fraction: float = 0.1,
        every_s: float = 60.0,
        min_gap_s: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
        log: logging.Logger = logger,
    ) -> None:
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)  # type: ignore[arg-type]
        self.iterable = iterable
        self.total = total
        self.desc = desc
        self.unit = unit
        self.n = initial
        self.disable = disable
        self.every_fraction = every_fraction
        self.every_s = every_s
        self.min_gap_s = min_gap_s
        self.clock = clock
        self.log = log
        self.postfix: dict[str, Any] = {}
        self._start_n = initial
        self._t0 = clock()
        self._last_t = self._t0
        self._last_n = initial
        self._closed = False
        self.lines = 0

    def __iter__(self) -> Iterator[Any]:
        if self.iterable is None:
            raise TypeError("LogProgress was made without an iterable")
        try:
            for item in self.iterable:
                yield item
                self.update(1)
        finally:
            self.close()

    def __enter__(self) -> LogProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def set_postfix(self, **values: Any) -> None:
        self.postfix = values

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.disable:
            return
        now = self.clock()
        gap = now - self._last_t
        if (self._crossed_a_step() and gap >= self.min_gap_s) or gap >= self.every_s:
            self._write(now)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if not self.disable and self.n != self._last_n:
            self._write(self.clock())

    def _crossed_a_step(self) -> bool:
        if not self.total or self.every_fraction <= 0:
            return False
        step = max(self.total * self.every_fraction, 1.0)
        return int(self.n // step) > int(self._last_n // step) or (
            self.n >= self.total > self._last_n
        )

    def _write(self, now: float) -> None:
        self._last_t, self._last_n = now, self.n
        self.lines += 1
        self.log.info("%s", self.line(now))

    def line(self, now: float | None = None) -> str:
        """The text of one progress line at time ``now`` (default: the clock's)."""
        now = self.clock() if now is None else now
        elapsed = now - self._t0
        done = self.n - self._start_n
        rate = done / elapsed if elapsed > 0 else 0.0
        parts = [f"{self.desc}: {self.n:,}"]
        if self.total:
            parts[0] += f"/{self.total:,} {self.unit} ({100 * self.n / self.total:.0f}%)"
        else:
            parts[0] += f" {self.unit}"
        parts.append(f"{rate:.1f} {self.unit}/s" if rate >= 1 else f"{rate:.2f} {self.unit}/s")
        if self.total and rate > 0 and self.n < self.total:
            parts.append(f"{_clock_time((self.total - self.n) / rate)} left")
        elif self.total and self.n >= self.total:
            parts.append(f"{_clock_time(elapsed)} in all")
        parts.extend(f"{k}={v}" for k, v in self.postfix.items())
        return ", ".join(parts)


def _clock_time(seconds: float) -> str:
    s = round(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"
