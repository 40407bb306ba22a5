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
    ("job.trackers", {"job.train", "torch", "wandb", "tensorboard"}),  # a tracker's package only when asked for
    ("job.commands.status", {"job.train", "torch"}),  # status reads files only, and starts in a blink
    ("job.train", {"job.commands.plan", "job.data.prepare", "job.metrics"}),
    ("job.checkpoint", {"torch", "job.train"}),  # seals are read without torch
    ("job.commands.report", {"job.train", "torch"}),  # drawn from the run's files, while it trains
    ("job.evaluate", {"job.train"}),  # the loop's val loss, shared with `job eval`
    *[(f"job.commands.{m}", {"job.train"}) for m in ("eval", "export", "import_nanogpt", "sample", "weights")],
])
def test_dependencies_point_down(module: str, must_not_load: set[str], importers):
    loaded = modules_loaded_by(module, importers, with_torch="torch" not in must_not_load)
    assert module in loaded and not loaded & must_not_load


def imports_of(path: Path) -> set[str]:
    """The job modules a file imports, at its top or inside a function (`from job import x` names
    the module job.x where there is one)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("job")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("job") and not node.level:
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}
    return found


def module_graph() -> dict[str, set[str]]:
    """Each module of the package -> the modules of the package it imports."""
    names = {".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"): p
             for p in (ROOT / "job").rglob("*.py")}
    return {name: {m for m in imports_of(path) if m in names and m != name} for name, path in names.items()}


def test_only_the_command_line_imports_the_commands():
    """job/commands/ holds the verbs other than train; the trainer and its components never reach
    into them (torchtitan's arrows: the commands use the components, never the other way)."""
    wrong = {name: sorted(m for m in deps if m.startswith("job.commands"))
             for name, deps in module_graph().items()
             if not name.startswith("job.commands") and name != "job.cli"}
    assert not {k: v for k, v in wrong.items() if v}


def test_no_import_cycle():
    graph, done, path = module_graph(), set(), []

    def visit(name: str) -> None:
        if name in path:
            raise AssertionError(f"import cycle: {' -> '.join(path[path.index(name):] + [name])}")
        if name in done:
            return
        path.append(name)
        for dep in sorted(graph[name]):
            visit(dep)
        path.pop()
        done.add(name)

    for name in sorted(graph):
        visit(name)


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
