"""Live metrics for Prometheus while `job train` runs (names: `trainer_` prefix, base units;
docs/monitoring.md says what they show). Training figures are set from the loop's hooks every
step; GPU figures are read from NVML by a collector when Prometheus scrapes, so they cost the
training loop nothing.

The run's totals (iteration, tokens, seconds, joules, restarts) come from the loop's state, which
the checkpoint restores: they are right after a restart even if Prometheus missed the night.
`trainer_tokens_total` is a plain per-process counter on purpose: a counter that restarted at the
checkpoint's (smaller) value would read as a reset plus a huge jump, and rate() would spike.

Under torchrun (job/dist.py) one endpoint per machine: its local rank 0 serves, on metrics_port,
the GPU figures of every GPU the job uses on that machine (8 cards: 8 `gpu` values), and on rank
0's machine the training series too, which are the whole job's (tokens, MFU, energy). Prometheus
scrapes each machine once (grafana/prometheus.yml).

A figure that is not known is absent from the scrape, never a 0 that reads as a measurement: MFU
without a peak FLOP/s, the checkpoint interval before the first step's time, a planned stop that
is not set (`OptionalGauge`). What the alerts read after the process is gone (grafana/alerts.yml)
is published while it runs: the planned stop time and the expected seconds between checkpoints.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    disable_created_metrics,
    start_http_server,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from job.config import Config
from job.cost import JOULES_PER_KWH, Prices, cost
from job.errors import ConfigError
from job.hooks import RunHooks, StartInfo, StepInfo
from job.state import TrainState

if TYPE_CHECKING:
    from job.dist import World

# Steps run from milliseconds (tiny on a CPU) to minutes (big batches with accumulation). About
# 10% apart where real runs sit: an H100's 0.5-1 s step and a 4070's 3-3.5 s (the scenario's).
STEP_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 1,
                1.1, 1.25, 1.5, 1.75, 2, 2.25, 2.5, 2.75, 3, 3.25, 3.5, 3.75, 4, 4.5, 5, 6, 7.5, 10, 15, 20, 30, 45, 60,
                120, 300)
STALL_FLOOR_S = 300.0  # the healthcheck never calls a trainer stalled sooner than this after its last step
CKPT_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300)

# NVML's clock-event (throttle) reason bits, by the name the dashboard shows.
REASONS = {
    "gpu_idle": "nvmlClocksEventReasonGpuIdle",
    "applications_clocks_setting": "nvmlClocksEventReasonApplicationsClocksSetting",
    "sw_power_cap": "nvmlClocksEventReasonSwPowerCap",
    "hw_slowdown": "nvmlClocksEventReasonHwSlowdown",
    "sync_boost": "nvmlClocksEventReasonSyncBoost",
    "sw_thermal_slowdown": "nvmlClocksEventReasonSwThermalSlowdown",
    "hw_thermal_slowdown": "nvmlClocksEventReasonHwThermalSlowdown",
    "hw_power_brake_slowdown": "nvmlClocksEventReasonHwPowerBrakeSlowdown",
    "display_clock_setting": "nvmlClocksEventReasonDisplayClockSetting",
}


def log(message: str) -> None:
    print(f"metrics: {message}", file=sys.stderr, flush=True)


class OptionalGauge:
    """A gauge with no labels that is served only while it holds a value: None means unknown, and
    an unknown figure is left out of the scrape (a prometheus_client Gauge that was never set
    reads 0). Setting a float is atomic, so the scrape thread needs no lock."""

    def __init__(self, name: str, documentation: str, registry: CollectorRegistry):
        self.name, self.documentation = name, documentation
        self.value: float | None = None
        registry.register(self)

    def set(self, value: float | None) -> None:
        self.value = value

    def describe(self) -> list[Metric]:
        return [GaugeMetricFamily(self.name, self.documentation)]  # the name, reserved in the registry

    def collect(self) -> Iterator[Metric]:
        value = self.value
        if value is not None:
            yield GaugeMetricFamily(self.name, self.documentation, value=value)


class TrainingMetrics:
    """The training series, kept in their own registry and set from RunHooks."""

    def __init__(self, registry: CollectorRegistry, cfg: Config):
        self.cfg = cfg
        r = registry
        self.info = Info("trainer", "The run: name, preset, parameters, device, GPU name, peak FLOP/s used for MFU",
                         registry=r)
        self.iteration = Gauge("trainer_iteration", "Optimizer steps done in this run (across restarts)", registry=r)
        self.target = Gauge("trainer_target_iterations", "Optimizer steps the run is set to do (max_iters)",
                            registry=r)
        self.tokens = Counter("trainer_tokens", "Tokens trained on by this process; tokens/s is its rate()",
                              registry=r)
        self.run_tokens = Gauge("trainer_run_tokens", "Tokens trained on in this run (across restarts)", registry=r)
        self.loss = Gauge("trainer_loss", "Cross-entropy loss (nats/token); split=train every step, val on evals",
                          ["split"], registry=r)
        self.lr = Gauge("trainer_learning_rate", "Learning rate of the last step", registry=r)
        self.grad_norm = Gauge("trainer_grad_norm", "Gradient L2 norm before clipping, last step", registry=r)
        self.mfu = OptionalGauge("trainer_mfu_ratio", "Model FLOPs utilisation of the last step (0-1), vs the peak "
                                 "in trainer_info; absent where no peak is known", r)
        self.step = Histogram("trainer_step_seconds", "Wall time of one optimizer step", buckets=STEP_BUCKETS,
                              registry=r)
        self.start = Gauge("trainer_start_timestamp_seconds", "When this process started training (Unix time)",
                           registry=r)
        self.eta = Gauge("trainer_eta_timestamp_seconds", "When the run should reach max_iters at the smoothed "
                         "step time (Unix time)", registry=r)
        self.last_ckpt = Gauge("trainer_last_checkpoint_timestamp_seconds", "When the newest checkpoint was "
                               "written (Unix time)", registry=r)
        self.ckpt = Histogram("trainer_checkpoint_seconds", "Wall time to write one checkpoint", buckets=CKPT_BUCKETS,
                              registry=r)
        self.ckpt_interval = OptionalGauge(
            "trainer_checkpoint_interval_seconds", "Expected wall time between checkpoints: ckpt_interval "
            "iterations at the smoothed step time (evaluations and the write itself not included)", r)
        self.last_step = OptionalGauge(
            "trainer_last_step_timestamp_seconds", "When the newest optimizer step finished, with its eval, "
            "sample, log and checkpoint (Unix time)", r)
        self.stall_limit = OptionalGauge(
            "trainer_stall_limit_seconds", "How long without a step still counts as progress (the healthcheck's "
            "limit): 3 x the longest gap between steps this process has seen (compile, evals and checkpoints "
            "included), at least 20 steps at the smoothed step time and 5 minutes", r)
        self._previous: float | None = None  # when the last step (or the start) was
        self._longest_gap = 0.0
        self.planned_stop = OptionalGauge(
            "trainer_planned_stop_timestamp_seconds", "When this process stops on purpose, checkpointed, with "
            "exit 75 (max_runtime, stop_at; Unix time); absent when neither is set", r)
        self.cost_series(r, cfg)
        self.restarts = Gauge("trainer_restarts", "Times this run was resumed from a checkpoint", registry=r)
        self.skipped = Counter("trainer_skipped_steps", "Steps whose update this process skipped: the loss or "
                               "the gradient was not finite", registry=r)
        self.run_seconds = Gauge("trainer_run_seconds", "Training wall time of the run (across restarts)",
                                 registry=r)
        # Only served when there is a meter (NVML); a 0 on a CPU would read as "free".
        self.run_energy: Gauge | None = None

    def cost_series(self, r: CollectorRegistry, cfg: Config) -> None:
        """The prices, served from the start, and what the run has cost, served once known."""
        self.price = Gauge("trainer_energy_price_per_joule", "Electricity price per joule (price_per_kwh / 3.6e6), "
                           "in the label's currency", ["currency"], registry=r)
        self.rent = Gauge("trainer_rent_price_per_gpu_second", "Rent of one GPU for one second (price_per_gpu_hour / "
                          "3600; 0: your own card), in the label's currency", ["currency"], registry=r)
        self.price.labels(cfg.currency).set(cfg.price_per_kwh / JOULES_PER_KWH)
        self.rent.labels(cfg.currency).set(cfg.price_per_gpu_hour / 3600)
        self.run_gpu_seconds = Gauge("trainer_run_gpu_seconds", "GPU-seconds of the run: training wall time x "
                                     "the job's GPUs (across restarts)", registry=r)
        # labelled by currency, and served once known (a labelled gauge has no sample until set)
        self.run_cost = Gauge("trainer_run_cost", "What the run cost so far, in the label's currency: electricity "
                              "(where energy is measured) plus rent (price_per_gpu_hour); absent when neither is "
                              "known", ["currency"], registry=r)

    def enable_energy(self, registry: CollectorRegistry) -> None:
        self.run_energy = Gauge("trainer_run_energy_joules", "GPU energy used by the run (across restarts, "
                                "from NVML)", registry=registry)

    def on_start(self, info: StartInfo) -> None:
        labels = {"run": "run", "preset": "preset", "params": "params", "device": "device", "dtype": "dtype",
                  "gpu": "gpu_name", "peak_flops": "peak_flops",  # `gpu` is the index on every GPU series
                  "world_size": "world_size"}
        values = {label: getattr(info, k) for k, label in labels.items()}
        self.info.info({label: "" if v is None else str(v) for label, v in values.items()})
        self.start.set(time.time())
        self._previous = time.time()
        self.target.set(info.max_iters)
        self.set_totals(info.state)
        if info.checkpoint_saved_at is not None:  # the checkpoint this start resumed from
            self.last_ckpt.set(info.checkpoint_saved_at)
        if info.state.val_loss is not None:
            self.loss.labels("val").set(info.state.val_loss)

    def set_totals(self, st: TrainState) -> None:
        """The run's totals across restarts, as the loop's state (and so the checkpoint) holds them."""
        self.iteration.set(st.iteration)
        self.run_tokens.set(st.tokens)
        self.run_seconds.set(st.elapsed_s)
        self.run_gpu_seconds.set(st.gpu_s)
        self.restarts.set(st.restarts)
        if self.run_energy is not None:
            self.run_energy.set(st.energy_j)
        if self.run_energy is not None or self.cfg.price_per_gpu_hour:
            self.run_cost.labels(self.cfg.currency).set(cost(st.energy_j, st.gpu_s, Prices.of(self.cfg))["cost"])

    def on_step(self, i: StepInfo) -> None:
        now = time.time()
        self.set_totals(i.state)
        self.target.set(i.max_iters)
        self.tokens.inc(self.cfg.tokens_per_iter)
        self.skipped.inc(i.skipped)
        self.loss.labels("train").set(i.train_loss)
        if i.val_loss is not None:
            self.loss.labels("val").set(i.val_loss)
        self.lr.set(i.lr)
        self.grad_norm.set(i.grad_norm)
        if i.mfu is not None:
            self.mfu.set(i.mfu)
        if i.smoothed_step_s is not None:
            self.ckpt_interval.set(self.cfg.ckpt_interval * i.smoothed_step_s)
        self.planned_stop.set(i.planned_stop_at)
        self.step.observe(i.step_s)
        self.eta.set(now + (i.eta_s if math.isfinite(i.eta_s) else 0.0))
        if i.checkpoint_s is not None:
            self.ckpt.observe(i.checkpoint_s)
            self.last_ckpt.set(now)
        self.progress(now, i.smoothed_step_s)

    def progress(self, now: float, smoothed_step_s: float | None) -> None:
        """A step is done: when, and how long a stretch without the next one is still normal."""
        if self._previous is not None:
            self._longest_gap = max(self._longest_gap, now - self._previous)
        self._previous = now
        self.last_step.set(now)
        self.stall_limit.set(max(STALL_FLOOR_S, 3 * self._longest_gap, 20 * (smoothed_step_s or 0.0)))


class GpuCollector:
    """Reads NVML and torch's allocator when Prometheus scrapes. `devices` maps the torch index to
    its NVML handle. Every series carries `gpu`, the host's number for the card (its /dev/nvidiaN
    minor number, the same inside a container; else NVML's index) and `uuid`, the key that joins
    them with dcgm-exporter's and nvidia_gpu_exporter's series for the same card."""

    def __init__(self, nvml: Any, devices: dict[int, Any], torch_devices: set[int] | None = None):
        self.nvml, self.devices = nvml, devices
        self.torch_devices = torch_devices  # where this process's allocator figures are served (None: all)
        self.driver = _try(lambda: _text(nvml.nvmlSystemGetDriverVersion()), "")
        self.reason_bits = {name: getattr(nvml, attr, 0) for name, attr in REASONS.items()}
        self.labels = {idx: card_labels(nvml, h, idx) for idx, h in devices.items()}

    def describe(self) -> list[Metric]:
        return []  # keeps registration from calling collect() (and NVML) early

    def collect(self) -> Iterator[Metric]:
        g = lambda name, doc, extra=(): GaugeMetricFamily(name, doc, labels=["gpu", "uuid", *extra])
        f = {
            "info": g("trainer_gpu_info", "The GPU: name, driver, and the index torch gives it (cuda:N)",
                      ("name", "driver", "torch_index")),
            "used": g("trainer_gpu_memory_used_bytes", "GPU memory in use, all processes (NVML)"),
            "total": g("trainer_gpu_memory_total_bytes", "GPU memory size (NVML)"),
            "alloc": g("trainer_torch_memory_allocated_bytes", "Memory held by this process's tensors"),
            "reserved": g("trainer_torch_memory_reserved_bytes", "Memory reserved by torch's caching allocator"),
            "peak": g("trainer_torch_memory_peak_bytes", "Peak tensor memory of this process since it started"),
            "power": g("trainer_gpu_power_watts", "Power draw"),
            "limit": g("trainer_gpu_power_limit_watts", "Enforced power limit"),
            "energy": CounterMetricFamily("trainer_gpu_energy_joules", "Energy used since the driver loaded",
                                          labels=["gpu", "uuid"]),
            "temp": g("trainer_gpu_temperature_celsius", "Core temperature"),
            "util": g("trainer_gpu_utilization_ratio", "Share of time a kernel was running (0-1)"),
            "clock": g("trainer_gpu_sm_clock_hertz", "SM clock"),
            "reason": g("trainer_gpu_clock_event_reason_active", "1 where this reason holds the clocks down "
                        "(throttling)", ("reason",)),
        }
        for idx, h in self.devices.items():
            self._read(idx, h, f)
        yield from f.values()

    def _read(self, idx: int, h: Any, f: dict[str, Metric]) -> None:
        import torch

        n, card = self.nvml, list(self.labels[idx])
        f["info"].add_metric([*card, _try(lambda: _text(n.nvmlDeviceGetName(h)), ""), self.driver, str(idx)], 1)
        mem = _try(lambda: _memory_info(n, h))
        if mem is not None:
            f["used"].add_metric(card, mem.used)
            f["total"].add_metric(card, mem.total)
        # never start CUDA from the scrape thread; another process's card has none of ours
        if torch.cuda.is_initialized() and (self.torch_devices is None or idx in self.torch_devices):
            f["alloc"].add_metric(card, torch.cuda.memory_allocated(idx))
            f["reserved"].add_metric(card, torch.cuda.memory_reserved(idx))
            f["peak"].add_metric(card, torch.cuda.max_memory_allocated(idx))
        _add(f["power"], card, lambda: n.nvmlDeviceGetPowerUsage(h) / 1e3)  # mW
        _add(f["limit"], card, lambda: n.nvmlDeviceGetEnforcedPowerLimit(h) / 1e3)  # mW
        _add(f["energy"], card, lambda: n.nvmlDeviceGetTotalEnergyConsumption(h) / 1e3)  # mJ
        _add(f["temp"], card, lambda: n.nvmlDeviceGetTemperature(h, n.NVML_TEMPERATURE_GPU))
        _add(f["util"], card, lambda: n.nvmlDeviceGetUtilizationRates(h).gpu / 100)  # percent
        _add(f["clock"], card, lambda: n.nvmlDeviceGetClockInfo(h, n.NVML_CLOCK_SM) * 1e6)  # MHz
        mask = _try(lambda: _clock_reasons(n, h))
        if mask is not None:
            for name, active in decode_reasons(mask, self.reason_bits).items():
                f["reason"].add_metric([*card, name], active)


def card_labels(nvml: Any, handle: Any, torch_index: int) -> tuple[str, str]:
    """(gpu, uuid): the host's number for the card where it can be known, and its UUID."""
    number = _try(lambda: nvml.nvmlDeviceGetMinorNumber(handle))
    if number is None:
        number = _try(lambda: nvml.nvmlDeviceGetIndex(handle), torch_index)
    return str(number), _try(lambda: _text(nvml.nvmlDeviceGetUUID(handle)), "")


def decode_reasons(mask: int, bits: dict[str, int]) -> dict[str, int]:
    """NVML's clock-event bitmask -> {reason: 0 or 1} for every known reason."""
    return {name: int(bool(mask & bit)) for name, bit in bits.items() if bit}


def _text(v: str | bytes) -> str:
    return v.decode() if isinstance(v, bytes) else v


def _try(fn: Any, default: Any = None) -> Any:
    try:
        return fn()
    except Exception:  # one figure a card does not support must not cost the whole scrape
        return default


def _add(family: Metric, labels: list[str], read: Any) -> None:
    value = _try(read)
    if value is not None:
        family.add_metric(labels, value)


def _memory_info(n: Any, h: Any) -> Any:
    try:  # v2 counts memory the driver reserves as used, which is what the card can't give us
        return n.nvmlDeviceGetMemoryInfo(h, version=n.nvmlMemory_v2)
    except Exception:
        return n.nvmlDeviceGetMemoryInfo(h)


def _clock_reasons(n: Any, h: Any) -> int:
    if hasattr(n, "nvmlDeviceGetCurrentClocksEventReasons"):
        return n.nvmlDeviceGetCurrentClocksEventReasons(h)
    return n.nvmlDeviceGetCurrentClocksThrottleReasons(h)


class EnergyMeter:
    """Joules used by one GPU since a fixed point: NVML's energy counter (Volta and newer), or
    its power draw integrated between readings where the counter is not supported."""

    def __init__(self, nvml: Any, handle: Any):
        self.nvml, self.handle = nvml, handle
        self._integrated, self._last = 0.0, None

    def __call__(self) -> float | None:
        n = self.nvml
        try:
            return n.nvmlDeviceGetTotalEnergyConsumption(self.handle) / 1e3
        except Exception:
            pass
        watts = _try(lambda: n.nvmlDeviceGetPowerUsage(self.handle) / 1e3)
        if watts is None:
            return None
        now = time.monotonic()
        if self._last is not None:
            self._integrated += watts * (now - self._last)
        self._last = now
        return self._integrated


def open_gpus(cfg: Config) -> tuple[Any, dict[int, Any], int | None, str | None]:
    """(pynvml, {torch index: NVML handle}, index of the training GPU, why there are no GPU figures)."""
    import torch

    from job.device import pick_device

    device = pick_device(cfg.device)
    if device.type != "cuda":
        return None, {}, None, f"training on {device.type}, not a CUDA GPU"
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception as e:
        return None, {}, None, f"NVML is not available ({type(e).__name__}: {e})"
    devices = {}
    for i in range(torch.cuda.device_count()):
        # torch and NVML may number GPUs differently (CUDA_VISIBLE_DEVICES, FASTEST_FIRST): match by UUID
        uuid = _try(lambda i=i: str(torch.cuda.get_device_properties(i).uuid))
        h = _try(lambda u=uuid: pynvml.nvmlDeviceGetHandleByUUID(u if u.startswith("GPU-") else f"GPU-{u}"))
        devices[i] = h if h is not None else _try(lambda i=i: pynvml.nvmlDeviceGetHandleByIndex(i))
    devices = {i: h for i, h in devices.items() if h is not None}
    if not devices:
        return None, {}, None, "NVML sees none of torch's GPUs"
    return pynvml, devices, device.index if device.index is not None else torch.cuda.current_device(), None


def serve(registry: CollectorRegistry, cfg: Config) -> Any:
    try:
        server, _thread = start_http_server(cfg.metrics_port, addr=cfg.metrics_addr, registry=registry)
    except OSError as e:
        raise ConfigError(f"metrics_port: cannot serve on {cfg.metrics_addr}:{cfg.metrics_port} ({e.strerror}); "
                          f"pick a free port, or 0 to turn metrics off") from None
    return server


@contextmanager
def monitoring(cfg: Config, world: World | None = None) -> Iterator[RunHooks]:
    """RunHooks for one `job train` process: metrics served while it runs (unless metrics_port is
    0), and NVML energy fed to the loop either way so the checkpointed energy is right. Under
    torchrun (`world`, job/dist.py) only each machine's local rank 0 serves, the training series
    only on rank 0; every rank measures the energy of its own GPU."""
    several = world is not None and world.distributed
    rank, local_rank, local_size = (world.rank, world.local_rank, world.local_size) if several else (0, 0, None)
    nvml, devices, train_gpu, why_not = open_gpus(cfg)
    meter = EnergyMeter(nvml, devices[train_gpu]) if nvml and train_gpu in devices else None
    if not cfg.metrics_port or local_rank:
        yield RunHooks(energy_meter=meter)
        return
    if local_size is not None:  # the GPUs of this machine's ranks: cuda:0 .. cuda:local_size-1
        devices = {i: h for i, h in devices.items() if i < local_size}
    disable_created_metrics()  # *_created series would double the scrape and no panel reads them
    registry = CollectorRegistry(auto_describe=True)
    metrics = TrainingMetrics(registry, cfg) if rank == 0 else None
    if meter and metrics:
        metrics.enable_energy(registry)
    if nvml and cfg.gpu_metrics:
        registry.register(GpuCollector(nvml, devices, {train_gpu} if several else None))
    gpu_name = _try(lambda: _text(nvml.nvmlDeviceGetName(devices[train_gpu])), "") if meter else ""

    server = serve(registry, cfg)  # a taken port fails here, before any work

    def on_start(info: StartInfo) -> None:
        # said once training really starts, so a bad setting still ends in exactly one line
        what = "" if metrics else " (GPU figures of this machine; the training series are rank 0's)"
        log(f"serving http://{cfg.metrics_addr}:{cfg.metrics_port}/metrics{what}")
        if why_not:
            log(f"no GPU figures: {why_not}")
        elif not cfg.gpu_metrics:
            log("GPU figures left to the host's exporter (gpu_metrics is off); energy is still measured")
        if metrics:
            metrics.on_start(dataclasses.replace(info, gpu=gpu_name))

    try:
        yield RunHooks(on_start=on_start, on_step=metrics.on_step if metrics else None, energy_meter=meter)
    finally:
        server.shutdown()
        server.server_close()
