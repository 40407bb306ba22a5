"""`--help` explains every setting, from the one place settings are described (job/config.py),
and shows every help text as written: no `[...]` taken for markup and dropped."""

from __future__ import annotations

import inspect
import re
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pytest
import typer
from harness import ROOT, job_env, run_job

from job.cli import app
from job.config import PRESETS, Config, resolve
from job.helptext import settings_help, settings_table
from job.helptext import shown as shown_value

COMMANDS = [info.name or info.callback.__name__ for info in app.registered_commands]


def rendered_help(*command: str) -> str:
    """`python -m job COMMAND --help` as a terminal shows it, the panels' borders removed and
    lines joined, so a phrase wrapped over two lines reads as one."""
    res = run_job([*command, "--help"], cwd=ROOT, env=job_env(COLUMNS="160", TERMINAL_WIDTH="160"), timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
    return " ".join(re.sub(r"[│╭╮╰╯─]", " ", res.stdout).split())


def given_help(callback) -> list[str]:
    """The help texts a command was given in the code: its docstring and each parameter's help."""
    texts = [inspect.getdoc(callback) or ""]
    for param in inspect.signature(callback).parameters.values():
        if isinstance(param.default, typer.models.ParameterInfo) and param.default.help:
            texts.append(param.default.help)
    return texts


def test_every_setting_has_one_short_phrase_and_a_group():
    missing = [f.name for f in fields(Config) if not f.metadata.get("help")]
    assert not missing, (f"Config fields without a help phrase: {', '.join(missing)}; write each line in "
                         f"job/config.py as  name: type = setting(default, \"what it does\")")
    for s in settings_help():
        assert len(s.phrase) <= 90 and "\n" not in s.phrase, f"{s.name}: one short phrase, please: {s.phrase!r}"
    assert fields(Config)[0].metadata["group"], "Config's first field needs a group title: setting(..., \"Title\")"
    preset = next(s for s in settings_help() if s.name == "preset")
    assert all(name in preset.phrase for name in PRESETS), f"preset's phrase must name every preset: {list(PRESETS)}"


def test_configuration_doc_settings_table_is_the_one_config_writes():
    doc = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    assert settings_table() in doc, ("docs/configuration.md's settings table is stale; run "
                                     ".venv/bin/python scripts/settings_table.py")


def test_a_default_names_the_value_of_every_preset():
    presets = {p: resolve({"preset": p}, environ={}, dotenv=None) for p in PRESETS}
    shown = {s.name: s.default for s in settings_help()}
    assert shown["n_embd"] == "96 (tiny), 384 (gpt2-40m), 768 (gpt2-124m)"
    assert shown["recipe"] == "modern (every preset)" and shown["preset"] == "tiny"
    for name, default in shown.items():
        if name == "preset":
            continue
        values = {p: shown_value(getattr(cfg, name)) for p, cfg in presets.items()}
        pairs = re.findall(r"(\S+?) \(([^)]+)\)(?:, |$)", default)
        if not pairs:  # no preset sets it: the built-in default, which every preset keeps
            assert set(values.values()) == {default} == {shown_value(getattr(Config, name))}, name
        elif pairs[0][1] == "every preset":
            assert set(values.values()) == {pairs[0][0]} and default.endswith("(every preset)"), name
        else:
            said = {p: value for value, names in pairs for p in names.split(", ")}
            assert said == values, f"{name}: --help says {default!r}, the presets resolve to {values}"
        assert len(default) <= 60 and "from preset" not in default, f"{name}: {default!r}"


@pytest.mark.e2e
@pytest.mark.parametrize("command", ["train", "plan"])
def test_every_setting_shows_its_phrase_default_and_env_name_in_its_group(command):
    text = rendered_help(command)
    for s in settings_help():
        flag = "--" + s.name.replace("_", "-")
        assert re.search(rf"{flag}\b.*?{re.escape(s.phrase)} \[default: {re.escape(s.default)}; env: {s.env}\]",
                         text), f"{command} --help: {flag} lacks its phrase, default or env name"
    groups = list(dict.fromkeys(s.group for s in settings_help()))
    assert len(groups) >= 6
    at = [text.index(f"Settings: {g}") for g in groups]
    assert at == sorted(at), "the settings' panels are not in Config's order"
    assert "<bool>" not in text


@pytest.mark.e2e
@pytest.mark.parametrize("command", [None, *COMMANDS])
def test_no_bracketed_help_text_is_eaten(command):
    text = rendered_help(*([command] if command else []))
    if command is None:
        texts = given_help(app.registered_callback.callback)
    else:
        info = next(i for i in app.registered_commands if (i.name or i.callback.__name__) == command)
        texts = given_help(info.callback)
    bracketed = [b for t in texts for b in re.findall(r"\[[^\]]*\]", t)]
    if command in ("train", "plan", "status"):
        assert bracketed, "these commands' help has [...] text; the test would check nothing"
    for b in bracketed:
        assert " ".join(b.split()) in text, f"{command or 'job'} --help dropped {b!r}"
    assert "<bool>" not in text


@pytest.mark.e2e
def test_the_shell_completes_commands_and_every_setting_flag():
    """Shell completion is on: the `job` script completes a command and a setting's flag, as bash
    asks it to (what `job --install-completion` sets up), and prints its bash script."""
    job = Path(sys.executable).with_name("job")
    assert job.is_file(), "the venv has no `job` script: pip install -e . made it"

    def complete(words: str) -> list[str]:
        env = {**job_env(), "_JOB_COMPLETE": "complete_bash", "COMP_WORDS": words,
               "COMP_CWORD": str(len(words.split()) - 1)}
        res = subprocess.run([str(job)], env=env, capture_output=True, text=True, timeout=60)
        assert res.returncode == 0, res.stderr
        return res.stdout.split()

    assert complete("job tr") == ["train"]
    assert complete("job train --max-it") == ["--max-iters"]
    assert "--price-per-gpu-hour" in complete("job plan --price")
    # the shell named, not detected from this process's parents (which may be sh, or cron)
    script = subprocess.run([str(job), "--show-completion", "bash"], capture_output=True, text=True, timeout=60,
                            env={**job_env(), "_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION": "1"})
    assert script.returncode == 0 and "_job_completion" in script.stdout and "complete " in script.stdout
