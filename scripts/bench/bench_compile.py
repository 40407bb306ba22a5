"""What the compile cache saves a restart: the seconds to the first step of a compiled `tiny` run
(the preset with compile on), in a fresh process each time: cold (an empty cache), then warm (the
cache the cold one wrote: a restarted container or cron's next start), --rounds times with a new
cache each round. Each figure is the run's own log ("compiled": the first step's seconds, graphs
taken from the cache and compiled). Prints figures; asserts nothing.

    .venv/bin/python scripts/bench/bench_compile.py [--rounds 2] [--preset tiny]   (make bench-compile)
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from job.rundir import RunDir  # noqa: E402


def first_step(run: str, out: Path, data: Path, preset: str) -> dict:
    """One compiled run of 2 iterations in a process of its own; its "compiled" log record."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JOB_", "TORCHINDUCTOR_", "TRITON_"))}
    cmd = [sys.executable, "-m", "job", "train", "--preset", preset, "--compile", "--run", run, "--out-dir", str(out),
           "--data", str(data), "--max-iters", "2", "--eval-interval", "1000000", "--metrics-port", "0",
           "--sample-tokens", "0"]
    res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
    if res.returncode != 0:
        raise SystemExit(f"bench: the {run} run failed: {res.stderr.strip()[-500:]}")
    return next(r for r in RunDir(out / run).records() if r["event"] == "compiled")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--preset", default="tiny")
    args = ap.parse_args()
    seconds: dict[str, list[float]] = {"cold": [], "warm": []}
    with tempfile.TemporaryDirectory(prefix="bench-compile-") as tmp:
        data = Path(tmp) / "data" / "shakespeare"
        subprocess.run([sys.executable, "-m", "job", "prepare", "--out", str(data)], cwd=ROOT, check=True,
                       capture_output=True)
        for r in range(args.rounds):
            out = Path(tmp) / f"round{r}"  # its own out_dir: its own, empty, compile cache
            for kind in ("cold", "warm"):
                rec = first_step(kind, out, data, args.preset)
                seconds[kind].append(rec["seconds"])
                print(f"round {r + 1} {kind}: first step {rec['seconds']:.1f} s, {rec['cache_hits']} graphs from the "
                      f"cache, {rec['compiled']} compiled", flush=True)
    cold, warm = statistics.median(seconds["cold"]), statistics.median(seconds["warm"])
    print(f"\n| {args.preset}, compiled | first step, median of {args.rounds} |\n| --- | --- |\n"
          f"| cold (empty cache) | {cold:.1f} s |\n| warm (the cache in out_dir/.cache/torch) | {warm:.1f} s |\n"
          f"\nwarm / cold: {warm / cold:.2f}")


if __name__ == "__main__":
    main()
