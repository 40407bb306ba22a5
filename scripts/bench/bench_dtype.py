"""What dtype=auto buys on this CPU: the step time of `tiny` (its default, modern recipe) in fp32
and in bf16 autocast, short runs of the real loop taken in turn, --rounds times, so that the
machine's drift falls on both. Each run's time is its own log's clock from its first step (which
carries the warm-up, left out) to its last. Prints figures and what auto picks here; asserts
nothing. Val loss at 800 iterations in each dtype is in docs/gpu.md, "`dtype=auto` on a CPU" (one run each).

    python scripts/bench/bench_dtype.py [--steps 40] [--rounds 2]     (make bench-dtype)
"""

from __future__ import annotations

import argparse
import contextlib
import io
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from job.config import resolve
from job.device import pick_precision
from job.rundir import RunDir
from job.train import train

ROOT = Path(__file__).resolve().parents[2]


def seconds_per_step(dtype: str, steps: int, data: Path, out: Path) -> float:
    cfg = resolve({"preset": "tiny", "dtype": dtype, "max_iters": steps + 1, "data": str(data),
                   "out_dir": str(out), "run": dtype, "device": "cpu", "metrics_port": 0,
                   "eval_interval": 10**6, "ckpt_interval": 10**6, "log_interval": 1}, environ={}, dotenv=None)
    with contextlib.redirect_stdout(io.StringIO()):
        if train(cfg) != 0:
            raise SystemExit(f"bench: the {dtype} run failed")
    steps_log = [r for r in RunDir(cfg.run_dir).records() if r["event"] == "step"]
    first, last = steps_log[0], steps_log[-1]
    return (last["elapsed_s"] - first["elapsed_s"]) / (last["iteration"] - first["iteration"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=40, help="timed steps per run")
    ap.add_argument("--rounds", type=int, default=2, help="fp32/bf16 pairs, interleaved")
    args = ap.parse_args()
    auto = pick_precision(torch.device("cpu"), "auto")
    print(f"dtype=auto here: {auto.name} ({auto.why}); {torch.get_num_threads()} threads")
    times: dict[str, list[float]] = {"float32": [], "bfloat16": []}
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "shakespeare"
        subprocess.run([sys.executable, "-m", "job", "prepare", "--source", "shakespeare", "--out", str(data)],
                       cwd=ROOT, check=True, capture_output=True)
        for r in range(args.rounds):
            for dtype in times:
                times[dtype].append(seconds_per_step(dtype, args.steps, data, Path(tmp) / f"runs{r}"))
                print(f"  round {r + 1}: {dtype:8s} {times[dtype][-1] * 1000:6.0f} ms/step "
                      f"({1024 / times[dtype][-1]:,.0f} tokens/s)", flush=True)
    fp32, bf16 = (statistics.median(times[d]) for d in times)
    print(f"tiny, {args.steps} steps x {args.rounds} rounds: fp32 {fp32 * 1000:.0f} ms/step, bf16 {bf16 * 1000:.0f} "
          f"ms/step (median): bf16 is {fp32 / bf16:.2f}x fp32's speed")


if __name__ == "__main__":
    main()
