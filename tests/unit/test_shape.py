"""Fast tier: the shape the code keeps — dependencies that point down, functions that fit a screen,
and each test helper defined once."""

from __future__ import annotations

import ast
import subprocess
import sys
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import ROOT

MAX_LINES = 60


# One interpreter per kind answers every module: it forks a child per module, which imports it and
# prints sys.modules. "bare" has imported nothing; "torch" has imported torch first, which takes the
# one slow import out of the children, and hides nothing but torch's own modules (torch imports no
# job module), so it serves the modules that may load torch.
IMPORTER = """
import os, sys
if sys.argv[1] == "torch":
    import torch
while module := sys.stdin.readline().strip():
    pid = os.fork()
    if pid == 0:
        try:
            __import__(module)
            print(" ".join(sorted(sys.modules)), flush=True)
        except BaseException as e:
            print("!", repr(e), flush=True)
        os._exit(0)
    os.waitpid(pid, 0)
"""


@pytest.fixture(scope="module")
def importers() -> Iterator[dict[bool, subprocess.Popen]]:
    procs = {with_torch: subprocess.Popen([sys.executable, "-c", IMPORTER, "torch" if with_torch else "bare"],
                                          cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
             for with_torch in (False, True)}
    yield procs
    for proc in procs.values():
        proc.stdin.close()
        proc.wait(timeout=60)


def modules_loaded_by(module: str, importers: dict[bool, subprocess.Popen], with_torch: bool) -> set[str]:
    """Every module importing `module` pulls in, in a fresh interpreter (one that has imported
    torch already, if `with_torch`)."""
    proc = importers[with_torch]
    proc.stdin.write(module + "\n")
    proc.stdin.flush()
    line = proc.stdout.readline()
    assert line and not line.startswith("!"), f"importing {module}: {line or 'no answer'}"
    return set(line.split())


@pytest.mark.parametrize("module, must_not_load", [
    ("job.metrics", {"job.train"}),
    ("job.status", {"job.train", "torch"}),  # status reads files only, and starts in a blink
    ("job.train", {"job.plan", "job.data.prepare", "job.metrics"}),
    ("job.checkpoint", {"torch", "job.train"}),  # seals are read without torch
    ("job.report", {"job.train", "torch"}),  # drawn from the run's files, while it trains
    ("job.evaluate", {"job.train"}),  # the loop's val loss, shared with `job eval`
    *[(m, {"job.train"}) for m in ("job.scores", "job.export", "job.nanogpt", "job.sample", "job.weights")],
])
def test_dependencies_point_down(module: str, must_not_load: set[str], importers):
    loaded = modules_loaded_by(module, importers, with_torch="torch" not in must_not_load)
    assert module in loaded and not loaded & must_not_load


def test_no_function_in_job_is_longer_than_a_screen():
    long = []
    for path in sorted((ROOT / "job").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_LINES:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({lines} lines)")
    assert not long, long


def test_the_training_loop_fits_in_about_40_lines():
    tree = ast.parse((ROOT / "job" / "train.py").read_text())
    loop = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "run_loop")
    assert loop.end_lineno - loop.lineno + 1 <= 45


def test_every_early_ending_reaches_the_command_line_through_one_place():
    from job.config import ConfigError
    from job.data.shards import ShardError
    from job.data.sources import SourceError
    from job.errors import ENDINGS, Failure, Stopped, UserError
    from job.fileio import WriteError
    from job.rundir import RunLocked

    for kind in (ConfigError, ShardError, SourceError, RunLocked):
        assert issubclass(kind, UserError), kind
    assert issubclass(WriteError, Failure) and set(ENDINGS) == {UserError, Failure, Stopped}
    cli = Path(ROOT / "job" / "cli.py").read_text()
    assert cli.count("except ENDINGS") == 1


# Names that several files under tests/ and scripts/ define on purpose, each for its own file:
ONE_PER_FILE = {"main"}  # each script's entry point


def is_fixture(node: ast.FunctionDef) -> bool:
    return any("fixture" in ast.unparse(d) for d in node.decorator_list)


def test_no_helper_is_defined_in_two_files():
    """A function or class at the top of a file under tests/ or scripts/ has one definition; the
    others import it (tests/harness.py holds what the tests and scripts share). Tests and fixtures
    do not count: pytest looks them up by name, file by file."""
    where = defaultdict(list)
    for path in sorted([*(ROOT / "tests").rglob("*.py"), *(ROOT / "scripts").rglob("*.py")]):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                if node.name.startswith("test_") or node.name in ONE_PER_FILE or (
                        not isinstance(node, ast.ClassDef) and is_fixture(node)):
                    continue
                where[node.name].append(path.relative_to(ROOT).as_posix())
    assert where["wait_for"] == ["tests/harness.py"]  # the walk found the harness
    twice = {name: files for name, files in where.items() if len(files) > 1}
    assert not twice, f"defined in more than one file: {twice}"
