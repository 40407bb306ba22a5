"""Checkpoints that are either whole and verified, or not there.

Each checkpoint is two files: `ckpt_NNNNNNNN.pt` (torch.save of plain tensors and containers, so
it loads with weights_only=True) and `ckpt_NNNNNNNN.json`, its seal: size, sha256 and a summary
that `job status` reads without touching the big file. Both are written to a temporary name,
fsynced and renamed; the seal goes last, so a checkpoint without a matching seal was never
finished. Loading walks from the newest down and takes the first one whose seal matches.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

import torch

from job.data.shards import atomic_write_bytes, sha256_file

PATTERN = re.compile(r"^ckpt_(\d{8})\.pt$")


def ckpt_dir(run_dir: Path) -> Path:
    return run_dir / "ckpt"


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Checkpoint files, newest first."""
    d = ckpt_dir(run_dir)
    if not d.is_dir():
        return []
    found = [p for p in d.iterdir() if PATTERN.match(p.name)]
    return sorted(found, key=lambda p: int(PATTERN.match(p.name).group(1)), reverse=True)


def seal_path(path: Path) -> Path:
    return path.with_suffix(".json")


def read_seal(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(seal_path(path).read_text())
    except (OSError, json.JSONDecodeError):
        return None


def strip_compile_prefix(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """torch.compile wraps the model and prefixes every key with `_orig_mod.`; never save that."""
    return {k.removeprefix("_orig_mod."): v for k, v in state.items()}


def save(run_dir: Path, iteration: int, state: dict[str, Any], summary: dict[str, Any], keep: int) -> Path:
    """Write checkpoint `iteration` atomically with its seal, then drop all but the newest `keep`."""
    d = ckpt_dir(run_dir)
    d.mkdir(parents=True, exist_ok=True)
    path = d / f"ckpt_{iteration:08d}.pt"
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:  # streamed to disk: a 124M model's state never sits twice in RAM
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    digest = sha256_file(tmp)
    os.replace(tmp, path)
    seal = {"iteration": iteration, "file": path.name, "bytes": path.stat().st_size,
            "sha256": digest, "saved_at": time.time(), **summary}
    atomic_write_bytes(seal_path(path), (json.dumps(seal, indent=1) + "\n").encode())
    for old in list_checkpoints(run_dir)[keep:]:
        old.unlink(missing_ok=True)
        seal_path(old).unlink(missing_ok=True)
    return path


def verify(path: Path) -> str | None:
    """None when the file matches its seal, else what is wrong with it."""
    seal = read_seal(path)
    if seal is None:
        return "no seal (the write never finished)"
    size = path.stat().st_size
    if size != seal.get("bytes"):
        return f"truncated: {size} bytes, sealed at {seal.get('bytes')}"
    if sha256_file(path) != seal.get("sha256"):
        return "sha256 differs from its seal (corrupt)"
    return None


def load_latest(run_dir: Path, map_location: str | torch.device = "cpu") -> tuple[dict[str, Any], Path] | None:
    """The newest checkpoint that loads whole; a bad one is reported on stderr and skipped."""
    for path in list_checkpoints(run_dir):
        problem = verify(path)
        if problem is None:
            try:
                return torch.load(path, map_location=map_location, weights_only=True), path
            except Exception as e:  # a sealed file torch still cannot read
                problem = f"unreadable ({type(e).__name__}: {e})"
        print(f"warning: checkpoint {path} is {problem}; falling back to the one before it",
              file=sys.stderr)
    return None


def latest_seal(run_dir: Path) -> dict[str, Any] | None:
    """The newest seal, without hashing: cheap enough for `job status`."""
    for path in list_checkpoints(run_dir):
        seal = read_seal(path)
        if seal is not None and seal.get("bytes") == path.stat().st_size:
            return {**seal, "path": str(path)}
    return None


def clean_temporaries(run_dir: Path) -> None:
    """Leftovers of writes that a kill interrupted; never mistaken for checkpoints anyway."""
    d = ckpt_dir(run_dir)
    if d.is_dir():
        for p in d.iterdir():
            if p.name.startswith(".") and ".tmp" in p.name:
                p.unlink(missing_ok=True)


def rng_state(device: torch.device) -> dict[str, Any]:
    """Every RNG a step may touch, as tensors and plain numbers (weights_only-safe)."""
    import random

    import numpy as np

    py = random.getstate()
    np_state = np.random.get_state()
    out: dict[str, Any] = {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "torch": torch.get_rng_state(),
    }
    if device.type == "cuda":
        out["cuda"] = torch.cuda.get_rng_state(device)
    return out


def set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    import random

    import numpy as np

    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def archive_run(run_dir: Path) -> Path:
    """Move a run aside (never delete it) so a fresh one can start under the same name."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    target = run_dir.with_name(f"{run_dir.name}.old-{stamp}")
    os.replace(run_dir, target)
    return target
