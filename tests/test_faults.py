"""What survives what: each fault of the table in docs/operations.md driven through the real command line
(real processes, real signals, a real file-size limit), then the state checked on disk: every
checkpoint loads with weights_only=True and is finite, the newest good one survives, and a plain
restart after the cause is gone resumes and finishes.

The transient-NaN row is the one exception: it runs the real loop in-process, with the model
made to return a non-finite loss for a few chosen steps (nothing else can make a bad batch
on demand)."""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from harness import (
    ROOT,
    NanAt,
    assert_states_equal,
    final_state,
    job_env,
    kill_9_after_checkpoint,
    read_log,
    run_job,
    start_job,
    train_small_reference,
    wait_for,
)

from job import checkpoint
from job.config import resolve
from job.data.shards import write_manifest, write_shard
from job.fileio import sha256_file
from job.hooks import RunHooks
from job.rundir import RunDir
from job.train import run_loop, setup

RUN = "f"


pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def reference(shakespeare: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same config trained once without interruption (read-only: copy it to change it)."""
    return train_small_reference(shakespeare, tmp_path_factory.mktemp("ref"), RUN)


def one_error_line(res: subprocess.CompletedProcess, code: int) -> str:
    """The command ended with `code` and its last stderr line is the one that says why; no traceback."""
    assert res.returncode == code, (res.returncode, res.stdout[-2000:], res.stderr[-2000:])
    assert "Traceback" not in res.stderr, res.stderr
    return res.stderr.strip().splitlines()[-1]


def assert_checkpoints_whole_and_finite(run_dir: Path) -> list[int]:
    """Every checkpoint on disk verifies, loads with weights_only=True and holds no NaN/inf."""
    iterations = []
    for path in checkpoint.list_checkpoints(run_dir / "ckpt"):
        assert checkpoint.verify(path) is None, path
        content = torch.load(path, map_location="cpu", weights_only=True)
        assert checkpoint.nonfinite(content) == [], path
        iterations.append(content["iteration"])
    assert not [p for p in (run_dir / "ckpt").iterdir() if ".tmp" in p.name], "temporary files left"
    return iterations


def with_file_size_limit(limit: int):
    """A child process that cannot write a file past `limit` bytes (RLIMIT_FSIZE: EFBIG, as a full
    disk's ENOSPC, at the write that crosses it)."""
    return lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))


def run_limited(args: list[str], env: dict, limit: int, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "job", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300, preexec_fn=with_file_size_limit(limit))


# ---- NaN -----------------------------------------------------------------------------------------

def test_nan_that_persists_rolls_back_then_ends_with_exit_1_and_no_nan_on_disk(small_env):
    run_dir = Path(small_env["JOB_OUT_DIR"]) / RUN
    assert run_job(["train", "--run", RUN, "--max-iters", "9"], cwd=ROOT, env=small_env).returncode == 0
    # the same run, raised to 30 iterations with a learning rate no model survives
    res = run_job(["train", "--run", RUN, "--lr", "1e30", "--min-lr", "0"], cwd=ROOT, env=small_env)
    line = one_error_line(res, 1)
    assert line.startswith("error: training diverged") and "lower lr (now 1e+30)" in line
    assert res.stderr.count("rolled back to ckpt_00000009.pt") == 3  # rollback_limit
    assert not (run_dir / "DONE").exists()
    assert 9 in assert_checkpoints_whole_and_finite(run_dir), "the newest good checkpoint must survive"
    events = [r["event"] for r in read_log(run_dir)]
    assert events.count("rollback") == 3 and events[-1] == "diverged"
    status = json.loads(run_job(["status", RUN, "--out-dir", str(run_dir.parent), "--json"], cwd=ROOT,
                                env=small_env).stdout)
    assert status["rollbacks"] == 3 and not status["done"]
    # the cause removed, a plain restart resumes from the good checkpoint and finishes
    res = run_job(["train", "--run", RUN], cwd=ROOT, env=small_env)
    assert res.returncode == 0, res.stderr
    assert "resuming from ckpt_00000009.pt" in res.stdout
    assert np.isfinite(json.loads((run_dir / "DONE").read_text())["val_loss"])


@pytest.mark.parametrize("bad_steps, rollbacks", [({14}, 0), ({14, 15, 16, 17, 18}, 1)],
                         ids=["one bad batch: skipped", "five in a row: rolled back"])
def test_transient_nan_is_skipped_or_rolled_back_and_the_run_finishes_finite(small_env, bad_steps, rollbacks,
                                                                              capsys):
    env = {k[4:].lower(): v for k, v in small_env.items() if k.startswith("JOB_")}
    cfg = resolve(env, dotenv=None, environ={})
    session = setup(cfg, RunHooks(), RunDir(cfg.run_dir))
    session.step_model = NanAt(session.model, bad_steps, cfg.grad_accum)
    before = {k: v.clone() for k, v in session.model.state_dict().items()}
    try:
        assert run_loop(session) == 0
    finally:
        session.log.close()
    st = session.state
    assert st.skipped_steps == len(bad_steps) and st.rollbacks == rollbacks
    assert np.isfinite(st.val_loss) and st.iteration == cfg.max_iters
    assert not all(torch.equal(before[k], v) for k, v in session.model.state_dict().items())
    assert assert_checkpoints_whole_and_finite(cfg.run_dir)
    assert RunDir(cfg.run_dir).read_done().iteration == cfg.max_iters
    if rollbacks:
        assert "rolled back to ckpt_00000012.pt (iteration 12)" in capsys.readouterr().err


# ---- bad bytes ----------------------------------------------------------------------------------

def test_token_ids_outside_the_vocabulary_exit_2_naming_the_shard(shakespeare: Path, small_env, tmp_path: Path):
    data = tmp_path / "data"
    shutil.copytree(shakespeare, data)
    manifest = json.loads((data / "manifest.json").read_text())
    shard = data / "train_000000.bin"
    tokens = np.fromfile(shard, dtype=np.uint16, offset=1024).copy()
    tokens[::20] = 60000  # not a GPT-2 id, sealed in the manifest as if it were
    entry = write_shard(shard, tokens)
    manifest["shards"] = [{**s, **entry} if s["file"] == shard.name else s for s in manifest["shards"]]
    write_manifest(data, manifest)
    env = {**small_env, "JOB_DATA": str(data)}
    line = one_error_line(run_job(["train", "--run", RUN], cwd=ROOT, env=env), 2)
    assert line.startswith(f"error: {shard}: token id 60000 is outside the vocabulary")
    line = one_error_line(run_job(["train", "--run", "v", "--verify"], cwd=ROOT, env=env), 2)
    assert str(shard) in line and "outside the vocabulary" in line
    assert not (tmp_path / "runs" / "v" / "config.json").exists(), "--verify refuses before any write"


# ---- full disk and I/O errors -------------------------------------------------------------------

def test_disk_full_during_a_checkpoint_exits_1_keeps_the_earlier_ones_and_resumes_bitwise(small_env, reference):
    run_dir = Path(small_env["JOB_OUT_DIR"]) / RUN
    kill_9_after_checkpoint(run_dir, small_env, 6)
    res = run_limited(["train", "--run", RUN], small_env, limit=2_000_000)  # a checkpoint is ~19 MB
    line = one_error_line(res, 1)
    assert line.startswith(f"error: cannot write {run_dir / 'ckpt'}/ckpt_0000") and "File too large" in line
    assert "GB free there" in line and "Nothing before it was lost" in line
    assert 6 in assert_checkpoints_whole_and_finite(run_dir)
    res = run_job(["train", "--run", RUN], cwd=ROOT, env=small_env)
    assert res.returncode == 0, res.stderr
    assert_states_equal(final_state(run_dir), final_state(reference))


def test_disk_full_for_the_log_keeps_training_and_the_run_finishes(small_env):
    run_dir = Path(small_env["JOB_OUT_DIR"]) / RUN
    run_dir.mkdir(parents=True)
    (run_dir / "log.jsonl").write_bytes(b"x" * 3000 + b"\n")  # the log is already at the limit
    res = run_limited(["train", "--run", RUN, "--ckpt-interval", "1000"], small_env, limit=3001)
    assert res.returncode == 1 and "cannot write" in res.stderr  # only the final checkpoint could not fit
    assert res.stderr.count(f"warning: cannot write {run_dir / 'log.jsonl'}") == 1
    assert "iter 30/30" in res.stdout, "training went on without its log"


def test_disk_full_for_config_json_and_in_prepare_exit_1_naming_the_path(small_env, tmp_path: Path):
    line = one_error_line(run_limited(["train", "--run", RUN], small_env, limit=200), 1)
    run_dir = Path(small_env["JOB_OUT_DIR"]) / RUN
    assert line.startswith(f"error: cannot write {run_dir / 'config.json'}: File too large")
    assert [p.name for p in run_dir.iterdir()] == ["lock"]
    out = tmp_path / "data"
    line = one_error_line(run_limited(["prepare", "--out", str(out)], job_env(), limit=1_000_000), 1)
    assert line.startswith(f"error: cannot write {out / 'train_000000.bin'}: File too large")
    assert not (out / "manifest.json").exists() and not [p for p in out.iterdir() if ".tmp" in p.name]
    assert run_job(["prepare", "--out", str(out)], cwd=ROOT, env=job_env()).returncode == 0


# ---- settings and paths -------------------------------------------------------------------------

BAD_SETTINGS = {
    "toml not utf-8": ([], {}, {"run.toml": b"lr = 1e-3\n# caf\xe9\n"}, "is not UTF-8 text"),
    ".env not utf-8": ([], {}, {".env": b"JOB_LR=3e-3 # caf\xe9\n"}, "is not UTF-8 text"),
    ".env line without =": ([], {}, {".env": b"JOB_LR=3e-3\nHF_TOKEN hf_secret\n"}, ".env:2 is not KEY=VALUE"),
    "seed too large": ([], {"JOB_SEED": "1e30"}, {}, "seed: must be a whole number from 0 to 4294967295"),
    "seed negative": (["--seed", "-1"], {}, {}, "seed: must be a whole number"),
    "lr infinite": ([], {"JOB_LR": "inf"}, {}, "lr: 'inf' is not a finite number"),
    "int flag not a number": (["--max-iters", "lots"], {}, {}, "max_iters: 'lots' is not a valid int"),
}


@pytest.mark.parametrize("case", BAD_SETTINGS)
def test_bad_settings_and_files_exit_2_with_one_line(case: str, small_env, tmp_path: Path):
    flags, env, files, says = BAD_SETTINGS[case]
    for name, raw in files.items():
        (tmp_path / name).write_bytes(raw)
    if "run.toml" in files:
        flags = [*flags, "--config", "run.toml"]
    res = run_job(["train", "--run", RUN, *flags], cwd=tmp_path, env={**small_env, **env}, timeout=120)
    line = one_error_line(res, 2)
    assert says in line and len(res.stderr.strip().splitlines()) == 1
    assert "hf_secret" not in res.stderr, "a malformed line may hold a token: never echo it"
    assert not (Path(small_env["JOB_OUT_DIR"]) / RUN).exists()


@pytest.mark.parametrize("taken", ["runs/f", "runs/f/ckpt"])
def test_a_run_path_taken_by_a_file_exits_2_before_any_work(taken: str, small_env, tmp_path: Path):
    out = Path(small_env["JOB_OUT_DIR"])
    path = out.parent / taken
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("not a directory")
    line = one_error_line(run_job(["train", "--run", RUN], cwd=ROOT, env=small_env), 2)
    assert line == (f"error: run: {path} exists and is not a directory; move it away, or use another --run "
                    f"(or --out-dir)")
    assert path.read_text() == "not a directory"


# ---- signals at any moment ----------------------------------------------------------------------

@pytest.mark.parametrize("after", [0.25, 0.6, 1.2, 2.0])
def test_sigterm_during_start_up_exits_75_with_one_line(after: float, small_env, reference):
    proc = start_job(["train", "--run", RUN], cwd=ROOT, env=small_env)
    time.sleep(after)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 75, err
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith(("stopped: SIGTERM", "SIGTERM"))
    run_dir = Path(small_env["JOB_OUT_DIR"]) / RUN
    if run_dir.is_dir():  # whatever it left is resumable
        assert_checkpoints_whole_and_finite(run_dir) if (run_dir / "ckpt").is_dir() else None
    res = run_job(["train", "--run", RUN], cwd=ROOT, env=small_env)
    assert res.returncode == 0, res.stderr
    assert_states_equal(final_state(run_dir), final_state(reference))


def test_a_second_ctrl_c_during_the_checkpoint_write_waits_for_it(small_env, reference):
    run_dir = Path(small_env["JOB_OUT_DIR"]) / RUN
    ckpt_dir = run_dir / "ckpt"
    proc = start_job(["train", "--run", RUN], cwd=ROOT, env=small_env)
    wait_for(lambda: any(r["event"] == "step" and r["iteration"] >= 4 for r in read_log(run_dir)))
    proc.send_signal(signal.SIGINT)  # finish the step, checkpoint, exit 75 ...
    wait_for(lambda: ckpt_dir.is_dir() and any(".tmp" in n for n in os.listdir(ckpt_dir)) or proc.poll() is not None,
             step=0.0005)
    proc.send_signal(signal.SIGINT)  # ... and a second Ctrl-C, impatient, in the middle of the write
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 75, err
    assert "Traceback" not in err
    stop = [r for r in read_log(run_dir) if r["event"] == "stop"][-1]
    assert stop["iteration"] in assert_checkpoints_whole_and_finite(run_dir)
    assert run_job(["train", "--run", RUN], cwd=ROOT, env=small_env).returncode == 0
    assert_states_equal(final_state(run_dir), final_state(reference))


@pytest.mark.parametrize("after", [0.4, 1.2])
def test_sigterm_during_prepare_exits_75_and_the_rerun_gives_the_same_shards(after: float, shakespeare: Path,
                                                                           tmp_path: Path):
    out = tmp_path / "data"
    proc = start_job(["prepare", "--out", str(out)], env=job_env())
    time.sleep(after)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode in (75, 0), err  # 0: it was faster than the signal
    assert "Traceback" not in err
    assert run_job(["prepare", "--out", str(out)], cwd=ROOT, env=job_env()).returncode == 0
    for name in ("train_000000.bin", "val_000000.bin"):
        assert sha256_file(out / name) == sha256_file(shakespeare / name)


def test_sigterm_during_a_parallel_prepare_exits_75_and_the_rerun_gives_the_same_shards(tmp_path: Path):
    from job.data.shakespeare import documents

    source = tmp_path / "plays.jsonl"
    plays = [text for _, text in documents()]
    source.write_text("".join(json.dumps({"text": t[i:i + 4000]}) + "\n"
                              for t in plays for i in range(0, len(t), 4000)))
    args = ["prepare", "--source", str(source), "--workers", "2", "--shard-tokens", "200k", "--val-tokens", "100k"]
    assert run_job([*args, "--out", str(tmp_path / "whole")], cwd=ROOT, env=job_env()).returncode == 0
    out = tmp_path / "stopped"
    proc = start_job([*args, "--out", str(out)], env=job_env())
    wait_for(lambda: out.is_dir() and any(out.glob("*.bin")) or proc.poll() is not None)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode in (75, 0), err  # 0: it finished before the signal landed
    assert "Traceback" not in err
    assert run_job([*args, "--out", str(out)], cwd=ROOT, env=job_env()).returncode == 0
    whole = sorted(p.name for p in (tmp_path / "whole").glob("*.bin"))
    assert sorted(p.name for p in out.glob("*.bin")) == whole and len(whole) > 3
    for name in whole:
        assert sha256_file(out / name) == sha256_file(tmp_path / "whole" / name)
