"""Several processes, one run: torch.distributed under torchrun (DDP), kept to what the loop needs.

torchrun starts one process (a rank) per GPU and tells each its place in RANK, WORLD_SIZE,
LOCAL_RANK and LOCAL_WORLD_SIZE. Without that environment nothing here does anything: one
process, no process group, every helper the identity, so a plain `job train` runs as it always has.

Under torchrun the invariant is that every rank takes the same decision at the same step, so that
no rank ever waits in a collective for one that went another way:
- what one process must do alone (hold the run's lock; read, write or go back to a checkpoint;
  write config.json, log.jsonl, DONE) happens on rank 0, and its result, or the one-line ending it
  raised, reaches every rank (`from_rank0`);
- what each rank does for itself (open its machine's copy of the data, serve its machine's
  metrics) is `agreed`: one rank failing ends every rank, with the same exit code;
- once per step the ranks add up, in one all-reduce (`all_sum`), what decides the step: the loss
  (not finite on one rank: no rank updates), the stop votes (a signal or the time window on any
  rank stops every rank after the same step) and the energy.
Only rank 0 speaks on stdout and prints endings; other ranks' stderr shows what is only theirs (a
signal they received, a crash's traceback).

A rank that dies takes part in none of this: the others' next collective fails (gloo at once, NCCL
within dist_timeout) and torchrun's agent restarts the group, which resumes from the newest
checkpoint. An ending on purpose (done, stopped, refused, failed with its one line) must not be
restarted: under job/launch.py each rank writes its exit code to JOB_ENDINGS_DIR and exits 0, so
the agent sees a finished group and the launcher exits with the code the ranks agreed on.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from job.config import Config, check_split
from job.errors import ENDINGS, EXIT_FAILED, ConfigError
from job.units import parse_duration

if TYPE_CHECKING:
    import torch

ENDINGS_DIR = "JOB_ENDINGS_DIR"  # set by job/launch.py for its workers; not a setting
T = TypeVar("T")


@dataclass(frozen=True)
class World:
    """This process's place in the job."""
    rank: int = 0
    size: int = 1
    local_rank: int = 0  # its GPU on this machine
    local_size: int = 1  # processes on this machine
    distributed: bool = False  # started by torchrun: a process group joins the ranks

    @property
    def writer(self) -> bool:
        """The one process that writes the run's files and serves its training metrics."""
        return self.rank == 0


SINGLE = World()
_world = SINGLE  # set once by joined(): a process's place in the job does not change


def from_env(environ: Mapping[str, str] | None = None) -> World | None:
    """The world torchrun describes in the environment, or None outside torchrun."""
    env = os.environ if environ is None else environ
    try:
        rank, size, local = (int(env[k]) for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
        local_size = int(env.get("LOCAL_WORLD_SIZE", size))
    except (KeyError, ValueError):
        return None
    return World(rank, size, local, local_size, True)


def current() -> World:
    return _world


def backend_for(setting: str, world: World) -> str:
    """NCCL with each rank on its LOCAL_RANK GPU, or gloo on CPU."""
    import torch

    if setting == "cpu" or (setting == "auto" and not torch.cuda.is_available()):
        return "gloo"
    if setting not in ("auto", "cuda"):
        raise ConfigError(f"device: '{setting}' cannot be shared by {world.size} processes under torchrun; use "
                          f"auto or cuda (each process takes the GPU numbered by its LOCAL_RANK) or cpu")
    count = torch.cuda.device_count()
    if world.local_size > count:
        raise ConfigError(f"nproc: {world.local_size} processes on this machine, but it has {count} CUDA GPU(s); "
                          f"start one process per GPU (nproc {count or 1}), or use device=cpu")
    return "nccl"


@contextmanager
def joined(cfg: Config) -> Iterator[World]:
    """Under torchrun: check that the settings fit the world, join the process group (timeout:
    dist_timeout), make this rank's GPU the current one, and leave the group at the end. Outside
    torchrun: the single world, and nothing else."""
    global _world
    world = from_env()
    if world is None:
        yield SINGLE
        return
    import torch
    import torch.distributed as tdist

    _world = world
    backend = backend_for(cfg.device, world)
    check_split(cfg.grad_accum, world.size, "WORLD_SIZE from torchrun")
    timeout = timedelta(seconds=parse_duration(cfg.dist_timeout, "dist_timeout"))
    device = None
    if backend == "nccl":
        torch.cuda.set_device(world.local_rank)
        device = torch.device("cuda", world.local_rank)
    tdist.init_process_group(backend, store=attempt_store(timeout), rank=world.rank, world_size=world.size,
                             timeout=timeout, device_id=device)
    if not world.writer:
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 (for the life of the process)
    agreed_end = False
    try:
        yield world
        agreed_end = True
    except ENDINGS:
        agreed_end = True  # every rank ends the same way: leaving the group waits for no one
        raise
    except RuntimeError as e:  # not an ending on purpose: exit 1, and the agent restarts the group
        if not lost_peer(e):
            raise
        print(f"error: rank {world.rank} lost the other processes ({str(e).splitlines()[0][:300]}); one of them "
              f"ended (see its own lines); torchrun's agent restarts them all from the newest checkpoint while "
              f"its max_restarts last", file=sys.stderr, flush=True)
        raise SystemExit(EXIT_FAILED) from None
    finally:
        if agreed_end:  # after a crash a peer may be gone, and NCCL's teardown could wait for it
            tdist.destroy_process_group()


def attempt_store(timeout: timedelta) -> Any:
    """torchrun's key-value store, in a namespace of this attempt. torchrun's agent keeps one store
    across the restarts of a group, and without this a restarted rank can read the address (gloo)
    or NCCL id a rank of the crashed attempt left there, and wait for a process that is gone."""
    import torch.distributed as tdist
    from torch.distributed.rendezvous import rendezvous

    store, _, _ = next(rendezvous("env://", timeout=timeout))
    return tdist.PrefixStore(f"job/attempt{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}", store)


def lost_peer(e: BaseException) -> bool:
    """Whether a collective failed because another rank is gone (gloo's closed connection, a
    NCCL or store error, a timeout), rather than because of a bug here."""
    import torch.distributed as tdist

    return isinstance(e, tdist.DistError) or any(s in str(e) for s in ("by peer", "Broken pipe", "Timed out"))


def speaks() -> bool:
    """Whether this process prints endings and progress: rank 0, or the only process."""
    return _world.writer


def exit_code(code: int) -> int:
    """The status this process ends with. A worker of job/launch.py (JOB_ENDINGS_DIR set) writes an
    ending on purpose there and exits 0: torchrun's agent restarts a group when any process exits
    non-zero, and a run that is done, stopped, refused or given up must not start again."""
    world, where = from_env(), os.environ.get(ENDINGS_DIR)
    if world is None or not where:
        return code
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    try:
        Path(where, f"rank{world.local_rank}").write_text(f"{attempt} {code}\n")
    except OSError:
        return code
    return 0


def leave(code: int | str | None) -> None:
    """End a worker of torchrun that has left its group, skipping Python's finalization; outside
    torchrun, return and let the process end as usual.

    Why: at interpreter teardown torch's C++ threads of a gloo group can be destroyed while still
    joinable, and the process aborts ("terminate called without an active exception", SIGABRT) after
    its ending was agreed and written. Seen, rarely, after a planned stop of a two-process CPU run,
    and costly: the agent sees a crash and restarts the group, which trains on past the stop. By now
    everything the job writes is closed (checkpoints, log.jsonl, trackers, the run's lock), so only
    the standard streams are left to flush."""
    if not _world.distributed:
        return
    if isinstance(code, str):  # as Python ends on sys.exit("message"): the message, exit 1
        print(code, file=sys.stderr)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code if isinstance(code, int) else 0 if code is None else 1)


def _describe(e: BaseException) -> tuple[int, str]:
    return e.exit_code, str(e)  # type: ignore[attr-defined]


def _rebuild(code: int, message: str) -> Exception:
    """Another rank's ending, as the ending of the same exit code here."""
    kind = next((k for k in ENDINGS if k.exit_code == code), ENDINGS[0])
    return kind(message)


def from_rank0(fn: Callable[[], T]) -> T:
    """Rank 0 runs `fn` (it alone touches the run's files); every rank returns its result, or ends
    as it ended. The result travels pickled: keep it to plain data and CPU tensors."""
    if not _world.distributed:
        return fn()
    import torch.distributed as tdist

    box: list[Any] = [None]
    ending = None
    if _world.writer:
        try:
            box[0] = (fn(), None)
        except ENDINGS as e:
            ending, box[0] = e, (None, _describe(e))
    tdist.broadcast_object_list(box, src=0)
    result, report = box[0]
    if ending is not None:
        raise ending
    if report is not None:
        raise _rebuild(*report)
    return result


def agreed(fn: Callable[[], T]) -> T:
    """Every rank runs `fn`; when it ends early on any rank, every rank ends with the lowest such
    rank's exit code and line (which names that rank)."""
    if not _world.distributed:
        return fn()
    import torch.distributed as tdist

    result, ending = None, None
    try:
        result = fn()
    except ENDINGS as e:
        ending = e
    reports: list[Any] = [None] * _world.size
    tdist.all_gather_object(reports, _describe(ending) if ending else None)
    failed = [(rank, r) for rank, r in enumerate(reports) if r is not None]
    if not failed:
        return result  # type: ignore[return-value]
    rank, (code, message) = failed[0]
    if rank == _world.rank and ending is not None:
        raise ending
    raise _rebuild(code, f"rank {rank}: {message}" if rank else message)


def smallest(value: int) -> int:
    """The smallest of the ranks' values (each rank's own card may allow another micro-batch)."""
    if not _world.distributed:
        return value
    import torch.distributed as tdist

    values: list[Any] = [None] * _world.size
    tdist.all_gather_object(values, value)
    return min(values)


def all_sum(t: torch.Tensor) -> torch.Tensor:
    """`t` summed over the ranks, in place (on the rank's device: NCCL reduces on the GPU)."""
    if _world.distributed:
        import torch.distributed as tdist

        tdist.all_reduce(t)
    return t


def sum_floats(values: list[float], device: torch.device) -> list[float]:
    """Plain numbers summed over the ranks (float64); the numbers themselves in one process."""
    if not _world.distributed:
        return values
    import torch

    return all_sum(torch.tensor(values, dtype=torch.float64, device=device)).tolist()


def wrap(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """The model in DistributedDataParallel under torchrun (it starts from rank 0's weights, which
    every rank has restored anyway); the model itself otherwise."""
    if not _world.distributed:
        return model
    import torch
    from torch.nn.parallel import DistributedDataParallel

    index = device.index if device.index is not None or device.type != "cuda" else torch.cuda.current_device()
    # the gradients are views into DDP's buckets: no second copy of them, no copy into the buckets
    return DistributedDataParallel(model, device_ids=None if index is None else [index],
                                   gradient_as_bucket_view=True)


def ddp_of(model: torch.nn.Module) -> Any:
    """The DDP module in `model` (which torch.compile may wrap), or None."""
    from torch.nn.parallel import DistributedDataParallel

    inner = getattr(model, "_orig_mod", model)
    return inner if isinstance(inner, DistributedDataParallel) else None


def sync_grads(model: torch.nn.Module, last: bool) -> AbstractContextManager[Any]:
    """Around one micro-step's forward and backward: DDP reduces the gradients only on the last
    micro-step of an iteration (no_sync on the others), so once per iteration."""
    ddp = ddp_of(model)
    if last or ddp is None:
        return nullcontext()
    return ddp.no_sync()
