"""What live metrics cost the training loop: step time of the `tiny` preset with metrics off and on
(a scraper hitting /metrics every second, 15x more often than grafana/prometheus.yml), interleaved
in blocks within one run, and the per-step cost of the hook itself. Prints figures; asserts nothing.

    python scripts/bench/bench_metrics.py [--iters 200] [--block 5]     (make bench-metrics)
"""

from __future__ import annotations

import argparse
import contextlib
import io
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest

from job.config import resolve
from job.hooks import RunHooks, StepInfo
from job.metrics import TrainingMetrics, monitoring
from job.state import TrainState
from job.train import train

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))
from harness import free_port  # noqa: E402

WARMUP = 3  # first steps carry allocation and cache warm-up, in both modes alike


def run_interleaved(out_dir: str, iters: int, block: int) -> dict[bool, list[float]]:
    """One `tiny` run with the metrics server up; every `block` steps the metrics hook and the
    scraper are switched on or off. Each step's wall time (hook to hook, so the hook's own cost
    is inside it) goes to the mode it ran in. Both modes share one process, one data order and
    the same machine drift, which separate runs (+-7% apart here) do not."""
    cfg = resolve({"preset": "tiny", "run": "bench", "out_dir": out_dir, "max_iters": iters,
                   "metrics_port": free_port(), "eval_interval": 10**6, "log_interval": 10**6,
                   "ckpt_interval": 10**6}, dotenv=None)
    times: dict[bool, list[float]] = {False: [], True: []}
    active = threading.Event()
    stop = threading.Event()
    last = [time.perf_counter()]

    def keep_scraping() -> None:
        while not stop.wait(1.0):
            if active.is_set():
                with contextlib.suppress(OSError):
                    urllib.request.urlopen(f"http://127.0.0.1:{cfg.metrics_port}/metrics", timeout=2).read()

    with contextlib.redirect_stdout(io.StringIO()), monitoring(cfg) as hooks:
        inner = hooks.on_step

        def on_step(info: StepInfo) -> None:
            on = active.is_set()
            if on and inner:
                inner(info)
            now = time.perf_counter()
            if info.iteration > WARMUP:
                times[on].append(now - last[0])
            last[0] = now
            if info.iteration % block == 0:  # switch mode for the next block of steps
                active.clear() if on else active.set()

        threading.Thread(target=keep_scraping, daemon=True).start()
        train(cfg, RunHooks(on_start=hooks.on_start, on_step=on_step, energy_meter=hooks.energy_meter))
        stop.set()
    return times


def hook_cost(n: int = 20000) -> tuple[float, float]:
    """(seconds per on_step call, seconds per scrape) of the training metrics alone."""
    registry = CollectorRegistry()
    cfg = resolve({"preset": "tiny"}, dotenv=None)
    m = TrainingMetrics(registry, cfg)
    state = TrainState(iteration=1, tokens=2048, elapsed_s=10.0)
    info = StepInfo(iteration=1, max_iters=1200, train_loss=3.2, lr=1e-3, grad_norm=0.9, step_s=0.3,
                    tokens_per_s=6800.0, mfu=0.01, eta_s=300.0, state=state, val_loss=3.3, checkpoint_s=0.5)
    t0 = time.perf_counter()
    for _ in range(n):
        m.on_step(info)
    per_step = (time.perf_counter() - t0) / n
    t0 = time.perf_counter()
    for _ in range(200):
        generate_latest(registry)
    return per_step, (time.perf_counter() - t0) / 200


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--iters", type=int, default=200, help="iterations of the run (default 200)")
    ap.add_argument("--block", type=int, default=5, help="steps per on/off block (default 5)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as out_dir:
        times = run_interleaved(out_dir, args.iters, args.block)
    off, on = statistics.median(times[False]), statistics.median(times[True])
    per_step, per_scrape = hook_cost()
    print(f"tiny, {len(times[False])} steps off / {len(times[True])} on, interleaved in blocks of {args.block} "
          f"(median): metrics off {off * 1e3:.2f} ms/step, on {on * 1e3:.2f} ms/step, "
          f"difference {100 * (on - off) / off:+.2f}% (target < 1%)")
    print(f"hook: {per_step * 1e6:.1f} us per step = {100 * per_step / off:.4f}% of a tiny step; "
          f"a scrape renders in {per_scrape * 1e3:.2f} ms (off the training thread, every 15 s in production)")


if __name__ == "__main__":
    main()
