"""The training loop, in nanoGPT's shape: `setup` builds the run, `train_step` is one optimizer
step, and `run_loop` reads on one screen: step -> account -> eval? -> log? -> checkpoint? -> stop?

setup resumes from the newest whole checkpoint, or refuses one it cannot continue faithfully
(other model shape, seed or data). The caller (job/cli.py) holds the run's lock. Exit codes are
the contract with cron and restart policies (job/errors.py): 0 done, 75 stopped on purpose with a
checkpoint, 1 failed, 2 bad settings.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from job import checkpoint
from job.config import SHAPE_KEYS, Config
from job.data.dataset import Dataset, open_dataset
from job.data.loader import TrainLoader, val_batches
from job.device import Precision, pick_device, pick_precision, to_device
from job.errors import EXIT_DONE, EXIT_STOPPED, ConfigError, Failure
from job.evaluate import evaluate
from job.fileio import clean_temporaries
from job.flops import flops_per_token, forecast
from job.gpus import Card, card_for, peak_flops
from job.hooks import RunHooks, StartInfo, StepInfo
from job.model import GPT, build_model
from job.rundir import RunDir, RunLog
from job.state import TrainState
from job.stopping import StopFlag, deadline, reached
from job.units import human_count, human_duration


@dataclass
class Session:
    """Everything the loop reads and changes; built by setup()."""
    cfg: Config
    run: RunDir
    data: Dataset
    prec: Precision
    model: GPT
    step_model: torch.nn.Module  # the compiled model when compile is on, else the model itself
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    loader: TrainLoader
    val: list[np.ndarray]
    state: TrainState  # its loader position is the loader's own, advanced as batches are drawn
    log: RunLog
    hooks: RunHooks
    card: Card | None  # the table's row for the GPU in use
    peak: float | None  # FLOP/s that MFU divides by
    energy_mark: float | None = None  # the energy meter's reading after the last step
    ema_step_s: float | None = None  # smoothed step time, for the ETA
    bad_in_row: int = 0  # non-finite steps in a row
    rollbacks_in_row: int = 0  # roll-backs since the last good checkpoint was written

    @property
    def device(self) -> torch.device:
        return self.prec.device

    def energy_since_mark(self) -> float:
        """Joules used since the last reading (0 where nothing measures energy)."""
        meter = self.hooks.energy_meter
        now = meter() if meter else None
        if now is None or self.energy_mark is None:
            self.energy_mark = now
            return 0.0
        used, self.energy_mark = max(0.0, now - self.energy_mark), now
        return used


def train(cfg: Config, hooks: RunHooks | None = None, verify: bool = False) -> int:
    """Train or resume the run `cfg` names; returns the exit code."""
    run = RunDir(cfg.run_dir)
    if already_done(run, cfg.max_iters):
        return EXIT_DONE
    s = setup(cfg, hooks or RunHooks(), run, verify)
    try:
        return run_loop(s)
    finally:
        s.log.close()


def already_done(run: RunDir, max_iters: int) -> bool:
    """Whether the run has reached max_iters (then say so); read-only, so it needs no lock."""
    done = run.read_done()
    if done and done.iteration >= max_iters:
        print(f"run '{run.name}' is already done at iteration {done.iteration}; nothing to do")
        return True
    return False


def run_loop(s: Session) -> int:
    """Step until max_iters, a signal or the time window; returns the exit code."""
    cfg, st = s.cfg, s.state
    limit = time_window(s)
    s.energy_since_mark()
    s.model.train()
    with StopFlag() as stop:
        while st.iteration < cfg.max_iters:
            # -------- TRAINING SECTION BEGIN: one optimizer step over grad_accum micro-batches --------
            t0 = time.time()
            lr = lr_at(st.iteration, cfg)
            train_loss, grad_norm, skipped = train_step(s, lr)
            step_s = time.time() - t0
            # -------- TRAINING SECTION END --------
            # account: the run's counters, energy, throughput and ETA
            info = account(s, lr, train_loss, grad_norm, step_s, skipped)
            it = st.iteration
            # evaluate on the fixed val batches
            if it % cfg.eval_interval == 0 or it == cfg.max_iters:
                info.val_loss = st.val_loss = evaluate(s.step_model, s.val, s.prec)
                s.log.write("eval", iteration=it, val_loss=info.val_loss)
            # log: a record in log.jsonl and a line on the terminal (every skipped step too)
            if it % cfg.log_interval == 0 or it in (1, cfg.max_iters) or skipped:
                log_step(s, info)
            # checkpoint on the interval, at the end and before stopping, unless the guard objects:
            # then back to the newest good checkpoint, past the batches that went bad
            # (none in the middle of non-finite steps: the newest good one must not be rotated away)
            stopping = stop.reason or reached(limit)
            due = it % cfg.ckpt_interval == 0 or it == cfg.max_iters or stopping
            if not (trouble := guard(s, info)) and due and not s.bad_in_row:
                with stop.protected():
                    trouble = save_checkpoint(s, info)
            if trouble:
                rollback(s, trouble)
            if s.hooks.on_step:
                s.hooks.on_step(info)
            # stop early (a signal, the time window): exit 75 and the next start resumes here
            if stopping and st.iteration < cfg.max_iters:
                s.log.write("stop", iteration=st.iteration, reason=stopping)
                print(f"stopped at iteration {st.iteration} ({stopping}); the next start resumes from the newest "
                      f"checkpoint, exit {EXIT_STOPPED}")
                return EXIT_STOPPED
    finish(s)
    return EXIT_DONE


def time_window(s: Session) -> tuple[float, str] | None:
    """When this start must stop (max_runtime, stop_at), said once with the time zone it was read in."""
    limit = deadline(s.cfg.max_runtime, s.cfg.stop_at, time.time())
    if limit:
        at = datetime.fromtimestamp(limit[0]).astimezone().isoformat(timespec="seconds")
        print(f"stopping at {at} ({limit[1]}, local time zone {time.strftime('%Z')})", flush=True)
        s.log.write("window", stop_at=at, reason=limit[1])
    return limit


def train_step(s: Session, lr: float) -> tuple[float, float, bool]:
    """One optimizer step: accumulate grad_accum micro-batches, clip, step. Returns the mean loss,
    the gradient norm before clipping, and whether the update was skipped because one of them was
    not finite. Reading the two is the step's one host sync: the guard needs them before the update."""
    cfg = s.cfg
    for group in s.optimizer.param_groups:
        group["lr"] = lr
    loss_sum = torch.zeros((), device=s.device)
    for _ in range(cfg.grad_accum):
        x, y = to_device(s.loader.next_rows(), s.device)
        with s.prec.autocast():
            _, loss = s.step_model(x, y)
        loss = loss / cfg.grad_accum
        loss_sum += loss.detach()
        s.scaler.scale(loss).backward()
    s.scaler.unscale_(s.optimizer)
    clip = cfg.grad_clip if cfg.grad_clip > 0 else float("inf")
    grad_norm = torch.nn.utils.clip_grad_norm_(s.model.parameters(), clip)
    loss_value, norm = torch.stack([loss_sum.float(), grad_norm.float()]).tolist()
    # fp16's GradScaler skips an overflowing gradient itself, and lowers its scale: that is no fault
    skipped = not math.isfinite(loss_value) or (not math.isfinite(norm) and not s.scaler.is_enabled())
    if not skipped:
        s.scaler.step(s.optimizer)
    s.scaler.update()
    s.optimizer.zero_grad(set_to_none=True)
    return loss_value, norm, skipped


def guard(s: Session, info: StepInfo) -> str | None:
    """Why the model can no longer be trusted, or None."""
    if s.bad_in_row >= s.cfg.bad_step_limit:
        return f"{s.bad_in_row} steps in a row with a non-finite loss or gradient (updates skipped)"
    if s.bad_in_row and info.iteration >= s.cfg.max_iters:
        return f"the last {s.bad_in_row} steps of the run had a non-finite loss or gradient"
    if info.val_loss is not None and not math.isfinite(info.val_loss):
        return f"val loss {info.val_loss}"
    return None


def rollback(s: Session, why: str) -> None:
    """Back to the newest good checkpoint, keeping the loader past the batches that went bad; after
    rollback_limit of these with no good checkpoint between them, end the run (exit 1)."""
    cfg, st = s.cfg, s.state
    it, found = st.iteration, None
    if s.rollbacks_in_row < cfg.rollback_limit:
        found = checkpoint.load_latest(s.run.ckpt, map_location=s.device)
    s.log.write("rollback" if found else "diverged", iteration=it, reason=why, rollbacks=s.rollbacks_in_row)
    advice = f"lower lr (now {cfg.lr:g}) or raise warmup_iters, or check the data ({cfg.data})"
    if found is None and s.rollbacks_in_row == 0:
        raise Failure(f"training diverged at iteration {it} ({why}) before any checkpoint to go back to; {advice}")
    if found is None:
        kept = checkpoint.latest_seal(s.run.ckpt)
        raise Failure(f"training diverged: {why} at iteration {it}, and {s.rollbacks_in_row} roll-backs to the "
                      f"newest good checkpoint did not help; {advice}. The checkpoints on disk are whole and finite "
                      f"(newest: {kept['file'] if kept else 'none'})")
    saved, path = found
    st.roll_back_to(checkpoint.restore(saved, s.model, s.optimizer, s.scaler, s.device))
    s.bad_in_row, s.rollbacks_in_row = 0, s.rollbacks_in_row + 1
    print(f"warning: {why} at iteration {it}; rolled back to {path.name} (iteration {st.iteration}), past the "
          f"batches that went bad ({s.rollbacks_in_row} of {cfg.rollback_limit})", file=sys.stderr, flush=True)


def lr_at(it: int, cfg: Config) -> float:
    """Linear warmup, then cosine decay to min_lr at max_iters."""
    if it < cfg.warmup_iters:
        return cfg.lr * (it + 1) / (cfg.warmup_iters + 1)
    span = max(1, cfg.max_iters - cfg.warmup_iters)
    progress = min(1.0, (it - cfg.warmup_iters) / span)
    return cfg.min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (cfg.lr - cfg.min_lr)


def setup(cfg: Config, hooks: RunHooks, run: RunDir, verify: bool = False) -> Session:
    """Data and batches, device, resume or refuse, model, optimizer, scaler; then say so. Every
    check that can refuse runs before the first write to the run."""
    data = open_dataset(cfg.data, cfg.data_dir, cfg.block_size, cfg.vocab_size, verify)
    loader = TrainLoader(data.files("train"), cfg.block_size, cfg.batch_size, cfg.seed, vocab=data.n_vocab)
    val = val_batches(data.files("val"), cfg.block_size, cfg.batch_size, cfg.eval_iters, data.n_vocab)
    device = pick_device(cfg.device)
    prec = pick_precision(device, cfg.dtype)
    clean_temporaries(run.ckpt)
    resumed = checkpoint.load_latest(run.ckpt, map_location=device)
    if resumed:
        refuse_incompatible(resumed[0], cfg, data.fingerprint)
    run.write_config(cfg.to_dict())
    run.clear_done()  # max_iters was raised past a finished run: carry on

    torch.manual_seed(cfg.seed)
    model = build_model(cfg.to_dict()).to(device)
    optimizer = model.optimizer(cfg.lr, cfg.weight_decay, (cfg.beta1, cfg.beta2), device.type)
    scaler = torch.amp.GradScaler(device.type, enabled=prec.needs_scaler)
    state, resumed_from = TrainState(), None
    if resumed:
        (saved, resumed_from), resumed = resumed, None
        state = checkpoint.restore(saved, model, optimizer, scaler, device)
        state.restarts += not checkpoint.is_imported(saved)  # the first start on imported weights is no restart
        del saved  # a big model's state: free it before the loop allocates
    loader.state = state.loader  # one position: the loader advances it, checkpoints save it
    card = card_for(device)
    s = Session(
        cfg=cfg, run=run, data=data, prec=prec, model=model,
        step_model=torch.compile(model) if cfg.compile else model, optimizer=optimizer, scaler=scaler,
        loader=loader, val=val, state=state, log=run.open_log(), hooks=hooks, card=card,
        peak=peak_flops(card, cfg.peak_tflops),
    )
    announce(s, resumed_from)
    return s


def refuse_incompatible(saved: dict[str, Any], cfg: Config, fingerprint: str) -> None:
    """A checkpoint of another model shape, seed or dataset cannot be continued faithfully. An
    imported one (job import-nanogpt) has no data order to keep: only the model's shape must match."""
    old, imported = saved["config"], checkpoint.is_imported(saved)
    keys = [k for k in SHAPE_KEYS if not (imported and k == "seed")]
    diffs = [f"{k} {old.get(k)!r} -> {getattr(cfg, k)!r}" for k in keys if old.get(k) != getattr(cfg, k)]
    if not imported and saved["data_fingerprint"] != fingerprint:
        diffs.append(f"data {old.get('data')!r} (fingerprint {saved['data_fingerprint']}) -> {cfg.data!r} "
                     f"({fingerprint})")
    if diffs:
        raise ConfigError(f"resume refused, run '{cfg.run_name}' was started with other settings: "
                          f"{'; '.join(diffs)}. Use --fresh to start over (the old run is kept) or a new --run")


def announce(s: Session, resumed_from: Path | None) -> None:
    """Tell the log, the hooks and the terminal what is starting."""
    cfg, st = s.cfg, s.state
    seal = checkpoint.read_seal(resumed_from) if resumed_from else None
    info = StartInfo(
        run=cfg.run_name, preset=cfg.preset, params=s.model.num_params(), device=str(s.device),
        dtype=s.prec.name, gpu=s.card.name if s.card else None, peak_flops=s.peak or 0.0,
        flops_per_token=flops_per_token(cfg)["total"], max_iters=cfg.max_iters, state=st,
        checkpoint_saved_at=seal.get("saved_at") if seal else None,
    )
    fields = {k: v for k, v in vars(info).items() if k not in ("state", "checkpoint_saved_at")}
    s.log.write("resume" if resumed_from else "start", **fields, **st.summary())
    if s.hooks.on_start:
        s.hooks.on_start(info)
    where = f"resuming from {resumed_from.name} at iteration {st.iteration}" if resumed_from else "starting"
    print(f"run '{cfg.run_name}': {where}; {info.params / 1e6:.2f}M params on {s.device} ({s.prec.name}), "
          f"{cfg.tokens_per_iter:,} tokens/iter, {cfg.max_iters:,} iterations", flush=True)


def account(s: Session, lr: float, train_loss: float, grad_norm: float, step_s: float, skipped: bool) -> StepInfo:
    """Count one finished step into the run's totals, and say what it achieved."""
    cfg, st = s.cfg, s.state
    st.account(cfg.tokens_per_iter, step_s, s.energy_since_mark(), skipped)
    s.bad_in_row = s.bad_in_row + 1 if skipped else 0
    # the first steps carry compile and warm-up; the average forgets them quickly
    s.ema_step_s = step_s if s.ema_step_s is None else 0.9 * s.ema_step_s + 0.1 * step_s
    ahead = forecast(cfg, st.iteration, s.ema_step_s, st.energy_j, st.elapsed_s, s.card.board_w if s.card else None)
    achieved = flops_per_token(cfg)["total"] * cfg.tokens_per_iter / step_s
    return StepInfo(
        iteration=st.iteration, max_iters=cfg.max_iters, train_loss=train_loss, lr=lr, grad_norm=grad_norm,
        step_s=step_s, tokens_per_s=cfg.tokens_per_iter / step_s, mfu=achieved / s.peak if s.peak else None,
        eta_s=ahead["eta_s"], state=st, predicted_energy_j=ahead["predicted_energy_j"], skipped=skipped,
    )


def log_step(s: Session, i: StepInfo) -> None:
    s.log.write("step", **i.state.summary(), train_loss=i.train_loss, lr=i.lr, grad_norm=i.grad_norm,
                step_ms=round(i.step_s * 1e3, 3), tokens_per_s=round(i.tokens_per_s, 1), mfu=i.mfu,
                eta_s=round(i.eta_s, 1), **({"skipped": True} if i.skipped else {}))
    print(terminal_line(i), flush=True)


def save_checkpoint(s: Session, info: StepInfo) -> str | None:
    """Write a checkpoint of this very moment (its seconds go to info); or, if any of its tensors
    is not finite, write nothing and say so: a checkpoint never holds a NaN."""
    t0 = time.time()
    content = checkpoint.snapshot(s.model, s.optimizer, s.scaler, s.state, s.cfg.to_dict(), s.data.fingerprint,
                                  s.device)
    if bad := checkpoint.nonfinite(content):
        return f"non-finite values in {', '.join(bad[:3])}{' and more' if len(bad) > 3 else ''}"
    path = checkpoint.save(s.run.ckpt, content, s.state, s.cfg.keep_ckpts)
    info.checkpoint_s = time.time() - t0
    s.rollbacks_in_row = 0  # a newer good checkpoint: progress since the last roll-back
    s.log.write("checkpoint", iteration=s.state.iteration, path=str(path), seconds=round(info.checkpoint_s, 3))
    return None


def finish(s: Session) -> None:
    st = s.state
    if st.val_loss is None or not math.isfinite(st.val_loss):  # the guard rolls back first; never DONE on it
        raise Failure(f"run '{s.cfg.run_name}' reached max_iters with val loss {st.val_loss}; DONE not written")
    s.run.write_done(st)
    s.log.write("done", **st.summary())
    print(f"done: {st.iteration} iterations, {human_count(st.tokens)} tokens, "
          f"val loss {st.val_loss:.4f}, {human_duration(st.elapsed_s)} of training")


def terminal_line(i: StepInfo) -> str:
    parts = [f"iter {i.iteration:>{len(str(i.max_iters))}}/{i.max_iters} ({100 * i.iteration / i.max_iters:5.1f}%)",
             f"loss {i.train_loss:.4f}"]
    if i.val_loss is not None:
        parts.append(f"val {i.val_loss:.4f}")
    if i.skipped:
        parts.append("update skipped (not finite)")
    parts += [f"lr {i.lr:.2e}", f"{i.tokens_per_s:,.0f} tok/s", f"{i.step_s * 1e3:,.0f} ms/it"]
    if i.mfu is not None:
        parts.append(f"mfu {100 * i.mfu:.1f}%")
    parts.append(f"ETA {human_duration(i.eta_s)}")
    return " | ".join(parts)
