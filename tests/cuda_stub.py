"""torch on this CPU-only machine answering as a machine with CUDA GPUs would, as far as a CPU can.

Only the driver's side is stubbed: the functions torch's CUDA module calls into its C++ extension
(`torch._C._cuda_getDeviceCount`, `_cuda_init`, `_cuda_setDevice`, `_cuda_getDevice`), the device
properties and free memory the driver reports, and the per-card random generators its start-up
creates. Everything torch does in Python on top of them runs as it is, so its own argument checks
stay in place: `torch.cuda.set_device(torch.device("cuda"))` fails here exactly as on a real GPU.
A device index the machine does not have fails as the driver fails it ("invalid device ordinal").

A CPU cannot hold a CUDA tensor, so the walk ends at the first tensor placed on a CUDA device:
`ReachedGPU` is raised there, carrying the device. A start-up path that gets that far has passed
every device query, setting and check a GPU machine would put it through.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import pytest
import torch
import torch._dynamo  # noqa: F401 (imported as this build is: it asks at import whether torch has CUDA)
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_leaves

GiB = 2**30


@dataclass(frozen=True)
class Card:
    name: str = "NVIDIA GeForce RTX 4070"
    capability: tuple[int, int] = (8, 9)
    total_bytes: int = 12 * GiB
    free_bytes: int = 11 * GiB
    multi_processors: int = 46


RTX_4070 = Card()


class ReachedGPU(Exception):  # noqa: N818 (not an error: where the walk stops)
    """The first tensor put on a CUDA device: as far as this machine can go."""

    def __init__(self, device: torch.device, what: str):
        super().__init__(f"{what} put a tensor on {device}")
        self.device = device


def cuda_device(value: Any) -> torch.device | None:
    """`value` as a CUDA device, if it names one."""
    if isinstance(value, torch.device) and value.type == "cuda":
        return value
    if isinstance(value, str) and value.startswith("cuda"):
        return torch.device(value)
    return None


class StopAtFirstAllocation(TorchFunctionMode):
    """Raise ReachedGPU at the first torch call that would put a tensor on a CUDA device."""

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        if func is torch.device:  # naming a device allocates nothing
            return func(*args, **kwargs)
        name = getattr(func, "__name__", str(func))
        if name == "cuda":
            raise ReachedGPU(torch.device("cuda", torch.cuda.current_device()), name)
        for leaf in tree_leaves((args, kwargs)):
            if (device := cuda_device(leaf)) is not None:
                raise ReachedGPU(device, name)
        return func(*args, **kwargs)


@contextmanager
def emulated_cuda(monkeypatch: pytest.MonkeyPatch, count: int = 1, card: Card = RTX_4070) -> Iterator[list[int]]:
    """torch sees `count` cards like `card`; yields the list of set_device calls the driver got."""
    current, set_calls = [0], []

    def ordinal(index: int) -> int:
        if not 0 <= index < count:
            raise RuntimeError("CUDA error: invalid device ordinal")
        return index

    def set_device(index: int) -> None:
        set_calls.append(index)
        current[0] = ordinal(index)

    def properties(index: int) -> SimpleNamespace:
        ordinal(index)
        return SimpleNamespace(name=card.name, major=card.capability[0], minor=card.capability[1],
                               total_memory=card.total_bytes, multi_processor_count=card.multi_processors,
                               uuid=f"GPU-00000000-0000-0000-0000-00000000000{index}")

    driver = torch._C
    monkeypatch.setattr(driver, "_cuda_getDeviceCount", lambda: count, raising=False)
    monkeypatch.setattr(driver, "_cuda_init", lambda: None, raising=False)
    monkeypatch.setattr(driver, "_cuda_setDevice", set_device, raising=False)
    monkeypatch.setattr(driver, "_cuda_getDevice", lambda: current[0], raising=False)
    monkeypatch.setattr(torch.cuda, "_get_device_properties", properties, raising=False)
    monkeypatch.setattr(torch.cuda, "_cudart", SimpleNamespace(
        cudaMemGetInfo=lambda index: (ordinal(index), (card.free_bytes, card.total_bytes))[1]))
    monkeypatch.setattr(torch.cuda, "default_generators", tuple(torch.Generator() for _ in range(count)))
    # torch's own start-up state, so each emulation starts as a fresh process would
    monkeypatch.setattr(torch.cuda, "_initialized", False)
    monkeypatch.setattr(torch.cuda, "_cached_device_count", None)
    monkeypatch.setattr(torch.cuda, "_queued_calls", [])
    monkeypatch.setattr(torch.cuda, "_lazy_seed_tracker", type(torch.cuda._lazy_seed_tracker)())
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    yield set_calls
