"""Shared fixtures: the embedded corpus prepared once, and a small run's environment; and the
guard that keeps the markers honest. The helpers the tests use (run_job, wait_for, read_log, ...)
live in tests/harness.py; what each file covers and its markers: tests/README.md."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from harness import SMALL, job_env, run_job

# ---- markers ---------------------------------------------------------------------------------------
# e2e: runs real `python -m job` processes (or the scripts and make targets that run them), or uses
# a fixture that does (the prepared corpus); torchrun: starts torchrun; tools: runs prometheus,
# promtool or tini. Registered in pyproject.toml; `make test-fast` runs tests/unit, none of them.
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
    if name in ("prometheus", "promtool", "tini"):
        kinds.add("tools")
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


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    unmarked = [i.nodeid for i in items if set(getattr(i, "fixturenames", ())) & set(_needs_corpus)
                and i.get_closest_marker("e2e") is None]
    if unmarked:
        raise pytest.UsageError(f"these use the prepared corpus (a real `job prepare`) but are not marked e2e: "
                                f"{unmarked}")


# ---- fixtures --------------------------------------------------------------------------------------

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
