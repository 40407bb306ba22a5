"""What the training loop tells its observers (the metrics server, the experiment trackers), and
nothing more: plain data, no torch, so that an observer never imports the loop and the loop never
imports an observer. The loop calls one RunHooks; `chain` makes one of several observers."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from job.state import TrainState


@dataclass
class StartInfo:
    """Said once, when training starts or resumes."""
    run: str
    preset: str
    params: int
    device: str
    dtype: str
    gpu: str | None  # the card's name in the table, None on CPU or for an unknown card
    peak_flops: float  # the peak MFU divides by; 0 where unknown
    flops_per_token: float
    max_iters: int
    state: TrainState  # as restored (all zero on a fresh start)
    checkpoint_saved_at: float | None = None  # when the checkpoint resumed from was written
    world_size: int = 1  # processes (GPUs) training together (torchrun, DDP)


@dataclass
class StepInfo:
    """What the loop knows after each optimizer step."""
    iteration: int
    max_iters: int
    train_loss: float
    lr: float
    grad_norm: float
    step_s: float
    tokens_per_s: float
    mfu: float | None
    eta_s: float
    state: TrainState  # the run's totals after this step (the live object: read, don't keep)
    val_loss: float | None = None  # set on evaluation steps
    checkpoint_s: float | None = None  # set on checkpoint steps
    predicted_energy_j: float | None = None  # run total at max_iters, from job.flops.forecast
    skipped: bool = False  # the update was skipped: the loss or the gradient was not finite
    smoothed_step_s: float | None = None  # the step time the ETA uses (an average that forgets the first steps)
    planned_stop_at: float | None = None  # Unix time of the time window's end (max_runtime, stop_at); None: none
    sample: str | None = None  # the text sampled on this step's evaluation (rank 0, sample_tokens > 0)
    # this step's log.jsonl record as the loop wrote it (log_interval, the first and last, skipped ones),
    # with a NaN where the file holds null; None on a step that is not logged
    record: dict[str, Any] | None = None

    @property
    def logged(self) -> bool:
        """This step has a record in log.jsonl."""
        return self.record is not None


@dataclass
class RunHooks:
    """Seams for monitoring: called from the loop, never required."""
    on_start: Callable[[StartInfo], None] | None = None
    on_step: Callable[[StepInfo], None] | None = None
    # cumulative device energy in joules since some fixed point (NVML); None where unknown
    energy_meter: Callable[[], float | None] | None = None


def chain(*hooks: RunHooks) -> RunHooks:
    """One RunHooks that calls each of `hooks` in turn (the metrics, then the trackers), so the loop
    still calls on_start and on_step once; the energy meter is the first one given."""
    starts = [h.on_start for h in hooks if h.on_start]
    steps = [h.on_step for h in hooks if h.on_step]

    def on_start(info: StartInfo) -> None:
        for fn in starts:
            fn(info)

    def on_step(info: StepInfo) -> None:
        for fn in steps:
            fn(info)

    meter = next((h.energy_meter for h in hooks if h.energy_meter), None)
    return RunHooks(on_start=on_start if starts else None, on_step=on_step if steps else None, energy_meter=meter)
