"""Every setting of a run, where it comes from, and whether it makes sense.

One name per setting everywhere: the field `max_iters` is `--max-iters` on the command line,
`JOB_MAX_ITERS` in the environment or `.env`, and `max_iters` in a TOML file.
Precedence: defaults < preset < TOML file < environment (the env file, `.env` or JOB_ENV_FILE,
fills in only what the real environment lacks) < command-line flags; the recipe those name (else
the preset's) comes in right after the preset, with the preset's learning rates for it. The run's name and
directory resolve the same way for every command (train, status, sample) and for make and cron.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
import tomllib
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from job.errors import ConfigError
from job.units import parse_clock, parse_duration


def setting(default: Any, help: str, group: str = "") -> Any:
    """A Config field: its default, the one phrase that says what it does (`--help` and the
    settings table in docs/configuration.md show it), and on the first field of a group the
    group's title; the fields after it belong to that group until the next title."""
    return dataclasses.field(default=default, metadata={"help": help, "group": group})


@dataclass
class Config:
    # One line per setting: setting(default, what it does), and on a group's first field its title.
    # The phrase is what `job train --help` and the table in docs/configuration.md say (tests/test_help.py
    # checks both).
    run: str = setting("", "the run's name, its directory under out_dir; empty: the preset's name", "Run and files")
    preset: str = setting("tiny", "the preset that sets the model and schedule: tiny, gpt2-40m or gpt2-124m")
    data: str = setting("shakespeare", "the prepared dataset: a directory, or a name under data_root")
    data_root: str = setting("data", "where dataset names are looked up")
    out_dir: str = setting("runs", "where runs live")
    device: str = setting("auto", "where to train: auto, cpu, cuda, cuda:N or mps", "Hardware and numerics")
    dtype: str = setting("auto", "auto, float32, bfloat16 or float16; auto: bf16 where native, else GPU fp16, CPU fp32")
    compile: bool = setting(False, "torch.compile the model")
    deterministic: bool = setting(False, "bitwise repeatable GPU runs: deterministic kernels, math attention; slower")
    memory_check: bool = setting(True, "on CUDA, refuse before the first step a micro-batch that will not fit")
    seed: int = setting(1337, "the seed of every random stream, 0 to 2^32-1")
    n_layer: int = setting(4, "transformer blocks", "Model")
    n_head: int = setting(4, "attention heads per block")
    n_embd: int = setting(128, "width of the residual stream, a multiple of n_head")
    block_size: int = setting(128, "context length, in tokens")
    vocab_size: int = setting(50304, "embedding rows: GPT-2's 50257 padded up to a multiple of 64")
    bias: bool = setting(False, "bias terms in the linear and LayerNorm layers")
    dropout: float = setting(0.0, "dropout probability, in [0, 1)")
    loss_chunk: int = setting(0, "fuse head and loss over this many rows at a time (0: full logits)")
    batch_size: int = setting(16, "micro-batch, in sequences", "Batch and schedule")
    grad_accum: int = setting(1, "micro-batches per iteration, split over the processes")
    auto_batch: bool = setting(False, "on CUDA, the largest micro-batch that fits, same sequences per iteration")
    max_iters: int = setting(1000, "iterations to train; DONE is written after the last")
    max_epochs: float = setting(100.0, "refuse a run that sees its training tokens more times than this (0: off)")
    lr: float = setting(1e-3, "peak learning rate of AdamW (with muon: embeddings, head, norms)")
    min_lr: float = setting(1e-4, "learning rate at the end of the decay, 0 to lr")
    warmup_iters: int = setting(50, "iterations of linear warm-up")
    weight_decay: float = setting(0.1, "AdamW weight decay")
    beta1: float = setting(0.9, "AdamW beta1, in [0, 1)")
    beta2: float = setting(0.95, "AdamW beta2, in [0, 1)")
    grad_clip: float = setting(1.0, "clip the gradient norm to this (0: off)")
    recipe: str = setting("nanogpt", "how the model learns: nanogpt or modern; sets the six below and the lrs",
                          "Recipe")
    optimizer: str = setting("adamw", "adamw, or muon: torch's Muon on the blocks' matrices, AdamW on the rest")
    muon_lr: float = setting(0.02, "Muon's peak learning rate (lr stays AdamW's: embeddings, head, norms)")
    muon_momentum: float = setting(0.95, "Muon's (Nesterov) momentum")
    muon_weight_decay: float = setting(0.0, "Muon's decoupled weight decay")
    schedule: str = setting("cosine", "cosine (warmup, cosine to min_lr) or wsd (warmup, flat, linear warmdown)")
    warmdown_frac: float = setting(0.4, "wsd: the last fraction of max_iters over which lr falls to min_lr")
    activation: str = setting("gelu", "MLP activation: gelu (exact) or relu2 (ReLU squared)")
    tie_embeddings: bool = setting(True, "the token embedding is the output head's weight")
    zero_init: bool = setting(False, "projections into the residual stream (and an untied head) start at zero")
    bad_step_limit: int = setting(5, "non-finite steps in a row (each skipped) before a roll-back", "Non-finite guard")
    rollback_limit: int = setting(3, "roll-backs in a row, with no good checkpoint between, before exit 1")
    eval_interval: int = setting(100, "iterations between val-loss evals", "Bookkeeping")
    eval_iters: int = setting(20, "batches per val-loss eval")
    log_interval: int = setting(10, "iterations between log lines")
    sample_tokens: int = setting(48, "tokens of text sampled and printed at each eval (0: none)")
    sample_prompt: str = setting("", "the text those samples continue (empty: a new document)")
    ckpt_interval: int = setting(100, "iterations between checkpoints")
    keep_ckpts: int = setting(3, "checkpoints kept, at least 2")
    metrics_port: int = setting(9838, "Prometheus metrics port (0: off; docs/monitoring.md, Ports)",
                                "Monitoring and cost")
    metrics_addr: str = setting("127.0.0.1", "address the metrics server listens on")
    gpu_metrics: bool = setting(True, "serve trainer_gpu_* from NVML; off where dcgm-exporter reports the cards")
    trackers: str = setting("", "experiment trackers: tensorboard, wandb, or both, comma-separated (empty: none)")
    peak_tflops: float = setting(0.0, "peak TFLOP/s for MFU (0: the card's own, if known)")
    max_runtime: str = setting("", "checkpoint and exit 75 after this long, e.g. 8h30m (empty: no limit)")
    stop_at: str = setting("", "checkpoint and exit 75 at this local time, HH:MM[:SS] (empty: never)")
    price_per_kwh: float = setting(0.17, "electricity price per kWh, for the cost")
    price_per_gpu_hour: float = setting(0.0, "rent of one GPU for an hour, added to the cost (0: your own card)")
    currency: str = setting("USD", "the prices' currency, as shown")
    nproc: int = setting(1, "processes on this machine, one per GPU (torchrun above 1)", "Several GPUs and machines")
    nnodes: int = setting(1, "machines in the job; above 1, start the same job train on each")
    rdzv_endpoint: str = setting("", "host:port where the machines meet (c10d rendezvous), for nnodes > 1")
    max_restarts: int = setting(3, "restarts of the processes after a crash, each from the newest checkpoint")
    dist_timeout: str = setting("10m", "how long a process waits for the others in a collective before the job fails")

    @property
    def run_name(self) -> str:
        return self.run or self.preset

    @property
    def run_dir(self) -> Path:
        return Path(self.out_dir) / self.run_name

    @property
    def data_dir(self) -> Path:
        p = Path(self.data)
        if p.is_dir() or "/" in self.data or self.data.startswith("."):
            return p
        return Path(self.data_root) / self.data

    @property
    def tokens_per_iter(self) -> int:
        return self.batch_size * self.block_size * self.grad_accum

    @property
    def processes(self) -> int:
        """Processes (GPUs) in the job as the settings ask for it: nproc on each of nnodes machines."""
        return self.nproc * self.nnodes

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# Settings that change the model's shape or what data it sees: a resume that changes any of
# them is refused, since the checkpoint could not be continued faithfully.
SHAPE_KEYS = ("n_layer", "n_head", "n_embd", "block_size", "vocab_size", "bias", "seed")
# Settings that change the optimizer's state or the model's function: a resume that changes one is
# refused as well. A checkpoint written before they existed is a nanogpt-recipe run (LEGACY).
RECIPE_KEYS = ("optimizer", "activation", "tie_embeddings")

# What a recipe sets, whatever the preset; each preset adds its learning rates (PRESET_RECIPES).
RECIPES: dict[str, dict[str, Any]] = {
    "nanogpt": dict(optimizer="adamw", schedule="cosine", activation="gelu", tie_embeddings=True, zero_init=False),
    "modern": dict(optimizer="muon", schedule="wsd", activation="relu2", tie_embeddings=False, zero_init=True),
}
LEGACY = RECIPES["nanogpt"]

PRESETS: dict[str, dict[str, Any]] = {
    # The CPU demo: reaches val loss ~5.0 on held-out plays in about 5 minutes on 2 CPU cores
    # (docs/recipes.md); its parameters, most of them the GPT-2 embedding and head, are in the
    # README's presets table (job/helptext.py, presets_table). Narrow and short-context on purpose: on
    # a CPU the 50304-way output head dominates the cost, and at this scale a narrower model
    # learns as much per token while stepping faster (measured: n_embd 64/96/128 compared).
    "tiny": dict(
        n_layer=4, n_head=4, n_embd=96, block_size=64, batch_size=16, grad_accum=1,
        max_iters=800, eval_interval=200, eval_iters=20, log_interval=50, ckpt_interval=200, dtype="auto",
        loss_chunk=64, recipe="modern",
    ),
    # 40.56 M parameters by nanoGPT's count (tied head; the modern recipe's untied head adds
    # 19.32 M more, a second 50304 x 384 matrix), 524,288 tokens/iteration.
    "gpt2-40m": dict(
        n_layer=12, n_head=6, n_embd=384, block_size=1024, batch_size=16, grad_accum=32,
        max_iters=20000, eval_interval=500, eval_iters=40, log_interval=10, ckpt_interval=500, compile=True,
        recipe="modern", auto_batch=True,
    ),
    # GPT-2 small as OpenAI released it; nanoGPT's reproduction settings.
    "gpt2-124m": dict(
        n_layer=12, n_head=12, n_embd=768, block_size=1024, batch_size=16, grad_accum=32,
        max_iters=20000, eval_interval=500, eval_iters=40, log_interval=10, ckpt_interval=500, compile=True,
        recipe="modern", auto_batch=True,
    ),
}

# Each preset's learning rates per recipe. nanogpt: the settings the presets had before recipes
# (nanoGPT's own for the GPU presets), so `--recipe nanogpt` trains exactly as before.
NANOGPT_GPU = dict(lr=6e-4, min_lr=6e-5, warmup_iters=700)  # nanoGPT's train_gpt2 config (Karpathy)
MODERN_GPU = dict(
    # AdamW (embeddings, head, norms): 3x nanoGPT's 6e-4, modded-nanogpt's record 2 ("3x learning rate")
    lr=1.8e-3, min_lr=0.0,
    # Muon on the hidden matrices: lr 0.02, momentum 0.95, weight decay 0.01, the values of the
    # KellerJordan/Muon README's usage example ("should have built-in muP scaling": no retuning per size)
    muon_lr=0.02, muon_momentum=0.95, muon_weight_decay=0.01,
    warmup_iters=250, warmdown_frac=0.4,  # measured on tiny (docs/recipes.md); unmeasured at this scale
)
PRESET_RECIPES: dict[str, dict[str, dict[str, Any]]] = {
    "tiny": {
        "nanogpt": dict(lr=3e-3, min_lr=3e-4, warmup_iters=20),
        # AdamW 6e-3 (embeddings, untied head, norms): measured against 3e-3 and 1e-2 at 800 iterations
        # (docs/recipes.md); Muon 0.02 beat 0.04 there
        "modern": dict(lr=6e-3, min_lr=0.0, warmup_iters=20, muon_lr=0.02, muon_momentum=0.95, warmdown_frac=0.4),
    },
    "gpt2-40m": {"nanogpt": NANOGPT_GPU, "modern": MODERN_GPU},
    "gpt2-124m": {"nanogpt": NANOGPT_GPU, "modern": MODERN_GPU},
}

FIELD_TYPES: dict[str, type] = {f.name: type(f.default) for f in fields(Config)}
ENV_PREFIX = "JOB_"
TRACKERS = ("tensorboard", "wandb")  # job/trackers.py


def tracker_names(setting: str) -> list[str]:
    """The trackers a `trackers` setting names, in the order given, each once."""
    names = [n.strip().lower() for n in setting.split(",") if n.strip()]
    return list(dict.fromkeys(names))


def coerce(name: str, value: Any) -> Any:
    """Turn a value from TOML, the environment or a flag into the field's type, or say why not."""
    if name not in FIELD_TYPES:
        raise unknown_setting(name)
    want = FIELD_TYPES[name]
    if want is float and isinstance(value, int | float) and not isinstance(value, bool):
        value = float(value)
    if isinstance(value, want) and not (want is int and isinstance(value, bool)):
        if want is float and not math.isfinite(value):
            raise ConfigError(f"{name}: {value} is not a finite number")
        return value
    text = str(value).strip()
    try:
        if want is bool:
            if text.lower() in ("1", "true", "yes", "on"):
                return True
            if text.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if want is int:
            number = float(text)  # accepts 20000, 2e4 and 20_000 alike
            if not number.is_integer():
                raise ValueError
            return int(number)
        if want is float:
            number = float(text)
            if not math.isfinite(number):
                raise ConfigError(f"{name}: '{value}' is not a finite number")
            return number
    except ValueError:
        raise ConfigError(f"{name}: '{value}' is not a valid {want.__name__}") from None
    return text


def read_text(path: Path, what: str) -> str:
    """A settings file's text, or one line saying why it cannot be read."""
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{what}: {path} is not UTF-8 text (byte {e.start} is 0x{e.object[e.start]:02x}); "
                          f"save it as UTF-8") from None
    except OSError as e:
        raise ConfigError(f"{what}: cannot read {path} ({e.strerror})") from None


def read_dotenv(path: Path) -> dict[str, str]:
    """KEY=VALUE lines; comments and blank lines skipped, optional quotes removed. A line that is
    none of these is an error naming the file and line (not the line itself: it may hold a token)."""
    out: dict[str, str] = {}
    if not path.is_file():
        return out
    for number, line in enumerate(read_text(path, "env file").splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if "=" not in line:
            raise ConfigError(f"env file: {path}:{number} is not KEY=VALUE (no '='); fix it or comment it out "
                              f"with #")
        key, _, val = line.partition("=")
        key = key.strip().removeprefix("export ").strip()
        val = val.strip()
        if len(val) >= 2 and val[0] == val[-1] and val[0] in "'\"":
            val = val[1:-1]
        else:
            val = val.split(" #", 1)[0].strip()
        out[key] = val
    return out


ENV_FILE = "JOB_ENV_FILE"  # where the env file is (default .env in the working directory); cron reads it too


def env_file(environ: dict[str, str] | None = None) -> Path:
    return Path((os.environ if environ is None else environ).get(ENV_FILE) or ".env")


def env_settings(environ: dict[str, str] | None = None, dotenv: Path | None | str = "auto") -> dict[str, Any]:
    """JOB_* settings from the env file (JOB_ENV_FILE, else .env), overridden by the real environment."""
    path = env_file(environ) if dotenv == "auto" else dotenv
    merged = read_dotenv(Path(path)) if path else {}
    merged.update(os.environ if environ is None else environ)
    out: dict[str, Any] = {}
    for key, val in merged.items():
        if key.startswith(ENV_PREFIX):
            name = key[len(ENV_PREFIX):].lower()
            if name in FIELD_TYPES:
                out[name] = val
    return out


def unknown_setting(name: str, where: str = "") -> ConfigError:
    """The one line for a name that is no setting: the nearest setting's name when one is close
    (a typo), else where the list is."""
    near = difflib.get_close_matches(name, FIELD_TYPES, n=1, cutoff=0.6)
    hint = f"did you mean {near[0]}?" if near else "`job train --help` lists every setting"
    if where:
        return ConfigError(f"config: unknown setting '{name}' in {where}; {hint}")
    return ConfigError(f"unknown setting '{name}'; {hint}")


def toml_settings(path: str | Path | None) -> dict[str, Any]:
    """A TOML file's settings: flat, or all under one [job] table. Both at once is an error, as is
    any other table: one layout per file, so no setting is silently left out."""
    if not path:
        return {}
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config: file '{p}' does not exist; pass an existing TOML file")
    try:
        data = tomllib.loads(read_text(p, "config"))
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config: '{p}' is not valid TOML ({e})") from None
    tables = [k for k, v in data.items() if isinstance(v, dict)]
    top = [k for k in data if k not in tables]
    if tables and tables != ["job"]:
        other = next(t for t in tables if t != "job")
        raise ConfigError(f"config: [{other}] in {p} is not a table of settings; put settings at the top level or "
                          f"under [job]")
    if tables and top:
        raise ConfigError(f"config: {p} has settings both at the top level ({', '.join(top)}) and under [job]; "
                          f"put them all under [job], or all at the top level")
    flat = data["job"] if tables else data
    for name in flat:
        if name not in FIELD_TYPES:
            raise unknown_setting(name, str(p))
    return dict(flat)


def resolve(
    flags: dict[str, Any] | None = None,
    config_file: str | Path | None = None,
    environ: dict[str, str] | None = None,
    dotenv: Path | None | str = "auto",
) -> Config:
    """Layer the sources in precedence order and validate the result."""
    flags = {k: v for k, v in (flags or {}).items() if v is not None}
    from_toml = toml_settings(config_file)
    from_env = env_settings(environ, dotenv)
    layers = [from_toml, from_env, flags]
    preset = "tiny"
    for layer in layers:
        preset = str(layer.get("preset", preset))
    if preset not in PRESETS:
        raise ConfigError(f"preset: unknown preset '{preset}'; choose one of {', '.join(PRESETS)}")
    values: dict[str, Any] = dict(PRESETS[preset])
    recipe = str(values.get("recipe", Config.recipe))
    for layer in layers:
        recipe = str(layer.get("recipe", recipe))
    if recipe not in RECIPES:
        raise ConfigError(f"recipe: unknown recipe '{recipe}'; choose one of {', '.join(RECIPES)}")
    values.update(RECIPES[recipe], **PRESET_RECIPES[preset][recipe])  # then every layer over them
    for layer in layers:
        values.update(layer)
    values["preset"], values["recipe"] = preset, recipe
    cfg = Config(**{k: coerce(k, v) for k, v in values.items()})
    validate(cfg)
    return cfg


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def validate(cfg: Config) -> None:
    """Fail on the first setting that cannot work, before any work is done."""
    for name in ("n_layer", "n_head", "n_embd", "block_size", "vocab_size", "batch_size", "grad_accum",
                 "max_iters", "eval_interval", "eval_iters", "log_interval", "ckpt_interval", "bad_step_limit"):
        _check(getattr(cfg, name) >= 1, f"{name}: must be a whole number >= 1, got {getattr(cfg, name)}")
    _check(cfg.n_embd % cfg.n_head == 0,
           f"n_embd: {cfg.n_embd} is not divisible by n_head={cfg.n_head}; pick n_embd a multiple of n_head")
    _check(cfg.vocab_size >= 50257, f"vocab_size: must be >= 50257 (GPT-2 BPE), got {cfg.vocab_size}")
    _check(0 <= cfg.seed < 2**32, f"seed: must be a whole number from 0 to {2**32 - 1}, got {cfg.seed}")
    _check(cfg.lr > 0, f"lr: must be > 0, got {cfg.lr}")
    _check(0 <= cfg.min_lr <= cfg.lr, f"min_lr: must be between 0 and lr={cfg.lr}, got {cfg.min_lr}")
    _check(cfg.max_epochs >= 0, f"max_epochs: must be >= 0 (0 = no limit), got {cfg.max_epochs}")
    _check(cfg.warmup_iters >= 0, f"warmup_iters: must be >= 0, got {cfg.warmup_iters}")
    _check(cfg.weight_decay >= 0, f"weight_decay: must be >= 0, got {cfg.weight_decay}")
    _check(0 <= cfg.beta1 < 1 and 0 <= cfg.beta2 < 1, f"beta1/beta2: must be in [0, 1), got {cfg.beta1}, {cfg.beta2}")
    _check(cfg.grad_clip >= 0, f"grad_clip: must be >= 0 (0 = off), got {cfg.grad_clip}")
    validate_recipe(cfg)
    _check(0 <= cfg.dropout < 1, f"dropout: must be in [0, 1), got {cfg.dropout}")
    _check(cfg.loss_chunk >= 0, f"loss_chunk: must be >= 0 (0 = full logits), got {cfg.loss_chunk}")
    _check(cfg.sample_tokens >= 0, f"sample_tokens: must be >= 0 (0 = no samples), got {cfg.sample_tokens}")
    _check(cfg.rollback_limit >= 0, f"rollback_limit: must be >= 0 (0 = end the run at once), got {cfg.rollback_limit}")
    _check(cfg.keep_ckpts >= 2,
           f"keep_ckpts: must be >= 2 so a corrupt newest checkpoint has a fallback, got {cfg.keep_ckpts}")
    _check(0 <= cfg.metrics_port <= 65535, f"metrics_port: must be 0 (off) or 1-65535, got {cfg.metrics_port}")
    _check(cfg.peak_tflops >= 0, f"peak_tflops: must be >= 0 (0 = the card's own), got {cfg.peak_tflops}")
    _check(cfg.price_per_kwh >= 0, f"price_per_kwh: must be >= 0, got {cfg.price_per_kwh}")
    _check(cfg.price_per_gpu_hour >= 0, f"price_per_gpu_hour: must be >= 0 (0 = your own card), "
                                        f"got {cfg.price_per_gpu_hour}")
    _check(cfg.dtype in ("auto", "float32", "bfloat16", "float16"),
           f"dtype: '{cfg.dtype}' is not one of auto, float32, bfloat16, float16")
    check_device(cfg.device)
    for name in tracker_names(cfg.trackers):
        _check(name in TRACKERS, f"trackers: unknown tracker '{name}'; choose from {', '.join(TRACKERS)}, "
                                 f"comma-separated (empty: none)")
    _check(re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", cfg.run_name) is not None,
           f"run: '{cfg.run_name}' must be letters, digits, '.', '_' or '-' (it names a directory)")
    if cfg.max_runtime:
        _check(parse_duration(cfg.max_runtime) > 0, "max_runtime: must be longer than 0s")
    if cfg.stop_at:
        parse_clock(cfg.stop_at)
    validate_scale(cfg)


def check_device(setting: str) -> None:
    """The device spellings every command takes (job/device.py picks the device); anything else is
    one line naming them."""
    _check(re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", setting) is not None,
           f"device: '{setting}' is not one of auto, cpu, cuda, cuda:N, mps")


def validate_recipe(cfg: Config) -> None:
    """The optimizer, schedule and model choices (docs/recipes.md)."""
    _check(cfg.recipe in RECIPES, f"recipe: '{cfg.recipe}' is not one of {', '.join(RECIPES)}")
    _check(cfg.optimizer in ("adamw", "muon"), f"optimizer: '{cfg.optimizer}' is not one of adamw, muon")
    _check(cfg.schedule in ("cosine", "wsd"), f"schedule: '{cfg.schedule}' is not one of cosine, wsd")
    _check(cfg.activation in ("gelu", "relu2"), f"activation: '{cfg.activation}' is not one of gelu, relu2")
    _check(cfg.muon_lr > 0, f"muon_lr: must be > 0, got {cfg.muon_lr}")
    _check(0 <= cfg.muon_momentum < 1, f"muon_momentum: must be in [0, 1), got {cfg.muon_momentum}")
    _check(cfg.muon_weight_decay >= 0, f"muon_weight_decay: must be >= 0, got {cfg.muon_weight_decay}")
    _check(0 <= cfg.warmdown_frac <= 1, f"warmdown_frac: must be in [0, 1] (a fraction of max_iters), "
                                        f"got {cfg.warmdown_frac}")


def validate_scale(cfg: Config) -> None:
    """The settings of a job on several processes (job/launch.py; job/dist.py checks the same
    against torchrun's own environment)."""
    for name in ("nproc", "nnodes"):
        _check(getattr(cfg, name) >= 1, f"{name}: must be a whole number >= 1, got {getattr(cfg, name)}")
    _check(cfg.max_restarts >= 0, f"max_restarts: must be >= 0 (0 = never restart), got {cfg.max_restarts}")
    _check(parse_duration(cfg.dist_timeout, "dist_timeout") > 0, "dist_timeout: must be longer than 0s")
    if cfg.nnodes > 1:
        _check(re.fullmatch(r"\[?[A-Za-z0-9.:_-]+\]?:\d+", cfg.rdzv_endpoint) is not None,
               f"rdzv_endpoint: nnodes={cfg.nnodes} needs the host:port where the machines meet (one of them, "
               f"reachable from all), e.g. node0:29400; got '{cfg.rdzv_endpoint}'")
    check_split(cfg.grad_accum, cfg.processes, f"nproc {cfg.nproc} x nnodes {cfg.nnodes}")


def check_split(grad_accum: int, processes: int, how: str) -> None:
    """Tokens per iteration stay batch_size x block_size x grad_accum whatever the number of
    processes: each takes grad_accum / processes micro-batches, so the split must be whole."""
    if grad_accum % processes:
        up = -(-grad_accum // processes) * processes
        raise ConfigError(f"grad_accum: {grad_accum} micro-batches do not split evenly over {processes} processes "
                          f"({how}); use a multiple of {processes}, e.g. {up} (tokens per iteration stay "
                          f"batch_size x block_size x grad_accum at any number of processes)")
