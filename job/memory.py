"""Peak memory of one training micro-step, by part: the model `job plan` prints and `job train`
checks against the card's free memory before its first step (a run that cannot fit stops at once,
exit 2, with the micro-batch that would, instead of failing out of memory after compiling, which
cron would restart into all night). Arithmetic alone, no torch.

The memory model counts what eager PyTorch keeps for one micro-step of job/model.py (checked
against torch on CPU in tests/test_plan.py), per sequence of T tokens, with d = n_embd,
h = n_head, c = bytes of the compute dtype (2 for bf16/fp16, 4 for fp32), and the residual
stream in fp32 (autocast leaves it there):
  activations per layer per token: 2 LayerNorm inputs in fp32 (8d) + the inputs of the four
    matmuls, q/k/v, the attention output and the GELU input and output in the compute dtype
    (14·c·d: 36d bytes in bf16, Korthikanti et al.'s "34·s·b·h" less dropout masks, plus fp32
    LayerNorm inputs) + LayerNorm statistics (16) + flash attention's log-sum-exp (4h). Flash or
    memory-efficient attention is what SDPA picks on CUDA and CPU for this model; without it
    (`deterministic` on a GPU takes the math kernel) the T x T attention matrices add c·h·T
    per token and layer, and their softmax as much again.
  logits: fp32 log-probs saved by the loss (4·b·T·V) + in backward their gradient and the
    logits' gradient in fp32 (8·b·T·V); the head's output in the compute dtype lives only until its
    fp32 copy is made, since the forward returns no logits (measured on CPU: 12·b·T·V at the peak
    in fp32 and bf16 alike; returning them kept c·b·T·V more alive into the next micro-step).
    With compile on, inductor fuses the loss: it keeps the head's output in the compute dtype for
    backward, and writes the logits' gradient into that same buffer once the fused kernel has read
    it, so one b·T·V tensor of c bytes is all there is (c·b·T·V). Measured by scripts/gpu/gpu_check.sh
    on an H200 (torch 2.11, gpt2-40m, modern recipe, bf16, compiled, 16 x 1024): the allocator's peak
    was 5.49 GB against 5.36 GB of tensors modelled here (7.01 GB when this term counted the gradient
    apart, 2·c·b·T·V).
    With loss_chunk set, the fused chunked head + loss holds one chunk's logits at a time instead.
"""

from __future__ import annotations

from job.config import Config
from job.device import cpu_bf16
from job.errors import ConfigError
from job.flops import param_counts

GIB = 2**30
WORKSPACE_GPU = GIB // 2  # CUDA context, cuBLAS/cuDNN workspaces: outside torch's allocator
ALLOCATOR_SLACK = 0.05  # the caching allocator's fragmentation on top of what tensors hold


def compute_bytes(cfg: Config, on_gpu: bool) -> tuple[str, int]:
    """The compute dtype and its bytes: as job.device.pick_precision (bf16 on every card in the
    table; on a CPU, bf16 where this one multiplies it natively, else fp32)."""
    dtype = cfg.dtype
    if dtype == "auto":
        dtype = "bfloat16" if on_gpu or cpu_bf16() else "float32"
    return dtype, 4 if dtype == "float32" else 2


def activation_bytes(cfg: Config, batch: int, c: int, on_gpu: bool = False) -> int:
    d, h, L, T = cfg.n_embd, cfg.n_head, cfg.n_layer, cfg.block_size
    per_layer = 2 * 4 * d + 14 * c * d + 16 + 4 * h
    if cfg.deterministic and on_gpu:  # the math attention kernel: scores and softmax, T x T per head
        per_layer += 2 * c * h * T
    # + final LayerNorm input (fp32) and statistics, the head's input (c), token ids and targets (int64)
    per_token = L * per_layer + 4 * d + 8 + c * d + 16
    return batch * T * per_token + 8 * T  # + the position ids


def logits_bytes(cfg: Config, batch: int, c: int) -> int:
    if cfg.loss_chunk:  # model.ChunkedHeadLoss: one chunk's fp32 logits and softmax at a time,
        # plus the gradients it keeps for backward (hidden states, fp32 head weight)
        rows = min(cfg.loss_chunk, batch * cfg.block_size)
        return 2 * 4 * rows * cfg.vocab_size + 4 * batch * cfg.block_size * cfg.n_embd + 4 * cfg.vocab_size * cfg.n_embd
    btv = batch * cfg.block_size * cfg.vocab_size
    return c * btv if cfg.compile else 12 * btv


def memory(cfg: Config, c: int, on_gpu: bool, batch: int | None = None) -> dict[str, int]:
    """Peak bytes of one training micro-step, by part."""
    b = cfg.batch_size if batch is None else batch
    n = param_counts(cfg)
    d, L, V = cfg.n_embd, cfg.n_layer, cfg.vocab_size
    parts = {
        "weights": 4 * n["total"],  # fp32 master weights
        # autocast's compute-dtype copies of every matmul weight, kept for backward
        "weight_copies": c * (V * d + 12 * L * d * d) if c < 4 else 0,
        "grads": 4 * n["total"],
        # AdamW's exp_avg and exp_avg_sq in fp32; with optimizer muon only outside the hidden matrices,
        # which have Muon's one fp32 momentum buffer instead
        "adamw": 8 * (n["total"] - muon_params(cfg)),
        "muon": 4 * muon_params(cfg),
        "activations": activation_bytes(cfg, b, c, on_gpu),
        "logits": logits_bytes(cfg, b, c),
        "grad_buckets": 4 * n["total"] if cfg.processes > 1 else 0,  # DDP's copy of the gradients
    }
    tensors = sum(parts.values())
    parts["workspace"] = int(WORKSPACE_GPU + ALLOCATOR_SLACK * tensors) if on_gpu else 0
    parts["total"] = tensors + parts["workspace"]
    return parts


def muon_params(cfg: Config) -> int:
    """Parameters Muon updates (the blocks' matrices); 0 with optimizer adamw."""
    return param_counts(cfg)["hidden_matrices"] if cfg.optimizer == "muon" else 0


def largest_fit(cfg: Config, c: int, on_gpu: bool, capacity: float) -> tuple[int, int] | None:
    """The largest micro-batch that fits and divides the sequences per iteration, and the
    grad_accum that keeps tokens per iteration the same (and splits over the GPUs); None if not
    even 1 fits."""
    sequences, n = cfg.batch_size * cfg.grad_accum, cfg.processes
    for b in range(sequences, 0, -1):
        if sequences % b == 0 and (sequences // b) % n == 0 and memory(cfg, c, on_gpu, b)["total"] <= capacity:
            return b, sequences // b
    return None


def check_fit(cfg: Config, c: int, free_bytes: float, where: str) -> None:
    """Refuse, before any step, a run whose micro-step will not fit in `free_bytes`: one line with
    the largest micro-batch that fits and the grad_accum that keeps the tokens per iteration."""
    need = memory(cfg, c, on_gpu=True)["total"]
    if need <= free_bytes:
        return
    head = (f"batch_size: a micro-batch of {cfg.batch_size} x {cfg.block_size} tokens needs about {need / 1e9:.1f} GB "
            f"on {where}, which has {free_bytes / 1e9:.1f} GB free")
    fit = largest_fit(cfg, c, True, free_bytes)
    if fit is None:
        raise ConfigError(f"{head}; not even a micro-batch of 1 fits: use a smaller model or block_size "
                          f"(job plan shows the memory by part; memory_check=false skips this check)")
    b, accum = fit
    raise ConfigError(f"{head}; the largest that fits is {b}: --batch-size {b} --grad-accum {accum} keeps "
                      f"{cfg.tokens_per_iter:,} tokens per iteration (memory_check=false skips this check)")
