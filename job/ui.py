"""Terminal output people read: progress bars with rate and ETA (numbers in human units: job/units.py).

Every column is one of rich's, or a `ProgressColumn` of ours that renders any state a task can be
in: before rich has measured a rate (its `speed` is None for the first render, and again after a
pause) the rate shows as "-", never a format error. The bar draws only when stderr is a terminal;
under cron, CI and `docker logs` it is off and the callers print a plain line now and then.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from job.units import human_count


class _Bar:
    def __init__(self, progress: Progress, task: int):
        self._progress, self._task = progress, task

    def advance(self, n: float = 1) -> None:
        self._progress.advance(self._task, n)

    def update(self, **fields: object) -> None:
        self._progress.update(self._task, **fields)


class RateColumn(ProgressColumn):
    """The task's rate in `unit`/s (1.23M tokens/s), or "-" while there is none to show."""

    def __init__(self, unit: str):
        super().__init__()
        self.unit = unit

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        shown = "-" if speed is None else human_count(speed) if speed >= 1000 else f"{speed:.1f}"
        return Text(f"{shown:>7} {self.unit}/s", style="progress.data.speed")


@contextmanager
def progress(description: str, total: float | None, unit: str = "", detail: bool = False) -> Iterator[_Bar]:
    """A bar with count, rate and ETA on stderr (plain, and quiet, when not a terminal).

    With detail=True the count and rate give way to a percentage and a caller-made text,
    set with bar.update(detail="..."), for bars that have several figures to show."""
    middle: list[ProgressColumn] = (
        [TaskProgressColumn(), TextColumn("{task.fields[detail]}")] if detail else
        [MofNCompleteColumn(), *([RateColumn(unit)] if unit else [])])
    columns = [TextColumn("[bold]{task.description}"), BarColumn(), *middle,
               TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn()]
    console = Console(stderr=True)
    with Progress(*columns, console=console, disable=not sys.stderr.isatty()) as p:
        yield _Bar(p, p.add_task(description, total=total, **({"detail": ""} if detail else {})))
