"""A fresh machine: `make test` has every program its tests run, or says in one line, before any
test, what to install. Driven through the real make and script, with a PATH that hides the tools."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from harness import ROOT

TOOLS = ("prometheus", "promtool", "prometheus-alertmanager", "amtool", "tini")
NEEDED_HERE = ("make", "bash", "id")  # what make and tests/tools.sh run to get as far as the check


def bare_bin(tmp_path: Path, apt_get: bool) -> Path:
    """A PATH directory with make, bash and id but none of the tools, no sudo, and, if asked, an
    apt-get that only records being called (this machine's packages are never touched)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in NEEDED_HERE:
        (bin_dir / name).symlink_to(shutil.which(name))
    if apt_get:
        fake = bin_dir / "apt-get"
        fake.write_text(f"#!/bin/sh\necho called >> {tmp_path / 'apt-get.called'}\nexit 1\n")
        fake.chmod(0o755)
    return bin_dir


# What `make test` reads before its tools check: the Makefile, the check, and the venv's inputs.
MAKE_TEST_READS = ("Makefile", "tests/tools.sh", "requirements.txt", "requirements-dev.txt",
                   "requirements-trackers.txt", "pyproject.toml")


def readable_copy(tmp_path: Path) -> Path:
    """The files `make test` reads up to the check, copied where an unprivileged user can read them:
    the clone itself may sit in a directory only its owner enters (mode 700, as /root and
    `mktemp -d` are), which such a user cannot."""
    copy = tmp_path / "clone"
    for name in MAKE_TEST_READS:
        (copy / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, copy / name)
    for path in [copy, *copy.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return copy


def make_test(bin_dir: Path, tmp_path: Path, as_user: bool) -> subprocess.CompletedProcess:
    """`make test` with that PATH (as an unprivileged user, if asked, when this runs as root, on a
    copy that user can read), and a venv path that does not exist, so a step past the check would show."""
    env = {"PATH": str(bin_dir), "HOME": str(tmp_path), "LANG": "C.UTF-8"}
    unprivileged = as_user and os.geteuid() == 0
    where = readable_copy(tmp_path) if unprivileged else ROOT
    cmd = [str(bin_dir / "make"), "-C", str(where), "test", f"VENV={tmp_path / 'venv'}"]
    if unprivileged:
        cmd = [shutil.which("setpriv"), "--reuid=65534", "--regid=65534", "--clear-groups", *cmd]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)


@pytest.fixture
def open_dir():
    """A temporary directory an unprivileged user can use too (pytest's own are root's alone)."""
    path = Path(tempfile.mkdtemp(prefix="fresh-"))
    path.chmod(0o777)
    yield path
    shutil.rmtree(path)


@pytest.mark.parametrize("apt_get, as_user", [(False, False), (True, True)],
                         ids=["no apt-get", "apt-get but no root and no sudo"])
def test_make_test_without_the_tools_stops_before_any_test_with_one_line(open_dir: Path, apt_get, as_user):
    tmp_path = open_dir
    res = make_test(bare_bin(tmp_path, apt_get), tmp_path, as_user)
    assert res.returncode != 0
    ours = [line for line in res.stderr.splitlines() if not line.startswith("make")]
    assert ours == ["error: make test needs prometheus, promtool, prometheus-alertmanager, amtool, tini; "
                    "install them: sudo apt-get install -y prometheus prometheus-alertmanager tini"], res.stderr
    assert "pytest" not in res.stdout + res.stderr and not (tmp_path / "venv").exists()
    assert not (tmp_path / "apt-get.called").exists(), "tried apt-get without root or sudo"


@pytest.mark.tools
def test_with_the_tools_present_the_step_does_nothing(tmp_path: Path):
    for tool in TOOLS:
        assert shutil.which(tool), f"{tool} missing, yet make test started: tests/tools.sh let it through"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "apt-get"
    fake.write_text(f"#!/bin/sh\necho called >> {tmp_path / 'apt-get.called'}\nexit 1\n")
    fake.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    res = subprocess.run(["make", "-s", "-C", str(ROOT), "test-tools"], env=env, capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 0 and res.stdout + res.stderr == "", res.stdout + res.stderr
    assert not (tmp_path / "apt-get.called").exists()


def test_ci_installs_nothing_itself():
    lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    commands = [line for line in lines if line and not line.startswith("#")]
    assert [c for c in commands if c.startswith("make")] == ["make lint", "make test", "make test-network"]
    assert not any(re.search(r"\b(apt-get|apt|pip|sudo)\b", c) for c in commands), commands
