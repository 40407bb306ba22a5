"""What the training loop tells its observers (the metrics server), and nothing more: plain data,
no torch, so that an observer never imports the loop and the loop never imports an observer."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

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
    logged: bool = False  # this step has a record in log.jsonl (log_interval, the first and last, skipped ones)


@dataclass
class RunHooks:
    """Seams for monitoring: called from the loop, never required."""
    on_start: Callable[[StartInfo], None] | None = None
    on_step: Callable[[StepInfo], None] | None = None
    # cumulative device energy in joules since some fixed point (NVML); None where unknown
    energy_meter: Callable[[], float | None] | None = None
