"""`job plan`: the scenario's figures worked by hand, the memory model against torch, bad input,
and the one peak in training. Commands run as real `python -m job` subprocesses."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from harness import run_job

from job.commands.measure import step_memory
from job.config import resolve
from job.data.shards import write_manifest, write_shard
from job.gpus import BY_KEY, CARDS, from_device_name
from job.memory import activation_bytes, largest_fit, logits_bytes, memory
from job.model import GPT, GPTConfig


def plan_json(*args: str, cwd: Path) -> dict:
    r = run_job(["plan", *args, "--json"], cwd=cwd)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


@pytest.mark.e2e
def test_scenario_figures_worked_by_hand(tmp_path):
    # nanoGPT's model and optimizer, the scenario's (the modern recipe's extra: the test below)
    p = plan_json("--preset", "gpt2-40m", "--recipe", "nanogpt", "--gpu", "rtx-4070", "--dataset-tokens", "3.68e9",
                  cwd=tmp_path)
    # tokens per iteration: micro-batch 16 x block 1024 x grad_accum 32 = 16 * 1024 * 32
    assert p["tokens"]["per_iter"] == 16 * 1024 * 32 == 524_288
    # tokens in total: 524,288 x 20,000 iterations
    assert p["tokens"]["total"] == 524_288 * 20_000 == 10_485_760_000
    # epochs: 10,485,760,000 / 3,680,000,000 = 2.849...
    assert round(p["tokens"]["epochs"], 2) == 2.85
    # N, nanoGPT's way (bias off, tied head once, no position embeddings):
    #   token embedding 50,304 x 384                         = 19,316,736
    #   per block: 2 LayerNorm weights 2 x 384 = 768, qkv 384 x 1152 = 442,368,
    #              attn proj 384^2 = 147,456, MLP 2 x 384 x 1536 = 1,179,648  -> 1,770,240
    #   12 blocks                                            = 21,242,880
    #   final LayerNorm                                      = 384
    #   N = 19,316,736 + 21,242,880 + 384                    = 40,560,000 = 40.56 M
    assert p["params"]["nanogpt"] == 19_316_736 + 12 * 1_770_240 + 384 == 40_560_000
    # 6 N D = 6 x 40.56e6 x 10,485,760,000 = 2.5518e18 (not the note's 2.55e15)
    assert p["flops"]["six_n_d"] == pytest.approx(6 * 40.56e6 * 10_485_760_000)
    assert f"{p['flops']['six_n_d']:.3g}" == "2.55e+18"
    # attention: 12 x n_layer x n_embd x block = 12 x 12 x 384 x 1024 = 56,623,104 FLOPs per token;
    # per token 243,360,000 + 56,623,104 = 299,983,104; x 10,485,760,000 = 3.1456e18
    assert p["flops"]["attention"] == 12 * 12 * 384 * 1024 == 56_623_104
    assert p["flops"]["total"] == pytest.approx(299_983_104 * 10_485_760_000)
    assert f"{p['flops']['total']:.3g}" == "3.15e+18"
    # the card's own peak: dense bf16 with FP32 accumulate, 46 SMs x 2.475 GHz x 512 = 58.3 TFLOP/s
    assert p["gpu"]["peak_tflops"] == 58.3
    # hours at 40% MFU = 3.1456e18 / (0.4 x 58.3e12) / 3600 = 37.47 h (not the note's 15-20 h)
    at40 = next(r for r in p["time"] if r["mfu"] == 0.4)
    assert at40["hours"] == pytest.approx(299_983_104 * 10_485_760_000 / (0.4 * 58.3e12) / 3600)
    assert round(at40["hours"], 1) == 37.5
    # energy at 40%: 200 W board power x 37.47 h = 7.49 kWh; at the default 0.17 USD/kWh = 1.27 USD
    assert at40["energy_kwh"] == pytest.approx(0.2 * at40["hours"])
    assert at40["cost"] == pytest.approx(0.17 * at40["energy_kwh"])
    # the same command's table names the figures people read
    table = run_job(["plan", "--preset", "gpt2-40m", "--gpu", "rtx-4070", "--dataset-tokens", "3.68e9"], cwd=tmp_path)
    assert table.returncode == 0 and "58.3 TFLOP/s" in table.stdout and "2.85" in table.stdout


@pytest.mark.e2e
def test_epochs_from_the_prepared_manifest(tmp_path):
    data = tmp_path / "data" / "mini"
    data.mkdir(parents=True)
    shards = [{"split": "train", **write_shard(data / "train_000000.bin", np.arange(3000, dtype=np.uint16))},
              {"split": "val", **write_shard(data / "val_000000.bin", np.arange(500, dtype=np.uint16))}]
    write_manifest(data, {"version": 1, "shards": shards})
    p = plan_json("--data", "mini", "--gpu", "rtx-4090", "--max-iters", "100", "--batch-size", "16",
                  "--block-size", "128", "--grad-accum", "1", cwd=tmp_path)
    # 16 x 128 x 1 = 2,048 tokens/iter x 100 = 204,800 tokens over 3,000 training tokens
    assert p["tokens"]["dataset"] == 3000
    assert p["tokens"]["epochs"] == pytest.approx(204_800 / 3000)


@pytest.mark.e2e
@pytest.mark.parametrize("args, expected", [
    (["--gpu", "rtx-9999"], "rtx-4070"),  # the valid choices are listed
    (["--gpu", "rtx-4070", "--mfu", "1.5"], "(0, 1]"),
    (["--gpu", "rtx-4070", "--mfu", "0"], "(0, 1]"),
    (["--gpu", "rtx-4070", "--dataset-tokens", "-5"], "> 0"),
    (["--gpu", "rtx-4070", "--batch-size", "-4"], ">= 1"),
])
def test_bad_input_exits_2_with_one_line(tmp_path, args, expected):
    r = run_job(["plan", *args], cwd=tmp_path)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], r.stderr


@pytest.mark.parametrize("n_layer, n_embd, block, batch", [(2, 64, 64, 4), (1, 32, 32, 4)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_memory_model_matches_torch_on_cpu(n_layer, n_embd, block, batch, dtype):
    cfg = resolve({"n_layer": n_layer, "n_head": 2, "n_embd": n_embd, "block_size": block, "batch_size": batch,
                   "loss_chunk": 0}, environ={}, dotenv=None)
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=n_layer, n_head=2, n_embd=n_embd, block_size=block))
    x, y = (torch.randint(0, 50257, (batch, block)) for _ in range(2))
    measured = step_memory(model, x, y, dtype)
    c = 4 if dtype == torch.float32 else 2
    predicted = memory(cfg, c, on_gpu=False)
    assert predicted["activations"] == activation_bytes(cfg, batch, c)
    assert predicted["activations"] == pytest.approx(measured["activations"], rel=0.15)
    # logits at their peak: what the step allocated at most, less what stays saved for the blocks
    # and the weight copies (all alive when the loss backpropagates)
    measured_logits = measured["peak"] - measured["activations"] - measured["weights"]
    assert logits_bytes(cfg, batch, c) == pytest.approx(measured_logits, rel=0.15)
    assert predicted["weight_copies"] == pytest.approx(measured["weights"], rel=0.15)


@pytest.mark.e2e
def test_the_modern_recipe_adds_its_head_muons_flops_and_state_worked_by_hand(tmp_path):
    old = plan_json("--preset", "gpt2-40m", "--recipe", "nanogpt", "--gpu", "rtx-4070", cwd=tmp_path)
    new = plan_json("--preset", "gpt2-40m", "--gpu", "rtx-4070", cwd=tmp_path)
    # an untied head: one more 50,304 x 384 matrix (19,316,736), and no more FLOPs per token
    assert new["params"]["total"] - old["params"]["total"] == 50_304 * 384
    assert new["flops"]["per_token"] == old["flops"]["per_token"]
    # Newton-Schulz, 5 steps on each of 12 x 4 matrices (m = 384 rows after transposing, n = 3m, m, 4m, 4m):
    # 5 x (4 m^2 n + 2 m^3) each = 5 x m^3 x (12 + 2 + 4 + 2 + 16 + 2 + 16 + 2) = 5 x 56 x m^3 per layer
    assert new["flops"]["optimizer_per_iter"] == 12 * 5 * 56 * 384**3
    assert new["flops"]["total"] == pytest.approx(old["flops"]["total"] + 20_000 * 12 * 5 * 56 * 384**3)
    # Muon: one fp32 buffer on the 12 x 12 x 384^2 hidden weights; AdamW's two on the rest
    hidden = 12 * 12 * 384**2
    assert new["memory"]["muon"] == 4 * hidden
    assert new["memory"]["adamw"] == 8 * (new["params"]["total"] - hidden)


def test_too_big_a_micro_batch_gets_the_largest_that_fits():
    cfg = resolve({"preset": "gpt2-124m", "compile": False}, environ={}, dotenv=None)  # 16 x 32 sequences/iter
    capacity = BY_KEY["rtx-3060"].memory_gb * 1e9
    assert memory(cfg, 2, on_gpu=True)["total"] > capacity  # eager logits alone are 14 x 16 x 1024 x 50304 B
    b, accum = largest_fit(cfg, 2, True, capacity)
    assert b * accum == 16 * 32  # tokens per iteration kept
    assert memory(cfg, 2, True, b)["total"] <= capacity
    bigger = next(n for n in range(b + 1, 513) if 512 % n == 0)
    assert memory(cfg, 2, True, bigger)["total"] > capacity


def test_card_table_rows_and_device_names():
    assert all(c.source for c in CARDS)
    assert BY_KEY["rtx-4070"].peak_tflops == 58.3  # half the FP16-accumulate 116.6
    for name, key in [("NVIDIA GeForce RTX 4070", "rtx-4070"), ("NVIDIA GeForce RTX 4070 Ti", "rtx-4070-ti"),
                      ("NVIDIA GeForce RTX 4070 SUPER", "rtx-4070-super"), ("NVIDIA A100-SXM4-80GB", "a100"),
                      ("NVIDIA A100-SXM4-40GB", "a100-40gb"), ("NVIDIA H100 80GB HBM3", "h100-sxm"),
                      ("NVIDIA H100 PCIe", "h100-pcie"), ("NVIDIA H200", "h200"), ("NVIDIA A10", "a10"),
                      ("NVIDIA L4", "l4"), ("NVIDIA L40S", "l40s")]:
        assert from_device_name(name).key == key, name


@pytest.mark.e2e
def test_measure_on_cpu_plans_at_the_mfu_measured(tmp_path):
    tiny = ["--n-layer", "1", "--n-head", "2", "--n-embd", "32", "--block-size", "32", "--batch-size", "4",
            "--grad-accum", "2", "--max-iters", "10", "--device", "cpu"]
    p = plan_json(*tiny, "--gpu", "cpu", "--peak-tflops", "0.5", "--watts", "65", "--measure", cwd=tmp_path)
    m = p["measured"]
    assert m["s_per_iter"] == pytest.approx(2 * m["micro_step_s"] + m["optimizer_step_s"])
    achieved = p["flops"]["per_iter"] / m["s_per_iter"]
    assert m["mfu"] == pytest.approx(achieved / 0.5e12)
    assert m["hours"] == pytest.approx(p["flops"]["total"] / achieved / 3600)
    assert m["energy_kwh"] == pytest.approx(0.065 * m["hours"])


@pytest.mark.e2e
def test_training_mfu_on_cpu_only_with_a_peak(tmp_path, shakespeare):
    tiny = ["--n-layer", "1", "--n-head", "2", "--n-embd", "32", "--block-size", "32", "--batch-size", "4",
            "--max-iters", "1", "--eval-iters", "1", "--log-interval", "1", "--metrics-port", "0"]
    for run, extra in (("nopeak", []), ("peak", ["--peak-tflops", "0.5"])):  # on the corpus prepared once
        r = run_job(["train", *tiny, "--run", run, "--data", str(shakespeare), *extra], cwd=tmp_path)
        assert r.returncode == 0, r.stderr
    def step(run: str) -> dict:
        lines = (tmp_path / "runs" / run / "log.jsonl").read_text().splitlines()
        return next(json.loads(line) for line in lines if '"step"' in line)
    assert step("nopeak")["mfu"] is None
    s = step("peak")
    # MFU = FLOPs per token x tokens per second / peak, the plan's per-token FLOPs
    per_token = plan_json(*tiny, "--gpu", "cpu", "--peak-tflops", "0.5", cwd=tmp_path)["flops"]["per_token"]
    assert s["mfu"] == pytest.approx(per_token * s["tokens_per_s"] / 0.5e12, rel=0.01)


@pytest.mark.e2e
@pytest.mark.parametrize("prepared", [True, False], ids=["prepared", "not yet prepared"])
def test_a_gpu_preset_on_the_embedded_corpus_warns_about_its_epochs_in_one_line(tmp_path, shakespeare, prepared):
    """gpt2-40m's 10.49B tokens over Shakespeare's 1.35M: about 7,757 epochs, said before the run,
    with the split's size and the command that prepares more; before the corpus exists too."""
    root = shakespeare.parent if prepared else tmp_path / "data"
    r = run_job(["plan", "--preset", "gpt2-40m", "--gpu", "rtx-4070", "--data-root", str(root)], cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    warnings = [line for line in r.stdout.splitlines() if line.startswith("warning:")]
    assert warnings == [
        f"warning: run 'gpt2-40m' sees its training tokens 7,757 times (10.49B tokens from the 1.35M-token train "
        f"split of {root / 'shakespeare'}); past about 4 epochs repeated tokens stop paying. For more data: job "
        f"prepare --source fineweb-edu --max-tokens 10.49B, then train with --data fineweb-edu"], r.stdout
    p = plan_json("--preset", "gpt2-40m", "--gpu", "rtx-4070", "--data-root", str(root), cwd=tmp_path)
    assert p["tokens"]["epochs"] == pytest.approx(20_000 * 524_288 / 1_351_804)
    assert p["tokens"]["warning"] == warnings[0]
    assert not (tmp_path / "data").exists(), "plan prepared the corpus: it must only read"


@pytest.mark.e2e
def test_within_four_epochs_there_is_no_warning(tmp_path, shakespeare):
    for preset_args in (["--preset", "tiny"], ["--preset", "gpt2-40m", "--max-iters", "10"]):
        p = plan_json(*preset_args, "--gpu", "rtx-4070", "--data-root", str(shakespeare.parent), cwd=tmp_path)
        assert p["tokens"]["epochs"] <= 4 and p["tokens"]["warning"] is None, p["tokens"]


@pytest.mark.e2e
def test_the_compiled_step_is_planned_at_what_an_h200_measured(tmp_path):
    """gpt2-40m, modern, bf16, compiled, 16 x 1024: the H200's allocator peaked at 5.49 GB
    (scripts/gpu/gpu_check.sh, torch 2.11); the plan's tensors (its total less the workspace outside
    the allocator) must be within 10% of it."""
    p = plan_json("--preset", "gpt2-40m", "--gpu", "h200", "--dtype", "bfloat16", "--compile", "--no-auto-batch",
                  "--dataset-tokens", "1e9", cwd=tmp_path)
    m = p["memory"]
    assert p["config"]["recipe"] == "modern" and (p["config"]["batch_size"], p["config"]["compile"]) == (16, True)
    assert abs((m["total"] - m["workspace"]) / 5.49e9 - 1) <= 0.10, m


@pytest.mark.e2e
def test_plan_plans_at_the_micro_batch_auto_batch_takes_on_the_card(tmp_path):
    """The GPU presets' auto_batch: job plan's memory is that of the micro-batch job train would
    take on the card (64 x 1024 on an H200, the preset's 16 on a 12 GB RTX 4070), tokens unchanged."""
    for gpu, b in (("h200", 64), ("rtx-4070", 16)):
        p = plan_json("--preset", "gpt2-40m", "--gpu", gpu, "--dataset-tokens", "1e10", cwd=tmp_path)
        assert (p["config"]["batch_size"], p["config"]["grad_accum"]) == (b, 512 // b), gpu
        assert p["tokens"]["per_iter"] == 524_288 and "auto_batch: the largest that fits" in p["memory"]["micro_batch"]
    p = plan_json("--preset", "gpt2-40m", "--gpu", "h200", "--no-auto-batch", "--dataset-tokens", "1e10", cwd=tmp_path)
    assert (p["config"]["batch_size"], p["memory"]["micro_batch"]) == (16, "")


@pytest.mark.e2e
def test_a_rented_card_costs_its_rent_beside_the_electricity(tmp_path):
    """8 rented H100s at 2.5 an hour each: the rent is hours x 8 x 2.5 in every row, beside the
    electricity, and the cost is their sum; the text names both parts."""
    args = ("--preset", "gpt2-124m", "--gpu", "h100-sxm", "--nproc", "8", "--price-per-gpu-hour", "2.5",
            "--dataset-tokens", "1e10")
    p = plan_json(*args, cwd=tmp_path)
    for row in p["time"]:
        assert row["gpu_hours"] == pytest.approx(8 * row["hours"])
        assert row["rent_cost"] == pytest.approx(8 * row["hours"] * 2.5)
        assert row["energy_cost"] == pytest.approx(row["energy_kwh"] * 0.17)
        assert row["cost"] == pytest.approx(row["rent_cost"] + row["energy_cost"])
        assert row["rent_cost"] > 10 * row["energy_cost"]  # renting costs far more than the power
    text = run_job(["plan", *args], cwd=tmp_path).stdout
    assert re.search(r"time +MFU +s/iter +hours +kWh +power +rent +cost", text), text
    assert "rent 2.5 USD per GPU-hour x 8 GPUs" in text
