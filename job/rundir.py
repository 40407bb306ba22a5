"""One owner of `runs/<run>/`: what lives there, who may write it, and how it is read back.

    runs/<run>/config.json   the resolved settings of the newest start
               log.jsonl     one JSON record a line, appended as the run goes (job status, job report)
               report.png    the run as a picture, when `job report` last drew it
               tensorboard/  wandb/  trackers.json   the experiment trackers' (job/trackers.py)
               ckpt/         checkpoints and their seals (job/checkpoint.py)
               DONE          the run's summary once max_iters is reached
               lock          held (flock) by the one `job train` that owns the run; holds its pid

The lock is an exclusive `flock` held for the life of the process: the kernel drops it when the
process ends, however it ends, so a kill -9 leaves no stale lock. A second `job train` on the same
run fails at once (exit 2) and touches nothing. Log records use the names of job/state.py
(`iteration`, `train_loss`); the reader also understands the older `iter` and `loss`.
"""

from __future__ import annotations

import errno
import fcntl
import json
import math
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from job.errors import ConfigError, UserError
from job.fileio import atomic_write_json, read_json
from job.state import TrainState

LEGACY_KEYS = {"iter": "iteration", "loss": "train_loss"}  # log.jsonl before the names were one


class RunLocked(UserError):
    """Another process owns the run."""


@dataclass(frozen=True)
class RunDir:
    path: Path

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def ckpt(self) -> Path:
        return self.path / "ckpt"

    @property
    def log_path(self) -> Path:
        return self.path / "log.jsonl"

    @property
    def report_path(self) -> Path:
        return self.path / "report.png"

    def read_config(self) -> dict[str, Any] | None:
        return read_json(self.path / "config.json")

    def write_config(self, settings: dict[str, Any]) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.path / "config.json", settings, indent=2)

    def read_done(self) -> TrainState | None:
        """The finished run's summary, or None if it is not finished."""
        done = read_json(self.path / "DONE")
        return TrainState.from_state_dict(done) if isinstance(done, dict) else None

    def write_done(self, state: TrainState) -> None:
        atomic_write_json(self.path / "DONE", {**state.summary(), "finished_at": time.time()}, indent=None)

    def clear_done(self) -> None:
        (self.path / "DONE").unlink(missing_ok=True)

    def has_history(self) -> bool:
        """Anything here but the lock: settings, a log, checkpoints."""
        return self.path.is_dir() and any(p.name != "lock" for p in self.path.iterdir())

    def archive(self) -> Path:
        """Move the run aside (never delete it) so a fresh one can start under the same name."""
        target = self.path.with_name(f"{self.name}.old-{time.strftime('%Y%m%d-%H%M%S')}")
        os.replace(self.path, target)
        return target

    def check_layout(self) -> None:
        """The run's directories are directories (not files some accident left in their place)."""
        for p in (self.path.parent, self.path, self.ckpt):
            if p.exists() and not p.is_dir():
                raise ConfigError(f"run: {p} exists and is not a directory; move it away, or use another "
                                  f"--run (or --out-dir)")

    @contextmanager
    def lock(self) -> Iterator[None]:
        """Own the run for the duration of the block, or raise RunLocked naming the holder."""
        self.check_layout()
        self.path.mkdir(parents=True, exist_ok=True)
        path = self.path / "lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise RunLocked(f"run '{self.name}' is in use by another `job train` (pid {holder}, lock {path}); "
                            f"wait for it to end, stop it (kill -TERM {holder}), or use another --run") from None
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            yield
        finally:
            os.close(fd)  # releases the lock

    def open_log(self) -> RunLog:
        self.path.mkdir(parents=True, exist_ok=True)
        return RunLog(self.log_path)

    def records(self) -> list[dict[str, Any]]:
        """Every log record in order (`job report`); a line a kill cut short is skipped."""
        if not self.log_path.is_file():
            return []
        return [r for r in map(_parse_record, self.log_path.read_bytes().decode("utf-8", "replace").splitlines())
                if r is not None]

    def last_events(self, tail_bytes: int = 1 << 16) -> dict[str, dict[str, Any]]:
        """The newest log record of each event kind, reading only the file's tail."""
        if not self.log_path.is_file():
            return {}
        with open(self.log_path, "rb") as f:
            f.seek(0, 2)
            f.seek(max(0, f.tell() - tail_bytes))
            lines = f.read().decode("utf-8", "replace").splitlines()
        out: dict[str, dict[str, Any]] = {}
        for rec in map(_parse_record, lines):
            if rec is not None:  # None: the first, cut line, or one a kill cut short
                out[rec.get("event", "")] = rec
        return out


def _parse_record(line: str) -> dict[str, Any] | None:
    """One log line under today's names, or None if it is not a whole record."""
    try:
        rec = json.loads(line)
    except json.JSONDecodeError:
        return None
    return {LEGACY_KEYS.get(k, k): v for k, v in rec.items()} if isinstance(rec, dict) else None


class NullLog:
    """The log of a process that is not the run's writer (ranks other than 0 under torchrun):
    records go nowhere, so the run has one log.jsonl, written by one process."""

    def write(self, event: str, **fields: Any) -> None:
        pass

    def close(self) -> None:
        pass


class RunLog:
    """log.jsonl, one record per write() call, appended with O_APPEND.

    The log is for people and `job status`; checkpoints are what a run resumes from. So a log write
    that fails (disk full, file-size limit) does not stop training: the record is dropped, stderr
    says so once, and the next record that fits starts on a line of its own. If the disk stays full,
    the next checkpoint write fails and ends the run (exit 1) with every earlier checkpoint whole.
    """

    def __init__(self, path: Path):
        self.path = path
        self._fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        self.dropped = 0
        # a kill can cut the last line short; start on a fresh line so the next record parses
        size = os.fstat(self._fd).st_size
        self._cut = size > 0 and os.pread(self._fd, 1, size - 1) != b"\n"

    def write(self, event: str, **fields: Any) -> None:
        # strict JSON for every reader (jq, pandas): a NaN or an infinity is written as null
        fields = {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in fields.items()}
        line = json.dumps({"event": event, "time": round(time.time(), 3), **fields}, allow_nan=False) + "\n"
        data = ("\n" + line if self._cut else line).encode()
        try:
            written = os.write(self._fd, data)
        except OSError as e:
            self._dropped(e)
            return
        self._cut = written < len(data)  # a short write leaves a cut line behind
        if self._cut:
            self._dropped(OSError(errno.EFBIG, "short write"))

    def _dropped(self, e: OSError) -> None:
        self.dropped += 1
        if self.dropped == 1:
            print(f"warning: cannot write {self.path} ({e.strerror}); training goes on and log records are "
                  f"dropped until there is room (checkpoints are what a restart resumes from)",
                  file=sys.stderr, flush=True)

    def close(self) -> None:
        os.close(self._fd)
