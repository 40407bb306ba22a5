"""What a run costs: its electricity (the GPUs' energy x price_per_kwh) plus, on a rented card, its
rent (GPU-hours x price_per_gpu_hour). One definition for `job plan` (before the run), `job
status` and `job report` (after), and the metrics (during), so the three never disagree.

GPU-hours are the run's training time on every GPU of the job, across restarts, as its counters
record them (job/state.py, `gpu_s`): the steps' wall time x the processes. A rental also bills
what is not a training step (start-up, compiling before the first step, evaluations, checkpoints,
the time between nights), so on a rented box the rent here is the part of the bill the training
itself spent, and a floor for the rest.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

JOULES_PER_KWH = 3.6e6


@dataclass(frozen=True)
class Prices:
    per_kwh: float  # electricity
    per_gpu_hour: float  # rent of one GPU for an hour (0: your own card)
    currency: str

    @classmethod
    def of(cls, cfg: Any) -> Prices:
        """A run's prices, from its settings (a Config, or the dict config.json holds)."""
        get = cfg.get if isinstance(cfg, dict) else lambda k, default=None: getattr(cfg, k, default)
        return cls(float(get("price_per_kwh", 0.0)), float(get("price_per_gpu_hour", 0.0) or 0.0),
                   str(get("currency", "USD")))


PRICE_KEYS = ("price_per_kwh", "price_per_gpu_hour", "currency")


def run_prices(recorded: dict[str, Any] | None, now: Any) -> Prices:
    """The prices a run is costed at after the fact (`job status`, `job report`): those it was
    started with (`recorded`, its config.json), each replaced by `now`'s (the settings as this
    command resolves them) where the environment or the env file sets it; so a price given as a
    flag to `job train` still counts, and one set in .env today wins."""
    from job.config import env_settings

    recorded, set_now = recorded or {}, set(env_settings())
    return Prices.of({k: getattr(now, k) if k in set_now or k not in recorded else recorded[k] for k in PRICE_KEYS})


def cost(energy_j: float, gpu_s: float, prices: Prices) -> dict[str, float | str]:
    """The money a run's energy and GPU time come to, by part, in the prices' currency."""
    energy = energy_j / JOULES_PER_KWH * prices.per_kwh
    rent = gpu_s / 3600 * prices.per_gpu_hour
    return {"energy_cost": energy, "rent_cost": rent, "cost": energy + rent, "currency": prices.currency}
