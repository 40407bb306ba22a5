"""Shared fixtures: the embedded corpus prepared once, and a small run's environment. The helpers
the tests use (run_job, wait_for, read_log, ...) live in tests/harness.py."""

from __future__ import annotations

from pathlib import Path

import pytest
from harness import SMALL, job_env, run_job


@pytest.fixture(scope="session")
def shakespeare(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The embedded corpus, prepared once per session through the real command."""
    out = tmp_path_factory.mktemp("data") / "shakespeare"
    res = run_job(["prepare", "--source", "shakespeare", "--out", str(out)])
    assert res.returncode == 0, res.stderr
    return out


@pytest.fixture
def small_env(shakespeare: Path, tmp_path: Path) -> dict[str, str]:
    return job_env(**SMALL, JOB_DATA=str(shakespeare), JOB_OUT_DIR=str(tmp_path / "runs"))
