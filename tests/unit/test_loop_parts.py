"""Fast tier: the loop's parts in-process, on tiny real objects (no subprocess, milliseconds each).
The end-to-end tests (tests/test_*.py) run the same parts through `python -m job` with real kills."""

from __future__ import annotations

import math
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
import torch

from job import checkpoint
from job.config import Config
from job.data.loader import TrainLoader
from job.data.shards import write_shard
from job.errors import ConfigError
from job.fileio import atomic_open, clean_temporaries
from job.model import build_model
from job.optim import lr_at
from job.state import LoaderState, TrainState
from job.stopping import deadline, reached
from job.units import parse_clock, parse_count, parse_duration

# ---- learning-rate schedule -----------------------------------------------------------------------


def test_lr_warms_up_linearly_then_decays_by_cosine_to_min_lr():
    cfg = Config(lr=1e-3, min_lr=1e-4, warmup_iters=10, max_iters=110)
    warm = [lr_at(i, cfg) for i in range(10)]
    assert warm == pytest.approx([1e-3 * (i + 1) / 11 for i in range(10)])
    assert lr_at(10, cfg) == pytest.approx(1e-3)  # the peak, right after warmup
    assert lr_at(60, cfg) == pytest.approx(1e-4 + 0.5 * (1e-3 - 1e-4))  # half way: the mean
    assert lr_at(110, cfg) == pytest.approx(1e-4) and lr_at(10_000, cfg) == pytest.approx(1e-4)
    decay = [lr_at(i, cfg) for i in range(10, 111)]
    assert all(a >= b for a, b in zip(decay, decay[1:], strict=False)), "cosine part must not rise"


def test_lr_without_warmup_starts_at_the_peak():
    cfg = Config(lr=2e-3, min_lr=0.0, warmup_iters=0, max_iters=4)
    assert [lr_at(i, cfg) for i in range(5)] == pytest.approx(
        [2e-3 * 0.5 * (1 + math.cos(math.pi * i / 4)) for i in range(5)])


# ---- checkpoints: save, verify, fall back ---------------------------------------------------------

SETTINGS = {"n_layer": 1, "n_head": 2, "n_embd": 16, "block_size": 8, "vocab_size": 50304, "bias": False}


def saved_run(ckpt_dir: Path, iterations: list[int], keep: int = 3) -> dict[int, dict]:
    """Real checkpoints of a tiny model, one per iteration given; returns what each held."""
    torch.manual_seed(0)
    model = build_model(SETTINGS)
    opt = model.optimizer(1e-3, 0.1, (0.9, 0.95), "cpu")
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    held = {}
    for it in iterations:
        with torch.no_grad():
            model.lm_head.weight.add_(0.01)  # every checkpoint different
        state = TrainState(iteration=it, tokens=64 * it, elapsed_s=1.5 * it, loader=LoaderState(0, 4 * it))
        content = checkpoint.snapshot(model, opt, scaler, state, SETTINGS, "fp", torch.device("cpu"))
        checkpoint.save(ckpt_dir, content, state, keep)
        held[it] = {"model": {k: v.clone() for k, v in content["model"].items()}, "state": state}
    return held


def test_save_keeps_the_newest_and_seals_each(tmp_path: Path):
    d = tmp_path / "ckpt"
    saved_run(d, [3, 6, 9, 12], keep=2)
    assert [p.name for p in checkpoint.list_checkpoints(d)] == ["ckpt_00000012.pt", "ckpt_00000009.pt"]
    assert sorted(p.name for p in d.iterdir()) == ["ckpt_00000009.json", "ckpt_00000009.pt",
                                                    "ckpt_00000012.json", "ckpt_00000012.pt"]
    for p in checkpoint.list_checkpoints(d):
        assert checkpoint.verify(p) is None
    seal = checkpoint.latest_seal(d)
    assert seal["iteration"] == 12 and seal["tokens"] == 768 and "loader" not in seal


def test_restore_puts_back_model_counters_loader_and_rng(tmp_path: Path):
    d = tmp_path / "ckpt"
    held = saved_run(d, [5])
    expected_rng = torch.rand(3)  # what the stream gives right after the snapshot
    saved, path = checkpoint.load_latest(d)
    torch.manual_seed(123)  # scramble, as a new process would
    model = build_model(SETTINGS)
    opt = model.optimizer(1e-3, 0.1, (0.9, 0.95), "cpu")
    state = checkpoint.restore(saved, model, opt, torch.amp.GradScaler("cpu", enabled=False), torch.device("cpu"))
    assert path.name == "ckpt_00000005.pt"
    assert state == held[5]["state"]
    for k, v in held[5]["model"].items():
        assert torch.equal(model.state_dict()[k], v), k
    assert torch.equal(torch.rand(3), expected_rng)


@pytest.mark.parametrize("damage, problem", [
    ("truncate", "truncated"), ("flip", "sha256 differs"), ("unseal", "no seal"),
])
def test_a_damaged_newest_checkpoint_falls_back_to_the_one_before(tmp_path: Path, capsys, damage, problem):
    d = tmp_path / "ckpt"
    held = saved_run(d, [2, 4])
    newest = d / "ckpt_00000004.pt"
    if damage == "truncate":
        newest.write_bytes(newest.read_bytes()[:1000])
    elif damage == "flip":
        raw = bytearray(newest.read_bytes())
        raw[len(raw) // 2] ^= 0xFF
        newest.write_bytes(bytes(raw))
    else:
        checkpoint.seal_path(newest).unlink()
    assert problem in checkpoint.verify(newest)
    saved, path = checkpoint.load_latest(d)
    assert path.name == "ckpt_00000002.pt" and saved["iteration"] == 2
    assert all(torch.equal(saved["model"][k], v) for k, v in held[2]["model"].items())
    err = capsys.readouterr().err
    assert newest.name in err and "falling back" in err


def test_an_interrupted_write_leaves_only_a_temporary_that_is_cleaned(tmp_path: Path):
    target = tmp_path / "ckpt_00000001.pt"
    with pytest.raises(RuntimeError), atomic_open(target) as f:
        f.write(b"half a checkpoint")
        raise RuntimeError("killed")
    assert not target.exists() and list(tmp_path.iterdir()) == []  # the temporary went with the error
    (tmp_path / ".ckpt_00000002.pt.tmp999").write_bytes(b"left by kill -9")
    assert clean_temporaries(tmp_path) == 1 and list(tmp_path.iterdir()) == []


# ---- loader: resume to the batch ------------------------------------------------------------------

@pytest.fixture
def shard(tmp_path: Path) -> Path:
    path = tmp_path / "train_000000.bin"
    write_shard(path, np.arange(1000, dtype=np.uint16) % 50257)
    return path


def test_a_loader_rebuilt_from_its_state_continues_with_the_same_batches(shard: Path):
    ref = TrainLoader([shard], block_size=9, batch_size=4, seed=7)
    stream = [ref.next_rows() for _ in range(60)]  # 111 windows, 27 batches an epoch: several epochs
    assert ref.state.epoch >= 2
    first = TrainLoader([shard], block_size=9, batch_size=4, seed=7)
    for _ in range(23):
        first.next_rows()
    resumed = TrainLoader([shard], block_size=9, batch_size=4, seed=7,
                          state=LoaderState(**vars(first.state)))
    for expected in stream[23:]:
        assert np.array_equal(resumed.next_rows(), expected)


def test_every_window_once_per_epoch_and_targets_follow_inputs(shard: Path):
    loader = TrainLoader([shard], block_size=9, batch_size=3, seed=1)
    rows = np.concatenate([loader.next_rows() for _ in range(37)])  # (1000 - 1) // 9 = 111 windows: one epoch
    assert sorted(rows[:, 0].tolist()) == list(range(0, 111 * 9, 9))
    assert (np.diff(rows, axis=1) == 1).all()


def test_a_batch_larger_than_the_split_is_a_setting_error(shard: Path):
    with pytest.raises(ConfigError, match=r"^batch_size: 500 is larger than the train split.*111 windows"):
        TrainLoader([shard], block_size=9, batch_size=500, seed=1)


# ---- the time window ------------------------------------------------------------------------------

def test_stop_at_is_the_next_such_local_time_and_the_earliest_limit_wins():
    started = datetime.now().replace(hour=12, minute=0, second=0, microsecond=0).timestamp()
    assert deadline("", "12:00:05", started) == (started + 5, "stop_at 12:00:05")
    past, _ = deadline("", "11:59", started)  # already past today: tomorrow
    assert datetime.fromtimestamp(past) == datetime.fromtimestamp(started) + timedelta(hours=23, minutes=59)
    assert deadline("30m", "07:00", started) == (started + 1800, "max_runtime 30m")
    assert deadline("", "", started) is None


def test_reached_says_why_once_the_time_has_come():
    limit = (1000.0, "max_runtime 2s")
    assert reached(limit, now=999.9) is None
    assert reached(limit, now=1000.0) == "max_runtime 2s"
    assert reached(None, now=1e12) is None


def test_numbers_read_as_people_write_them():
    assert parse_duration("8h30m") == 30600 and parse_duration("1d") == 86400 and parse_duration("90") == 90
    assert parse_clock("07:00") == (7, 0, 0) and parse_clock("6:59:30") == (6, 59, 30)
    assert parse_count("3.68B", "x") == 3_680_000_000 and parse_count("250k", "x") == 250_000
    for bad, fn in (("8 hours", parse_duration), ("25:00", parse_clock), ("-5", lambda t: parse_count(t, "x"))):
        with pytest.raises(ConfigError):
            fn(bad)


class Payload:
    """A pickle that would run code when unpickled without weights_only."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_sealed_checkpoint_with_a_pickle_payload_is_never_executed(tmp_path: Path, capsys):
    d = tmp_path / "ckpt"
    saved_run(d, [2])
    evil, marker = d / "ckpt_00000004.pt", tmp_path / "payload-ran"
    torch.save({"model": Payload(marker)}, evil)  # sealed as if we had written it
    checkpoint.atomic_write_json(checkpoint.seal_path(evil), {"iteration": 4, "bytes": evil.stat().st_size,
                                                              "sha256": checkpoint.sha256_file(evil)})
    saved, path = checkpoint.load_latest(d)
    assert path.name == "ckpt_00000002.pt" and not marker.exists()
    assert "ckpt_00000004.pt is unreadable" in capsys.readouterr().err


# ---- precision on a CPU -----------------------------------------------------------------------------


def test_dtype_auto_on_a_cpu_is_bf16_exactly_where_the_processor_has_native_bf16():
    from job.device import pick_precision
    from job.memory import compute_bytes

    flags = set()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            flags |= set(line.split(":", 1)[1].split())
    native = bool(flags & {"avx512_bf16", "amx_bf16"})  # the kernel's names for what torch checks
    prec = pick_precision(torch.device("cpu"), "auto")
    assert prec.dtype == (torch.bfloat16 if native else torch.float32), prec.why
    assert ("natively" in prec.why) == native and not prec.needs_scaler
    # the plan's memory model assumes the dtype the run will take
    assert compute_bytes(Config(dtype="auto"), on_gpu=False) == (prec.name, 2 if native else 4)
    assert pick_precision(torch.device("cpu"), "float32").dtype == torch.float32  # a setting wins
