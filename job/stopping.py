"""When a command stops before it is done: a signal (SIGTERM from cron, docker stop or a scheduler;
Ctrl-C) or the time window (max_runtime from this start, stop_at a local time). Either way it ends
with exit 75 and the next start picks up where it stopped.

Two regimes. From the first instruction on (`stop_before_work`), a signal raises `Stopped` at once
wherever the program is: nothing is lost, because every file is written atomically and a prepare
resumes shard by shard. Inside the training loop (`StopFlag`), a signal only sets a flag: the loop
finishes its step and writes a checkpoint first. A second Ctrl-C interrupts at once (exit 130),
except while a checkpoint is being written: it then waits for the write to end.
"""

from __future__ import annotations

import signal
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any

from job.errors import EXIT_STOPPED, Stopped
from job.units import parse_clock, parse_duration


def _raise_stopped(signum: int, _frame: Any) -> None:
    raise Stopped(f"{signal.Signals(signum).name} received; every file is whole, start the same command "
                  f"again to carry on")


def stop_before_work() -> None:
    """SIGTERM and SIGINT raise Stopped (exit 75) wherever the program is."""
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _raise_stopped)


def worker_signals() -> None:
    """For worker processes (forked with the parent's handlers): Ctrl-C, which the terminal sends to
    the whole group, is the parent's to act on; SIGTERM keeps its default, so the pool's own
    terminate() (which sends it) still ends them."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


class StopFlag:
    """SIGTERM/SIGINT set `reason`; the loop reads it after each step. A second SIGINT interrupts
    at once, except inside `protected()` (a checkpoint write), which it lets finish; and except when
    `escalate` is off: under torchrun a Ctrl-C reaches a worker twice (from the terminal and from
    the agent passing it on), and every rank must stop at the same step, so the agent's own timeout
    is what ends a worker that will not stop."""

    def __init__(self, escalate: bool = True) -> None:
        self.reason: str | None = None
        self._old: dict[int, Any] = {}
        self._protected = False
        self._escalate = escalate

    def __enter__(self) -> StopFlag:
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, _frame: Any) -> None:
        if self.reason and signum == signal.SIGINT and not self._protected and self._escalate:
            raise KeyboardInterrupt
        self.reason = signal.Signals(signum).name
        print(f"\n{self.reason} received: finishing this step, then checkpoint and exit "
              f"{EXIT_STOPPED}", file=sys.stderr, flush=True)

    def __exit__(self, *exc: Any) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)

    @contextmanager
    def protected(self) -> Iterator[None]:
        """No KeyboardInterrupt inside: a write that a signal would cut goes to its end."""
        self._protected = True
        try:
            yield
        finally:
            self._protected = False


def deadline(max_runtime: str, stop_at: str, started: float) -> tuple[float, str] | None:
    """(Unix time, reason) of the earliest of max_runtime (from `started`) and stop_at (the next
    such local time after `started`); None when neither is set."""
    options = []
    if max_runtime:
        options.append((started + parse_duration(max_runtime), f"max_runtime {max_runtime}"))
    if stop_at:
        h, m, s = parse_clock(stop_at)
        now = datetime.fromtimestamp(started)
        at = now.replace(hour=h, minute=m, second=s, microsecond=0)
        if at <= now:
            at += timedelta(days=1)
        options.append((at.timestamp(), f"stop_at {stop_at}"))
    return min(options) if options else None


def reached(limit: tuple[float, str] | None, now: float | None = None) -> str | None:
    """The reason, once the deadline has passed."""
    if limit and (time.time() if now is None else now) >= limit[0]:
        return limit[1]
    return None
