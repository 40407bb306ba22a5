"""The shipped alert rules (grafana/alerts.yml), each checked by `promtool test rules` against
series written here: a case where it must fire and one where it must not."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import textwrap
from pathlib import Path

import pytest
import yaml  # PyYAML: a dependency of huggingface-hub, which the job pins

ROOT = Path(__file__).resolve().parents[1]
LABELS = 'job="trainer", instance="gpu-box:9838"'
ALERT_LABELS = {"instance": "gpu-box:9838", "job": "trainer"}

# (alert, input series, minute to evaluate at, fires?) — one minute per sample ("1m" interval)
CASES = [
    ("TrainerStalled", [(f"trainer_iteration{{{LABELS}}}", "100+10x10 200x30"),
                        (f"trainer_target_iterations{{{LABELS}}}", "1000x40")], 35, True),
    ("TrainerStalled", [(f"trainer_iteration{{{LABELS}}}", "100+10x40"),
                        (f"trainer_target_iterations{{{LABELS}}}", "1000x40")], 35, False),
    ("TrainerStalled", [(f"trainer_iteration{{{LABELS}}}", "100+10x10 200x30"),  # finished: silence
                        (f"trainer_target_iterations{{{LABELS}}}", "200x40")], 35, False),
    ("TrainerNotScraped", [(f"up{{{LABELS}}}", "1x10 0x20"), (f"trainer_iteration{{{LABELS}}}", "1+1x10"),
                           (f"trainer_target_iterations{{{LABELS}}}", "100x10")], 25, True),
    ("TrainerNotScraped", [(f"up{{{LABELS}}}", "1x10 0x20"), (f"trainer_iteration{{{LABELS}}}", "90+1x10"),
                           (f"trainer_target_iterations{{{LABELS}}}", "100x10")], 25, False),  # it finished
    # a planned stop (max_runtime, stop_at) at minute 10: gone at 11 on purpose, quiet
    ("TrainerNotScraped", [(f"up{{{LABELS}}}", "1x10 0x20"), (f"trainer_iteration{{{LABELS}}}", "1+1x10"),
                           (f"trainer_target_iterations{{{LABELS}}}", "100x10"),
                           (f"trainer_planned_stop_timestamp_seconds{{{LABELS}}}", "600x10")], 25, False),
    # a crash with a planned stop still two hours ahead: fires
    ("TrainerNotScraped", [(f"up{{{LABELS}}}", "1x10 0x20"), (f"trainer_iteration{{{LABELS}}}", "1+1x10"),
                           (f"trainer_target_iterations{{{LABELS}}}", "100x10"),
                           (f"trainer_planned_stop_timestamp_seconds{{{LABELS}}}", "7800x10")], 25, True),
    ("TrainerLossNotFinite", [(f'trainer_loss{{{LABELS}, split="train"}}', "3.2x5 " + "NaN " * 10)], 12, True),
    ("TrainerLossNotFinite", [(f'trainer_loss{{{LABELS}, split="train"}}', "3.2x5 NaN 3.1x10")], 12, False),
    ("TrainerSkippedStepsRising", [(f"trainer_skipped_steps_total{{{LABELS}}}", "0x5 1+1x10")], 14, True),
    ("TrainerSkippedStepsRising", [(f"trainer_skipped_steps_total{{{LABELS}}}", "0x5 1x10")], 14, False),
    ("GpuThrottled", [(f'trainer_gpu_clock_event_reason_active{{{LABELS}, gpu="0", uuid="GPU-1", '
                       f'reason="hw_thermal_slowdown"}}', "0x5 1x30")], 30, True),
    ("GpuThrottled", [(f'trainer_gpu_clock_event_reason_active{{{LABELS}, gpu="0", uuid="GPU-1", '
                       f'reason="sw_power_cap"}}', "0x5 1x30")], 30, False),  # the power cap: by design
    # a fast run (checkpoint interval 10 min): the newest checkpoint 79 minutes old fires
    ("TrainerCheckpointOld", [(f"trainer_last_checkpoint_timestamp_seconds{{{LABELS}}}", "60x100"),
                              (f"trainer_checkpoint_interval_seconds{{{LABELS}}}", "600x100"),
                              (f"trainer_start_timestamp_seconds{{{LABELS}}}", "0x100"),
                              (f"trainer_iteration{{{LABELS}}}", "1+1x100"),
                              (f"trainer_target_iterations{{{LABELS}}}", "1000x100")], 80, True),
    ("TrainerCheckpointOld", [(f"trainer_last_checkpoint_timestamp_seconds{{{LABELS}}}", "0+60x100"),
                              (f"trainer_checkpoint_interval_seconds{{{LABELS}}}", "600x100"),
                              (f"trainer_start_timestamp_seconds{{{LABELS}}}", "0x100"),
                              (f"trainer_iteration{{{LABELS}}}", "1+1x100"),
                              (f"trainer_target_iterations{{{LABELS}}}", "1000x100")], 80, False),
    # gpt2-40m on an RTX 4070: 500 iterations at 8.4 s = 70 min between checkpoints, each one
    # 75 min after the last; just before the fifth, the newest is 74 min old: quiet
    ("TrainerCheckpointOld", [(f"trainer_last_checkpoint_timestamp_seconds{{{LABELS}}}",
                               "0x74 4500x74 9000x74 13500x74"),
                              (f"trainer_checkpoint_interval_seconds{{{LABELS}}}", "4200x299"),
                              (f"trainer_start_timestamp_seconds{{{LABELS}}}", "0x299"),
                              (f"trainer_iteration{{{LABELS}}}", "0+7x299"),
                              (f"trainer_target_iterations{{{LABELS}}}", "20000x299")], 299, False),
    # the same run whose newest checkpoint (minute 70) is three intervals old: fires
    ("TrainerCheckpointOld", [(f"trainer_last_checkpoint_timestamp_seconds{{{LABELS}}}", "0x69 4200x230"),
                              (f"trainer_checkpoint_interval_seconds{{{LABELS}}}", "4200x299"),
                              (f"trainer_start_timestamp_seconds{{{LABELS}}}", "0x299"),
                              (f"trainer_iteration{{{LABELS}}}", "0+7x299"),
                              (f"trainer_target_iterations{{{LABELS}}}", "20000x299")], 280, True),
    # resumed at minute 60 from last night's checkpoint: counted from the start, quiet
    ("TrainerCheckpointOld", [(f"trainer_last_checkpoint_timestamp_seconds{{{LABELS}}}", "-50000x200"),
                              (f"trainer_checkpoint_interval_seconds{{{LABELS}}}", "4200x200"),
                              (f"trainer_start_timestamp_seconds{{{LABELS}}}", "3600x200"),
                              (f"trainer_iteration{{{LABELS}}}", "5000+7x200"),
                              (f"trainer_target_iterations{{{LABELS}}}", "20000x200")], 200, False),
]


def expected(alert: str, fires: bool) -> str:
    if not fires:
        return "        exp_alerts: []"
    extra = {"GpuThrottled": {"gpu": "0", "uuid": "GPU-1"}}.get(alert, {})
    severity = "critical" if alert in ("TrainerStalled", "TrainerLossNotFinite") else "warning"
    labels = {**ALERT_LABELS, **extra, "severity": severity}
    if alert == "GpuThrottled":
        labels.pop("job")
    if alert == "TrainerLossNotFinite":
        labels["split"] = "train"
    lines = "\n".join(f"              {k}: {v}" for k, v in sorted(labels.items()))
    notes = "\n".join(f"              {k}: {json.dumps(v)}" for k, v in annotations(alert, labels).items())
    return f"        exp_alerts:\n          - exp_labels:\n{lines}\n            exp_annotations:\n{notes}"


def annotations(alert: str, labels: dict[str, str]) -> dict[str, str]:
    """The rule's annotations with its label templates filled in, as Prometheus renders them."""
    rules = yaml.safe_load((ROOT / "grafana" / "alerts.yml").read_text())["groups"][0]["rules"]
    rule = next(r for r in rules if r["alert"] == alert)
    fill = lambda text: re.sub(r"{{ \$labels\.(\w+) }}", lambda m: labels[m.group(1)], text)
    return {k: fill(v) for k, v in rule["annotations"].items()}


def rules_test(alert: str, series: list[tuple[str, str]], minute: int, fires: bool) -> str:
    inputs = "\n".join(f"      - series: '{name}'\n        values: '{values}'" for name, values in series)
    return textwrap.dedent(f"""\
        rule_files:
          - {ROOT / 'grafana' / 'alerts.yml'}
        evaluation_interval: 1m
        tests:
          - interval: 1m
            input_series:
        """) + inputs + f"\n    alert_rule_test:\n      - eval_time: {minute}m\n        alertname: {alert}\n" + \
        expected(alert, fires) + "\n"


@pytest.mark.tools
@pytest.mark.parametrize("alert, series, minute, fires", CASES,
                         ids=[f"{c[0]}-{'fires' if c[3] else 'quiet'}-{i}" for i, c in enumerate(CASES)])
def test_alert_rule(alert, series, minute, fires, tmp_path: Path):
    promtool = shutil.which("promtool")
    if not promtool:
        pytest.fail("promtool not found: apt-get install -y prometheus (make test does this: tests/tools.sh)")
    spec = tmp_path / "test.yml"
    spec.write_text(rules_test(alert, series, minute, fires))
    res = subprocess.run([promtool, "test", "rules", str(spec)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr + spec.read_text()


def test_every_shipped_alert_has_a_case_that_fires_and_one_that_does_not():
    shipped = set(re.findall(r"^\s*- alert: (\w+)$", (ROOT / "grafana" / "alerts.yml").read_text(), re.M))
    assert len(shipped) == 6
    assert {a for a, *_, fires in CASES if fires} == {a for a, *_, fires in CASES if not fires} == shipped


@pytest.mark.tools
def test_promtool_accepts_the_rules_and_the_config_that_loads_them():
    for args in (["check", "rules", "grafana/alerts.yml"], ["check", "config", "grafana/prometheus.yml"]):
        res = subprocess.run(["promtool", *args], cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert res.returncode == 0, res.stdout + res.stderr
