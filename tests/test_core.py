"""The embedded corpus, the tokenizer, the model's shape and the run's side commands."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from harness import ROOT, final_state, job_env, read_log, read_shard, run_job

from job.config import resolve
from job.flops import param_counts
from job.model import GPT, GPTConfig
from job.tokenizer import EOT, _bundled_files, _from_bundled_files


def test_bundled_gpt2_files_are_the_ones_tiktoken_pins():
    import tiktoken_ext.openai_public as pinned

    src = Path(pinned.__file__).read_text()
    for path in _bundled_files():
        assert hashlib.sha256(path.read_bytes()).hexdigest() in src, path.name
    enc = _from_bundled_files()
    assert enc.n_vocab == 50257 and enc.eot_token == EOT
    # GPT-2's published ids for these words
    assert enc.encode_ordinary("Hello world") == [15496, 995]
    text = "To be, or not to be: that is the question.\n"
    assert enc.decode(enc.encode_ordinary(text)) == text


@pytest.mark.e2e
def test_prepare_writes_whole_documents_and_is_idempotent(shakespeare: Path):
    manifest = json.loads((shakespeare / "manifest.json").read_text())
    enc = _from_bundled_files()
    for split in ("train", "val"):
        files = [s for s in manifest["shards"] if s["split"] == split]
        tokens = np.concatenate([read_shard(shakespeare / s["file"]) for s in files])
        assert tokens[0] == EOT
        assert int((tokens == EOT).sum()) == manifest["splits"][split]["documents"]
        assert tokens.size == manifest["splits"][split]["tokens"]
    assert manifest["splits"]["val"]["documents"] == 4 and manifest["splits"]["train"]["documents"] == 34
    for s in manifest["shards"]:
        assert hashlib.sha256((shakespeare / s["file"]).read_bytes()).hexdigest() == s["sha256"]
    val = read_shard(shakespeare / "val_000000.bin")
    text = enc.decode(val[1:2000].tolist())
    assert "**" not in text and "\\[" not in text and ":\n" in text  # plain play text
    before = {p.name: p.stat().st_mtime_ns for p in shakespeare.iterdir()}
    res = run_job(["prepare", "--source", "shakespeare", "--out", str(shakespeare)], cwd=ROOT, env=job_env())
    assert res.returncode == 0 and "already prepared" in res.stdout
    assert {p.name: p.stat().st_mtime_ns for p in shakespeare.iterdir()} == before


@pytest.mark.e2e
def test_prepare_unknown_source_exits_2():
    res = run_job(["prepare", "--source", "wikipedia"], cwd=ROOT, env=job_env(), timeout=60)
    assert res.returncode == 2 and "shakespeare" in res.stderr and "Traceback" not in res.stderr


def test_model_matches_the_scenario_count_and_nanogpt_shape():
    cfg = resolve(flags={"preset": "gpt2-40m", "recipe": "nanogpt"}, dotenv=None, environ={})
    assert param_counts(cfg)["nanogpt"] == 40_560_000  # the scenario's 40.56 M (nanoGPT's tied head)
    small = GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=50304, bias=True)
    model = GPT(small)
    assert model.num_params() == param_counts(small)["nanogpt"]
    assert model.num_params(non_embedding=False) == param_counts(small)["total"]
    assert model.lm_head.weight is model.transformer.wte.weight
    # residual projections start smaller than the rest (GPT-2's scaled init)
    assert model.transformer.h[0].attn.c_proj.weight.std() < model.transformer.h[0].attn.c_attn.weight.std()
    decayed, plain = model.optimizer(1e-3, 0.1, (0.9, 0.95), "cpu").param_groups
    assert all(p.dim() >= 2 for p in decayed["params"]) and decayed["weight_decay"] == 0.1
    assert all(p.dim() < 2 for p in plain["params"]) and plain["weight_decay"] == 0.0


@pytest.mark.e2e
def test_a_compiled_run_checkpoints_plainly_and_a_second_process_compiles_from_its_cache(small_env):
    """A compiled run's checkpoint has none of torch.compile's names. The compile cache is
    runs/.cache/torch, in the volume every launcher mounts: a restarted process (a new container,
    cron's next start) takes its graphs from there instead of compiling. Seconds cold and warm are
    a benchmark's (docs/benchmarks.md), not this test's."""
    out = Path(small_env["JOB_OUT_DIR"])
    env = {k: v for k, v in small_env.items() if k not in ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR")}
    said = {}
    for run in ("cold", "warm"):
        res = run_job(["train", "--run", run, "--max-iters", "2", "--compile"], cwd=ROOT, env=env)
        assert res.returncode == 0, res.stderr
        said[run] = next(r for r in read_log(out / run) if r["event"] == "compiled")
        assert f"in {out.resolve() / '.cache' / 'torch'}," in res.stdout
    assert said["cold"]["cache"] == said["warm"]["cache"] == str(out.resolve() / ".cache" / "torch")
    assert said["cold"]["compiled"] > 0 and said["cold"]["cache_hits"] == 0, said
    assert said["warm"]["compiled"] == 0 and said["warm"]["cache_hits"] == said["cold"]["compiled"], said
    assert any((out / ".cache" / "torch" / "fxgraph").rglob("*")), "the first process wrote its graphs there"
    # a compiled run's checkpoint: torch.load(weights_only=True), no torch.compile prefix
    state = final_state(out / "cold")
    assert not [k for k in state["model"] if k.startswith("_orig_mod.")]
    assert {"model", "optimizer", "scaler", "rng", "loader", "config", "tokens", "elapsed_s",
            "energy_j", "iteration"} <= state.keys()
    assert state["tokens"] == 2 * 4 * 32 * 2
    assert isinstance(state["rng"]["torch"], torch.Tensor)


@pytest.mark.e2e
def test_status_and_sample(small_env):
    out_dir = small_env["JOB_OUT_DIR"]
    assert run_job(["train", "--run", "s", "--max-iters", "6"], cwd=ROOT, env=small_env).returncode == 0
    res = run_job(["status", "s", "--out-dir", out_dir, "--json"], cwd=ROOT, env=small_env)
    assert res.returncode == 0, res.stderr
    st = json.loads(res.stdout)
    for key in ("run", "iteration", "max_iters", "done", "train_loss", "val_loss", "tokens", "elapsed_s",
                "eta_s", "energy_j", "last_checkpoint", "last_checkpoint_age_s"):
        assert key in st, key
    assert st["iteration"] == 6 and st["done"] is True and st["tokens"] == 6 * 256
    assert st["last_checkpoint"].endswith("ckpt_00000006.pt")
    text = run_job(["status", "s", "--out-dir", out_dir], cwd=ROOT, env=small_env).stdout
    assert "6 / 6" in text
    res = run_job(["sample", "s", "--out-dir", out_dir, "--tokens", "20", "--prompt", "ROMEO:"],
                  cwd=ROOT, env=small_env)
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("ROMEO:") and len(res.stdout) > len("ROMEO:") + 5
    again = run_job(["sample", "s", "--out-dir", out_dir, "--tokens", "20", "--prompt", "ROMEO:"],
                    cwd=ROOT, env=small_env)
    assert again.stdout == res.stdout  # same seed, same text
    missing = run_job(["status", "nope", "--out-dir", out_dir], cwd=ROOT, env=small_env)
    assert missing.returncode == 2 and "nope" in missing.stderr


def test_chunked_head_loss_matches_full_logits():
    import dataclasses

    torch.manual_seed(0)
    plain_cfg = GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=16)
    plain = GPT(plain_cfg)
    chunked = GPT(dataclasses.replace(plain_cfg, loss_chunk=7))  # 7 does not divide 48 rows
    chunked.load_state_dict(plain.state_dict())
    x, y = torch.randint(0, 50257, (3, 16)), torch.randint(0, 50257, (3, 16))
    loss_a, loss_b = plain(x, y)[1], chunked(x, y)[1]
    (2 * loss_a).backward()  # a scaled upstream gradient must scale the fused one too
    (2 * loss_b).backward()
    assert torch.allclose(loss_a, loss_b, atol=1e-6)
    for (name, a), b in zip(plain.named_parameters(), chunked.parameters(), strict=True):
        assert torch.allclose(a.grad, b.grad, atol=1e-6, rtol=1e-4), name


@pytest.mark.e2e
def test_status_costs_the_run_at_its_own_prices_unless_set_now(small_env):
    """The rent a run was started with (a flag) is what `job status` charges its GPU-hours at; a price
    set in the environment now wins. No energy meter on a CPU: the electricity is 0."""
    out = small_env["JOB_OUT_DIR"]
    res = run_job(["train", "--run", "rented", "--max-iters", "4", "--price-per-gpu-hour", "3600"], cwd=ROOT,
                  env=small_env)
    assert res.returncode == 0, res.stderr
    st = json.loads(run_job(["status", "rented", "--out-dir", out, "--json"], cwd=ROOT, env=small_env).stdout)
    assert st["gpu_hours"] == pytest.approx(st["elapsed_s"] / 3600) and st["gpu_hours"] > 0
    assert st["rent_cost"] == pytest.approx(st["elapsed_s"], rel=1e-3)  # 3600 an hour: one a second
    assert st["energy_cost"] == 0 and st["cost"] == pytest.approx(st["rent_cost"])
    now = json.loads(run_job(["status", "rented", "--out-dir", out, "--json"], cwd=ROOT,
                             env={**small_env, "JOB_PRICE_PER_GPU_HOUR": "7200", "JOB_CURRENCY": "EUR"}).stdout)
    assert now["rent_cost"] == pytest.approx(2 * st["rent_cost"], rel=1e-3) and now["currency"] == "EUR"
    text = run_job(["status", "rented", "--out-dir", out], cwd=ROOT, env=small_env).stdout
    assert re.search(r"cost +[\d.]+ USD: electricity 0\.00 \(0\.000 kWh\), rent [\d.]+ \([\d.]+ GPU-hours\)", text)
