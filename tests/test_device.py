"""Every device spelling, and every command's start-up on a CUDA machine, walked on this CPU.

torch answers its device queries as one or two GPUs would (tests/cuda_stub.py stubs only the
driver's side; torch's own argument checks stay), and each command runs in-process through the
real command line until the first tensor it puts on a GPU, which a CPU cannot hold: reaching it,
on the right card, means every device query, setting and check on the way passed. `--device cuda`
(nanoGPT's spelling) once failed there on a real GPU, with no test having gone that way.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import torch
from cuda_stub import RTX_4070, Card, ReachedGPU, StopAtFirstAllocation, emulated_cuda
from harness import ROOT, SMALL, job_env, run_job
from typer.testing import CliRunner

from job.cli import app
from job.device import configure, pick_device, pick_precision
from job.errors import ConfigError

sys.path.insert(0, str(ROOT / "scripts" / "gpu"))
import gpu_check  # noqa: E402

H200 = Card(name="NVIDIA H200", capability=(9, 0), total_bytes=141 * 2**30, free_bytes=139 * 2**30,
            multi_processors=132)
T4 = Card(name="Tesla T4", capability=(7, 5), total_bytes=15 * 2**30, free_bytes=14 * 2**30, multi_processors=40)


@pytest.mark.parametrize("count, setting, index", [
    (1, "auto", 0), (1, "cuda", 0), (1, "cuda:0", 0),
    (2, "auto", 0), (2, "cuda", 0), (2, "cuda:0", 0), (2, "cuda:1", 1),
])
def test_every_cuda_spelling_is_a_card_with_its_index(monkeypatch, count, setting, index):
    with emulated_cuda(monkeypatch, count) as set_calls:
        device = pick_device(setting)
        assert device == torch.device("cuda", index)
        configure(device)  # the card as the current device: the call that failed for `cuda`
        assert set_calls == [index] and torch.cuda.current_device() == index
        prec = pick_precision(device, "auto")
        assert prec.dtype == torch.bfloat16 and "RTX 4070" in prec.why


def test_cuda_means_the_current_card(monkeypatch):
    with emulated_cuda(monkeypatch, 2):
        torch.cuda.set_device(1)
        assert pick_device("cuda") == torch.device("cuda", 1) == pick_device("auto")


@pytest.mark.parametrize("count, setting, said", [
    (1, "cuda:1", "device: 'cuda:1' does not exist; this machine has 1 GPU(s), cuda:0"),
    (2, "cuda:2", "device: 'cuda:2' does not exist; this machine has 2 GPU(s), cuda:0 to cuda:1"),
    (1, "gpu", "device: 'gpu' is not one of auto, cpu, cuda, cuda:N, mps"),
    (1, "cuda:x", "device: 'cuda:x' is not one of auto, cpu, cuda, cuda:N, mps"),
])
def test_a_device_the_machine_lacks_is_one_line(monkeypatch, count, setting, said):
    with emulated_cuda(monkeypatch, count), pytest.raises(ConfigError) as e:
        pick_device(setting)
    assert str(e.value) == said


def test_without_a_gpu_cuda_is_one_line_and_auto_is_the_cpu():
    assert pick_device("auto") == torch.device("cpu") == pick_device("cpu")
    with pytest.raises(ConfigError, match="'cuda' asked for but no CUDA GPU is visible; use device=cpu or auto"):
        pick_device("cuda")


def test_an_older_card_gets_fp16_with_a_scaler(monkeypatch):
    with emulated_cuda(monkeypatch, 1, T4):
        prec = pick_precision(pick_device("cuda"), "auto")
    assert prec.dtype == torch.float16 and prec.needs_scaler and "Tesla T4 (compute capability 7.5)" in prec.why


# ---- each command's start-up, in-process, as far as the first tensor on the card ----------------

def walk(monkeypatch: pytest.MonkeyPatch, args: list[str], count: int = 1,
         card: Card = RTX_4070) -> tuple[torch.device | None, str]:
    """`job ARGS` on the emulated machine; the device of the first tensor it put on a GPU (None if
    it finished without one) and what it printed. Any other ending fails the test."""
    for key in [k for k in os.environ if k.startswith("JOB_")]:
        monkeypatch.delenv(key)
    monkeypatch.chdir(ROOT)
    with emulated_cuda(monkeypatch, count, card), StopAtFirstAllocation():
        result = CliRunner().invoke(app, args)
    if isinstance(result.exception, ReachedGPU):
        return result.exception.device, result.output
    assert result.exit_code == 0 and result.exception is None, (result.exception, result.output)
    return None, result.output


@pytest.fixture(scope="module")
def cpu_run(shakespeare: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run trained on the CPU, for the commands that read a checkpoint."""
    out = tmp_path_factory.mktemp("device") / "runs"
    res = run_job(["train", "--run", "t", "--max-iters", "2"], cwd=ROOT,
                  env=job_env(**SMALL, JOB_DATA=str(shakespeare), JOB_OUT_DIR=str(out)))
    assert res.returncode == 0, res.stderr
    return out / "t"


def train_flags(shakespeare: Path, tmp_path: Path) -> list[str]:
    return ["--data", str(shakespeare), "--out-dir", str(tmp_path / "runs"), "--metrics-port", "0",
            "--max-iters", "2", "--eval-iters", "1"]


@pytest.mark.e2e
@pytest.mark.parametrize("setting", ["auto", "cuda", "cuda:0"])
def test_train_starts_on_the_card(monkeypatch, shakespeare, tmp_path, setting):
    device, output = walk(monkeypatch, ["train", "--device", setting, *train_flags(shakespeare, tmp_path)])
    assert device == torch.device("cuda", 0), output
    assert (tmp_path / "runs" / "tiny" / "config.json").is_file()  # past the resume point and the memory check


@pytest.mark.e2e
def test_train_on_the_second_card(monkeypatch, shakespeare, tmp_path):
    device, output = walk(monkeypatch, ["train", "--device", "cuda:1", *train_flags(shakespeare, tmp_path)], count=2)
    assert device == torch.device("cuda", 1), output


@pytest.mark.e2e
def test_train_on_a_card_past_the_last_is_one_line_and_starts_nothing(monkeypatch, shakespeare, tmp_path):
    monkeypatch.chdir(ROOT)
    with emulated_cuda(monkeypatch, 1), StopAtFirstAllocation():
        result = CliRunner().invoke(app, ["train", "--device", "cuda:1", *train_flags(shakespeare, tmp_path)])
    assert result.exit_code == 2, (result.exception, result.output)
    assert "error: device: 'cuda:1' does not exist; this machine has 1 GPU(s), cuda:0" in result.output
    assert not (tmp_path / "runs" / "tiny" / "config.json").exists()  # the lock alone: the run never started


@pytest.mark.e2e
@pytest.mark.parametrize("command", [["sample", "--prompt", "ROMEO:"], ["eval", "--tokens", "1k"]],
                         ids=["sample", "eval"])
@pytest.mark.parametrize("setting", ["auto", "cuda", "cuda:0"])
def test_sample_and_eval_load_the_model_onto_the_card(monkeypatch, cpu_run, command, setting):
    device, output = walk(monkeypatch, [command[0], cpu_run.name, "--out-dir", str(cpu_run.parent),
                                        "--device", setting, *command[1:]])
    assert device == torch.device("cuda", 0), output


@pytest.mark.e2e
def test_export_on_a_gpu_machine_never_touches_the_card(monkeypatch, cpu_run, tmp_path):
    device, output = walk(monkeypatch, ["export", cpu_run.name, "--out-dir", str(cpu_run.parent),
                                        "--out", str(tmp_path / "hf")])
    assert device is None and (tmp_path / "hf" / "model.safetensors").is_file(), output


@pytest.mark.e2e
def test_plan_detects_the_card_and_measures_on_it(monkeypatch, shakespeare):
    device, output = walk(monkeypatch, ["plan", "--preset", "gpt2-40m", "--data", str(shakespeare)], card=H200)
    assert device is None and "H200" in output, output
    device, output = walk(monkeypatch, ["plan", "--preset", "gpt2-40m", "--data", str(shakespeare), "--device",
                                        "cuda", "--measure"], card=H200)
    assert device == torch.device("cuda", 0), output


def gpu_check_commands(shakespeare: Path, work: Path) -> dict[str, list[str]]:
    """The `job` command lines scripts/gpu/gpu_check.py runs on a GPU box, from its own helpers and shapes."""
    ctx = gpu_check.Ctx(quick=False, device="cuda", work=work, deadline=float("inf"), data=shakespeare)
    on_card = ["--out-dir", str(work / "runs"), "--device", ctx.device]
    return {
        "gpt2-40m": gpu_check.train_args(ctx, "gpt2-40m", gpu_check.GPT2_40M, 30),
        "gpt2-124m": gpu_check.train_args(ctx, "gpt2-124m", gpu_check.GPT2_124M, 20),
        "resume": gpu_check.train_args(ctx, "ref", [*gpu_check.GPU_SMALL, "--deterministic"], 40),
        "fp16": gpu_check.train_args(ctx, "fp16", gpu_check.GPU_SMALL, 40, "--dtype", "float16"),
        "plan": ["plan", *gpu_check.GPT2_40M, "--gpu", "auto", "--device", ctx.device, "--measure", "--json"],
        "sample": ["sample", "t", *on_card, "--prompt", "ROMEO:", "--tokens", "16", "--json"],
        "eval": ["eval", "t", *on_card, "--data", str(shakespeare), "--tokens", "4096", "--json"],
    }


@pytest.mark.e2e
@pytest.mark.parametrize("row", ["gpt2-40m", "gpt2-124m", "resume", "fp16", "plan", "sample", "eval"])
def test_the_gpu_checks_own_command_lines_start_on_the_card(monkeypatch, shakespeare, cpu_run, tmp_path, row):
    work = tmp_path / "work"
    (work / "runs").mkdir(parents=True)
    (work / "runs" / "t").symlink_to(cpu_run, target_is_directory=True)
    device, output = walk(monkeypatch, gpu_check_commands(shakespeare, work)[row], card=H200)
    assert device == torch.device("cuda", 0), output


@pytest.mark.e2e
@pytest.mark.parametrize("card, micro_batch", [(H200, 64), (RTX_4070, 16)], ids=["H200", "RTX 4070"])
def test_auto_batch_plans_the_largest_micro_batch_the_card_holds(monkeypatch, shakespeare, tmp_path, card, micro_batch):
    """gpt2-40m's 512 sequences an iteration: the cap (64 x 1024) on an H200's 139 GB, the preset's
    16 on a 12 GB card; config.json says which before the first tensor reaches the card."""
    flags = ["--preset", "gpt2-40m", "--data", str(shakespeare), "--out-dir", str(tmp_path / "runs"),
             "--metrics-port", "0", "--max-iters", "10"]
    device, output = walk(monkeypatch, ["train", *flags], card=card)
    assert device == torch.device("cuda", 0), output
    saved = json.loads((tmp_path / "runs" / "gpt2-40m" / "config.json").read_text())
    assert (saved["batch_size"], saved["grad_accum"]) == (micro_batch, 512 // micro_batch) and saved["auto_batch"]
