"""File safety: a file this job writes is either whole under its final name, or not there.

Every write goes to a temporary sibling (`.<name>.tmp<pid>`), is fsynced, renamed over the
target, and the directory is fsynced so that the rename survives a power cut. A kill at any
instant leaves at most a temporary, which no reader mistakes for a finished file and
`clean_temporaries` removes. Checkpoints, seals, shards, manifests, `config.json` and `DONE` all
go through here, so there is one temporary-name scheme and one clean-up.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

from job.errors import Failure

TMP_MARK = ".tmp"


class WriteError(Failure):
    """A file could not be written (disk full, file-size limit, I/O error); what was written
    before is untouched."""


def write_error(path: Path, cause: BaseException) -> WriteError:
    """One line: the path, the error, and the free space on that filesystem."""
    reason = f"{cause.strerror} (errno {cause.errno})" if isinstance(cause, OSError) and cause.strerror else str(cause)
    try:
        free = f"{shutil.disk_usage(path.parent).free / 1e9:,.1f} GB free there"
    except OSError:
        free = "free space unknown"
    hint = "free some space" if isinstance(cause, OSError) and cause.errno in (errno.ENOSPC, errno.EDQUOT) else (
        "check the disk, its quota and `ulimit -f`")
    return WriteError(f"cannot write {path}: {reason}; {free}. Nothing before it was lost: {hint}, then start "
                      f"the same command again")


def temp_path(path: Path) -> Path:
    return path.with_name(f".{path.name}{TMP_MARK}{os.getpid()}")


def is_temporary(path: Path) -> bool:
    return path.name.startswith(".") and TMP_MARK in path.name


def clean_temporaries(directory: Path) -> int:
    """Remove what interrupted writes left in `directory`; returns how many."""
    if not directory.is_dir():
        return 0
    found = [p for p in directory.iterdir() if is_temporary(p) and p.is_file()]
    for p in found:
        p.unlink(missing_ok=True)
    return len(found)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_open(path: Path) -> Iterator[BinaryIO]:
    """A binary file to stream into (torch.save, shards); it appears at `path` only if the block
    finishes, fsynced. On an exception the temporary is removed and the target left as it was;
    an OSError (disk full, file-size limit) becomes a WriteError naming the path."""
    tmp = temp_path(path)
    try:
        with open(tmp, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise write_error(path, e) from e
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextmanager
def atomic_dir(path: Path) -> Iterator[Path]:
    """A new directory to fill (with the functions here); it appears at `path` only if the block
    finishes, renamed into place whole. `path` must not exist or be empty; on an exception the
    temporary directory is removed and `path` left as it was."""
    tmp = temp_path(path)
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        yield tmp
        os.replace(tmp, path)  # an empty directory at `path` is replaced; a non-empty one refuses (ENOTEMPTY)
        fsync_dir(path.parent)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise write_error(path, e) from e
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def atomic_write_bytes(path: Path, payload: bytes) -> None:
    with atomic_open(path) as f:
        f.write(payload)


def atomic_write_json(path: Path, obj: Any, indent: int | None = 1) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=indent) + "\n").encode())


def read_json(path: Path, default: Any = None) -> Any:
    """The parsed file, or `default` when it is missing, unreadable or not JSON."""
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return default


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
