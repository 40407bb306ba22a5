"""What one Muon step costs, torch.optim.Muon's way and job/muon.py's: the aten ops it dispatches
(each a kernel launch or more on a GPU, where launches are what a small model's step pays for) and
its seconds on this machine, for the hidden matrices of a preset's shape (gpt2-40m by default).

    .venv/bin/python scripts/bench/bench_optim.py [--preset gpt2-40m] [--steps 5]

Both optimizers step the same matrices with the same gradients from the same state; the table says
whether their weights came out equal. Ops are a steady step's (the second: the first also creates the momentum buffers);
seconds are the median of the --steps steps after those two,
the two ways interleaved, so a noisy machine slows both alike.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from job.config import resolve  # noqa: E402
from job.model import build_model  # noqa: E402
from job.muon import StackedMuon  # noqa: E402
from job.optim import is_hidden_matrix  # noqa: E402


class CountOps(TorchDispatchMode):
    """Every aten op dispatched while on, by name."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: Counter[str] = Counter()

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        self.ops[str(func.overloadpacket.__name__)] += 1
        return func(*args, **(kwargs or {}))


def hidden_matrices(preset: str) -> list[torch.nn.Parameter]:
    """The matrices Muon updates in the preset's model, built on the meta device then given values."""
    cfg = resolve({"preset": preset}, environ={}, dotenv=None)
    with torch.device("meta"):
        model = build_model(cfg.to_dict())
    torch.manual_seed(0)
    return [torch.nn.Parameter(torch.randn(p.shape) * 0.02) for n, p in model.named_parameters()
            if is_hidden_matrix(n, p)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="gpt2-40m")
    ap.add_argument("--steps", type=int, default=5)
    args = ap.parse_args()
    base = hidden_matrices(args.preset)
    ways = {"torch.optim.Muon": torch.optim.Muon, "job/muon.py (stacked)": StackedMuon}
    params = {name: [torch.nn.Parameter(p.detach().clone()) for p in base] for name in ways}
    optims = {name: make(params[name], lr=0.02, momentum=0.95, weight_decay=0.01, nesterov=True)
              for name, make in ways.items()}
    grads_rng = torch.Generator().manual_seed(1)
    ops: dict[str, Counter[str]] = {}
    seconds: dict[str, list[float]] = {name: [] for name in ways}
    for step in range(args.steps + 2):
        grads = [torch.randn(p.shape, generator=grads_rng) * 0.01 for p in base]
        for name, opt in optims.items():
            for p, g in zip(params[name], grads, strict=True):
                p.grad = g.clone()
            if step == 0:  # the warm-up: it also creates the momentum buffers
                opt.step()
                continue
            if step == 1:  # a steady step's ops
                with CountOps() as counter:
                    opt.step()
                ops[name] = counter.ops
                continue
            t0 = time.perf_counter()
            opt.step()
            seconds[name].append(time.perf_counter() - t0)
    same = all(torch.equal(a, b) for a, b in zip(*params.values(), strict=True))
    shapes = sorted({tuple(p.shape) for p in base})
    print(f"{args.preset}: {len(base)} hidden matrices in {len(shapes)} shapes {shapes}; "
          f"{sum(p.numel() for p in base) / 1e6:.2f} M parameters; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads\n")
    print("| way | aten ops per step | median s per step |")
    print("| --- | --- | --- |")
    for name in ways:
        print(f"| {name} | {sum(ops[name].values()):,} | {statistics.median(seconds[name]):.3f} |")
    first, second = (sum(ops[n].values()) for n in ways)
    print(f"\nops: {second / first:.3f} of torch's ({first / second:.1f}x fewer); weights after "
          f"{args.steps + 2} steps {'bitwise equal' if same else 'differ (within bf16 rounding, see the tests)'}")
    print("most dispatched, stacked:", ", ".join(f"{k} {v}" for k, v in ops[list(ways)[1]].most_common(8)))


if __name__ == "__main__":
    main()
