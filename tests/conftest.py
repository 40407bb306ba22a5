"""Shared fixtures: the embedded corpus prepared once, and a small run's environment; and the
guard that keeps the markers honest. The helpers the tests use (run_job, wait_for, read_log, ...)
live in tests/harness.py; what each file covers and its markers: tests/README.md."""

from __future__ import annotations

import fcntl
import os
import subprocess
from pathlib import Path

import pytest
import torch
from harness import SMALL, job_env, run_job

# What a test computes in-process shares the cores with the other xdist worker and the jobs the
# tests start: one thread, as job_env gives those jobs (two spinning OpenMP threads per process on
# two shared cores made the in-process runs several times slower).
torch.set_num_threads(1)

# ---- markers ---------------------------------------------------------------------------------------
# e2e: runs real `python -m job` processes (or the scripts and make targets that run them), or uses
# a fixture that does (the prepared corpus); torchrun: starts torchrun; tools: runs prometheus,
# promtool, Alertmanager (Debian's prometheus-alertmanager), amtool or tini; network: downloads from
# PyPI (`make test` leaves these out, `make test-network` runs them). Registered in pyproject.toml;
# `make test-fast` runs tests/unit, none of them.
# A test that starts one of these processes directly without its marker fails at that call.
_current: list[pytest.Item] = []
_needs_corpus = ("shakespeare", "small_env")


def _kinds(args) -> set[str]:
    """The markers a command line needs, as far as the command itself shows it."""
    argv = [str(a) for a in args] if isinstance(args, list | tuple) else str(args).split()
    name = Path(argv[0]).name if argv else ""
    kinds = set()
    if name == "job" or any(a == "-m" and b == "job" for a, b in zip(argv, argv[1:], strict=False)):
        kinds.add("e2e")
    if name in ("prometheus", "promtool", "prometheus-alertmanager", "alertmanager", "amtool", "tini"):
        kinds.add("tools")
    if any(Path(a).name == "gpu_wheels.py" for a in argv) and "build" in argv:
        kinds.add("network")  # pip download from PyPI
    nproc = [b for a, b in zip(argv, argv[1:], strict=False) if a == "--nproc"]
    if "torch.distributed.run" in argv or ("train" in argv and nproc and nproc[-1] != "1"):
        kinds.add("torchrun")  # job train --nproc N (N > 1) starts torchrun itself
    return kinds


class _Watched(subprocess.Popen):
    def __init__(self, args, *rest, **kwargs):
        if _current:
            item = _current[-1]
            missing = sorted(k for k in _kinds(args) if item.get_closest_marker(k) is None)
            if missing:
                self._child_created = False  # nothing started: Popen.__del__ has nothing to reap
                pytest.fail(f"{item.nodeid} runs {' '.join(map(str, args))[:200]} but is not marked "
                            f"{', '.join(missing)} (see tests/README.md)", pytrace=False)
        super().__init__(args, *rest, **kwargs)


subprocess.Popen = _Watched  # subprocess.run and every caller look the name up at call time


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None):
    _current.append(item)
    try:
        yield
    finally:
        _current.pop()


# ---- two workers that end together (make test: pytest -n auto; --dist loadfile in pyproject.toml) ----
# Each file runs on one worker, so its module-scoped fixtures (a trained run, a live Prometheus)
# are built once. The workers are handed the longest files first, the short ones last, so that
# both end together. SECONDS: what each slow test took, setup included, on the 2 shared cores
# (pytest --durations; by test function, per parametrised case); an end-to-end test not listed
# counts 0.7 s, any other 0.1 s. Only an order: a stale figure costs balance, never a result.
SECONDS = {
    "test_gpu_check.py::test_gpu_check_quick": 72, "test_recipe.py::test_bench_recipe_quick": 35,
    "test_alertmanager.py::test_a_stalled_trainer": 33,
    "test_data.py::test_train_says_its_epochs": 32, "test_gpu_night.py::test_fp16": 31,
    "test_resume.py::test_sigkill_at_random": 26, "test_scale.py::test_sigterm_to_the_torchrun_agent": 26,
    "test_scale.py::test_sigterm_to_one_worker": 25, "test_scale.py::test_two_processes": 24,
    "test_scale.py::test_the_modern_recipe": 24, "test_faults.py::test_disk_full_during": 22,
    "test_scale.py::test_kill_9_of_one_rank_the_agent": 21, "test_faults.py::test_nan_that_persists": 21,
    "test_ops.py::test_cron_wrapper": 21, "test_resume.py::test_sigterm_exits_75": 20,
    "test_trackers.py::test_kill_9_and_resume": 20,
    "test_gpu_check.py::test_the_set_for_this_python": 19, "test_scale.py::test_the_time_window": 17,
    "test_faults.py::test_sigterm_during_start_up": 16, "test_resume.py::test_after_kill_9": 16,
    "test_ship.py::test_a_trainer_started_on_the_host": 16, "test_use.py::test_nanogpt_checkpoint": 14,
    "test_use.py::test_report_draws": 14, "test_terminal.py::test_eval_draws": 14,
    "test_resume.py::test_truncated_newest": 14, "test_recipe.py::test_kill_9_mid_run": 13,
    "test_faults.py::test_a_second_ctrl_c": 12, "test_core.py::test_checkpoint_loads": 12,
    "test_metrics.py::test_prometheus_scrapes": 11, "test_use.py::test_sample_streams": 11,
    "test_metrics.py::test_every_dashboard_query": 11, "test_scale.py::test_a_checkpoint_resumes": 10,
    "test_use.py::test_import_refuses": 10, "test_terminal.py::test_make_train": 10,
    "test_use.py::test_eval_val_loss": 9, "test_core.py::test_status_and_sample": 9,
    "test_trackers.py::test_a_tracker_that_fails": 9,
    "test_metrics.py::test_restart_serves": 9, "test_ops.py::test_max_runtime": 9,
    "test_recipe.py::test_a_resume_that_changes": 9, "test_resume.py::test_a_second_train": 9,
    "test_gpu_night.py::test_deterministic": 9, "test_scale.py::test_kill_9_of_one_rank_without": 8,
    "test_plan.py::test_training_mfu": 8, "test_use.py::test_new_commands_explain": 8,
    "test_trackers.py::test_a_roll_back": 8,
    "test_ship.py::test_one_run_name": 8, "test_use.py::test_hellaswag_choices": 7,
    "test_resume.py::test_resume_with_other_shape": 7, "test_faults.py::test_disk_full_for": 7,
    "test_ship.py::test_a_preset_in_the_env_file": 7, "test_scale.py::test_grad_accum": 6,
    "test_use.py::test_export_picks": 6, "test_gpu_night.py::test_checkpoints_that_verify": 6,
    "test_scale.py::test_a_failure_on_one_rank": 6, "test_ops.py::test_compose_trainer_stops": 6,
    "test_ops.py::test_entrypoint_and_cmd": 6, "test_terminal.py::test_train_prints": 6,
    "test_use.py::test_export_loads": 5, "test_data.py::test_kill_9_mid_prepare": 5,
    "test_faults.py::test_transient_nan": 5,
}


def _seconds(item: pytest.Item) -> float:
    name = item.nodeid.split("/")[-1]
    return max([s for k, s in SECONDS.items() if name.startswith(k)],
               default=0.7 if item.get_closest_marker("e2e") else 0.1)


def _longest_files_first(items: list[pytest.Item]) -> None:
    total: dict[str, float] = {}
    for item in items:
        total[item.nodeid.split("::")[0]] = total.get(item.nodeid.split("::")[0], 0) + _seconds(item)
    items.sort(key=lambda i: total[i.nodeid.split("::")[0]], reverse=True)  # stable: a file keeps its order


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    unmarked = [i.nodeid for i in items if set(getattr(i, "fixturenames", ())) & set(_needs_corpus)
                and i.get_closest_marker("e2e") is None]
    if unmarked:
        raise pytest.UsageError(f"these use the prepared corpus (a real `job prepare`) but are not marked e2e: "
                                f"{unmarked}")
    if os.environ.get("PYTEST_XDIST_WORKER"):  # the order the workers are handed the files in
        _longest_files_first(items)


# ---- fixtures --------------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def shakespeare(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The embedded corpus, prepared once per test run through the real command (the xdist workers
    share it: the first prepares it under a lock, the others find it prepared). Read-only."""
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # pytest-N/, the workers' popen-gwK/ are under it
    out = root / "corpus" / "shakespeare"
    with open(root / "corpus.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (out / "manifest.json").is_file():
            res = run_job(["prepare", "--source", "shakespeare", "--out", str(out)])
            assert res.returncode == 0, res.stderr
    return out


@pytest.fixture
def small_env(shakespeare: Path, tmp_path: Path) -> dict[str, str]:
    return job_env(**SMALL, JOB_DATA=str(shakespeare), JOB_OUT_DIR=str(tmp_path / "runs"))
