"""Shared fixtures: the embedded corpus prepared once, and a way to run `python -m job` for real."""

from __future__ import annotations

import errno
import fcntl
import json
import os
import pty
import select
import signal
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import numpy as np
import pytest
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


def job_env(**extra: str) -> dict[str, str]:
    """The test process's environment without any JOB_* of the caller's, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOB_")}
    env.update({"PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", **extra})
    return env


def run_job(args: list[str], cwd: Path, env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "job", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


def start_job(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "job", *args], cwd=cwd, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


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


@pytest.fixture(scope="session")
def shakespeare(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The embedded corpus, prepared once per session through the real command."""
    out = tmp_path_factory.mktemp("data") / "shakespeare"
    res = run_job(["prepare", "--source", "shakespeare", "--out", str(out)], cwd=ROOT, env=job_env())
    assert res.returncode == 0, res.stderr
    return out


@pytest.fixture
def small_env(shakespeare: Path, tmp_path: Path) -> dict[str, str]:
    return job_env(**SMALL, JOB_DATA=str(shakespeare), JOB_OUT_DIR=str(tmp_path / "runs"))


def train_small_reference(shakespeare: Path, out: Path, run: str) -> Path:
    """SMALL trained once without interruption: what an interrupted run must end up equal to."""
    res = run_job(["train", "--run", run], cwd=ROOT, env=job_env(**SMALL, JOB_DATA=str(shakespeare),
                                                                 JOB_OUT_DIR=str(out)))
    assert res.returncode == 0, res.stderr
    return out / run


def wait_for(predicate, timeout: float = 120, step: float = 0.01) -> None:
    """Poll until predicate() holds; fail the test after `timeout` seconds."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(step)
    raise AssertionError(f"timed out after {timeout}s")


def kill_9_after_checkpoint(run_dir: Path, env: dict[str, str], iteration: int) -> int:
    """Start `job train` on run_dir, SIGKILL it once checkpoint `iteration` is sealed; its pid."""
    proc = start_job(["train", "--run", run_dir.name], cwd=ROOT, env=env)
    wait_for(lambda: (run_dir / "ckpt" / f"ckpt_{iteration:08d}.json").is_file())
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    return proc.pid


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
