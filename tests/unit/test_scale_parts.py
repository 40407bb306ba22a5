"""Fast tier: the parts of several-process training that run without torchrun (in-process,
milliseconds): the loader's split of an iteration over the ranks, the helpers that are the identity
in one process, the launcher's command line and exit code, plan's division. tests/test_scale.py
runs the real thing under torchrun."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from job import checkpoint, dist, launch
from job.commands.plan import make_plan
from job.config import Config, resolve
from job.data.loader import TrainLoader
from job.data.shards import write_shard
from job.device import seed_step
from job.errors import ConfigError
from job.state import LoaderState
from job.stopping import StopFlag
from job.train import micro_seed


@pytest.fixture
def shard(tmp_path: Path) -> Path:
    path = tmp_path / "train_000000.bin"
    write_shard(path, np.arange(1000, dtype=np.uint16) % 50257)
    return path


@pytest.mark.parametrize("size", [1, 2, 4])
def test_the_ranks_take_disjoint_shares_that_are_the_batches_of_one_process(shard: Path, size: int):
    accum = 4  # 111 windows, 6 iterations of 4 x 4 an epoch and 15 windows dropped: several epoch ends
    one = TrainLoader([shard], block_size=9, batch_size=4, seed=7)
    ranks = [TrainLoader([shard], block_size=9, batch_size=4, seed=7) for _ in range(size)]
    for _ in range(20):
        expected = list(one.share(0, 1, accum))
        shares = [list(r.share(rank, size, accum)) for rank, r in enumerate(ranks)]
        assert all(len(s) == accum // size for s in shares)
        assert all(np.array_equal(a, b) for a, b in zip(expected, [b for s in shares for b in s], strict=True))
        assert all(vars(r.state) == vars(one.state) for r in ranks)  # the global position, on every rank
    assert one.state.epoch >= 2


def test_an_iteration_trains_on_the_same_windows_however_it_is_cut_into_micro_batches(shard: Path):
    """4 x 4 or 8 x 2 or 16 x 1: the same 16 windows an iteration, from any position the other
    left (a resume on another card, where auto_batch picks another micro-batch); never across an
    epoch's end."""
    cuts = {b: TrainLoader([shard], block_size=9, batch_size=b, seed=7, per_iteration=16 // b) for b in (4, 8, 16)}
    for it in range(20):
        if it == 9:  # stop at 4 x 4, resume every cut from its position
            for b in (8, 16):
                cuts[b].state = LoaderState(**vars(cuts[4].state))
        taken = {b: np.concatenate(list(loader.share(0, 1, 16 // b)))[:, 0] // 9 for b, loader in cuts.items()}
        assert len(taken[4]) == 16 and len(set(taken[4].tolist())) == 16
        if it >= 9 or it == 0:
            assert all(sorted(t.tolist()) == sorted(taken[4].tolist()) for t in taken.values()), it
        assert len({loader.state.cursor for loader in cuts.values()}) == 1 or it < 9
    assert cuts[4].state.epoch >= 2 and cuts[4].state.cursor % 16 == 0


def test_peek_names_the_windows_of_the_next_batches_without_moving(shard: Path):
    loader = TrainLoader([shard], block_size=9, batch_size=4, seed=7)
    ahead = loader.peek(30)
    before = vars(loader.state).copy()
    loader.peek(5)
    assert vars(loader.state) == before
    rows = [loader.next_rows() for _ in range(30)]
    assert all(np.array_equal(r[:, 0] // 9, w) for r, w in zip(rows, ahead, strict=True))
    ahead = loader.peek(30, per_iteration=3)  # in iterations of 3: the epoch ends where share's do
    rows = [r for _ in range(10) for r in loader.share(0, 1, 3)]
    assert all(np.array_equal(r[:, 0] // 9, w) for r, w in zip(rows, ahead, strict=True))


def test_outside_torchrun_every_helper_is_the_identity(monkeypatch):
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", dist.ENDINGS_DIR):
        monkeypatch.delenv(key, raising=False)
    assert dist.from_env() is None and dist.current() == dist.SINGLE and dist.speaks()
    assert dist.from_rank0(lambda: 41) == 41 and dist.agreed(lambda: "x") == "x"
    t = torch.tensor([1.5, 2.0])
    assert dist.all_sum(t) is t and t.tolist() == [1.5, 2.0]
    assert dist.sum_floats([0.1], torch.device("cpu")) == [0.1]
    model = torch.nn.Linear(2, 2)
    assert dist.wrap(model, torch.device("cpu")) is model and dist.ddp_of(model) is None
    assert dist.exit_code(75) == 75

    def refuse() -> None:
        raise ConfigError("x")

    with pytest.raises(ConfigError):  # an ending raised on "rank 0" reaches the caller as it is
        dist.from_rank0(refuse)


def test_torchruns_environment_is_read():
    env = {"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"}
    assert dist.from_env(env) == dist.World(3, 8, 1, 2, True)
    assert not dist.from_env(env).writer and dist.World().writer
    assert dist.from_env({"RANK": "0"}) is None


def test_a_worker_of_the_launcher_writes_its_ending_and_exits_0(monkeypatch, tmp_path: Path):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "2")
    monkeypatch.setenv(dist.ENDINGS_DIR, str(tmp_path))
    assert dist.exit_code(75) == 0
    assert (tmp_path / "rank1").read_text() == "2 75\n"


def test_the_launcher_gives_back_the_ending_the_workers_agreed_on(tmp_path: Path):
    def endings(**ranks: str) -> Path:
        d = tmp_path / str(len(list(tmp_path.iterdir())))
        d.mkdir()
        for name, text in ranks.items():
            (d / name).write_text(text)
        return d

    assert launch.ending(endings(rank0="0 75\n", rank1="0 75\n"), 2, 0)[0] == 75
    assert launch.ending(endings(rank0="0 75\n", rank1="0 75\n"), 2, 1)[0] == 75  # the agent got the SIGTERM
    assert launch.ending(endings(rank0="1 2\n", rank1="1 2\n"), 2, 0)[0] == 2
    # an older attempt's ending does not count, nor does one process's alone
    assert launch.ending(endings(rank0="0 75\n", rank1="1 75\n"), 2, 1)[0] == 1
    assert launch.ending(endings(rank0="0 0\n"), 2, 1)[0] == 1
    assert launch.ending(endings(), 2, 0)[0] == 0
    assert launch.ending(endings(), 2, -15, stop_asked=True)[0] == 75  # stopped while torchrun was starting
    code, line = launch.ending(endings(rank0="0 1\n", rank1="0 75\n"), 2, 0)
    assert code == 1 and line.endswith("ended with exit 1, 75; exit 1")


def test_torchruns_command_line_and_the_settings_it_passes_on():
    cfg = resolve({"nproc": 8, "grad_accum": 32, "run": "night", "lr": 6e-4, "compile": True}, environ={},
                  dotenv=None)
    cmd = launch.torchrun_command(cfg, verify=True)
    assert cmd[1:] == ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "8", "--max-restarts", "3",
                       "--shutdown-timeout", str(launch.SHUTDOWN_GRACE_S), "-m", "job", "train", "--verify"]
    two = replace(cfg, nnodes=2, rdzv_endpoint="node0:29400")
    assert launch.torchrun_command(two, verify=False)[3:11] == [
        "--nnodes", "2", "--rdzv-backend", "c10d", "--rdzv-endpoint", "node0:29400", "--rdzv-id", "night"]
    assert resolve(environ=launch.settings_env(cfg), dotenv=None) == cfg  # the workers resolve the same settings
    assert launch.wanted(cfg) and not launch.wanted(Config())


def test_settings_for_several_processes_are_checked():
    with pytest.raises(ConfigError, match=r"^rdzv_endpoint: nnodes=2 needs the host:port"):
        resolve({"nnodes": 2, "grad_accum": 2}, environ={}, dotenv=None)
    with pytest.raises(ConfigError, match=r"^grad_accum: 6 micro-batches do not split evenly over 4 processes "
                                          r"\(nproc 2 x nnodes 2\); use a multiple of 4, e.g. 8"):
        resolve({"nproc": 2, "nnodes": 2, "rdzv_endpoint": "a:1", "grad_accum": 6}, environ={}, dotenv=None)
    with pytest.raises(ConfigError, match=r"^dist_timeout: 'soon' is not a duration"):
        resolve({"dist_timeout": "soon"}, environ={}, dotenv=None)
    with pytest.raises(ConfigError, match=r"^device: 'cuda:1' cannot be shared by 2 processes"):
        dist.backend_for("cuda:1", dist.World(size=2, local_size=2, distributed=True))
    assert dist.backend_for("cpu", dist.World(size=2, local_size=2, distributed=True)) == "gloo"


def test_checkpoints_never_hold_the_wrappers_prefixes():
    w = torch.zeros(1)
    keys = {"module._orig_mod.lm_head.weight": w, "_orig_mod.module.wte.weight": w, "ln_f.weight": w}
    assert set(checkpoint.strip_compile_prefix(keys)) == {"lm_head.weight", "wte.weight", "ln_f.weight"}


def test_dropout_streams_are_a_function_of_the_micro_batch_not_the_process():
    seeds = {micro_seed(1337, i) for i in range(1000)}
    assert len(seeds) == 1000 and micro_seed(1337, 5) == micro_seed(1337, 5) != micro_seed(1338, 5)
    cpu = torch.device("cpu")
    seed_step(cpu, micro_seed(1337, 5))
    a = torch.rand(8)
    torch.rand(3)  # another process's draws in between change nothing
    seed_step(cpu, micro_seed(1337, 5))
    assert torch.equal(a, torch.rand(8))


def test_under_torchrun_a_second_ctrl_c_does_not_cut_the_step_short():
    with StopFlag(escalate=False) as stop:
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGINT)  # the terminal's and the agent's
        assert stop.reason == "SIGINT"
    with pytest.raises(KeyboardInterrupt), StopFlag() as stop:
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGINT)


def test_plan_divides_the_time_over_the_gpus_at_the_assumed_efficiency():
    one = resolve({"preset": "gpt2-124m", "auto_batch": False}, environ={}, dotenv=None)  # 16 x 32 as set
    p1 = make_plan(one, "h100-sxm", 1e10)
    p8 = make_plan(replace(one, nproc=8), "h100-sxm", 1e10)
    for a, b in zip(p1["time"], p8["time"], strict=True):
        assert b["hours"] == pytest.approx(a["hours"] / (8 * 0.9))
        assert b["energy_kwh"] == pytest.approx(a["energy_kwh"] * 8 / (8 * 0.9))  # eight cards' power
    params = p8["params"]["total"]
    assert p8["scaling"] == {"gpus": 8, "efficiency": 0.9, "assumed": True, "micro_batches_per_gpu": 4,
                             "allreduce_bytes_per_gpu": pytest.approx(2 * 7 / 8 * 4 * params)}
    assert p8["memory"]["grad_buckets"] == 4 * params and p1["memory"]["grad_buckets"] == 0
    assert p1["scaling"]["efficiency"] == 1.0
    with pytest.raises(ConfigError, match="scaling-efficiency"):
        make_plan(one, "h100-sxm", 1e10, efficiency=1.5)


def test_the_one_place_a_command_ends_can_read_the_world_without_importing_torch():
    """cli.guarded asks job.dist how to end; a SIGTERM that cut torch's import short must not make
    it import torch again (a half-imported torch can crash the interpreter)."""
    import subprocess
    import sys

    from harness import ROOT

    code = "import sys, job.dist, job.launch; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


LEAVE = """
import atexit, sys
from job import dist
atexit.register(lambda: print("finalized"))
dist._world = dist.World(rank=0, size=2, distributed={distributed})
print("the last line", end="")  # buffered: stdout is a pipe
dist.leave(75)
sys.exit(3)
"""


@pytest.mark.parametrize("distributed", [True, False])
def test_a_torchrun_worker_leaves_without_finalizing_and_with_its_streams_flushed(distributed: bool):
    """A worker ends with its code and its output, and no teardown (where gloo's threads can abort
    it after the ending was agreed); one process ends as Python always does."""
    res = subprocess.run([sys.executable, "-c", LEAVE.format(distributed=distributed)], capture_output=True,
                         text=True, timeout=120)
    if distributed:
        assert (res.returncode, res.stdout) == (75, "the last line"), res.stderr
    else:
        assert (res.returncode, res.stdout) == (3, "the last linefinalized\n"), res.stderr
