"""Recipes: `nanogpt` is the training this job did before recipes existed, to the bit; `modern`
(Muon, ReLU², an untied zero-initialised head, WSD) resumes exactly, refuses to become another
recipe on resume, and the bench that chose it runs.

The nanogpt reference (NANOGPT_MAIN) is measured, not derived: the losses and the final weights'
sha256 of a 12-iteration run of the config below, recorded from main's code at commit 6a06be1
(before recipes) on this project's CPU machine (AMD EPYC, torch 2.13.0+cpu, OMP_NUM_THREADS=1).
"""

from __future__ import annotations

import hashlib
import math
import shutil
import sys

import pytest
import torch
from harness import ROOT, SMALL, assert_states_equal, final_state, job_env, kill_9_after_checkpoint, read_log, run_job

from job import optim
from job.config import Config, resolve
from job.model import build_model
from job.optim import lr_at

# today's `tiny` preset as main resolved it (job/config.py at 6a06be1), the settings it had then
MAIN_TINY = dict(n_layer=4, n_head=4, n_embd=96, block_size=64, batch_size=16, grad_accum=1, max_iters=800,
                 lr=3e-3, min_lr=3e-4, warmup_iters=20, eval_interval=200, eval_iters=20, log_interval=50,
                 ckpt_interval=200, dtype="auto", loss_chunk=64, weight_decay=0.1, beta1=0.9, beta2=0.95,
                 grad_clip=1.0, dropout=0.0, bias=False, seed=1337, vocab_size=50304, compile=False)
# dtype float32: what auto was on every CPU at 6a06be1 (it is bf16 now where the CPU has it natively)
REF_RUN = {**SMALL, "JOB_MAX_ITERS": "12", "JOB_WARMUP_ITERS": "3", "JOB_EVAL_INTERVAL": "6",
           "JOB_CKPT_INTERVAL": "6", "JOB_LOSS_CHUNK": "16", "JOB_DTYPE": "float32"}
NANOGPT_MAIN = {
    "train": [10.819449424743652, 10.817306518554688, 10.791394233703613, 10.76021671295166, 10.682326316833496,
              10.577531814575195, 10.500480651855469, 10.381439208984375, 10.339893341064453, 10.287026405334473,
              10.25778579711914, 10.275840759277344],
    "val": [10.450220108032227, 10.20647144317627],
    "weights_sha256": "f8897cb21a056e8ecb5e5520cdd43877700bde902004c5109c9796222f52c19b",
}


def weights_sha256(model: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for k in sorted(model):
        h.update(k.encode())
        h.update(model[k].numpy().tobytes())
    return h.hexdigest()


def test_recipe_nanogpt_resolves_to_mains_tiny_and_modern_sets_the_rest_together():
    old = resolve({"recipe": "nanogpt"}, environ={}, dotenv=None)
    assert {k: getattr(old, k) for k in MAIN_TINY} == MAIN_TINY
    assert (old.optimizer, old.schedule, old.activation, old.tie_embeddings, old.zero_init) == \
        ("adamw", "cosine", "gelu", True, False)
    new = resolve(environ={}, dotenv=None)  # tiny's default: the winner of scripts/bench/bench_recipe.py
    assert (new.recipe, new.optimizer, new.schedule, new.activation, new.tie_embeddings, new.zero_init) == \
        ("modern", "muon", "wsd", "relu2", False, True)
    # a setting given with the recipe wins over it, from any source
    mixed = resolve({"recipe": "modern"}, environ={"JOB_ACTIVATION": "gelu", "JOB_MUON_LR": "0.05"}, dotenv=None)
    assert (mixed.activation, mixed.muon_lr, mixed.optimizer) == ("gelu", 0.05, "muon")
    assert resolve({"preset": "gpt2-124m"}, environ={}, dotenv=None).recipe == "modern"
    assert Config().recipe == "nanogpt" and Config().optimizer == "adamw"  # imports build nanoGPT's optimizer


@pytest.mark.e2e
@pytest.mark.parametrize("flag, value, says", [
    ("recipe", "adam", "recipe: unknown recipe 'adam'; choose one of nanogpt, modern"),
    ("optimizer", "sgd", "optimizer: 'sgd' is not one of adamw, muon"),
    ("schedule", "step", "schedule: 'step' is not one of cosine, wsd"),
    ("activation", "swiglu", "activation: 'swiglu' is not one of gelu, relu2"),
    ("warmdown_frac", "1.5", "warmdown_frac: must be in [0, 1]"),
])
def test_a_bad_recipe_setting_exits_2_with_one_line(tmp_path, flag, value, says):
    res = run_job(["train", f"--{flag.replace('_', '-')}", value, "--out-dir", str(tmp_path)], cwd=ROOT,
                  env=job_env(JOB_METRICS_PORT="0"))
    assert res.returncode == 2 and says in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.stderr


def test_wsd_warms_up_stays_flat_then_falls_linearly_to_min_lr():
    cfg = Config(schedule="wsd", lr=1e-2, min_lr=1e-3, warmup_iters=10, max_iters=100, warmdown_frac=0.4)
    assert [lr_at(i, cfg) for i in range(10)] == pytest.approx([1e-2 * (i + 1) / 11 for i in range(10)])
    assert {lr_at(i, cfg) for i in range(10, 61)} == {1e-2}  # flat until the last 40 iterations
    assert lr_at(80, cfg) == pytest.approx(1e-3 + 0.5 * 9e-3) and lr_at(100, cfg) == pytest.approx(1e-3)
    down = [lr_at(i, cfg) for i in range(60, 101)]
    assert all(b - a == pytest.approx(-9e-3 / 40) for a, b in zip(down, down[1:], strict=False))


def test_muon_takes_the_blocks_matrices_and_adamw_the_rest_each_group_at_its_own_lr():
    cfg = resolve({"recipe": "modern", "n_layer": 2, "n_embd": 32, "n_head": 2}, environ={}, dotenv=None)
    torch.manual_seed(0)
    model = build_model(cfg.to_dict())
    opt = optim.build(model, cfg, "cpu")
    names = {id(p): n for n, p in model.named_parameters()}
    on_muon = {names[id(p)] for p in opt.muon.param_groups[0]["params"]}
    assert on_muon == {n for n, p in model.named_parameters() if n.startswith("transformer.h.") and p.dim() == 2}
    assert {"transformer.wte.weight", "lm_head.weight", "transformer.wpe.weight"} <= \
        {names[id(p)] for g in opt.adamw.param_groups for p in g["params"]}
    assert not torch.equal(model.transformer.wte.weight, model.lm_head.weight)
    assert not model.lm_head.weight.any() and not model.transformer.h[0].mlp.c_proj.weight.any()  # zero_init
    optim.set_lr(opt, 1.5e-3, cfg)
    assert [g["lr"] for g in opt.param_groups] == [1.5e-3 * cfg.muon_lr / cfg.lr, 1.5e-3, 1.5e-3]


@pytest.mark.e2e
def test_recipe_nanogpt_trains_bitwise_as_main_did(shakespeare, tmp_path):
    env = job_env(**REF_RUN, JOB_RECIPE="nanogpt", JOB_DATA=str(shakespeare), JOB_OUT_DIR=str(tmp_path))
    res = run_job(["train", "--run", "ref"], cwd=ROOT, env=env)
    assert res.returncode == 0, res.stderr
    log = read_log(tmp_path / "ref")
    assert [r["train_loss"] for r in log if r["event"] == "step"] == NANOGPT_MAIN["train"]
    assert [r["val_loss"] for r in log if r["event"] == "eval"] == NANOGPT_MAIN["val"]
    assert weights_sha256(final_state(tmp_path / "ref")["model"]) == NANOGPT_MAIN["weights_sha256"]


# dtype auto is bf16 on a CPU with native bf16 (this project's): fp32 is kept tested through nanogpt
@pytest.mark.e2e
@pytest.mark.parametrize("recipe, dtype", [("nanogpt", "float32"), ("modern", "auto")])
def test_kill_9_mid_run_resumes_bitwise_with_every_recipe(shakespeare, tmp_path, recipe, dtype):
    def env(out: str) -> dict[str, str]:  # 15 iterations: killed after 6, resumed through the eval at 10
        return job_env(**{**SMALL, "JOB_MAX_ITERS": "15"}, JOB_RECIPE=recipe, JOB_DTYPE=dtype,
                       JOB_DATA=str(shakespeare), JOB_OUT_DIR=str(tmp_path / out))

    assert run_job(["train", "--run", "r"], cwd=ROOT, env=env("ref")).returncode == 0
    kill_9_after_checkpoint(tmp_path / "cut" / "r", env("cut"), 6)
    res = run_job(["train", "--run", "r"], cwd=ROOT, env=env("cut"))
    assert res.returncode == 0 and "resuming from ckpt_00000006" in res.stdout, res.stderr
    a, b = final_state(tmp_path / "cut" / "r"), final_state(tmp_path / "ref" / "r")
    assert_states_equal(a, b)
    assert ("muon" in a["optimizer"]) == (recipe == "modern")


@pytest.mark.e2e
def test_a_resume_that_changes_the_recipe_is_refused_naming_it_and_an_old_checkpoint_is_nanogpt(shakespeare,
                                                                                              tmp_path):
    env = job_env(**{**SMALL, "JOB_MAX_ITERS": "3", "JOB_CKPT_INTERVAL": "3"}, JOB_RECIPE="nanogpt",
                  JOB_DATA=str(shakespeare), JOB_OUT_DIR=str(tmp_path))
    assert run_job(["train", "--run", "r"], cwd=ROOT, env=env).returncode == 0
    # as a checkpoint written before recipes: its config without any of the recipe's settings
    from job import checkpoint
    from job.state import TrainState

    ckpt = tmp_path / "r" / "ckpt"
    saved = torch.load(ckpt / "ckpt_00000003.pt", weights_only=True)
    for key in ("recipe", "optimizer", "muon_lr", "muon_momentum", "muon_weight_decay", "schedule",
                "warmdown_frac", "activation", "tie_embeddings", "zero_init"):
        del saved["config"][key]
    shutil.rmtree(ckpt)
    checkpoint.save(ckpt, saved, TrainState.from_state_dict(saved), keep=3)
    (tmp_path / "r" / "DONE").unlink()
    modern = {**env, "JOB_RECIPE": "modern", "JOB_MAX_ITERS": "6"}
    res = run_job(["train", "--run", "r"], cwd=ROOT, env=modern)
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1, res.stderr
    for says in ("optimizer 'adamw' -> 'muon'", "activation 'gelu' -> 'relu2'", "tie_embeddings True -> False",
                 "--recipe nanogpt to continue it"):
        assert says in res.stderr
    res = run_job(["train", "--run", "r"], cwd=ROOT, env={**modern, "JOB_RECIPE": "nanogpt"})
    assert res.returncode == 0 and "resuming from ckpt_00000003" in res.stdout, res.stderr


@pytest.mark.e2e
def test_bench_recipe_quick_prints_the_table_and_writes_it(tmp_path):
    import json
    import subprocess

    out = tmp_path / "bench.json"
    res = subprocess.run([sys.executable, "scripts/bench/bench_recipe.py", "--quick", "--out", str(out)], cwd=ROOT,
                         env=job_env(), capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    assert "| tiny | nanogpt |" in res.stdout and "| tiny | modern |" in res.stdout
    rows = json.loads(out.read_text())["rows"]
    assert [r["recipe"] for r in rows] == ["nanogpt", "modern"]
    assert all(math.isfinite(r["final_val"]) and r["final_tokens"] > 0 for r in rows)
    assert rows[0]["token_ratio"] == pytest.approx(1.0)  # nanogpt reaches its own final loss at its end


def ns_fp32(x: torch.Tensor, steps: int = 5) -> torch.Tensor:
    """The same quintic Newton-Schulz in float32 throughout: what bf16 approximates."""
    a, b, c = 3.4445, -4.7750, 2.0315
    tall = x.size(-2) > x.size(-1)
    x = (x.mT if tall else x) / torch.linalg.vector_norm(x, dim=(-2, -1), keepdim=True).clamp(min=1e-7)
    for _ in range(steps):
        gram = x @ x.mT
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x.mT if tall else x


def test_the_compiled_stack_orthogonalises_as_well_as_the_eager_one():
    """What a CUDA run with compile on steps through: torch.compile of job/muon.py's Newton-Schulz
    (compiled here by inductor for the CPU). Inductor fuses the scalar arithmetic and rounds to bf16
    in other places, and five iterations amplify that, so it is held to the float32 iteration as
    the eager stack is: no further from it than twice the eager one's distance."""
    from job.muon import newton_schulz

    compiled = torch.compile(newton_schulz)
    g = torch.Generator().manual_seed(0)
    for shape in ((4, 32, 128), (4, 96, 32)):
        x = torch.randn(shape, generator=g)
        exact, eager, comp = ns_fp32(x), newton_schulz(x).float(), compiled(x).float()
        assert comp.shape == eager.shape == shape
        assert (comp - exact).abs().max() <= 2 * (eager - exact).abs().max(), shape
        s = torch.linalg.svdvals(comp)  # orthogonal-ish, as torch's Muon leaves it: about (0.5, 1.5)
        assert 0.3 < s.min() and s.max() < 1.6, s
