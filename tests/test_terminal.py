"""Every command that prints progress or a live line, run where people type it: in a terminal.

Each command here runs for real under a pseudo-terminal (Python's `pty`: its stdin, stdout and
stderr are the terminal, 120 columns wide), so rich draws its bars as it does for a person, and
the test reads back what the terminal showed. Elsewhere in the suite stderr is a pipe and the bars
are off, which is how `make train` once crashed in every real terminal with no test seeing it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from harness import ROOT, SMALL, job_env, run_in_pty

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def shown(output: str) -> str:
    """What the terminal showed, without colours and cursor moves."""
    return ANSI.sub("", output).replace("\r\n", "\n").replace("\r", "\n")


def in_pty(args: list[str], env: dict[str, str], cwd: Path = ROOT, timeout: float = 300) -> str:
    """`python -m job ARGS` in a terminal; it must exit 0. Returns what it showed."""
    rc, out = run_in_pty([sys.executable, "-m", "job", *args], cwd=cwd, env=env, timeout=timeout)
    assert rc == 0, f"job {' '.join(args)} in a terminal exited {rc}:\n{shown(out)[-3000:]}"
    assert "Traceback" not in out, shown(out)[-3000:]
    return shown(out)


def bar_drawn(text: str, description: str, unit: str) -> None:
    """A bar with its description, a count, a rate in `unit`/s and an ETA was drawn."""
    lines = [line for line in text.splitlines() if line.startswith(description)]
    assert lines, f"no '{description}' bar drawn:\n{text[-2000:]}"
    assert any(re.search(rf"\d+/\d+ +(-|[\d.]+[kMBT]?) {unit}/s .*ETA", line) for line in lines), lines[-3:]
    assert any(re.search(rf"[\d.]+[kMBT]? {unit}/s", line) for line in lines), f"no rate measured: {lines[-3:]}"


@pytest.fixture(scope="module")
def trained_run(shakespeare: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A short run trained in a terminal: the environment the other commands read it with."""
    env = job_env(**{**SMALL, "JOB_MAX_ITERS": "6"}, JOB_DATA=str(shakespeare),
                  JOB_OUT_DIR=str(tmp_path_factory.mktemp("pty") / "runs"))
    text = in_pty(["train", "--run", "t"], env)
    assert re.search(r"iter +6/6 \(100\.0%\) \| loss \d", text), text[-2000:]
    assert "done: 6 iterations" in text
    return env


@pytest.mark.e2e
def test_prepare_draws_its_bar(tmp_path: Path):
    text = in_pty(["prepare", "--source", "shakespeare", "--out", str(tmp_path / "d")], job_env())
    bar_drawn(text, "tokenising plays", "plays")
    assert (tmp_path / "d" / "manifest.json").is_file()


@pytest.mark.e2e
def test_prepare_of_local_files_draws_its_detailed_bar(tmp_path: Path):
    src = tmp_path / "text.txt"
    src.write_text("ROMEO: But, soft! what light through yonder window breaks?\n" * 2000)
    text = in_pty(["prepare", "--source", str(src), "--out", str(tmp_path / "d"), "--workers", "1"], job_env())
    lines = [line for line in text.splitlines() if line.startswith("tokenising")]
    assert any(re.search(r"\d+%.*ETA", line) for line in lines), text[-2000:]
    assert (tmp_path / "d" / "manifest.json").is_file()


@pytest.mark.e2e
def test_train_prints_its_lines(trained_run):
    assert json.loads((Path(trained_run["JOB_OUT_DIR"]) / "t" / "DONE").read_text())["iteration"] == 6


@pytest.mark.e2e
def test_eval_draws_its_bar(trained_run):
    text = in_pty(["eval", "t", "--tokens", "20k"], trained_run)  # 156 batches: a bar drawn for a while
    bar_drawn(text, "val", "batches")
    assert re.search(r"^val +loss \d", text, re.M), text[-2000:]


@pytest.mark.e2e
def test_eval_hellaswag_draws_its_bar(trained_run, tmp_path: Path):
    path = tmp_path / "hs.jsonl"
    path.write_text("".join(json.dumps({"ctx": f"ROMEO: {i}", "endings": ["a", "b c", "d", "e f g"], "label": 0})
                            + "\n" for i in range(12)))
    text = in_pty(["eval", "t", "--no-val", "--hellaswag", str(path)], trained_run)
    bar_drawn(text, "hellaswag", "examples")


@pytest.mark.e2e
def test_sample_streams_text(trained_run):
    text = in_pty(["sample", "t", "--prompt", "ROMEO:", "--tokens", "20"], trained_run)
    assert text.lstrip().startswith("ROMEO:") and len(text.strip()) > len("ROMEO:"), text


@pytest.mark.e2e
@pytest.mark.parametrize("command", [["status", "t"], ["report", "t"], ["plan"], ["plan", "--measure"]],
                         ids=["status", "report", "plan", "plan --measure"])
def test_reports_print_in_a_terminal(trained_run, command):
    text = in_pty(command, {**trained_run, "JOB_RUN": "t"})
    first = {"status": "run", "report": "run", "plan": "config"}[command[0]]
    assert re.search(rf"^{first}\b", text.lstrip(), re.M), text[-2000:]


@pytest.mark.e2e
def test_make_train_in_a_terminal(tmp_path: Path):
    """The first command a new user types, in a terminal: prepares the corpus, trains, samples."""
    env = job_env(JOB_DATA_ROOT=str(tmp_path / "data"), JOB_OUT_DIR=str(tmp_path / "runs"))
    env["MAKEFLAGS"] = ""
    args = "--max-iters 4 --eval-interval 2 --eval-iters 1 --log-interval 1 --metrics-port 0"
    rc, out = run_in_pty([shutil.which("make"), "-C", str(ROOT), "train", f"ARGS={args}"], cwd=ROOT, env=env,
                         timeout=600)
    text = shown(out)
    assert rc == 0, text[-3000:]
    bar_drawn(text, "tokenising plays", "plays")
    assert re.search(r"iter 4/4 \(100\.0%\)", text) and "done: 4 iterations" in text, text[-3000:]
    assert (tmp_path / "runs" / "tiny" / "DONE").is_file()
    # the closing sample: text after the training lines, from the run make just trained
    after = text[text.index("done: 4 iterations"):]
    assert "job sample" in after and len(after.splitlines()) > 2, after


def test_the_pty_really_is_a_terminal(tmp_path: Path):
    """The harness itself: the child sees a terminal on all three streams, of the width set; through
    pipes, as in the rest of the suite, it sees none."""
    streams = "import os, sys; print([s.isatty() for s in (sys.stdin, sys.stdout, sys.stderr)])"
    rc, out = run_in_pty([sys.executable, "-c", f"{streams}; print(os.get_terminal_size())"], cwd=tmp_path,
                         env=dict(os.environ))
    assert rc == 0 and "[True, True, True]" in out and "columns=120" in out, out
    res = subprocess.run([sys.executable, "-c", streams], capture_output=True, text=True, stdin=subprocess.DEVNULL)
    assert "[False, False, False]" in res.stdout


@pytest.mark.e2e
def test_a_command_that_fails_in_a_terminal_still_says_one_line(tmp_path: Path):
    rc, out = run_in_pty([sys.executable, "-m", "job", "train", "--n-embd", "30", "--n-head", "4"], cwd=tmp_path,
                         env=job_env(JOB_OUT_DIR=str(tmp_path / "runs")))
    assert rc == 2 and "error: n_embd: 30 is not divisible by n_head=4" in shown(out), shown(out)
    assert "Traceback" not in out and not (tmp_path / "runs").exists()
