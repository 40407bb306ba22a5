"""The one place that picks the device and the numeric precision, and moves batches onto it."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np
import torch

from job.errors import ConfigError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class Precision:
    device: torch.device
    dtype: torch.dtype  # the autocast compute dtype (float32 means no autocast)

    @property
    def name(self) -> str:
        return str(self.dtype).removeprefix("torch.")

    @property
    def needs_scaler(self) -> bool:
        # fp16 overflows without loss scaling; bf16 has fp32's range and needs none
        return self.dtype == torch.float16 and self.device.type == "cuda"

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)


def pick_device(setting: str) -> torch.device:
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
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(f"device: '{setting}' does not exist; this machine has "
                              f"{torch.cuda.device_count()} GPU(s), cuda:0..cuda:{torch.cuda.device_count() - 1}")
        return dev
    if setting == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ConfigError("device: 'mps' asked for but not available; use device=cpu or auto")
    return torch.device(setting)


def pick_precision(device: torch.device, setting: str) -> Precision:
    """auto: bf16 on GPUs that have it, fp16 (with a GradScaler) on older GPUs, fp32 on CPU,
    where autocast to bf16 is slower than fp32 on most processors."""
    if setting == "auto":
        if device.type == "cuda":
            dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        else:
            dtype = torch.float32
    else:
        dtype = DTYPES[setting]
    return Precision(device, dtype)


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
