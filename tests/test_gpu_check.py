"""scripts/gpu_check.sh runs only where a GPU is lent, rarely; its --quick mode runs the same steps
on the CPU here, so the script cannot rot between those sessions."""

from __future__ import annotations

import re
import subprocess

from conftest import ROOT, job_env


def test_gpu_check_quick_prints_every_row_from_real_runs():
    res = subprocess.run(["bash", "scripts/gpu_check.sh", "--quick"], cwd=ROOT, env=job_env(), capture_output=True,
                         text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    rows = dict(re.findall(r"^\| ([^|]+?) \| (.+) \|$", res.stdout, re.M))
    expected = {"torch", "matmul rate", "plan: peak memory", "plan: step", "train small", "metrics during a run"}
    assert expected <= set(rows)
    assert re.search(r"[\d,]+ tokens/s, MFU [\d.]+% of the table's peak", rows["train small"])
    steps = int(re.match(r"(\d+) steps in 15 s", rows["metrics during a run"]).group(1))
    assert steps > 0, "the trainer scraped during the check must have been training"
