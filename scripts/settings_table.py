"""Write the generated tables of the docs from job/config.py, the one place settings and presets
are described:

  the settings table   -> docs/configuration.md  (job.helptext.settings_table)
  the presets table    -> README.md              (job.helptext.presets_table)

Each table sits between its two marker lines below. tests/test_help.py and tests/test_docs.py fail
when one is stale, so `job train --help`, the docs and the code never say different things.
Run it after changing a setting or a preset:  .venv/bin/python scripts/settings_table.py
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from job.helptext import presets_table, settings_table  # noqa: E402

SETTINGS = ("docs/configuration.md",
            "<!-- settings table: written by scripts/settings_table.py from job/config.py -->",
            "<!-- end of settings table -->")
PRESETS = ("README.md",
           "<!-- presets table: written by scripts/settings_table.py from job/config.py -->",
           "<!-- end of presets table -->")


def with_table(text: str, begin: str, end: str, table: str, name: str = "the file") -> str:
    """The text with what lies between the marker lines replaced by `table`."""
    head, found_begin, rest = text.partition(begin)
    _, found_end, tail = rest.partition(end)
    if not found_begin or not found_end:
        raise SystemExit(f"error: {name} lacks the marker lines {begin!r} and {end!r}; put them back")
    return f"{head}{begin}\n{table}{end}{tail}"


def tables() -> list[tuple[str, str, str, str]]:
    """(file, begin marker, end marker, table) for every generated table."""
    return [(*SETTINGS, settings_table()), (*PRESETS, presets_table())]


if __name__ == "__main__":
    for rel, begin, end, table in tables():
        path = ROOT / rel
        path.write_text(with_table(path.read_text(encoding="utf-8"), begin, end, table, rel), encoding="utf-8")
        print(f"wrote {rel}")
