"""`job status`: where a run stands, read from its files alone (no torch, no GPU, no big loads)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from job import checkpoint
from job.cost import Prices, cost
from job.errors import ConfigError
from job.rundir import RunDir
from job.state import TrainState
from job.units import human_count, human_duration


def run_status(run_dir: Path, prices: Prices) -> dict[str, Any]:
    """Where the run stands, and what it cost so far at `prices` (the settings of this command,
    as `job train` would resolve them: the env file's price is today's)."""
    run = RunDir(run_dir)
    cfg = run.read_config()
    if cfg is None:
        raise ConfigError(f"run: no run at {run_dir}; start one with `job train --run {run.name}`")
    events = run.last_events()
    step = events.get("step", {})
    seal = checkpoint.latest_seal(run.ckpt)
    # the newer of the last logged step and the last checkpoint (a log line may be cut by a kill)
    state = max([TrainState.from_state_dict(step), TrainState.from_state_dict(seal or {})], key=lambda t: t.iteration)
    done = run.read_done() is not None
    processes = int(cfg.get("nproc", 1)) * int(cfg.get("nnodes", 1))
    gpu_s = state.gpu_s or state.elapsed_s * processes  # a run from before gpu_s was counted
    return {
        "run": run.name,
        "iteration": state.iteration,
        "max_iters": cfg["max_iters"],
        "done": done,
        "train_loss": step.get("train_loss"),
        "val_loss": events.get("eval", {}).get("val_loss"),
        "tokens": state.tokens,
        "tokens_per_s": step.get("tokens_per_s"),
        "elapsed_s": state.elapsed_s,
        "eta_s": 0.0 if done else step.get("eta_s"),
        "energy_j": state.energy_j,
        "energy_kwh": state.energy_j / 3.6e6,
        "gpu_hours": gpu_s / 3600,
        **{k: round(v, 4) if isinstance(v, float) else v for k, v in cost(state.energy_j, gpu_s, prices).items()},
        "restarts": state.restarts,
        "skipped_steps": state.skipped_steps,
        "rollbacks": state.rollbacks,
        "last_checkpoint": seal["path"] if seal else None,
        "last_checkpoint_age_s": round(time.time() - seal["saved_at"], 1) if seal else None,
        "last_log_age_s": round(time.time() - step["time"], 1) if step else None,
    }


def render(r: dict[str, Any]) -> str:
    def fmt(v: Any, spec: str = ".4f") -> str:
        return "-" if v is None else format(v, spec)

    state = "done" if r["done"] else "in progress"
    lines = [
        f"run            {r['run']} ({state})",
        f"iteration      {r['iteration']:,} / {r['max_iters']:,} ({100 * r['iteration'] / r['max_iters']:.1f}%)",
        f"loss           train {fmt(r['train_loss'])}, val {fmt(r['val_loss'])}",
        f"tokens         {human_count(r['tokens'])} at {fmt(r['tokens_per_s'], ',.0f')} tokens/s",
        f"time           {human_duration(r['elapsed_s'])} trained, ETA "
        f"{human_duration(r['eta_s']) if r['eta_s'] is not None else '-'}",
        f"cost           {r['cost']:.2f} {r['currency']}: electricity {r['energy_cost']:.2f} "
        f"({r['energy_kwh']:.3f} kWh), rent {r['rent_cost']:.2f} ({r['gpu_hours']:.2f} GPU-hours)",
        f"checkpoint     {r['last_checkpoint'] or '-'}"
        + (f" ({human_duration(r['last_checkpoint_age_s'])} ago)" if r["last_checkpoint"] else ""),
        f"restarts       {r['restarts']}",
        f"non-finite     {r['skipped_steps']} steps skipped, {r['rollbacks']} roll-backs",
    ]
    return "\n".join(lines)
