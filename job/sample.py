"""`job sample`: text from a run's newest whole checkpoint."""

from __future__ import annotations

from pathlib import Path

import torch

from job import checkpoint
from job.device import pick_device
from job.errors import ConfigError
from job.model import GPT, build_model
from job.rundir import RunDir
from job.tokenizer import get_encoding


def load_model(run_dir: Path, device: torch.device) -> tuple[GPT, int]:
    found = checkpoint.load_latest(RunDir(run_dir).ckpt, map_location=device)
    if found is None:
        raise ConfigError(f"run: no checkpoint in {run_dir}/ckpt; train first with `job train --run {run_dir.name}`")
    state, _ = found
    model = build_model(state["config"])
    model.load_state_dict(state["model"])
    return model.to(device).eval(), state["iteration"]


def generate_text(run_dir: Path, prompt: str, tokens: int, temperature: float, top_k: int,
                  seed: int, device: str = "auto") -> str:
    dev = pick_device(device)
    model, _ = load_model(run_dir, dev)
    enc = get_encoding()
    ids = enc.encode(prompt, allowed_special={"<|endoftext|>"}) or [enc.eot_token]
    gen = torch.Generator(device=dev).manual_seed(seed)
    x = torch.tensor([ids], dtype=torch.long, device=dev)
    out = model.generate(x, tokens, temperature=temperature, top_k=top_k or None, generator=gen,
                         n_vocab=enc.n_vocab)
    return enc.decode(out[0].tolist())
