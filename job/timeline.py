"""A run's history as its newest state embodies it, from log.jsonl's records: one point per
iteration, the steps redone after a crash or a roll-back replacing the ones they redo (the log
holds both), and the restarts, stops, roll-backs and imports marked. `job report` summarises it,
job/commands/plot.py draws it, and job/trackers.py fills a tracker in from it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

MARKS = {"resume": ("restart", "tab:green"), "stop": ("stop", "tab:red"), "rollback": ("roll-back", "tab:orange"),
         "import": ("import", "tab:purple")}


@dataclass
class Timeline:
    steps: list[dict[str, Any]] = field(default_factory=list)  # one per iteration logged, oldest first
    evals: list[dict[str, Any]] = field(default_factory=list)
    marks: list[tuple[str, int]] = field(default_factory=list)  # (event, iteration)

    def column(self, key: str, rows: list[dict[str, Any]] | None = None) -> np.ndarray:
        return np.array([np.nan if r.get(key) is None else r[key] for r in (self.steps if rows is None else rows)],
                        dtype=float)

    def keep_until(self, iteration: int) -> None:
        """Forget the steps and evals from `iteration` on: they are being redone."""
        self.steps = [r for r in self.steps if r["iteration"] < iteration]
        self.evals = [r for r in self.evals if r["iteration"] < iteration]

    def at(self, iterations: np.ndarray | list[int], key: str) -> np.ndarray:
        """`key` (tokens, elapsed_s) at these iterations, interpolated between logged steps."""
        its = self.column("iteration")
        if its.size == 0:
            return np.full(len(iterations), np.nan)
        return np.interp(np.asarray(iterations, dtype=float), np.concatenate([[0.0], its]),
                         np.concatenate([[0.0], self.column(key)]))


def timeline(records: list[dict[str, Any]]) -> Timeline:
    """The log's records as the newest state's history: a step record at or before one already
    kept means the steps after it were redone (resumed from a checkpoint, or rolled back)."""
    t = Timeline()
    for rec in records:
        event, it = rec.get("event"), rec.get("iteration")
        if not isinstance(it, int):
            continue
        if event == "resume":  # back to the checkpoint's iteration: what was logged after it was lost
            t.keep_until(it + 1)
        if event in ("step", "eval") and t.steps and it <= t.steps[-1]["iteration"]:
            t.keep_until(it)  # a step redone (an eval is logged just before its step's record)
        if event == "step":
            t.steps.append(rec)
        elif event == "eval" and rec.get("val_loss") is not None:
            t.evals.append(rec)
        if event in MARKS:
            t.marks.append((event, it))
    return t
