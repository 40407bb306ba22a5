"""`job sample`: text from a run's checkpoint, written to the terminal token by token as it is made.

A GPT-2 token is a piece of UTF-8, not always a whole character, so the pieces go through an
incremental UTF-8 decoder: a character split across two tokens is printed once both have arrived.
The same seed gives the same text, whether streamed or not.
"""

from __future__ import annotations

import codecs
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from job.commands.weights import load_trained
from job.device import pick_device
from job.tokenizer import get_encoding


def generate(run_dir: Path, prompt: str, tokens: int, temperature: float, top_k: int, seed: int,
             device: str = "auto", checkpoint: str | None = None,
             on_text: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Continue `prompt`; each new piece of text goes to on_text as soon as it can be decoded.
    Returns the whole result (what `--json` prints)."""
    dev = pick_device(device)
    trained = load_trained(run_dir, checkpoint, dev)
    enc = get_encoding()
    ids = enc.encode(prompt, allowed_special={"<|endoftext|>"}) or [enc.eot_token]
    gen = torch.Generator(device=dev).manual_seed(seed)
    x = torch.tensor([ids], dtype=torch.long, device=dev)
    utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
    new: list[int] = []
    for token in trained.model.stream(x, tokens, temperature=temperature, top_k=top_k or None, generator=gen,
                                      n_vocab=enc.n_vocab):
        new.append(int(token))
        piece = utf8.decode(enc.decode_single_token_bytes(new[-1]))
        if piece and on_text:
            on_text(piece)
    if (tail := utf8.decode(b"", final=True)) and on_text:
        on_text(tail)
    return {"run": run_dir.name, "checkpoint": str(trained.path), "iteration": trained.iteration, "prompt": prompt,
            "completion": enc.decode(new), "prompt_tokens": ids, "tokens": new, "seed": seed,
            "temperature": temperature, "top_k": top_k}
