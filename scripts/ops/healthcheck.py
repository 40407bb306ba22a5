"""Docker HEALTHCHECK: healthy while the trainer makes progress, judged by its own pace.

The job serves, on its metrics endpoint, when its newest step finished and how long a stretch
without the next one is still normal for it (`trainer_stall_limit_seconds`: 3 x the longest gap
between steps it has seen, compile, evaluations and checkpoints included, at least 20 steps at its
smoothed step time and 5 minutes; job/metrics.py). So a run of 30-second steps and one of 50 ms
steps are each held to their own pace, and an evaluation or a checkpoint write is not a stall.

Unhealthy (exit 1, one line on stderr): the endpoint does not answer; or a run that has started
and is not finished has made no step for longer than its limit; or no first step came within
FIRST_STEP_S of the start (data checks and compiling take minutes, not this). Healthy otherwise,
including before training starts (the image's --start-period covers data preparation), after it
is done, with metrics off, and on a machine whose endpoint serves only its GPUs (torchrun's other
machines: their rank 0 is elsewhere). Standard library only, so it costs no torch import every 30 s.
"""

from __future__ import annotations

import os
import re
import sys
import time
import urllib.request

FIRST_STEP_S = 30 * 60
SERIES = re.compile(r"^(trainer_[a-z_]+)(?:\{[^}]*\})? ([-+0-9.eEinfNa]+)$", re.M)


def served(text: str) -> dict[str, float]:
    """The unlabelled value of each trainer_ series in a Prometheus text exposition (the first one
    of a labelled series)."""
    out: dict[str, float] = {}
    for name, value in SERIES.findall(text):
        out.setdefault(name, float(value))
    return out


def verdict(m: dict[str, float], now: float) -> str | None:
    """Why the trainer is not making progress, or None when it is (or is not training)."""
    start = m.get("trainer_start_timestamp_seconds", 0.0)
    it, target = m.get("trainer_iteration"), m.get("trainer_target_iterations", 0.0)
    if it is None or not start or (target and it >= target):
        return None  # not rank 0's machine, not started yet, or done
    last = m.get("trainer_last_step_timestamp_seconds")
    if last is None:
        if now - start > FIRST_STEP_S:
            return f"no first step {(now - start) / 60:.0f} min after the start (iteration {it:.0f})"
        return None
    limit = m.get("trainer_stall_limit_seconds", FIRST_STEP_S)
    if now - last > limit:
        return (f"no step for {(now - last) / 60:.1f} min at iteration {it:.0f}, longer than this run's limit of "
                f"{limit / 60:.1f} min (3 x the longest gap between its steps so far)")
    return None


def main() -> int:
    port = os.environ.get("JOB_METRICS_PORT", "9838")
    if port == "0":  # metrics turned off: nothing to probe, so the container counts as healthy
        return 0
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            text = resp.read().decode() if resp.status == 200 else ""
    except OSError as e:
        print(f"unhealthy: metrics endpoint on port {port}: {e}", file=sys.stderr)
        return 1
    if "trainer_" not in text:
        print(f"unhealthy: port {port} answers but serves no trainer_ metrics", file=sys.stderr)
        return 1
    if why := verdict(served(text), time.time()):
        print(f"unhealthy: {why}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
