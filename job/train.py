"""The training loop, in nanoGPT's shape: `setup` builds the run, `train_step` is one optimizer
step, and `run_loop` reads on one screen: step -> account -> eval? -> log? -> checkpoint? -> stop?

setup resumes from the newest whole checkpoint, or refuses one it cannot continue faithfully
(job/resume.py: other model shape, seed, recipe or data). The caller (job/launch.py) holds the
run's lock (job/ownership.py); the schedule is job/optim.py's `lr_at`. Exit codes are
the contract with cron and restart policies (job/errors.py): 0 done, 75 stopped on purpose with a
checkpoint, 1 failed, 2 bad settings.

Under torchrun (job/dist.py) the same loop runs on every rank, the same iteration for iteration:
each rank trains on its share of the iteration's micro-batches (the loader's state stays global,
so the data order and a checkpoint do not depend on the number of processes), DDP averages the
gradients once per iteration, and what decides a step (loss, stop, energy) is added up over the
ranks in one all-reduce. Rank 0 alone writes the run's files; every rank restores the checkpoint
rank 0 read. Dropout draws from a stream seeded by (seed, micro-batch of the run), not by process,
so training is the same computation at any number of processes, up to the order of the sums.
"""

from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np
import torch

from job import checkpoint, dist, microbatch, optim
from job.config import Config
from job.data.dataset import Dataset, open_dataset
from job.data.epochs import check_epochs, epochs_warning
from job.data.epochs import shown as epochs_shown
from job.data.loader import TrainLoader, val_batches
from job.device import (
    COMPILE_CACHE,
    Precision,
    compile_cache_counts,
    configure,
    pick_device,
    pick_precision,
    seed_step,
    to_device,
    use_compile_cache,
)
from job.errors import EXIT_DONE, EXIT_STOPPED, Failure
from job.evaluate import evaluate
from job.flops import flops_per_token, forecast
from job.gpus import Card, card_for, peak_flops
from job.hooks import RunHooks, StartInfo, StepInfo
from job.memory import check_fit
from job.model import GPT, build_model
from job.ownership import already_done
from job.resume import resume_point, same_data
from job.rundir import NullLog, RunDir, RunLog
from job.state import LoaderState, TrainState
from job.stopping import StopFlag, deadline, reached
from job.tokenizer import get_encoding
from job.units import human_count, human_duration

STOP_SIGNALS = ("SIGTERM", "SIGINT")  # the stop votes a step adds up, then the time window's


@dataclass
class Step:
    """What one optimizer step did: the same numbers on every rank."""
    loss: float  # mean over the iteration's micro-batches, every rank's
    grad_norm: float  # before clipping
    skipped: bool  # no update: the loss or the gradient was not finite
    joules: float  # GPU energy of the whole job since the previous step
    stop: str | None  # why every rank stops after this step (a signal or the time window on any), or None


@dataclass
class Counters:
    """What the loop keeps from step to step of this start, apart from the run's own counters
    (TrainState, which every checkpoint records) and from what setup built."""
    energy_mark: float | None = None  # the energy meter's reading after the last step
    ema_step_s: float | None = None  # smoothed step time, for the ETA
    bad_in_row: int = 0  # non-finite steps in a row
    rollbacks_in_row: int = 0  # roll-backs since the last good checkpoint was written
    evaluated: bool = False  # whether this start has evaluated yet (the first one compiles, with compile on)
    stop: StopFlag | None = None  # a signal to this process, set while the loop runs
    limit: tuple[float, str] | None = None  # the time window's end, set when the loop starts


@dataclass
class Session:
    """What setup built for the loop: the run, its data, model, optimizer and observers; and the
    loop's own counters (`loop`)."""
    cfg: Config
    run: RunDir
    data: Dataset
    prec: Precision
    model: GPT
    step_model: torch.nn.Module  # the model, in DDP under torchrun, compiled (around DDP) when compile is on
    eval_model: torch.nn.Module  # the model without DDP, compiled when compile is on (its own graph: no_grad, eval)
    optimizer: torch.optim.Optimizer | optim.MuonAdamW
    scaler: torch.amp.GradScaler
    loader: TrainLoader
    val: list[np.ndarray]
    state: TrainState  # its loader position is the loader's own, advanced as batches are drawn
    log: RunLog | NullLog  # NullLog on every rank but 0
    hooks: RunHooks
    card: Card | None  # the table's row for the GPU in use
    peak: float | None  # FLOP/s that MFU divides by
    world: dist.World = dist.SINGLE  # this process's place in the job
    loop: Counters = field(default_factory=Counters)

    @property
    def device(self) -> torch.device:
        return self.prec.device

    def energy_since_mark(self) -> float:
        """Joules used since the last reading (0 where nothing measures energy)."""
        meter, loop = self.hooks.energy_meter, self.loop
        now = meter() if meter else None
        if now is None or loop.energy_mark is None:
            loop.energy_mark = now
            return 0.0
        used, loop.energy_mark = max(0.0, now - loop.energy_mark), now
        return used


def train(cfg: Config, hooks: RunHooks | None = None, verify: bool = False) -> int:
    """Train or resume the run `cfg` names; returns the exit code."""
    run = RunDir(cfg.run_dir)
    if dist.from_rank0(lambda: already_done(run, cfg.max_iters)):
        return EXIT_DONE
    s = setup(cfg, hooks or RunHooks(), run, verify)
    try:
        return run_loop(s)
    finally:
        s.log.close()


def run_loop(s: Session) -> int:
    """Step until max_iters, a signal or the time window (on any rank); returns the exit code."""
    cfg, st = s.cfg, s.state
    s.loop.limit = time_window(s)
    s.energy_since_mark()
    s.model.train()
    with StopFlag(escalate=not s.world.distributed) as s.loop.stop:
        while st.iteration < cfg.max_iters:
            # -------- TRAINING SECTION BEGIN: one optimizer step over grad_accum micro-batches --------
            t0 = time.time()
            lr = optim.lr_at(st.iteration, cfg)
            step = train_step(s, lr)
            step_s = time.time() - t0
            # -------- TRAINING SECTION END --------
            # account: the run's counters, energy, throughput and ETA
            info = account(s, lr, step, step_s)
            it = st.iteration
            # evaluate on the fixed val batches
            if it % cfg.eval_interval == 0 or it == cfg.max_iters:
                info.val_loss = st.val_loss = timed_eval(s)
                info.sample = timed_sample(s)
            # log: a record in log.jsonl and a line on the terminal (every skipped step too)
            if it % cfg.log_interval == 0 or it in (1, cfg.max_iters) or step.skipped:
                log_step(s, info)
            # checkpoint on the interval, at the end and before stopping, unless the guard objects:
            # then back to the newest good checkpoint, past the batches that went bad
            # (none in the middle of non-finite steps: the newest good one must not be rotated away)
            due = it % cfg.ckpt_interval == 0 or it == cfg.max_iters or step.stop
            if not (trouble := guard(s, info)) and due and not s.loop.bad_in_row:
                with s.loop.stop.protected():
                    trouble = save_checkpoint(s, info)
            if trouble:
                rollback(s, trouble)
            if s.hooks.on_step:
                s.hooks.on_step(info)
            # stop early (a signal, the time window): exit 75 and the next start resumes here
            if step.stop and st.iteration < cfg.max_iters:
                s.log.write("stop", iteration=st.iteration, reason=step.stop)
                print(f"stopped at iteration {st.iteration} ({step.stop}); the next start resumes from the "
                      f"newest checkpoint, exit {EXIT_STOPPED}")
                return EXIT_STOPPED
    finish(s)
    return EXIT_DONE


def timed_eval(s: Session) -> float:
    """Val loss on the fixed batches, logged with its seconds: with compile on, the first one
    includes compiling the evaluation graph (said once on the terminal)."""
    t0 = time.time()
    loss = evaluate(s.eval_model, s.val, s.prec)
    seconds = time.time() - t0
    first = not s.loop.evaluated
    s.loop.evaluated = True
    s.log.write("eval", iteration=s.state.iteration, val_loss=loss, seconds=round(seconds, 3),
                **({"compiled": True} if first and s.cfg.compile else {}))
    if first and s.cfg.compile and s.world.writer:
        print(f"first evaluation took {seconds:.1f} s (compiling its graph once; later ones reuse it)", flush=True)
    return loss


def timed_sample(s: Session) -> str | None:
    """sample_tokens of text continuing sample_prompt, from the model as it is now (rank 0; the
    same seed every time, so the samples read as the model's progress, not as luck); printed,
    logged with its seconds, and handed to the observers. No random stream of training is drawn
    from, so a resumed run trains exactly as one never stopped."""
    if not (s.cfg.sample_tokens and s.world.writer) or not math.isfinite(s.state.val_loss or 0.0):
        return None  # a model whose loss is not finite has no probabilities to sample from
    t0 = time.time()
    enc = get_encoding()
    ids = enc.encode(s.cfg.sample_prompt, allowed_special={"<|endoftext|>"}) or [enc.eot_token]
    x = torch.tensor([ids], dtype=torch.long, device=s.device)
    s.model.eval()
    with torch.no_grad(), s.prec.autocast():
        out = s.model.generate(x, s.cfg.sample_tokens, temperature=0.8, top_k=200, n_vocab=enc.n_vocab,
                               generator=torch.Generator(device=s.device).manual_seed(s.cfg.seed))
    s.model.train()
    text = enc.decode(out[0, len(ids):].tolist())
    seconds = time.time() - t0
    s.log.write("sample", iteration=s.state.iteration, prompt=s.cfg.sample_prompt, text=text,
                seconds=round(seconds, 3))
    print(f"sample at iteration {s.state.iteration} ({seconds:.1f} s): {s.cfg.sample_prompt}{text}", flush=True)
    return text


def time_window(s: Session) -> tuple[float, str] | None:
    """When this start must stop (max_runtime, stop_at), said once with the time zone it was read in."""
    limit = deadline(s.cfg.max_runtime, s.cfg.stop_at, time.time())
    if limit:
        at = datetime.fromtimestamp(limit[0]).astimezone().isoformat(timespec="seconds")
        print(f"stopping at {at} ({limit[1]}, local time zone {time.strftime('%Z')})", flush=True)
        s.log.write("window", stop_at=at, reason=limit[1])
    return limit


def train_step(s: Session, lr: float) -> Step:
    """One optimizer step: this rank's share of the grad_accum micro-batches (all of them in one
    process; DDP averages the gradients after the last), clip, step. The update is skipped on every
    rank when the loss or the gradient is not finite. Reading the step's numbers, added up over the
    ranks, is its one host sync: the guard needs them before the update."""
    cfg, w = s.cfg, s.world
    accum = cfg.grad_accum // w.size
    optim.set_lr(s.optimizer, lr, cfg)
    loss_sum = torch.zeros((), device=s.device)
    for j, rows in enumerate(s.loader.share(w.rank, w.size, cfg.grad_accum)):
        x, y = to_device(rows, s.device)
        if cfg.dropout:  # the same masks for this micro-batch at any number of processes
            seed_step(s.device, micro_seed(cfg.seed, s.state.iteration * cfg.grad_accum + w.rank * accum + j))
        with dist.sync_grads(s.step_model, last=j == accum - 1):
            with s.prec.autocast():
                _, loss = s.step_model(x, y)
            loss = loss / accum
            loss_sum += loss.detach()
            s.scaler.scale(loss).backward()
    s.scaler.unscale_(s.optimizer)
    clip = cfg.grad_clip if cfg.grad_clip > 0 else float("inf")
    grad_norm = torch.nn.utils.clip_grad_norm_(s.model.parameters(), clip)  # the same on every rank
    mine = torch.tensor([s.energy_since_mark(), *stop_votes(s)], dtype=torch.float64, device=s.device)
    shared = dist.all_sum(torch.cat([loss_sum.double().reshape(1), mine]))
    loss_total, joules, *votes, norm = torch.cat([shared, grad_norm.double().reshape(1)]).tolist()
    loss_value = loss_total / w.size
    # fp16's GradScaler skips an overflowing gradient itself, and lowers its scale: that is no fault
    skipped = not math.isfinite(loss_value) or (not math.isfinite(norm) and not s.scaler.is_enabled())
    if not skipped:
        s.scaler.step(s.optimizer)
    s.scaler.update()
    s.optimizer.zero_grad(set_to_none=True)
    return Step(loss_value, norm, skipped, joules, stop_reason(s, votes))


def micro_seed(seed: int, micro_batch: int) -> int:
    """The random stream of one micro-batch of the run: mixed from the run's seed and its number."""
    return int(np.random.SeedSequence([seed, micro_batch]).generate_state(1, np.uint64)[0])


def stop_votes(s: Session) -> list[float]:
    """This process's reasons to stop after this step, as counts the ranks add up: a signal it
    received (by kind), the time window it sees ended."""
    why = s.loop.stop.reason if s.loop.stop else None
    return [float(why == kind) for kind in STOP_SIGNALS] + [float(reached(s.loop.limit) is not None)]


def stop_reason(s: Session, votes: list[float]) -> str | None:
    """Why every rank stops, from the votes added up: a signal on any rank, or the time window."""
    window = s.loop.limit[1] if s.loop.limit else "time window"
    return next((why for why, n in zip((*STOP_SIGNALS, window), votes, strict=True) if n), None)


def guard(s: Session, info: StepInfo) -> str | None:
    """Why the model can no longer be trusted, or None."""
    if s.loop.bad_in_row >= s.cfg.bad_step_limit:
        return f"{s.loop.bad_in_row} steps in a row with a non-finite loss or gradient (updates skipped)"
    if s.loop.bad_in_row and info.iteration >= s.cfg.max_iters:
        return f"the last {s.loop.bad_in_row} steps of the run had a non-finite loss or gradient"
    if info.val_loss is not None and not math.isfinite(info.val_loss):
        return f"val loss {info.val_loss}"
    return None


def rollback(s: Session, why: str) -> None:
    """Back to the newest good checkpoint, keeping the loader past the batches that went bad; after
    rollback_limit of these with no good checkpoint between them, end the run (exit 1)."""
    cfg, st = s.cfg, s.state
    it, found = st.iteration, None
    if s.loop.rollbacks_in_row < cfg.rollback_limit:
        found = dist.from_rank0(lambda: checkpoint.load_latest(s.run.ckpt))
    s.log.write("rollback" if found else "diverged", iteration=it, reason=why, rollbacks=s.loop.rollbacks_in_row)
    advice = f"lower lr (now {cfg.lr:g}) or raise warmup_iters, or check the data ({cfg.data})"
    if found is None and s.loop.rollbacks_in_row == 0:
        raise Failure(f"training diverged at iteration {it} ({why}) before any checkpoint to go back to; {advice}")
    if found is None:
        kept = checkpoint.latest_seal(s.run.ckpt)
        raise Failure(f"training diverged: {why} at iteration {it}, and {s.loop.rollbacks_in_row} roll-backs to the "
                      f"newest good checkpoint did not help; {advice}. The checkpoints on disk are whole and finite "
                      f"(newest: {kept['file'] if kept else 'none'})")
    saved, path = found
    st.roll_back_to(checkpoint.restore(saved, s.model, s.optimizer, s.scaler, s.device))
    s.loop.bad_in_row, s.loop.rollbacks_in_row = 0, s.loop.rollbacks_in_row + 1
    if s.world.writer:
        print(f"warning: {why} at iteration {it}; rolled back to {path.name} (iteration {st.iteration}), past the "
              f"batches that went bad ({s.loop.rollbacks_in_row} of {cfg.rollback_limit})", file=sys.stderr, flush=True)


def setup(cfg: Config, hooks: RunHooks, run: RunDir, verify: bool = False) -> Session:
    """Data and batches, device, resume or refuse, model, optimizer, scaler; then say so. Every
    check that can refuse runs before the first write to the run. Under torchrun each rank opens
    its own machine's data, and rank 0 alone reads and writes the run: every rank restores the
    checkpoint it read."""
    world = dist.current()
    data, val, prec = dist.agreed(lambda: open_data(cfg, verify))
    device = prec.device
    cfg, why_batch = planned_micro_batch(cfg, prec, world)
    loader = dist.agreed(lambda: train_loader(data, cfg))
    data_of_rank0 = dist.from_rank0(lambda: data.fingerprint)
    dist.agreed(lambda: same_data(data, data_of_rank0))
    resumed = dist.from_rank0(lambda: resume_point(cfg, run, data.fingerprint))

    if device.type == "cuda" and cfg.memory_check:
        dist.agreed(lambda: check_fit(cfg, prec.dtype.itemsize, torch.cuda.mem_get_info(device)[0],
                                      torch.cuda.get_device_name(device)))
    if cfg.compile:
        use_compile_cache(cfg.out_dir)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.to_dict()).to(device)
    optimizer = optim.build(model, cfg, device.type)
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
        step_model=compiled(dist.wrap(model, device), cfg.compile), eval_model=compiled(model, cfg.compile),
        optimizer=optimizer,
        scaler=scaler, loader=loader, val=val, state=state, log=run.open_log() if world.writer else NullLog(),
        hooks=hooks, card=card, peak=peak_flops(card, cfg.peak_tflops), world=world,
    )
    why_batch = confirmed_micro_batch(s, why_batch)
    announce(s, resumed_from, why_batch)
    return s


def run_tokens(cfg: Config) -> int:
    """The tokens the whole run trains on, from iteration 0 to max_iters."""
    return cfg.tokens_per_iter * cfg.max_iters


def compiled(model: torch.nn.Module, on: bool) -> torch.nn.Module:
    """The step's module compiled around DDP (not inside it), so that compile splits the graph at
    DDP's gradient buckets and each bucket's all-reduce overlaps the rest of the backward."""
    return torch.compile(model) if on else model


def open_data(cfg: Config, verify: bool) -> tuple[Dataset, list[np.ndarray], Precision]:
    """This process's dataset, fixed val batches (of the settings' batch_size, whatever micro-batch
    training takes: the same text on every card), device and precision."""
    data = open_dataset(cfg.data, cfg.data_dir, cfg.block_size, cfg.vocab_size, verify)
    train_loader(data, cfg)  # a batch or an iteration the split cannot hold is said before the epochs
    val = val_batches(data.files("val"), cfg.block_size, cfg.batch_size, cfg.eval_iters, data.n_vocab)
    check_epochs(cfg.run_name, run_tokens(cfg), data.tokens("train"), data.path, cfg.max_epochs)
    device = pick_device(cfg.device)
    configure(device, cfg.deterministic)
    return data, val, pick_precision(device, cfg.dtype)


def train_loader(data: Dataset, cfg: Config, state: LoaderState | None = None) -> TrainLoader:
    """Micro-batches of cfg's batch_size, grad_accum of them an iteration, from `state`."""
    return TrainLoader(data.files("train"), cfg.block_size, cfg.batch_size, cfg.seed, state=state,
                       vocab=data.n_vocab, per_iteration=cfg.grad_accum)


def planned_micro_batch(cfg: Config, prec: Precision, world: dist.World) -> tuple[Config, str]:
    """With auto_batch on a CUDA card: the largest micro-batch job/memory.py fits on it (the
    smallest any rank's card allows); otherwise the settings' own."""
    if not cfg.auto_batch or prec.device.type != "cuda":
        return cfg, ""
    free = torch.cuda.mem_get_info(prec.device)[0]
    chosen, why = microbatch.choose(cfg, prec.dtype.itemsize, free, world.size)
    b = dist.smallest(chosen.batch_size)
    return microbatch.with_micro_batch(cfg, b), why if b == chosen.batch_size else "auto_batch: another rank's card"


def confirmed_micro_batch(s: Session, why: str) -> str:
    """With auto_batch on a CUDA card, one real forward and backward at the planned micro-batch,
    stepping down on running out of memory (every rank then takes the smallest that ran); the
    loader is cut anew, the run's config.json rewritten. Returns why, as the start line says it."""
    if not why:
        return why
    cfg = s.cfg
    tried, failed = microbatch.confirm(cfg, lambda b: try_micro_step(s, b), s.world.size,
                                       torch.cuda.OutOfMemoryError)
    b = dist.smallest(tried.batch_size)
    if failed:
        why += f"; {', '.join(map(str, failed))} ran out of memory when tried"
    if b != tried.batch_size:
        why += "; another rank's card took less"
    if b != cfg.batch_size:
        s.cfg = microbatch.with_micro_batch(cfg, b)
        s.loader = train_loader(s.data, s.cfg, s.loader.state)
    dist.from_rank0(lambda: s.run.write_config({**s.cfg.to_dict(), "micro_batch": why}))
    return why


def try_micro_step(s: Session, b: int) -> None:
    """One forward and backward of b sequences as training runs them (compiled, under autocast),
    that changes nothing: no gradient kept, no random stream moved, no all-reduce."""
    x = torch.zeros((b, s.cfg.block_size), dtype=torch.long, device=s.device)
    with torch.random.fork_rng(devices=[s.device]), dist.sync_grads(s.step_model, last=False):
        with s.prec.autocast():
            _, loss = s.step_model(x, x)
        loss.backward()
    s.model.zero_grad(set_to_none=True)
    del x, loss
    torch.cuda.empty_cache()


def announce(s: Session, resumed_from: Path | None, why_batch: str = "") -> None:
    """Tell the log, the hooks and the terminal what is starting."""
    cfg, st = s.cfg, s.state
    seal = dist.from_rank0(lambda: checkpoint.read_seal(resumed_from) if resumed_from else None)
    info = StartInfo(
        run=cfg.run_name, preset=cfg.preset, params=s.model.num_params(), device=str(s.device),
        dtype=s.prec.name, gpu=s.card.name if s.card else None, peak_flops=s.peak or 0.0,
        flops_per_token=flops_per_token(cfg)["total"], max_iters=cfg.max_iters, state=st,
        checkpoint_saved_at=seal.get("saved_at") if seal else None, world_size=s.world.size,
    )
    fields = {k: v for k, v in vars(info).items() if k not in ("state", "checkpoint_saved_at")}
    s.log.write("resume" if resumed_from else "start", **fields, **st.summary())
    if s.hooks.on_start:
        s.hooks.on_start(info)
    where = f"resuming from {resumed_from.name} at iteration {st.iteration}" if resumed_from else "starting"
    on = f"{s.world.size} processes (DDP, {s.device.type})" if s.world.distributed else str(s.device)
    train_tokens = s.data.tokens("train")
    print(f"run '{cfg.run_name}': {where}; {info.params / 1e6:.2f}M params on {on} ({s.prec.name}, {s.prec.why}), "
          f"{cfg.tokens_per_iter:,} tokens/iter ({cfg.batch_size} x {cfg.block_size} x {cfg.grad_accum}"
          f"{f'; {why_batch}' if why_batch else ''}), {cfg.max_iters:,} iterations, "
          f"{epochs_shown(run_tokens(cfg) / train_tokens)} epochs of {human_count(train_tokens)} training tokens",
          flush=True)
    if (warning := epochs_warning(cfg.run_name, run_tokens(cfg), train_tokens, s.data.path)) and s.world.writer:
        print(warning, file=sys.stderr, flush=True)
    if s.device.type == "cuda" and s.peak is None and s.world.writer:
        print(f"note: no MFU: {torch.cuda.get_device_name(s.device)} is not in the card table (job plan --gpu "
              f"lists it); set peak_tflops (JOB_PEAK_TFLOPS) to its dense bf16 TFLOP/s to see MFU", flush=True)


def account(s: Session, lr: float, step: Step, step_s: float) -> StepInfo:
    """Count one finished step into the run's totals, and say what it achieved (throughput, MFU
    and power are the whole job's: MFU over the peak of all its GPUs)."""
    cfg, st, gpus = s.cfg, s.state, s.world.size
    if s.loop.ema_step_s is None and cfg.compile:
        say_compiled(s, step_s)
    st.account(cfg.tokens_per_iter, step_s, step.joules, step.skipped, gpus)
    s.loop.bad_in_row = s.loop.bad_in_row + 1 if step.skipped else 0
    # the first steps carry compile and warm-up; the average forgets them quickly
    s.loop.ema_step_s = step_s if s.loop.ema_step_s is None else 0.9 * s.loop.ema_step_s + 0.1 * step_s
    board_w = s.card.board_w * gpus if s.card and s.card.board_w else None
    ahead = forecast(cfg, st.iteration, s.loop.ema_step_s, st.energy_j, st.elapsed_s, board_w)
    achieved = flops_per_token(cfg)["total"] * cfg.tokens_per_iter / step_s
    return StepInfo(
        iteration=st.iteration, max_iters=cfg.max_iters, train_loss=step.loss, lr=lr, grad_norm=step.grad_norm,
        step_s=step_s, tokens_per_s=cfg.tokens_per_iter / step_s, mfu=achieved / (s.peak * gpus) if s.peak else None,
        eta_s=ahead["eta_s"], state=st, predicted_energy_j=ahead["predicted_energy_j"], skipped=step.skipped,
        smoothed_step_s=s.loop.ema_step_s, planned_stop_at=s.loop.limit[0] if s.loop.limit else None,
    )


def say_compiled(s: Session, step_s: float) -> None:
    """After this start's first step, with compile on: its seconds, and how much of the compiling
    the cache (job/device.py, use_compile_cache) saved, in the log and once on the terminal."""
    counts = compile_cache_counts()
    s.log.write("compiled", iteration=s.state.iteration + 1, seconds=round(step_s, 3), **counts,
                cache=os.environ.get(COMPILE_CACHE, ""))
    if s.world.writer:
        print(f"first step took {step_s:.1f} s with compiling: {counts['cache_hits']} graphs from the cache in "
              f"{os.environ.get(COMPILE_CACHE, '')}, {counts['compiled']} compiled", flush=True)


def log_step(s: Session, i: StepInfo) -> None:
    """The step's record in log.jsonl, kept on the StepInfo for the observers (job/trackers.py)."""
    # on a card, the allocator's peak so far: what job plan's memory model is held to (a query, no sync)
    peak = {"peak_memory_bytes": torch.cuda.max_memory_allocated(s.device)} if s.device.type == "cuda" else {}
    i.record = dict(**i.state.summary(), loader=dict(vars(i.state.loader)), train_loss=i.train_loss, lr=i.lr,
                    grad_norm=i.grad_norm, step_ms=round(i.step_s * 1e3, 3), tokens_per_s=round(i.tokens_per_s, 1),
                    mfu=i.mfu, eta_s=round(i.eta_s, 1), **peak, **({"skipped": True} if i.skipped else {}))
    s.log.write("step", **i.record)
    print(terminal_line(i), flush=True)


def save_checkpoint(s: Session, info: StepInfo) -> str | None:
    """Write a checkpoint of this very moment (rank 0 does; its seconds go to info); or, if any of
    its tensors is not finite, write nothing and say so: a checkpoint never holds a NaN. Every rank
    learns which: the weights are the same on all of them."""
    trouble, seconds = dist.from_rank0(lambda: write_checkpoint(s))
    if trouble is None:
        info.checkpoint_s = seconds
        s.loop.rollbacks_in_row = 0  # a newer good checkpoint: progress since the last roll-back
    return trouble


def write_checkpoint(s: Session) -> tuple[str | None, float]:
    t0 = time.time()
    content = checkpoint.snapshot(s.model, s.optimizer, s.scaler, s.state, s.cfg.to_dict(), s.data.fingerprint,
                                  s.device)
    if bad := checkpoint.nonfinite(content):
        return f"non-finite values in {', '.join(bad[:3])}{' and more' if len(bad) > 3 else ''}", 0.0
    path = checkpoint.save(s.run.ckpt, content, s.state, s.cfg.keep_ckpts)
    seconds = time.time() - t0
    s.log.write("checkpoint", iteration=s.state.iteration, path=str(path), seconds=round(seconds, 3))
    return None, seconds


def finish(s: Session) -> None:
    st = s.state
    if st.val_loss is None or not math.isfinite(st.val_loss):  # the guard rolls back first; never DONE on it
        raise Failure(f"run '{s.cfg.run_name}' reached max_iters with val loss {st.val_loss}; DONE not written")
    dist.from_rank0(lambda: s.run.write_done(st))
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
