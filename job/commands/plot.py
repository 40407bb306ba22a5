"""The picture of `job report`: four panels on one PNG, drawn with matplotlib's Agg canvas (no
display, no pyplot state), from a timeline.Timeline and its summary."""

from __future__ import annotations

from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from job.timeline import MARKS, Timeline
from job.units import human_count, human_duration


def time_unit(seconds: float) -> tuple[float, str]:
    """The unit a person would read a span in: seconds, minutes or hours."""
    if seconds >= 2 * 3600:
        return 3600.0, "hours"
    return (60.0, "minutes") if seconds >= 120 else (1.0, "seconds")


def mark(ax: Axes, t: Timeline, key: str, scale: float = 1.0) -> None:
    """Restarts, stops, roll-backs and the import as labelled vertical lines at their x."""
    seen = set()
    for event, it in t.marks:
        label, colour = MARKS[event]
        x = float(t.at([it], key)[0]) / scale
        ax.axvline(x, color=colour, linestyle=":" if event == "stop" else "--", linewidth=2 if event == "stop" else 1,
                   alpha=0.8, label=None if label in seen else label)
        seen.add(label)


def empty(ax: Axes, why: str) -> None:
    ax.set_xticks([])
    ax.set_yticks([])
    ax.text(0.5, 0.5, why, ha="center", va="center", transform=ax.transAxes, color="0.4", wrap=True)


def loss_panel(ax: Axes, t: Timeline) -> None:
    ax.set_title("loss")
    tokens = t.column("tokens")
    ax.plot(tokens, t.column("train_loss"), color="tab:blue", linewidth=1, label="train")
    if t.evals:
        its = [e["iteration"] for e in t.evals]
        ax.plot(t.at(its, "tokens"), t.column("val_loss", t.evals), "o-", color="tab:orange", markersize=3,
                label="val")
    mark(ax, t, "tokens")
    ax.set_xlabel("tokens")
    ax.set_ylabel("cross-entropy (nats)")
    ax.legend(loc="upper right", fontsize=8)


def speed_panel(ax: Axes, t: Timeline, scale: float, unit: str) -> None:
    ax.set_title("throughput")
    hours = t.column("elapsed_s") / scale
    ax.plot(hours, t.column("tokens_per_s"), color="tab:blue", linewidth=1, label="tokens/s")
    ax.set_ylabel("tokens/s")
    ax.set_xlabel(f"training time ({unit})")
    per_token = mfu_per_token_per_s(t)
    if per_token:  # MFU is tokens/s times a constant (FLOPs per token / peak): a second scale, not a second line
        ax.secondary_yaxis("right", functions=(lambda v: 100 * v * per_token, lambda m: m / 100 / per_token)) \
            .set_ylabel("MFU (%)")
    else:
        ax.text(0.98, 0.04, "no MFU: set peak_tflops for this device", ha="right", transform=ax.transAxes,
                color="0.4", fontsize=8)
    mark(ax, t, "elapsed_s", scale)
    ax.legend(loc="upper left", fontsize=8)


def mfu_per_token_per_s(t: Timeline) -> float | None:
    """MFU per token/s of the newest logged step that has an MFU (its FLOPs per token over its peak)."""
    for r in reversed(t.steps):
        if r.get("mfu") and r.get("tokens_per_s"):
            return r["mfu"] / r["tokens_per_s"]
    return None


def power_panel(ax: Axes, t: Timeline, scale: float, unit: str) -> None:
    ax.set_title("power and energy")
    elapsed, energy = t.column("elapsed_s"), t.column("energy_j")
    ax.set_xlabel(f"training time ({unit})")
    if not np.nan_to_num(energy).any():
        empty(ax, "no energy measured on this device\n(NVML reports a GPU's; a CPU run has none)")
        return
    dt, de = np.diff(elapsed), np.diff(energy)
    ok = dt > 0
    ax.plot(((elapsed[1:] + elapsed[:-1]) / 2)[ok] / scale, de[ok] / dt[ok], color="tab:red", linewidth=1,
            label="power (W)")
    ax.set_ylabel("W")
    twin = ax.twinx()
    twin.plot(elapsed / scale, energy / 3.6e6, color="0.3", linewidth=1, label="energy (kWh)")
    twin.set_ylabel("kWh")
    twin.legend(loc="lower right", fontsize=8)
    mark(ax, t, "elapsed_s", scale)
    ax.legend(loc="upper left", fontsize=8)


def draw(t: Timeline, summary: dict[str, Any], out: BinaryIO) -> None:
    """The four panels (loss; tokens/s and MFU; power and energy; the summary) as PNG into `out`."""
    fig = Figure(figsize=(12, 8), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    (loss, speed), (power, text) = fig.subplots(2, 2)
    fig.suptitle(f"run '{summary['run']}'", fontsize=13)
    if t.steps:
        scale, unit = time_unit(float(np.nanmax(t.column("elapsed_s"))))
        loss_panel(loss, t)
        speed_panel(speed, t, scale, unit)
        power_panel(power, t, scale, unit)
    else:
        for ax in (loss, speed, power):
            empty(ax, "no training step logged yet")
    text.axis("off")
    text.text(0.02, 0.98, "\n".join(summary_lines(summary)), va="top", ha="left", family="monospace", fontsize=10,
              transform=text.transAxes)
    fig.savefig(out, format="png")


def summary_lines(s: dict[str, Any]) -> list[str]:
    """The summary as short lines for the picture's fourth panel."""
    def f(v: Any) -> str:
        return "-" if v is None else f"{v:.4f}"

    best = f"{Path(s['best_checkpoint']).name} (val {f(s['best_val_loss'])})" if s["best_checkpoint"] else "-"
    return [
        f"{'done' if s['done'] else 'in progress'}: iteration {s['iteration']:,} of {s['max_iters']:,}",
        f"tokens           {human_count(s['tokens'])}",
        f"training time    {s['hours']:.2f} hours ({human_duration(s['elapsed_s'])})",
        f"energy           {s['energy_kwh']:.3f} kWh",
        f"cost             {s['cost']:.2f} {s['currency']}",
        f"final loss       train {f(s['train_loss'])}, val {f(s['val_loss'])}",
        f"best checkpoint  {best}",
        f"restarts {s['restarts']}, early stops {s['stops']}, roll-backs {s['rollbacks']}",
    ]
