"""The training loop: resume, step, log, checkpoint, stop cleanly. Exit codes are the contract
with cron and restart policies: 0 done, 75 stopped on purpose with a checkpoint, 1 failed,
2 bad settings."""

from __future__ import annotations

import json
import math
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import torch

from job import checkpoint
from job.config import SHAPE_KEYS, Config, ConfigError, parse_clock, parse_duration
from job.data.loader import LoaderState, TrainLoader, to_device, val_batches
from job.data.prepare import already_prepared, prepare_shakespeare
from job.data.shards import ShardError, atomic_write_bytes, check_dataset, split_files
from job.device import Precision, pick_device, pick_precision
from job.flops import flops_per_token
from job.gpus import card_for
from job.model import GPT, GPTConfig
from job.plan import forecast
from job.ui import human_count, human_duration

EXIT_DONE, EXIT_FAILED, EXIT_USAGE, EXIT_STOPPED = 0, 1, 2, 75


@dataclass
class StepInfo:
    """What the loop knows after each optimizer step; hooks (metrics) read it."""
    iteration: int
    max_iters: int
    train_loss: float
    lr: float
    grad_norm: float
    tokens: int  # total over the run, across restarts
    step_s: float
    tokens_per_s: float
    mfu: float | None
    elapsed_s: float  # run total across restarts
    energy_j: float  # run total across restarts
    eta_s: float
    restarts: int
    val_loss: float | None = None  # set on evaluation steps
    checkpoint_s: float | None = None  # set on checkpoint steps
    predicted_energy_j: float | None = None  # run total at max_iters, from job.plan.forecast


@dataclass
class RunHooks:
    """Seams for monitoring: called from the loop, never required."""
    on_start: Callable[[dict[str, Any]], None] | None = None
    on_step: Callable[[StepInfo], None] | None = None
    # cumulative device energy in joules since some fixed point (NVML); None where unknown
    energy_meter: Callable[[], float | None] | None = None
    peak_flops: float | None = None  # the card's peak for MFU; cfg.peak_tflops overrides


def lr_at(it: int, cfg: Config) -> float:
    """Linear warmup, then cosine decay to min_lr at max_iters."""
    if it < cfg.warmup_iters:
        return cfg.lr * (it + 1) / (cfg.warmup_iters + 1)
    span = max(1, cfg.max_iters - cfg.warmup_iters)
    progress = min(1.0, (it - cfg.warmup_iters) / span)
    return cfg.min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (cfg.lr - cfg.min_lr)


class StopFlag:
    """SIGTERM/SIGINT ask the loop to finish its step, checkpoint and exit 75; a second SIGINT
    interrupts at once."""

    def __init__(self) -> None:
        self.reason: str | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> StopFlag:
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, _frame: Any) -> None:
        if self.reason and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.reason = signal.Signals(signum).name
        print(f"\n{self.reason} received: finishing this step, then checkpoint and exit "
              f"{EXIT_STOPPED}", file=sys.stderr, flush=True)

    def __exit__(self, *exc: Any) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


def deadline(cfg: Config, started: float) -> tuple[float, str] | None:
    """The earliest of max_runtime (from this start) and stop_at (next such local time)."""
    options = []
    if cfg.max_runtime:
        options.append((started + parse_duration(cfg.max_runtime), f"max_runtime {cfg.max_runtime}"))
    if cfg.stop_at:
        h, m, s = parse_clock(cfg.stop_at)
        now = datetime.fromtimestamp(started)
        at = now.replace(hour=h, minute=m, second=s, microsecond=0)
        if at <= now:
            at += timedelta(days=1)
        options.append((at.timestamp(), f"stop_at {cfg.stop_at}"))
    return min(options) if options else None


def ensure_data(cfg: Config) -> dict[str, Any]:
    """The dataset, prepared on the spot if it is the embedded one; otherwise checked cheaply."""
    data_dir = cfg.data_dir
    if cfg.data == "shakespeare" and not already_prepared(data_dir):
        prepare_shakespeare(data_dir)
    if not (data_dir / "manifest.json").is_file():
        raise ConfigError(f"data: no prepared dataset at {data_dir}; run `job prepare` for it "
                          f"or set data to a prepared directory")
    try:
        manifest = check_dataset(data_dir)
    except ShardError as e:
        raise ConfigError(f"data: {e}") from None
    for split in ("train", "val"):
        shortest = min((s["tokens"] for s in manifest["shards"] if s["split"] == split), default=0)
        if shortest < cfg.block_size + 1:
            raise ConfigError(f"block_size: {cfg.block_size} is too long for the data ({split} has a shard of "
                              f"{shortest} tokens); use block_size <= {max(shortest - 1, 0)}")
    return manifest


def refuse_incompatible(saved: dict[str, Any], cfg: Config, fingerprint: str, saved_fp: str) -> None:
    diffs = [f"{k} {saved.get(k)!r} -> {getattr(cfg, k)!r}" for k in SHAPE_KEYS if saved.get(k) != getattr(cfg, k)]
    if saved_fp != fingerprint:
        diffs.append(f"data {saved.get('data')!r} (fingerprint {saved_fp}) -> {cfg.data!r} ({fingerprint})")
    if diffs:
        raise ConfigError(f"resume refused, run '{cfg.run_name}' was started with other settings: "
                          f"{'; '.join(diffs)}. Use --fresh to start over (the old run is kept) or a new --run")


def read_done(run_dir: Path) -> dict[str, Any] | None:
    try:
        return json.loads((run_dir / "DONE").read_text())
    except (OSError, json.JSONDecodeError):
        return None


class RunLog:
    """runs/<run>/log.jsonl, one JSON object a line, appended and flushed as it goes."""

    def __init__(self, path: Path):
        # a kill can cut the last line short; start on a fresh line so the next record parses
        cut = False
        if path.is_file() and path.stat().st_size > 0:
            with open(path, "rb") as f:
                f.seek(-1, 2)
                cut = f.read(1) != b"\n"
        self._f = open(path, "a", buffering=1)
        if cut:
            self._f.write("\n")

    def write(self, event: str, **fields: Any) -> None:
        self._f.write(json.dumps({"event": event, "time": round(time.time(), 3), **fields}) + "\n")

    def close(self) -> None:
        self._f.close()


@torch.no_grad()
def evaluate(model: torch.nn.Module, batches: list, prec: Precision) -> float:
    model.eval()
    total = 0.0
    for rows in batches:
        x, y = to_device(rows, prec.device)
        with prec.autocast():
            _, loss = model(x, y)
        total += loss.item()
    model.train()
    return total / len(batches)


def train(cfg: Config, hooks: RunHooks | None = None) -> int:
    hooks = hooks or RunHooks()
    run_dir = cfg.run_dir
    done = read_done(run_dir)
    if done and done.get("iteration", 0) >= cfg.max_iters:
        print(f"run '{cfg.run_name}' is already done at iteration {done['iteration']}; nothing to do")
        return EXIT_DONE

    manifest = ensure_data(cfg)
    device = pick_device(cfg.device)
    prec = pick_precision(device, cfg.dtype)
    checkpoint.clean_temporaries(run_dir)
    resumed = checkpoint.load_latest(run_dir, map_location=device)
    if resumed:
        saved, _ = resumed
        refuse_incompatible(saved["config"], cfg, manifest["fingerprint"], saved["data_fingerprint"])
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(run_dir / "config.json", (json.dumps(cfg.to_dict(), indent=2) + "\n").encode())
    if done:  # max_iters was raised past a finished run: carry on
        (run_dir / "DONE").unlink()

    torch.manual_seed(cfg.seed)
    gcfg = GPTConfig(**{k: getattr(cfg, k) for k in GPTConfig.__dataclass_fields__})
    model = GPT(gcfg).to(device)
    optimizer = model.optimizer(cfg.lr, cfg.weight_decay, (cfg.beta1, cfg.beta2), device.type)
    scaler = torch.amp.GradScaler(device.type, enabled=prec.needs_scaler)
    st: dict[str, Any] = {"iteration": 0, "tokens": 0, "elapsed_s": 0.0, "energy_j": 0.0, "restarts": 0,
                          "loader": LoaderState().__dict__, "val_loss": None}
    if resumed:
        saved, path = resumed
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        scaler.load_state_dict(saved["scaler"])
        st = {k: saved[k] for k in st}
        st["restarts"] += 1
        checkpoint.set_rng_state(saved["rng"], device)
        del saved
    files = split_files(cfg.data_dir, manifest, "train")
    loader = TrainLoader(files, cfg.block_size, cfg.batch_size, cfg.seed, LoaderState(**st["loader"]))
    val = val_batches(split_files(cfg.data_dir, manifest, "val"), cfg.block_size, cfg.batch_size, cfg.eval_iters)
    step_model = torch.compile(model) if cfg.compile else model

    n_params = model.num_params()
    fpt = flops_per_token(cfg)["total"]
    # one peak everywhere: the setting, else the hook's, else the table's row for the card in use
    card = card_for(device)
    peak = cfg.peak_tflops * 1e12 if cfg.peak_tflops else (
        hooks.peak_flops or (card.peak_tflops * 1e12 if card and card.peak_tflops else None))
    log = RunLog(run_dir / "log.jsonl")
    start_info = {"run": cfg.run_name, "preset": cfg.preset, "params": n_params, "device": str(device),
                  "dtype": prec.name, "iteration": st["iteration"], "max_iters": cfg.max_iters,
                  "restarts": st["restarts"], "peak_flops": peak or 0.0, "flops_per_token": fpt,
                  "gpu": card.name if card else None}
    log.write("resume" if resumed else "start", **start_info)
    if hooks.on_start:
        hooks.on_start(start_info)
    where = f"resuming from {resumed[1].name} at iteration {st['iteration']}" if resumed else "starting"
    print(f"run '{cfg.run_name}': {where}; {n_params / 1e6:.2f}M params on {device} ({prec.name}), "
          f"{cfg.tokens_per_iter:,} tokens/iter, {cfg.max_iters:,} iterations", flush=True)

    def save_checkpoint() -> tuple[Path, float]:
        t0 = time.time()
        state = {
            "model": checkpoint.strip_compile_prefix(model.state_dict()),
            "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(),
            **{k: v for k, v in st.items() if k != "loader"}, "loader": dict(loader.state.__dict__),
            "rng": checkpoint.rng_state(device), "config": cfg.to_dict(),
            "data_fingerprint": manifest["fingerprint"],
        }
        summary = {k: st[k] for k in ("tokens", "elapsed_s", "energy_j", "restarts", "val_loss")}
        path = checkpoint.save(run_dir, st["iteration"], state, summary, cfg.keep_ckpts)
        seconds = time.time() - t0
        log.write("checkpoint", iter=st["iteration"], path=str(path), seconds=round(seconds, 3))
        return path, seconds

    started = time.time()
    limit = deadline(cfg, started)
    energy_mark = hooks.energy_meter() if hooks.energy_meter else None
    ema_step: float | None = None
    exit_code = EXIT_DONE
    model.train()
    with StopFlag() as stop:
        while st["iteration"] < cfg.max_iters:
            t0 = time.time()
            lr = lr_at(st["iteration"], cfg)
            for group in optimizer.param_groups:
                group["lr"] = lr
            loss_sum = torch.zeros((), device=device)
            for _ in range(cfg.grad_accum):
                x, y = to_device(loader.next_rows(), device)
                with prec.autocast():
                    _, loss = step_model(x, y)
                loss = loss / cfg.grad_accum
                loss_sum += loss.detach()
                scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            clip = cfg.grad_clip if cfg.grad_clip > 0 else float("inf")
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            train_loss = loss_sum.item()  # one sync per iteration, not per micro-step

            step_s = time.time() - t0
            st["iteration"] += 1
            st["tokens"] += cfg.tokens_per_iter
            st["elapsed_s"] += step_s
            if hooks.energy_meter and energy_mark is not None:
                now_j = hooks.energy_meter()
                if now_j is not None:
                    st["energy_j"] += max(0.0, now_j - energy_mark)
                    energy_mark = now_j
            # the first steps carry compile and warm-up; the average forgets them quickly
            ema_step = step_s if ema_step is None else 0.9 * ema_step + 0.1 * step_s
            it = st["iteration"]
            ahead = forecast(cfg, it, ema_step, st["energy_j"], st["elapsed_s"], card.board_w if card else None)
            info = StepInfo(
                iteration=it, max_iters=cfg.max_iters, train_loss=train_loss, lr=lr,
                grad_norm=float(grad_norm), tokens=st["tokens"], step_s=step_s,
                tokens_per_s=cfg.tokens_per_iter / step_s, restarts=st["restarts"],
                mfu=(fpt * cfg.tokens_per_iter / step_s / peak) if peak else None,
                elapsed_s=st["elapsed_s"], energy_j=st["energy_j"], eta_s=ahead["eta_s"],
                predicted_energy_j=ahead["predicted_energy_j"],
            )
            if it % cfg.eval_interval == 0 or it == cfg.max_iters:
                info.val_loss = st["val_loss"] = evaluate(step_model, val, prec)
                log.write("eval", iter=it, val_loss=info.val_loss)
            if it % cfg.log_interval == 0 or it == cfg.max_iters or it == 1:
                log.write("step", iter=it, loss=train_loss, lr=lr, grad_norm=info.grad_norm,
                          tokens=st["tokens"], step_ms=round(step_s * 1e3, 3),
                          tokens_per_s=round(info.tokens_per_s, 1), mfu=info.mfu,
                          elapsed_s=round(st["elapsed_s"], 3), energy_j=round(st["energy_j"], 3),
                          eta_s=round(info.eta_s, 1))
                print(terminal_line(info), flush=True)
            stopping = stop.reason or (limit and time.time() >= limit[0] and limit[1])
            if it % cfg.ckpt_interval == 0 or it == cfg.max_iters or stopping:
                _, info.checkpoint_s = save_checkpoint()
            if hooks.on_step:
                hooks.on_step(info)
            if stopping and it < cfg.max_iters:
                log.write("stop", iter=it, reason=stopping)
                print(f"stopped at iteration {it} ({stopping}); checkpoint written, exit {EXIT_STOPPED}")
                exit_code = EXIT_STOPPED
                break
    if exit_code == EXIT_DONE:
        atomic_write_bytes(run_dir / "DONE", (json.dumps(
            {"iteration": st["iteration"], "tokens": st["tokens"], "val_loss": st["val_loss"],
             "elapsed_s": st["elapsed_s"], "energy_j": st["energy_j"], "finished_at": time.time()}) + "\n").encode())
        log.write("done", iter=st["iteration"], val_loss=st["val_loss"])
        print(f"done: {st['iteration']} iterations, {human_count(st['tokens'])} tokens, "
              f"val loss {st['val_loss']:.4f}, {human_duration(st['elapsed_s'])} of training")
    log.close()
    return exit_code


def terminal_line(i: StepInfo) -> str:
    parts = [f"iter {i.iteration:>{len(str(i.max_iters))}}/{i.max_iters} ({100 * i.iteration / i.max_iters:5.1f}%)",
             f"loss {i.train_loss:.4f}"]
    if i.val_loss is not None:
        parts.append(f"val {i.val_loss:.4f}")
    parts += [f"lr {i.lr:.2e}", f"{i.tokens_per_s:,.0f} tok/s", f"{i.step_s * 1e3:,.0f} ms/it"]
    if i.mfu is not None:
        parts.append(f"mfu {100 * i.mfu:.1f}%")
    parts.append(f"ETA {human_duration(i.eta_s)}")
    return " | ".join(parts)
