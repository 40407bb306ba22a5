"""A GPU night's paths through the real command line, on the CPU: fp16 with its GradScaler trained,
killed and resumed bitwise; `deterministic` runs; sealed checkpoints none of which loads are refused
without a file touched. (The image's runtime packages for torch.compile: tests/test_ship.py.)"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from harness import ROOT, SMALL, assert_states_equal, final_state, job_env, kill_9_after_checkpoint, read_log, run_job

from job import checkpoint

# fp16 is emulated on a CPU (0.6 s a step here): 6 iterations, killed after 3, resumed through the eval at 4
FP16 = {**SMALL, "JOB_DTYPE": "float16", "JOB_LOSS_CHUNK": "16", "JOB_MAX_ITERS": "6", "JOB_CKPT_INTERVAL": "3",
        "JOB_EVAL_INTERVAL": "4"}


pytestmark = pytest.mark.e2e


def test_fp16_with_the_grad_scaler_trains_and_resumes_bitwise(shakespeare: Path, tmp_path: Path):
    env = job_env(**FP16, JOB_DATA=str(shakespeare), JOB_OUT_DIR=str(tmp_path / "runs"))
    ref = run_job(["train", "--run", "ref"], cwd=ROOT, env=env)
    assert ref.returncode == 0, ref.stderr
    assert "float16, set by dtype" in ref.stdout
    saved = final_state(tmp_path / "runs" / "ref")
    assert saved["scaler"]["scale"] > 0  # the GradScaler ran, and its state is in the checkpoint
    assert all(torch.isfinite(t).all() for t in saved["model"].values())

    kill_9_after_checkpoint(tmp_path / "runs" / "cut", env, 3)
    res = run_job(["train", "--run", "cut"], cwd=ROOT, env=env)
    assert res.returncode == 0 and "resuming from ckpt_00000003.pt" in res.stdout, res.stderr
    assert_states_equal(final_state(tmp_path / "runs" / "cut"), saved)
    assert final_state(tmp_path / "runs" / "cut")["scaler"] == saved["scaler"]


def test_deterministic_runs_are_bitwise_equal(shakespeare: Path, tmp_path: Path):
    env = job_env(**{**SMALL, "JOB_MAX_ITERS": "6"}, JOB_DETERMINISTIC="true", JOB_DATA=str(shakespeare),
                  JOB_OUT_DIR=str(tmp_path / "runs"))
    for run in ("a", "b"):
        assert run_job(["train", "--run", run], cwd=ROOT, env=env).returncode == 0
    assert_states_equal(final_state(tmp_path / "runs" / "a"), final_state(tmp_path / "runs" / "b"))


def test_checkpoints_that_verify_but_none_loads_are_refused_and_kept(shakespeare: Path, tmp_path: Path):
    env = job_env(**{**SMALL, "JOB_MAX_ITERS": "9"}, JOB_DATA=str(shakespeare), JOB_OUT_DIR=str(tmp_path / "runs"))
    assert run_job(["train", "--run", "r", "--max-iters", "9"], cwd=ROOT, env=env).returncode == 0
    ckpt = tmp_path / "runs" / "r" / "ckpt"
    for path in checkpoint.list_checkpoints(ckpt):  # as a torch upgrade could make them: sealed, unloadable
        torch.save({"model": Path("not a tensor")}, path)
        checkpoint.atomic_write_json(checkpoint.seal_path(path), {**checkpoint.read_seal(path),
                                                                  "bytes": path.stat().st_size,
                                                                  "sha256": checkpoint.sha256_file(path)})
    (tmp_path / "runs" / "r" / "DONE").unlink()
    before = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in ckpt.iterdir()}
    log_before = read_log(tmp_path / "runs" / "r")

    res = run_job(["train", "--run", "r", "--max-iters", "20"], cwd=ROOT, env=env)
    assert res.returncode == 1, (res.stdout, res.stderr)
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in res.stderr, res.stderr
    assert re.search(r"newest: ckpt_00000009\.pt, UnpicklingError.*--fresh", lines[0]), lines[0]
    assert {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in ckpt.iterdir()} == before
    assert read_log(tmp_path / "runs" / "r") == log_before and "starting" not in res.stdout
