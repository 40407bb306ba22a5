"""job/muon.py against torch.optim.Muon: the same update from the same state (within bf16 rounding;
on a CPU to the bit), the same state dict both ways, and a step that dispatches at most an eighth
of torch's ops for the gpt2-40m shape."""

from __future__ import annotations

import copy
import importlib.util

import pytest
import torch
from harness import ROOT

from job.config import resolve
from job.model import build_model
from job.muon import StackedMuon, adjusted_lr
from job.optim import build, is_hidden_matrix

SHAPES = [(96, 32), (32, 32), (128, 32), (32, 128)] * 3  # a GPT block's four, three blocks deep
SETTINGS = dict(lr=0.02, momentum=0.95, weight_decay=0.01, nesterov=True)


def matrices(seed: int = 0, shapes: list[tuple[int, int]] = SHAPES) -> list[torch.nn.Parameter]:
    g = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(s, generator=g) * 0.02) for s in shapes]


def step_both(ours: torch.optim.Optimizer, theirs: torch.optim.Optimizer, a: list, b: list, steps: int,
              seed: int = 1) -> None:
    """`steps` steps of both on the same gradients."""
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        for p, q in zip(a, b, strict=True):
            p.grad = torch.randn(p.shape, generator=g) * 0.01
            q.grad = p.grad.clone()
        ours.step()
        theirs.step()


def bf16_bound(steps: int, shapes: list[tuple[int, int]] = SHAPES) -> float:
    """How far the weights may drift apart: each step's orthogonalised update (entries at most about
    1) is rounded to bf16 (2^-8 relative), times the largest step size."""
    return steps * max(adjusted_lr(SETTINGS["lr"], torch.Size(s)) for s in shapes) * 2**-8


@pytest.mark.parametrize("steps", [1, 10])
def test_the_stacked_step_is_torchs_muon(steps: int):
    ours, theirs = matrices(), matrices()
    step_both(StackedMuon(ours, **SETTINGS), torch.optim.Muon(theirs, **SETTINGS), ours, theirs, steps)
    worst = max((p - q).abs().max().item() for p, q in zip(ours, theirs, strict=True))
    assert worst <= bf16_bound(steps), worst
    moved = max((p - q).abs().max().item() for p, q in zip(ours, matrices(), strict=True))
    assert moved > 100 * max(worst, 1e-12) or worst == 0.0, "the comparison must be between weights that moved"


def test_a_state_dict_goes_both_ways_with_torchs_muon():
    """A checkpoint written by torch.optim.Muon (today's modern runs) resumes here, and back."""
    a, b = matrices(), matrices()
    theirs = torch.optim.Muon(a, **SETTINGS)
    step_both(theirs, torch.optim.Muon(b, **SETTINGS), a, b, 3)
    saved = copy.deepcopy(theirs.state_dict())  # as from a file: no tensor shared with `theirs`
    ours = StackedMuon(matrices(), **SETTINGS)
    assert ours.state_dict()["param_groups"][0].keys() == saved["param_groups"][0].keys()
    resumed = [torch.nn.Parameter(p.detach().clone()) for p in a]
    ours = StackedMuon(resumed, **SETTINGS)
    ours.load_state_dict(saved)
    step_both(ours, theirs, resumed, a, 4, seed=7)
    assert max((p - q).abs().max().item() for p, q in zip(resumed, a, strict=True)) <= bf16_bound(4)
    back = torch.optim.Muon([torch.nn.Parameter(p.detach().clone()) for p in resumed], **SETTINGS)
    back.load_state_dict(copy.deepcopy(ours.state_dict()))
    for i, s in back.state_dict()["state"].items():
        assert torch.equal(s["momentum_buffer"], ours.state_dict()["state"][i]["momentum_buffer"])


def test_a_modern_run_steps_its_hidden_matrices_with_the_stacked_muon():
    cfg = resolve({"preset": "tiny"}, environ={}, dotenv=None)
    opt = build(build_model(cfg.to_dict()), cfg, "cpu")
    assert isinstance(opt.muon, StackedMuon)
    assert opt.muon.param_groups[0]["lr"] == cfg.muon_lr and opt.muon.param_groups[0]["kind"] == "muon"


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_optim", ROOT / "scripts" / "bench" / "bench_optim.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_steady_step_of_gpt2_40m_dispatches_an_eighth_of_torchs_ops():
    """Counted on the meta device (ops, no arithmetic): the gpt2-40m preset's 48 hidden matrices."""
    bench = load_bench()
    cfg = resolve({"preset": "gpt2-40m"}, environ={}, dotenv=None)
    with torch.device("meta"):
        model = build_model(cfg.to_dict())
    shapes = [p.shape for n, p in model.named_parameters() if is_hidden_matrix(n, p)]
    counts = {}
    for make in (torch.optim.Muon, StackedMuon):
        params = [torch.nn.Parameter(torch.empty(s, device="meta")) for s in shapes]
        opt = make(params, **SETTINGS)
        for _ in range(2):  # the first step also creates the momentum buffers
            for p in params:
                p.grad = torch.empty_like(p)
            with bench.CountOps() as counter:
                opt.step()
        counts[make.__name__] = sum(counter.ops.values())
    assert len(shapes) == 48 and counts["StackedMuon"] * 8 <= counts["Muon"], counts
