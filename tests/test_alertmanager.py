"""Alerts that reach someone: the Alertmanager of `make monitor` (grafana/alertmanager.yml, written
out at each start by grafana/alertmanager-config.sh with the receiver for ALERT_WEBHOOK_URL) is a
config amtool accepts for every kind of URL the docs name, and for the docs' email receiver; and a
stall is delivered end to end: a real Prometheus evaluating the shipped rules against real trainers,
Alertmanager started as compose starts it (Debian's prometheus-alertmanager), and a small HTTP
receiver of this test's own on loopback that gets the alert. Needs prometheus,
prometheus-alertmanager and amtool (make test installs them: tests/tools.sh)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml  # PyYAML: a dependency of huggingface-hub, which the job pins
from harness import ROOT, SMALL, binary, free_port, job_env, pids_with, prom_query, scrape, start_job, wait_for

GRAFANA = ROOT / "grafana"
SCRIPT = GRAFANA / "alertmanager-config.sh"
SHIPPED = GRAFANA / "alertmanager.yml"

# The URLs docs/monitoring.md names, and the integration of Alertmanager each one gets
URLS = {
    "none": ("", None, None),
    "ntfy": ("https://ntfy.sh/night-run-7f3a9c?template=alertmanager", "webhook_configs", "url"),
    "slack": ("https://hooks.slack.com/services/T0001/B0001/XXXXXXXXXXXX", "slack_configs", "api_url"),
    "discord": ("https://discord.com/api/webhooks/1234567890/abcDEF", "discord_configs", "webhook_url"),
    "healthchecks": ("https://hc-ping.com/eb095278-f28d-448d-87fb-7b75c171a6aa/fail", "webhook_configs", "url"),
    "own, with a quote": ("http://user:pw@127.0.0.1:8080/it's", "webhook_configs", "url"),
}


def write_config(out: Path, url: str) -> subprocess.CompletedProcess:
    """alertmanager-config.sh as the container runs it (POSIX sh), with ALERT_WEBHOOK_URL=url."""
    env = {**os.environ, "ALERT_WEBHOOK_URL": url}
    return subprocess.run(["sh", str(SCRIPT), str(SHIPPED), str(out)], env=env, capture_output=True, text=True,
                          timeout=30)


@pytest.mark.tools
@pytest.mark.parametrize("kind", URLS)
def test_amtool_accepts_the_config_written_for_each_kind_of_url(kind: str, tmp_path: Path):
    url, integration, field = URLS[kind]
    out = tmp_path / "alertmanager.yml"
    res = write_config(out, url)
    assert res.returncode == 0, res.stderr
    check = subprocess.run([binary("amtool"), "check-config", str(out)], capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr + out.read_text()
    config = yaml.safe_load(out.read_text())
    # every alert to `user` (no matchers: all six rules), one notification per alert and trainer,
    # again after 4 hours while it still fires
    assert config["route"] == {"receiver": "user", "group_by": ["alertname", "instance"], "group_wait": "30s",
                               "group_interval": "5m", "repeat_interval": "4h"}
    (receiver,) = config["receivers"]
    (line,) = res.stderr.splitlines()
    if integration is None:
        assert receiver == {"name": "user"}  # the alerts stay in Alertmanager's UI
        assert "nothing is sent" in line
    else:
        assert receiver == {"name": "user", integration: [{field: url, "send_resolved": True}]}
        host = url.split("/")[2].split("@")[-1]
        assert f"to {host} ({integration}" in line  # the host, never the secret parts
        assert url.split("/")[-1] not in line and "pw" not in line


def test_the_shipped_config_ends_with_the_receiver_the_script_appends_to():
    text = SHIPPED.read_text()
    assert text.endswith("\n  - name: user\n"), "alertmanager-config.sh appends under the file's last receiver"
    assert yaml.safe_load(text)["receivers"] == [{"name": "user"}]  # no URL: nothing is sent


@pytest.mark.tools
def test_the_docs_email_receiver_is_a_config_amtool_accepts(tmp_path: Path):
    docs = (ROOT / "docs" / "monitoring.md").read_text()
    blocks = [b for b in re.findall(r"```yaml\n(.*?)```", docs, re.S) if "email_configs" in b]
    assert len(blocks) == 1, "docs/monitoring.md shows one email receiver"
    (tmp_path / "email.yml").write_text(blocks[0])
    check = subprocess.run([binary("amtool"), "check-config", str(tmp_path / "email.yml")], capture_output=True,
                           text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr


# ---- a stall, delivered --------------------------------------------------------------------------

# The rules' and the route's times divided by this: a minute of theirs is half a second here.
SCALE = 120
MS = {"s": 1000, "m": 60_000, "h": 3_600_000}


def scaled(text: str, after: str) -> str:
    """`text` with each duration that follows the regex `after` divided by SCALE (in ms)."""
    return re.sub(rf"({after})(\d+)([smh])\b",
                  lambda m: f"{m.group(1)}{int(m.group(2)) * MS[m.group(3)] // SCALE}ms", text)


class Receiver:
    """The user's end of the webhook: an HTTP server on 127.0.0.1 that keeps every JSON body
    POSTed to it, with the time it came."""

    def __init__(self) -> None:
        self.bodies: list[tuple[float, dict]] = []
        bodies = self.bodies

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                bodies.append((time.time(), json.loads(body)))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/alerts"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def alerts(self) -> list[tuple[float, str, dict, dict]]:
        """(when, status, labels, the notification) of every alert in every notification so far."""
        return [(t, a["status"], a["labels"], body) for t, body in list(self.bodies) for a in body["alerts"]]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


def alertmanager_as_compose_runs_it(tmp: Path, port: int, shipped: Path) -> list[str]:
    """compose.yml's alertmanager entrypoint and command, as this machine runs them: each mounted
    file at the path it comes from (the shipped config replaced by `shipped`), its volume a
    directory of `tmp`, the image's /bin/sh and /bin/alertmanager this machine's, its port `port`."""
    service = yaml.safe_load((GRAFANA / "compose.yml").read_text())["services"]["alertmanager"]
    paths = {"/bin/sh": binary("sh"), "/bin/alertmanager": binary("prometheus-alertmanager")}
    for volume in service["volumes"]:
        source, target = volume.split(":")[:2]
        paths[target] = str(GRAFANA / source) if source.startswith("./") else str(tmp / source)
        if not source.startswith("./"):
            (tmp / source).mkdir()
    paths["/etc/alertmanager/alertmanager.yml"] = str(shipped)

    def local(arg: str) -> str:
        flag, eq, value = arg.rpartition("=") if arg.startswith("--") else ("", "", arg)
        for target in sorted(paths, key=len, reverse=True):
            if value == target or value.startswith(target + "/"):
                value = paths[target] + value[len(target):]
                break
        return flag + eq + value.replace("${ALERTMANAGER_PORT:-9093}", str(port))

    return [local(a) for a in [*service["entrypoint"], *service["command"]]]


def prometheus_config(tmp: Path, targets: list[str], alertmanager: str) -> Path:
    """The shipped prometheus.yml with the shipped rules, their times scaled, scraping `targets`
    every second and sending what fires to `alertmanager`."""
    (tmp / "alerts.yml").write_text(scaled((GRAFANA / "alerts.yml").read_text(), r"\[|for: "))
    config = yaml.safe_load((GRAFANA / "prometheus.yml").read_text())
    assert config["rule_files"] == ["alerts.yml"]
    config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
    (scrape_job,) = config["scrape_configs"]
    scrape_job["static_configs"] = [{"targets": targets}]
    (sink,) = config["alerting"]["alertmanagers"]
    assert sink["static_configs"] == [{"targets": ["127.0.0.1:9093"]}]  # compose's Alertmanager
    sink["static_configs"] = [{"targets": [alertmanager]}]
    (tmp / "prometheus.yml").write_text(yaml.safe_dump(config))
    return tmp / "prometheus.yml"


# A tiny model that steps every few milliseconds, with no evaluation or checkpoint to pause it.
TRAINER = {**SMALL, "JOB_MAX_ITERS": "50000", "JOB_EVAL_INTERVAL": "50000", "JOB_CKPT_INTERVAL": "50000",
           "JOB_LOG_INTERVAL": "50000"}


def started(cmd: list[str], log: Path, **env: str) -> subprocess.Popen:
    """`cmd` started with `env` added to this process's environment, its output into `log`."""
    with open(log, "w") as out:
        return subprocess.Popen(cmd, env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT)


@pytest.mark.e2e
@pytest.mark.torchrun
@pytest.mark.tools
def test_a_stalled_trainer_reaches_the_receiver_and_a_healthy_one_sends_nothing(shakespeare: Path,
                                                                                tmp_path: Path):
    """The delivery path, not the rules' logic: that is promtool's, case by case, in test_alerts.py.
    Here every part is real and the shipped files drive it, with the rules' and the route's times
    divided by SCALE (TrainerStalled's 15 + 5 minutes are 10 seconds, group_wait 30 s is 250 ms).

    The stall is the kind TrainerStalled is for: a live trainer whose iteration stops while its
    metrics server answers. Two processes train under torchrun (DDP, gloo) and rank 1 is stopped
    (SIGSTOP), as a wedged GPU or a dead peer stops one rank: rank 0 waits in the gradients'
    all-reduce, serving /metrics all the while with its iteration frozen (so `up` stays 1 and
    TrainerNotScraped stays quiet). Stopping the single process of a run instead would freeze its
    metrics server too: Prometheus would see it gone (TrainerNotScraped), not stalled. A second
    run, one process, keeps stepping in the same Prometheus and Alertmanager: nothing may come
    for it. When rank 1 goes on, the resolved notification follows."""
    receiver = Receiver()
    ports = {name: free_port() for name in ("stalled", "healthy", "alertmanager", "prometheus")}
    instance = {name: f"127.0.0.1:{ports[name]}" for name in ("stalled", "healthy")}
    out = {name: tmp_path / f"runs-{name}" for name in ("stalled", "healthy")}
    query = lambda expr: prom_query(ports["prometheus"], expr)
    procs: list[subprocess.Popen] = []
    rank1 = None
    try:
        for name, nproc in (("stalled", "2"), ("healthy", "1")):
            env = job_env(**{**TRAINER, "JOB_DATA": str(shakespeare), "JOB_OUT_DIR": str(out[name]),
                             "JOB_METRICS_PORT": str(ports[name])})
            procs.append(start_job(["train", "--run", name, "--nproc", nproc], cwd=tmp_path, env=env,
                                   log=tmp_path / f"{name}.log"))
        shipped = tmp_path / "alertmanager.yml"
        shipped.write_text(scaled(SHIPPED.read_text(), r"group_wait: |group_interval: |repeat_interval: "))
        am_log = tmp_path / "alertmanager.log"
        am = started(alertmanager_as_compose_runs_it(tmp_path, ports["alertmanager"], shipped), am_log,
                     ALERT_WEBHOOK_URL=receiver.url)
        procs.append(am)
        for name, proc in zip(("stalled", "healthy"), procs[:2], strict=True):
            wait_for(lambda n=name: scrape(ports[n])["trainer_iteration"] >= 20, timeout=120,
                     what=f"the {name} run to step", proc=proc, log=tmp_path / f"{name}.log", step=0.2,
                     ignoring=(OSError, KeyError))
        config = prometheus_config(tmp_path, list(instance.values()), f"127.0.0.1:{ports['alertmanager']}")
        prom = started([binary("prometheus"), f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                        f"--web.listen-address=127.0.0.1:{ports['prometheus']}", "--log.level=warn"],
                       tmp_path / "prometheus.log")
        procs.append(prom)
        # Prometheus sees both step before the stall: whatever fires, fires for the stall alone
        wait_for(lambda: len(query('changes(trainer_iteration{job="trainer"}[3s]) > 0')) == 2, timeout=60,
                 what="Prometheus to see both runs step", proc=prom, step=0.2, ignoring=(OSError,))
        seen = time.time()

        (rank1,) = pids_with({"RANK=1", f"JOB_OUT_DIR={out['stalled']}"})
        os.kill(rank1, signal.SIGSTOP)
        since = time.time()

        def delivered(status: str) -> float | None:
            return next((t for t, s, labels, _ in receiver.alerts() if s == status
                         and labels["alertname"] == "TrainerStalled" and labels["instance"] == instance["stalled"]),
                        None)

        fired = wait_for(lambda: delivered("firing"), timeout=60, what="TrainerStalled at the receiver", proc=am,
                         log=am_log, step=0.2)
        # not before the rule's 15 + 5 minutes without a step (scaled; less a scrape interval)
        assert fired - since >= (15 + 5) * 60 / SCALE - 1.5, f"fired {fired - since:.1f} s after the stall began"
        # rank 0 answered every scrape all along: a stall, not a trainer gone
        assert query(f'min_over_time(up{{instance="{instance["stalled"]}"}}[1m])')[0]["value"][1] == "1"
        os.kill(rank1, signal.SIGCONT)
        wait_for(lambda: delivered("resolved"), timeout=60, what="the resolved notification", proc=am, log=am_log,
                 step=0.2)

        received = receiver.alerts()
        assert {(s, labels["alertname"], labels["instance"]) for _, s, labels, _ in received} == {
            ("firing", "TrainerStalled", instance["stalled"]), ("resolved", "TrainerStalled", instance["stalled"])}
        for *_, body in received:  # the shipped route: its receiver, grouped by alert and trainer
            assert body["receiver"] == "user"
            assert body["groupLabels"] == {"alertname": "TrainerStalled", "instance": instance["stalled"]}
        # Since Prometheus had two samples of each (its first evaluations read one sample, no change,
        # and hold any run pending for a moment): no alert for the healthy run, not even a pending
        # one, while the same query finds the stalled run's. It was watched as long as the stall.
        window = f"{int(time.time() - seen)}s"
        alerts = lambda name: query(f'count_over_time(ALERTS{{instance="{instance[name]}"}}[{window}])')
        assert alerts("healthy") == [] and {a["metric"]["alertname"] for a in alerts("stalled")} == {"TrainerStalled"}
        assert query(f'up{{instance="{instance["healthy"]}"}}')[0]["value"][1] == "1"
    finally:
        if rank1 is not None:
            os.kill(rank1, signal.SIGCONT)
        for name in ("stalled", "healthy"):  # the launchers, torchrun's agent and its workers
            for pid in pids_with({f"JOB_OUT_DIR={out[name]}"}):
                os.kill(pid, signal.SIGKILL)
        for proc in procs:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        receiver.close()
