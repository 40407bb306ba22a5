"""Terminal output people read: progress bars with rate and ETA (numbers in human units: job/units.py)."""

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
