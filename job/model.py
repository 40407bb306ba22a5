"""GPT-2, the whole model on one screen.

Learned position embeddings, pre-LayerNorm blocks, GELU MLP, causal self-attention through
torch's scaled_dot_product_attention (flash / memory-efficient kernels where available), and the
token embedding tied to the output head. The modern recipe's choices keep it an exact GPT-2
(job/commands/export.py): ReLU² for GELU (`activation`), an untied head (`tie_embeddings`), and the
projections into the residual stream (and an untied head) starting at zero (`zero_init`). The
defaults are nanoGPT's model, initialised from the same random draws in the same order.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, fields
from typing import Any

import torch
import torch.nn as nn
from torch.nn import functional as F


@dataclass
class GPTConfig:
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    block_size: int = 1024
    vocab_size: int = 50304
    bias: bool = False
    dropout: float = 0.0
    loss_chunk: int = 0  # rows per chunk of the fused head + loss; 0 = plain full logits
    activation: str = "gelu"  # MLP activation: gelu (exact) | relu2 (ReLU squared)
    tie_embeddings: bool = True  # the token embedding is the output head's weight
    zero_init: bool = False  # projections into the residual stream (and an untied head) start at zero


class LayerNorm(nn.Module):
    """LayerNorm whose bias can be switched off (torch's own always has one before 2.1)."""

    def __init__(self, dim: int, bias: bool):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, 1e-5)


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.n_head = cfg.n_head
        self.dropout = cfg.dropout
        self.c_attn = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=cfg.bias)
        self.c_proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.resid_dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        # (B, T, C) -> (B, heads, T, head_dim)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(
            q, k, v, is_causal=True, dropout_p=self.dropout if self.training else 0.0
        )
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(cfg.n_embd, 4 * cfg.n_embd, bias=cfg.bias)
        self.c_proj = nn.Linear(4 * cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.dropout = nn.Dropout(cfg.dropout)
        self.relu2 = cfg.activation == "relu2"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.c_fc(x)
        h = F.relu(h).square() if self.relu2 else F.gelu(h)
        return self.dropout(self.c_proj(h))


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.ln_1 = LayerNorm(cfg.n_embd, cfg.bias)
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = LayerNorm(cfg.n_embd, cfg.bias)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class ChunkedHeadLoss(torch.autograd.Function):
    """The output head and the cross-entropy, fused and taken a few rows at a time.

    The full (tokens x vocab) logits are the largest tensor of a small GPT's step, several times
    its weights, and streaming them through memory for softmax and its gradient costs more than
    the matmul on a CPU. Here each chunk's logits are made, turned into the loss and its gradient
    (softmax minus one-hot) and dropped while still in cache; the gradients for the hidden states
    and the head weight are kept for backward, which only scales them. Under fp16 autocast the
    hidden states' gradient is taken from the unscaled softmax (values up to 1) and divided by the
    row count in fp32 afterwards: divided first, most of it would underflow fp16.
    """

    @staticmethod
    def forward(ctx, h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk: int) -> torch.Tensor:
        n = h.size(0)
        device = h.device.type
        late = torch.is_autocast_enabled(device) and torch.get_autocast_dtype(device) == torch.float16
        grad_h = torch.empty(h.shape, dtype=torch.float32 if late else h.dtype, device=h.device)
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
        total = torch.zeros((), dtype=torch.float32, device=h.device)
        for i in range(0, n, chunk):
            hc, tc = h[i:i + chunk], targets[i:i + chunk]
            z = (hc @ weight.t()).float()
            lse = torch.logsumexp(z, dim=-1, keepdim=True)
            total += (lse.squeeze(1) - z.gather(1, tc[:, None]).squeeze(1)).sum()
            p = z.sub_(lse).exp_()  # softmax, in place of the logits
            p[torch.arange(p.size(0), device=p.device), tc] -= 1.0
            if late:
                grad_h[i:i + chunk] = p.to(h.dtype) @ weight.to(h.dtype)
            p /= n
            if not late:
                grad_h[i:i + chunk] = p.to(h.dtype) @ weight.to(h.dtype)
            grad_w.addmm_(p.t().to(grad_w.dtype), hc.to(grad_w.dtype))  # in place: no weight-sized temporary
        if late:
            grad_h /= n
        ctx.save_for_backward(grad_h, grad_w)
        ctx.dtypes = h.dtype, weight.dtype
        return total / n

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        grad_h, grad_w = ctx.saved_tensors
        h_dtype, w_dtype = ctx.dtypes
        return (grad_h * grad_out).to(h_dtype), (grad_w * grad_out).to(w_dtype), None, None


def chunked_loss(h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk: int) -> torch.Tensor:
    """ChunkedHeadLoss's loss alone, for evaluation: the same sums in the same order, so the same
    number, without the gradient work (under no_grad that is most of the cost)."""
    total = torch.zeros((), dtype=torch.float32, device=h.device)
    for i in range(0, h.size(0), chunk):
        z = (h[i:i + chunk] @ weight.t()).float()
        tc = targets[i:i + chunk]
        total += (torch.logsumexp(z, dim=-1) - z.gather(1, tc[:, None]).squeeze(1)).sum()
    return total / h.size(0)


class GPT(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.cfg = cfg
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(cfg.vocab_size, cfg.n_embd),
            wpe=nn.Embedding(cfg.block_size, cfg.n_embd),
            drop=nn.Dropout(cfg.dropout),
            h=nn.ModuleList([Block(cfg) for _ in range(cfg.n_layer)]),
            ln_f=LayerNorm(cfg.n_embd, cfg.bias),
        ))
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.transformer.wte.weight = self.lm_head.weight  # weight tying
        self.apply(self._init_weights)
        # GPT-2's scaled init: each block adds to the residual stream twice, so the projections
        # into it shrink with depth to keep the stream's variance from growing.
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))
        if cfg.zero_init:  # each block starts as the identity, and the untied head predicts uniformly
            for name, p in self.named_parameters():
                if name.endswith("c_proj.weight") or (name == "lm_head.weight" and not cfg.tie_embeddings):
                    nn.init.zeros_(p)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_params(self, non_embedding: bool = True) -> int:
        """nanoGPT's count: a tied head once (an untied one as well), position embeddings left out by default."""
        n = sum(p.numel() for p in self.parameters())
        return n - self.transformer.wpe.weight.numel() if non_embedding else n

    def hidden(self, idx: torch.Tensor) -> torch.Tensor:
        """The final LayerNorm's output at every position: what the head turns into logits."""
        B, T = idx.shape
        if T > self.cfg.block_size:
            raise ValueError(f"sequence of {T} tokens is longer than block_size={self.cfg.block_size}")
        pos = torch.arange(T, device=idx.device)
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))
        for block in self.transformer.h:
            x = block(x)
        return self.transformer.ln_f(x)

    def logits(self, idx: torch.Tensor) -> torch.Tensor:
        """Logits at every position, (batch, T, vocab_size): for scoring text (HellaSwag, export checks)."""
        return self.lm_head(self.hidden(idx))

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        """(last position's logits, None) for generation; (None, mean loss) with targets: training
        and evaluation need no logits, and returning them would keep the largest tensor of the
        step alive through backward and into the next micro-step."""
        x = self.hidden(idx)
        if targets is None:  # generation needs only the last position's logits
            return self.lm_head(x[:, [-1], :]), None
        h, t = x.reshape(-1, x.size(-1)), targets.reshape(-1)
        if self.cfg.loss_chunk and torch.is_grad_enabled():
            return None, ChunkedHeadLoss.apply(h, self.lm_head.weight, t, self.cfg.loss_chunk)
        if self.cfg.loss_chunk:
            return None, chunked_loss(h, self.lm_head.weight, t, self.cfg.loss_chunk)
        return None, F.cross_entropy(self.lm_head(h).float(), t)

    def optimizer(self, lr: float, weight_decay: float, betas: tuple[float, float],
                  device_type: str) -> torch.optim.AdamW:
        """AdamW with decay on matrices (2-D and up) only: biases and norms are left alone."""
        params = [p for p in self.parameters() if p.requires_grad]
        groups = [
            {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
        ]
        fused = device_type == "cuda"  # one kernel for all parameters; CPU keeps the reference path
        return torch.optim.AdamW(groups, lr=lr, betas=betas, fused=fused)

    @torch.no_grad()
    def stream(self, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
               top_k: int | None = None, generator: torch.Generator | None = None,
               n_vocab: int | None = None) -> Iterator[torch.Tensor]:
        """Yield each new token, (batch, 1), as soon as it is chosen. n_vocab masks the padding ids
        that no tokenizer can decode; temperature 0 is greedy (the likeliest token, no sampling)."""
        for _ in range(max_new_tokens):
            context = idx[:, -self.cfg.block_size:]
            logits, _ = self(context)
            logits = logits[:, -1, :].float()
            if n_vocab:
                logits[:, n_vocab:] = -float("inf")
            if temperature == 0:
                nxt = logits.argmax(dim=-1, keepdim=True)
            else:
                logits = logits / temperature
                if top_k:
                    kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, [-1]]
                    logits[logits < kth] = -float("inf")
                nxt = torch.multinomial(F.softmax(logits, dim=-1), 1, generator=generator)
            idx = torch.cat((idx, nxt), dim=1)
            yield nxt

    def generate(self, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
                 top_k: int | None = None, generator: torch.Generator | None = None,
                 n_vocab: int | None = None) -> torch.Tensor:
        """The prompt and max_new_tokens more, all at once (see stream)."""
        new = list(self.stream(idx, max_new_tokens, temperature, top_k, generator, n_vocab))
        return torch.cat([idx, *new], dim=1)


def build_model(settings: Mapping[str, Any]) -> GPT:
    """The model that a run's settings describe: a Config's to_dict(), or the config a checkpoint
    holds (keys the model does not take are ignored). Initialised from torch's current RNG."""
    return GPT(GPTConfig(**{f.name: settings[f.name] for f in fields(GPTConfig) if f.name in settings}))
