"""`job report`: the night as a picture and a paragraph, from the run's files alone (log.jsonl and
the checkpoint seals; no torch, no GPU), so it works while the run is still going.

The picture shows the history the run's newest state embodies: steps redone after a crash or a
roll-back replace the ones they redo (a log holds both), so each curve has one point per
iteration. Restarts and early stops are marked on every panel. Loss is drawn against tokens
(comparable across batch sizes); throughput, MFU, power and energy against hours of training
(the checkpointed wall time, so the nights join up without the gaps between them). The summary's
figures are `job status`'s own (job/commands/status.py), plus the checkpoint with the lowest val loss.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from job import checkpoint
from job.commands.plot import draw
from job.commands.status import run_status
from job.config import Config
from job.cost import Prices, run_prices
from job.fileio import atomic_write_bytes
from job.rundir import RunDir
from job.timeline import Timeline, timeline
from job.units import human_count, human_duration


def best_checkpoint(run: RunDir) -> dict[str, Any] | None:
    """The kept checkpoint with the lowest val loss, from the seals (no checkpoint is read)."""
    seals = [s for p in checkpoint.list_checkpoints(run.ckpt) if (s := checkpoint.read_seal(p))]
    scored = [s for s in seals if s.get("val_loss") is not None]
    best = min(scored, key=lambda s: s["val_loss"], default=None)
    return {"path": str(run.ckpt / best["file"]), "iteration": best["iteration"], "val_loss": best["val_loss"]} \
        if best else None


def summary(run_dir: Path, t: Timeline, prices: Prices) -> dict[str, Any]:
    """`job status`'s figures, in hours and kWh as well, and the best checkpoint."""
    st = run_status(run_dir, prices)
    best = best_checkpoint(RunDir(run_dir))
    return {**st, "hours": st["elapsed_s"] / 3600, "stops": sum(1 for e, _ in t.marks if e == "stop"),
            "best_checkpoint": best["path"] if best else None, "best_val_loss": best["val_loss"] if best else None,
            "best_iteration": best["iteration"] if best else None}


def render(s: dict[str, Any]) -> str:
    def f(v: Any, spec: str = ".4f") -> str:
        return "-" if v is None else format(v, spec)

    state = "done" if s["done"] else "in progress"
    return "\n".join([
        f"run '{s['run']}' ({state}): iteration {s['iteration']:,} of {s['max_iters']:,}, "
        f"{human_count(s['tokens'])} tokens in {s['hours']:.2f} hours of training ({human_duration(s['elapsed_s'])})",
        f"energy {s['energy_kwh']:.3f} kWh, cost {s['cost']:.2f} {s['currency']} (electricity {s['energy_cost']:.2f}, "
        f"rent {s['rent_cost']:.2f} for {s['gpu_hours']:.2f} GPU-hours); {s['restarts']} restarts, "
        f"{s['stops']} early stops, {s['rollbacks']} roll-backs",
        f"final loss: train {f(s['train_loss'])}, val {f(s['val_loss'])}; best checkpoint "
        f"{s['best_checkpoint'] or '-'} (val {f(s['best_val_loss'])})",
        f"picture: {s['png']}",
    ])


def make_report(cfg: Config, out: Path | None = None) -> dict[str, Any]:
    """Draw the PNG (default runs/<run>/report.png, written atomically) and return the summary;
    the prices are the ones `job status` uses (job/cost.py, run_prices)."""
    run_dir = cfg.run_dir
    run = RunDir(run_dir)
    t = timeline(run.records())
    s = summary(run_dir, t, run_prices(run.read_config(), cfg))
    png = out or run.report_path
    buf = io.BytesIO()
    draw(t, s, buf)
    atomic_write_bytes(png, buf.getvalue())
    return {**s, "png": str(png)}
