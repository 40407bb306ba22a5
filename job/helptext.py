"""What help says: each setting's line in `--help` and the docs' tables (the settings table in
docs/configuration.md, the presets table in README.md), from the one place a setting is described
(its `setting(...)` line in job/config.py), and the command line's help shown as written.

Defaults are shown as `job train` uses them: a setting every preset leaves alone shows its
built-in default; one the presets set shows each preset's value. scripts/settings_table.py
writes the tables; tests/test_help.py and tests/test_docs.py hold `--help` and the docs to them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, fields
from typing import Any

import click
from rich.markup import escape
from typer.core import TyperCommand, TyperGroup

from job.config import ENV_PREFIX, PRESETS, Config, resolve


@dataclass(frozen=True)
class SettingHelp:
    """What `job train --help` and the settings table (docs/configuration.md) say about one setting."""

    name: str
    group: str
    phrase: str
    default: str
    env: str

    @property
    def line(self) -> str:
        return f"{self.phrase} [default: {self.default}; env: {self.env}]"


def shown(value: Any) -> str:
    """A value as one writes it in .env or TOML: true/false, numbers as Python prints them, "" for empty."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value) if value != "" else '""'


def preset_configs() -> dict[str, Config]:
    """Each preset as `job train --preset NAME` resolves it with nothing else set (its own recipe)."""
    return {name: resolve({"preset": name}, environ={}, dotenv=None) for name in PRESETS}


def default_shown(name: str, presets: dict[str, Config] | None = None) -> str:
    """The value `job train` uses when nothing but the preset sets it: the built-in default where
    no preset changes it, "X (every preset)" where all presets set the same X, else each preset's
    value, presets of one value together: "96 (tiny), 384 (gpt2-40m), 768 (gpt2-124m)"."""
    built_in = getattr(Config, name)
    if name == "preset":
        return shown(built_in)
    by_value: dict[str, list[str]] = {}
    for preset, cfg in (presets or preset_configs()).items():
        by_value.setdefault(shown(getattr(cfg, name)), []).append(preset)
    if list(by_value) == [shown(built_in)]:
        return shown(built_in)
    if len(by_value) == 1:
        return f"{next(iter(by_value))} (every preset)"
    return ", ".join(f"{value} ({', '.join(names)})" for value, names in by_value.items())


def settings_help() -> list[SettingHelp]:
    """Every setting in Config's order, in the group whose title came last. A field without a
    phrase has an empty one here, and tests/test_help.py fails naming it."""
    out, group, presets = [], "Settings", preset_configs()
    for f in fields(Config):
        group = f.metadata.get("group") or group
        out.append(SettingHelp(f.name, group, f.metadata.get("help", ""), default_shown(f.name, presets),
                               ENV_PREFIX + f.name.upper()))
    return out


def presets_table() -> str:
    """The presets side by side, as resolved with their own recipe: shape, batch, schedule length
    and parameters, counted as `job train` prints them (job/flops.py, no model built) and as
    nanoGPT counts them (tied head). scripts/settings_table.py writes it into README.md."""
    from job.flops import param_counts

    rows = ["| preset | layers | heads | width | block | micro-batch x grad_accum | tokens/iteration | iterations "
            "| tokens in all | recipe | parameters (`job train`) | nanoGPT's count (tied head) |",
            "| --- " * 12 + "|"]
    for name, c in preset_configs().items():
        tied = param_counts(dataclasses.replace(c, tie_embeddings=True))["nanogpt"]
        rows.append(f"| `{name}` | {c.n_layer} | {c.n_head} | {c.n_embd} | {c.block_size} | {c.batch_size} x "
                    f"{c.grad_accum} | {c.tokens_per_iter:,} | {c.max_iters:,} | {c.tokens_per_iter * c.max_iters:,} "
                    f"| {c.recipe} | {param_counts(c)['nanogpt'] / 1e6:.2f} M | {tied / 1e6:.2f} M |")
    return "\n".join(rows) + "\n"


def settings_table() -> str:
    """The settings table of docs/configuration.md (scripts/settings_table.py writes it there)."""
    rows = ["| setting | default | environment | what it does |", "| --- | --- | --- | --- |"]
    group = ""
    for s in settings_help():
        if s.group != group:
            group = s.group
            rows.append(f"| **{group}** | | | |")
        rows.append(f"| `{s.name}` | {s.default} | `{s.env}` | {s.phrase} |")
    return "\n".join(rows) + "\n"



class _AsWritten:
    """Help as written: rich markup escaped in every help text (typer renders it with rich, which
    would take `[default: ...]` or `[job]` for a style tag and drop it), and no `<bool>` type
    shown for on/off flags."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.help = escape(self.help) if self.help else self.help
        for param in self.params:
            if getattr(param, "help", None):
                param.help = escape(param.help)  # type: ignore[attr-defined]

    def get_params(self, ctx: click.Context) -> list[click.Parameter]:
        params = super().get_params(ctx)  # type: ignore[misc]
        for param in params:
            if getattr(param, "is_flag", False) and param.metavar is None:
                param.metavar = ""  # the --help option too, which click adds here
        return params


class Command(_AsWritten, TyperCommand):
    """A command whose help shows as written."""


class Group(_AsWritten, TyperGroup):
    """The command group, whose help shows as written."""
