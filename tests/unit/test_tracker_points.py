"""Fast tier: what the trackers get for a step (job/trackers.py), from its log record, including
the figures only a GPU run has (energy, power, cost), and what a start fills in from a log with
redone steps. No tracker package is loaded."""

from __future__ import annotations

import math
import time

from job.config import Config
from job.cost import Prices
from job.hooks import StepInfo
from job.state import TrainState
from job.trackers import Tracking, filled_in, step_scalars


def record(it: int, loss: float | None = 5.0, energy_j: float = 0.0) -> dict:
    return {"event": "step", "iteration": it, "tokens": 256 * it, "elapsed_s": 0.5 * it, "energy_j": energy_j,
            "gpu_s": it * 1.0, "restarts": 0, "skipped_steps": 0, "rollbacks": 0, "train_loss": loss, "lr": 1e-3,
            "grad_norm": 0.5, "step_ms": 500.0, "tokens_per_s": 512.0, "mfu": None, "eta_s": 10.0}


def test_a_step_record_becomes_its_tags_with_energy_and_cost_only_where_known():
    on_cpu = step_scalars(record(3), Prices(per_kwh=0.2, per_gpu_hour=0.0, currency="EUR"))
    assert on_cpu["loss/train"] == 5.0 and on_cpu["run/tokens"] == 768 and on_cpu["run/gpu_hours"] == 3 / 3600
    assert not {"perf/mfu", "run/energy_kwh", "run/cost"} & on_cpu.keys()  # unknown: absent, never a 0
    rented = step_scalars(record(3), Prices(per_kwh=0.2, per_gpu_hour=2.0, currency="EUR"))
    assert rented["run/cost"] == 2.0 * 3 / 3600 and "run/energy_kwh" not in rented
    on_gpu = step_scalars({**record(3, energy_j=7.2e6), "mfu": 0.4}, Prices(0.2, 2.0, "EUR"))
    assert on_gpu["run/energy_kwh"] == 2.0 and on_gpu["run/cost"] == 2.0 * 0.2 + 2.0 * 3 / 3600
    assert on_gpu["perf/mfu"] == 0.4
    assert math.isnan(step_scalars(record(4, loss=None), Prices(0.2, 0.0, "EUR"))["loss/train"])  # skipped


def test_power_is_the_energy_between_two_logged_steps_over_their_wall_time():
    tracking = Tracking(Config(), None, [])

    def info(it: int, energy_j: float) -> StepInfo:
        state = TrainState(iteration=it, energy_j=energy_j)
        return StepInfo(iteration=it, max_iters=10, train_loss=5.0, lr=1e-3, grad_norm=0.5, step_s=0.1,
                        tokens_per_s=1.0, mfu=None, eta_s=1.0, state=state, record=record(it, energy_j=energy_j))

    t0 = time.monotonic()
    assert "perf/power_w" not in tracking.point(info(1, 1000.0)).scalars  # no earlier step in this process
    time.sleep(0.05)
    power = tracking.point(info(2, 1600.0)).scalars["perf/power_w"]
    assert 600 / (time.monotonic() - t0) <= power <= 600 / 0.05
    assert "perf/power_w" not in Tracking(Config(), None, []).point(info(3, 0.0)).scalars  # nothing measures it


def test_a_start_fills_in_the_logs_history_between_what_a_tracker_has_and_the_checkpoint():
    records = [record(i, loss=10.0 - i) for i in (1, 2, 3, 4)]
    records += [{"event": "eval", "iteration": 4, "val_loss": 6.5}, {"event": "sample", "iteration": 4, "text": "a"}]
    records += [{"event": "resume", "iteration": 2}]  # killed after 4, resumed from checkpoint 2
    records += [record(3, loss=1.0), {"event": "eval", "iteration": 4, "val_loss": 0.5},
                {"event": "sample", "iteration": 4, "text": "b"}, record(4, loss=2.0)]
    points = filled_in(records, after=1, upto=4, prices=Prices(0.2, 0.0, "USD"))
    assert [p.iteration for p in points] == [2, 3, 4]
    assert [p.scalars["loss/train"] for p in points] == [8.0, 1.0, 2.0]  # the redone steps, as job report reads them
    assert points[2].scalars["loss/val"] == 0.5 and points[2].sample == "b"
    assert filled_in(records, after=4, upto=4, prices=Prices(0.2, 0.0, "USD")) == []
