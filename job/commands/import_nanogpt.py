"""`job import-nanogpt`: a nanoGPT `ckpt.pt` becomes a run here, which sample, eval, export and
train accept like any other.

nanoGPT's model is this one (job/model.py keeps its parameter names), so the weights carry over
unchanged: only torch.compile's `_orig_mod.` prefix is dropped, and the causal-mask buffer that
nanoGPT keeps as `attn.bias` without flash attention (not a weight). The file is read with
weights_only=True; one holding anything but tensors and plain containers is refused, naming the
type, and nothing of it runs. It becomes checkpoint 0 of a new run, written through
job/checkpoint.py like every other, as an imported checkpoint: no data fingerprint and an empty
optimizer, so `job train` starts AdamW fresh (from iteration 0, with warmup) on whatever data it
is given, checking only that the model's shape matches. nanoGPT's iteration count, best val loss
and config are kept with it as provenance, in the checkpoint and in the run's log.
"""

from __future__ import annotations

import dataclasses
import pickle
import re
from pathlib import Path
from typing import Any

import torch

from job import checkpoint
from job.config import Config, coerce, validate
from job.errors import ConfigError
from job.fileio import sha256_file
from job.model import GPT, build_model
from job.rundir import RunDir
from job.state import TrainState
from job.tokenizer import N_VOCAB

SHAPE = ("n_layer", "n_head", "n_embd", "block_size", "vocab_size", "bias")
MASK_BUFFERS = (".attn.bias", ".attn.masked_bias")  # nanoGPT's (and old HF's) causal masks, not weights


class ImportRefused(ConfigError):
    """The file is not a nanoGPT checkpoint this job can take; the message says why."""


def read_nanogpt(path: Path) -> dict[str, Any]:
    """The checkpoint's content, loaded with weights_only=True, or one line saying why not."""
    if not path.is_file():
        raise ImportRefused(f"checkpoint: {path} does not exist; give the path of a nanoGPT ckpt.pt")
    try:
        content = checkpoint.read(path)
    except pickle.UnpicklingError as e:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
        what = f"a {found.group(1)}" if found else str(e).strip().splitlines()[-1][:200]
        raise ImportRefused(f"checkpoint: {path} holds {what}, which is not a tensor or a plain container; "
                            f"weights_only loading refuses it so that nothing in the file runs. Re-save it with "
                            f"plain types (e.g. float() for numpy numbers) and import again") from None
    except Exception as e:  # not a torch file at all, or a truncated one
        raise ImportRefused(f"checkpoint: {path} is not a readable torch checkpoint ({type(e).__name__}: "
                            f"{str(e).strip().splitlines()[0][:160]})") from None
    if not isinstance(content, dict) or not isinstance(content.get("model"), dict) or not isinstance(
            content.get("model_args"), dict):
        raise ImportRefused(f"checkpoint: {path} is not a nanoGPT checkpoint (it needs 'model' and 'model_args' "
                            f"entries, as nanoGPT's train.py saves them)")
    return content


def nanogpt_weights(state: dict[str, Any]) -> dict[str, torch.Tensor]:
    """nanoGPT's state dict under this model's names: compile prefix and mask buffers dropped, and
    the tied embedding present under both its names."""
    weights = {k.removeprefix("_orig_mod."): v for k, v in state.items()}
    weights = {k: v for k, v in weights.items() if not k.endswith(MASK_BUFFERS)}
    wte, head = weights.get("transformer.wte.weight"), weights.get("lm_head.weight")
    if wte is not None and head is not None and not torch.equal(wte, head):
        raise ImportRefused("checkpoint: lm_head.weight differs from transformer.wte.weight; this model ties "
                            "them (as nanoGPT does), so an untied checkpoint cannot be imported")
    if wte is None or head is None:
        weights["transformer.wte.weight"] = weights["lm_head.weight"] = wte if wte is not None else head
    return weights


def shape_of(args: dict[str, Any], weights: dict[str, torch.Tensor]) -> dict[str, Any]:
    """The model's settings from nanoGPT's model_args (bias, absent in old ones, from the weights)."""
    missing = [k for k in SHAPE if k not in args and k != "bias"]
    if missing:
        raise ImportRefused(f"checkpoint: model_args lacks {', '.join(missing)}; it needs {', '.join(SHAPE)}")
    try:
        shape = {k: coerce(k, args[k]) for k in SHAPE if k in args}
        shape.setdefault("bias", any(k.endswith("ln_f.bias") for k in weights))
        shape["dropout"] = coerce("dropout", args.get("dropout", 0.0))
    except ConfigError as e:
        raise ImportRefused(f"checkpoint: model_args {e}") from None
    if int(shape["vocab_size"]) < N_VOCAB:
        raise ImportRefused(f"checkpoint: vocab_size {shape['vocab_size']} is not GPT-2's BPE (50257 tokens, "
                            f"often padded to 50304); this job trains on GPT-2 tokens, so a character-level "
                            f"model such as shakespeare_char cannot be imported")
    return shape


def build(weights: dict[str, torch.Tensor], cfg: Config) -> GPT:
    """Our model holding exactly these weights: every tensor used, none missing, shapes equal."""
    model = build_model(cfg.to_dict())
    want = model.state_dict()
    missing, extra = sorted(want.keys() - weights.keys()), sorted(weights.keys() - want.keys())
    wrong = [f"{k} {tuple(weights[k].shape)} (expected {tuple(v.shape)})" for k, v in want.items()
             if k in weights and weights[k].shape != v.shape]
    if missing or extra or wrong:
        parts = [f"{label}: {', '.join(items[:3])}{' ...' if len(items) > 3 else ''}"
                 for label, items in (("missing", missing), ("unexpected", extra), ("shape", wrong)) if items]
        raise ImportRefused(f"checkpoint: its weights do not fit the model its model_args describe "
                            f"({'; '.join(parts)})")
    model.load_state_dict(weights)
    if bad := checkpoint.nonfinite(model.state_dict()):
        raise ImportRefused(f"checkpoint: non-finite values in {', '.join(bad[:3])}; a run never holds a NaN")
    return model


def provenance(path: Path, content: dict[str, Any]) -> dict[str, Any]:
    """Where the weights came from: the file and what nanoGPT recorded with them."""
    best = content.get("best_val_loss")
    best = float(best) if isinstance(best, torch.Tensor | int | float) else None
    config = content.get("config")
    return {"format": "nanoGPT", "source": str(path.resolve()), "sha256": sha256_file(path),
            "iter_num": int(content["iter_num"]) if isinstance(content.get("iter_num"), int) else None,
            "best_val_loss": best, "config": config if isinstance(config, dict) else {}}


def import_nanogpt(path: Path, run: RunDir, out_dir: Path) -> dict[str, Any]:
    """Write run `run` holding the checkpoint at `path` as its checkpoint 0; the caller holds its lock."""
    validate(dataclasses.replace(Config(), run=run.name))  # the name must be one `job train` takes
    if run.has_history():
        raise ImportRefused(f"run: {run.path} already exists; import into a new --run, or move it away first")
    content = read_nanogpt(path)
    weights = nanogpt_weights(content["model"])
    shape = shape_of(content["model_args"], weights)
    cfg = dataclasses.replace(Config(), run=run.name, out_dir=str(out_dir), data="", **shape)
    try:
        validate(cfg)
    except ConfigError as e:
        raise ImportRefused(f"checkpoint: model_args {e}") from None
    model = build(weights, cfg)
    optimizer = model.optimizer(cfg.lr, cfg.weight_decay, (cfg.beta1, cfg.beta2), "cpu")
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    state, origin = TrainState(), provenance(path, content)
    saved = checkpoint.snapshot(model, optimizer, scaler, state, cfg.to_dict(), "", torch.device("cpu"))
    saved["imported"] = origin
    ckpt = checkpoint.save(run.ckpt, saved, state, cfg.keep_ckpts)
    run.write_config(cfg.to_dict())
    log = run.open_log()
    log.write("import", iteration=0, **{k: v for k, v in origin.items() if k != "config"},
              params=model.num_params(), checkpoint=str(ckpt))
    log.close()
    return {"run": run.name, "checkpoint": str(ckpt), "params": model.num_params(), **shape,
            "iter_num": origin["iter_num"], "best_val_loss": origin["best_val_loss"],
            "train_flags": train_flags(cfg)}


def train_flags(cfg: Config) -> str:
    """The flags that make `job train` build this model (its shape must match the checkpoint's, and
    its function: nanoGPT's GELU and tied head, the nanogpt recipe; `--optimizer muon` may be added)."""
    flags = [f"--run {cfg.run_name}", "--recipe nanogpt"]
    flags += [f"--{k.replace('_', '-')} {getattr(cfg, k)}" for k in SHAPE if k != "bias"]
    flags.append("--bias" if cfg.bias else "--no-bias")
    if cfg.out_dir != Config.out_dir:
        flags.append(f"--out-dir {cfg.out_dir}")
    return " ".join(flags)

