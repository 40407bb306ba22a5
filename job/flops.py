"""Parameter and FLOP counts from a config, by arithmetic alone (no torch).

The training log, the metrics and `job plan` all take their FLOPs from here, and the live ETA
is the plan's arithmetic on the step time measured, so MFU and ETA mean the same thing everywhere.
"""

from __future__ import annotations

from typing import Any


def param_counts(c: Any) -> dict[str, int]:
    """Counts for a config with n_layer, n_embd, block_size, vocab_size and bias.

    total:      every parameter, the tied embedding/head counted once.
    nanogpt:    total less the position embeddings (nanoGPT's N, the scenario's 40.56 M).
    kaplan:     non-embedding parameters (Kaplan et al. 2020): total less both embeddings.
    """
    d, L, V, T = c.n_embd, c.n_layer, c.vocab_size, c.block_size
    b = 1 if c.bias else 0
    per_block = (
        2 * d * (1 + b)  # two LayerNorms
        + d * 3 * d + 3 * d * b  # qkv
        + d * d + d * b  # attention output
        + d * 4 * d + 4 * d * b  # MLP up
        + 4 * d * d + d * b  # MLP down
    )
    wte, wpe = V * d, T * d
    head = 0 if getattr(c, "tie_embeddings", True) else V * d  # an untied head: a second V x d matrix
    total = wte + wpe + head + L * per_block + d * (1 + b)  # + final LayerNorm
    return {"total": total, "nanogpt": total - wpe, "kaplan": total - wpe - wte - head,
            "hidden_matrices": L * 12 * d * d, "untied_embedding": wte if head else 0}


def flops_per_token(c: Any) -> dict[str, float]:
    """Training FLOPs per token: 6N for the matmuls forward and backward (N = nanoGPT's count),
    plus 12·n_layer·n_embd·block_size for attention scores and their weighted sum (the PaLM
    appendix's accounting, as nanoGPT's estimate_mfu uses)."""
    counts = param_counts(c)
    n = counts["nanogpt"] - counts["untied_embedding"]  # an untied embedding is a lookup: no matmul
    attention = 12 * c.n_layer * c.n_embd * c.block_size
    return {"six_n": 6.0 * n, "attention": float(attention), "total": 6.0 * n + attention}


def optimizer_flops_per_iter(c: Any, ns_steps: int = 5) -> float:
    """Muon's Newton-Schulz iterations, once per iteration (not per token): for each hidden
    matrix, m x n with m <= n, each of the 5 steps is X X^T (2m²n), A A (2m³) and B X (2m²n).
    AdamW's elementwise update (about 10 FLOPs a parameter) is left out, as nanoGPT's count does."""
    if getattr(c, "optimizer", "adamw") != "muon":
        return 0.0
    d = c.n_embd
    shapes = [(d, 3 * d), (d, d), (d, 4 * d), (d, 4 * d)]  # qkv, attention out, MLP up, MLP down
    per_layer = sum(ns_steps * (4 * m * m * n + 2 * m ** 3) for m, n in shapes)
    return float(c.n_layer * per_layer)


FORMULA = "6N + 12·n_layer·n_embd·block_size (N = nanoGPT's count; PaLM's attention term)"


def total_flops(c: Any, tokens: float) -> dict[str, Any]:
    """Training FLOPs for `tokens` tokens: per token, 6·N·D alone, and with attention."""
    per = flops_per_token(c)
    return {"per_token": per["total"], "six_n": per["six_n"], "attention": per["attention"],
            "six_n_d": per["six_n"] * tokens, "total": per["total"] * tokens, "formula": FORMULA}


def forecast(cfg: Any, iteration: int, step_s: float, energy_j: float, elapsed_s: float,
             board_w: float | None) -> dict[str, float | None]:
    """The live ETA and predicted total energy, from the same model as the plan: remaining FLOPs
    over the FLOP/s the run now achieves; energy so far plus the remaining time at the measured
    average power (the board power when nothing measures it)."""
    per_iter = total_flops(cfg, cfg.tokens_per_iter)["total"]
    achieved = per_iter / step_s if step_s > 0 else 0.0
    eta_s = per_iter * max(0, cfg.max_iters - iteration) / achieved if achieved else float("nan")
    watts = energy_j / elapsed_s if energy_j > 0 and elapsed_s > 0 else board_w
    return {"eta_s": eta_s, "predicted_energy_j": energy_j + eta_s * watts if watts else None}
