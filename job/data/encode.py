"""Documents -> GPT-2 tokens, in parallel worker processes, in order, with bounded memory.

The parent reads documents and groups them into batches of about BATCH_CHARS characters; each
worker runs tiktoken's encode_ordinary_batch on a batch and sends back one uint16 array (every
document preceded by <|endoftext|>) plus the documents' token lengths. At most 2 batches per
worker are in flight, so memory stays a few MB per worker however big the dataset.

Processes, not threads: reading, decompressing and parsing JSON or parquet hold the GIL in the
parent, and a worker's own share of Python (building the uint16 array) would hold it too.
"""

from __future__ import annotations

import array
import multiprocessing as mp
import os
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from job.data.sources import Document
from job.stopping import worker_signals
from job.tokenizer import EOT, get_encoding

BATCH_CHARS = 1 << 20  # ~1 MiB of text per task: big enough to amortise IPC, small enough to stream
IN_FLIGHT_PER_WORKER = 2


@dataclass
class Encoded:
    positions: list[tuple[int, int]]  # (file, record) of each document
    tokens: np.ndarray  # uint16, EOT + document tokens, document after document
    lengths: np.ndarray  # int64 tokens per document, EOT included
    nbytes: int  # UTF-8 bytes of the batch's text


def default_workers() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def encode_texts(texts: list[str]) -> tuple[np.ndarray, np.ndarray, int]:
    """One batch: (tokens with an EOT before each document, lengths, UTF-8 bytes)."""
    ids = get_encoding().encode_ordinary_batch(texts, num_threads=1)
    lengths = np.fromiter((len(x) + 1 for x in ids), dtype=np.int64, count=len(ids))
    flat = array.array("H")  # C-speed appends: about half the cost of np.array on a list of ints
    for x in ids:
        flat.append(EOT)
        flat.extend(x)
    nbytes = sum(len(t.encode("utf-8")) for t in texts)
    return np.frombuffer(flat, dtype=np.uint16), lengths, nbytes


def batches(docs: Iterable[Document], chars: int = BATCH_CHARS) -> Iterator[tuple[list[tuple[int, int]], list[str]]]:
    positions: list[tuple[int, int]] = []
    texts: list[str] = []
    size = 0
    for file, record, text in docs:
        positions.append((file, record))
        texts.append(text)
        size += len(text)
        if size >= chars:
            yield positions, texts
            positions, texts, size = [], [], 0
    if texts:
        yield positions, texts


def _warm() -> None:
    worker_signals()
    get_encoding()


def encoded(docs: Iterable[Document], workers: int) -> Iterator[Encoded]:
    """The documents' tokens, batch by batch, in the order the documents came."""
    if workers <= 1:
        for positions, texts in batches(docs):
            yield Encoded(positions, *encode_texts(texts))
        return
    # fork where there is one: workers start at once and inherit the loaded encoder. They only
    # ever tokenise, so the progress bar's thread in the parent is of no concern to them.
    get_encoding()
    ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
    with ctx.Pool(workers, initializer=_warm) as pool:
        pending: deque = deque()
        for positions, texts in batches(docs):
            pending.append((positions, pool.apply_async(encode_texts, (texts,))))
            if len(pending) >= IN_FLIGHT_PER_WORKER * workers:
                positions, result = pending.popleft()
                yield Encoded(positions, *result.get())
        while pending:
            positions, result = pending.popleft()
            yield Encoded(positions, *result.get())
