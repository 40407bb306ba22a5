"""`job status`: where a run stands, read from its files alone (no torch, no GPU, no big loads)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from job import checkpoint
from job.config import Config, ConfigError, coerce, env_settings
from job.ui import human_count, human_duration


def last_events(log_path: Path, tail_bytes: int = 1 << 16) -> dict[str, dict[str, Any]]:
    """The newest log line of each event kind, reading only the file's tail."""
    if not log_path.is_file():
        return {}
    with open(log_path, "rb") as f:
        f.seek(0, 2)
        f.seek(max(0, f.tell() - tail_bytes))
        lines = f.read().decode("utf-8", "replace").splitlines()
    out: dict[str, dict[str, Any]] = {}
    for line in lines:
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue  # the first, cut line, or one a kill cut short
        out[rec.get("event", "")] = rec
    return out


def price_from_env() -> tuple[float, str]:
    """The price as `job train` would resolve it: JOB_* from the environment, then .env."""
    env = env_settings()
    price = coerce("price_per_kwh", env.get("price_per_kwh", Config.price_per_kwh))
    return price, coerce("currency", env.get("currency", Config.currency))


def run_status(run_dir: Path) -> dict[str, Any]:
    if not (run_dir / "config.json").is_file():
        raise ConfigError(f"run: no run at {run_dir}; start one with `job train --run {run_dir.name}`")
    cfg = json.loads((run_dir / "config.json").read_text())
    events = last_events(run_dir / "log.jsonl")
    step, ev = events.get("step", {}), events.get("eval", {})
    seal = checkpoint.latest_seal(run_dir)
    done = (run_dir / "DONE").is_file()
    iteration = max(step.get("iter", 0), seal["iteration"] if seal else 0)
    price, currency = price_from_env()
    energy_j = max(step.get("energy_j", 0.0), seal.get("energy_j", 0.0) if seal else 0.0)
    return {
        "run": run_dir.name,
        "iteration": iteration,
        "max_iters": cfg["max_iters"],
        "done": done,
        "train_loss": step.get("loss"),
        "val_loss": ev.get("val_loss"),
        "tokens": max(step.get("tokens", 0), seal.get("tokens", 0) if seal else 0),
        "tokens_per_s": step.get("tokens_per_s"),
        "elapsed_s": max(step.get("elapsed_s", 0.0), seal.get("elapsed_s", 0.0) if seal else 0.0),
        "eta_s": 0.0 if done else step.get("eta_s"),
        "energy_j": energy_j,
        "energy_kwh": energy_j / 3.6e6,
        "cost": round(energy_j / 3.6e6 * price, 4),
        "currency": currency,
        "restarts": seal.get("restarts", 0) if seal else 0,
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
        f"energy         {r['energy_kwh']:.3f} kWh, {r['cost']:.2f} {r['currency']}",
        f"checkpoint     {r['last_checkpoint'] or '-'}"
        + (f" ({human_duration(r['last_checkpoint_age_s'])} ago)" if r["last_checkpoint"] else ""),
        f"restarts       {r['restarts']}",
    ]
    return "\n".join(lines)
