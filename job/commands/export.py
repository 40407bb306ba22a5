"""`job export`: a run's checkpoint as a Hugging Face GPT-2 directory, loadable with
`GPT2LMHeadModel.from_pretrained(DIR)` and `AutoTokenizer.from_pretrained(DIR)` with no download.

What makes the exported model compute what ours computes:
- Weights: Hugging Face's GPT-2 keeps its four projections in Conv1D, whose weight is (in, out):
  ours are nn.Linear, (out, in), so they are transposed. Every other tensor keeps its name.
- Tied embedding: safetensors stores a tensor once, so only `transformer.wte.weight` is written and
  `tie_word_embeddings` makes the head share it, as Hugging Face's own GPT-2 files do. An untied
  head (tie_embeddings false, the modern recipe) is written as `lm_head.weight` with
  `tie_word_embeddings: false`, which GPT2LMHeadModel loads as its own head.
- Vocabulary: ours is padded to 50304 rows for fast matmuls; the export keeps the 50257 real
  tokens. Every consumer of the directory then sees a model whose vocabulary is its tokenizer's:
  no generation, sampler or harness can pick a padding id, and len(tokenizer) == vocab_size as
  tools assume. The real tokens' logits are unchanged. Log-probabilities differ from ours only by
  the probability our softmax gives the 47 padding ids, which training pushes towards 0 (they are
  never a target): `job eval` on a run and the harness on its export differ by that much.
- Activation: our MLP uses the exact (erf) GELU, as nanoGPT does; Hugging Face's GPT-2 default,
  `gelu_new`, is the tanh approximation. The config names `gelu`, the exact one. ReLU² (the
  modern recipe) is transformers' `relu2` (ReLUSquaredActivation: relu(x) squared, as ours).
- Biases: Hugging Face's GPT-2 always has them; a model trained with bias=False is written with
  zero biases, which computes the same function.
- LayerNorm epsilon 1e-5 and the scaled attention (1/sqrt(head_dim)) are the same on both sides.
The directory appears whole or not at all (job/fileio.py: a temporary sibling, renamed).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from job.commands.weights import load_checkpoint
from job.errors import ConfigError
from job.fileio import atomic_dir, atomic_write_bytes, atomic_write_json
from job.tokenizer import EOT, N_VOCAB, gpt2_files

CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
BIASED = ("ln_1", "attn.c_attn", "attn.c_proj", "ln_2", "mlp.c_fc", "mlp.c_proj")
SPECIAL = "<|endoftext|>"


def hf_tensors(model: dict[str, torch.Tensor], n_layer: int, tied: bool = True) -> dict[str, torch.Tensor]:
    """Our state dict under Hugging Face's GPT-2 layout, float32, each tensor its own storage."""
    out = {"transformer.wte.weight": model["transformer.wte.weight"][:N_VOCAB],
           "transformer.wpe.weight": model["transformer.wpe.weight"]}
    for i in range(n_layer):
        for part in BIASED:
            key = f"transformer.h.{i}.{part}"
            weight = model[f"{key}.weight"]
            out[f"{key}.weight"] = weight.t() if f"{part}.weight" in CONV1D else weight
            out[f"{key}.bias"] = model.get(f"{key}.bias", torch.zeros(weight.shape[0]))
    if not tied:
        out["lm_head.weight"] = model["lm_head.weight"][:N_VOCAB]
    ln_f = out["transformer.ln_f.weight"] = model["transformer.ln_f.weight"]
    out["transformer.ln_f.bias"] = model.get("transformer.ln_f.bias", torch.zeros_like(ln_f))
    return {k: v.detach().to("cpu", torch.float32).contiguous().clone() for k, v in out.items()}


def hf_config(cfg: dict[str, Any]) -> dict[str, Any]:
    """config.json: the shape, and the choices above spelled out."""
    dropout = float(cfg.get("dropout", 0.0))
    return {
        "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "vocab_size": N_VOCAB,
        "n_positions": cfg["block_size"], "n_embd": cfg["n_embd"], "n_layer": cfg["n_layer"], "n_head": cfg["n_head"],
        "n_inner": None, "activation_function": activation(cfg), "layer_norm_epsilon": 1e-5, "initializer_range": 0.02,
        "resid_pdrop": dropout, "embd_pdrop": dropout, "attn_pdrop": dropout,
        "scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False, "reorder_and_upcast_attn": False,
        "bos_token_id": EOT, "eos_token_id": EOT, "tie_word_embeddings": bool(cfg.get("tie_embeddings", True)),
        "use_cache": True, "dtype": "float32",
    }


def activation(cfg: dict[str, Any]) -> str:
    """transformers' name for the run's MLP activation (a config from before recipes: GELU)."""
    return {"gelu": "gelu", "relu2": "relu2"}[cfg.get("activation", "gelu")]


def generation_config() -> dict[str, Any]:
    """`model.generate(ids)` does what `job sample` does by default: sample at temperature 0.8
    among the 200 likeliest tokens, and stop at <|endoftext|>."""
    return {"bos_token_id": EOT, "eos_token_id": EOT, "pad_token_id": EOT, "do_sample": True,
            "temperature": 0.8, "top_k": 200}


def tokenizer_config(block_size: int) -> dict[str, Any]:
    special = {"content": SPECIAL, "lstrip": False, "rstrip": False, "normalized": True, "single_word": False,
               "special": True}
    return {"tokenizer_class": "GPT2Tokenizer", "model_max_length": block_size, "add_prefix_space": False,
            "add_bos_token": False, "errors": "replace", "bos_token": SPECIAL, "eos_token": SPECIAL,
            "unk_token": SPECIAL, "added_tokens_decoder": {str(EOT): special}}


def model_card(run: str, content: dict[str, Any], path: Path) -> str:
    cfg = content["config"]
    val = content.get("val_loss")
    return (f"---\nlibrary_name: transformers\npipeline_tag: text-generation\n---\n# {run}\n\n"
            f"GPT-2 ({cfg['n_layer']} layers, {cfg['n_head']} heads, {cfg['n_embd']} wide, context "
            f"{cfg['block_size']}) exported by `job export` from `{path.name}`: iteration {content['iteration']:,}, "
            f"{content.get('tokens', 0):,} training tokens, val loss {'-' if val is None else f'{val:.4f}'}.\n")


def export(run_dir: Path, out: Path, which: str | None = None) -> dict[str, Any]:
    """Write the Hugging Face directory `out` from the run's newest whole checkpoint (or `which`)."""
    from safetensors.torch import save

    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"out: {out} already exists and is not an empty directory; choose a new --out")
    content, path = load_checkpoint(run_dir, which)
    cfg = content["config"]
    vocab_bpe, encoder_json = gpt2_files()
    with atomic_dir(out) as tmp:
        tensors = hf_tensors(content["model"], cfg["n_layer"], cfg.get("tie_embeddings", True))
        atomic_write_bytes(tmp / "model.safetensors", save(tensors, metadata={"format": "pt"}))
        atomic_write_json(tmp / "config.json", hf_config(cfg), indent=2)
        atomic_write_json(tmp / "generation_config.json", generation_config(), indent=2)
        atomic_write_bytes(tmp / "vocab.json", encoder_json.read_bytes())
        atomic_write_bytes(tmp / "merges.txt", vocab_bpe.read_bytes())
        atomic_write_json(tmp / "tokenizer_config.json", tokenizer_config(cfg["block_size"]), indent=2)
        atomic_write_json(tmp / "special_tokens_map.json",
                          {"bos_token": SPECIAL, "eos_token": SPECIAL, "unk_token": SPECIAL}, indent=2)
        atomic_write_bytes(tmp / "README.md", model_card(run_dir.name, content, path).encode())
        files = sorted(p.name for p in tmp.iterdir())
    return {"out": str(out), "checkpoint": str(path), "iteration": content["iteration"], "files": files,
            "vocab_size": N_VOCAB, "activation_function": activation(cfg)}


def render(r: dict[str, Any]) -> str:
    return (f"exported {r['checkpoint']} (iteration {r['iteration']:,}) to {r['out']}/: {', '.join(r['files'])}\n"
            f"load it with: GPT2LMHeadModel.from_pretrained({json.dumps(r['out'])}) and "
            f"AutoTokenizer.from_pretrained({json.dumps(r['out'])})")
