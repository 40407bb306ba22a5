"""The one test harness: how the tests run the job and read what it did. conftest.py holds the
fixtures and imports from here; scripts/gpu/gpu_check.py and scripts/bench/bench_metrics.py import
from here too (tests/ on sys.path), so this module needs nothing beyond the standard library and
what the job itself installs (numpy, torch): a bare GPU box has those.

    job_env         the test process's environment without any JOB_* of the caller's
    run_job         `python -m job ARGS` to its end (metrics off unless the env sets JOB_METRICS_PORT)
    start_job       the same, started: a Popen with stdout and stderr piped (or into a log file)
    run_in_pty      a command in a pseudo-terminal, as a person's shell runs it
    wait_for        poll until a predicate holds; fail naming what, with the process's output
    wait_for_step   poll log.jsonl until a run has logged a step at or past an iteration
    free_port       a TCP port free on 127.0.0.1
    scrape          a Prometheus text exposition (text, or a port's /metrics) as {series: value}
    prom_query      an instant query to a Prometheus on 127.0.0.1: its result list
    binary          a program tests/tools.sh installs (prometheus, amtool, ...), found on PATH or the test fails
    pids_with       our processes whose environment holds given KEY=VALUE entries (torchrun's workers)
    read_log        a run's log.jsonl records
    read_shard      a token shard, read from the format's description
    final_state     a run's newest checkpoint; assert_states_equal compares two bitwise
    train_small_reference, kill_9_after_checkpoint, NanAt: runs the resume and fault tests share
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import pty
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import termios
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]

# A model small enough that a 30-step run takes seconds on 2 cores, with dropout on so that
# exact resume also has to restore the RNG streams.
SMALL = {
    "JOB_N_LAYER": "1", "JOB_N_HEAD": "2", "JOB_N_EMBD": "32", "JOB_BLOCK_SIZE": "32",
    "JOB_BATCH_SIZE": "4", "JOB_GRAD_ACCUM": "2", "JOB_MAX_ITERS": "30", "JOB_WARMUP_ITERS": "5",
    "JOB_LR": "3e-3", "JOB_MIN_LR": "3e-4", "JOB_DROPOUT": "0.1", "JOB_EVAL_INTERVAL": "10",
    "JOB_EVAL_ITERS": "2", "JOB_LOG_INTERVAL": "1", "JOB_CKPT_INTERVAL": "3", "JOB_KEEP_CKPTS": "3",
    "JOB_METRICS_PORT": "0", "JOB_DEVICE": "cpu",
}


# ---- processes -----------------------------------------------------------------------------------

def job_env(**extra: str) -> dict[str, str]:
    """The test process's environment without any JOB_* of the caller's, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOB_")}
    env.update({"PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", **extra})
    return env


def _metrics_off_unless_asked(env: dict[str, str] | None) -> dict[str, str]:
    """`env` (job_env() if none), with metrics off unless it sets JOB_METRICS_PORT: a short command
    must never take the default port, which another test (or a real trainer) may be serving."""
    env = job_env() if env is None else env
    return env if "JOB_METRICS_PORT" in env else {**env, "JOB_METRICS_PORT": "0"}


def run_job(args: list[str], cwd: Path = ROOT, env: dict[str, str] | None = None,
            timeout: float = 300) -> subprocess.CompletedProcess:
    """`python -m job ARGS` to its end, output captured as text."""
    return subprocess.run([sys.executable, "-m", "job", *args], cwd=cwd, env=_metrics_off_unless_asked(env),
                          capture_output=True, text=True, timeout=timeout)


def start_job(args: list[str], cwd: Path = ROOT, env: dict[str, str] | None = None,
              log: Path | None = None) -> subprocess.Popen:
    """`python -m job ARGS`, started: stdout and stderr piped as text, or both appended to `log`
    (a pipe nobody reads can fill and stall a long run)."""
    cmd, env = [sys.executable, "-m", "job", *args], _metrics_off_unless_asked(env)
    if log is None:
        return subprocess.Popen(cmd, cwd=cwd, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    with open(log, "a") as out:
        return subprocess.Popen(cmd, cwd=cwd, env=env, text=True, stdout=out, stderr=subprocess.STDOUT)


def run_in_pty(cmd: list[str], cwd: Path, env: dict[str, str], timeout: float = 300,
               columns: int = 120) -> tuple[int, str]:
    """Run `cmd` with a pseudo-terminal as its stdin, stdout and stderr, as a person's shell would
    (TERM set, `columns` wide); its exit code and everything the terminal received."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, columns, 0, 0))
    env = {**env, "TERM": env.get("TERM", "xterm-256color")}
    env.pop("COLUMNS", None), env.pop("LINES", None)
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdin=slave, stdout=slave, stderr=slave, start_new_session=True)
    os.close(slave)
    chunks, deadline = [], time.time() + timeout
    try:
        while True:
            if time.time() > deadline:
                os.killpg(proc.pid, signal.SIGKILL)
                raise AssertionError(f"{cmd} in a terminal: no end after {timeout}s; it showed: "
                                     f"{b''.join(chunks).decode(errors='replace')[-2000:]}")
            ready, _, _ = select.select([master], [], [], 0.5)
            if not ready:
                continue
            try:
                data = os.read(master, 65536)
            except OSError as e:  # EIO: every holder of the terminal's other end has closed it
                if e.errno != errno.EIO:
                    raise
                break
            if not data:
                break
            chunks.append(data)
    finally:
        os.close(master)
    return proc.wait(timeout=60), b"".join(chunks).decode(errors="replace")


# ---- waiting ---------------------------------------------------------------------------------------

def _said(proc: subprocess.Popen | None, log: Path | None) -> str:
    """What an ended process left to read: its log file's tail, and what is waiting on its stderr
    pipe (read without blocking: a child of the process may still hold the pipe open)."""
    parts = []
    if log is not None and log.is_file():
        parts.append(log.read_text(errors="replace")[-4000:])
    if proc is not None and proc.stderr is not None and not proc.stderr.closed:
        fd, chunks = proc.stderr.fileno(), []
        os.set_blocking(fd, False)
        try:
            while chunk := os.read(fd, 65536):
                chunks.append(chunk)
        except BlockingIOError:
            pass
        parts.append(b"".join(chunks).decode(errors="replace")[-4000:])
    return "\n".join(p for p in parts if p)


def wait_for(predicate: Callable[[], Any], timeout: float = 120, what: str = "", proc: subprocess.Popen | None = None,
             log: Path | None = None, step: float = 0.01, ignoring: tuple[type[BaseException], ...] = ()) -> Any:
    """Poll `predicate()` every `step` seconds until it returns something true, and return that.
    Fails (AssertionError naming `what`) after `timeout` seconds, or as soon as `proc`, if given,
    has ended, with what it left in `log` and on its stderr pipe. Exceptions of the `ignoring`
    kinds count as not yet (a server still starting, a series with no data yet)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the process ended (exit {proc.returncode}) while waiting for "
                                 f"{what or 'the condition'}:\n{_said(proc, log)}")
        try:
            value = predicate()
        except ignoring:
            value = None
        if value:
            return value
        time.sleep(step)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what or 'the condition'}")


def wait_for_step(run_dir: Path, at_least: int, proc: subprocess.Popen | None = None, since: int = 0,
                  timeout: float = 120) -> int:
    """Poll the run's log.jsonl until a step at or past `at_least` is logged after its first `since`
    records (this start's, when `since` is the count before it); the newest step's iteration.
    Fails if `proc` ends first."""
    def newest() -> int | None:
        steps = [r["iteration"] for r in read_log(run_dir)[since:] if r["event"] == "step"]
        return steps[-1] if steps and steps[-1] >= at_least else None

    return wait_for(newest, timeout, what=f"a step >= {at_least} in {run_dir / 'log.jsonl'}", proc=proc, step=0.02)


# ---- what the run serves and writes ------------------------------------------------------------------

def free_port() -> int:
    """A TCP port nothing listens on at 127.0.0.1 (now: take it soon)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scrape(exposition: str | int, timeout: float = 5) -> dict[str, float]:
    """`name{labels}` -> value for every sample of a Prometheus text exposition: the text itself,
    or the port on 127.0.0.1 whose /metrics serves it (OSError while it cannot be reached)."""
    if isinstance(exposition, int):
        with urllib.request.urlopen(f"http://127.0.0.1:{exposition}/metrics", timeout=timeout) as r:
            exposition = r.read().decode()
    out = {}
    for line in exposition.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            out[key] = float(value)
    return out


def binary(name: str) -> str:
    """The path of `name`, one of the programs `make test` installs besides Python (tests/tools.sh);
    a test that needs one and cannot find it fails, naming how to get it (no test skips for it)."""
    path = shutil.which(name)
    if not path:
        raise AssertionError(f"'{name}' not found on PATH: `make test-tools` installs it (tests/tools.sh: sudo "
                             f"apt-get install -y prometheus prometheus-alertmanager tini), or put it on PATH")
    return path


def prom_query(port: int, expr: str) -> list[dict]:
    """The result of an instant query to the Prometheus on 127.0.0.1:`port` (OSError while it
    cannot be reached)."""
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.loads(r.read())["data"]["result"]


def pids_with(env_entries: set[str]) -> list[int]:
    """Our processes whose environment holds all of `env_entries` (KEY=VALUE)."""
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                entries = set(proc.joinpath("environ").read_bytes().decode(errors="replace").split("\0"))
            except OSError:
                continue
            if env_entries <= entries:
                found.append(int(proc.name))
    return found


def read_log(run_dir: Path) -> list[dict]:
    """log.jsonl records (none before the run has written one); a line a kill cut short is
    skipped, as `job status` does."""
    path = run_dir / "log.jsonl"
    out = []
    for line in path.read_text().splitlines() if path.is_file() else []:
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def read_shard(path: Path) -> np.ndarray:
    """llm.c's shard format checked field by field from its description, not through our loader:
    256 little-endian int32 (magic 20240520, version 1, token count, the rest zero), then uint16."""
    raw = path.read_bytes()
    header = np.frombuffer(raw[:1024], dtype="<i4")
    assert header.size == 256, f"{path}: header is not 256 int32"
    assert header[0] == 20240520, f"{path}: magic {header[0]}"
    assert header[1] == 1, f"{path}: version {header[1]}"
    assert len(raw) == 1024 + 2 * int(header[2]), f"{path}: size does not match the token count"
    assert not header[3:].any(), f"{path}: reserved header ints are not zero"
    return np.frombuffer(raw[1024:], dtype="<u2")


def final_state(run_dir: Path) -> dict:
    newest = sorted((run_dir / "ckpt").glob("ckpt_*.pt"))[-1]
    return torch.load(newest, map_location="cpu", weights_only=True)


def assert_states_equal(a: dict, b: dict) -> None:
    """Model and optimizer tensors bitwise equal."""
    assert a["iteration"] == b["iteration"]
    assert a["model"].keys() == b["model"].keys()
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), f"model tensor {k} differs"
    # AdamW's state_dict (the nanogpt recipe), or Muon's and AdamW's side by side (job/optim.py)
    parts = [(n, a["optimizer"][n], b["optimizer"][n]) for n in ("muon", "adamw")] if "muon" in a["optimizer"] \
        else [("adamw", a["optimizer"], b["optimizer"])]
    for name, oa, ob in parts:
        sa, sb = oa["state"], ob["state"]
        assert sa.keys() == sb.keys(), f"{name}: state of other parameters"
        for pid in sa:
            for k, v in sa[pid].items():
                assert torch.equal(v, sb[pid][k]), f"{name} state {pid}.{k} differs"


# ---- runs the resume and fault tests share --------------------------------------------------------

def train_small_reference(shakespeare: Path, out: Path, run: str) -> Path:
    """SMALL trained once without interruption: what an interrupted run must end up equal to."""
    res = run_job(["train", "--run", run], env=job_env(**SMALL, JOB_DATA=str(shakespeare), JOB_OUT_DIR=str(out)))
    assert res.returncode == 0, res.stderr
    return out / run


def kill_9_after_checkpoint(run_dir: Path, env: dict[str, str], iteration: int) -> int:
    """Start `job train` on run_dir, SIGKILL it once checkpoint `iteration` is sealed; its pid."""
    proc = start_job(["train", "--run", run_dir.name], env=env)
    wait_for(lambda: (run_dir / "ckpt" / f"ckpt_{iteration:08d}.json").is_file(),
             what=f"checkpoint {iteration} of {run_dir}")
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    return proc.pid


class NanAt(torch.nn.Module):
    """The model, except that at the chosen optimizer steps its training loss is NaN (a bad batch):
    step n is micro-batches (n - 1) * grad_accum + 1 to n * grad_accum of this process's calls."""

    def __init__(self, model: torch.nn.Module, steps: set[int], grad_accum: int):
        super().__init__()
        self.model, self.steps, self.grad_accum, self.calls = model, set(steps), grad_accum, 0

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> Any:
        logits, loss = self.model(x, y)
        if self.training:
            self.calls += 1
            if (self.calls - 1) // self.grad_accum + 1 in self.steps:
                loss = loss * float("nan")
        return logits, loss
