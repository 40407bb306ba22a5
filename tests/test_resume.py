"""Exact resume: whatever kills a run, the next start continues as if nothing had happened."""

from __future__ import annotations

import os
import random
import shutil
import signal
import time
from pathlib import Path

import pytest
from harness import (
    ROOT,
    assert_states_equal,
    final_state,
    kill_9_after_checkpoint,
    read_log,
    run_job,
    start_job,
    train_small_reference,
    wait_for,
)

from job.data.dataset import open_dataset
from job.data.loader import TrainLoader
from job.state import LoaderState

RUN = "r"


pytestmark = pytest.mark.e2e


def losses_by_iter(run_dir: Path) -> dict[int, list[float]]:
    out: dict[int, list[float]] = {}
    for rec in read_log(run_dir):
        if rec["event"] == "step":
            out.setdefault(rec["iteration"], []).append(rec["train_loss"])
    return out


@pytest.fixture(scope="module")
def reference(shakespeare: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same config trained once without interruption (read-only: copy it to change it)."""
    return train_small_reference(shakespeare, tmp_path_factory.mktemp("ref"), RUN)


def copy_of(reference: Path, small_env: dict[str, str]) -> Path:
    target = Path(small_env["JOB_OUT_DIR"]) / RUN
    shutil.copytree(reference, target)
    return target


def assert_same_run(run_dir: Path, ref_dir: Path) -> None:
    assert (run_dir / "DONE").is_file()
    assert_states_equal(final_state(run_dir), final_state(ref_dir))
    ref = {i: v[0] for i, v in losses_by_iter(ref_dir).items()}
    got = losses_by_iter(run_dir)
    assert got.keys() == ref.keys() == set(range(1, 31))
    for it, values in got.items():  # a replayed step must give the same loss, to the bit
        assert all(v == ref[it] for v in values), f"iteration {it}: {values} != {ref[it]}"


def kill_during_checkpoint(proc, ckpt_dir: Path, deadline: float) -> bool:
    """Poll for a checkpoint being written (a temp file, or a .pt not yet sealed) and SIGKILL
    the process right then. Returns whether the kill landed mid-write."""
    while time.time() < deadline and proc.poll() is None:
        if ckpt_dir.is_dir():
            names = os.listdir(ckpt_dir)
            writing = any(".tmp" in n for n in names) or any(
                n.endswith(".pt") and n[:-3] + ".json" not in names for n in names)
            if writing:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                after = os.listdir(ckpt_dir)
                return any(".tmp" in n for n in after) or any(
                    n.endswith(".pt") and n[:-3] + ".json" not in after for n in after)
        time.sleep(0.0005)
    return False


def test_sigkill_at_random_points_resumes_bitwise(small_env, reference, tmp_path):
    rng = random.Random(7)
    run_dir = Path(small_env["JOB_OUT_DIR"]) / RUN
    ckpt_dir = run_dir / "ckpt"
    kills, mid_write = 0, 0
    for attempt in range(40):
        proc = start_job(["train", "--run", RUN], cwd=ROOT, env=small_env)
        if attempt % 2 == 0 and mid_write == 0:
            mid_write += kill_during_checkpoint(proc, ckpt_dir, time.time() + 60)
        else:
            time.sleep(rng.uniform(2.5, 6.0))  # the interpreter and torch take ~2 s to start
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait()
        proc.communicate()
        if (run_dir / "DONE").is_file():
            break
        if kills >= 4 and mid_write:
            break
    assert mid_write >= 1, "no kill landed while a checkpoint was being written"
    assert kills >= 3
    # restart with the same command until it is done
    for _ in range(5):
        res = run_job(["train", "--run", RUN], cwd=ROOT, env=small_env)
        assert res.returncode == 0, res.stderr
        if (run_dir / "DONE").is_file():
            break
    assert_same_run(run_dir, reference)
    assert not [n for n in os.listdir(ckpt_dir) if ".tmp" in n], "temporary files left behind"


def test_sigterm_exits_75_with_checkpoint_then_resumes_bitwise(small_env, reference):
    run_dir = Path(small_env["JOB_OUT_DIR"]) / RUN
    proc = start_job(["train", "--run", RUN], cwd=ROOT, env=small_env)
    deadline = time.time() + 120
    while time.time() < deadline:  # wait for a few real steps
        if (run_dir / "log.jsonl").is_file() and any(r["event"] == "step" and r["iteration"] >= 5
                                                     for r in read_log(run_dir)):
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 75, err
    stop = [r for r in read_log(run_dir) if r["event"] == "stop"][-1]
    last_step = [r for r in read_log(run_dir) if r["event"] == "step"][-1]
    assert stop["iteration"] == last_step["iteration"]
    assert (run_dir / "ckpt" / f"ckpt_{stop['iteration']:08d}.pt").is_file(), "no checkpoint at the stopping step"
    assert (run_dir / "ckpt" / f"ckpt_{stop['iteration']:08d}.json").is_file()
    res = run_job(["train", "--run", RUN], cwd=ROOT, env=small_env)
    assert res.returncode == 0, res.stderr
    assert f"at iteration {stop['iteration']}" in res.stdout
    assert_same_run(run_dir, reference)


def test_truncated_newest_checkpoint_falls_back_to_previous(small_env, reference):
    run_dir = Path(small_env["JOB_OUT_DIR"]) / RUN
    assert run_job(["train", "--run", RUN], cwd=ROOT, env=small_env).returncode == 0
    # as if the machine died after the last checkpoint but before DONE, and the disk lost
    # the checkpoint's tail
    (run_dir / "DONE").unlink()
    ckpts = sorted((run_dir / "ckpt").glob("ckpt_*.pt"))
    newest, previous = ckpts[-1], ckpts[-2]
    with open(newest, "r+b") as f:
        f.truncate(newest.stat().st_size // 2)
    res = run_job(["train", "--run", RUN], cwd=ROOT, env=small_env)
    assert res.returncode == 0, res.stderr
    assert newest.name in res.stderr and "falling back" in res.stderr
    assert f"resuming from {previous.name}" in res.stdout
    assert_same_run(run_dir, reference)


def test_finished_run_exits_0_and_writes_nothing(small_env, reference):
    run_dir = copy_of(reference, small_env)
    before = {p: p.stat().st_mtime_ns for p in run_dir.rglob("*")}
    res = run_job(["train", "--run", RUN], cwd=ROOT, env=small_env)
    assert res.returncode == 0
    assert "already done" in res.stdout
    assert {p: p.stat().st_mtime_ns for p in run_dir.rglob("*")} == before


def test_resume_with_other_shape_is_refused_and_fresh_starts_over(small_env, reference):
    run_dir = copy_of(reference, small_env)
    env = small_env
    (run_dir / "DONE").unlink()  # as if it had stopped early
    res = run_job(["train", "--run", RUN, "--n-embd", "64"], cwd=ROOT, env=env)
    assert res.returncode == 2
    assert "n_embd 32 -> 64" in res.stderr and "--fresh" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    res = run_job(["train", "--run", RUN, "--n-embd", "64", "--max-iters", "2", "--fresh"], cwd=ROOT, env=env)
    assert res.returncode == 0, res.stderr
    archived = list(run_dir.parent.glob(f"{RUN}.old-*"))
    assert len(archived) == 1 and (archived[0] / "ckpt").is_dir(), "the old run must be kept"
    assert "starting" in res.stdout
    assert final_state(run_dir)["config"]["n_embd"] == 64


def test_a_second_train_on_the_same_run_exits_2_and_touches_nothing(small_env, reference):
    run_dir = Path(small_env["JOB_OUT_DIR"]) / RUN
    lock = run_dir / "lock"
    first = start_job(["train", "--run", RUN], cwd=ROOT, env=small_env)
    wait_for(lambda: lock.is_file() and lock.read_text().strip() == str(first.pid))
    time.sleep(1.0)  # started a second apart, as cron and a hand start would
    second = run_job(["train", "--run", RUN], cwd=ROOT, env=small_env)
    still_running = first.poll() is None
    out, err = first.communicate(timeout=300)
    assert first.returncode == 0, err
    assert second.returncode == 2, second.stderr
    assert second.stderr.strip().splitlines() == [
        f"error: run '{RUN}' is in use by another `job train` (pid {first.pid}, lock {lock}); "
        f"wait for it to end, stop it (kill -TERM {first.pid}), or use another --run"]
    assert still_running, "the second start must not wait for the first"
    starts = [r for r in read_log(run_dir) if r["event"] in ("start", "resume")]
    assert len(starts) == 1, "the second start wrote to the log"
    assert_same_run(run_dir, reference)  # the first finished as if it had been alone


def test_after_kill_9_of_the_holder_the_next_start_takes_the_lock_and_resumes(small_env, reference):
    run_dir = Path(small_env["JOB_OUT_DIR"]) / RUN
    holder = kill_9_after_checkpoint(run_dir, small_env, 6)
    assert (run_dir / "lock").read_text().strip() == str(holder)  # the file stays; the lock does not
    res = run_job(["train", "--run", RUN], cwd=ROOT, env=small_env)
    assert res.returncode == 0, res.stderr
    assert "resuming from" in res.stdout
    assert_same_run(run_dir, reference)


def test_a_batch_larger_than_the_train_split_exits_2_with_one_line(small_env):
    res = run_job(["train", "--run", RUN, "--batch-size", "100000"], cwd=ROOT, env=small_env)
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: batch_size: 100000 is larger than the train split")
    assert not (Path(small_env["JOB_OUT_DIR"]) / RUN / "config.json").exists(), "refused after writing"


def test_a_resume_cut_into_other_micro_batches_trains_each_iteration_on_the_same_windows(small_env):
    """What a resume on another card does under auto_batch, with the cuts set by hand on this CPU:
    stopped at micro-batch 4 x accum 4, resumed at 8 x 2; every iteration trains on the windows an
    uninterrupted 4 x 4 run trains on (the loader's positions agree, and the windows after them)."""
    env = {**small_env, "JOB_BATCH_SIZE": "4", "JOB_GRAD_ACCUM": "4", "JOB_MAX_ITERS": "12"}
    out = Path(small_env["JOB_OUT_DIR"])
    assert run_job(["train", "--run", "ref"], cwd=ROOT, env=env).returncode == 0
    assert run_job(["train", "--run", "cut", "--max-iters", "5"], cwd=ROOT, env=env).returncode == 0
    res = run_job(["train", "--run", "cut", "--batch-size", "8", "--grad-accum", "2"], cwd=ROOT, env=env)
    assert res.returncode == 0 and "(8 x 32 x 2)" in res.stdout, res.stdout + res.stderr
    positions = {name: {r["iteration"]: r["loader"] for r in read_log(out / name) if r["event"] == "step"}
                 for name in ("ref", "cut")}
    assert positions["cut"] == positions["ref"] and len(positions["ref"]) == 12
    data = Path(small_env["JOB_DATA"])
    files = open_dataset(str(data), data, 32, 50304).files("train")

    def windows(b: int, accum: int) -> dict[int, list[int]]:
        """The windows each iteration after a logged position takes, cut into b x accum."""
        loader = TrainLoader(files, 32, b, seed=1337, per_iteration=accum)
        return {i: sorted(w for batch in loader.peek(accum, LoaderState(**pos), accum) for w in batch.tolist())
                for i, pos in positions["ref"].items()}

    assert windows(4, 4) == windows(8, 2)
