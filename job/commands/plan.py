"""`job plan`: what a run will take before it starts — tokens, parameters, FLOPs, hours, memory,
energy and money — by arithmetic alone (no torch; `--measure` imports job.commands.measure lazily).

Time is FLOPs / (the peak of the card in use x MFU), with the peak from job/gpus.py, never an
A100's 312 TFLOP/s whatever the card. FLOPs come from job/flops.py, as in the training log.

The memory model is job/memory.py's, the same one `job train` checks against the card before
its first step.

Several GPUs (nproc x nnodes, DDP): each takes grad_accum / N of the micro-batches, so memory per
card is one card's plus DDP's gradient buckets (a second fp32 copy of the gradients), and time is
one card's divided by N x the scaling efficiency: DDP all-reduces the gradients once per iteration
(4 bytes x parameters, of which a ring sends 2(N-1)/N per card), overlapped with the last
micro-step's backward. The default 0.9 is an assumption, not a measurement; it is about right
within one NVLink or PCIe machine at these model sizes and optimistic across machines on slow links.
"""

from __future__ import annotations

import math
from typing import Any

from job import microbatch
from job.config import Config
from job.cost import JOULES_PER_KWH, Prices, cost
from job.data.dataset import EMBEDDED
from job.data.epochs import epochs_warning
from job.data.epochs import shown as epochs_shown
from job.data.shakespeare import TRAIN_TOKENS
from job.data.shards import MANIFEST, split_tokens
from job.errors import ConfigError
from job.fileio import read_json
from job.flops import optimizer_flops_per_iter, param_counts, total_flops
from job.gpus import BY_KEY, Card, UnknownCard, choices, detect, from_device_name, lookup, peak_flops
from job.memory import compute_bytes, largest_fit, memory

DEFAULT_MFUS = (0.3, 0.4, 0.5)
DEFAULT_SCALING = 0.9  # time on N GPUs = time on one / (N x this); see the docstring
WALL_NOTE = "board power x hours; the wall draws more (PSU losses, CPU, fans: often +20-40%)"


def parse_mfus(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.replace(" ", "").split(",") if v)
    except ValueError:
        raise ConfigError(f"mfu: '{text}' is not a list of numbers; give fractions in (0, 1], "
                          f"e.g. --mfu 0.3,0.4,0.5") from None
    bad = [v for v in values if not 0 < v <= 1]
    if not values or bad:
        raise ConfigError(f"mfu: {bad[0] if bad else text!r} is outside (0, 1]; give fractions in (0, 1], "
                          f"e.g. --mfu 0.3,0.4,0.5 (40% is 0.4)")
    return values


def resolve_card(gpu: str, peak_override: float | None) -> tuple[Card, float | None]:
    """The card row for --gpu, and its memory in GB as detected (None if not detected)."""
    if gpu.strip().lower() != "auto":
        card = lookup(gpu)
        if card.key == "cpu":
            from job.gpus import host_memory_gb
            return card, host_memory_gb()
        return card, None
    name, memory_gb = detect()
    if name == "cpu":
        return BY_KEY["cpu"], memory_gb
    card = from_device_name(name)
    if card is None:
        if not peak_override:
            raise UnknownCard(f"gpu: detected '{name}', which is not in the table; pass --peak-tflops "
                              f"with its dense bf16 rate, or --gpu one of {choices()}")
        card = Card("detected", name, None, None, None, "detected; rate from --peak-tflops")
    return card, memory_gb


def dataset_tokens_from_manifest(cfg: Config) -> tuple[float | None, str]:
    """Training tokens of the prepared dataset, read from its manifest alone; the embedded corpus's
    known size before it is prepared."""
    path = cfg.data_dir / MANIFEST
    manifest = read_json(path)
    if isinstance(manifest, dict):
        return float(split_tokens(manifest, "train")), str(path)
    if cfg.data == EMBEDDED:
        return float(TRAIN_TOKENS), "the embedded corpus, prepared on first use"
    return None, f"no prepared dataset at {cfg.data_dir}; give --dataset-tokens"


def time_row(flops_iter: float, flops_total: float, achieved: float, watts: float | None,
             cfg: Config, mfu: float | None) -> dict[str, Any]:
    """One line of the plan's time table: hours, energy, and the money (electricity and rent) at
    this achieved rate; energy and electricity None where the card's power is not known."""
    hours = flops_total / achieved / 3600
    kwh = watts * hours / 1000 if watts else None
    money = cost((kwh or 0.0) * JOULES_PER_KWH, hours * 3600 * cfg.processes, Prices.of(cfg))
    return {"mfu": mfu, "s_per_iter": flops_iter / achieved, "hours": hours, "energy_kwh": kwh,
            "gpu_hours": hours * cfg.processes, "energy_cost": money["energy_cost"] if kwh is not None else None,
            "rent_cost": money["rent_cost"],
            "cost": money["cost"] if kwh is not None or cfg.price_per_gpu_hour else None}


def scaling(cfg: Config, efficiency: float) -> dict[str, Any]:
    """How the plan divides the work over nproc x nnodes GPUs (one: no division)."""
    n = cfg.processes
    if not 0 < efficiency <= 1:
        raise ConfigError(f"scaling-efficiency: must be in (0, 1], got {efficiency:g}; e.g. 0.9 for 90%")
    grads = 4 * param_counts(cfg)["total"]
    return {"gpus": n, "efficiency": efficiency if n > 1 else 1.0, "assumed": n > 1,
            "allreduce_bytes_per_gpu": 2 * (n - 1) / n * grads if n > 1 else 0.0,
            "micro_batches_per_gpu": cfg.grad_accum // n}


def run_flops(cfg: Config, tokens: float) -> dict[str, Any]:
    """The run's FLOPs (job/flops.py), with the optimizer's own per iteration (Muon's) added in."""
    fl = total_flops(cfg, tokens)
    fl["optimizer_per_iter"] = optimizer_flops_per_iter(cfg)
    fl["total"] += fl["optimizer_per_iter"] * cfg.max_iters
    return fl


def micro_batch_for(cfg: Config, c: int, on_gpu: bool, capacity: float | None) -> tuple[Config, str]:
    """With auto_batch on a card of known size, the micro-batch `job train` would plan there
    (job/microbatch.py; the card's whole memory standing in for its free memory); else cfg's."""
    if not (cfg.auto_batch and on_gpu and capacity):
        return cfg, ""
    return microbatch.choose(cfg, c, capacity, cfg.processes, "on the card")


def make_plan(cfg: Config, gpu: str = "auto", dataset_tokens: float | None = None,
              mfus: tuple[float, ...] = DEFAULT_MFUS, measure: bool = False,
              watts: float | None = None, efficiency: float = DEFAULT_SCALING) -> dict[str, Any]:
    if dataset_tokens is not None and not dataset_tokens > 0:
        raise ConfigError(f"dataset-tokens: must be a number of tokens > 0, e.g. 3.68e9; got {dataset_tokens:g}")
    if watts is not None and not watts > 0:
        raise ConfigError(f"watts: must be > 0 (the card's board power in W), got {watts:g}")
    card, detected_gb = resolve_card(gpu, cfg.peak_tflops)
    peak = peak_flops(card, cfg.peak_tflops)
    peak_from = "peak_tflops setting" if cfg.peak_tflops else ("table" if card.peak_tflops else None)
    memory_gb = card.memory_gb or detected_gb
    watts = watts or card.board_w
    on_gpu = card.key != "cpu"
    dtype, c = compute_bytes(cfg, on_gpu)
    capacity = memory_gb * 1e9 if memory_gb else None
    cfg, micro_why = micro_batch_for(cfg, c, on_gpu, capacity)
    scale = scaling(cfg, efficiency)
    speedup, cards = scale["gpus"] * scale["efficiency"], scale["gpus"]

    tokens_total = cfg.tokens_per_iter * cfg.max_iters
    data_tokens, data_from = ((dataset_tokens, "--dataset-tokens") if dataset_tokens is not None
                              else dataset_tokens_from_manifest(cfg))
    fl = run_flops(cfg, tokens_total)
    flops_iter = fl["per_token"] * cfg.tokens_per_iter + fl["optimizer_per_iter"]
    all_watts = watts * cards if watts else None
    rows = [time_row(flops_iter, fl["total"], peak * m * speedup, all_watts, cfg, m) for m in mfus] if peak else []

    measured = None
    if measure:  # one card here; N of them at the scaling efficiency
        from job.commands.measure import measure_steps

        measured = measure_steps(cfg)
        measured["s_per_iter"] = ((cfg.grad_accum // cards) * measured["micro_step_s"]
                                  + measured["optimizer_step_s"]) / scale["efficiency"]
        achieved = flops_iter / measured["s_per_iter"]
        mfu = achieved / (peak * cards) if peak else None
        measured.update(time_row(flops_iter, fl["total"], achieved, all_watts, cfg, mfu))

    mem = memory(cfg, c, on_gpu)
    fits = capacity is None or mem["total"] <= capacity
    fit = largest_fit(cfg, c, on_gpu, capacity) if capacity else None
    return {
        "config": {k: getattr(cfg, k) for k in ("preset", "n_layer", "n_head", "n_embd", "block_size", "vocab_size",
                                               "bias", "batch_size", "grad_accum", "max_iters", "compile", "recipe",
                                               "optimizer")},
        "tokens": {"per_iter": cfg.tokens_per_iter, "total": tokens_total, "dataset": data_tokens,
                   "dataset_from": data_from, "epochs": tokens_total / data_tokens if data_tokens else None,
                   "warning": epochs_warning(cfg.run_name, tokens_total, data_tokens, cfg.data_dir)},
        "params": param_counts(cfg),
        "flops": {**fl, "per_iter": flops_iter, "total_pflop": fl["total"] / 1e15},
        "gpu": {**card.to_dict(), "peak_tflops": peak / 1e12 if peak else None, "peak_from": peak_from,
                "memory_gb": memory_gb, "board_w": watts},
        "scaling": scale,
        "time": rows,
        "measured": measured,
        "memory": {"dtype": dtype, **mem, "capacity": capacity, "fits": fits, "micro_batch": micro_why,
                   "max_micro_batch": fit[0] if fit else None, "grad_accum_at_max": fit[1] if fit else None},
        "energy": {"price_per_kwh": cfg.price_per_kwh, "price_per_gpu_hour": cfg.price_per_gpu_hour,
                   "currency": cfg.currency, "note": WALL_NOTE},
    }


def _gb(n: float | None) -> str:
    return "-" if n is None else f"{n / 1e9:.2f} GB"


def _num(v: float | None, spec: str) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


def time_table(rows: list[dict[str, Any]], measured: dict[str, Any] | None, e: dict[str, Any]) -> list[str]:
    """The time rows as lines: electricity and, on a rented card, the rent beside it, then the sum."""
    if not rows:
        return []
    money = ["power", "rent", "cost"] if e["price_per_gpu_hour"] else ["cost"]
    out = [f"{'time':14}{'MFU':>8}{'s/iter':>10}{'hours':>9}{'kWh':>9}" + "".join(f"{m:>14}" for m in money)]
    keys = {"power": "energy_cost", "rent": "rent_cost", "cost": "cost"}
    for r in rows:
        label = "  measured" if r is measured else ""
        mfu = "-" if r["mfu"] is None else f"{100 * r['mfu']:.1f}%"
        cells = ["-" if r[keys[m]] is None else f"{r[keys[m]]:,.2f} {e['currency']}" for m in money]
        out.append(f"{label:14}{mfu:>8}{r['s_per_iter']:>10.2f}{r['hours']:>9.1f}"
                   f"{_num(r['energy_kwh'], '.2f'):>9}" + "".join(f"{c:>14}" for c in cells))
    return out


def render(p: dict[str, Any]) -> str:
    t, pr, f, g, m, e = p["tokens"], p["params"], p["flops"], p["gpu"], p["memory"], p["energy"]
    cfg = p["config"]
    lines = [
        f"config        {cfg['preset']}: n_layer {cfg['n_layer']}, n_head {cfg['n_head']}, n_embd {cfg['n_embd']}, "
        f"block {cfg['block_size']}, vocab {cfg['vocab_size']}, bias {cfg['bias']}",
        f"tokens        {t['per_iter']:,}/iter ({cfg['batch_size']} x {cfg['block_size']} x {cfg['grad_accum']}) x "
        f"{cfg['max_iters']:,} iters = {t['total']:,}",
        f"epochs        {'-' if t['epochs'] is None else epochs_shown(t['epochs'])} over "
        f"{_num(t['dataset'], ',.0f')} tokens ({t['dataset_from']})",
        *([t["warning"]] if t["warning"] else []),
        f"params        {pr['total'] / 1e6:.2f} M all, N = {pr['nanogpt'] / 1e6:.2f} M (nanoGPT: no position "
        f"embeddings), {pr['kaplan'] / 1e6:.2f} M non-embedding (Kaplan)",
        f"FLOPs/token   {f['per_token']:,.0f} = {f['formula']}",
        f"optimizer     {cfg['optimizer']}: {f['optimizer_per_iter']:.3g} FLOPs/iter (Muon's Newton-Schulz; "
        f"not in MFU, which counts the model's)",
        f"FLOPs         {f['total']:.3g} total = {_num(f['total_pflop'], ',.0f' if f['total_pflop'] >= 10 else '.3g')}"
        f" PFLOP (6ND alone {f['six_n_d']:.3g})",
        f"GPU           {g['name']}: peak {_num(g['peak_tflops'], '.1f')} TFLOP/s dense bf16 "
        f"({g['peak_from'] or 'unknown: give --peak-tflops'}), {_num(g['memory_gb'], '.0f')} GB, "
        f"{_num(g['board_w'], '.0f')} W",
        f"source        {g['source']}",
    ]
    sc = p["scaling"]
    if sc["gpus"] > 1:
        lines.append(f"GPUs          {sc['gpus']} (DDP, {sc['micro_batches_per_gpu']} micro-batches each per iter): "
                     f"time / ({sc['gpus']} x {sc['efficiency']:g} scaling efficiency, assumed), energy of all "
                     f"cards; all-reduce {_gb(sc['allreduce_bytes_per_gpu'])} per GPU per iter")
    rows = [*p["time"], *([p["measured"]] if p["measured"] else [])]
    lines += time_table(rows, p["measured"], e)
    if not rows:
        lines.append("time          - (no peak known for this device: give --peak-tflops, or --measure)")
    rent = (f"; rent {e['price_per_gpu_hour']} {e['currency']} per GPU-hour x {sc['gpus']} GPU"
            f"{'s' if sc['gpus'] > 1 else ''}" if e["price_per_gpu_hour"] else "")
    lines += [f"energy        {e['note']}; price {e['price_per_kwh']} {e['currency']}/kWh{rent}",
              f"memory        peak of one micro-step of {cfg['batch_size']} in {m['dtype']}, per card"
              + (f" ({m['micro_batch']})" if m["micro_batch"] else "")]
    for k in ("weights", "weight_copies", "grads", "adamw", "muon", "activations", "logits", "grad_buckets",
              "workspace", "total"):
        lines.append(f"  {k:12}{_gb(m[k]):>12}")
    if p["measured"] and p["measured"].get("peak_memory_bytes"):
        lines.append(f"  {'measured':12}{_gb(p['measured']['peak_memory_bytes']):>12} (torch peak allocated)")
    if m["capacity"] is None:
        lines.append("fits          unknown (memory size not known)")
    else:
        verdict = "fits" if m["fits"] else "does NOT fit"
        best = (f"largest micro-batch {m['max_micro_batch']} with grad_accum {m['grad_accum_at_max']} keeps "
                f"{t['per_iter']:,} tokens/iter" if m["max_micro_batch"] else "not even a micro-batch of 1 fits")
        lines.append(f"fits          {verdict} in {_gb(m['capacity'])}; {best}")
    return "\n".join(lines)
