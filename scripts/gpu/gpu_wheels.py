"""The wheels a bare GPU box lacks for scripts/gpu/gpu_check.sh, and the proof that they are enough.

Invariant: the set in the destination is closed for the target Python and platform: every
Requires-Dist of every carried wheel (markers evaluated for that Python on linux x86_64) names a
carried wheel or a distribution the box has (scripts/gpu/gpu_box.txt), and nothing carried is unneeded.

    python scripts/gpu/gpu_wheels.py build --dest .whl            for the box: CPython 3.12, manylinux x86_64
    python scripts/gpu/gpu_wheels.py build --dest D --python-version 3.11     the same set for another Python
    python3 scripts/gpu/gpu_wheels.py missing .whl                on the box: the wheels it still lacks

`build` lets pip resolve with --only-binary; a dependency published only as an sdist (future) is
built here into a pure-python wheel, which is refused unless it is tagged none-any. `missing`
uses only the standard library, since it runs on the box before anything is installed.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import zipfile
from email.parser import Parser
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BOX = ROOT / "scripts" / "gpu" / "gpu_box.txt"
PLATFORMS = ("manylinux2014_x86_64", "manylinux_2_17_x86_64", "manylinux_2_28_x86_64", "any")


def canon(name: str) -> str:
    """A distribution name as PEP 503 compares them."""
    return re.sub(r"[-_.]+", "-", name).lower()


def read_box(path: Path = BOX) -> set[str]:
    lines = (line.split("#", 1)[0].strip() for line in path.read_text().splitlines())
    return {canon(line) for line in lines if line}


def roots(box: set[str], requirements: Path = ROOT / "requirements.txt") -> list[str]:
    """The job's pinned requirements that the box does not have: what the carried set starts from."""
    pins = [line.strip() for line in requirements.read_text().splitlines() if "==" in line and line[0] != "#"]
    return [pin for pin in pins if canon(pin.split("==")[0]) not in box]


def wheel_name(path: Path) -> str:
    return canon(path.name.split("-")[0])


def wheel_requires(path: Path) -> list[str]:
    """The Requires-Dist lines of a wheel's METADATA."""
    with zipfile.ZipFile(path) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA") and n.count("/") == 1)
        msg = Parser().parsestr(z.read(meta).decode())
    return msg.get_all("Requires-Dist") or []


def target_env(python_version: str) -> dict[str, str]:
    """The marker environment of CPython `python_version` on linux x86_64."""
    full = python_version if python_version.count(".") == 2 else python_version + ".0"
    return {"python_version": ".".join(full.split(".")[:2]), "python_full_version": full, "os_name": "posix",
            "sys_platform": "linux", "platform_system": "Linux", "platform_machine": "x86_64",
            "implementation_name": "cpython", "platform_python_implementation": "CPython", "extra": ""}


def closure(start: list[str], wheels: dict[str, Path], box: set[str], env: dict[str, str]
            ) -> tuple[set[str], list[str]]:
    """(carried names reached from `start`, requirements neither carried nor on the box)."""
    from packaging.requirements import Requirement

    reached: set[str] = set()
    missing: list[str] = []
    todo = list(start)
    while todo:
        req = Requirement(todo.pop())
        name = canon(req.name)
        if (req.marker and not req.marker.evaluate(env)) or name in box or name in reached:
            continue
        if name not in wheels:
            missing.append(str(req))
            continue
        reached.add(name)
        todo += wheel_requires(wheels[name])
    return reached, missing


def pip(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check", *args],
                          capture_output=True, text=True)


def download(dest: Path, python_version: str, reqs: list[str]) -> None:
    """pip download of the closure as binaries; each sdist-only dependency built as a pure wheel."""
    dest.mkdir(parents=True, exist_ok=True)
    target = ["--python-version", python_version, "--only-binary=:all:", "--implementation", "cp",
              *[a for p in PLATFORMS for a in ("--platform", p)]]
    for _ in range(20):
        res = pip("download", "-q", *target, "--find-links", str(dest), "-d", str(dest), *reqs)
        if res.returncode == 0:
            return
        m = re.search(r"No matching distribution found for (\S+)", res.stderr)
        if not m:
            sys.exit(f"pip download failed:\n{res.stderr[-3000:]}")
        before = set(dest.glob("*.whl"))
        built = pip("wheel", "-q", "--no-deps", "-w", str(dest), m.group(1))
        if built.returncode != 0:
            sys.exit(f"{m.group(1)}: no wheel for Python {python_version} and no sdist that builds:\n"
                     f"{built.stderr[-2000:]}")
        impure = [w.name for w in set(dest.glob("*.whl")) - before if not w.name.endswith("-none-any.whl")]
        if impure:
            sys.exit(f"built {impure} for this machine only: {m.group(1)} has no wheel for Python {python_version}")
    sys.exit("pip download kept failing; giving up after 20 sdist builds")


def build(dest: Path, python_version: str) -> None:
    box = read_box()
    start = roots(box)
    download(dest, python_version, start)
    wheels = {wheel_name(w): w for w in dest.glob("*.whl")}
    reached, missing = closure(start, wheels, box, target_env(python_version))
    if missing:
        sys.exit(f"not closed: {missing} are neither carried nor on the box ({BOX.name})")
    for name, path in wheels.items():
        if name not in reached:  # the box's own (pyyaml), downloaded because pip does not know the box
            path.unlink()
    size = sum(w.stat().st_size for w in dest.glob("*.whl"))
    print(f"{dest}: {len(reached)} wheels for CPython {python_version} linux x86_64, {size / 2**20:.1f} MiB")


def missing_here(dest: Path) -> list[Path]:
    """The carried wheels whose distribution this Python does not have installed."""
    have = {canon(d.metadata["Name"]) for d in metadata.distributions() if d.metadata["Name"]}
    return sorted(w for w in dest.glob("*.whl") if wheel_name(w) not in have)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="download (and build) the closed set into --dest")
    b.add_argument("--dest", type=Path, default=ROOT / ".whl")
    b.add_argument("--python-version", default="3.12")
    m = sub.add_parser("missing", help="print the carried wheels this Python lacks, one a line")
    m.add_argument("dest", type=Path)
    args = ap.parse_args()
    if args.cmd == "build":
        build(args.dest, args.python_version)
    else:
        for wheel in missing_here(args.dest):
            print(wheel)


if __name__ == "__main__":
    main()
