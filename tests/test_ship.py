"""Shipping: the image's torch/CUDA pair, the compose stack (validated against the Compose
Specification, and read for UID/GID, mounts, ports and profiles), a trainer on the host scraped by
a real Prometheus configured from the shipped file, one run name for every entry point, the local
time window, the step-time buckets, and `job --version`."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml  # PyYAML: a dependency of huggingface-hub, which the job pins
from harness import ROOT, SMALL, free_port, job_env, prom_query, run_job

COMPOSE = ROOT / "grafana" / "compose.yml"
TRAINER_PORT = 9838  # the documented default; the test below uses it as documented


def interpolated(text: str, env: dict[str, str] | None = None) -> str:
    """The compose file as `docker compose` sees it: ${VAR:-default} replaced, ~ expanded."""
    env = env or {}
    text = re.sub(r"\$\{(\w+)(?::?-([^}]*))?\}", lambda m: env.get(m.group(1)) or m.group(2) or "", text)
    return text.replace("~/", "/home/user/")


def compose() -> dict:
    return yaml.safe_load(interpolated(COMPOSE.read_text()))


# ---- the image ------------------------------------------------------------------------------------

def test_the_images_torch_and_cuda_are_a_published_pair_and_cu128_is_refused():
    script = [sys.executable, str(ROOT / "scripts" / "gpu" / "check_torch_cuda.py")]
    ok = subprocess.run(script, capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stderr
    assert "Dockerfile: torch 2.13.0 cu130" in ok.stdout and "CUDA=cu126: torch 2.13.0 cu126" in ok.stdout
    bad = subprocess.run([*script, "--torch", "2.13.0", "--cuda", "cu128"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1
    assert bad.stderr.strip() == ("error: given: torch 2.13.0 has no cu128 build (published: cu126, cu130, cu132); "
                                  "pick one of those for TORCH_CUDA and a matching CUDA_IMAGE")


def runtime_packages() -> set[str]:
    """What the Dockerfile's last stage (the running container) installs with apt-get."""
    stage = re.split(r"^FROM ", (ROOT / "Dockerfile").read_text(), flags=re.M)[-1].replace("\\\n", " ")
    return {w for line in re.findall(r"apt-get install ([^&]+)", stage) for w in line.split() if w[0] != "-"}


def test_the_image_runs_tini_with_tzdata_and_the_new_metrics_port():
    text = (ROOT / "Dockerfile").read_text()
    assert 'ENTRYPOINT ["/usr/bin/tini", "--", "python", "-m", "job"]' in text
    assert {"python3", "tini", "tzdata"} <= runtime_packages()
    assert f"EXPOSE {TRAINER_PORT}" in text and f"JOB_METRICS_PORT={TRAINER_PORT}" in text


def test_the_image_runtime_has_what_torch_compile_needs():
    # inductor and Triton build C code at run time: a compiler, libc's headers and Python.h
    assert {"gcc", "libc6-dev", "python3-dev"} <= runtime_packages(), runtime_packages()


# ---- compose --------------------------------------------------------------------------------------

def test_compose_file_is_valid_compose_specification():
    from compose_spec import PyCompose  # the spec-compliant parser (compose_spec, Rust), strict on keys and types

    PyCompose.from_yaml(interpolated(COMPOSE.read_text())).to_spec()
    typo = interpolated(COMPOSE.read_text()).replace("stop_grace_period:", "stop_grace_periods:")
    with pytest.raises(Exception, match="stop_grace_periods"):
        PyCompose.from_yaml(typo).to_spec()


def test_compose_monitoring_alone_by_default_and_the_trainer_behind_a_profile():
    services = compose()["services"]
    assert services["trainer"]["profiles"] == ["trainer"]
    assert not {"prometheus", "grafana", "alertmanager"} & {n for n, s in services.items() if "profiles" in s}
    assert re.fullmatch(r"prom/prometheus:v3\.\d+\.\d+", services["prometheus"]["image"])
    assert re.fullmatch(r"grafana/grafana:12\.\d+\.\d+", services["grafana"]["image"])
    for name in ("prometheus", "grafana"):  # on the host's loopback: they reach a trainer wherever it runs
        assert services[name]["network_mode"] == "host" and "ports" not in services[name]
    assert "--web.listen-address=127.0.0.1:9090" in services["prometheus"]["command"]
    assert services["grafana"]["environment"]["GF_SERVER_HTTP_ADDR"] == "127.0.0.1"
    assert "./alerts.yml:/etc/prometheus/alerts.yml:ro" in services["prometheus"]["volumes"]


def test_compose_alertmanager_on_loopback_gets_the_url_from_the_env_file_and_prometheus_sends_to_it():
    """How the URL reaches Alertmanager: the container's environment from ../.env, read by
    alertmanager-config.sh, which writes the config the command reads (tests/test_alertmanager.py
    runs this entrypoint and command, and amtool checks what it writes)."""
    am = compose()["services"]["alertmanager"]
    assert re.fullmatch(r"prom/alertmanager:v0\.\d+\.\d+", am["image"]) and "profiles" not in am
    assert am["network_mode"] == "host" and "ports" not in am
    assert am["env_file"] == [{"path": "../.env", "required": False}]
    assert "./alertmanager.yml:/etc/alertmanager/alertmanager.yml:ro" in am["volumes"]
    assert "./alertmanager-config.sh:/etc/alertmanager/alertmanager-config.sh:ro" in am["volumes"]
    written = "/alertmanager/alertmanager.yml"  # in the image's volume, which its user (nobody) may write
    assert am["entrypoint"] == ["/bin/sh", "/etc/alertmanager/alertmanager-config.sh",
                                "/etc/alertmanager/alertmanager.yml", written]
    assert am["command"][0] == "/bin/alertmanager" and f"--config.file={written}" in am["command"]
    # on loopback only, and no cluster: its gossip port would listen on every interface
    assert "--web.listen-address=127.0.0.1:9093" in am["command"] and "--cluster.listen-address=" in am["command"]
    alerting = yaml.safe_load((ROOT / "grafana" / "prometheus.yml").read_text())["alerting"]
    assert alerting["alertmanagers"] == [{"static_configs": [{"targets": ["127.0.0.1:9093"]}]}]
    ported = yaml.safe_load(interpolated(COMPOSE.read_text(), {"ALERTMANAGER_PORT": "9193"}))
    assert "--web.listen-address=127.0.0.1:9193" in ported["services"]["alertmanager"]["command"]


def test_compose_trainer_builds_as_the_host_user_and_mounts_what_the_image_declares():
    trainer = yaml.safe_load(interpolated(COMPOSE.read_text(), {"HOST_UID": "1234", "HOST_GID": "99"}))[
        "services"]["trainer"]
    assert trainer["build"]["args"] == {"UID": 1234, "GID": 99}
    declared = re.search(r'^VOLUME \[(.*)\]$', (ROOT / "Dockerfile").read_text(), re.M).group(1)
    image_volumes = {v.strip().strip('"') for v in declared.split(",")}
    mounted = {v.split(":")[1] for v in trainer["volumes"]}
    assert image_volumes <= mounted and "/etc/localtime" in mounted
    assert trainer["ports"] == [f"127.0.0.1:{TRAINER_PORT}:{TRAINER_PORT}"]
    assert trainer["environment"]["JOB_METRICS_ADDR"] == "0.0.0.0"
    assert trainer["stop_grace_period"] == "120s" and "restart" not in trainer
    # a few restarts after a failure, and none for the endings remapped to 0 by the image's own tini:
    # bad settings (2) and a stop on purpose (75); tests/test_ops.py runs this entrypoint
    assert trainer["deploy"]["restart_policy"] == {"condition": "on-failure", "max_attempts": 3}
    assert trainer["entrypoint"] == ["/usr/bin/tini", "-e", "2", "-e", "75", "--", "python", "-m", "job"]
    ported = yaml.safe_load(interpolated(COMPOSE.read_text(), {"JOB_METRICS_PORT": "9999", "GRAFANA_PORT": "3300"}))
    assert ported["services"]["trainer"]["ports"] == ["127.0.0.1:9999:9999"]
    assert ported["services"]["grafana"]["environment"]["GF_SERVER_HTTP_PORT"] == 3300


def test_make_monitor_creates_the_directories_and_passes_the_user(tmp_path: Path):
    out = subprocess.run(["make", "-n", "-s", "monitor", "monitor-trainer"], cwd=ROOT, capture_output=True,
                         text=True, timeout=60).stdout
    assert "mkdir -p data runs" in out
    assert "HOST_UID=$(id -u) HOST_GID=$(id -g)" in out and "--profile trainer up -d --build" in out


def test_make_monitor_without_the_compose_plugin_says_what_to_install(tmp_path: Path):
    """A docker client that answers --version but has no compose plugin (it reads `compose -f` as
    its own flags): each monitor target says so in one line, exit 2, before anything runs."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "calls"
    (bin_dir / "docker").write_text(
        f'#!/bin/sh\necho "$*" >> {calls}\n'
        'case "$1" in --version) echo "Docker version 27.3.1, build ce12230"; exit 0 ;; esac\n'
        'echo "unknown shorthand flag: \'f\' in -f" >&2\nexit 125\n')
    (bin_dir / "docker").chmod(0o755)
    env = {**job_env(), "PATH": f"{bin_dir}:{os.environ['PATH']}", "HF_CACHE": str(tmp_path / "hf")}
    assert subprocess.run(["docker", "--version"], env=env, capture_output=True).returncode == 0
    for target in ("monitor", "monitor-trainer", "monitor-down"):
        res = subprocess.run(["make", "-s", target], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
        assert res.returncode == 2, res.stdout + res.stderr
        ours = [line for line in res.stderr.splitlines() if not line.startswith("make")]
        assert ours == ["error: docker has no compose plugin ('docker compose version' fails); install it: sudo "
                        "apt-get install docker-compose-plugin (from Docker's apt repository; "
                        "docs.docker.com/compose/install/linux)"], res.stderr
        assert "unknown shorthand flag" not in res.stderr
    assert calls.read_text().splitlines() == ["--version", *["compose version"] * 3]  # nothing else ran
    assert not (tmp_path / "hf").exists()


# ---- a trainer on the host, the shipped Prometheus config -----------------------------------------

@pytest.mark.e2e
@pytest.mark.tools
def test_a_trainer_started_on_the_host_is_scraped_by_the_shipped_prometheus_config(shakespeare: Path,
                                                                                  tmp_path: Path):
    with socket.socket() as s:
        if s.connect_ex(("127.0.0.1", TRAINER_PORT)) == 0:
            pytest.fail(f"port {TRAINER_PORT} is taken on this machine; the test runs the documented default")
    conf = tmp_path / "prometheus"
    conf.mkdir()
    for name in ("prometheus.yml", "alerts.yml"):  # exactly as shipped; rule_files is relative to it
        (conf / name).write_text((ROOT / "grafana" / name).read_text())
    port = free_port()
    prom = subprocess.Popen(["prometheus", f"--config.file={conf / 'prometheus.yml'}",
                             f"--storage.tsdb.path={tmp_path / 'tsdb'}", f"--web.listen-address=127.0.0.1:{port}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    settings = {**SMALL, "JOB_DATA": str(shakespeare), "JOB_OUT_DIR": str(tmp_path / "runs"),
                "JOB_MAX_ITERS": "100000", "JOB_CKPT_INTERVAL": "1000"}
    settings.pop("JOB_METRICS_PORT")  # the documented default, as a user would run it
    # start_job would turn metrics off; here they are the defaults, so the process is started as a user would
    trainer = subprocess.Popen([sys.executable, "-m", "job", "train", "--run", "host"], cwd=tmp_path,
                               env=job_env(**settings), text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline, seen = time.time() + 120, []
        while time.time() < deadline and not seen:
            time.sleep(1)
            assert trainer.poll() is None, trainer.communicate()[1]
            try:
                seen = prom_query(port, 'trainer_iteration{job="trainer"} > 0')
            except OSError:
                continue  # Prometheus still starting
        assert seen and seen[0]["metric"]["instance"] == f"127.0.0.1:{TRAINER_PORT}"
        assert prom_query(port, 'up{job="trainer"}')[0]["value"][1] == "1"
        # a CPU has no peak FLOP/s and this run no time window: absent, not 0; the price is the default's
        assert prom_query(port, "trainer_mfu_ratio") == prom_query(port, "trainer_planned_stop_timestamp_seconds") == []
        assert prom_query(port, 'trainer_energy_price_per_joule{currency="USD"} * 3.6e6')[0]["value"][1] == "0.17"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/rules", timeout=5) as r:
            rules = [r["name"] for g in json.loads(r.read())["data"]["groups"] for r in g["rules"]]
        assert len(rules) == 6 and "TrainerStalled" in rules
        # the image's HEALTHCHECK against this real trainer, on the documented default port: it is stepping
        health = subprocess.run([sys.executable, str(ROOT / "scripts" / "ops" / "healthcheck.py")], env=job_env(),
                                capture_output=True, text=True, timeout=60)
        assert health.returncode == 0, health.stderr
        assert prom_query(port, "trainer_stall_limit_seconds >= 300")  # the floor, for steps this short
    finally:
        trainer.send_signal(signal.SIGTERM)
        trainer.communicate(timeout=120)
        prom.terminate()
        prom.wait(timeout=30)


# ---- one run name everywhere ----------------------------------------------------------------------

# (env file, environment, flag) -> the run every entry point must land on
MATRIX = [
    ({"JOB_RUN": "from-file"}, {}, None, "from-file"),
    ({"JOB_RUN": "from-file"}, {"JOB_RUN": "from-env"}, None, "from-env"),
    ({"JOB_RUN": "from-file"}, {"JOB_RUN": "from-env"}, "from-flag", "from-flag"),
]


def matrix_env(shakespeare: Path, tmp_path: Path, in_file: dict, environ: dict) -> dict[str, str]:
    env_file = tmp_path / "settings.env"
    env_file.write_text("".join(f"{k}={v}\n" for k, v in {**in_file, "JOB_OUT_DIR": str(tmp_path / "runs")}.items()))
    small = {k: v for k, v in SMALL.items() if k != "JOB_MAX_ITERS"}
    return job_env(**small, JOB_MAX_ITERS="2", JOB_DATA=str(shakespeare), JOB_ENV_FILE=str(env_file),
                   JOB_WORKDIR=str(tmp_path), JOB_PYTHON=sys.executable, **environ)


@pytest.mark.e2e
@pytest.mark.parametrize("in_file, environ, flag, expected", MATRIX, ids=[m[3] for m in MATRIX])
def test_one_run_name_for_make_cron_train_status_and_sample(in_file, environ, flag, expected, shakespeare: Path,
                                                           tmp_path: Path):
    env = matrix_env(shakespeare, tmp_path, in_file, environ)
    run_args = ["--run", flag] if flag else []
    if flag:  # cron passes no flags: the flag row is the commands' own
        assert run_job(["train", *run_args], cwd=tmp_path, env=env).returncode == 0
    else:
        cron = subprocess.run(["bash", str(ROOT / "scripts" / "ops" / "cron-train.sh")], env=env, capture_output=True,
                              text=True, timeout=300)
        assert cron.returncode == 0, cron.stderr
    assert sorted(p.name for p in (tmp_path / "runs").iterdir() if not p.name.startswith(".")) == [expected]
    status = run_job(["status", *([flag] if flag else []), "--json"], cwd=tmp_path, env=env)
    assert json.loads(status.stdout)["run"] == expected, status.stderr
    sample = run_job(["sample", *([flag] if flag else []), "--tokens", "3"], cwd=tmp_path, env=env)
    assert sample.returncode == 0, sample.stderr
    make = subprocess.run(["make", "-s", "status", *([f"RUN={flag}"] if flag else [])], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert re.search(rf"^run\s+{expected} \(done\)$", make.stdout, re.M), make.stdout + make.stderr


@pytest.mark.e2e
def test_a_preset_in_the_env_file_names_the_run_for_every_command(tmp_path: Path):
    env_file = tmp_path / "settings.env"
    env_file.write_text(f"JOB_PRESET=gpt2-124m\nJOB_OUT_DIR={tmp_path / 'runs'}\n")
    env = job_env(JOB_ENV_FILE=str(env_file))
    for cmd in (["status"], ["sample"]):
        res = run_job(cmd, cwd=tmp_path, env=env)
        assert res.returncode == 2 and str(tmp_path / "runs" / "gpt2-124m") in res.stderr
    make = subprocess.run(["make", "-s", "status"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert f"no run at {tmp_path / 'runs' / 'gpt2-124m'}" in make.stderr


# ---- time, buckets, version -----------------------------------------------------------------------

@pytest.mark.e2e
def test_the_window_is_logged_as_a_local_time_with_its_offset(small_env, tmp_path: Path):
    env = {**small_env, "TZ": "Asia/Kolkata", "JOB_MAX_ITERS": "2"}
    res = run_job(["train", "--run", "tz", "--stop-at", "23:59"], cwd=tmp_path, env=env)
    assert res.returncode == 0, res.stderr
    line = next(x for x in res.stdout.splitlines() if x.startswith("stopping at "))
    assert re.fullmatch(r"stopping at \d{4}-\d\d-\d\dT23:59:00\+05:30 \(stop_at 23:59, local time zone IST\)", line)


def test_step_buckets_resolve_an_h100_step_and_the_scenarios_step():
    from job.metrics import STEP_BUCKETS

    for low, high in ((0.5, 1.0), (3.0, 3.5)):
        edges = [b for b in STEP_BUCKETS if low <= b <= high]
        assert all(b / a - 1 <= 0.11 for a, b in zip(edges, edges[1:], strict=False)), edges
        assert edges[0] == low and edges[-1] == high


@pytest.mark.e2e
def test_version():
    from job import __version__

    res = run_job(["--version"], cwd=ROOT, env=job_env())
    assert res.returncode == 0 and res.stdout.startswith(f"job {__version__} (torch ")
