"""The GPU check: what the CUDA path does on this machine, as one table for an issue note.

Rows: the machine (torch, CUDA, card, driver); the card's measured dense bf16 matmul rate; `job
plan`'s predicted peak memory and step time against measured ones (gpt2-40m at micro-batch 16);
training throughput, MFU (against the table's peak and against the measured rate) and compile time
for gpt2-124m and gpt2-40m; the metrics endpoint's GPU series during a real run (power > 0, energy
rising, memory > 0). Every figure comes from a real `python -m job` process or a timed kernel.

    scripts/gpu_check.sh                 on a GPU box (it bootstraps what a bare one lacks)
    scripts/gpu_check.sh --quick         the same steps, small and on the CPU: keeps this script honest
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["--n-layer", "2", "--n-head", "2", "--n-embd", "64", "--block-size", "64", "--batch-size", "4",
         "--loss-chunk", "0"]


def job(*args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    res = subprocess.run([sys.executable, "-m", "job", *args], cwd=ROOT, capture_output=True, text=True,
                         timeout=timeout, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    if res.returncode != 0:
        sys.exit(f"`job {' '.join(args)}` failed (exit {res.returncode}):\n{res.stderr[-3000:]}")
    return res


def machine(device: str) -> list[tuple[str, str]]:
    import torch

    rows = [("torch", f"{torch.__version__} (CUDA {torch.version.cuda or 'none'})")]
    if device == "cuda":
        p = torch.cuda.get_device_properties(0)
        smi = subprocess.run(["nvidia-smi", "--query-gpu=driver_version,power.limit", "--format=csv,noheader"],
                             capture_output=True, text=True).stdout.strip()
        rows += [("card", f"{p.name}, {p.total_memory / 2**30:.0f} GiB, sm_{p.major}{p.minor}, "
                          f"{torch.cuda.device_count()} visible"), ("driver, power limit", smi or "?")]
    return rows


def matmul_rate(device: str, quick: bool) -> float:
    """Dense matmul FLOP/s measured here: bf16 on a GPU (the rate MFU is really bounded by)."""
    import torch

    n, dtype = (1024, torch.float32) if quick else (8192, torch.bfloat16)
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    for _ in range(3):
        a @ b
    sync()
    reps, t0 = (5 if quick else 50), time.perf_counter()
    for _ in range(reps):
        a @ b
    sync()
    return 2 * n**3 * reps / (time.perf_counter() - t0)


def plan_vs_measured(device: str, quick: bool) -> list[tuple[str, str]]:
    shape = SMALL if quick else ["--preset", "gpt2-40m", "--batch-size", "16"]
    p = json.loads(job("plan", *shape, "--grad-accum", "1", "--gpu", "auto" if device == "cuda" else "cpu",
                       "--device", device, "--measure", "--json", *(["--peak-tflops", "1"] if quick else [])).stdout)
    m, mem = p["measured"], p["memory"]
    predicted = mem["total"] - mem["workspace"]  # torch's peak allocated excludes context and slack
    peak = m["peak_memory_bytes"]  # torch's allocator peak: CUDA only
    measured = f"measured {peak / 1e9:.2f} GB (predicted/measured {predicted / peak:.2f})" if peak else "not measured"
    return [("plan: peak memory", f"predicted {predicted / 1e9:.2f} GB, {measured}"),
            ("plan: step", f"measured {m['s_per_iter'] * 1e3:.1f} ms/iter at grad_accum 1, MFU {100 * m['mfu']:.1f}%")]


def throughput(preset: str, device: str, quick: bool, rate: float, out: Path) -> tuple[str, str]:
    iters = 20 if quick else 60
    shape = SMALL if quick else ["--preset", preset, "--grad-accum", "4"]
    job("train", *shape, "--device", device, "--run", preset, "--out-dir", str(out), "--max-iters", str(iters),
        "--eval-interval", str(10**6), "--log-interval", "1", "--ckpt-interval", str(10**6), "--metrics-port", "0",
        *(["--peak-tflops", "1"] if quick else []))
    steps = [json.loads(line) for line in (out / preset / "log.jsonl").read_text().splitlines()
             if '"event": "step"' in line]
    steady = steps[len(steps) // 2:]
    tps = statistics.median(s["tokens_per_s"] for s in steady)
    mfu = statistics.median(s["mfu"] for s in steady if s["mfu"] is not None)
    fpt = json.loads((out / preset / "log.jsonl").read_text().splitlines()[0])["flops_per_token"]
    return (f"train {preset}", f"{tps:,.0f} tokens/s, MFU {100 * mfu:.1f}% of the table's peak, "
            f"{100 * tps * fpt / rate:.1f}% of the measured matmul rate; first step (compile) "
            f"{steps[0]['step_ms'] / 1e3:.1f} s")


def gpu_series(device: str, quick: bool, out: Path) -> tuple[str, str]:
    port = "9307"
    proc = subprocess.Popen([sys.executable, "-m", "job", "train", *(SMALL if quick else ["--preset", "tiny"]),
                             "--device", device, "--run", "metrics", "--out-dir", str(out), "--max-iters", "100000",
                             "--metrics-port", port, "--loss-chunk", "0"], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        first, second = scrape(port), (time.sleep(15), scrape(port))[1]
    finally:
        proc.terminate()
        proc.wait(timeout=120)
    power = [v for k, v in second.items() if k.startswith("trainer_gpu_power_watts")]
    energy = [v - first.get(k, 0.0) for k, v in second.items() if k.startswith("trainer_gpu_energy_joules_total")]
    used = [v for k, v in second.items() if k.startswith("trainer_gpu_memory_used_bytes")]
    steps = second.get("trainer_iteration", 0) - first.get("trainer_iteration", 0)
    return ("metrics during a run", f"{steps:.0f} steps in 15 s; power {power} W; energy +{sum(energy):.0f} J; "
            f"memory used {[round(u / 1e9, 2) for u in used]} GB")


def torchrun_nccl(out: Path) -> tuple[str, str]:
    """`job train` under torchrun on NCCL, one process: the whole DDP path (process group, wrapper,
    all-reduce, rank 0 handing the checkpoint to the ranks) on the one card a check has."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "1", "-m", "job",
           "train", "--preset", "tiny", "--device", "cuda", "--max-iters", "40", "--grad-accum", "4",
           "--log-interval", "1", "--metrics-port", "0", "--run", "nccl1", "--out-dir", str(out)]
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900,
                         env={**os.environ, "PYTHONUNBUFFERED": "1"})
    if res.returncode != 0:
        return ("torchrun, NCCL, 1 process", f"FAILED (exit {res.returncode}): {res.stderr.strip().splitlines()[-1:]}")
    recs = [json.loads(line) for line in (out / "nccl1" / "log.jsonl").read_text().splitlines()]
    start = next(r for r in recs if r["event"] == "start")
    steps = sum(r["event"] == "step" for r in recs)
    world = start.get("world_size")
    return ("torchrun, NCCL, 1 process", f"world_size {world}, {steps} steps, device {start['device']}")


def scrape(port: str) -> dict[str, float]:
    for _ in range(300):
        try:
            text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
            series = parse(text)
            if series.get("trainer_iteration", 0) > 0:
                return series
        except OSError:
            pass
        time.sleep(1)
    sys.exit("the metrics endpoint never showed a step")


def parse(text: str) -> dict[str, float]:
    """Prometheus' text format -> {series with labels: value} for the trainer's series."""
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
            if line.startswith("trainer_")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small shapes on the CPU: check the script itself")
    args = ap.parse_args()
    device = "cpu" if args.quick else "cuda"
    rate = matmul_rate(device, args.quick)
    kind = "fp32" if args.quick else "bf16"
    rows = [*machine(device), ("matmul rate", f"{rate / 1e12:.3g} TFLOP/s measured ({kind})")]
    with tempfile.TemporaryDirectory() as tmp:
        rows += plan_vs_measured(device, args.quick)
        for preset in (["small"] if args.quick else ["gpt2-124m", "gpt2-40m"]):
            rows.append(throughput(preset, device, args.quick, rate, Path(tmp)))
        rows.append(gpu_series(device, args.quick, Path(tmp)))
        if not args.quick:
            rows.append(torchrun_nccl(Path(tmp)))
    print("| check | result |\n| --- | --- |")
    for name, result in rows:
        print(f"| {name} | {result} |")


if __name__ == "__main__":
    main()
