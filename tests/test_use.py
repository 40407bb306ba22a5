"""The morning after: export to Hugging Face, import from nanoGPT, eval, report, streamed samples.

Every command runs for real through `python -m job`. What the commands are checked against is
worked out here, independently of the code under test: a GPT-2 forward pass written out in plain
torch from nanoGPT's tensors, Hugging Face's own GPT-2 and tokenizer loading the export,
HellaSwag's choices from the model's training loss with the context masked out, and `job status`
for the report's figures.
"""

from __future__ import annotations

import json
import math
import signal
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from harness import ROOT, read_log, run_job, start_job, wait_for

from job import checkpoint
from job.config import Config
from job.model import GPT, GPTConfig
from job.state import TrainState
from job.tokenizer import get_encoding

TEXT = ("Hello world! It's 3.14159 o'clock; they'll say  \"naïve café\" — 東京 🙂\n\n\tROMEO: But, soft! what "
        "light through yonder window breaks?   \n")


pytestmark = pytest.mark.e2e


def out_dir_of(env: dict) -> str:
    return env["JOB_OUT_DIR"]


# ---- an independent GPT-2 forward, from nanoGPT's tensors alone ---------------------------------

def nanogpt_state(n_layer: int, n_head: int, n_embd: int, block: int, vocab: int, bias: bool,
                  seed: int = 0) -> dict[str, torch.Tensor]:
    """A state dict with nanoGPT's names and shapes (model.py: Linear weights are (out, in)), random
    values large enough that every part of the network shows in the logits."""
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, std=0.3):
        return torch.randn(*shape, generator=g) * std

    c = n_embd
    sd = {"transformer.wte.weight": rnd(vocab, c), "transformer.wpe.weight": rnd(block, c)}
    for i in range(n_layer):
        p = f"transformer.h.{i}."
        sd[p + "ln_1.weight"], sd[p + "ln_2.weight"] = 1 + rnd(c, std=0.1), 1 + rnd(c, std=0.1)
        sd[p + "attn.c_attn.weight"], sd[p + "attn.c_proj.weight"] = rnd(3 * c, c), rnd(c, c)
        sd[p + "mlp.c_fc.weight"], sd[p + "mlp.c_proj.weight"] = rnd(4 * c, c), rnd(c, 4 * c)
        if bias:
            for name, n in (("ln_1", c), ("ln_2", c), ("attn.c_attn", 3 * c), ("attn.c_proj", c), ("mlp.c_fc", 4 * c),
                            ("mlp.c_proj", c)):
                sd[p + name + ".bias"] = rnd(n, std=0.1)
    sd["transformer.ln_f.weight"] = 1 + rnd(c, std=0.1)
    if bias:
        sd["transformer.ln_f.bias"] = rnd(c, std=0.1)
    sd["lm_head.weight"] = sd["transformer.wte.weight"]  # tied, as nanoGPT saves it
    return sd


def reference_logits(sd: dict[str, torch.Tensor], n_head: int, idx: torch.Tensor) -> torch.Tensor:
    """GPT-2 written out in float64: pre-LN blocks, causal softmax attention, exact GELU, tied head."""
    w = {k: v.double() for k, v in sd.items()}

    def ln(x, name):
        mu, var = x.mean(-1, keepdim=True), x.var(-1, keepdim=True, unbiased=False)
        return (x - mu) / torch.sqrt(var + 1e-5) * w[name + ".weight"] + w.get(name + ".bias", 0.0)

    def linear(x, name):
        return x @ w[name + ".weight"].T + w.get(name + ".bias", 0.0)

    B, T = idx.shape
    x = w["transformer.wte.weight"][idx] + w["transformer.wpe.weight"][:T]
    n_layer = len({k.split(".")[2] for k in w if k.startswith("transformer.h.")})
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    for i in range(n_layer):
        p = f"transformer.h.{i}."
        q, k, v = linear(ln(x, p + "ln_1"), p + "attn.c_attn").chunk(3, dim=-1)
        heads = [t.view(B, T, n_head, -1).transpose(1, 2) for t in (q, k, v)]
        att = heads[0] @ heads[1].transpose(-1, -2) / math.sqrt(heads[0].size(-1))
        y = att.masked_fill(~causal, float("-inf")).softmax(-1) @ heads[2]
        x = x + linear(y.transpose(1, 2).reshape(B, T, -1), p + "attn.c_proj")
        h = linear(ln(x, p + "ln_2"), p + "mlp.c_fc")
        x = x + linear(0.5 * h * (1 + torch.erf(h / math.sqrt(2))), p + "mlp.c_proj")
    return ln(x, "transformer.ln_f") @ w["lm_head.weight"].T


def write_nanogpt_ckpt(path: Path, sd: dict, args: dict, prefix: bool, **extra) -> None:
    """ckpt.pt as nanoGPT's train.py writes it (compiled models prefix every key with _orig_mod.)."""
    model = {("_orig_mod." if prefix else "") + k: v for k, v in sd.items()}
    torch.save({"model": model, "optimizer": {"state": {}, "param_groups": []}, "model_args": args,
                "iter_num": 5000, "best_val_loss": torch.tensor(3.25), "config": {"dataset": "openwebtext",
                "learning_rate": 6e-4, "compile": prefix}, **extra}, path)


# ---- export ------------------------------------------------------------------------------------

def random_run(out_dir: Path, name: str, shape: dict, seed: int) -> GPT:
    """A random-init model of a random shape, saved as a run's checkpoint through job/checkpoint.py,
    with weights scaled up so that every part of the network shows in the logits."""
    torch.manual_seed(seed)
    cfg = Config(run=name, out_dir=str(out_dir), **shape)
    model = GPT(GPTConfig(**{k: getattr(cfg, k) for k in ("n_layer", "n_head", "n_embd", "block_size",
                                                          "vocab_size", "bias", "activation", "tie_embeddings")}))
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.3) if p.dim() > 1 else p.normal_(1.0 if p.shape[0] == cfg.n_embd else 0.0, 0.1)
    optimizer = model.optimizer(1e-3, 0.1, (0.9, 0.95), "cpu")
    content = checkpoint.snapshot(model, optimizer, torch.amp.GradScaler("cpu", enabled=False), TrainState(),
                                  cfg.to_dict(), "random", torch.device("cpu"))
    checkpoint.save(out_dir / name / "ckpt", content, TrainState(), keep=3)
    return model.eval()


def load_hf(directory: Path, caplog, **overrides):
    import transformers

    transformers.logging.enable_propagation()
    with caplog.at_level("WARNING"):
        model, info = transformers.GPT2LMHeadModel.from_pretrained(directory, output_loading_info=True, **overrides)
    return model.eval(), info


@pytest.mark.parametrize("shape", [
    dict(n_layer=2, n_head=3, n_embd=48, block_size=24, vocab_size=50304, bias=True),
    dict(n_layer=3, n_head=2, n_embd=32, block_size=16, vocab_size=50304, bias=False),
    # the modern recipe's model: ReLU² and an untied head
    dict(n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=50304, bias=False, activation="relu2",
         tie_embeddings=False),
], ids=["bias", "no-bias", "relu2-untied"])
def test_export_loads_in_transformers_with_our_logits_greedy_tokens_and_tokenizer(tmp_path, caplog, shape):
    runs = tmp_path / "runs"
    ours = random_run(runs, "r", shape, seed=shape["n_layer"])
    res = run_job(["export", "r", "--out-dir", str(runs), "--out", str(tmp_path / "hf")], cwd=ROOT, env=_env())
    assert res.returncode == 0, res.stderr
    hf, info = load_hf(tmp_path / "hf", caplog)
    assert all(not v for v in info.values()), info  # no missing, unexpected or mismatched weights
    assert not [r for r in caplog.records if "weights" in r.getMessage().lower()], caplog.text
    tied = shape.get("tie_embeddings", True)
    assert hf.config.vocab_size == 50257 and hf.config.tie_word_embeddings == tied
    assert torch.equal(hf.lm_head.weight, hf.transformer.wte.weight) == tied
    x = torch.randint(0, 50257, (3, shape["block_size"]), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want, got = ours.logits(x)[..., :50257], hf(x).logits
    assert (want - got).abs().max().item() < 1e-5
    # the exact GELU (or ReLU²) is what makes them equal: another activation would not match
    other = "gelu_new" if shape.get("activation", "gelu") == "gelu" else "gelu"
    approx, _ = load_hf(tmp_path / "hf", caplog, activation_function=other)
    with torch.no_grad():
        assert (approx(x).logits - want).abs().max().item() > 1e-4

    prompt = "ROMEO: But, soft!"
    n = shape["block_size"] - len(get_encoding().encode_ordinary(prompt))  # Hugging Face's positions end there
    sample = run_job(["sample", "r", "--out-dir", str(runs), "--prompt", prompt, "--tokens", str(n),
                      "--temperature", "0", "--json"], cwd=ROOT, env=_env())
    assert sample.returncode == 0, sample.stderr
    ours_greedy = json.loads(sample.stdout)
    ids = torch.tensor([ours_greedy["prompt_tokens"]])
    hf_greedy = hf.generate(ids, do_sample=False, max_new_tokens=n, attention_mask=torch.ones_like(ids))
    assert hf_greedy[0, ids.size(1):].tolist() == ours_greedy["tokens"]

    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tmp_path / "hf")
    enc = get_encoding()
    assert tok.encode(TEXT) == enc.encode_ordinary(TEXT)
    assert tok.encode("a<|endoftext|>b") == enc.encode("a<|endoftext|>b", allowed_special="all")
    assert tok.decode(enc.encode_ordinary(TEXT)) == TEXT
    assert (tmp_path / "hf" / "vocab.json").read_bytes() == (Path(_bundled()[1])).read_bytes()


def _bundled():
    from job.tokenizer import gpt2_files

    return gpt2_files()


def _env(**extra: str) -> dict[str, str]:
    from harness import job_env

    return job_env(JOB_METRICS_PORT="0", JOB_DEVICE="cpu", **extra)


def test_export_picks_a_checkpoint_and_refuses_bad_input_in_one_line(tmp_path):
    runs = tmp_path / "runs"
    shape = dict(n_layer=1, n_head=2, n_embd=16, block_size=8, vocab_size=50304, bias=False)
    random_run(runs, "r", shape, seed=0)
    res = run_job(["export", "r", "--out-dir", str(runs), "--out", str(tmp_path / "hf"), "--checkpoint", "0",
                   "--json"], cwd=ROOT, env=_env())
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["checkpoint"].endswith("ckpt_00000000.pt")
    for args, says in ((["--out", str(tmp_path / "hf")], "already exists"),
                       (["--out", str(tmp_path / "x"), "--checkpoint", "7"], "does not exist"),
                       (["--out", str(tmp_path / "y"), "nope"], "no checkpoint")):
        bad = run_job(["export", *([] if "nope" in args else ["r"]), "--out-dir", str(runs), *args], cwd=ROOT,
                      env=_env())
        assert bad.returncode == 2 and "Traceback" not in bad.stderr, bad.stderr
        assert len(bad.stderr.strip().splitlines()) == 1 and says in bad.stderr, bad.stderr
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
    helped = run_job(["export", "--help"], cwd=ROOT, env=_env())
    assert helped.returncode == 0 and "Example" in helped.stdout


# ---- import from nanoGPT -------------------------------------------------------------------------

@pytest.mark.parametrize("bias, prefix", [(True, True), (False, False)], ids=["bias+compiled", "no-bias"])
def test_nanogpt_checkpoint_imports_samples_exports_and_trains_on(small_env, tmp_path, caplog, bias, prefix):
    runs = Path(out_dir_of(small_env))
    args = dict(n_layer=2, n_head=2, n_embd=32, block_size=32, bias=bias, vocab_size=50304, dropout=0.0)
    sd = nanogpt_state(2, 2, 32, 32, 50304, bias)
    extra = {}
    if bias:  # nanoGPT without flash attention also saves its causal mask as a buffer
        for i in range(2):
            extra[f"transformer.h.{i}.attn.bias"] = torch.tril(torch.ones(32, 32)).view(1, 1, 32, 32)
    write_nanogpt_ckpt(tmp_path / "ckpt.pt", {**sd, **extra}, args, prefix)
    res = run_job(["import-nanogpt", str(tmp_path / "ckpt.pt"), "--run", "imp", "--out-dir", str(runs), "--json"],
                  cwd=ROOT, env=small_env)
    assert res.returncode == 0, res.stderr
    imported = json.loads(res.stdout)
    assert imported["iter_num"] == 5000 and imported["best_val_loss"] == 3.25

    from job.commands.weights import load_trained  # what sample, eval and export load it with

    # compared in float64, so that a difference is one of function, not of float32 rounding
    x = torch.randint(0, 50257, (2, 32), generator=torch.Generator().manual_seed(3))
    want = reference_logits(sd, 2, x)
    with torch.no_grad():
        assert (load_trained(runs / "imp").model.double().logits(x) - want).abs().max().item() < 1e-9

    sample = run_job(["sample", "imp", "--out-dir", str(runs), "--tokens", "8", "--json"], cwd=ROOT, env=small_env)
    assert sample.returncode == 0 and len(json.loads(sample.stdout)["tokens"]) == 8, sample.stderr
    res = run_job(["export", "imp", "--out-dir", str(runs), "--out", str(tmp_path / "hf")], cwd=ROOT, env=small_env)
    assert res.returncode == 0, res.stderr
    hf, info = load_hf(tmp_path / "hf", caplog)
    assert all(not v for v in info.values()), info
    with torch.no_grad():
        assert (hf.double()(x).logits - want[..., :50257]).abs().max().item() < 1e-9

    # train on it, on data it never saw, with a fresh optimizer: a learning rate too small to move the
    # weights shows the steps started from the imported ones
    flags = imported["train_flags"].split() + ["--max-iters", "3", "--lr", "1e-7", "--min-lr", "0"]
    res = run_job(["train", *flags], cwd=ROOT, env=small_env)
    assert res.returncode == 0, res.stdout + res.stderr
    trained = torch.load(runs / "imp" / "ckpt" / "ckpt_00000003.pt", map_location="cpu", weights_only=True)
    assert trained["data_fingerprint"] and trained["restarts"] == 0
    assert {int(s["step"]) for s in trained["optimizer"]["state"].values()} == {3}
    drift = max((trained["model"][k] - v).abs().max().item() for k, v in sd.items())
    assert 0 < drift < 1e-5
    other = run_job(["train", *imported["train_flags"].split(), "--n-embd", "64", "--max-iters", "6"], cwd=ROOT,
                    env=small_env)
    assert other.returncode == 2 and "n_embd 32 -> 64" in other.stderr


def test_import_refuses_what_it_cannot_take_in_one_line(small_env, tmp_path):
    runs = out_dir_of(small_env)
    args = dict(n_layer=1, n_head=2, n_embd=16, block_size=16, bias=False, vocab_size=50304, dropout=0.0)
    sd = nanogpt_state(1, 2, 16, 16, 50304, False)
    cases = {
        "numpy": ({"best_val_loss": np.float64(2.5)}, args, "numpy"),
        "char": ({}, {**args, "vocab_size": 65}, "vocab_size 65"),
        "shape": ({}, {**args, "n_embd": 24}, "do not fit"),
    }
    for name, (extra, model_args, says) in cases.items():
        path = tmp_path / f"{name}.pt"
        write_nanogpt_ckpt(path, sd, model_args, False, **extra)
        res = run_job(["import-nanogpt", str(path), "--run", name, "--out-dir", runs], cwd=ROOT, env=small_env)
        assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
        assert len(res.stderr.strip().splitlines()) == 1 and says in res.stderr, res.stderr
        assert not (Path(runs) / name / "ckpt").exists()
    write_nanogpt_ckpt(tmp_path / "ok.pt", sd, args, False)
    assert run_job(["import-nanogpt", str(tmp_path / "ok.pt"), "--run", "ok", "--out-dir", runs], cwd=ROOT,
                   env=small_env).returncode == 0
    again = run_job(["import-nanogpt", str(tmp_path / "ok.pt"), "--run", "ok", "--out-dir", runs], cwd=ROOT,
                    env=small_env)
    assert again.returncode == 2 and "already exists" in again.stderr


# ---- eval --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def trained(shakespeare: Path, tmp_path_factory) -> tuple[Path, dict]:
    """SMALL trained for 10 iterations (one eval at 10); read-only."""
    from harness import SMALL, job_env

    out = tmp_path_factory.mktemp("use")
    env = job_env(**{**SMALL, "JOB_DROPOUT": "0"}, JOB_DATA=str(shakespeare), JOB_OUT_DIR=str(out / "runs"))
    res = run_job(["train", "--run", "t", "--max-iters", "10"], cwd=ROOT, env=env)
    assert res.returncode == 0, res.stderr
    return out / "runs", env


def test_eval_val_loss_equals_the_loops_on_the_same_windows(trained, tmp_path):
    runs, env = trained
    logged = [r for r in read_log(runs / "t") if r["event"] == "eval"][-1]
    assert logged["iteration"] == 10
    same = 2 * 4 * 32  # eval_iters x batch_size x block_size: the loop's val batches
    res = run_job(["eval", "t", "--out-dir", str(runs), "--tokens", str(same), "--json"], cwd=ROOT, env=env)
    assert res.returncode == 0, res.stderr
    got = json.loads(res.stdout)
    assert got["val_loss"] == logged["val_loss"] and got["val_tokens"] == same, (got, logged)
    assert got["perplexity"] == pytest.approx(math.exp(logged["val_loss"]))
    # a whole val split, of another dataset, in batches whose last one is short
    enc = get_encoding()
    text = enc.decode([int(t) for t in np.fromfile(Path(env["JOB_DATA"]) / "val_000000.bin", dtype="<u2",
                                                    offset=1024)[:8000]])
    (tmp_path / "plays.txt").write_text(text)
    other = tmp_path / "plays"
    res = run_job(["prepare", "--source", str(tmp_path / "plays.txt"), "--out", str(other)], cwd=ROOT, env=env)
    assert res.returncode == 0, res.stderr
    res = run_job(["eval", "t", "--out-dir", str(runs), "--data", str(other), "--batch-size", "5", "--json"],
                  cwd=ROOT, env=env)
    assert res.returncode == 0, res.stderr
    whole = json.loads(res.stdout)
    val_tokens = json.loads((other / "manifest.json").read_text())["splits"]["val"]["tokens"]
    windows = (val_tokens - 1) // 32  # every full window of block_size + 1 tokens, one token shared
    assert windows % 5 and whole["val_batches"] == -(-windows // 5) and whole["val_tokens"] == windows * 32, whole
    assert math.isfinite(whole["val_loss"]) and whole["data"] == str(other), whole


def hellaswag_examples() -> list[dict]:
    """Short contexts, and endings of very different lengths so that the sum and the per-token mean
    can disagree."""
    contexts = ["ROMEO: But, soft! what light", "KING: My lord, the", "To be, or not to be:", "She went to the",
                "The night is", "And then the queen said"]
    endings = [["is it", "through yonder window breaks, and the sun is up in the east today",
                "the the the", "me"],
               ["duke is dead", "a", "horses of the field are gone to the river and back again", "lord"],
               ["that is the question", "no", "a b c d e f g h", "yes, my lord, it is so"],
               ["market", "river to see the fish and the boats in the morning light", "it", "king's house"],
               ["dark and full of terrors", "long", "over now, my friend, and so we part", "cold"],
               ["no", "that the king is dead and buried in the old church by the sea", "yes", "what?"]]
    return [{"ctx": c, "endings": e, "label": 0, "activity_label": "x"} for c, e in zip(contexts, endings, strict=True)]


def expected_choices(model: GPT, examples: list[dict]) -> tuple[list[int], list[int]]:
    """Each example's choice by sum and by per-token mean of the ending's log-probs, from the model's
    own training loss with the context's targets masked (-100: ignored by cross_entropy)."""
    enc = get_encoding()
    by_sum, by_mean = [], []
    for ex in examples:
        ctx = enc.encode_ordinary(ex["ctx"])
        sums, means = [], []
        for ending in ex["endings"]:
            end = enc.encode_ordinary(" " + ending)
            seq = torch.tensor([ctx + end])
            targets = seq[:, 1:].clone()
            targets[:, : len(ctx) - 1] = -100
            with torch.no_grad():
                _, loss = model(seq[:, :-1], targets)
            means.append(-loss.item())
            sums.append(-loss.item() * len(end))
        by_sum.append(int(np.argmax(sums)))
        by_mean.append(int(np.argmax(means)))
    return by_sum, by_mean


def test_hellaswag_choices_match_ones_worked_out_from_the_training_loss(trained, tmp_path):
    runs, env = trained
    from job.commands.weights import load_trained

    model = load_trained(runs / "t").model
    model.cfg.loss_chunk = 0  # the plain cross-entropy, whose ignore_index masks the context
    examples = hellaswag_examples()
    by_sum, by_mean = expected_choices(model, examples)
    agree = sum(a == b for a, b in zip(by_sum, by_mean, strict=True))
    assert agree < len(examples), "the fixture must tell acc and acc_norm apart"
    for labels, key in ((by_mean, "hellaswag_acc_norm"), (by_sum, "hellaswag_acc")):
        path = tmp_path / f"{key}.jsonl"
        path.write_text("".join(json.dumps({**ex, "label": lab}) + "\n" for ex, lab in zip(examples, labels,
                                                                                           strict=True)))
        res = run_job(["eval", "t", "--out-dir", str(runs), "--no-val", "--hellaswag", str(path), "--json"],
                      cwd=ROOT, env=env)
        assert res.returncode == 0, res.stderr
        got = json.loads(res.stdout)
        assert got[key] == 1.0 and got["hellaswag_examples"] == len(examples)
        other = "hellaswag_acc" if key == "hellaswag_acc_norm" else "hellaswag_acc_norm"
        assert got[other] == agree / len(examples)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(examples[0]) + "\n" + json.dumps({"ctx": "x", "label": 0}) + "\n")
    res = run_job(["eval", "t", "--out-dir", str(runs), "--no-val", "--hellaswag", str(bad)], cwd=ROOT, env=env)
    assert res.returncode == 2 and f"{bad}:2" in res.stderr and len(res.stderr.strip().splitlines()) == 1


# ---- sample ------------------------------------------------------------------------------------

def test_sample_streams_while_it_generates_and_json_holds_the_same_text(trained):
    runs, env = trained
    proc = start_job(["sample", "t", "--out-dir", str(runs), "--prompt", "ROMEO:", "--tokens", "100000"], cwd=ROOT,
                     env=env)
    try:
        first = proc.stdout.read(12)  # blocks until the first pieces are printed
        assert first.startswith("ROMEO:") and len(first) == 12
        assert proc.poll() is None, "text arrived before generation ended"
    finally:
        proc.kill()
        proc.communicate(timeout=60)
    args = ["sample", "t", "--out-dir", str(runs), "--prompt", "ROMEO:", "--tokens", "40", "--seed", "7"]
    streamed = run_job(args, cwd=ROOT, env=env)
    as_json = run_job([*args, "--json"], cwd=ROOT, env=env)
    assert streamed.returncode == 0 and as_json.returncode == 0, streamed.stderr + as_json.stderr
    result = json.loads(as_json.stdout)
    assert len(result["tokens"]) == 40
    assert streamed.stdout == "ROMEO:" + result["completion"] + "\n"


# ---- report ------------------------------------------------------------------------------------

def png_size(path: Path) -> tuple[int, int]:
    """Width and height from a PNG's signature and IHDR chunk, read by the format's spec."""
    raw = path.read_bytes()
    assert raw[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    length, kind = struct.unpack(">I4s", raw[8:16])
    assert kind == b"IHDR" and length == 13
    assert raw[-12:] == b"\x00\x00\x00\x00IEND\xaeB`\x82", "the PNG does not end with IEND"
    return struct.unpack(">II", raw[16:24])


def assert_report_agrees_with_status(runs: Path, run: str, env: dict) -> dict:
    rep = run_job(["report", run, "--out-dir", str(runs), "--json"], cwd=ROOT, env=env)
    st = run_job(["status", run, "--out-dir", str(runs), "--json"], cwd=ROOT, env=env)
    assert rep.returncode == 0 and st.returncode == 0, rep.stderr + st.stderr
    report, status = json.loads(rep.stdout), json.loads(st.stdout)
    for key in ("iteration", "max_iters", "done", "tokens", "elapsed_s", "energy_kwh", "cost", "train_loss",
                "val_loss", "restarts", "last_checkpoint"):
        assert report[key] == status[key], key
    assert report["hours"] == pytest.approx(status["elapsed_s"] / 3600)
    png = Path(report["png"])
    assert png == runs / run / "report.png" and png_size(png) == (1200, 800)
    assert 20_000 < png.stat().st_size < 2_000_000
    return report


def test_report_draws_a_stopped_and_resumed_run_and_one_still_going(small_env):
    runs = Path(out_dir_of(small_env))
    proc = start_job(["train", "--run", "r", "--max-iters", "100000"], cwd=ROOT, env=small_env)
    wait_for(lambda: any(r["event"] == "checkpoint" and r["iteration"] >= 6 for r in read_log(runs / "r")),
             what="checkpoint 6", proc=proc, step=0.05)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 75
    stopped = [r for r in read_log(runs / "r") if r["event"] == "stop"][-1]["iteration"]
    finish = ["train", "--run", "r", "--max-iters", str(stopped + 6)]
    assert run_job(finish, cwd=ROOT, env=small_env).returncode == 0
    done = assert_report_agrees_with_status(runs, "r", small_env)
    assert done["done"] and done["stops"] == 1 and done["restarts"] == 1
    seals = [json.loads(p.read_text()) for p in (runs / "r" / "ckpt").glob("*.json")]
    best = min((s for s in seals if s["val_loss"] is not None), key=lambda s: s["val_loss"])
    assert done["best_checkpoint"].endswith(best["file"]) and done["best_val_loss"] == best["val_loss"]
    text = run_job(["report", "r", "--out-dir", str(runs)], cwd=ROOT, env=small_env).stdout
    assert "1 restarts, 1 early stops" in text and best["file"] in text

    going = start_job(["train", "--run", "g", "--max-iters", "100000"], cwd=ROOT, env=small_env)
    try:
        wait_for(lambda: any(r["event"] == "checkpoint" for r in read_log(runs / "g")), what="a checkpoint",
                 proc=going, step=0.05)
        going.send_signal(signal.SIGSTOP)  # hold it mid-run, so report and status read the same files
        mid = assert_report_agrees_with_status(runs, "g", small_env)
        assert not mid["done"] and mid["iteration"] > 0
        going.send_signal(signal.SIGCONT)
        going.send_signal(signal.SIGTERM)
        assert going.wait(timeout=120) == 75
    finally:
        going.kill()
        going.communicate(timeout=60)


def test_new_commands_explain_themselves_and_refuse_bad_input_in_one_line(small_env, tmp_path):
    for command in ("export", "import-nanogpt", "eval", "report", "sample"):
        res = run_job([command, "--help"], cwd=ROOT, env=small_env)
        assert res.returncode == 0 and "Example" in res.stdout, command
    runs = out_dir_of(small_env)
    for args, says in ((["report", "nope", "--out-dir", runs], "no run at"),
                       (["eval", "nope", "--out-dir", runs], "no checkpoint"),
                       (["eval", "nope", "--out-dir", runs, "--tokens", "lots"], "--tokens"),
                       (["import-nanogpt", str(tmp_path / "missing.pt"), "--run", "x", "--out-dir", runs],
                        "does not exist")):
        res = run_job(args, cwd=ROOT, env=small_env)
        assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
        assert len(res.stderr.strip().splitlines()) == 1 and says in res.stderr, (args, res.stderr)
