"""The optimizer a run's settings ask for, as one object the loop, the checkpoint and GradScaler use.

`optimizer = "adamw"` is nanoGPT's: one torch AdamW, decay on matrices only (GPT.optimizer), its
state_dict AdamW's own, so checkpoints written before Muon existed load into it unchanged.

`optimizer = "muon"` is torch.optim.Muon's update (orthogonalised Nesterov momentum), stepped for
same-shape matrices together (job/muon.py: the same arithmetic and state, a few dozen ops a step
instead of about a thousand) on the 2-D weights of the transformer blocks, the hidden matrices,
and AdamW on the rest:
token and position embeddings and the head (which Muon is not meant for) and the norms' gains and
biases (1-D). The two are held by `MuonAdamW`, which looks like one optimizer: `param_groups` is
both lists (what the schedule and GradScaler.unscale_ walk), `step`, `zero_grad`, and a
`state_dict` of {"muon": ..., "adamw": ...}. Muon's group carries "kind": "muon", so that the
schedule sets each group's learning rate from its own peak (`muon_lr`; `lr` for every other group).

The schedule itself (`lr_at`: warmup, then cosine or warmup-stable-decay) lives here too, next to
`set_lr`, which applies its value to every group.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from job.model import GPT
from job.muon import StackedMuon

MUON, ADAMW = "muon", "adamw"


class MuonAdamW:
    """Muon on the blocks' matrices and torch's AdamW on everything else, as one optimizer."""

    def __init__(self, muon: StackedMuon, adamw: torch.optim.AdamW):
        self.muon, self.adamw = muon, adamw
        self.optimizers = (muon, adamw)

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return [*self.muon.param_groups, *self.adamw.param_groups]

    def step(self) -> None:
        for opt in self.optimizers:
            opt.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:
        return {MUON: self.muon.state_dict(), ADAMW: self.adamw.state_dict()}

    def load_state_dict(self, saved: dict[str, Any]) -> None:
        if set(saved) != {MUON, ADAMW}:
            raise ValueError(f"optimizer state holds {sorted(saved)}, not Muon's and AdamW's")
        self.muon.load_state_dict(saved[MUON])
        self.adamw.load_state_dict(saved[ADAMW])


def is_hidden_matrix(name: str, p: torch.nn.Parameter) -> bool:
    """A 2-D weight inside a transformer block: what Muon updates."""
    return p.dim() == 2 and name.startswith("transformer.h.")


def build(model: GPT, cfg: Any, device_type: str) -> torch.optim.AdamW | MuonAdamW:
    """The optimizer `cfg` (a Config) names, over `model`'s parameters."""
    betas = (cfg.beta1, cfg.beta2)
    if cfg.optimizer == ADAMW:
        return model.optimizer(cfg.lr, cfg.weight_decay, betas, device_type)  # nanoGPT's, untouched
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    hidden = [p for n, p in named if is_hidden_matrix(n, p)]
    rest = [p for n, p in named if not is_hidden_matrix(n, p)]
    muon = StackedMuon([{"params": hidden, "kind": MUON}], lr=cfg.muon_lr, momentum=cfg.muon_momentum,
                       weight_decay=cfg.muon_weight_decay, nesterov=True,
                       compiled=bool(cfg.compile) and device_type == "cuda")
    adamw = torch.optim.AdamW([
        {"params": [p for p in rest if p.dim() >= 2], "weight_decay": cfg.weight_decay, "kind": ADAMW},
        {"params": [p for p in rest if p.dim() < 2], "weight_decay": 0.0, "kind": ADAMW},
    ], lr=cfg.lr, betas=betas, fused=device_type == "cuda")
    return MuonAdamW(muon, adamw)


def lr_at(it: int, cfg: Any) -> float:
    """Linear warmup, then cosine decay to min_lr at max_iters; or (schedule wsd) warmup, flat at
    lr, and a linear warmdown to min_lr over the last warmdown_frac of max_iters."""
    if it < cfg.warmup_iters:
        return cfg.lr * (it + 1) / (cfg.warmup_iters + 1)
    if cfg.schedule == "wsd":
        left = (cfg.max_iters - it) / max(1.0, cfg.warmdown_frac * cfg.max_iters)
        return cfg.lr if left >= 1 else cfg.min_lr + max(0.0, left) * (cfg.lr - cfg.min_lr)
    span = max(1, cfg.max_iters - cfg.warmup_iters)
    progress = min(1.0, (it - cfg.warmup_iters) / span)
    return cfg.min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (cfg.lr - cfg.min_lr)


def set_lr(optimizer: torch.optim.Optimizer | MuonAdamW, lr: float, cfg: Any) -> None:
    """The schedule's learning rate for this step, each group from its own peak: AdamW's groups
    take `lr` as it is, Muon's the same point of the schedule scaled to muon_lr."""
    muon_lr = lr * (cfg.muon_lr / cfg.lr)
    for group in optimizer.param_groups:
        group["lr"] = muon_lr if group.get("kind") == MUON else lr


def reset(optimizer: torch.optim.Optimizer | MuonAdamW) -> None:
    """Forget every moment and momentum (weights made elsewhere start the optimizer fresh)."""
    for opt in getattr(optimizer, "optimizers", (optimizer,)):
        opt.state.clear()


def state_bytes_per_param(optimizer: str) -> int:
    """fp32 state per parameter: AdamW's two moments, Muon's one momentum buffer."""
    return 4 if optimizer == MUON else 8
