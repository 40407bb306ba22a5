"""Experiment trackers: TensorBoard event files under the run's directory, and a W&B run. Off
unless `trackers` names them; fed from the loop's hooks (job/hooks.py), never from inside the
loop, by rank 0 only. The invariants, and why:

- **log.jsonl is the record; a tracker shows it.** What a tracker gets for an iteration is made
  from that iteration's log record (StepInfo.record, the dict the loop wrote) by `step_scalars`,
  the same function that makes it from the file when a tracker is filled in, so the two never
  disagree. Power is the one figure the log lacks: the average draw between two logged steps of
  this process, sent live only.
- **One value per iteration, in order, as job/timeline.py reads the log**: steps redone after a
  resume or a roll-back replace the ones they redo. TensorBoard: a writer opened with
  purge_step=K+1 writes a session-start record, after which TensorBoard's reader hides what was
  logged at K+1 and later before it; a resume from checkpoint K opens one so, and a roll-back
  inside one process (the hooks see the iteration go back) reopens it so. W&B's history is
  append-only: a step it holds is never sent again, so after a roll-back (or steps logged past
  the checkpoint before a crash) those steps keep their first values there. Their loss, lr and
  gradient norm are the same (a resume is bitwise exact); their timings are the first try's.
- **Nothing logged is lost to a crash.** A kill -9 loses what a tracker had not written yet
  (TensorBoard's writer flushes every FLUSH_S seconds, W&B's service every 15 s). So each start
  first fills in, from log.jsonl, the iterations up to the checkpoint it resumes from that the
  tracker lacks, by the tracker's own account: TensorBoard's mark in trackers.json (the newest
  iteration whose events were flushed, written at each checkpoint and at the end), W&B's server
  (the step a resumed run starts at) or, offline, W&B's own files (`wandb_steps`). A tracker
  turned on for a run already under way is filled in the same way, from its first iteration.
- **The same W&B run across restarts**: its id is kept in trackers.json, written (atomically)
  before the run is created; project and entity are W&B's own variables (WANDB_PROJECT, default
  "job"; WANDB_ENTITY), and so is WANDB_MODE=offline.
- **A tracker never stops training.** A package asked for and missing is refused before training
  starts (one line, exit 2). A tracker that fails later (disk, network, its service) says so in
  one line on stderr and is off for the rest of the process; the next start fills in what it
  missed.
"""

from __future__ import annotations

import contextlib
import math
import os
import secrets
import string
import struct
import sys
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from job.config import Config, tracker_names
from job.cost import JOULES_PER_KWH, Prices, cost
from job.errors import ConfigError
from job.fileio import atomic_write_json, read_json
from job.hooks import RunHooks, StartInfo, StepInfo
from job.rundir import RunDir
from job.timeline import timeline

if TYPE_CHECKING:
    from job.dist import World

STATE_FILE = "trackers.json"  # in the run's directory: W&B's run id, TensorBoard's mark
TENSORBOARD_DIR = "tensorboard"
FLUSH_S = 10  # TensorBoard's writer writes its events out at least this often (its default is 120)


def log(message: str) -> None:
    print(f"trackers: {message}", file=sys.stderr, flush=True)


# ---- what a tracker shows ------------------------------------------------------------------------

@dataclass
class Point:
    """What the trackers get for one iteration: scalars by tag, and the text sampled there."""
    iteration: int
    scalars: dict[str, float] = field(default_factory=dict)
    sample: str | None = None


def step_scalars(rec: dict[str, Any], prices: Prices) -> dict[str, float]:
    """A step record of log.jsonl as tags: its numeric fields (a NaN where the log holds null: that
    step's loss or gradient was not finite), GPU-hours, and the energy and the cost where known."""
    num = lambda key: math.nan if rec.get(key) is None else float(rec[key])
    out = {"loss/train": num("train_loss"), "train/lr": num("lr"), "train/grad_norm": num("grad_norm"),
           "perf/tokens_per_s": num("tokens_per_s"), "perf/step_ms": num("step_ms"), "run/tokens": num("tokens"),
           "run/elapsed_s": num("elapsed_s"), "run/gpu_hours": num("gpu_s") / 3600,
           "run/skipped_steps": num("skipped_steps"), "run/rollbacks": num("rollbacks"),
           "run/restarts": num("restarts")}
    if rec.get("mfu") is not None:
        out["perf/mfu"] = float(rec["mfu"])
    energy_j = float(rec.get("energy_j") or 0.0)  # 0 where nothing measures it (no NVML)
    if energy_j > 0:
        out["run/energy_kwh"] = energy_j / JOULES_PER_KWH
    if energy_j > 0 or prices.per_gpu_hour:  # as the metrics serve it: electricity where measured, plus rent
        out["run/cost"] = float(cost(energy_j, float(rec.get("gpu_s") or 0.0), prices)["cost"])
    return out


def filled_in(records: list[dict[str, Any]], after: int, upto: int, prices: Prices) -> list[Point]:
    """The points of iterations after..upto as the log's history holds them (job/timeline.py:
    redone steps replace the ones they redo), oldest first."""
    t = timeline(records)
    points: dict[int, Point] = {}
    for rec in t.steps:
        if after < rec["iteration"] <= upto:
            points[rec["iteration"]] = Point(rec["iteration"], step_scalars(rec, prices))
    for rec in t.evals:
        if after < rec["iteration"] <= upto and math.isfinite(rec["val_loss"]):
            points.setdefault(rec["iteration"], Point(rec["iteration"])).scalars["loss/val"] = rec["val_loss"]
    for rec in records:  # the newest sample of an iteration is the one its history kept
        it = rec.get("iteration")
        if rec.get("event") == "sample" and isinstance(it, int) and after < it <= upto and rec.get("text"):
            points.setdefault(it, Point(it)).sample = rec["text"]
    return [points[it] for it in sorted(points)]


# ---- the trackers --------------------------------------------------------------------------------

class State:
    """trackers.json: what a tracker must find again after a restart, written atomically."""

    def __init__(self, path: Path):
        self.path = path
        found = read_json(path, {})
        self.values: dict[str, Any] = found if isinstance(found, dict) else {}

    def save(self, **values: Any) -> None:
        self.values.update(values)
        atomic_write_json(self.path, self.values)


class Tracker:
    """One tracker: `start` returns the newest iteration it already holds (it is filled in after
    that), `send` takes one iteration, `redo` says the steps from an iteration on are done again."""
    name = ""
    started = False  # start() returned: there is something to close
    off = False  # failed once: left alone for the rest of the process

    def start(self, resumed_at: int) -> int:
        raise NotImplementedError

    def send(self, p: Point) -> None:
        raise NotImplementedError

    def redo(self, iteration: int) -> None:
        pass

    def checkpointed(self, iteration: int) -> None:
        pass

    def close(self, failed: bool) -> None:
        pass

    def abandon(self) -> None:
        """After a failure: let go of what can be let go of, claiming nothing."""

    def where(self) -> str:
        return ""


class TensorBoard(Tracker):
    """Event files in runs/<run>/tensorboard/, one per writer (a start, or a roll-back)."""
    name = "tensorboard"

    def __init__(self, run: RunDir, state: State):
        from tensorboard.summary.writer.event_file_writer import _AsyncWriterThread
        from torch.utils.tensorboard import SummaryWriter

        self.writer_class, self.thread_class = SummaryWriter, _AsyncWriterThread
        self.dir, self.state = run.path / TENSORBOARD_DIR, state
        self.writer: Any = None
        self.opened_second, self.last = -1, 0
        self.hook = threading.excepthook

    def where(self) -> str:
        return str(self.dir)

    def start(self, resumed_at: int) -> int:
        # The writer's thread re-raises a write error where Python prints it with its traceback; the
        # next call on the writer raises it again here, where it is said once (Tracking.guarded).
        threading.excepthook = self.quiet_writer_thread
        have = min(int(self.state.values.get(self.name, 0)), resumed_at)
        self.open(purge_from=have + 1)
        self.last = have
        return have

    def quiet_writer_thread(self, args: Any) -> None:
        if not isinstance(args.thread, self.thread_class):
            self.hook(args)

    def open(self, purge_from: int) -> None:
        """A new writer, hiding what earlier ones logged from `purge_from` on. TensorBoard reads a
        directory's files in name order, and a name starts with the second it was made in: the
        next writer starts in a later second than this one did."""
        if int(time.time()) <= self.opened_second:
            time.sleep(self.opened_second + 1.01 - time.time())
        self.opened_second = int(time.time())
        self.writer = self.writer_class(log_dir=str(self.dir), purge_step=purge_from, flush_secs=FLUSH_S)

    def send(self, p: Point) -> None:
        for tag, value in p.scalars.items():
            self.writer.add_scalar(tag, value, p.iteration)
        if p.sample:
            self.writer.add_text("sample", p.sample, p.iteration)
        self.last = p.iteration

    def redo(self, iteration: int) -> None:
        self.writer.close()
        self.open(purge_from=iteration)

    def checkpointed(self, iteration: int) -> None:
        """Every iteration up to this checkpoint's is sent: out to the file with them, then say so."""
        self.writer.flush()
        self.state.save(**{self.name: iteration})

    def close(self, failed: bool) -> None:
        self.writer.close()
        self.state.save(**{self.name: self.last})
        threading.excepthook = self.hook

    def abandon(self) -> None:
        threading.excepthook = self.hook
        if self.writer is not None:
            self.writer.close()


class WandB(Tracker):
    """A W&B run under the run's directory (runs/<run>/wandb/), one across restarts."""
    name = "wandb"

    def __init__(self, cfg: Config, run: RunDir, state: State):
        import wandb

        self.wandb, self.cfg, self.run_dir, self.state = wandb, cfg, run, state
        self.run: Any = None
        self.sent = 0  # the newest step W&B holds: a step at or before it is not sent again

    def where(self) -> str:
        if self.run is None:
            return ""
        return f"run {self.run.id}" + (f" (offline: {self.run.settings.sync_dir})" if self.run.offline else "")

    def start(self, resumed_at: int) -> int:
        run_id = self.state.values.get("wandb_id")
        if not run_id:  # 8 lowercase letters and digits, as W&B makes its own
            run_id = "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))
            self.state.save(wandb_id=run_id)  # before the run exists: a crash now cannot lose it
        env = os.environ.get
        settings = {} if "WANDB_CONSOLE" in os.environ else {"console": "off"}  # the job's own output stays its own
        self.run = self.wandb.init(project=env("WANDB_PROJECT", "job"), name=env("WANDB_NAME", self.cfg.run_name),
                                   id=run_id, resume="allow", dir=str(self.run_dir.path), config=self.cfg.to_dict(),
                                   settings=self.wandb.Settings(allow_val_change=True, **settings))
        if self.run.offline:  # W&B's own files: what earlier processes' runs wrote before they ended
            mine = Path(self.run.settings.sync_file).resolve()
            files = Path(self.run.settings.sync_dir).parent.glob(f"*-{run_id}/run-{run_id}.wandb")
            self.sent = max([wandb_steps(f) for f in files if f.resolve() != mine], default=0)
        else:  # the server's: the step this resumed run starts at comes after the last it holds
            self.sent = max(0, int(self.run.starting_step) - 1)
        return self.sent

    def send(self, p: Point) -> None:
        if p.iteration <= self.sent:
            return
        data: dict[str, Any] = dict(p.scalars)
        if p.sample:
            data["sample"] = p.sample
        self.run.log(data, step=p.iteration, commit=True)
        self.sent = p.iteration

    def close(self, failed: bool) -> None:
        self.run.finish(exit_code=1 if failed else 0)

    def abandon(self) -> None:
        if self.run is not None:
            self.run.finish(exit_code=1)


def wandb_steps(path: Path) -> int:
    """The newest history step in a .wandb file, W&B's transaction log: a 7-byte header (':W&B',
    magic, version), then 32 KiB blocks of chunks, each with a 7-byte header (CRC-32 of its type
    and data, length, type: 1 whole record, 2 first part, 3 middle, 4 last), every record a
    protobuf `Record`. Read up to the first chunk that is not whole: a kill cuts the file short."""
    from wandb.proto.wandb_internal_pb2 import Record

    data, newest, pos, parts = path.read_bytes(), 0, 7, b""
    if data[:4] != b":W&B":
        return 0
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:  # a block's tail too short for a header is padding
            pos += 32768 - pos % 32768
            continue
        crc, length, kind = struct.unpack_from("<IHB", data, pos)
        chunk = data[pos + 7:pos + 7 + length]
        if kind not in (1, 2, 3, 4) or len(chunk) < length or zlib.crc32(bytes([kind]) + chunk) != crc:
            break
        pos += 7 + length
        parts = chunk if kind in (1, 2) else parts + chunk
        if kind in (1, 4):
            record = Record()
            record.ParseFromString(parts)
            if record.HasField("history"):
                newest = max(newest, record.history.step.num)
    return newest


def opened(names: list[str], cfg: Config, run: RunDir, state: State) -> list[Tracker]:
    """The trackers asked for, their packages imported; else one line (exit 2) naming every one
    missing, or the one that is there but does not import."""
    made: list[Tracker] = []
    missing: list[str] = []
    for name in names:
        try:
            made.append(TensorBoard(run, state) if name == "tensorboard" else WandB(cfg, run, state))
        except ImportError as e:
            if not (isinstance(e, ModuleNotFoundError) and (e.name or "").split(".")[0] == name):
                raise ConfigError(f"trackers: {name} is installed but does not import ({e}); reinstall it: "
                                  f"pip install 'job[{name}]'") from None
            missing.append(name)
    if missing:
        them = " and ".join(missing)
        raise ConfigError(f"trackers: {them} {'is' if len(missing) == 1 else 'are'} not installed; pip install "
                          f"'job[{','.join(missing)}]' (or drop {them} from trackers)")
    return made


# ---- the observer --------------------------------------------------------------------------------

class Tracking:
    """The trackers as one observer of the loop (RunHooks), each guarded: the first error it
    raises is said once and turns it off."""

    def __init__(self, cfg: Config, run: RunDir, trackers: list[Tracker]):
        self.run, self.trackers, self.prices = run, trackers, Prices.of(cfg)
        self.last = 0  # the newest iteration seen
        self.power_mark: tuple[float, float] | None = None  # (time, run energy) at the last logged step

    def guarded(self, t: Tracker, call: Callable[[], Any], default: Any = None) -> Any:
        if t.off:
            return default
        try:
            return call()
        except Exception as e:
            t.off = True
            print(f"warning: trackers: {t.name} failed ({type(e).__name__}: {e}); it is off for the rest of this "
                  f"process, training goes on (the next start fills in what it missed)", file=sys.stderr, flush=True)
            with contextlib.suppress(Exception):
                t.abandon()
            return default

    def on_start(self, info: StartInfo) -> None:
        k = info.state.iteration
        have = {t.name: self.guarded(t, lambda t=t: self.begin(t, k), k) for t in self.trackers}
        started = [f"{t.name}: {t.where()}" for t in self.trackers if not t.off]
        if started:
            log("; ".join(started))
        after = min([have[t.name] for t in self.trackers if not t.off], default=k)
        points = filled_in(self.run.records(), after, k, self.prices) if after < k else []
        for p in points:
            for t in self.trackers:
                if p.iteration > have[t.name]:
                    self.guarded(t, lambda t=t, p=p: t.send(p))
        lacking = [f"{t.name} {have[t.name] + 1}-{k}" for t in self.trackers if not t.off and have[t.name] < k]
        if points and lacking:
            log(f"filled in from {self.run.log_path.name}, iterations {', '.join(lacking)}")
        self.last = k

    @staticmethod
    def begin(t: Tracker, resumed_at: int) -> int:
        have = t.start(resumed_at)
        t.started = True
        return have

    def on_step(self, info: StepInfo) -> None:
        if info.iteration <= self.last:  # back to a checkpoint: the steps from here on are redone
            for t in self.trackers:
                self.guarded(t, lambda t=t: t.redo(info.iteration))
        self.last = info.iteration
        p = self.point(info)
        for t in self.trackers:
            if p.scalars or p.sample:
                self.guarded(t, lambda t=t: t.send(p))
            if info.checkpoint_s is not None:
                self.guarded(t, lambda t=t: t.checkpointed(info.iteration))

    def point(self, info: StepInfo) -> Point:
        """What this step shows: its log record, its val loss and sample, and the average power
        since the last logged step of this process where energy is measured."""
        p = Point(info.iteration, step_scalars(info.record, self.prices) if info.record else {}, info.sample)
        if info.val_loss is not None and math.isfinite(info.val_loss):
            p.scalars["loss/val"] = info.val_loss
        if info.record and info.state.energy_j > 0:
            now, energy = time.monotonic(), info.state.energy_j
            if self.power_mark and now > self.power_mark[0]:
                p.scalars["perf/power_w"] = (energy - self.power_mark[1]) / (now - self.power_mark[0])
            self.power_mark = (now, energy)
        return p

    def close(self, failed: bool) -> None:
        for t in self.trackers:
            if t.started:
                self.guarded(t, lambda t=t: t.close(failed))


@contextlib.contextmanager
def tracking(cfg: Config, world: World | None, run: RunDir) -> Iterator[RunHooks]:
    """RunHooks feeding the trackers `cfg` names, on the run's writer (rank 0) only; no hooks
    elsewhere or when none is named. A tracker's missing package ends here (exit 2)."""
    names = tracker_names(cfg.trackers)
    if not names or (world is not None and not world.writer):
        yield RunHooks()
        return
    tracked = Tracking(cfg, run, opened(names, cfg, run, State(run.path / STATE_FILE)))
    failed = True
    try:
        yield RunHooks(on_start=tracked.on_start, on_step=tracked.on_step)
        failed = False
    finally:
        tracked.close(failed)
