"""Write the README's settings table from job/config.py, the one place each setting is described.

The table sits between the two marker lines below; tests/test_help.py fails when it is stale, so
`job train --help` and the README never say different things.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from job.config import settings_table  # noqa: E402

BEGIN = "<!-- settings table: written by scripts/settings_table.py from job/config.py -->"
END = "<!-- end of settings table -->"


def with_table(readme: str) -> str:
    """The README's text with the table between the markers replaced by the current one."""
    head, begin, rest = readme.partition(BEGIN)
    _, end, tail = rest.partition(END)
    if not begin or not end:
        raise SystemExit(f"error: README.md lacks the marker lines {BEGIN!r} and {END!r}; put them back")
    return f"{head}{BEGIN}\n{settings_table()}{END}{tail}"


if __name__ == "__main__":
    path = ROOT / "README.md"
    path.write_text(with_table(path.read_text(encoding="utf-8")), encoding="utf-8")
