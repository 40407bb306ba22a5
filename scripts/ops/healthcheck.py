"""Docker HEALTHCHECK: healthy while the job's Prometheus endpoint answers. Standard library only,
so it costs no torch import every 30 s."""

from __future__ import annotations

import os
import sys
import urllib.request


def main() -> int:
    port = os.environ.get("JOB_METRICS_PORT", "9838")
    if port == "0":  # metrics turned off: nothing to probe, so the container counts as healthy
        return 0
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            ok = resp.status == 200 and b"trainer_" in resp.read()
    except OSError as e:
        print(f"unhealthy: metrics endpoint on port {port}: {e}", file=sys.stderr)
        return 1
    if not ok:
        print(f"unhealthy: port {port} answers but serves no trainer_ metrics", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
