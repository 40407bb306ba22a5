"""The experiment trackers (job/trackers.py), read back with their own readers: TensorBoard's
EventAccumulator, and W&B's offline `.wandb` files, read here from the format's description (the
wandb package ships no reader for them). Each must hold log.jsonl's history (job/timeline.py) one
value per logged iteration, in order, across a kill -9 and a roll-back; a missing package is one
line before training; a tracker that fails mid-run is one warning and training goes on."""

from __future__ import annotations

import json
import math
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from harness import ROOT, NanAt, kill_9_after_checkpoint, read_log, run_job, start_job, wait_for_step

from job.config import resolve
from job.rundir import RunDir
from job.timeline import timeline
from job.trackers import tracking
from job.train import run_loop, setup

RUN = "t"
# What the trackers show of a step record, by tag (job/trackers.py, step_scalars)
TAGS = {"loss/train": "train_loss", "train/lr": "lr", "train/grad_norm": "grad_norm",
        "perf/tokens_per_s": "tokens_per_s", "perf/step_ms": "step_ms", "run/tokens": "tokens",
        "run/elapsed_s": "elapsed_s"}
TIMINGS = {"perf/tokens_per_s", "perf/step_ms", "run/elapsed_s"}  # a redone step's are its own

pytestmark = pytest.mark.e2e


@pytest.fixture
def env(small_env, tmp_path: Path) -> dict[str, str]:
    """A small run of 12 iterations (evals and samples at 10 and 12, a checkpoint every 3) with
    both trackers, W&B offline and its own files (config, cache) kept in tmp_path. W&B's service
    writes its file every 0.2 s rather than 15 (its x_transaction_log_flush_interval): a process
    killed after a few seconds leaves most of what it sent there, and the rest is lost with it."""
    wandb = {f"WANDB_{k}_DIR": str(tmp_path / "wandb" / k.lower()) for k in ("CONFIG", "CACHE", "DATA")}
    return {**small_env, **wandb, "JOB_MAX_ITERS": "12", "JOB_TRACKERS": "tensorboard,wandb", "WANDB_MODE": "offline",
            "WANDB__TRANSACTION_LOG_FLUSH_INTERVAL": "0.2"}


def logged_history(run_dir: Path) -> tuple[dict[int, dict], dict[int, float], dict[int, str]]:
    """log.jsonl's history (job/timeline.py): step records and val losses by iteration, and the
    newest sample of each iteration."""
    records = read_log(run_dir)
    t = timeline(records)
    samples = {r["iteration"]: r["text"] for r in records if r["event"] == "sample"}
    return {r["iteration"]: r for r in t.steps}, {r["iteration"]: r["val_loss"] for r in t.evals}, samples


def as_float(value: float | None) -> float:
    return math.nan if value is None else float(value)


# ---- TensorBoard ---------------------------------------------------------------------------------

def tensorboard_history(run_dir: Path) -> tuple[dict[str, list[tuple[int, float]]], list[tuple[int, str]]]:
    """Every scalar tag as (step, value) pairs and the samples, as TensorBoard's own reader serves
    the run's event files (all of them kept, orphaned data purged: its default)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0, "tensors": 0},
                           purge_orphaned_data=True)
    acc.Reload()
    scalars = {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}
    texts = [(e.step, e.tensor_proto.string_val[0].decode()) for e in acc.Tensors("sample/text_summary")]
    return scalars, texts


def assert_tensorboard_holds_the_log(run_dir: Path) -> None:
    steps, evals, samples = logged_history(run_dir)
    scalars, texts = tensorboard_history(run_dir)
    for tag, key in TAGS.items():
        assert [s for s, _ in scalars[tag]] == sorted(steps), f"{tag}: not one value per logged iteration, in order"
        got = np.array([v for _, v in scalars[tag]], dtype=np.float32)
        want = np.array([as_float(steps[s][key]) for s in sorted(steps)], dtype=np.float32)  # TensorBoard's float32
        assert np.array_equal(got, want, equal_nan=True), tag
    assert scalars["loss/val"] == [(s, pytest.approx(v, rel=1e-6)) for s, v in sorted(evals.items())]
    assert texts == sorted(samples.items())


# ---- W&B's offline files -------------------------------------------------------------------------

def wandb_records(path: Path) -> list:
    """The protobuf Records of a .wandb file: a 7-byte header (':W&B', magic 0xBEE1, version 0),
    then 32 KiB blocks of chunks, each with a 7-byte header: CRC-32 (IEEE, of the type byte and the
    data) uint32, length uint16, type uint8 (1 full, 2 first, 3 middle, 4 last); a block's tail too
    short for a header is zeros. A record cut short by a kill ends the file."""
    from wandb.proto.wandb_internal_pb2 import Record

    data = path.read_bytes()
    assert data[:4] == b":W&B" and struct.unpack_from("<HB", data, 4) == (0xBEE1, 0), f"{path}: not a .wandb file"
    records, pos, parts = [], 7, b""
    while pos + 7 <= len(data):
        left = 32768 - pos % 32768
        if left < 7:
            assert data[pos:pos + left] == bytes(left), f"{path}: block tail at {pos} is not padding"
            pos += left
            continue
        crc, length, kind = struct.unpack_from("<IHB", data, pos)
        chunk = data[pos + 7:pos + 7 + length]
        if len(chunk) < length or zlib.crc32(bytes([kind]) + chunk) != crc:
            break
        assert kind in (1, 2, 3, 4) and pos % 32768 + 7 + length <= 32768, f"{path}: bad chunk at {pos}"
        parts = chunk if kind in (1, 2) else parts + chunk
        pos += 7 + length
        if kind in (1, 4):
            records.append(Record.FromString(parts))
    return records


def wandb_history(path: Path) -> list[tuple[int, dict]]:
    """(step, {key: value}) of each history record of a .wandb file, W&B's own keys (_step,
    _runtime, _timestamp) left out."""
    rows = []
    for rec in wandb_records(path):
        if rec.HasField("history"):
            items = {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in rec.history.item}
            assert items["_step"] == rec.history.step.num
            rows.append((rec.history.step.num, {k: v for k, v in items.items() if not k.startswith("_")}))
    return rows


# ---- the tests -----------------------------------------------------------------------------------

def test_kill_9_and_resume_leave_each_tracker_one_value_per_logged_iteration_equal_to_the_log(env):
    run_dir = Path(env["JOB_OUT_DIR"]) / RUN
    kill_9_after_checkpoint(run_dir, env, 6)
    res = run_job(["train", "--run", RUN], env=env)
    assert res.returncode == 0, res.stderr
    assert "resuming from ckpt_00000006.pt" in res.stdout and "Traceback" not in res.stderr
    assert_tensorboard_holds_the_log(run_dir)

    # W&B: one run across the two processes, each with its own offline directory
    run_id = json.loads((run_dir / "trackers.json").read_text())["wandb_id"]
    segments = sorted((run_dir / "wandb").glob("offline-run-*"))
    assert len(segments) == 2 and all(s.name.endswith(f"-{run_id}") for s in segments), segments
    resumed = wandb_records(segments[1] / f"run-{run_id}.wandb")
    assert [r.run.run_id for r in resumed if r.HasField("run")] == [run_id]
    first, second = (wandb_history(s / f"run-{run_id}.wandb") for s in segments)
    # what the killed process's W&B service had not written was lost with it; the resumed one
    # filled in from log.jsonl what W&B lacked up to the checkpoint, and sent nothing twice
    rows = first + second
    steps, evals, samples = logged_history(run_dir)
    assert [s for s, _ in rows] == sorted(steps), "not one W&B step per logged iteration, in order"
    redone = {s for s, _ in second}
    for s, row in rows:
        for tag, key in TAGS.items():
            if tag not in TIMINGS or s in redone or s <= 6:  # W&B keeps a step's first values
                assert as_float(row[tag]) == pytest.approx(as_float(steps[s][key]), rel=1e-12, nan_ok=True), (s, tag)
        assert row.get("loss/val") == evals.get(s) and row.get("sample") == samples.get(s), s


def test_a_roll_back_redoes_tensorboard_s_steps_as_the_log_does(env, capsys):
    """The real loop in-process, made to see five non-finite steps in a row (test_faults.py's
    row): it rolls back to checkpoint 12 and redoes 13 on; TensorBoard's reader shows the redone
    steps only, as log.jsonl's history does."""
    settings = {k[4:].lower(): v for k, v in env.items() if k.startswith("JOB_")}
    cfg = resolve({**settings, "trackers": "tensorboard", "max_iters": "20"}, dotenv=None, environ={})
    run = RunDir(cfg.run_dir)
    with tracking(cfg, None, run) as hooks:
        session = setup(cfg, hooks, run)
        session.step_model = NanAt(session.model, {14, 15, 16, 17, 18}, cfg.grad_accum)
        try:
            assert run_loop(session) == 0
        finally:
            session.log.close()
    assert session.state.rollbacks == 1 and "rolled back to ckpt_00000012.pt" in capsys.readouterr().err
    assert [r["iteration"] for r in read_log(run.path) if r["event"] == "step"].count(14) == 2
    assert_tensorboard_holds_the_log(run.path)


def test_a_missing_package_or_an_unknown_tracker_is_one_line_and_exit_2_before_training(env):
    run_dir = Path(env["JOB_OUT_DIR"]) / RUN
    # Python's own mark of a module that is not there (None in sys.modules): both packages missing
    absent = ("import runpy, sys; sys.modules['wandb'] = sys.modules['tensorboard'] = None; "
              "runpy.run_module('job', run_name='__main__', alter_sys=True)")
    res = subprocess.run([sys.executable, "-c", absent, "train", "--run", RUN], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and res.stderr.strip().splitlines() == [
        "error: trackers: tensorboard and wandb are not installed; pip install 'job[tensorboard,wandb]' "
        "(or drop tensorboard and wandb from trackers)"], res.stderr
    assert not (run_dir / "log.jsonl").exists() and not (run_dir / "ckpt").exists()
    res = run_job(["train", "--run", RUN, "--trackers", "tensorboard,mlflow"], env=env)
    assert res.returncode == 2 and res.stderr.strip().splitlines() == [
        "error: trackers: unknown tracker 'mlflow'; choose from tensorboard, wandb, comma-separated (empty: none)"]


def test_a_tracker_that_fails_mid_run_warns_once_and_training_finishes(env, tmp_path: Path):
    """TensorBoard's directory replaced by a file while the run writes to it (what a clean-up that
    removes it, or a disk that goes away, does): its next write fails."""
    run_dir = Path(env["JOB_OUT_DIR"]) / RUN
    log = tmp_path / "out.log"
    proc = start_job(["train", "--run", RUN], env={**env, "JOB_TRACKERS": "tensorboard"}, log=log)
    wait_for_step(run_dir, 3, proc)
    shutil.rmtree(run_dir / "tensorboard")
    (run_dir / "tensorboard").write_text("not a directory\n")
    assert proc.wait(timeout=300) == 0, log.read_text()[-3000:]
    out = log.read_text()
    warnings = [line for line in out.splitlines() if line.startswith("warning: trackers:")]
    assert len(warnings) == 1 and warnings[0].startswith("warning: trackers: tensorboard failed (NotADirectoryError:")
    assert "training goes on" in warnings[0] and "Traceback" not in out and "done: 12 iterations" in out
