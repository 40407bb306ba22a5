"""auto_batch's choice (job/microbatch.py): the largest micro-batch that cuts the iteration evenly,
fits the card by job/memory.py's model with a margin, and stays under the cap; and its confirmation
stepping down past a size that runs out of memory."""

from __future__ import annotations

import pytest

from job.config import resolve
from job.memory import memory
from job.microbatch import CAP_TOKENS, MARGIN, candidates, choose, confirm, with_micro_batch

GB = 1e9


def preset(name: str, **extra):
    return resolve({"preset": name, **extra}, environ={}, dotenv=None)


def test_candidates_cut_the_iteration_evenly_over_the_processes_under_the_cap():
    cfg = preset("gpt2-40m")  # 16 x 32 = 512 sequences of 1024 tokens
    assert candidates(cfg, 1) == [64, 32, 16, 8, 4, 2, 1]  # 64 x 1024 = CAP_TOKENS
    assert candidates(cfg, 8) == [64, 32, 16, 8, 4, 2, 1]  # 512 / 64 = 8 micro-batches: one per GPU
    assert candidates(cfg, 16) == [32, 16, 8, 4, 2, 1]
    assert candidates(preset("gpt2-40m", block_size=256), 1)[0] == CAP_TOKENS // 256
    assert candidates(preset("gpt2-40m", batch_size=3, grad_accum=4), 1) == [12, 6, 4, 3, 2, 1]


@pytest.mark.parametrize("name, free_gb", [("gpt2-40m", 139), ("gpt2-40m", 11.6), ("gpt2-124m", 11.6),
                                           ("gpt2-124m", 79), ("gpt2-40m", 2.5)])
def test_the_choice_is_the_largest_that_fits_with_the_margin(name: str, free_gb: float):
    cfg = preset(name)
    chosen, why = choose(cfg, 2, free_gb * GB, 1)
    assert chosen.batch_size * chosen.grad_accum == cfg.batch_size * cfg.grad_accum  # tokens per iteration kept
    assert chosen.tokens_per_iter == cfg.tokens_per_iter
    fits = [b for b in candidates(cfg, 1)
            if memory(with_micro_batch(cfg, b), 2, on_gpu=True)["total"] <= (1 - MARGIN) * free_gb * GB]
    if fits:
        assert chosen.batch_size == fits[0] and "the largest that fits" in why, why
    else:
        assert chosen == cfg and "no micro-batch fits" in why, why


def test_an_h200_takes_the_cap_and_a_12_gb_card_the_presets_16():
    assert choose(preset("gpt2-40m"), 2, 139 * GB, 1)[0].batch_size == 64
    assert choose(preset("gpt2-40m"), 2, 11.6 * GB, 1)[0].batch_size == 16


def test_confirmation_steps_down_past_what_runs_out_of_memory():
    cfg = with_micro_batch(preset("gpt2-40m"), 64)
    tried = []

    def step(b: int) -> None:
        tried.append(b)
        if b > 16:
            raise MemoryError(f"{b} does not fit")

    got, failed = confirm(cfg, step, 1, MemoryError)
    assert (got.batch_size, got.grad_accum) == (16, 32) and failed == [64, 32] and tried == [64, 32, 16]
    with pytest.raises(MemoryError):  # nothing smaller than 1 to try: the error stands
        confirm(cfg, lambda b: (_ for _ in ()).throw(MemoryError("none")), 1, MemoryError)
    assert confirm(cfg, lambda b: None, 1, MemoryError)[0] == cfg  # the first that runs is kept
