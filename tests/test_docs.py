"""The docs say what the code does: the README's map names every module, every relative link
reaches a file and a heading, the generated tables are the ones the code writes (with the model's
own parameter counts), the figures quoted from `job plan` are what it computes, the README fits
on a screen or three, and nothing points outside the repository."""

from __future__ import annotations

import dataclasses
import importlib.util
import re
import subprocess
from pathlib import Path

import pytest
import torch
from harness import ROOT

from job.commands.plan import make_plan
from job.config import PRESETS, resolve
from job.flops import param_counts
from job.model import build_model

README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
MARKDOWN = [README, *DOCS]
# Built from pieces so that this file does not name them itself.
OUTSIDE = ("../" + "shared", "shared/" + "design.md", "scenario" + ".md")


def load_settings_table_script():
    spec = importlib.util.spec_from_file_location("settings_table", ROOT / "scripts" / "settings_table.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def section(text: str, heading: str) -> str:
    """The text under a `## heading`, up to the next heading of level 2 or 1."""
    start = text.index(f"\n## {heading}\n")
    end = re.search(r"\n#{1,2} ", text[start + 1:])
    return text[start:start + 1 + end.start()] if end else text[start:]


def prose(text: str) -> str:
    """Markdown without fenced code blocks, and inline code spans reduced to a placeholder: what
    is left is where links can be."""
    text = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    return re.sub(r"`[^`\n]*`", "code", text)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lowercase, every character but word characters, '-', '_'
    and spaces dropped, spaces to '-'."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every heading's anchor in a Markdown file, repeated ones numbered -1, -2 as GitHub does."""
    text = re.sub(r"^```.*?^```", "", path.read_text(encoding="utf-8"), flags=re.S | re.M)
    seen: dict[str, int] = {}
    out = set()
    for m in re.finditer(r"^#{1,6} +(.+?) *#*$", text, flags=re.M):
        base = slug(m.group(1))
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


def relative_links(path: Path) -> list[str]:
    """The targets of `[text](target)` and `![alt](target)` that are not web or mail addresses."""
    targets = re.findall(r"\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)", prose(path.read_text(encoding="utf-8")))
    return [t for t in targets if not re.match(r"[a-z][a-z0-9+.-]*:", t)]


def broken_links(path: Path) -> list[str]:
    """Each relative link of a Markdown file that reaches no file, or no heading of its file."""
    bad = []
    for target in relative_links(path):
        file, _, anchor = target.partition("#")
        dest = (path.parent / file).resolve() if file else path
        if not dest.exists():
            bad.append(f"{path.name}: {target} (no file {dest})")
        elif anchor and (dest.suffix != ".md" or anchor not in anchors(dest)):
            bad.append(f"{path.name}: {target} (no heading #{anchor} in {dest.name})")
    return bad


def test_the_readme_fits_and_starts_with_the_two_commands():
    text = README.read_text(encoding="utf-8")
    lines = text.count("\n") + (not text.endswith("\n"))
    assert lines < 300, f"README.md has {lines} lines; move detail into docs/ (limit: under 300)"
    assert "make train" in text and "make test" in text
    for quickstart in ("make cron-install", "make docker-build", "make monitor", "job prepare --source fineweb-edu",
                       "job plan --preset gpt2-40m", "job train --preset gpt2-40m"):
        assert quickstart in text, f"README.md lacks the quickstart command {quickstart!r}"


def test_the_readme_map_names_every_module_and_no_other():
    modules = {p.relative_to(ROOT).as_posix() for p in (ROOT / "job").rglob("*.py")
               if p.name != "__init__.py" and "__pycache__" not in p.parts}
    assert {"job/train.py", "job/__main__.py", "job/data/loader.py"} <= modules  # the walk found the package
    named = set(re.findall(r"`(job/[\w/]+\.py)`", section(README.read_text(encoding="utf-8"), "Where things are")))
    assert not modules - named, f"README.md's 'Where things are' leaves out: {sorted(modules - named)}"
    assert not named - modules, f"README.md's 'Where things are' names missing modules: {sorted(named - modules)}"


def test_slug_follows_githubs_rules():
    assert slug("The GPU check: `scripts/gpu/gpu_check.sh`") == "the-gpu-check-scriptsgpugpu_checksh"
    assert slug("How `tiny`'s learning rates were chosen") == "how-tinys-learning-rates-were-chosen"
    assert slug("Live monitoring (Prometheus + Grafana)") == "live-monitoring-prometheus--grafana"
    assert slug("`dtype=auto` on a CPU") == "dtypeauto-on-a-cpu"


def test_the_link_check_finds_a_broken_link(tmp_path):
    (tmp_path / "other.md").write_text("# Other\n\n## A heading\n\n```\n## not a heading\n```\n")
    page = tmp_path / "page.md"
    page.write_text("[ok](other.md#a-heading) [gone](missing.md) [no heading](other.md#not-a-heading)\n"
                    "[self](#page) ![pic](other.md) `[code](nowhere.md)` [web](https://example.org/x.md)\n\n# Page\n")
    assert broken_links(page) == ["page.md: missing.md (no file " + str(tmp_path / "missing.md") + ")",
                                  "page.md: other.md#not-a-heading (no heading #not-a-heading in other.md)"]


@pytest.mark.parametrize("path", MARKDOWN, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_relative_link_reaches_a_file_and_heading(path):
    assert not broken_links(path), "\n".join(broken_links(path))


def test_the_docs_are_linked_from_the_readme():
    assert len(DOCS) >= 8
    linked = {t.partition("#")[0] for t in relative_links(README)}
    missing = [p.name for p in DOCS if f"docs/{p.name}" not in linked]
    assert not missing, f"README.md links none of: {missing}"
    assert any("report-example.png" in t for p in DOCS for t in relative_links(p)), "docs/report-example.png unlinked"


def test_no_tracked_file_points_outside_the_repository():
    res = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True)
    files = [f for f in res.stdout.decode().split("\0") if f]
    assert "README.md" in files and "job/config.py" in files
    hits = [f"{f}: {word}" for f in files if (ROOT / f).is_file()
            for word in OUTSIDE if word.encode() in (ROOT / f).read_bytes()]
    assert not hits, "tracked files refer to files outside the repository:\n" + "\n".join(hits)


def test_the_generated_tables_are_the_ones_the_code_writes():
    script = load_settings_table_script()
    files = set()
    for rel, begin, end, table in script.tables():
        text = (ROOT / rel).read_text(encoding="utf-8")
        assert text.count(begin) == 1 and text.count(end) == 1, f"{rel}: the table's marker lines, once each"
        assert script.with_table(text, begin, end, table) == text, (
            f"{rel}: the table between its markers is stale; run .venv/bin/python scripts/settings_table.py")
        files.add(rel)
    assert files == {"README.md", "docs/configuration.md"}


def presets_rows() -> dict[str, list[str]]:
    text = README.read_text(encoding="utf-8")
    table = text[text.index("<!-- presets table"):text.index("<!-- end of presets table -->")]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in table.splitlines() if line.startswith("| `")]
    return {row[0].strip("`"): row for row in rows}


def test_the_presets_table_counts_parameters_as_the_model_does():
    rows = presets_rows()
    assert list(rows) == list(PRESETS)
    for name, row in rows.items():
        cfg = resolve({"preset": name}, environ={}, dotenv=None)
        with torch.device("meta"):  # shapes only: gpt2-124m costs no memory and no time
            model = build_model(cfg.to_dict())
            tied = build_model({**cfg.to_dict(), "tie_embeddings": True})
        assert row[-2] == f"{model.num_params() / 1e6:.2f} M", f"{name}: job train prints {model.num_params():,}"
        assert row[-1] == f"{tied.num_params() / 1e6:.2f} M", f"{name}: nanoGPT counts {tied.num_params():,}"
        assert row[1:5] == [str(cfg.n_layer), str(cfg.n_head), str(cfg.n_embd), str(cfg.block_size)]
        assert row[7:9] == [f"{cfg.max_iters:,}", f"{cfg.tokens_per_iter * cfg.max_iters:,}"]
    assert rows["gpt2-40m"][-1] == "40.56 M"  # the model's quoted size is nanoGPT's count


def test_parameter_figures_in_the_docs_are_the_codes():
    counts = set()
    for name in PRESETS:
        cfg = resolve({"preset": name}, environ={}, dotenv=None)
        for c in (cfg, dataclasses.replace(cfg, tie_embeddings=True)):
            counts |= {f"{n / 1e6:.2f}" for n in param_counts(c).values() if n}
    quoted = {(p.name, m) for p in MARKDOWN for m in re.findall(r"\b(\d+\.\d\d) ?M\b", p.read_text(encoding="utf-8"))}
    assert quoted, "no parameter figure found; the check would check nothing"
    wrong = sorted(f"{name}: {m} M" for name, m in quoted if m not in counts)
    assert not wrong, f"parameter figures the code does not compute: {wrong}"


def test_the_hours_quoted_from_job_plan_are_its_own():
    plan = make_plan(resolve({"preset": "gpt2-40m"}, environ={}, dotenv=None), gpu="rtx-4070")
    hours = [row["hours"] for row in plan["time"]]
    expected = f"{min(hours):.0f} to {max(hours):.0f} hours on an RTX 4070"
    assert expected in " ".join(README.read_text(encoding="utf-8").split()), f"README.md should say {expected!r}"
    for path in MARKDOWN:
        for m in re.finditer(r"\d+ to \d+ hours on an RTX 4070", " ".join(path.read_text(encoding="utf-8").split())):
            assert m.group(0) == expected, f"{path.name} says {m.group(0)!r}; job plan computes {expected!r}"
