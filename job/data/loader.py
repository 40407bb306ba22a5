"""Batches from memory-mapped shards, in an order fixed by the seed, resumable to the sequence.

The train split is cut into non-overlapping windows of block_size + 1 tokens (inputs and their
next-token targets). Each epoch visits every window once, in a permutation drawn from
(seed, epoch). The loader's whole state is (epoch, cursor): saved in a checkpoint and restored,
the next batch is exactly the one an uninterrupted run would have drawn.

An iteration takes the next batch_size x grad_accum windows of the permutation, and never spans
two epochs: when the rest of an epoch is shorter than an iteration it is dropped. So what an
iteration trains on depends on the position and the sequences per iteration alone, not on how
they are cut into micro-batches: a run resumed on another card with another micro-batch (the
`auto_batch` setting) trains each iteration on the same windows, in other groups.

The state is global: with several processes (job/dist.py) each one advances it past every batch
of the iteration and fetches only its own share (`skip` over the others'), so together they draw
exactly the batches one process would have drawn, and the state, a checkpoint's included, is the
same at any number of processes.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from job.data.shards import ShardError, open_shard
from job.errors import ConfigError
from job.state import LoaderState


class Windows:
    """The windows of one split across its shards; a window never crosses a shard boundary. Every
    batch is checked against the vocabulary as it is fetched (a max over a few thousand ints), so a
    shard holding ids the model cannot embed is named the moment it is reached, not by a crash."""

    def __init__(self, files: list[Path], block_size: int, vocab: int = 2**16):
        self.block_size, self.vocab, self.files = block_size, vocab, files
        self.shards = [open_shard(f) for f in files]
        counts = [max(0, (s.size - 1) // block_size) for s in self.shards]
        self.starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        self.count = int(self.starts[-1])

    def fetch(self, indices: np.ndarray) -> np.ndarray:
        shard_of = np.searchsorted(self.starts, indices, side="right") - 1
        out = np.empty((len(indices), self.block_size + 1), dtype=np.int64)
        for row, (i, s) in enumerate(zip(indices, shard_of, strict=True)):
            offset = (int(i) - int(self.starts[s])) * self.block_size
            out[row] = self.shards[s][offset: offset + self.block_size + 1]
        if out.size and int(out.max()) >= self.vocab:
            row = int(np.argmax(out.max(axis=1) >= self.vocab))
            raise ShardError(f"{self.files[shard_of[row]]}: token id {int(out[row].max())} is outside the vocabulary "
                             f"(ids must be below {self.vocab}); this shard is not GPT-2 tokens, prepare it again "
                             f"with `job prepare`")
        return out


class TrainLoader:
    def __init__(self, files: list[Path], block_size: int, batch_size: int, seed: int,
                 state: LoaderState | None = None, vocab: int = 2**16, per_iteration: int = 1):
        self.windows = Windows(files, block_size, vocab)
        if self.windows.count < batch_size:
            raise ConfigError(f"batch_size: {batch_size} is larger than the train split, which has "
                              f"{self.windows.count} windows of {block_size + 1} tokens; use batch_size <= "
                              f"{self.windows.count}, a smaller block_size, or more data")
        if self.windows.count < batch_size * per_iteration:
            raise ConfigError(f"grad_accum: an iteration of {batch_size} x {per_iteration} sequences is more than the "
                              f"train split's {self.windows.count} windows of {block_size + 1} tokens; use fewer "
                              f"sequences per iteration, a smaller block_size, or more data")
        self.batch_size, self.seed = batch_size, seed
        self.state = state or LoaderState()
        self._order_epoch, self._order = -1, np.empty(0, dtype=np.int64)

    def _permutation(self, epoch: int) -> np.ndarray:
        if epoch != self._order_epoch:
            rng = np.random.default_rng([self.seed, epoch])
            self._order, self._order_epoch = rng.permutation(self.windows.count), epoch
        return self._order

    def _begin(self, st: LoaderState, batches: int) -> None:
        """An iteration of `batches` micro-batches starts at `st`: in the next epoch, if what is
        left of this one is shorter (the rest is dropped)."""
        if st.cursor + batches * self.batch_size > self.windows.count:
            st.epoch, st.cursor = st.epoch + 1, 0

    def _advance(self, st: LoaderState) -> tuple[int, int]:
        """(epoch, first position) of the next batch of the iteration begun in `st`, which moves past it."""
        st.cursor += self.batch_size
        return st.epoch, st.cursor - self.batch_size

    def _picks(self, epoch: int, start: int) -> np.ndarray:
        return np.sort(self._permutation(epoch)[start: start + self.batch_size])

    def next_rows(self) -> np.ndarray:
        """The next batch, an iteration of one, as (batch, block_size + 1) token ids."""
        self._begin(self.state, 1)
        return self._fetch()

    def _fetch(self) -> np.ndarray:
        return self.windows.fetch(self._picks(*self._advance(self.state)))

    def skip(self, batches: int) -> None:
        """Move past the next `batches` batches without reading them (other processes' share)."""
        for _ in range(batches):
            self._advance(self.state)

    def share(self, rank: int, size: int, batches: int) -> Iterator[np.ndarray]:
        """Process `rank` of `size`'s part of the next `batches` batches: the rank-th run of
        batches / size of them. Once all are taken, the state has moved past every one of the
        `batches`, on every rank alike."""
        mine = batches // size
        self._begin(self.state, batches)
        self.skip(rank * mine)
        for _ in range(mine):
            yield self._fetch()
        self.skip((size - 1 - rank) * mine)

    def peek(self, batches: int, state: LoaderState | None = None, per_iteration: int = 1) -> list[np.ndarray]:
        """The window indices of the next `batches` batches from `state` (default: the loader's
        own), taken in iterations of `per_iteration`, without moving it: which text a run trains on
        after a given position."""
        st = LoaderState(**vars(state or self.state))
        picks = []
        for i in range(batches):
            if i % per_iteration == 0:
                self._begin(st, per_iteration)
            picks.append(self._picks(*self._advance(st)))
        return picks


def val_batches(files: list[Path], block_size: int, batch_size: int, n_batches: int,
                vocab: int = 2**16) -> list[np.ndarray]:
    """A fixed set of val batches (the first windows, wrapping if val is short), so every
    evaluation is measured on the same text and draws no randomness."""
    windows = Windows(files, block_size, vocab)
    if windows.count == 0:
        raise ConfigError(f"block_size: {block_size} is too long for the val split (shorter than "
                          f"{block_size + 1} tokens); use a smaller block_size or hold out more val tokens")
    idx = np.arange(n_batches * batch_size) % windows.count
    return [windows.fetch(idx[i * batch_size:(i + 1) * batch_size]) for i in range(n_batches)]
