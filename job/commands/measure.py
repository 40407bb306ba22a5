"""Measure what `job plan` predicts, on this machine: memory of one training micro-step, and the
time of real training steps. Needs torch (plan.py does not); imported only for --measure.
"""

from __future__ import annotations

import time
import weakref
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from job import optim
from job.config import Config
from job.device import configure, pick_device, pick_precision, use_compile_cache
from job.model import GPT, build_model


class LiveBytes(TorchDispatchMode):
    """Bytes of every storage an op creates while the mode is on, live and at the peak; what
    existed before (parameters, inputs) is not counted. Works on CPU, where torch keeps no
    allocator statistics: each storage's Python object lives as long as the storage does."""

    def __init__(self, existing: list[torch.Tensor]):
        super().__init__()
        self.live = self.peak = 0
        self._known = {t.untyped_storage().data_ptr() for t in existing}

    def _freed(self, ptr: int, nbytes: int) -> None:
        self._known.discard(ptr)
        self.live -= nbytes

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.device.type != "meta":
                s = t.untyped_storage()
                ptr, nbytes = s.data_ptr(), s.nbytes()
                if nbytes and ptr not in self._known:
                    self._known.add(ptr)
                    self.live += nbytes
                    self.peak = max(self.peak, self.live)
                    weakref.finalize(s, self._freed, ptr, nbytes)
        return out


def step_memory(model: GPT, x: torch.Tensor, y: torch.Tensor, dtype: torch.dtype) -> dict[str, int]:
    """One forward and backward on CPU, as the training loop runs it (the logits kept while the
    loss backpropagates). Returns bytes: saved activations, saved logit-sized tensors, the
    autocast copies of the weights, and the peak of everything the step allocated."""
    params = list(model.parameters())
    param_ptrs = {p.untyped_storage().data_ptr() for p in params}
    vocab = model.cfg.vocab_size
    saved: dict[int, tuple[int, str]] = {}

    def is_weight_copy(t: torch.Tensor) -> bool:  # autocast's cast of a weight (linear saves it transposed)
        if t.dim() != 2 or t.dtype == torch.float32:
            return False
        return any(torch.equal(p.detach().to(t.dtype), m) for p in params for m in (t, t.t()) if p.shape == m.shape)

    def pack(t: torch.Tensor) -> torch.Tensor:
        s = t.untyped_storage()
        ptr = s.data_ptr()
        if ptr in param_ptrs or ptr in saved:
            return t
        kind = "weights" if is_weight_copy(t) else "logits" if t.dim() and t.shape[-1] == vocab else "activations"
        saved[ptr] = (s.nbytes(), kind)
        return t

    autocast = torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32)
    with LiveBytes([*params, x, y]) as live:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), autocast:
            logits, loss = model(x, y)
        loss.backward()
        del logits, loss
    model.zero_grad(set_to_none=True)
    out = {k: sum(n for n, kind in saved.values() if kind == k) for k in ("activations", "logits", "weights")}
    return {**out, "peak": live.peak}


def measure_steps(cfg: Config, warmup: int = 2, steps: int = 3) -> dict[str, Any]:
    """Time real training steps of this config on this machine (random tokens; the data does
    not change the arithmetic): `warmup` micro-steps first (they carry torch.compile and
    allocator warm-up), then `steps` timed micro-steps and one timed optimizer step. An
    iteration is grad_accum micro-steps plus the optimizer step."""
    device = pick_device(cfg.device)
    configure(device, cfg.deterministic)
    prec = pick_precision(device, cfg.dtype)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.to_dict()).to(device)
    optimizer = optim.build(model, cfg, device.type)
    if cfg.compile:
        use_compile_cache(cfg.out_dir)
    step_model = torch.compile(model) if cfg.compile else model
    shape = (cfg.batch_size, cfg.block_size)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def micro_step() -> None:
        x = torch.randint(0, 50257, shape, device=device)
        y = torch.randint(0, 50257, shape, device=device)
        with prec.autocast():
            _, loss = step_model(x, y)
        loss.backward()

    def optimizer_step() -> None:
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    for _ in range(warmup):
        micro_step()
    optimizer_step()
    micro_step()  # grads now exist: the steady state of an accumulating iteration
    sync()
    warmup_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(steps):
        micro_step()
    sync()
    micro_s = (time.perf_counter() - t0) / steps
    t0 = time.perf_counter()
    optimizer_step()
    sync()
    opt_s = time.perf_counter() - t0
    result: dict[str, Any] = {
        "device": str(device), "dtype": prec.name, "compile": cfg.compile, "warmup_s": warmup_s,
        "micro_step_s": micro_s, "optimizer_step_s": opt_s, "s_per_iter": cfg.grad_accum * micro_s + opt_s,
        "peak_memory_bytes": None,
    }
    if device.type == "cuda":
        result["peak_memory_bytes"] = torch.cuda.max_memory_allocated(device)
        result["device_name"] = torch.cuda.get_device_name(device)
    return result
