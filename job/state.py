"""A run's counters: the one definition of what a checkpoint restores, a seal and `DONE` record,
`job status` reports and the metrics restore after a restart.

The counters count the work the model's weights embody: a step redone after a crash counts again,
work lost after the last checkpoint does not (a roll-back after non-finite steps keeps its cost:
that time was spent in this process). No torch: `job status` reads it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any


@dataclass
class LoaderState:
    """Where the training batches stand: the data loader's (job/data/loader.py) position, which
    every checkpoint records with the counters below."""
    epoch: int = 0
    cursor: int = 0  # windows of this epoch already handed out


@dataclass
class TrainState:
    iteration: int = 0  # optimizer steps done
    tokens: int = 0  # tokens trained on
    elapsed_s: float = 0.0  # training wall time, across restarts
    energy_j: float = 0.0  # GPU energy, across restarts (0 where nothing measures it)
    gpu_s: float = 0.0  # GPU-seconds: training wall time x the job's GPUs (processes), across restarts
    restarts: int = 0  # times the run was resumed from a checkpoint
    skipped_steps: int = 0  # steps whose loss or gradients were not finite: no update made
    rollbacks: int = 0  # times the model went back to the newest good checkpoint
    val_loss: float | None = None  # the newest evaluation
    loader: LoaderState = field(default_factory=LoaderState)  # where the next batch comes from

    def state_dict(self) -> dict[str, Any]:
        """Plain numbers, for a checkpoint (loads with weights_only=True)."""
        return asdict(self)

    @classmethod
    def from_state_dict(cls, d: dict[str, Any]) -> TrainState:
        """From a checkpoint, a seal, `DONE` or a log record: known keys taken, missing ones default."""
        known = {f.name for f in fields(cls)} - {"loader"}
        state = cls(**{k: d[k] for k in known if k in d})
        if isinstance(d.get("loader"), dict):
            state.loader = LoaderState(**d["loader"])
        return state

    def summary(self) -> dict[str, Any]:
        """The figures a person reads (no loader position): the seal, `DONE`, the log, `job status`."""
        return {k: v for k, v in asdict(self).items() if k != "loader"}

    def account(self, tokens: int, seconds: float, joules: float, skipped: bool = False, gpus: int = 1) -> None:
        """One step done on `gpus` GPUs (its update skipped when its loss or gradients were not finite)."""
        self.iteration += 1
        self.tokens += tokens
        self.elapsed_s += seconds
        self.gpu_s += seconds * gpus
        self.energy_j += joules
        self.skipped_steps += skipped

    def roll_back_to(self, good: TrainState) -> None:
        """Progress returns to a good checkpoint's; what was spent (time, energy) and what went
        wrong (skips, roll-backs) is kept, and so is the loader's position: the batches that went
        bad are not drawn again."""
        self.iteration, self.tokens, self.val_loss = good.iteration, good.tokens, good.val_loss
        self.rollbacks += 1
