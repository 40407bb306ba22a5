"""Terminal output people read: progress bars with rate and ETA, and human units."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


class _Bar:
    def __init__(self, progress: Progress, task: int):
        self._progress, self._task = progress, task

    def advance(self, n: float = 1) -> None:
        self._progress.advance(self._task, n)

    def update(self, **fields: object) -> None:
        self._progress.update(self._task, **fields)


@contextmanager
def progress(description: str, total: float | None, unit: str = "", detail: bool = False) -> Iterator[_Bar]:
    """A bar with count, rate and ETA on stderr (plain, and quiet, when not a terminal).

    With detail=True the count and rate give way to a percentage and a caller-made text,
    set with bar.update(detail="..."), for bars that have several figures to show."""
    middle = ([TaskProgressColumn(), TextColumn("{task.fields[detail]}")] if detail else
              [MofNCompleteColumn(), TextColumn(f"{{task.speed:>8.1f}} {unit}/s" if unit else "")])
    columns = [TextColumn("[bold]{task.description}"), BarColumn(), *middle,
               TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn()]
    console = Console(stderr=True)
    with Progress(*columns, console=console, disable=not sys.stderr.isatty()) as p:
        yield _Bar(p, p.add_task(description, total=total, **({"detail": ""} if detail else {})))


def human_duration(seconds: float) -> str:
    if seconds != seconds or seconds < 0:  # NaN or unknown
        return "?"
    s = int(seconds)
    if s >= 86400:
        return f"{s // 86400}d{s % 86400 // 3600:02d}h"
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{seconds:.1f}s"


def human_count(n: float) -> str:
    for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return f"{n:.0f}"
