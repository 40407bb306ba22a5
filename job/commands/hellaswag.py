"""HellaSwag from a local `.jsonl` (the official files' `ctx`, `endings`, `label`), scored as a
completion task, as the GPT-2 and GPT-3 papers do; nothing is downloaded.

For each example the context is followed by each of its four endings (" " + ending: the official
`ctx` has no trailing space and the endings no leading one), tokenised apart, so the context's
tokens are the same for all four. The model's log-probability of each ending token, given
everything before it, is summed over the ending:
- acc: the ending with the largest sum is the model's choice;
- acc_norm: the ending with the largest mean per token (the sum divided by the ending's length in
  GPT-2 tokens) is the choice: GPT-3's per-token normalisation, which stops short endings winning
  for being short. (lm-evaluation-harness's `acc_norm` divides by the ending's length in
  characters instead, after its own clean-up of the text, so its figure differs somewhat.)
The log-probabilities are over the model's whole (padded) vocabulary, as the val loss is. A
sequence longer than block_size + 1 loses tokens from the front of its context. Ties go to the
first ending.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.nn import functional as F

from job.errors import ConfigError
from job.model import GPT
from job.tokenizer import EOT, get_encoding


@dataclass
class Example:
    context: list[int]
    endings: list[list[int]]  # each " " + ending, tokenised
    label: int


def read_examples(path: Path, limit: int | None = None) -> list[Example]:
    """The file's examples (the first `limit`), tokenised; a bad line is named, not skipped."""
    if not path.is_file():
        raise ConfigError(f"hellaswag: {path} does not exist; give the path of a HellaSwag .jsonl (e.g. the "
                          f"official hellaswag_val.jsonl)")
    enc, out = get_encoding(), []
    with open(path, encoding="utf-8", errors="replace") as f:
        for number, line in enumerate(f, 1):
            if limit is not None and len(out) >= limit:
                break
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                ctx, endings, label = rec["ctx"], rec["endings"], int(rec["label"])
                ok = isinstance(ctx, str) and len(endings) >= 2 and all(isinstance(e, str) and e for e in endings)
            except (json.JSONDecodeError, KeyError, TypeError, ValueError):
                ok = False
            if not ok or not 0 <= label < len(endings):
                raise ConfigError(f"hellaswag: {path}:{number} is not a HellaSwag record (a JSON object with "
                                  f"'ctx' text, 'endings' (a list of texts) and a 'label' indexing them)")
            out.append(Example(enc.encode_ordinary(ctx), [enc.encode_ordinary(" " + e) for e in endings], label))
    if not out:
        raise ConfigError(f"hellaswag: {path} holds no examples")
    return out


@torch.no_grad()
def ending_logprobs(model: GPT, ex: Example, device: torch.device) -> list[tuple[float, int]]:
    """(sum of the ending's token log-probs, its length in tokens) for each ending, in one batch."""
    room = model.cfg.block_size + 1
    rows = [(ex.context + end)[-room:] for end in ex.endings]
    scored = [min(len(end), len(row) - 1) for end, row in zip(ex.endings, rows, strict=True)]
    width = max(len(r) for r in rows)
    ids = torch.tensor([r + [EOT] * (width - len(r)) for r in rows], dtype=torch.long, device=device)
    logp = F.log_softmax(model.logits(ids[:, :-1]).float(), dim=-1)
    got = logp.gather(2, ids[:, 1:, None]).squeeze(2)  # log p(token t+1 | tokens up to t)
    out = []
    for i, (row, n) in enumerate(zip(rows, scored, strict=True)):
        out.append((float(got[i, len(row) - 1 - n: len(row) - 1].sum()), n))
    return out


def score(model: GPT, examples: list[Example], device: torch.device, on_example: Any = None) -> dict[str, Any]:
    """acc and acc_norm over `examples` (see the module's docstring)."""
    hits = hits_norm = 0
    for ex in examples:
        scores = ending_logprobs(model, ex, device)
        sums = [s for s, _ in scores]
        means = [s / n for s, n in scores]
        hits += sums.index(max(sums)) == ex.label
        hits_norm += means.index(max(means)) == ex.label
        if on_example:
            on_example()
    n = len(examples)
    return {"hellaswag_examples": n, "hellaswag_acc": hits / n, "hellaswag_acc_norm": hits_norm / n}
