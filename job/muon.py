"""torch.optim.Muon's update, made for many matrices at once: same-shape matrices go through
Newton-Schulz together, as one stack of batched matmuls, instead of one matrix at a time.

torch's Muon (2.9 and later) loops over its parameters in Python, with no foreach path: each
matrix costs about 20 ops (momentum, the normalisation, five Newton-Schulz iterations of a matmul
and two addmm's), so a 12-layer GPT's 48 hidden matrices cost about a thousand kernel launches per
step, more than the forward and backward of a small model's micro-batch on a fast card. Here the
momentum and the weight decay are one foreach op each over every matrix, and each distinct shape
(four in a GPT block: attention in and out, MLP in and out) is one stack through Newton-Schulz.

The arithmetic is torch.optim.Muon's, step for step: momentum `buf.lerp_(grad, 1 - momentum)`,
Nesterov `grad.lerp(buf, momentum)`, the update in bf16 (a tall matrix transposed first) divided by
its Frobenius norm (at least eps), five quintic iterations with (a, b, c) = (3.4445, -4.7750,
2.0315), decoupled weight decay `param *= 1 - lr * weight_decay`, and the step scaled by
sqrt(max(1, rows / cols)) (torch's default `adjust_lr_fn`). A batched matmul sums in another order
than a single one, so results agree with torch's within bf16 rounding, not bit for bit
(tests/unit/test_muon.py compares one and ten steps). The state is torch's too: a `momentum_buffer`
per parameter and the same group keys, so a checkpoint written by torch.optim.Muon loads as it is.
Only the stacked Newton-Schulz is compiled, and only where asked (CUDA with compile on): on a CPU
it is as fast eager.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor

NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)  # torch.optim.Muon's defaults (Keller Jordan's quintic)
NS_STEPS = 5
EPS = 1e-7


def newton_schulz(stack: Tensor, coefficients: tuple[float, float, float] = NS_COEFFICIENTS,
                  steps: int = NS_STEPS, eps: float = EPS) -> Tensor:
    """A stack of k same-shape matrices (k, m, n) -> their approximate orthogonalisations, in bf16."""
    a, b, c = coefficients
    x = stack.bfloat16()
    tall = x.size(-2) > x.size(-1)
    if tall:
        x = x.mT
    x = x / torch.linalg.vector_norm(x, dim=(-2, -1), keepdim=True).clamp(min=eps)
    for _ in range(steps):
        gram = torch.bmm(x, x.mT)
        x = torch.baddbmm(x, torch.baddbmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x.mT if tall else x


def adjusted_lr(lr: float, shape: torch.Size) -> float:
    """torch's default (`adjust_lr_fn=None`, "original"): the same update RMS for tall matrices."""
    rows, cols = shape[:2]
    return lr * math.sqrt(max(1.0, rows / cols))


def by_shape(params: list[Tensor]) -> dict[torch.Size, list[int]]:
    """Indices of the parameters, grouped by shape, in order of first appearance."""
    groups: dict[torch.Size, list[int]] = {}
    for i, p in enumerate(params):
        groups.setdefault(p.shape, []).append(i)
    return groups


class StackedMuon(torch.optim.Optimizer):
    """torch.optim.Muon's update and state, stepping same-shape matrices together."""

    def __init__(self, params: Iterable[Any], lr: float = 1e-3, weight_decay: float = 0.1, momentum: float = 0.95,
                 nesterov: bool = True, compiled: bool = False):
        defaults = dict(lr=lr, weight_decay=weight_decay, momentum=momentum, nesterov=nesterov,
                        ns_coefficients=NS_COEFFICIENTS, eps=EPS, ns_steps=NS_STEPS, adjust_lr_fn=None)
        super().__init__(params, defaults)
        for group in self.param_groups:
            for p in group["params"]:
                if p.ndim != 2:
                    raise ValueError(f"Muon updates matrices; got a parameter of shape {tuple(p.shape)}")
        # torch.compile of the stack alone (one graph per shape); not a group key, so the state
        # dict stays torch.optim.Muon's
        self._orthogonalise: Callable[..., Tensor] = torch.compile(newton_schulz) if compiled else newton_schulz

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if params:
                self._step_group(group, params)
        return loss

    def _step_group(self, group: dict[str, Any], params: list[Tensor]) -> None:
        grads = [p.grad for p in params]
        bufs = []
        for p in params:
            state = self.state[p]
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = torch.zeros_like(p.grad, memory_format=torch.preserve_format)
            bufs.append(state["momentum_buffer"])
        momentum, lr = group["momentum"], group["lr"]
        torch._foreach_lerp_(bufs, grads, 1 - momentum)
        updates = torch._foreach_lerp(grads, bufs, momentum) if group["nesterov"] else bufs
        torch._foreach_mul_(params, 1 - lr * group["weight_decay"])
        for shape, idx in by_shape(params).items():
            ortho = self._orthogonalise(torch.stack([updates[i] for i in idx]), group["ns_coefficients"],
                                        group["ns_steps"], group["eps"])
            torch._foreach_add_([params[i] for i in idx], list(ortho.unbind(0)), alpha=-adjusted_lr(lr, shape))
