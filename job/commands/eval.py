"""`job eval`: how good a run's checkpoint is. Val loss and perplexity on the prepared val split
(measured by job/evaluate.py, the training loop's own function, so the figures agree with the
loop's on the same windows), and HellaSwag accuracy from a local file (job/commands/hellaswag.py).

The val windows are the split's first ones, in order: all of them, or enough for `--tokens`. With
the run's batch_size and `--tokens eval_iters x batch_size x block_size`, they are exactly the
batches the loop evaluated on. The dataset, dtype and batch size default to the run's own.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import torch

from job.commands.hellaswag import read_examples, score
from job.commands.weights import Trained, load_trained
from job.config import Config
from job.data.dataset import open_dataset
from job.device import pick_device, pick_precision
from job.errors import ConfigError
from job.evaluate import evaluate, first_windows, perplexity
from job.ui import progress


def val_scores(trained: Trained, data: str | None, tokens: int | None, batch_size: int | None,
               device: torch.device) -> dict[str, Any]:
    cfg = trained.config
    name = data or cfg.get("data")
    if not name:
        raise ConfigError("data: this run was imported and names no dataset; pass --data (a prepared dataset, "
                          "e.g. shakespeare) or --no-val")
    path = Config(data=name, data_root=cfg.get("data_root", Config.data_root)).data_dir
    dataset = open_dataset(name, path, cfg["block_size"], cfg["vocab_size"])
    batches, n_tokens = first_windows(dataset.files("val"), cfg["block_size"], batch_size or cfg["batch_size"],
                                      tokens, dataset.n_vocab)
    prec = pick_precision(device, cfg.get("dtype", "auto"))
    with progress("val", total=len(batches), unit="batches") as bar:
        loss = evaluate(trained.model, ticking(batches, bar.advance), prec)
    return {"data": str(path), "val_loss": loss, "perplexity": perplexity(loss), "val_tokens": n_tokens,
            "val_batches": len(batches)}


def ticking(items: Iterable[Any], tick: Callable[[], None]) -> Iterator[Any]:
    """The items, calling tick() after each one is used (a progress bar)."""
    for item in items:
        yield item
        tick()


def run_eval(run_dir: Path, checkpoint: str | None = None, data: str | None = None, tokens: int | None = None,
             batch_size: int | None = None, hellaswag: Path | None = None, limit: int | None = None,
             val: bool = True, device: str = "auto") -> dict[str, Any]:
    """The scores `job eval` prints (and, with --json, the keys it prints)."""
    if not val and hellaswag is None:
        raise ConfigError("eval: nothing to do with --no-val and no --hellaswag FILE; drop --no-val or give a file")
    dev = pick_device(device)
    examples = read_examples(hellaswag, limit) if hellaswag else None  # a bad file fails before any model work
    trained = load_trained(run_dir, checkpoint, dev)
    out: dict[str, Any] = {"run": run_dir.name, "checkpoint": str(trained.path), "iteration": trained.iteration}
    if val:
        out.update(val_scores(trained, data, tokens, batch_size, dev))
    if examples:
        with progress("hellaswag", total=len(examples), unit="examples") as bar:
            out.update(score(trained.model, examples, dev, bar.advance))
        out["hellaswag_normalisation"] = "acc_norm: mean log-prob per ending token (GPT-3)"
    return out


def render(r: dict[str, Any]) -> str:
    lines = [f"run          {r['run']}, {Path(r['checkpoint']).name} (iteration {r['iteration']:,})"]
    if "val_loss" in r:
        ppl = r["perplexity"]
        lines.append(f"val          loss {r['val_loss']:.4f}, perplexity {ppl:.2f} over {r['val_tokens']:,} tokens "
                     f"of {r['data']}" if math.isfinite(ppl) else f"val          loss {r['val_loss']:.4f}")
    if "hellaswag_acc" in r:
        lines.append(f"hellaswag    acc_norm {r['hellaswag_acc_norm']:.4f}, acc {r['hellaswag_acc']:.4f} over "
                     f"{r['hellaswag_examples']:,} examples (acc_norm: per-token mean log-prob, as GPT-3)")
    return "\n".join(lines)
