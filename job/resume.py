"""Whether a run can go on from its newest checkpoint, decided on rank 0 before anything is written.

A checkpoint is continued only where the result is the run it started: the same model shape and
seed, the same optimizer and model function (the recipe's keys), and the same data (by the
dataset's fingerprint). Anything else is refused in one line naming what differs and the
`--recipe`, `--fresh` or `--run` that would do what was meant. An imported checkpoint (job
import-nanogpt) has no data order or optimizer state to keep: only its shape must match. Under
torchrun every machine must hold rank 0's dataset. The run's first write, its config.json, comes
only after these checks.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from job import checkpoint
from job.config import LEGACY, RECIPE_KEYS, SHAPE_KEYS, Config
from job.data.dataset import Dataset
from job.errors import ConfigError
from job.fileio import clean_temporaries
from job.rundir import RunDir


def resume_point(cfg: Config, run: RunDir, fingerprint: str) -> tuple[dict[str, Any], Path] | None:
    """On rank 0: the newest whole checkpoint (on the CPU: restoring copies it to the device; under
    torchrun rank 0 hands it to the other ranks), unless it cannot be continued faithfully, or
    checkpoints are there and none loads; then the run's first write, its settings."""
    clean_temporaries(run.ckpt)
    resumed = checkpoint.load_latest(run.ckpt)
    if resumed:
        refuse_incompatible(resumed[0], cfg, fingerprint)
    run.write_config(cfg.to_dict())
    run.clear_done()  # max_iters was raised past a finished run: carry on
    return resumed


def same_data(data: Dataset, rank0_fingerprint: str) -> None:
    """Every machine of the job must train on the same dataset as rank 0's."""
    if data.fingerprint != rank0_fingerprint:
        raise ConfigError(f"data: {data.path} here (fingerprint {data.fingerprint}) is not the dataset of rank 0 "
                          f"(fingerprint {rank0_fingerprint}); prepare the same dataset on every machine")


def refuse_incompatible(saved: dict[str, Any], cfg: Config, fingerprint: str) -> None:
    """A checkpoint of another model shape, seed or dataset cannot be continued faithfully. An
    imported one (job import-nanogpt) has no data order to keep: only the model's shape must match."""
    old, imported = saved["config"], checkpoint.is_imported(saved)
    keys = [k for k in SHAPE_KEYS if not (imported and k == "seed")]
    diffs = [f"{k} {old.get(k)!r} -> {getattr(cfg, k)!r}" for k in keys if old.get(k) != getattr(cfg, k)]
    # the optimizer and the model's function; a checkpoint from before recipes is a nanogpt one
    recipe = [k for k in RECIPE_KEYS if not (imported and k == "optimizer")]
    diffs += [f"{k} {old.get(k, LEGACY[k])!r} -> {getattr(cfg, k)!r}" for k in recipe
              if old.get(k, LEGACY[k]) != getattr(cfg, k)]
    if not imported and saved["data_fingerprint"] != fingerprint:
        diffs.append(f"data {old.get('data')!r} (fingerprint {saved['data_fingerprint']}) -> {cfg.data!r} "
                     f"({fingerprint})")
    if diffs:
        was = old.get("recipe", "nanogpt")
        hint = f"--recipe {was} to continue it, or " if was != cfg.recipe else ""
        raise ConfigError(f"resume refused, run '{cfg.run_name}' was started with other settings: "
                          f"{'; '.join(diffs)}. Use {hint}--fresh to start over (the old run is kept) or a new --run")
