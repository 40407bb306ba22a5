"""The cards we know: peak dense bf16 rate, memory and board power, each row with its source.

The peak is dense (no 2:4 sparsity) bf16 matmul with FP32 accumulate, the mode PyTorch uses for
training. GeForce cards run that at half their FP16-accumulate rate, so an RTX 4070 is 58.3
TFLOP/s, not the 116.6 that spec pages print (nor the A100's 312 that nanoGPT's MFU divides by).
For GeForce cards the rate is worked out as SMs x boost clock x 512 dense FLOP/clock/SM (Ampere
GA10x, Ada and consumer Blackwell alike); it matches NVIDIA's whitepaper tables where they list
the card. Board power is the card's rated TGP/TDP: what the card may draw, not the wall.

A card is recognised by its exact name as the driver reports it (torch and NVML print the same),
never by a pattern: "RTX 4070 Laptop GPU" is a smaller chip than the desktop RTX 4070, an H100 NVL
is neither the SXM nor the PCIe card, and an A10G is not an A10. A name not in the table gets no
peak, so MFU is not shown rather than shown wrong; `peak_tflops` gives it.

No torch here: `job plan` must work on a machine without it.
"""

from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass
from typing import Any

from job.errors import ConfigError

# Dense FLOP per clock per SM, bf16 in, FP32 accumulate, on GeForce Ampere/Ada/Blackwell.
GEFORCE_FLOP_PER_CLOCK_SM = 512


@dataclass(frozen=True)
class Card:
    key: str  # what --gpu takes
    name: str  # as NVIDIA names it
    peak_tflops: float | None  # dense bf16, FP32 accumulate; None for the CPU (the user gives it)
    memory_gb: float | None  # decimal GB, as marketed
    board_w: float | None  # rated board power (TGP/TDP)
    source: str
    names: tuple[str, ...] = ()  # the exact names the driver reports for this card (see normal_name)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("names")
        return d


def _geforce(sms: int, boost_mhz: int) -> float:
    return round(sms * boost_mhz * 1e6 * GEFORCE_FLOP_PER_CLOCK_SM / 1e12, 1)


_ADA = "NVIDIA Ada Lovelace architecture whitepaper, appendix table (FP16/BF16 tensor with FP32 accumulate)"
_AMPERE = "NVIDIA Ampere GA102 whitepaper, appendix table (BF16 tensor with FP32 accumulate, dense)"
_SPEC = "NVIDIA product page (SMs, boost clock, memory, total graphics power)"

CARDS: tuple[Card, ...] = (
    Card("rtx-3060", "GeForce RTX 3060 12GB", _geforce(28, 1777), 12, 170,
         f"28 SMs x 1777 MHz x 512 = 25.5; {_SPEC}", ("RTX 3060",)),
    Card("rtx-3090", "GeForce RTX 3090", 71.0, 24, 350, f"{_AMPERE}: 71 dense (142 sparse)", ("RTX 3090",)),
    Card("rtx-4060-ti-16gb", "GeForce RTX 4060 Ti 16GB", _geforce(34, 2535), 16, 165,
         f"34 SMs x 2535 MHz x 512 = 44.1; {_SPEC}", ("RTX 4060 Ti",)),
    Card("rtx-4070", "GeForce RTX 4070", _geforce(46, 2475), 12, 200,
         f"46 SMs x 2475 MHz x 512 = 58.3 (half of the 116.6 FP16-accumulate figure); {_SPEC}",
         ("RTX 4070",)),
    Card("rtx-4070-super", "GeForce RTX 4070 SUPER", _geforce(56, 2475), 12, 220,
         f"56 SMs x 2475 MHz x 512 = 71.0; {_SPEC}", ("RTX 4070 SUPER",)),
    Card("rtx-4070-ti", "GeForce RTX 4070 Ti", _geforce(60, 2610), 12, 285,
         f"60 SMs x 2610 MHz x 512 = 80.2; {_ADA}", ("RTX 4070 Ti",)),
    Card("rtx-4080", "GeForce RTX 4080", _geforce(76, 2505), 16, 320,
         f"76 SMs x 2505 MHz x 512 = 97.5; {_ADA}", ("RTX 4080",)),
    Card("rtx-4090", "GeForce RTX 4090", 165.2, 24, 450, f"{_ADA}: 165.2 dense (330.3 with FP16 accumulate)",
         ("RTX 4090",)),
    Card("rtx-5090", "GeForce RTX 5090", _geforce(170, 2407), 32, 575,
         "170 SMs x 2407 MHz x 512 = 209.5; NVIDIA RTX Blackwell GPU architecture whitepaper "
         "(FP16/BF16 with FP32 accumulate 209.5 dense); 575 W TGP", ("RTX 5090",)),
    Card("a10", "NVIDIA A10", 125.0, 24, 150, "NVIDIA A10 datasheet: BF16 tensor 125 dense (250 sparse), 150 W",
         ("A10",)),
    Card("a100", "NVIDIA A100 SXM4 80GB", 312.0, 80, 400,
         "NVIDIA A100 datasheet: BF16 tensor 312 dense (624 sparse); SXM4 80GB, 400 W", ("A100-SXM4-80GB",)),
    Card("a100-40gb", "NVIDIA A100 SXM4 40GB", 312.0, 40, 400,
         "NVIDIA A100 datasheet: BF16 tensor 312 dense; SXM4 40GB, 400 W", ("A100-SXM4-40GB",)),
    Card("a100-pcie", "NVIDIA A100 PCIe 80GB", 312.0, 80, 300,
         "NVIDIA A100 datasheet: BF16 tensor 312 dense; PCIe 80GB, 300 W", ("A100 80GB PCIe",)),
    Card("a100-pcie-40gb", "NVIDIA A100 PCIe 40GB", 312.0, 40, 250,
         "NVIDIA A100 datasheet: BF16 tensor 312 dense; PCIe 40GB, 250 W", ("A100-PCIE-40GB",)),
    Card("l4", "NVIDIA L4", 121.0, 24, 72, "NVIDIA L4 datasheet: BF16 tensor 242 sparse = 121 dense, 72 W",
         ("L4",)),
    Card("l40s", "NVIDIA L40S", 362.05, 48, 350, "NVIDIA L40S datasheet: BF16 tensor 362.05 dense (733 sparse), 350 W",
         ("L40S",)),
    Card("h100-sxm", "NVIDIA H100 SXM5 80GB", 989.4, 80, 700,
         "NVIDIA H100 datasheet: BF16 tensor 1979 sparse = 989.4 dense; SXM5, up to 700 W",
         ("H100 80GB HBM3", "H100 SXM5 80GB")),
    Card("h100-pcie", "NVIDIA H100 PCIe 80GB", 756.0, 80, 350,
         "NVIDIA H100 datasheet: BF16 tensor 1513 sparse = 756 dense; PCIe, 350 W", ("H100 PCIe",)),
    Card("h100-nvl", "NVIDIA H100 NVL 94GB", 835.5, 94, 400,
         "NVIDIA H100 datasheet: BF16 tensor 1671 sparse = 835.5 dense; NVL, 350-400 W", ("H100 NVL",)),
    Card("h200", "NVIDIA H200 SXM 141GB", 989.4, 141, 700,
         "NVIDIA H200 datasheet: BF16 tensor 1979 sparse = 989.4 dense; 141 GB HBM3e, up to 700 W", ("H200",)),
    Card("h200-nvl", "NVIDIA H200 NVL 141GB", 835.5, 141, 600,
         "NVIDIA H200 datasheet: BF16 tensor 1671 sparse = 835.5 dense; NVL, up to 600 W", ("H200 NVL",)),
    Card("cpu", "CPU", None, None, None,
         "no table value: give the rate with --peak-tflops (and the power with --watts)"),
)

BY_KEY = {c.key: c for c in CARDS}


class UnknownCard(ConfigError):
    pass


def choices() -> str:
    return ", ".join([*BY_KEY, "auto"])


def lookup(key: str) -> Card:
    """A card by its --gpu key (case and spaces forgiven), or by a device name torch/NVML reports."""
    k = re.sub(r"[\s_]+", "-", key.strip().lower())
    if k in BY_KEY:
        return BY_KEY[k]
    card = from_device_name(key)
    if card is None:
        raise UnknownCard(f"gpu: unknown GPU '{key}'; choose one of {choices()} (or give --peak-tflops)")
    return card


def normal_name(name: str) -> str:
    """A device name as compared: case, spacing, dashes and the "NVIDIA"/"GeForce" words ignored
    ('NVIDIA GeForce RTX 4070' -> 'rtx 4070', 'NVIDIA A100-SXM4-80GB' -> 'a100 sxm4 80gb')."""
    words = re.sub(r"[\s_-]+", " ", name.strip().lower()).split()
    return " ".join(w for w in words if w not in ("nvidia", "geforce"))


BY_NAME = {normal_name(n): c for c in CARDS for n in c.names}


def from_device_name(name: str) -> Card | None:
    """'NVIDIA GeForce RTX 4070' -> the rtx-4070 row; None for a name the table does not list
    exactly (a Laptop GPU, a D or Ti variant not in it, a card we have no figures for)."""
    return BY_NAME.get(normal_name(name))


def host_memory_gb() -> float | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9
    except (ValueError, OSError, AttributeError):
        return None


def detect() -> tuple[str, float | None]:
    """The name and memory (GB) of GPU 0, from NVML if it answers, else torch; ('cpu', RAM) if none."""
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            handle = pynvml.nvmlDeviceGetHandleByIndex(0)
            name = pynvml.nvmlDeviceGetName(handle)
            mem = pynvml.nvmlDeviceGetMemoryInfo(handle).total / 1e9
            return (name.decode() if isinstance(name, bytes) else name), mem
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # no library, no driver, no GPU: all mean "ask torch, then say CPU"
        pass
    try:
        import torch

        if torch.cuda.is_available():
            props = torch.cuda.get_device_properties(0)
            return props.name, props.total_memory / 1e9
    except ImportError:
        pass
    return "cpu", host_memory_gb()


def card_for(device: Any) -> Card | None:
    """The table's row for the CUDA card in use; None on CPU/MPS or for a card not in the table."""
    if getattr(device, "type", str(device)) != "cuda":
        return None
    import torch

    return from_device_name(torch.cuda.get_device_name(device))


def peak_flops(card: Card | None, peak_tflops: float = 0.0) -> float | None:
    """The peak FLOP/s that MFU and the plan's hours divide by, decided in this one place: the
    peak_tflops setting when given, else the card's row in the table; None where neither is
    known (a CPU, or a card not in the table, without peak_tflops)."""
    if peak_tflops:
        return peak_tflops * 1e12
    return card.peak_tflops * 1e12 if card and card.peak_tflops else None
