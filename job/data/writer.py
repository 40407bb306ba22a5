"""A token stream -> fixed-size shards, resumable after a kill at any instant.

The stream is cut the same way every time: the first `val_tokens` tokens go to val shards, the
rest to train shards of `shard_tokens` each, the last one shorter; a document may straddle two
shards. After each shard is written (atomically), the state file `.prepare.json` records the
shard list and where the next token comes from: (file, record, skip) = the document the shard
boundary fell in and how many of its tokens are already in shards. A rerun reads the source from
that document on, drops `skip` tokens, and produces exactly the bytes an uninterrupted run would.
A finished shard is never written again.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np

from job.data.encode import Encoded
from job.data.shards import encode_shard, shard_name
from job.fileio import atomic_write_bytes, atomic_write_json, read_json, sha256_file
from job.tokenizer import EOT

STATE = ".prepare.json"


def load_state(data_dir: Path) -> dict[str, Any] | None:
    return read_json(data_dir / STATE)


def fresh_state(settings: dict[str, Any]) -> dict[str, Any]:
    return {"settings": settings, "shards": [], "next": [0, 0, 0], "documents": 0, "bytes": 0, "complete": False}


class ShardWriter:
    def __init__(self, data_dir: Path, state: dict[str, Any]):
        self.dir, self.state = data_dir, state
        s = state["settings"]
        self.shard_tokens, self.val_tokens, self.max_tokens = s["shard_tokens"], s["val_tokens"], s["max_tokens"]
        self.written = sum(e["tokens"] for e in state["shards"])  # tokens in finished shards
        self.bytes_pending = 0  # text bytes read since the last finished shard (for the bar)
        self.buf = np.empty(max(self.shard_tokens, 1), dtype=np.uint16)
        self.fill = 0
        self._plan()

    @property
    def tokens(self) -> int:
        return self.written + self.fill

    @property
    def done(self) -> bool:
        return self.cap == 0

    def _plan(self) -> None:
        """Split, index and size of the shard being filled; size 0 once max_tokens is reached."""
        val_done = sum(e["tokens"] for e in self.state["shards"] if e["split"] == "val")
        if val_done < self.val_tokens:
            self.split, size = "val", min(self.shard_tokens, self.val_tokens - val_done)
        else:
            self.split, size = "train", self.shard_tokens
        self.index = sum(1 for e in self.state["shards"] if e["split"] == self.split)
        if self.max_tokens:
            size = min(size, self.max_tokens - self.written)
        self.cap = max(size, 0)

    def add(self, batch: Encoded, lead: int = 0) -> None:
        """Place a batch's tokens, from token `lead` on, finishing shards as they fill."""
        self.bytes_pending += batch.nbytes
        ends = np.cumsum(batch.lengths)
        c, total = lead, int(ends[-1]) if ends.size else 0
        while c < total and not self.done:
            n = min(self.cap - self.fill, total - c)
            self.buf[self.fill:self.fill + n] = batch.tokens[c:c + n]
            self.fill += n
            c += n
            if self.fill == self.cap:
                d = int(np.searchsorted(ends, c, side="left"))  # the document token c-1 belongs to
                start = int(ends[d] - batch.lengths[d])
                file, record = batch.positions[d]
                self._finish([file, record, c - start])

    def close(self) -> None:
        """The source is exhausted (or max_tokens reached): write what is left and mark complete."""
        if self.fill and self.split == "val" and not self.state["shards"]:
            # Less input than one val shard, so nothing is on disk yet: hold out the first tenth as
            # val rather than leave nothing to train on.
            tokens = self.buf[:self.fill].copy()
            cut = max(1, tokens.size // 10)
            self.cap = self.fill = cut
            self.buf[:cut] = tokens[:cut]
            self._finish(None)
            self.split, self.index = "train", 0
            self.cap = self.fill = tokens.size - cut
            self.buf[:self.fill] = tokens[cut:]
        if self.fill:
            self._finish(None)
        self.state["complete"] = True
        self._save()

    def _finish(self, next_position: list[int] | None) -> None:
        path = self.dir / shard_name(self.split, self.index)
        tokens = self.buf[:self.fill]
        payload = encode_shard(tokens)
        sha = hashlib.sha256(payload).hexdigest()
        # Killed after the rename but before the state was saved: the shard is already there,
        # whole (renames are atomic) and, the stream being deterministic, the same. Keep it.
        if not (path.is_file() and sha256_file(path) == sha):
            atomic_write_bytes(path, payload)
        docs = int(np.count_nonzero(tokens == EOT))  # one EOT starts every document, text never makes one
        self.state["shards"].append({"split": self.split, "file": path.name, "tokens": int(tokens.size),
                                     "sha256": sha, "documents": docs})
        self.state["documents"] += docs
        self.state["bytes"] += self.bytes_pending
        self.bytes_pending = 0
        if next_position is not None:
            self.state["next"] = next_position
        self.written += self.fill
        self.fill = 0
        self._plan()
        self._save()

    def _save(self) -> None:
        atomic_write_json(self.dir / STATE, self.state)
