"""The micro-batch a run steps with: the settings' own, or with `auto_batch` on a CUDA card the
largest that fits it.

What an iteration trains on is batch_size x grad_accum sequences, and that never changes: auto
only cuts the iteration into fewer, larger micro-batches where the card has the memory for them
(a 16 x 1024 micro-batch is what fits a 12 GB card; on a 141 GB one it leaves a 40M model's
matmuls too small to keep the card busy). The choice is the largest micro-batch b that
- divides the iteration's sequences, with grad_accum = sequences / b splitting evenly over the
  processes;
- holds at most CAP_TOKENS tokens (64 x 1024, what llm.c and modded-nanogpt step with: past it a
  GPT-2-sized model gains little and the logits grow);
- fits the card's free memory by job/memory.py's model, with MARGIN of it left over;
and on the card it is confirmed by one real forward and backward before the first step, stepping
down to the next candidate on an out-of-memory error. The data loader hands out the same windows
per iteration whatever b is (job/data/loader.py), so a resume on another card, which may pick
another b, trains on exactly the same text. On a CPU (or Apple's GPU) auto keeps batch_size.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from job.config import Config
from job.memory import memory

CAP_TOKENS = 64 * 1024
MARGIN = 0.10  # of the card's free memory, left over beyond the model's own allowances


def candidates(cfg: Config, processes: int) -> list[int]:
    """Micro-batches that cut the iteration evenly (and its accumulation over the processes),
    at most CAP_TOKENS tokens each (never below 1 sequence), largest first."""
    sequences = cfg.batch_size * cfg.grad_accum
    cap = max(1, CAP_TOKENS // cfg.block_size)
    return [b for b in range(min(sequences, cap), 0, -1)
            if sequences % b == 0 and (sequences // b) % processes == 0]


def with_micro_batch(cfg: Config, b: int) -> Config:
    """The same iteration cut into micro-batches of b sequences."""
    return dataclasses.replace(cfg, batch_size=b, grad_accum=cfg.batch_size * cfg.grad_accum // b)


def choose(cfg: Config, c: int, free_bytes: float, processes: int, what: str = "free") -> tuple[Config, str]:
    """The settings with auto_batch's micro-batch for a card with `free_bytes` free (`what` says
    which bytes: free, or the card's whole memory where `job plan` plans for it), and why; when
    none fits, the settings as they are (the memory check then says what would)."""
    budget = (1 - MARGIN) * free_bytes
    for b in candidates(cfg, processes):
        if memory(with_micro_batch(cfg, b), c, on_gpu=True)["total"] <= budget:
            why = (f"auto_batch: the largest that fits {free_bytes / 1e9:.1f} GB {what} with {MARGIN:.0%} to spare, "
                   f"at most {CAP_TOKENS:,} tokens")
            return with_micro_batch(cfg, b), why
    return cfg, f"auto_batch: no micro-batch fits {free_bytes / 1e9:.1f} GB {what}; batch_size as set"


def confirm(cfg: Config, try_step: Callable[[int], None], processes: int,
            out_of_memory: type[BaseException]) -> tuple[Config, list[int]]:
    """Run `try_step(b)` (one forward and backward at micro-batch b) from cfg's micro-batch down,
    until one does not run out of memory; the settings for that one, and the micro-batches that
    did not fit. The last candidate's error is not caught: nothing smaller is left to try."""
    left = [b for b in candidates(cfg, processes) if b <= cfg.batch_size]
    failed = []
    for b in left:
        try:
            try_step(b)
        except out_of_memory:
            if b == left[-1]:
                raise
            failed.append(b)
            continue
        return with_micro_batch(cfg, b), failed
    return cfg, failed
