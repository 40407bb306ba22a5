"""Live monitoring, proven against a real Prometheus scraping a real `python -m job train`, and the
Grafana dashboard's queries run against it. Needs the `prometheus` and `promtool` binaries
(Debian: apt-get install -y prometheus; make test installs them)."""

from __future__ import annotations

import json
import math
import re
import signal
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from harness import ROOT, binary, free_port, run_job, scrape, start_job, wait_for

DASHBOARD = ROOT / "grafana" / "dashboards" / "trainer.json"
SCRAPE_S = 1
RATE_INTERVAL = f"{4 * SCRAPE_S}s"  # Grafana's $__rate_interval: max(interval + scrape, 4 x scrape)
TOKENS_PER_ITER = 4 * 32

# Panels whose series exist only with a CUDA GPU and NVML (or an energy meter): on this machine
# their queries must run without error but may return nothing.
GPU_ONLY_PANELS = {
    "GPU memory (NVML)", "Torch memory", "Power draw", "Average power from energy", "Temperature", "SM clock",
    "Utilisation", "Throttle reasons", "Energy so far", "Cost so far ($currency)",
    "Projected cost at finish ($currency)", "Energy per token", "Energy over time",
}
# A small model and short intervals: many steps, an eval and a checkpoint within seconds on a CPU.
TRAIN_FLAGS = ["--n-layer", "1", "--n-head", "2", "--n-embd", "32", "--block-size", "32", "--batch-size", "4",
               "--eval-interval", "20", "--eval-iters", "2", "--log-interval", "1000", "--ckpt-interval", "25",
               "--warmup-iters", "10", "--peak-tflops", "1", "--max-runtime", "1h", "--price-per-kwh", "0.25",
               "--currency", "EUR"]


def http_get(url: str, timeout: float = 5) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read().decode()


def trainer_args(tmp: Path, run: str, port: int, max_iters: int) -> list[str]:
    return ["train", "--run", run, "--out-dir", str(tmp / "runs"), "--data-root", str(tmp / "data"),
            "--max-iters", str(max_iters), "--metrics-port", str(port), *TRAIN_FLAGS]


NOT_YET = (OSError, ValueError, LookupError)  # Prometheus or the trainer not up yet, or no data yet


def stop(proc: subprocess.Popen) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


class Live:
    """A training run with metrics on, and a Prometheus scraping it every second."""

    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.metrics_port, self.prom_port = free_port(), free_port()
        self.instance = f"127.0.0.1:{self.metrics_port}"
        (tmp / "prometheus.yml").write_text(
            f"global:\n  scrape_interval: {SCRAPE_S}s\n  evaluation_interval: {SCRAPE_S}s\n"
            f"scrape_configs:\n  - job_name: trainer\n    static_configs:\n"
            f"      - targets: ['{self.instance}']\n")
        self.prom = subprocess.Popen(
            [binary("prometheus"), f"--config.file={tmp / 'prometheus.yml'}", f"--storage.tsdb.path={tmp / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{self.prom_port}", "--log.level=warn"],
            stdout=subprocess.DEVNULL, stderr=open(tmp / "prometheus.log", "w"))
        self.log = tmp / "train.log"
        self.train = start_job(trainer_args(tmp, "live", self.metrics_port, 5000), cwd=tmp, log=self.log)

    def api(self, path: str, **params: str) -> dict:
        url = f"http://127.0.0.1:{self.prom_port}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        try:
            body = http_get(url)
        except urllib.error.HTTPError as e:  # 400 on a bad query: the body says why
            body = e.read().decode()
        return json.loads(body)

    def query(self, expr: str) -> list[dict]:
        reply = self.api("query", query=expr)
        assert reply["status"] == "success", f"{expr}: {reply.get('error')}"
        return reply["data"]["result"]

    def value(self, expr: str) -> float:
        result = self.query(expr)
        if not result:
            raise LookupError(f"no data for {expr}")
        return float(result[0]["value"][1])

    def close(self) -> None:
        stop(self.train)
        self.prom.terminate()
        self.prom.wait(timeout=15)


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    binary("promtool")
    live = Live(tmp_path_factory.mktemp("live"))
    try:
        sel = f'{{job="trainer",instance="{live.instance}"}}'
        # progress past an eval and a checkpoint, seen by Prometheus over several scrapes
        wait_for(lambda: (
            live.value(f"trainer_iteration{sel}") >= 40 and live.query('trainer_loss{split="val"}')
            and live.value(f"trainer_last_checkpoint_timestamp_seconds{sel}") > 0
            and live.value(f"count_over_time(trainer_iteration{sel}[1m])") >= 6),
            timeout=90, what="Prometheus to see 40 iterations, an eval and a checkpoint", proc=live.train,
            log=live.log, step=0.5, ignoring=NOT_YET)
        yield live
    finally:
        live.close()


@pytest.mark.e2e
@pytest.mark.tools
def test_prometheus_scrapes_a_real_run(live):
    sel = f'{{job="trainer",instance="{live.instance}"}}'
    end = time.time()
    reply = live.api("query_range", query=f"trainer_iteration{sel}", start=str(end - 60), end=str(end), step="1")
    points = [float(v) for _, v in reply["data"]["result"][0]["values"]]
    assert points == sorted(points) and points[-1] > points[0], f"iteration not rising: {points}"
    assert live.value(f"rate(trainer_tokens_total{sel}[{RATE_INTERVAL}])") > 0
    for split in ("train", "val"):
        loss = live.value(f'trainer_loss{{split="{split}",job="trainer"}}')
        assert math.isfinite(loss) and 0 < loss < 20, f"{split} loss {loss}"
    it = live.value(f"trainer_iteration{sel}")
    assert live.value(f"trainer_target_iterations{sel}") == 5000
    assert live.value(f"trainer_run_tokens{sel}") >= 40 * TOKENS_PER_ITER
    assert 0 < live.value(f"trainer_run_seconds{sel}") < 120
    assert live.value(f"trainer_restarts{sel}") == 0
    assert live.value(f"trainer_eta_timestamp_seconds{sel}") > time.time()
    assert live.value(f"trainer_step_seconds_count{sel}") >= 40
    assert live.value(f"trainer_checkpoint_seconds_count{sel}") >= 1
    assert 0 < live.value(f"trainer_mfu_ratio{sel}") < 1
    # what the alerts read after the process is gone: the window's end, the checkpoint interval
    start = live.value(f"trainer_start_timestamp_seconds{sel}")
    assert 3600 <= live.value(f"trainer_planned_stop_timestamp_seconds{sel}") - start < 3660
    step = live.value(f"trainer_step_seconds_sum{sel} / trainer_step_seconds_count{sel}")
    assert 0.1 < live.value(f"trainer_checkpoint_interval_seconds{sel}") / (25 * step) < 10  # --ckpt-interval 25
    # the job's own price and currency, per joule: the dashboard's cost needs nothing else
    assert live.value('trainer_energy_price_per_joule{currency="EUR",job="trainer"}') * 3.6e6 == pytest.approx(0.25)
    # no rent (price_per_gpu_hour 0) and no energy meter on a CPU: no cost to serve, the GPU-seconds all the same
    assert live.value('trainer_rent_price_per_gpu_second{currency="EUR",job="trainer"}') == 0
    assert live.query(f"trainer_run_cost{sel}") == []
    assert live.value(f"trainer_run_gpu_seconds{sel}") == pytest.approx(live.value(f"trainer_run_seconds{sel}"))
    info = live.query(f"trainer_info{sel}")[0]["metric"]
    assert info["run"] == "live" and info["device"] == "cpu" and int(info["params"]) > 0, info
    # no GPU here: the device series are absent, not zero
    assert live.query('{__name__=~"trainer_gpu_.*|trainer_torch_.*|trainer_run_energy_joules"}') == []
    assert it >= 40


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def data_panels(dash: dict) -> list[dict]:
    out = []
    for p in dash["panels"]:
        out += [p] if p["type"] != "row" else []
        out += p.get("panels", [])
    return out


def grafana_regex(value: str) -> str:
    """How Grafana writes a multi-value variable's value into a PromQL =~ string: regex-escaped,
    with each backslash doubled for the string literal."""
    return re.escape(value).replace("\\", "\\\\")


def substitute(expr: str, live: Live) -> str:
    values = {"__rate_interval": RATE_INTERVAL, "__interval": f"{SCRAPE_S}s", "__range": "1m",
              "job": "trainer", "instance": grafana_regex(live.instance), "gpu": ".+"}
    for name, value in values.items():
        expr = expr.replace(f"${{{name}}}", value).replace(f"${name}", value)
    assert "$" not in expr, f"unsubstituted variable left in {expr}"
    return expr


@pytest.mark.e2e
@pytest.mark.tools
def test_every_dashboard_query_runs(live):
    panels = data_panels(dashboard())
    titles = {p["title"] for p in panels}
    assert GPU_ONLY_PANELS <= titles, f"GPU-only panels missing from the dashboard: {GPU_ONLY_PANELS - titles}"
    empty = []
    for p in panels:
        for t in p["targets"]:
            result = live.query(substitute(t["expr"], live))  # raises on a PromQL error
            if not result and p["title"] not in GPU_ONLY_PANELS:
                empty.append(f"{p['title']}: {t['expr']}")
    assert not empty, "training queries returned no data:\n" + "\n".join(empty)


@pytest.mark.e2e
@pytest.mark.tools
def test_every_dashboard_variable_query_finds_its_values(live):
    """label_values(selector, label), as Grafana runs it: the values of `label` on the selector's
    series. The currency comes from the job's own setting (EUR in this run)."""
    found = {}
    for v in dashboard()["templating"]["list"]:
        if v["type"] == "query":
            m = re.fullmatch(r"label_values\((.+), (\w+)\)", v["query"]["query"])
            rows = live.query(f"group by ({m.group(2)}) ({substitute(m.group(1), live)})")
            found[v["name"]] = sorted(r["metric"][m.group(2)] for r in rows)
    assert found["job"] == ["trainer"] and found["instance"] == [live.instance], found
    assert found["currency"] == ["EUR"], found
    assert found["gpu"] == []  # no GPU here


@pytest.mark.tools
def test_the_cost_panels_price_the_energy_in_the_jobs_currency(tmp_path: Path):
    """The cost panels' queries, on the series a GPU run serves (its cost, GPU-seconds, iteration,
    target) and the job's prices, checked by promtool. Numbers exact in binary, as promtool compares
    exactly: 1 EUR so far is 2 EUR at max_iters from half the run; 2^-12 EUR per GPU-second."""
    sel = 'job="trainer", instance="gpu-box:9838"'
    series = {f'trainer_run_cost{{{sel}, currency="EUR"}}': "1", f"trainer_iteration{{{sel}}}": "512",
              f"trainer_target_iterations{{{sel}}}": "1024", f"trainer_run_gpu_seconds{{{sel}}}": "7200",
              f'trainer_energy_price_per_joule{{{sel}, currency="EUR"}}': str(2**-20),
              f'trainer_rent_price_per_gpu_second{{{sel}, currency="EUR"}}': str(2**-12)}
    wanted = {"Cost so far ($currency)": 1.0, "Projected cost at finish ($currency)": 2.0,
              "Electricity price ($currency per kWh)": 3.6e6 * 2**-20,
              "Rent ($currency per GPU-hour)": 3600 * 2**-12, "GPU-hours so far": 2.0}
    panels = {p["title"]: p for p in data_panels(dashboard())}
    fill = {'=~"$job"': '=~"trainer"', '=~"$instance"': '=~".+"'}
    inputs = "".join(f"      - series: '{k}'\n        values: '{v}x5'\n" for k, v in series.items())
    tests = ""
    for title, value in wanted.items():
        expr = panels[title]["targets"][0]["expr"]
        for variable, given in fill.items():
            expr = expr.replace(variable, given)
        labels = sel + (', currency="EUR"' if "$currency" in title else "")
        if bare := re.fullmatch(r"(\w+)\{[^}]*\}", expr):  # a plain selector keeps the series' name
            labels += f', __name__="{bare.group(1)}"'
        tests += (f"      - expr: '{expr}'\n        eval_time: 2m\n        exp_samples:\n"
                  f"          - labels: '{{{labels}}}'\n            value: {value}\n")
    spec = tmp_path / "cost.yml"
    spec.write_text(f"tests:\n  - interval: 1m\n    input_series:\n{inputs}    promql_expr_test:\n{tests}")
    res = subprocess.run([binary("promtool"), "test", "rules", str(spec)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr + spec.read_text()


def test_unknown_figures_are_absent_until_known():
    """MFU without a peak FLOP/s, the checkpoint interval before a step is timed, a planned stop
    that is not set: left out of the scrape, never a 0 that reads as a measurement."""
    from prometheus_client import CollectorRegistry, generate_latest

    from job.config import resolve
    from job.hooks import StartInfo, StepInfo
    from job.metrics import TrainingMetrics
    from job.state import TrainState

    registry = CollectorRegistry(auto_describe=True)
    cfg = resolve({"preset": "tiny", "ckpt_interval": 200, "price_per_kwh": 0.3, "currency": "GBP"}, dotenv=None)
    m = TrainingMetrics(registry, cfg)
    st = TrainState(iteration=1)
    m.on_start(StartInfo(run="r", preset="tiny", params=1, device="cpu", dtype="float32", gpu=None, peak_flops=0.0,
                         flops_per_token=1.0, max_iters=10, state=st))
    step = dict(iteration=1, max_iters=10, train_loss=3.0, lr=1e-3, grad_norm=1.0, step_s=0.5, tokens_per_s=1.0,
                eta_s=5.0, state=st)
    m.on_step(StepInfo(**step, mfu=None))
    served = scrape(generate_latest(registry).decode())
    unknown = ("trainer_mfu_ratio", "trainer_checkpoint_interval_seconds", "trainer_planned_stop_timestamp_seconds")
    assert not [k for k in served if k.startswith(unknown)], served
    assert served['trainer_energy_price_per_joule{currency="GBP"}'] * 3.6e6 == pytest.approx(0.3)
    m.on_step(StepInfo(**step, mfu=0.0, smoothed_step_s=0.25, planned_stop_at=1.8e9))
    served = scrape(generate_latest(registry).decode())
    assert served["trainer_mfu_ratio"] == 0.0  # a real 0 is served once known
    assert served["trainer_checkpoint_interval_seconds"] == 200 * 0.25
    assert served["trainer_planned_stop_timestamp_seconds"] == 1.8e9
    assert not [k for k in served if k.startswith("trainer_run_cost")]  # no meter, no rent: not known


def test_the_run_cost_is_its_energy_at_the_price_plus_its_gpu_hours_at_the_rent():
    from prometheus_client import CollectorRegistry, generate_latest

    from job.config import resolve
    from job.metrics import TrainingMetrics
    from job.state import TrainState

    registry = CollectorRegistry(auto_describe=True)
    cfg = resolve({"preset": "tiny", "price_per_kwh": 0.25, "price_per_gpu_hour": 2.5, "currency": "EUR"},
                  environ={}, dotenv=None)
    m = TrainingMetrics(registry, cfg)
    m.set_totals(TrainState(iteration=5, gpu_s=7200.0))  # rent alone (no energy meter): 2 GPU-hours
    assert scrape(generate_latest(registry).decode())['trainer_run_cost{currency="EUR"}'] == pytest.approx(5.0)
    m.enable_energy(registry)
    m.set_totals(TrainState(iteration=6, gpu_s=7200.0, energy_j=4 * 3.6e6))  # and 4 kWh
    served = scrape(generate_latest(registry).decode())
    assert served['trainer_run_cost{currency="EUR"}'] == pytest.approx(5.0 + 4 * 0.25)
    assert served["trainer_run_gpu_seconds"] == 7200.0
    assert served['trainer_rent_price_per_gpu_second{currency="EUR"}'] * 3600 == pytest.approx(2.5)


@pytest.mark.e2e
@pytest.mark.tools
def test_promtool_accepts_the_scrape_and_names_use_base_units(live):
    text = http_get(f"http://{live.instance}/metrics")
    check = subprocess.run([binary("promtool"), "check", "metrics"], input=text, capture_output=True, text=True)
    assert check.returncode == 0 and not (check.stdout + check.stderr).strip(), check.stdout + check.stderr
    names = {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE ")}
    assert names and all(n.startswith("trainer_") for n in names), names
    bad = re.compile(r"_(ms|us|ns|milliseconds|microseconds|minutes|hours|days|mb|gb|kb|mib|gib|kib|megabytes|"
                     r"kilobytes|gigabytes|milliwatts|mw|kw|kilowatts|kwh|mj|millijoules|kilojoules|mhz|ghz|khz|"
                     r"percent|pct|fahrenheit|per_second|per_sec|per_s|tflops)(_|$)")
    assert not [n for n in names if bad.search(n)], [n for n in names if bad.search(n)]
    assert "metrics: no GPU figures: training on cpu" in live.log.read_text()


@pytest.mark.tools
def test_promtool_accepts_the_shipped_prometheus_config():
    check = subprocess.run([binary("promtool"), "check", "config", str(ROOT / "grafana" / "prometheus.yml")],
                           capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr


@pytest.mark.e2e
@pytest.mark.tools
def test_busy_metrics_port_is_a_one_line_error(live):
    r = run_job(trainer_args(live.tmp, "busy", live.metrics_port, 10), cwd=live.tmp, timeout=120)
    assert r.returncode == 2, r.stdout + r.stderr
    assert f"error: metrics_port: cannot serve on 127.0.0.1:{live.metrics_port}" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


@pytest.mark.e2e
@pytest.mark.tools
def test_restart_serves_the_run_totals_from_the_checkpoint(live):
    """SIGTERM (exit 75), start again: the run's iteration, tokens, seconds and last-checkpoint time
    carry on from the checkpoint, restarts counts it, and Prometheus sees the same series go on.
    Runs last: it replaces the live trainer."""
    assert stop(live.train) == 75
    seal = json.loads(sorted((live.tmp / "runs" / "live" / "ckpt").glob("*.json"))[-1].read_text())
    live.train = start_job(trainer_args(live.tmp, "live", live.metrics_port, 5000), cwd=live.tmp, log=live.log)

    def stepped() -> dict[str, float] | None:  # a step done after the resume: the loop is running again
        m = scrape(live.metrics_port)
        return m if m["trainer_step_seconds_count"] >= 1 else None

    m = wait_for(stepped, 90, what="a step of the resumed run", proc=live.train, log=live.log, step=0.5,
                 ignoring=NOT_YET)
    assert m["trainer_restarts"] == 1
    assert m["trainer_iteration"] > seal["iteration"]
    assert m["trainer_run_tokens"] == m["trainer_iteration"] * TOKENS_PER_ITER
    assert m["trainer_run_seconds"] > seal["elapsed_s"] > 0
    assert m["trainer_last_checkpoint_timestamp_seconds"] >= seal["saved_at"]
    # the counter is this process's own: it restarted from 0, which rate() reads as a reset
    assert m["trainer_tokens_total"] == (m["trainer_iteration"] - seal["iteration"]) * TOKENS_PER_ITER
    sel = f'{{job="trainer",instance="{live.instance}"}}'
    wait_for(lambda: live.value(f"trainer_restarts{sel}") == 1, 30, what="Prometheus to see the restart", step=0.5,
             ignoring=NOT_YET)


# --- dashboard-linter's rules, applied to the JSON -------------------------------------------

SELECTOR = re.compile(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\s*(\{[^}]*\})?(\s*\[[^\]]*\])?")
PROMQL_WORDS = {"sum", "by", "without", "rate", "increase", "irate", "histogram_quantile", "max_over_time",
                "min_over_time", "time", "max", "min", "avg", "count", "bool", "on", "ignoring", "and", "or",
                "unless", "count_over_time", "group_left", "group_right", "le"}


def selectors(expr: str) -> list[tuple[str, str, str, int]]:
    """(metric, {matchers}, [range], position) for every vector selector of a query."""
    blank = lambda m: " " * len(m.group())  # same length, so positions still index `expr`
    scan = re.sub(r'"[^"]*"', lambda q: "_" * len(q.group()), expr)
    scan = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", blank, scan)
    out = []
    for m in SELECTOR.finditer(scan):
        name = m.group(1)
        following = scan[m.end(1):].lstrip()
        if name in PROMQL_WORDS or following.startswith("(") or scan[max(0, m.start() - 1)] == "$":
            continue
        out.append((name, expr[m.start(2):m.end(2)] if m.group(2) else "", m.group(3) or "", m.start()))
    return out


def enclosing_call(expr: str, pos: int) -> str:
    depth = 0
    for i in range(pos - 1, -1, -1):
        if expr[i] == ")":
            depth += 1
        elif expr[i] == "(":
            if depth == 0:
                return re.search(r"([a-z_]*)\s*$", expr[:i]).group(1)
            depth -= 1
    return ""


def test_dashboard_follows_dashboard_linter_rules():
    dash = dashboard()
    text = DASHBOARD.read_text()
    assert "__inputs" not in dash and "${DS_" not in text, "export for sharing externally leaks __inputs/${DS_...}"
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    ds = variables["datasource"]
    assert ds["type"] == "datasource" and ds["query"] == "prometheus" and ds["label"] == "Data source"
    for name in ("job", "instance"):
        v = variables[name]
        assert v["type"] == "query" and v["datasource"]["uid"] in ("$datasource", "${datasource}"), v
        assert v["label"] == name.title() and v["multi"] and v["allValue"] == ".+", v
    problems = []
    currency = variables["currency"]  # the job's currency setting, named in the cost panels' titles
    assert currency["type"] == "query" and currency["hide"] == 2 and "trainer_energy_price_per_joule" in \
        currency["query"]["query"], currency
    assert "price_per_kwh" not in variables and "$price_per_kwh" not in text, "the price comes from the job"
    for p in data_panels(dash):
        if "cost" in p["title"].lower() and "$currency" not in p["title"]:
            problems.append(f"panel '{p['title']}': a cost without its currency")
    for p in data_panels(dash):
        where = f"panel '{p.get('title')}'"
        if not p.get("title") or not p.get("description"):
            problems.append(f"{where}: needs a title and a description")
        if not p.get("fieldConfig", {}).get("defaults", {}).get("unit"):
            problems.append(f"{where}: needs a unit")
        if p.get("datasource", {}).get("uid") != "$datasource":
            problems.append(f"{where}: should use the $datasource variable")
        if not p.get("targets"):
            problems.append(f"{where}: has no query")
        for t in p.get("targets", []):
            expr = t["expr"]
            for call in re.finditer(r"\b(rate|irate|increase)\s*\(", expr):
                rng = re.search(r"\[([^\]]*)\]", expr[call.end():])
                if not rng or rng.group(1) != "$__rate_interval":
                    problems.append(f"{where}: {call.group(1)} must use [$__rate_interval]: {expr}")
            for name, matchers, rng, pos in selectors(expr):
                if 'job=~"$job"' not in matchers or 'instance=~"$instance"' not in matchers:
                    problems.append(f"{where}: {name} lacks job=~\"$job\" and instance=~\"$instance\": {expr}")
                if name.endswith("_total") and not (rng and enclosing_call(expr, pos) in ("rate", "irate",
                                                                                          "increase")):
                    problems.append(f"{where}: counter {name} outside rate/increase: {expr}")
    assert not problems, "\n".join(problems)


def test_clock_event_reasons_decode_into_labels():
    import pynvml

    from job.metrics import REASONS, decode_reasons

    bits = {name: getattr(pynvml, attr) for name, attr in REASONS.items()}
    mask = pynvml.nvmlClocksEventReasonSwPowerCap | pynvml.nvmlClocksEventReasonHwThermalSlowdown
    decoded = decode_reasons(mask, bits)
    assert set(decoded) == set(REASONS)
    assert {k for k, v in decoded.items() if v} == {"sw_power_cap", "hw_thermal_slowdown"}
    assert not any(decode_reasons(0, bits).values())
