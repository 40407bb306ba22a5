"""Fast tier: what a GPU run would do differently, reproduced on the CPU (issue 17's findings).

No line of these needs CUDA: a checkpoint whose tensors come back on another device, the fused
loss under fp16 autocast and under no_grad, the optimizer's kernel options on resume, the memory
check against a card's free memory, the native-bf16 rule and the card names."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from job import checkpoint
from job.commands.weights import load_trained
from job.config import resolve
from job.device import native_bf16
from job.errors import ConfigError
from job.gpus import BY_KEY, from_device_name
from job.memory import check_fit, memory
from job.model import GPT, ChunkedHeadLoss, GPTConfig, build_model
from job.state import TrainState

SETTINGS = {"n_layer": 1, "n_head": 2, "n_embd": 16, "block_size": 8, "vocab_size": 50304, "bias": False}


class OnTheCard(torch.Tensor):
    """A tensor as torch.load(map_location="cuda") gives it back, as far as the RNG setters can
    tell: .numpy() refuses it (as PyTorch does for a CUDA tensor) until it is copied to the CPU."""

    def numpy(self, *args, **kwargs):
        raise TypeError("can't convert cuda:0 device type tensor to numpy. Use Tensor.cpu() to copy the "
                        "tensor to host memory first.")

    def cpu(self, *args, **kwargs):
        return torch.Tensor(self.as_subclass(torch.Tensor).clone())


def on_the_card(obj):
    if isinstance(obj, torch.Tensor):
        return obj.as_subclass(OnTheCard)
    if isinstance(obj, dict):
        return {k: on_the_card(v) for k, v in obj.items()}
    return obj


def snapshot_of_tiny_run(fused: bool = False) -> dict:
    torch.manual_seed(0)
    model = build_model(SETTINGS)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=fused)
    model(torch.zeros(1, 8, dtype=torch.long), torch.zeros(1, 8, dtype=torch.long))[1].backward()
    opt.step()
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    return checkpoint.snapshot(model, opt, scaler, TrainState(iteration=1), SETTINGS, "fp", torch.device("cpu"))


def test_rng_states_that_come_back_on_the_card_still_restore():
    saved = snapshot_of_tiny_run()
    expected = torch.rand(4)  # what the streams give right after the snapshot
    torch.manual_seed(99)
    checkpoint.set_rng_state(on_the_card(saved["rng"]), torch.device("cpu"))
    assert torch.equal(torch.rand(4), expected)


def test_a_checkpoint_is_read_onto_the_cpu(tmp_path: Path):
    saved = snapshot_of_tiny_run()
    checkpoint.save(tmp_path, saved, TrainState(iteration=1), keep=2)
    content, _ = checkpoint.load_latest(tmp_path)
    tensors = [t for t in [*content["model"].values(), content["rng"]["torch"],
                           *[v for s in content["optimizer"]["state"].values() for v in s.values()]]
               if isinstance(t, torch.Tensor)]
    assert tensors and all(t.device.type == "cpu" for t in tensors)


def test_a_resume_keeps_the_kernel_options_of_the_device_it_resumes_on():
    saved = snapshot_of_tiny_run(fused=False)  # as a run started on a CPU writes it
    model = build_model(SETTINGS)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)  # as on a GPU
    checkpoint.load_optimizer(opt, saved["optimizer"])
    assert opt.param_groups[0]["fused"] is True
    assert opt.state_dict()["state"].keys() == saved["optimizer"]["state"].keys()


def test_sample_eval_and_export_load_no_optimizer_moments(tmp_path: Path):
    run = tmp_path / "r"
    checkpoint.save(run / "ckpt", snapshot_of_tiny_run(), TrainState(iteration=1), keep=2)
    trained = load_trained(run)
    assert not {"optimizer", "rng", "scaler", "model"} & trained.content.keys()
    assert trained.iteration == 1 and not trained.model.training


def test_sealed_checkpoints_none_of_which_loads_are_refused_in_one_line(tmp_path: Path, capsys):
    for it in (10, 15, 20):  # sealed as ours are, but torch refuses them (here: a pickled object)
        path = tmp_path / f"ckpt_{it:08d}.pt"
        torch.save({"model": Path("x")}, path)
        checkpoint.atomic_write_json(checkpoint.seal_path(path), {"iteration": it, "bytes": path.stat().st_size,
                                                                  "sha256": checkpoint.sha256_file(path)})
    with pytest.raises(checkpoint.Unloadable) as e:
        checkpoint.load_latest(tmp_path)
    message = str(e.value)
    assert "ckpt_00000020.pt" in message and "--fresh" in message and "UnpicklingError" in message
    assert "\n" not in message and capsys.readouterr().err == ""  # the one line, no warnings before it


# ---- the fused head + loss ------------------------------------------------------------------------

def head_and_rows(n: int = 96, d: int = 32, vocab: int = 512):
    torch.manual_seed(0)
    h = torch.randn(n, d, requires_grad=True)
    w = (0.02 * torch.randn(vocab, d)).requires_grad_()
    return h, w, torch.randint(0, vocab, (n,))


def test_the_fused_loss_under_fp16_keeps_the_gradient_that_fp32_gives():
    h, w, t = head_and_rows(n=4096)  # p / n is about 5e-7: below fp16's normal range
    torch.nn.functional.cross_entropy(h @ w.t(), t).backward()
    want_h, want_w = h.grad.clone(), w.grad.clone()
    h.grad = w.grad = None
    with torch.autocast("cpu", dtype=torch.float16):
        ChunkedHeadLoss.apply(h, w, t, 64).backward()
    assert h.grad.dtype == torch.float32
    assert torch.allclose(h.grad, want_h, rtol=2e-2, atol=1e-7), (h.grad - want_h).abs().max()
    assert torch.allclose(w.grad, want_w, rtol=2e-2, atol=1e-6), (w.grad - want_w).abs().max()


def test_the_fused_loss_does_no_gradient_work_under_no_grad():
    model = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=32, block_size=16, loss_chunk=16))
    x, y = torch.randint(0, 50257, (2, 16)), torch.randint(0, 50257, (2, 16))
    with FlopCounterMode(display=False) as with_grad:
        _, trained = model(x, y)
    with torch.no_grad(), FlopCounterMode(display=False) as without:
        _, evaluated = model(x, y)
    assert torch.equal(trained.detach(), evaluated)  # the same number, bit for bit
    head = 2 * 32 * 32 * 50304  # rows x n_embd x vocab, one matmul's FLOPs
    # under no_grad: the head's matmul once, no gradient matmuls (the counter sees grad_h's; grad_w's addmm_
    # is in place and uncounted); the blocks' forward is the same in both
    assert without.get_total_flops() < 1.01 * head
    assert with_grad.get_total_flops() - without.get_total_flops() >= head


def test_the_training_forward_returns_no_logits():
    model = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=32, block_size=16))
    logits, loss = model(torch.zeros(2, 16, dtype=torch.long), torch.zeros(2, 16, dtype=torch.long))
    assert logits is None and loss.dim() == 0


# ---- the memory check, bf16, card names -----------------------------------------------------------

def test_a_run_that_will_not_fit_the_card_is_refused_with_the_batch_that_would():
    # gpt2-124m at twice its micro-batch; at its own 16 x 1024 it fits (the next line's scenario too)
    cfg = resolve({"preset": "gpt2-124m", "batch_size": 32, "grad_accum": 16}, environ={}, dotenv=None)
    free = 11.6e9  # an RTX 4070's 12 GB less the desktop's share
    check_fit(resolve({"preset": "gpt2-124m"}, environ={}, dotenv=None), 2, free, "RTX 4070")
    with pytest.raises(ConfigError) as e:
        check_fit(cfg, 2, free, "NVIDIA GeForce RTX 4070")
    message = str(e.value)
    b = int(message.split("the largest that fits is ")[1].split(":")[0])
    assert f"--batch-size {b} --grad-accum {16 * 32 // b}" in message and "524,288 tokens" in message
    assert memory(cfg, 2, True, b)["total"] <= free < memory(cfg, 2, True, 2 * b)["total"]
    check_fit(resolve({"preset": "gpt2-40m"}, environ={}, dotenv=None), 2, free, "RTX 4070")  # the scenario fits


def test_bf16_only_where_the_card_multiplies_it_natively():
    assert [native_bf16(c) for c in [(7, 0), (7, 5), (8, 0), (8, 6), (8, 9), (9, 0), (12, 0)]] == \
        [False, False, True, True, True, True, True]  # V100, T4/RTX 20xx: fp16 + GradScaler


@pytest.mark.parametrize("name, key", [
    ("NVIDIA GeForce RTX 4070", "rtx-4070"), ("NVIDIA GeForce RTX 4070 Laptop GPU", None),
    ("NVIDIA GeForce RTX 4090", "rtx-4090"), ("NVIDIA GeForce RTX 4090 D", None),
    ("NVIDIA GeForce RTX 3090 Ti", None), ("NVIDIA GeForce RTX 5090", "rtx-5090"),
    ("NVIDIA H100 80GB HBM3", "h100-sxm"), ("NVIDIA H100 PCIe", "h100-pcie"), ("NVIDIA H100 NVL", "h100-nvl"),
    ("NVIDIA H200", "h200"), ("NVIDIA H200 NVL", "h200-nvl"), ("NVIDIA A10", "a10"), ("NVIDIA A10G", None),
    ("NVIDIA A100-SXM4-80GB", "a100"), ("NVIDIA A100 80GB PCIe", "a100-pcie"), ("NVIDIA L4", "l4"),
])
def test_cards_are_matched_by_their_exact_names(name: str, key: str | None):
    card = from_device_name(name)
    assert (card.key if card else None) == key
    if key:
        assert BY_KEY[key].peak_tflops
