"""Checkpoints that are either whole and verified, or not there.

Each checkpoint is two files in the run's `ckpt/`: `ckpt_NNNNNNNN.pt` (torch.save of plain tensors
and containers, so it loads with weights_only=True) and `ckpt_NNNNNNNN.json`, its seal: size,
sha256 and the run's summary (job/state.py), which `job status` reads without touching the big
file. Both are written atomically (job/fileio.py); the seal goes last, so a checkpoint without a
matching seal was never finished. Loading walks from the newest down and takes the first one whose
seal matches. What a checkpoint holds is defined once, in `snapshot` and `restore`.

Every checkpoint is read onto the CPU (`read`), whatever device trains: `load_state_dict` copies
each tensor to where its parameter lives, the RNG states must be CPU byte tensors anyway, and a
roll-back then never holds a second model and optimizer on the card. When checkpoints verify
against their seals but none of them loads (a torch upgrade, a weights_only change, memory), the
run is refused (`Unloadable`) rather than started over: a new run's checkpoints would rotate the
old ones away.

"optimizer" is the optimizer's own state_dict: torch AdamW's for optimizer adamw (the nanogpt
recipe, and every checkpoint written before recipes existed), and {"muon": Muon's, "adamw":
AdamW's} for optimizer muon (job/optim.py). A checkpoint's config without the recipe settings
is read as the nanogpt recipe (config.LEGACY).

An imported checkpoint (`job import-nanogpt`) has the same layout with an empty data fingerprint
and no optimizer moments: weights made elsewhere, with no data order, optimizer or RNG stream of
a run here to continue. Restoring one loads the weights and leaves the optimizer fresh, so
training on it starts AdamW anew on whatever data is configured.

torch is imported where it is used, so that reading seals (`job status`) stays light.
"""

from __future__ import annotations

import errno
import re
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from job.errors import Failure
from job.fileio import atomic_open, atomic_write_json, read_json, sha256_file
from job.state import TrainState

if TYPE_CHECKING:
    import torch

PATTERN = re.compile(r"^ckpt_(\d{8})\.pt$")
WRAPPER_PREFIXES = ("_orig_mod.", "module.")  # torch.compile's and DDP's, in either order


class Unloadable(Failure):
    """Checkpoints that verify against their seals, none of which torch can load: nothing is
    touched, and the message says which and why, and how to start over."""


def list_checkpoints(ckpt_dir: Path) -> list[Path]:
    """Checkpoint files, newest first."""
    if not ckpt_dir.is_dir():
        return []
    found = [p for p in ckpt_dir.iterdir() if PATTERN.match(p.name)]
    return sorted(found, key=lambda p: int(PATTERN.match(p.name).group(1)), reverse=True)


def seal_path(path: Path) -> Path:
    return path.with_suffix(".json")


def read_seal(path: Path) -> dict[str, Any] | None:
    seal = read_json(seal_path(path))
    return seal if isinstance(seal, dict) else None


def strip_compile_prefix(state: dict[str, Any]) -> dict[str, Any]:
    """torch.compile wraps the model and prefixes every key with `_orig_mod.`, DDP with `module.`;
    never save either (the loop saves the bare model's state, so this is a safety net)."""
    def bare(key: str) -> str:
        while key.startswith(WRAPPER_PREFIXES):
            key = key.split(".", 1)[1]
        return key

    return {bare(k): v for k, v in state.items()}


def snapshot(model: torch.nn.Module, optimizer: torch.optim.Optimizer, scaler: Any, state: TrainState,
             config: dict[str, Any], data_fingerprint: str, device: torch.device) -> dict[str, Any]:
    """What a checkpoint holds: model (no compile prefix), optimizer, GradScaler, the run's
    counters and loader position (TrainState, at the top level), every RNG stream, the resolved
    config and the fingerprint of the data it was trained on."""
    return {
        "model": strip_compile_prefix(model.state_dict()), "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict(), **state.state_dict(), "rng": rng_state(device),
        "config": config, "data_fingerprint": data_fingerprint,
    }


def is_imported(saved: dict[str, Any]) -> bool:
    """Weights made elsewhere: no data fingerprint, nothing of a training run here to continue."""
    return not saved.get("data_fingerprint")


def restore(saved: dict[str, Any], model: torch.nn.Module, optimizer: torch.optim.Optimizer, scaler: Any,
            device: torch.device) -> TrainState:
    """Put a snapshot back; every RNG stream last, so nothing drawn in between shifts them. An
    imported one puts back the weights and its counters only, and empties the optimizer's state."""
    model.load_state_dict(saved["model"])
    if is_imported(saved):
        from job.optim import reset  # here, not at the top: reading seals loads no torch

        reset(optimizer)
        return TrainState.from_state_dict(saved)
    load_optimizer(optimizer, saved["optimizer"])
    scaler.load_state_dict(saved["scaler"])
    set_rng_state(saved["rng"], device)
    return TrainState.from_state_dict(saved)


# How an optimizer runs, not what it learned: the device it resumes on decides these (a run started
# on a CPU keeps AdamW's reference loop there, and gets the fused kernel on a GPU).
KERNEL_OPTIONS = ("fused", "foreach", "capturable", "differentiable")


def load_optimizer(optimizer: torch.optim.Optimizer, saved: dict[str, Any]) -> None:
    """The optimizer's moments and step counts from `saved`, keeping this optimizer's own kernel
    options (load_state_dict would put back the ones of the device the checkpoint came from)."""
    options = [{k: g[k] for k in KERNEL_OPTIONS if k in g} for g in optimizer.param_groups]
    optimizer.load_state_dict(saved)
    for group, own in zip(optimizer.param_groups, options, strict=True):
        group.update(own)


def nonfinite(content: Any, name: str = "") -> list[str]:
    """Names of the floating-point tensors in `content` (nested dicts and lists) holding a NaN or an
    infinity; one host sync per device."""
    import torch

    found: list[tuple[str, torch.Tensor]] = []

    def walk(obj: Any, at: str) -> None:
        if isinstance(obj, torch.Tensor):
            if obj.is_floating_point():
                found.append((at, obj))
        elif isinstance(obj, dict):
            for k, v in obj.items():
                walk(v, f"{at}.{k}" if at else str(k))
        elif isinstance(obj, list | tuple):
            for i, v in enumerate(obj):
                walk(v, f"{at}[{i}]")

    walk(content, name)
    bad = []
    for device in {t.device for _, t in found}:
        items = [(n, t) for n, t in found if t.device == device]
        flags = torch.stack([torch.isfinite(t).all() for _, t in items]).tolist()
        bad += [n for (n, _), ok in zip(items, flags, strict=True) if not ok]
    return bad


def save(ckpt_dir: Path, content: dict[str, Any], state: TrainState, keep: int) -> Path:
    """Write checkpoint `state.iteration` atomically with its seal, then drop all but the newest
    `keep`: older ones go only once a newer one is whole. The caller has checked `nonfinite`."""
    import torch

    ckpt_dir.mkdir(parents=True, exist_ok=True)
    path = ckpt_dir / f"ckpt_{state.iteration:08d}.pt"
    with atomic_open(path) as f:  # streamed to disk: a 124M model's state never sits twice in RAM
        try:
            torch.save(content, f)
        except RuntimeError as e:  # torch's writer hides the OSError (disk full, file-size limit) behind it
            cause = e.__context__ if isinstance(e.__context__, OSError) else None
            raise cause or OSError(errno.EIO, f"torch.save failed: {str(e).splitlines()[0]}") from e
    seal = {"iteration": state.iteration, "file": path.name, "bytes": path.stat().st_size,
            "sha256": sha256_file(path), "saved_at": time.time(), **state.summary()}
    atomic_write_json(seal_path(path), seal)
    for old in list_checkpoints(ckpt_dir)[keep:]:
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


def read(path: Path) -> dict[str, Any]:
    """A checkpoint file's content, on the CPU, loading only tensors and plain containers."""
    import torch

    return torch.load(path, map_location="cpu", weights_only=True)


def load_latest(ckpt_dir: Path) -> tuple[dict[str, Any], Path] | None:
    """The newest checkpoint that loads whole (on the CPU); each bad one before it is reported on
    stderr. None when there is none to load; Unloadable, in one line, when some verify against
    their seals but none of them loads."""
    skipped: list[str] = []
    unloadable: tuple[Path, str] | None = None
    for path in list_checkpoints(ckpt_dir):
        problem = verify(path)
        if problem is None:
            try:
                content = read(path)
            except Exception as e:  # a sealed file torch still cannot read
                reason = f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0]}"
                problem, unloadable = f"unreadable ({reason})", unloadable or (path, reason)
            else:
                warn_skipped(skipped)
                return content, path
        skipped.append(f"warning: checkpoint {path} is {problem}; falling back to the one before it")
    if unloadable:
        path, reason = unloadable
        raise Unloadable(f"checkpoints in {ckpt_dir} verify against their seals but none loads (newest: "
                         f"{path.name}, {reason[:300]}); nothing was changed. Load them with the torch that wrote "
                         f"them, or start over with --fresh (the old run is kept)")
    warn_skipped(skipped)
    return None


def warn_skipped(lines: list[str]) -> None:
    for line in lines:
        print(line, file=sys.stderr)


def latest_seal(ckpt_dir: Path) -> dict[str, Any] | None:
    """The newest seal whose file has the sealed size, without hashing: cheap enough for `job status`."""
    for path in list_checkpoints(ckpt_dir):
        seal = read_seal(path)
        if seal is not None and seal.get("bytes") == path.stat().st_size:
            return {**seal, "path": str(path)}
    return None


def rng_state(device: torch.device) -> dict[str, Any]:
    """Every RNG a step may touch, as tensors and plain numbers (weights_only-safe)."""
    import random

    import numpy as np
    import torch

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
    import torch

    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    # whatever device the states came back on, torch's setters take CPU byte tensors
    np.random.set_state(("MT19937", n["keys"].cpu().numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    torch.set_rng_state(state["torch"].cpu())
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"].cpu(), device)
