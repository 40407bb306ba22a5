"""A trained model out of a run's checkpoints, for the commands that use one: sample, eval, export.

The newest checkpoint that verifies against its seal is taken, as `job train` would resume from;
`--checkpoint` names another by iteration or path, and that one must verify too (a truncated or
corrupt file is refused, not silently replaced by a different one). Loading is weights_only, onto
the CPU (job/checkpoint.py): only the model goes to the device asked for; the optimizer's moments
(twice the weights) and the RNG states are dropped, never copied to a GPU.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from job import checkpoint
from job.device import configure
from job.errors import ConfigError
from job.model import GPT, build_model
from job.rundir import RunDir


@dataclass
class Trained:
    model: GPT  # in eval mode, on the device asked for
    content: dict[str, Any]  # the checkpoint's config and counters: no weights, optimizer or RNG states
    path: Path

    @property
    def config(self) -> dict[str, Any]:
        return self.content["config"]

    @property
    def iteration(self) -> int:
        return int(self.content["iteration"])


def checkpoint_path(run_dir: Path, which: str | None) -> Path | None:
    """The checkpoint `which` names (an iteration such as 400, or a path); None for the newest."""
    if not which:
        return None
    if which.isdigit():
        path = RunDir(run_dir).ckpt / f"ckpt_{int(which):08d}.pt"
    else:
        path = Path(which)
    if not path.is_file():
        kept = [p.name for p in checkpoint.list_checkpoints(RunDir(run_dir).ckpt)]
        raise ConfigError(f"checkpoint: {path} does not exist; this run keeps {', '.join(kept) or 'none'} "
                          f"(give an iteration, e.g. --checkpoint 400, or a path)")
    return path


def load_checkpoint(run_dir: Path, which: str | None = None) -> tuple[dict[str, Any], Path]:
    """The checkpoint's content (on the CPU), verified against its seal, and its path."""
    path = checkpoint_path(run_dir, which)
    if path is None:
        found = checkpoint.load_latest(RunDir(run_dir).ckpt)
        if found is None:
            raise ConfigError(f"run: no checkpoint in {run_dir}/ckpt; train first with `job train --run "
                              f"{run_dir.name}` (or import one with `job import-nanogpt`)")
        return found
    if problem := checkpoint.verify(path):
        raise ConfigError(f"checkpoint: {path} is {problem}; pick another with --checkpoint, or leave it out "
                          f"for the newest whole one")
    try:
        return checkpoint.read(path), path
    except Exception as e:  # sealed, yet torch cannot read it
        raise ConfigError(f"checkpoint: {path} is unreadable ({type(e).__name__}); pick another with "
                          f"--checkpoint") from None


def load_trained(run_dir: Path, which: str | None = None, device: torch.device | None = None) -> Trained:
    """The run's model (newest whole checkpoint, or `which`) in eval mode on `device`."""
    device = device or torch.device("cpu")
    configure(device)  # TF32 for sampling's and scoring's fp32 matmuls, on the card asked for
    content, path = load_checkpoint(run_dir, which)
    model = build_model(content["config"])
    model.load_state_dict(content.pop("model"))
    for heavy in ("optimizer", "scaler", "rng"):
        content.pop(heavy, None)
    return Trained(model=model.to(device).eval(), content=content, path=path)
