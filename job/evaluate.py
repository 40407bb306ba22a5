"""Val loss: the one function that measures it, for the training loop and for `job eval` alike.

Both hand it batches of windows from the val split (job/data/loader.py) and get back the mean
next-token cross-entropy per token, in nats, over the model's whole (padded) vocabulary: the same
number by construction when the windows are the same. The mean is weighted by rows, so a short
last batch (`job eval` over a whole split) counts for what it holds; every row is block_size
targets long, so that is the mean per token. The model is in eval mode while it is measured
(dropout off) and back in the mode it was in afterwards. Under torchrun each rank measures every
n-th batch and the sums are added (job/dist.py): the same figure at any number of processes, to
float64 rounding.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch

from job import dist
from job.data.loader import Windows
from job.device import Precision, to_device


@torch.no_grad()
def evaluate(model: torch.nn.Module, batches: Iterable[np.ndarray], prec: Precision) -> float:
    """Mean loss per token over `batches` of (rows, block_size + 1) token ids."""
    world = dist.current()
    was_training = model.training
    model.eval()
    total, rows = 0.0, 0
    for batch in list(batches)[world.rank::world.size]:
        x, y = to_device(batch, prec.device)
        with prec.autocast():
            _, loss = model(x, y)
        total += loss.item() * len(batch)
        rows += len(batch)
    model.train(was_training)
    total, n = dist.sum_floats([total, float(rows)], prec.device)
    return total / n


def first_windows(files: list[Path], block_size: int, batch_size: int, tokens: int | None,
                  vocab: int = 2**16) -> tuple[list[np.ndarray], int]:
    """Batches of the split's first windows, in order: all of them, or enough to cover `tokens`
    targets. The training loop's val batches are the first eval_iters x batch_size of these.
    Returns the batches and the number of target tokens they hold."""
    windows = Windows(files, block_size, vocab)
    n = windows.count if tokens is None else min(windows.count, math.ceil(tokens / block_size))
    idx = np.arange(n)
    return [windows.fetch(idx[i:i + batch_size]) for i in range(0, n, batch_size)], n * block_size


def perplexity(loss: float) -> float:
    """exp(mean loss per token): the number of equally likely tokens the model is as unsure as."""
    return math.exp(loss) if loss < 700 else float("inf")
