"""The GPU acceptance run: what the CUDA path does on this machine, as one table for an issue note.

Invariant: every row runs, whatever an earlier one did; each ends PASS, FAIL or SKIP with its
reason and figures; the table is printed and written as markdown and JSON (--out) even when rows
fail; the exit code is 0 only if no row FAILs. Every figure comes from a real `python -m job`
process (torchrun included) or a timed kernel; each process has a timeout taken from one time
budget (--budget, default 570 s), so the whole call fits 10 minutes on an H200 including compiles.

    scripts/gpu/gpu_check.sh --out DIR            on a GPU box (it bootstraps what a bare one lacks)
    scripts/gpu/gpu_check.sh --quick --out DIR    every row small on the CPU; the CUDA-only ones SKIP
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))  # the test harness: standard library, numpy and torch only
from harness import NanAt, free_port, scrape, wait_for, wait_for_step  # noqa: E402

# The CPU stand-in for every model (--quick): the 50304-way head dominates, so keep the rest small.
SMALL = ["--n-layer", "1", "--n-head", "2", "--n-embd", "32", "--block-size", "32", "--batch-size", "4",
         "--loss-chunk", "0", "--grad-accum", "1", "--peak-tflops", "1"]
GPU_SMALL = ["--preset", "tiny", "--loss-chunk", "0", "--no-compile"]  # rows about behaviour, not speed
# The speed rows' models as a night trains them: the preset's own 524,288 tokens per iteration, cut
# into micro-batches by auto_batch, compiled, bf16; a few iterations past the compile.
GPT2_40M = ["--preset", "gpt2-40m", "--dtype", "bfloat16", "--compile"]
GPT2_124M = ["--preset", "gpt2-124m", "--dtype", "bfloat16", "--compile"]
NIGHT_ITERS = {"gpt2-40m": 12, "gpt2-124m": 10}
TOLERANCE = 0.15  # plan --measure's step time vs training's
MEMORY_TOLERANCE = 0.10  # the plan's peak memory vs the allocator's
# What the speed rows must reach on a GPU (issue 26): Muon's step costs almost nothing next to
# AdamW's; MFU of the table's peak with auto_batch.
MUON_VS_ADAMW, MFU_TARGET = 0.9, {"gpt2-40m": 0.40, "gpt2-124m": 0.45}


class Fail(Exception):
    """The row's check did not hold; the message says what was seen (and figures, if any)."""

    def __init__(self, reason: str, figures: dict[str, Any] | None = None):
        super().__init__(reason)
        self.figures = figures or {}


class Skip(Fail):
    """The row means nothing here; the message says why."""


@dataclass
class Ctx:
    quick: bool
    device: str
    work: Path
    deadline: float
    data: Path = Path()
    rate: float = 0.0  # measured dense matmul FLOP/s
    runs: dict[str, Path] = field(default_factory=dict)  # what later rows reuse: name -> run dir
    steady_ms: dict[str, float] = field(default_factory=dict)

    def left(self) -> float:
        return self.deadline - time.time()


@dataclass
class Row:
    name: str
    status: str = "FAIL"
    reason: str = ""
    figures: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0


# ---- processes -----------------------------------------------------------------------------------

def env(**extra: str) -> dict[str, str]:
    """The processes' environment: the caller's without its JOB_* settings. No CUBLAS_WORKSPACE_CONFIG:
    the speed rows measure what users run; `--deterministic` rows get it from the job itself."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("JOB_", "CUBLAS_WORKSPACE_CONFIG"))}
    return {**base, "PYTHONUNBUFFERED": "1", **extra}


def run(ctx: Ctx, cmd: list[str], expect: int = 0, limit: float = 300, **extra_env: str
        ) -> subprocess.CompletedProcess:
    timeout = min(limit, ctx.left())
    if timeout < 5:
        raise Fail("the time budget was spent before this step")
    try:
        res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env(**extra_env))
    except subprocess.TimeoutExpired as e:
        raise Fail(f"`{' '.join(cmd[2:6])} ...` timed out after {timeout:.0f} s") from e
    if res.returncode != expect:
        last = (res.stderr.strip() or res.stdout.strip()).splitlines()[-3:]
        raise Fail(f"`{' '.join(cmd[2:6])} ...` exit {res.returncode}, expected {expect}: {' / '.join(last)}")
    return res


def job(ctx: Ctx, *args: str, expect: int = 0, limit: float = 300) -> subprocess.CompletedProcess:
    return run(ctx, [sys.executable, "-m", "job", *args], expect, limit)


def train_args(ctx: Ctx, name: str, shape: list[str], iters: int, *extra: str) -> list[str]:
    """`job train` for run `name` under the work dir: log every step, one eval and checkpoint at the end."""
    return ["train", *shape, "--device", ctx.device, "--data", str(ctx.data), "--out-dir", str(ctx.work / "runs"),
            "--run", name, "--max-iters", str(iters), "--eval-interval", str(iters), "--eval-iters", "2",
            "--log-interval", "1", "--ckpt-interval", str(iters), "--metrics-port", "0", *extra]


def records(run_dir: Path, event: str | None = None) -> list[dict[str, Any]]:
    from job.rundir import RunDir

    return [r for r in RunDir(run_dir).records() if event is None or r["event"] == event]


def final_checkpoint(run_dir: Path) -> dict[str, Any]:
    """The run's newest whole checkpoint, as a resume would take it (verified, on the CPU)."""
    from job import checkpoint
    from job.rundir import RunDir

    found = checkpoint.load_latest(RunDir(run_dir).ckpt)
    if found is None:
        raise Fail(f"no whole checkpoint in {run_dir}/ckpt")
    return found[0]


def steady(run_dir: Path) -> dict[str, float]:
    """Median step time, tokens/s and MFU over the second half of the run's steps (past compile)."""
    steps = records(run_dir, "step")
    half = steps[len(steps) // 2:]
    mfus = [s["mfu"] for s in half if s.get("mfu") is not None]
    return {"step_ms": statistics.median(s["step_ms"] for s in half),
            "tokens_per_s": statistics.median(s["tokens_per_s"] for s in half),
            "mfu": statistics.median(mfus) if mfus else 0.0, "first_step_s": steps[0]["step_ms"] / 1e3}


def need_cuda(ctx: Ctx, what: str) -> None:
    if ctx.device != "cuda":
        raise Skip(f"needs CUDA ({what})")


# ---- rows ----------------------------------------------------------------------------------------

def machine_and_matmul(ctx: Ctx) -> tuple[str, dict[str, Any]]:
    """torch, the card, and the dense matmul rate measured here (bf16 on a GPU: MFU's real bound)."""
    import torch

    figs: dict[str, Any] = {"torch": torch.__version__, "cuda": torch.version.cuda, "python": sys.version.split()[0]}
    if ctx.device == "cuda":
        p = torch.cuda.get_device_properties(0)
        figs.update(card=p.name, memory_gib=round(p.total_memory / 2**30, 1), sm=f"{p.major}{p.minor}",
                    gpus=torch.cuda.device_count())
    n, dtype = (512, torch.float32) if ctx.quick else (8192, torch.bfloat16)
    a, b = (torch.randn(n, n, device=ctx.device, dtype=dtype) for _ in range(2))
    sync = torch.cuda.synchronize if ctx.device == "cuda" else (lambda: None)
    for _ in range(3):
        a @ b
    sync()
    reps, t0 = (5 if ctx.quick else 50), time.perf_counter()
    for _ in range(reps):
        a @ b
    sync()
    ctx.rate = 2 * n**3 * reps / (time.perf_counter() - t0)
    figs["matmul_tflops"] = round(ctx.rate / 1e12, 3)
    kind = "fp32" if ctx.quick else "bf16"
    if not (ctx.rate > 1e9 and (ctx.quick or ctx.rate > 20e12)):
        raise Fail(f"{kind} matmul rate {ctx.rate / 1e12:.3g} TFLOP/s is implausible")
    card = f"{figs['card']} x{figs['gpus']}, " if "card" in figs else "CPU, "
    return f"{card}torch {torch.__version__}; {kind} matmul {ctx.rate / 1e12:.3g} TFLOP/s", figs


def night_run(ctx: Ctx, name: str, shape: list[str], iters: int, *extra: str) -> dict[str, Any]:
    """A short run of `shape` at the preset's own tokens per iteration, as a night trains it: its
    steady tokens/s and MFU, the micro-batch auto_batch took, and the allocator's peak against the
    plan's for the same settings on this card."""
    iters = 4 if ctx.quick else iters
    job(ctx, *train_args(ctx, name, SMALL if ctx.quick else shape, iters, *extra), limit=300)
    run_dir = ctx.work / "runs" / name
    ctx.runs[name] = run_dir
    st = steady(run_dir)
    saved = json.loads((run_dir / "config.json").read_text())
    plan = json.loads(job(ctx, "plan", *(SMALL if ctx.quick else shape), *extra, "--gpu",
                          "auto" if ctx.device == "cuda" else "cpu", "--json", limit=120).stdout)["memory"]
    peak = max((r.get("peak_memory_bytes", 0) for r in records(run_dir, "step")), default=0)
    return {**st, "micro_batch": f"{saved['batch_size']} x {saved['grad_accum']}", "why": saved.get("micro_batch", ""),
            "peak_bytes": peak, "planned_bytes": plan["total"] - plan["workspace"],
            "val_loss": json.loads((run_dir / "DONE").read_text())["val_loss"]}


def said(name: str, f: dict[str, Any]) -> str:
    mfu = f"MFU {100 * f['mfu']:.1f}%" if f["mfu"] else "no MFU (no peak for this card)"
    memory = (f"peak {f['peak_bytes'] / 1e9:.2f} GB vs plan {f['planned_bytes'] / 1e9:.2f} GB "
              f"({f['planned_bytes'] / f['peak_bytes']:.2f}x)" if f["peak_bytes"] else "no allocator peak on a CPU")
    return (f"{name}: {f['tokens_per_s']:,.0f} tokens/s, {mfu}, micro-batch {f['micro_batch']}, {memory}, "
            f"first step {f['first_step_s']:.1f} s, val loss {f['val_loss']:.3f}")


def judged(ctx: Ctx, name: str, f: dict[str, Any]) -> list[str]:
    """What a night's run on a GPU misses of its targets (nothing is judged on the CPU)."""
    if ctx.quick:
        return []
    misses = []
    if f["peak_bytes"] and abs(f["planned_bytes"] / f["peak_bytes"] - 1) > MEMORY_TOLERANCE:
        misses.append(f"plan's memory off by more than {MEMORY_TOLERANCE:.0%}")
    if f["mfu"] and f["mfu"] < MFU_TARGET.get(name, 0):
        misses.append(f"MFU below {MFU_TARGET[name]:.0%}")
    return misses


def night_40m_muon(ctx: Ctx) -> tuple[str, dict[str, Any]]:
    """gpt2-40m as its preset trains it (Muon): the run later rows plan, sample, eval and export."""
    f = night_run(ctx, "gpt2-40m", GPT2_40M, NIGHT_ITERS["gpt2-40m"])
    ctx.steady_ms["gpt2-40m"] = f["step_ms"]
    if not f["val_loss"] < 11.5:
        raise Fail(f"val loss {f['val_loss']}", f)
    if misses := judged(ctx, "gpt2-40m", f):
        raise Fail(f"{'; '.join(misses)}: {said('gpt2-40m', f)}", f)
    return said("gpt2-40m", f) + (" (uncompiled fp32 stand-in on the CPU)" if ctx.quick else ""), f


def night_40m_adamw(ctx: Ctx) -> tuple[str, dict[str, Any]]:
    """The same run with AdamW alone: Muon's step must cost almost nothing beside it."""
    if "gpt2-40m" not in ctx.runs:
        raise Fail("no gpt2-40m run to compare with (its row failed)")
    f = night_run(ctx, "gpt2-40m-adamw", GPT2_40M, NIGHT_ITERS["gpt2-40m"], "--optimizer", "adamw")
    muon = steady(ctx.runs["gpt2-40m"])["tokens_per_s"]
    f["muon_vs_adamw"] = muon / f["tokens_per_s"]
    text = f"{said('gpt2-40m, AdamW', f)}; Muon's run at {f['muon_vs_adamw']:.2f}x these tokens/s"
    if not ctx.quick and f["muon_vs_adamw"] < MUON_VS_ADAMW:
        raise Fail(f"Muon below {MUON_VS_ADAMW}x AdamW's tokens/s: {text}", f)
    return text, f


def night_124m(ctx: Ctx) -> tuple[str, dict[str, Any]]:
    """gpt2-124m (GPT-2 small) as its preset trains it."""
    if ctx.quick:
        raise Skip("needs CUDA (GPT-2 small at 524,288 tokens an iteration is no CPU row)")
    f = night_run(ctx, "gpt2-124m", GPT2_124M, NIGHT_ITERS["gpt2-124m"])
    if misses := judged(ctx, "gpt2-124m", f):
        raise Fail(f"{'; '.join(misses)}: {said('gpt2-124m', f)}", f)
    return said("gpt2-124m", f), f


def plan_vs_measured(ctx: Ctx) -> tuple[str, dict[str, Any]]:
    """`job plan --measure` for the gpt2-40m run's settings: predicted peak memory against the
    allocator's peak, and the plan's measured step time against the training run's steady one."""
    if "gpt2-40m" not in ctx.steady_ms:
        raise Fail("no gpt2-40m run to compare with (its row failed)")
    shape = SMALL if ctx.quick else GPT2_40M
    p = json.loads(job(ctx, "plan", *shape, "--gpu", "auto" if ctx.device == "cuda" else "cpu",
                       "--device", ctx.device, "--measure", "--json", limit=300).stdout)
    mem, m = p["memory"], p["measured"]
    predicted, peak = mem["total"] - mem["workspace"], m["peak_memory_bytes"]
    plan_ms, train_ms = m["s_per_iter"] * 1e3, ctx.steady_ms["gpt2-40m"]
    figs = {"predicted_bytes": predicted, "peak_bytes": peak, "plan_ms": plan_ms, "train_ms": train_ms}
    text = f"step: plan {plan_ms:.1f} ms, train {train_ms:.1f} ms ({train_ms / plan_ms:.2f}x)"
    if peak:
        text += f"; memory: predicted {predicted / 1e9:.2f} GB, measured {peak / 1e9:.2f} GB ({predicted / peak:.2f}x)"
    if ctx.quick:
        return text + " (not judged on a shared CPU; allocator peak is CUDA-only)", figs
    bad = [what for what, a, b in (("step time", plan_ms, train_ms), ("peak memory", predicted, peak or 0))
           if not (b and abs(a / b - 1) <= TOLERANCE)]
    if bad:
        raise Fail(f"{' and '.join(bad)} off by more than {TOLERANCE:.0%}: {text}", figs)
    return text, figs


def max_difference(a: Path, b: Path) -> float:
    """The largest absolute difference between two runs' final model tensors (0.0: bitwise)."""
    sa, sb = final_checkpoint(a), final_checkpoint(b)
    return max(float((sa["model"][k].double() - sb["model"][k].double()).abs().max()) for k in sa["model"])


def sigterm_resume(ctx: Ctx) -> tuple[str, dict[str, Any]]:
    """SIGTERM mid-run -> exit 75 -> resume: same data position, loss continuing, and with
    `deterministic` the end bitwise equal to a run never stopped."""
    shape = [*(SMALL if ctx.quick else GPU_SMALL), "--deterministic"]
    iters, stop_at = (8, 3) if ctx.quick else (60, 20)
    job(ctx, *train_args(ctx, "ref", shape, iters, "--ckpt-interval", "1000000"))
    ref, cut = ctx.work / "runs" / "ref", ctx.work / "runs" / "cut"
    args = [sys.executable, "-m", "job", *train_args(ctx, "cut", shape, iters, "--ckpt-interval", "1000000")]
    proc = subprocess.Popen(args, cwd=ROOT, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        try:
            wait_for_step(cut, stop_at, proc, timeout=min(180, ctx.left()))
        except AssertionError as e:
            raise Fail(f"the run never reached iteration {stop_at} (exit {proc.poll()})") from e
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=min(120, ctx.left()))
    finally:
        proc.kill() if proc.poll() is None else None
    if rc != 75:
        raise Fail(f"SIGTERM gave exit {rc}, not 75: {proc.stderr.read()[-500:] if proc.stderr else ''}")
    stopped = records(cut, "stop")[-1]["iteration"]
    job(ctx, *train_args(ctx, "cut", shape, iters, "--ckpt-interval", "1000000"))
    by_it = {r["iteration"]: r for r in records(ref, "step")}
    after = [r for r in records(cut, "step") if r["iteration"] == stopped + 1][-1]
    want = by_it[stopped + 1]
    if after["loader"] != want["loader"]:
        raise Fail(f"resumed at loader {after['loader']}, the uninterrupted run was at {want['loader']}")
    loss_gap = abs(after["train_loss"] - want["train_loss"])
    diff = max_difference(ref, cut)
    figs = {"stopped_at": stopped, "loss_gap": loss_gap, "max_difference": diff}
    ending = "bitwise" if diff == 0 else f"max |difference| {diff:.3g}"
    text = f"exit 75 at iteration {stopped}, resumed at the same loader position, loss gap {loss_gap:.2g}; {ending}"
    if loss_gap > 0.05:
        raise Fail(f"the loss did not continue: {text}", figs)
    if diff != 0:
        raise Fail(f"not bitwise with --deterministic: {text}", figs)
    return text, figs


def rollback_child(settings: dict[str, Any]) -> int:
    """In a process of its own: the real loop, with the model's loss made NaN at the chosen steps."""

    from job.config import resolve
    from job.hooks import RunHooks
    from job.rundir import RunDir
    from job.train import run_loop, setup

    bad = set(settings.pop("bad_steps"))
    cfg = resolve(settings, environ={}, dotenv=None)
    session = setup(cfg, RunHooks(), RunDir(cfg.run_dir))
    session.step_model = NanAt(session.step_model, bad, cfg.grad_accum)
    try:
        return run_loop(session)
    finally:
        session.log.close()


def forced_rollback(ctx: Ctx) -> tuple[str, dict[str, Any]]:
    """Five non-finite losses in a row (bad_step_limit) roll the model back to the newest good
    checkpoint; the run then finishes with a finite val loss."""
    settings = {"device": ctx.device, "data": str(ctx.data), "out_dir": str(ctx.work / "runs"), "run": "nan",
                "max_iters": 12, "ckpt_interval": 3, "eval_interval": 12, "eval_iters": 2, "log_interval": 1,
                "metrics_port": 0, "loss_chunk": 0, "bad_steps": [4, 5, 6, 7, 8]}
    if ctx.quick:
        settings.update(n_layer=1, n_head=2, n_embd=32, block_size=32, batch_size=4)
    run(ctx, [sys.executable, __file__, "--rollback-child", json.dumps(settings)], limit=240)
    run_dir = ctx.work / "runs" / "nan"
    rollbacks = records(run_dir, "rollback")
    done = json.loads((run_dir / "DONE").read_text())
    if not rollbacks or not done["val_loss"] < 20:
        raise Fail(f"{len(rollbacks)} rollback records, final val loss {done['val_loss']}")
    return (f"{len(rollbacks)} roll-back at iteration {rollbacks[0]['iteration']} ({rollbacks[0]['reason']}); "
            f"finished {done['iteration']} iterations, val loss {done['val_loss']:.3f}, "
            f"{done['skipped_steps']} steps skipped", {"rollbacks": len(rollbacks), **done})


def fp16_scaler(ctx: Ctx) -> tuple[str, dict[str, Any]]:
    """float16 with the GradScaler: trains, finishes finite, and checkpoints the scaler's state."""
    job(ctx, *train_args(ctx, "fp16", SMALL if ctx.quick else GPU_SMALL, 8 if ctx.quick else 40, "--dtype", "float16"))
    run_dir = ctx.work / "runs" / "fp16"
    done = json.loads((run_dir / "DONE").read_text())
    ck = final_checkpoint(run_dir)
    scale = ck["scaler"].get("scale")
    if records(run_dir, "start")[0]["dtype"] != "float16" or not scale or not done["val_loss"] < 11:
        raise Fail(f"dtype {records(run_dir, 'start')[0]['dtype']}, scaler state {ck['scaler']}, "
                   f"val loss {done['val_loss']}")
    return f"val loss {done['val_loss']:.3f}, GradScaler scale {float(scale):g}, " \
           f"{done['skipped_steps']} steps counted bad", {"scale": float(scale), **done}


def sample_eval_export(ctx: Ctx) -> tuple[str, dict[str, Any]]:
    """`job sample`, `job eval` and `job export` on the gpt2-40m run's checkpoint, on the device."""
    run_dir = ctx.runs.get("gpt2-40m")
    if run_dir is None:
        raise Fail("no gpt2-40m run to use (its row failed)")
    where = ["--out-dir", str(run_dir.parent), "--device", ctx.device]
    s = json.loads(job(ctx, "sample", "gpt2-40m", *where, "--prompt", "ROMEO:", "--tokens", "16", "--json").stdout)
    e = json.loads(job(ctx, "eval", "gpt2-40m", *where, "--data", str(ctx.data), "--tokens", "4096",
                       "--json").stdout)
    out = ctx.work / "hf"
    job(ctx, "export", "gpt2-40m", "--out-dir", str(run_dir.parent), "--out", str(out))
    files = sorted(p.name for p in out.iterdir())
    if not (s["tokens"] and s["completion"] and e["val_loss"] < 11.5 and "model.safetensors" in files):
        raise Fail(f"sample {len(s['tokens'])} tokens, eval val loss {e['val_loss']}, export {files}")
    return (f"sample {len(s['tokens'])} tokens; eval val loss {e['val_loss']:.3f} on {e['val_tokens']} tokens; "
            f"export {', '.join(files)}", {"eval_val_loss": e["val_loss"], "export": files})


def torchrun_ddp(ctx: Ctx) -> tuple[str, dict[str, Any]]:
    """`job train` under torchrun, one process (the whole DDP path on one card), then every GPU."""
    import torch

    counts = [1] + ([torch.cuda.device_count()] if ctx.device == "cuda" and torch.cuda.device_count() > 1 else [])
    shape = SMALL if ctx.quick else GPU_SMALL
    seen = []
    for n in counts:
        name = f"ddp{n}"
        args = train_args(ctx, name, shape, 6 if ctx.quick else 40)
        del args[args.index("--run"):args.index("--run") + 2]  # torchrun's own parser takes --run for --run-path
        run(ctx, [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(n), "-m",
                  "job", *args], limit=240, JOB_RUN=name)
        start = records(ctx.work / "runs" / name, "start")[0]
        done = json.loads((ctx.work / "runs" / name / "DONE").read_text())
        if start["world_size"] != n:
            raise Fail(f"world_size {start['world_size']} under torchrun --nproc-per-node {n}")
        seen.append(f"{n} process{'es' if n > 1 else ''}: world_size {start['world_size']}, "
                    f"val loss {done['val_loss']:.3f}")
    backend = "gloo on the CPU (NCCL needs CUDA)" if ctx.device != "cuda" else "NCCL"
    return f"{backend}; " + "; ".join(seen), {"processes": counts}


def scraped_past(port: int, after: float, timeout: float) -> dict[str, float]:
    """The endpoint's series once it shows an iteration above `after`."""
    def past() -> dict[str, float] | None:
        series = scrape(port, timeout=2)
        return series if series.get("trainer_iteration", 0) > after else None

    try:
        return wait_for(past, timeout, what=f"an iteration above {after:.0f}", step=0.25, ignoring=(OSError,))
    except AssertionError as e:
        raise Fail(f"the metrics endpoint showed no iteration above {after:.0f} in {timeout:.0f} s") from e


def gpu_series(ctx: Ctx) -> tuple[str, dict[str, Any]]:
    """The metrics endpoint during a real run: iterations advancing; on a GPU power > 0, the energy
    counter rising between two scrapes and memory used > 0."""
    port, gap = free_port(), 2 if ctx.quick else 5
    args = train_args(ctx, "metrics", SMALL if ctx.quick else GPU_SMALL, 100000, "--metrics-port", str(port))
    proc = subprocess.Popen([sys.executable, "-m", "job", *args], cwd=ROOT, env=env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        first = scraped_past(port, 0, min(120, ctx.left()))
        time.sleep(gap)
        second = scraped_past(port, first["trainer_iteration"], min(60, ctx.left()))
    finally:
        proc.terminate()
        proc.wait(timeout=120)
    pick = lambda d, name: {k: v for k, v in d.items() if k.startswith(name + "{") or k == name}
    power = list(pick(second, "trainer_gpu_power_watts").values())
    e1, e2 = pick(first, "trainer_gpu_energy_joules_total"), pick(second, "trainer_gpu_energy_joules_total")
    rise = [e2[k] - e1.get(k, e2[k]) for k in e2]
    used = list(pick(second, "trainer_gpu_memory_used_bytes").values())
    steps = second["trainer_iteration"] - first["trainer_iteration"]
    figs = {"steps": steps, "seconds": gap, "power_w": power, "energy_rise_j": rise, "memory_used_bytes": used}
    text = f"{steps:.0f} iterations between two scrapes {gap} s apart"
    if ctx.device != "cuda":
        raise Skip(f"{text}; the GPU series need CUDA (NVML)", figs)
    if not (power and all(p > 0 for p in power) and rise and all(r > 0 for r in rise) and used and min(used) > 0):
        raise Fail(f"{text}; power {power} W, energy rise {rise} J, memory used {used} B", figs)
    return (f"{text}; power {[round(p) for p in power]} W, energy +{sum(rise):.0f} J, "
            f"memory used {[round(u / 1e9, 2) for u in used]} GB"), figs


def mfu(ctx: Ctx) -> tuple[str, dict[str, Any]]:
    """MFU of the gpt2-40m and gpt2-124m runs of the rows above, against the card table's peak and
    against the bf16 matmul rate measured here."""
    if "gpt2-40m" not in ctx.runs:
        raise Fail("no gpt2-40m run (its row failed)")
    parts, figs = [], {}
    for name in ("gpt2-40m", "gpt2-124m"):
        if name not in ctx.runs:
            parts.append(f"{name}: not run on the CPU")
            continue
        st, fpt = steady(ctx.runs[name]), records(ctx.runs[name], "start")[0]["flops_per_token"]
        of_rate = st["tokens_per_s"] * fpt / ctx.rate
        figs[name] = {**st, "mfu_of_measured_rate": of_rate}
        if not of_rate > 0:
            raise Fail(f"{name}: {st['tokens_per_s']} tokens/s, {of_rate} of the measured rate", figs)
        table = f"MFU {100 * st['mfu']:.1f}% of the table's peak" if st["mfu"] else "no table peak for this card"
        parts.append(f"{name}: {st['tokens_per_s']:,.0f} tokens/s, {table}, "
                     f"{100 * of_rate:.1f}% of the measured matmul rate")
    return "; ".join(parts), figs


ROWS: list[tuple[str, Callable[[Ctx], tuple[str, dict[str, Any]]]]] = [
    ("machine, bf16 matmul rate", machine_and_matmul),
    ("gpt2-40m, Muon (its preset), 524,288 tokens/iter", night_40m_muon),
    ("gpt2-40m, AdamW, the same run", night_40m_adamw),
    ("plan vs measured (peak memory, step time)", plan_vs_measured),
    ("SIGTERM -> exit 75 -> resume", sigterm_resume),
    ("forced roll-back (non-finite loss)", forced_rollback),
    ("fp16 with the GradScaler", fp16_scaler),
    ("job sample, eval, export", sample_eval_export),
    ("torchrun (DDP)", torchrun_ddp),
    ("metrics: GPU series", gpu_series),
    ("gpt2-124m, 524,288 tokens/iter", night_124m),
    ("MFU gpt2-40m, gpt2-124m", mfu),
]


def run_row(ctx: Ctx, name: str, fn: Callable[[Ctx], tuple[str, dict[str, Any]]]) -> Row:
    row, t0 = Row(name), time.time()
    try:
        row.reason, row.figures = fn(ctx)
        row.status = "PASS"
    except Fail as e:
        row.status = "SKIP" if isinstance(e, Skip) else "FAIL"
        row.reason, row.figures = str(e), e.figures
    except Exception as e:  # a bug or a surprise: the row fails, the others still run
        row.reason = f"{type(e).__name__}: {e}"
        traceback.print_exc()
    row.seconds = round(time.time() - t0, 1)
    print(f"[{row.status}] {name} ({row.seconds} s): {row.reason}", file=sys.stderr, flush=True)
    return row


def markdown(rows: list[Row], mode: str) -> str:
    lines = [f"GPU check ({mode}): {sum(r.status == 'FAIL' for r in rows)} FAIL", "",
             "| row | status | result | s |", "| --- | --- | --- | --- |"]
    lines += [f"| {r.name} | {r.status} | {r.reason.replace('|', '/')} | {r.seconds:.0f} |" for r in rows]
    return "\n".join(lines) + "\n"


def write(out: str, rows: list[Row], mode: str) -> None:
    """The table to OUT/gpu_check.{md,json} when OUT is a directory (or ends in /), else OUT.{md,json}."""
    prefix = Path(out) / "gpu_check" if Path(out).is_dir() or out.endswith("/") else Path(out).with_suffix("")
    prefix.parent.mkdir(parents=True, exist_ok=True)
    prefix.with_suffix(".md").write_text(markdown(rows, mode))
    doc = {"mode": mode, "ok": not any(r.status == "FAIL" for r in rows), "rows": [r.__dict__ for r in rows]}
    prefix.with_suffix(".json").write_text(json.dumps(doc, indent=2, default=str) + "\n")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="every row small on the CPU: checks the script itself")
    ap.add_argument("--out", help="a directory (or path prefix) for gpu_check.md and gpu_check.json")
    ap.add_argument("--budget", type=float, default=570, help="seconds for the whole check (default 570)")
    ap.add_argument("--rollback-child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.rollback_child:
        return rollback_child(json.loads(args.rollback_child))
    mode = "quick, CPU" if args.quick else "CUDA"
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        ctx = Ctx(quick=args.quick, device="cpu" if args.quick else "cuda", work=Path(tmp),
                  deadline=time.time() + args.budget, data=Path(tmp) / "data" / "shakespeare")
        try:
            job(ctx, "prepare", "--source", "shakespeare", "--out", str(ctx.data), limit=180)
        except Fail as e:
            print(f"error: the corpus could not be prepared, every row will fail: {e}", file=sys.stderr)
        rows = [run_row(ctx, name, fn) for name, fn in ROWS]
    table = markdown(rows, mode)
    print(table)
    if args.out:
        write(args.out, rows, mode)
    return 1 if any(r.status == "FAIL" for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
