"""Who may write a run, and whether there is anything left to do: decided in one place for every
way `job train` starts (one process, each of torchrun's, and the launcher that starts torchrun).

One `job train` at a time owns runs/<run>: it holds the run's lock (job/rundir.py) for as long as
it trains, so a second start on the same run touches nothing and exits 2. `--fresh` moves an old
run's files aside while holding the lock, and takes the new directory's lock before it lets the
old one go, so no other start can slip in between. A run already DONE at max_iters is left alone:
that check only reads, so it needs no lock and writes nothing, not even the lock file.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

from job.rundir import RunDir


def already_done(run: RunDir, max_iters: int) -> bool:
    """Whether the run has reached max_iters (then say so); read-only."""
    done = run.read_done()
    if done and done.iteration >= max_iters:
        print(f"run '{run.name}' is already done at iteration {done.iteration}; nothing to do")
        return True
    return False


def nothing_to_do(run: RunDir, max_iters: int, fresh: bool) -> bool:
    """A start that would train nothing: the run is done and not asked to start over."""
    return not fresh and already_done(run, max_iters)


@contextmanager
def owning(run: RunDir, fresh: bool) -> Iterator[None]:
    """Hold the run for the block; with `fresh`, an old run is moved aside first (never deleted)."""
    with ExitStack() as held:
        held.enter_context(run.lock())  # first: a second `job train` on this run touches nothing
        if fresh and run.has_history():
            print(f"--fresh: moved the old run to {run.archive()}", flush=True)
            held.enter_context(run.lock())  # the new directory's lock, before the old one is let go
        yield
