#!/usr/bin/env bash
# The programs `make test` runs besides Python: a real Prometheus and promtool (the monitoring and
# alert tests start them), a real Alertmanager and amtool (Debian names the binary
# prometheus-alertmanager; tests/test_alertmanager.py) and tini (the image's PID 1, for the tests
# that run its entrypoint).
# Invariant: when this exits 0 every one of them is on PATH, so no test lacks its tool. Missing
# ones are installed once with apt-get (as root, or through sudo); where that cannot be done, one
# line names them and the command that installs them, and this exits 2 before any test runs.
set -euo pipefail

tools=(prometheus promtool prometheus-alertmanager amtool tini)
packages=(prometheus prometheus-alertmanager tini)

missing() {  # the absent tools, as "a, b"
    local tool list=""
    for tool in "${tools[@]}"; do
        command -v "$tool" >/dev/null 2>&1 || list+="${list:+, }$tool"
    done
    echo "$list"
}

absent=$(missing)
[ -z "$absent" ] && exit 0
need="error: make test needs $absent; install them: sudo apt-get install -y ${packages[*]}"

as_root=()
if [ "$(id -u)" != 0 ]; then
    if command -v sudo >/dev/null 2>&1 && { [ -t 0 ] || sudo -n true 2>/dev/null; }; then
        as_root=(sudo)
    else
        as_root=(none)
    fi
fi
if ! command -v apt-get >/dev/null 2>&1 || [ "${as_root[*]}" = none ]; then
    echo "$need" >&2
    exit 2
fi
echo "make test: installing ${packages[*]} with apt-get, for $absent (once)" >&2
"${as_root[@]}" apt-get update -qq >/dev/null \
    && "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
        -o DPkg::Lock::Timeout=300 --no-install-recommends "${packages[@]}" >/dev/null \
    || { echo "$need" >&2; exit 2; }  # apt-get's own errors went to stderr above it
absent=$(missing)
if [ -n "$absent" ]; then
    echo "error: apt-get installed ${packages[*]} but $absent is still not on PATH; put it there" >&2
    exit 2
fi
