"""Token shards in llm.c's format, and the manifest that vouches for them.

A shard is a 256 x int32 header (magic 20240520, version 1, token count, then zeros) followed by
the tokens as uint16. A shard only ever appears under its final name whole: it is written to a
temporary name, fsynced and renamed. The manifest is written last, the same way, and is what
makes a dataset "prepared".
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any

import numpy as np

from job.errors import UserError
from job.fileio import atomic_write_bytes, atomic_write_json, read_json, sha256_file

MAGIC = 20240520
VERSION = 1
HEADER_INTS = 256
HEADER_BYTES = HEADER_INTS * 4
MANIFEST = "manifest.json"


class ShardError(UserError):
    """A shard or manifest is missing, truncated or corrupt; the message names the file."""


def shard_name(split: str, index: int) -> str:
    return f"{split}_{index:06d}.bin"


def encode_shard(tokens: np.ndarray) -> bytes:
    if tokens.size and int(tokens.max()) >= 2**16:
        raise ShardError("token id does not fit in uint16; GPT-2 ids are below 50257")
    header = np.zeros(HEADER_INTS, dtype=np.int32)
    header[:3] = (MAGIC, VERSION, tokens.size)
    return header.tobytes() + tokens.astype(np.uint16).tobytes()


def write_shard(path: Path, tokens: np.ndarray) -> dict[str, Any]:
    """Write one shard atomically; returns its manifest entry."""
    payload = encode_shard(tokens)
    atomic_write_bytes(path, payload)
    return {"file": path.name, "tokens": int(tokens.size), "sha256": hashlib.sha256(payload).hexdigest()}


def read_header(path: Path) -> int:
    """Check a shard's header and size cheaply; returns its token count."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            header = np.frombuffer(f.read(HEADER_BYTES), dtype=np.int32)
    except OSError as e:
        raise ShardError(f"{path}: cannot read shard ({e.strerror})") from None
    if header.size != HEADER_INTS or header[0] != MAGIC or header[1] != VERSION:
        raise ShardError(f"{path}: not an llm.c token shard (bad header); re-run `job prepare`")
    count = int(header[2])
    if size != HEADER_BYTES + 2 * count:
        raise ShardError(f"{path}: truncated or padded shard ({size} bytes, header says "
                         f"{HEADER_BYTES + 2 * count}); delete it and re-run `job prepare`")
    return count


def open_shard(path: Path) -> np.memmap:
    count = read_header(path)
    return np.memmap(path, dtype=np.uint16, mode="r", offset=HEADER_BYTES, shape=(count,))


def make_manifest(source: dict[str, Any], shards: list[dict[str, Any]], splits: dict[str, dict[str, int]],
                  tokenizer: dict[str, Any], settings: dict[str, Any] | None = None) -> dict[str, Any]:
    """What a manifest holds (the one definition): the source, the tokenizer, documents and tokens
    per split, every shard with its split, token count and sha256, and a fingerprint of them all
    that a run's checkpoints record, so a run never resumes on other data."""
    digest = hashlib.sha256("".join(s["sha256"] for s in shards).encode()).hexdigest()
    return {
        "version": 1,
        "source": source,
        "tokenizer": tokenizer,
        **({"settings": settings} if settings is not None else {}),
        "splits": splits,
        "total_tokens": sum(e["tokens"] for e in shards),
        "shards": shards,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "fingerprint": digest[:16],
    }


def write_manifest(data_dir: Path, manifest: dict[str, Any]) -> None:
    atomic_write_json(data_dir / MANIFEST, manifest, indent=2)


def load_manifest(data_dir: Path) -> dict[str, Any]:
    path = data_dir / MANIFEST
    if not path.is_file():
        raise ShardError(f"{data_dir}: no prepared dataset here (no {MANIFEST}); run `job prepare` first")
    manifest = read_json(path)
    if not isinstance(manifest, dict):
        raise ShardError(f"{path}: corrupt manifest; delete {data_dir} and re-run `job prepare`")
    return manifest


def check_dataset(data_dir: Path, verify: bool = False) -> dict[str, Any]:
    """Every shard the manifest lists is there with the right header and size (and, with verify,
    the right sha256). Returns the manifest."""
    manifest = load_manifest(data_dir)
    for entry in manifest["shards"]:
        path = data_dir / entry["file"]
        if read_header(path) != entry["tokens"]:
            raise ShardError(f"{path}: token count differs from {MANIFEST}; re-run `job prepare`")
        if verify and sha256_file(path) != entry["sha256"]:
            raise ShardError(f"{path}: sha256 differs from {MANIFEST} (corrupt shard); delete it and "
                             f"re-run `job prepare`")
    return manifest


def prepared(data_dir: Path) -> dict[str, Any] | None:
    """The manifest if the dataset is prepared and whole (cheap checks), else None."""
    try:
        return check_dataset(data_dir)
    except ShardError:
        return None


def split_tokens(manifest: dict[str, Any], split: str) -> int:
    """Tokens in `split`, as the manifest records them (its totals, else the sum of its shards)."""
    tokens = manifest.get("splits", {}).get(split, {}).get("tokens")
    return int(tokens if tokens is not None else sum(s["tokens"] for s in manifest.get("shards", [])
                                                     if s.get("split") == split))


def split_files(data_dir: Path, manifest: dict[str, Any], split: str) -> list[Path]:
    return [data_dir / s["file"] for s in manifest["shards"] if s["split"] == split]
