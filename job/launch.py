"""How `job train` starts: as the only process, as one of torchrun's, or as the launcher that starts
torchrun for `nproc` processes on each of `nnodes` machines. Every way takes the run's ownership
and its "already done" answer from job/ownership.py.

torchrun is the engine: its elastic agent starts one process per GPU, meets the other machines
(c10d rendezvous at rdzv_endpoint), and restarts the group after a crash, up to max_restarts times,
each time from the newest checkpoint. This module only builds its command line from the settings,
passes signals on to it once, and gives the job back its exit code (0/75/1/2), which torchrun
would report as 1 for anything but 0, restarting the group for each of them. So the workers write
an ending on purpose to a directory this process reads, and exit 0 (job/dist.py, exit_code): the
agent restarts only what crashed, and a run that is done, stopped, refused or given up ends here
with its own code.

torchrun runs in a session of its own, so a Ctrl-C at the terminal reaches it once, through this
process, and not a second time directly (a second signal would cut a worker's checkpoint short);
and it is told to stop (SIGTERM) if this process dies.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import fields
from pathlib import Path
from typing import Any

from job import dist
from job.config import ENV_PREFIX, Config
from job.errors import EXIT_DONE, EXIT_FAILED, EXIT_STOPPED, EXIT_USAGE
from job.ownership import nothing_to_do, owning
from job.rundir import RunDir

# How long torchrun's agent waits, after passing a SIGTERM on, for the workers to finish their
# step and write the checkpoint before it kills them (its own default is 30 s). Inside docker's
# --stop-timeout 120 (docs/operations.md, "The container"), so the agent, not docker, has the last word.
SHUTDOWN_GRACE_S = 110
SEVERITY = (EXIT_FAILED, EXIT_USAGE, EXIT_STOPPED, EXIT_DONE)  # when endings disagree, the first wins


def wanted(cfg: Config) -> bool:
    """Several processes asked for, and not already one of them."""
    return cfg.processes > 1 and dist.from_env() is None


def settings_env(cfg: Config) -> dict[str, str]:
    """Every setting as resolved here (defaults, preset, TOML, env file, environment, flags), as
    the JOB_* variables the workers resolve it from: the same settings, and nothing on torchrun's
    command line that its own options could mistake for theirs (--run, --nproc)."""
    text = lambda v: str(v).lower() if isinstance(v, bool) else repr(v) if isinstance(v, float) else str(v)
    return {f"{ENV_PREFIX}{f.name.upper()}": text(getattr(cfg, f.name)) for f in fields(Config)}


def torchrun_command(cfg: Config, verify: bool) -> list[str]:
    """torchrun's command line for `job train`: standalone on one machine, or c10d rendezvous at
    rdzv_endpoint with the run's name as its id, the same on every machine. Not --fresh: that is
    done here, once (a worker restarted by the agent must not move the run it resumes aside)."""
    where = ["--standalone"] if cfg.nnodes == 1 else [
        "--nnodes", str(cfg.nnodes), "--rdzv-backend", "c10d", "--rdzv-endpoint", cfg.rdzv_endpoint,
        "--rdzv-id", cfg.run_name]
    return [sys.executable, "-m", "torch.distributed.run", *where, "--nproc-per-node", str(cfg.nproc),
            "--max-restarts", str(cfg.max_restarts), "--shutdown-timeout", str(SHUTDOWN_GRACE_S),
            "-m", "job", "train", *(["--verify"] if verify else [])]


def start(cfg: Config, fresh: bool, verify: bool) -> int:
    """`job train`: several processes asked for, so start them under torchrun; else train in this
    process (the only one, or one of torchrun's). Returns the exit code."""
    if wanted(cfg):
        return launch(cfg, fresh, verify)
    with dist.joined(cfg) as world:  # under torchrun: one rank of the job; else the only process
        return dist.exit_code(train_here(cfg, fresh, verify, world))


def train_here(cfg: Config, fresh: bool, verify: bool, world: dist.World) -> int:
    """This process's part of `job train`: the run's lock and files are rank 0's (the only
    process's), the metrics each machine's (job/metrics.py), the trackers rank 0's
    (job/trackers.py), the training every rank's."""
    from job.hooks import chain
    from job.metrics import monitoring
    from job.trackers import tracking
    from job.train import train

    run = RunDir(cfg.run_dir)
    # a restart by torchrun's agent resumes the run its first attempt started afresh
    fresh = fresh and os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0"
    if dist.from_rank0(lambda: nothing_to_do(run, cfg.max_iters, fresh)):  # writes nothing, not even the lock
        return EXIT_DONE
    with contextlib.ExitStack() as held:
        dist.from_rank0(lambda: held.enter_context(owning(run, fresh)))
        # Prometheus metrics on metrics_addr:metrics_port while it runs
        hooks = dist.agreed(lambda: held.enter_context(monitoring(cfg, world)))
        # TensorBoard, W&B: a missing package ends here, before any training
        tracked = dist.agreed(lambda: held.enter_context(tracking(cfg, world, run)))
        return train(cfg, chain(hooks, tracked), verify)


def launch(cfg: Config, fresh: bool, verify: bool) -> int:
    """Run `job train` on nproc processes here (one machine of nnodes); returns the job's exit code."""
    # a setting that cannot work ends here, before any process starts
    dist.backend_for(cfg.device, dist.World(size=cfg.processes, local_size=cfg.nproc, distributed=True))
    run = RunDir(cfg.run_dir)
    if nothing_to_do(run, cfg.max_iters, fresh):
        return EXIT_DONE
    if fresh:
        with owning(run, fresh):  # never while a `job train` owns it; the workers take it next
            pass
    with tempfile.TemporaryDirectory(prefix="job-endings-") as where:
        env = {**os.environ, **settings_env(cfg), dist.ENDINGS_DIR: where}
        proc = subprocess.Popen(torchrun_command(cfg, verify), env=env, start_new_session=True,
                                preexec_fn=_stop_with_parent)
        with _passing_signals_to(proc) as passed:
            rc = proc.wait()
        code, summary = ending(Path(where), cfg.nproc, rc, stop_asked=bool(passed))
    print(summary, file=sys.stderr, flush=True)
    return code


def ending(where: Path, nproc: int, torchrun_rc: int, stop_asked: bool = False) -> tuple[int, str]:
    """The job's exit code and a line saying why: the ending this machine's workers wrote, when
    every one of the last attempt did (they agree by construction; else the most severe); else
    75 when a stop was passed on (it came before the workers could say so, or they outlived the
    agent's grace: the newest checkpoint is whole either way); else torchrun's own status, 0 or a
    crash it did not restart from (1)."""
    found: list[tuple[int, int]] = []
    for f in where.glob("rank*"):
        with contextlib.suppress(OSError, ValueError):
            attempt, code = (int(v) for v in f.read_text().split())
            found.append((attempt, code))
    last = max((a for a, _ in found), default=None)
    codes = [c for a, c in found if a == last]
    if len(codes) == nproc:
        code = min(codes, key=lambda c: SEVERITY.index(c) if c in SEVERITY else -1)
        return code, (f"torchrun: the {nproc} processes on this machine ended with exit "
                      f"{', '.join(map(str, sorted(codes)))}; exit {code}")
    if torchrun_rc == 0:
        return EXIT_DONE, f"torchrun: the {nproc} processes on this machine finished; exit 0"
    if stop_asked:
        return EXIT_STOPPED, (f"torchrun: exit {torchrun_rc} after the stop passed on to it, before every process "
                              f"could report; the newest checkpoint is whole; exit {EXIT_STOPPED}")
    return EXIT_FAILED, (f"torchrun: exit {torchrun_rc} after max_restarts restarts or a signal, with no ending from "
                         f"every process (a crash: see above); exit {EXIT_FAILED}")


@contextlib.contextmanager
def _passing_signals_to(proc: subprocess.Popen) -> Iterator[list[int]]:
    """SIGTERM and SIGINT go on to torchrun, which passes them to every worker: each finishes its
    step, rank 0 writes the checkpoint, all end with 75. SIGHUP goes on as SIGTERM. Yields the
    signals passed on."""
    passed: list[int] = []

    def forward(signum: int, _frame: Any) -> None:
        passed.append(signum)
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM if signum == signal.SIGHUP else signum)

    old = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    try:
        yield passed
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


def _stop_with_parent() -> None:
    """In torchrun's process before it starts (Linux): SIGTERM when this launcher dies, so a
    launcher killed with -9 does not leave the workers training on their own."""
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
