"""The one place that picks the device and the numeric precision, sets the process's numerics for
it, and moves batches onto it.

bf16 is chosen only where the card multiplies it natively (compute capability 8.0 and up: Ampere,
Ada, Hopper, Blackwell); `torch.cuda.is_bf16_supported()` also counts emulation (T4, RTX 20xx,
V100), where bf16 runs at a fraction of fp16's rate, so those cards get fp16 with a GradScaler.
fp32 matmuls on CUDA use TF32 (`set_float32_matmul_precision("high")`): what autocast leaves in
fp32 (the fused loss's weight gradient, dtype=float32 runs, sampling) would otherwise run at a
fraction of the card's rate. `deterministic` trades speed for bitwise repeatable GPU runs: see
docs/gpu.md, "What is bitwise where".
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from job.config import check_device
from job.errors import ConfigError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class Precision:
    device: torch.device
    dtype: torch.dtype  # the autocast compute dtype (float32 means no autocast)
    why: str = ""  # why auto chose it, said at start

    @property
    def name(self) -> str:
        return str(self.dtype).removeprefix("torch.")

    @property
    def needs_scaler(self) -> bool:
        # fp16 gradients underflow without loss scaling (on any device); bf16 has fp32's range
        return self.dtype == torch.float16

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)


def pick_device(setting: str) -> torch.device:
    """The device `setting` names, always with its index on CUDA: `cuda` (nanoGPT's spelling) is the
    current GPU, `cuda:N` the Nth, `auto` the current GPU, else Apple's GPU, else the CPU."""
    check_device(setting)
    if setting == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if setting.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"device: '{setting}' asked for but no CUDA GPU is visible; use device=cpu or auto")
        dev = torch.device(setting)
        count = torch.cuda.device_count()
        if dev.index is None:
            return torch.device("cuda", torch.cuda.current_device())
        if dev.index >= count:
            raise ConfigError(f"device: '{setting}' does not exist; this machine has {count} GPU(s), "
                              f"{'cuda:0' if count == 1 else f'cuda:0 to cuda:{count - 1}'}")
        return dev
    if setting == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ConfigError("device: 'mps' asked for but not available; use device=cpu or auto")
    return torch.device(setting)


BF16_CAPABILITY = (8, 0)  # Ampere: the first cards with bf16 tensor cores


def native_bf16(capability: tuple[int, int]) -> bool:
    """Whether a CUDA card of this compute capability multiplies bf16 in hardware."""
    return tuple(capability) >= BF16_CAPABILITY


def cpu_bf16() -> str:
    """The CPU's native bf16 instructions by name, or "" when it has none."""
    cpu = torch.cpu
    if getattr(cpu, "_is_amx_tile_supported", lambda: False)():
        return "AMX"
    if getattr(cpu, "_is_avx512_bf16_supported", lambda: False)():
        return "AVX512-BF16"
    return ""


def pick_precision(device: torch.device, setting: str) -> Precision:
    """auto: bf16 on GPUs that have it natively, fp16 (with a GradScaler) on older GPUs; on a CPU
    bf16 where the processor multiplies it natively (AVX512-BF16 or AMX: tiny's step 1.16-1.29x
    faster here at the same val loss, docs/gpu.md, "`dtype=auto` on a CPU"), else fp32, as emulated bf16 is slower."""
    if setting != "auto":
        return Precision(device, DTYPES[setting], "set by dtype")
    if device.type == "cpu":
        native = cpu_bf16()
        if native:
            return Precision(device, torch.bfloat16, f"auto: this CPU multiplies bf16 natively ({native})")
        return Precision(device, torch.float32, "auto: this CPU has no native bf16")
    if device.type != "cuda":
        return Precision(device, torch.float32, f"auto on {device.type}")
    name, capability = torch.cuda.get_device_name(device), torch.cuda.get_device_capability(device)
    if native_bf16(capability):
        return Precision(device, torch.bfloat16, f"auto: native on {name}")
    return Precision(device, torch.float16, f"auto: {name} (compute capability {capability[0]}.{capability[1]}) "
                                            f"has no native bf16; fp16 with a GradScaler instead")


def configure(device: torch.device, deterministic: bool = False) -> None:
    """The process's numerics for `device`, before the first tensor is made on it: the card as the
    current device (so pinned memory and new contexts land on it, not on GPU 0), TF32 for fp32
    matmuls; with `deterministic`, algorithms that give the same bits on every run, at a cost."""
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.set_float32_matmul_precision("high")
        torch.backends.cudnn.allow_tf32 = True
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS reads it at its first handle
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
        # flash, memory-efficient and cuDNN attention reduce the backward with atomics: math only
        torch.backends.cuda.enable_flash_sdp(False)
        torch.backends.cuda.enable_mem_efficient_sdp(False)
        torch.backends.cuda.enable_cudnn_sdp(False)


COMPILE_CACHE = "TORCHINDUCTOR_CACHE_DIR"  # inductor's cache; Triton's lives inside it unless TRITON_CACHE_DIR is set


def use_compile_cache(out_dir: str | Path) -> Path:
    """Where torch.compile keeps what it compiled (inductor's FX graphs, AOTAutograd's, Triton's
    kernels): the user's TORCHINDUCTOR_CACHE_DIR, else out_dir/.cache/torch. Its default,
    /tmp/torchinductor_<user>, dies with a `--rm` container, so every restart by cron or docker
    compiled from scratch (25 s on an H200, minutes on a home CPU); out_dir is the volume every
    launcher mounts, so the cache outlives the process and the container. Set before the first
    compile; torchrun's ranks share it (inductor locks its entries)."""
    return Path(os.environ.setdefault(COMPILE_CACHE, str(Path(out_dir).resolve() / ".cache" / "torch")))


def compile_cache_counts() -> dict[str, int]:
    """FX graphs this process took from the compile cache, and compiled anew, so far."""
    from torch._dynamo.utils import counters

    inductor = counters["inductor"]
    return {"cache_hits": int(inductor["fxgraph_cache_hit"]), "compiled": int(inductor["fxgraph_cache_miss"])}


def seed_step(device: torch.device, seed: int) -> None:
    """Restart the random streams a training micro-step draws from (dropout) at `seed`: the CPU's
    and the device's."""
    torch.default_generator.manual_seed(seed)
    if device.type == "cuda":
        torch.cuda.default_generators[device.index if device.index is not None else torch.cuda.current_device()
                                      ].manual_seed(seed)
    elif device.type == "mps":
        torch.mps.manual_seed(seed)


def to_device(rows: np.ndarray, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """A (batch, block_size + 1) array of token ids -> inputs and next-token targets on `device`."""
    t = torch.from_numpy(rows)
    if device.type == "cuda":
        t = t.pin_memory().to(device, non_blocking=True)
    else:
        t = t.to(device)
    return t[:, :-1], t[:, 1:]
