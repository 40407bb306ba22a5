"""When a run stops before max_iters: a signal (SIGTERM from cron, docker stop or a scheduler;
Ctrl-C) or the time window (max_runtime from this start, stop_at a local time). Either way the
loop finishes its step, writes a checkpoint and exits 75, so the next start picks up there."""

from __future__ import annotations

import signal
import sys
import time
from datetime import datetime, timedelta
from typing import Any

from job.errors import EXIT_STOPPED
from job.units import parse_clock, parse_duration


class StopFlag:
    """SIGTERM/SIGINT set `reason`; the loop reads it after each step. A second SIGINT interrupts
    at once."""

    def __init__(self) -> None:
        self.reason: str | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> StopFlag:
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, _frame: Any) -> None:
        if self.reason and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.reason = signal.Signals(signum).name
        print(f"\n{self.reason} received: finishing this step, then checkpoint and exit "
              f"{EXIT_STOPPED}", file=sys.stderr, flush=True)

    def __exit__(self, *exc: Any) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


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
