"""`python -m job` / `job`: the command line, and only that: each command parses its arguments and
calls the module that does the work (job/launch.py for train, job/commands/ for the others).
Every Config field is a flag of the same name, and its `--help` line says what it does, its
default and its environment name (job/helptext.py, from job/config.py). A command ends early in
one place (`guarded`): one line and the exit code of its kind."""

from __future__ import annotations

import functools
import inspect
import json
import sys
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path
from typing import Any, Optional

import typer

from job.config import Config, resolve
from job.errors import ENDINGS, EXIT_INTERRUPTED, Stopped
from job.helptext import Command, Group, settings_help
from job.stopping import stop_before_work

app = typer.Typer(
    cls=Group, add_completion=True, no_args_is_help=True, pretty_exceptions_enable=False,
    help="Train a small GPT overnight on your own GPU, and know what it costs.",
)


def _version(value: bool) -> None:
    if value:
        import torch

        from job import __version__

        typer.echo(f"job {__version__} (torch {torch.__version__}, CUDA {torch.version.cuda or 'none'}, "
                   f"Python {sys.version.split()[0]})")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print the version (and torch's, CUDA's, Python's), then exit.")) -> None:
    """Train a small GPT overnight on your own GPU, and know what it costs."""

def guarded(fn: Callable[..., Any]) -> Callable[..., Any]:
    """The one place a command ends early: one line on stderr and the exit code of its kind
    (job/errors.py: 2 bad input, 1 failed, 75 stopped), never a traceback. Under torchrun every
    rank ends the same way (job/dist.py) and rank 0 alone says so."""
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except ENDINGS as e:
            from job import dist

            if dist.speaks():
                typer.echo(f"{'stopped' if isinstance(e, Stopped) else 'error'}: {e}", err=True)
            raise typer.Exit(dist.exit_code(e.exit_code)) from None
    return wrapper


CONFIG_OPTION = typer.Option(None, "--config", "-c", help="TOML file of settings (flat, or under [job]).")
RUN_ARGUMENT = typer.Argument(None, help="Run name, a directory under --out-dir [default: as `job train` resolves "
                              "it: JOB_RUN, else JOB_PRESET, from the environment or the env file; else tiny].")
OUT_DIR_OPTION = typer.Option(None, help="Where runs live [default: JOB_OUT_DIR, else runs].")


def settings_for(run: str | None, out_dir: Path | None) -> Config:
    """The settings `job train` would use, with these two given: one resolution of the run for
    every command (defaults < env file < environment < flags)."""
    return resolve({"run": run, "out_dir": str(out_dir) if out_dir else None})


def with_config_flags(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Give a command one flag per Config field (--max-iters for max_iters), plus --config;
    the command receives a resolved Config as its `cfg` argument."""
    own = [p for p in inspect.signature(fn).parameters.values() if p.name != "cfg"]
    flag_params = []
    for s in settings_help():
        kind = type(getattr(Config, s.name))
        flag = "--" + s.name.replace("_", "-")
        decl = f"{flag}/--no-{flag[2:]}" if kind is bool else flag
        # numbers arrive as text and are parsed by config.coerce, as from the environment: the same
        # forms (2e4 for an int) and the same one-line error for a bad one
        flag_params.append(inspect.Parameter(
            s.name, inspect.Parameter.KEYWORD_ONLY,
            annotation=Optional[bool if kind is bool else str],
            default=typer.Option(None, decl, help=s.line, show_default=False,
                                 metavar=None if kind is bool else kind.__name__.upper(),
                                 rich_help_panel=f"Settings: {s.group}"),
        ))
    config_param = inspect.Parameter("config", inspect.Parameter.KEYWORD_ONLY,
                                     annotation=Optional[Path], default=CONFIG_OPTION)

    @functools.wraps(fn)
    def wrapper(**kwargs: Any) -> Any:
        flags = {f.name: kwargs.pop(f.name) for f in fields(Config)}
        cfg = resolve(flags, kwargs.pop("config"))
        return fn(cfg=cfg, **kwargs)

    wrapper.__signature__ = inspect.Signature([*own, config_param, *flag_params])  # type: ignore[attr-defined]
    return wrapper


@app.command(cls=Command)
@guarded
def prepare(
    source: Optional[list[str]] = typer.Option(
        None, help="Where the text comes from: shakespeare (embedded), fineweb-edu (Hugging Face), or local "
        ".txt/.jsonl/.parquet files, directories and globs, optionally .gz/.zst; repeatable. (default: shakespeare)"),
    out: Optional[Path] = typer.Option(None, help="Dataset directory (default: data/<source>)."),
    force: bool = typer.Option(False, help="Tokenise again even if the dataset is already prepared."),
    verify: bool = typer.Option(False, "--verify", help="Only re-hash the dataset's shards against its manifest."),
    max_tokens: Optional[str] = typer.Option(None, help="Stop after this many tokens, e.g. 3.68B."),
    shard_tokens: str = typer.Option("100M", help="Tokens per shard."),
    val_tokens: Optional[str] = typer.Option(None, help="Tokens held out for val (default: the first shard)."),
    workers: int = typer.Option(0, min=0, help="Tokeniser processes (0: one per core)."),
    hf_config: str = typer.Option("sample-10BT", help="fineweb-edu config: sample-10BT, sample-100BT, default, "
                                  "CC-MAIN-2024-10, ..."),
    hf_dir: Optional[Path] = typer.Option(None, help="A local copy of the fineweb-edu repository to read "
                                          "instead of downloading."),
    text_field: str = typer.Option("text", help="The .jsonl field / .parquet column holding the text."),
    separator: Optional[str] = typer.Option(None, help="Split .txt files into documents on this string "
                                            "(\\n newline, \\t tab) (default: one document per file)."),
) -> None:
    """Text -> GPT-2 tokens -> llm.c shards plus manifest.json. A killed prepare resumes where it stopped.

    Examples: job prepare; job prepare --source fineweb-edu --max-tokens 3.68B;
    job prepare --source 'corpus/*.jsonl.zst' --out data/corpus; job prepare --out data/corpus --verify
    """
    from job.data import prepare as p
    from job.data.shakespeare import prepare_shakespeare
    from job.units import parse_count

    names = source or ["shakespeare"]
    data_dir = out or p.default_out(names, hf_config)
    if verify:
        p.verify(data_dir)
    elif names == ["shakespeare"]:
        prepare_shakespeare(data_dir, force=force)
    else:
        sep = separator.replace("\\n", "\n").replace("\\t", "\t") if separator else None
        src = p.open_source(names, hf_config, hf_dir, text_field, sep)
        opts = p.PrepareOptions(
            shard_tokens=parse_count(shard_tokens, "--shard-tokens"),
            val_tokens=parse_count(val_tokens, "--val-tokens"),
            max_tokens=parse_count(max_tokens, "--max-tokens"), workers=workers or None, force=force)
        p.prepare_stream(src, data_dir, opts)


@app.command(cls=Command)
@guarded
@with_config_flags
def train(
    cfg: Config,
    fresh: bool = typer.Option(False, help="Start over: move runs/<run> aside to runs/<run>.old-<time>, then train."),
    verify: bool = typer.Option(False, "--verify", help="Re-hash every shard against the manifest before training."),
) -> None:
    """Train, or resume where the run stopped. Exit 0 done, 75 stopped with a checkpoint
    (resume later), 1 failed, 2 bad settings. With --nproc N (or --nnodes), the same under torchrun
    on N processes, one per GPU; `torchrun ... -m job train` works too.

    Examples: job train; job train --preset gpt2-40m --max-runtime 8h; JOB_MAX_ITERS=500 job train;
    job train --preset gpt2-124m --nproc 8
    """
    from job.launch import start

    raise typer.Exit(start(cfg, fresh, verify))


@app.command(cls=Command)
@guarded
@with_config_flags
def plan(
    cfg: Config,
    gpu: str = typer.Option("auto", help="The card: a key such as rtx-4070, h100-sxm or cpu; auto detects GPU 0."),
    dataset_tokens: Optional[float] = typer.Option(
        None, help="Training tokens of the dataset, e.g. 3.68e9 [default: from the prepared dataset's manifest]."),
    mfu: str = typer.Option("0.3,0.4,0.5", help="MFU fractions in (0, 1] to estimate the time at."),
    measure: bool = typer.Option(False, help="Also time a few real training steps here and plan at the MFU measured."),
    watts: Optional[float] = typer.Option(None, help="Board power in W [default: the card's rated power]."),
    scaling_efficiency: float = typer.Option(0.9, help="With --nproc/--nnodes above 1: the share of N GPUs' speed "
                                             "the job gets (DDP's gradient all-reduce costs the rest); assumed."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """What a run will take: tokens, epochs, parameters, FLOPs, hours at a range of MFU, peak
    memory and whether it fits, energy and cost. Same settings as train: --nproc 8 plans for 8 GPUs.

    Examples: job plan --preset gpt2-40m --gpu rtx-4070 --dataset-tokens 3.68e9;
    job plan --preset gpt2-124m --gpu h100-sxm --nproc 8; job plan --gpu cpu --peak-tflops 1 --measure --json
    """
    from job.commands.plan import make_plan, parse_mfus, render

    report = make_plan(cfg, gpu, dataset_tokens, parse_mfus(mfu), measure, watts, scaling_efficiency)
    typer.echo(json.dumps(report, indent=2) if as_json else render(report))


@app.command(cls=Command)
@guarded
def status(
    run: Optional[str] = RUN_ARGUMENT,
    out_dir: Optional[Path] = OUT_DIR_OPTION,
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Where a run stands: iteration, loss, tokens/s, ETA, energy, last checkpoint, done.

    Example: job status tiny --json
    """
    from job.commands.status import render, run_status
    from job.cost import run_prices
    from job.rundir import RunDir

    cfg = settings_for(run, out_dir)
    report = run_status(cfg.run_dir, run_prices(RunDir(cfg.run_dir).read_config(), cfg))
    typer.echo(json.dumps(report, indent=2) if as_json else render(report))


CHECKPOINT_OPTION = typer.Option(None, "--checkpoint", help="Another checkpoint than the newest whole one: an "
                                 "iteration (400) or a path.")
JSON_OPTION = typer.Option(False, "--json", help="Machine-readable output.")


@app.command(cls=Command)
@guarded
def sample(
    run: Optional[str] = RUN_ARGUMENT,
    out_dir: Optional[Path] = OUT_DIR_OPTION,
    prompt: str = typer.Option("\n", help="Text to continue."),
    tokens: int = typer.Option(200, min=1, help="How many tokens to generate."),
    temperature: float = typer.Option(0.8, min=0.0, help="Below 1 is safer, above 1 wilder; 0 is greedy."),
    top_k: int = typer.Option(200, min=0, help="Sample among the k likeliest tokens (0 = all)."),
    seed: int = typer.Option(1337, help="Same seed, same text."),
    device: str = typer.Option("auto", help="auto, cpu, cuda, cuda:N, mps."),
    checkpoint: Optional[str] = CHECKPOINT_OPTION,
    as_json: bool = typer.Option(False, "--json", help="No streaming: one JSON object at the end (text and ids)."),
) -> None:
    """Generate text from a run's newest checkpoint, printed token by token as it is made.

    Examples: job sample tiny --prompt "ROMEO:" --tokens 300; job sample tiny --temperature 0 --json
    """
    from job.commands.sample import generate

    run_dir = settings_for(run, out_dir).run_dir
    if as_json:
        typer.echo(json.dumps(generate(run_dir, prompt, tokens, temperature, top_k, seed, device, checkpoint)))
        return
    started = False

    def show(piece: str) -> None:
        nonlocal started
        if not started:  # the prompt once the model is loaded, so an error is not preceded by it
            sys.stdout.write(prompt)
            started = True
        sys.stdout.write(piece)
        sys.stdout.flush()

    generate(run_dir, prompt, tokens, temperature, top_k, seed, device, checkpoint, on_text=show)
    sys.stdout.write("" if started else prompt)
    typer.echo("")


@app.command(cls=Command)
@guarded
def export(
    run: Optional[str] = RUN_ARGUMENT,
    out: Path = typer.Option(..., "--out", help="The directory to create (new, or empty)."),
    out_dir: Optional[Path] = OUT_DIR_OPTION,
    checkpoint: Optional[str] = CHECKPOINT_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """A checkpoint as a Hugging Face GPT-2 directory: config.json, model.safetensors,
    generation_config.json and GPT-2's tokenizer files (no download).

    Examples: job export tiny --out hf/tiny; job export night --checkpoint 4000 --out hf/night-4000
    """
    from job.commands.export import export as write_export
    from job.commands.export import render

    result = write_export(settings_for(run, out_dir).run_dir, out, checkpoint)
    typer.echo(json.dumps(result, indent=2) if as_json else render(result))


@app.command("import-nanogpt", cls=Command)
@guarded
def import_nanogpt(
    ckpt: Path = typer.Argument(..., help="A nanoGPT ckpt.pt (as nanoGPT's train.py writes it)."),
    run: str = typer.Option(..., "--run", help="The new run's name (a directory under --out-dir)."),
    out_dir: Optional[Path] = OUT_DIR_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """A nanoGPT checkpoint as a new run that sample, eval, export and train accept. Training it
    starts a fresh optimizer (from iteration 0, with warmup) on the data you give it.

    Examples: job import-nanogpt out/ckpt.pt --run from-nanogpt; then job sample from-nanogpt, or
    job train --run from-nanogpt --data fineweb-edu (with the model flags it prints)
    """
    from job.commands.import_nanogpt import import_nanogpt as do_import
    from job.rundir import RunDir

    cfg = settings_for(run, out_dir)
    target = RunDir(cfg.run_dir)
    with target.lock():
        result = do_import(ckpt, target, Path(cfg.out_dir))
    if as_json:
        typer.echo(json.dumps(result, indent=2))
        return
    typer.echo(f"imported {ckpt} (nanoGPT iteration {result['iter_num']}, best val loss {result['best_val_loss']}) "
               f"as run '{run}': {result['params'] / 1e6:.2f}M params, {result['checkpoint']}\n"
               f"train it on: job train {result['train_flags']} --data DATASET --max-iters N")


@app.command("eval", cls=Command)
@guarded
def eval_(
    run: Optional[str] = RUN_ARGUMENT,
    out_dir: Optional[Path] = OUT_DIR_OPTION,
    checkpoint: Optional[str] = CHECKPOINT_OPTION,
    tokens: Optional[str] = typer.Option(None, help="Val tokens to score, from the split's start, e.g. 1M "
                                         "[default: the whole val split]."),
    val: bool = typer.Option(True, help="Score the val split (--no-val: HellaSwag only)."),
    data: Optional[str] = typer.Option(None, help="Dataset to take val from [default: the run's]."),
    batch_size: Optional[str] = typer.Option(None, help="Sequences per batch [default: the run's]."),
    hellaswag: Optional[Path] = typer.Option(None, help="A local HellaSwag .jsonl (ctx, endings, label)."),
    limit: Optional[str] = typer.Option(None, help="Score only the first N HellaSwag examples."),
    device: str = typer.Option("auto", help="auto, cpu, cuda, cuda:N, mps."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Val loss and perplexity on the prepared val split, and HellaSwag accuracy (acc_norm: mean
    log-prob per ending token) from a local file.

    Examples: job eval tiny; job eval night --tokens 10M --hellaswag data/hellaswag_val.jsonl --json
    """
    from job.commands.eval import render, run_eval
    from job.units import parse_count

    result = run_eval(settings_for(run, out_dir).run_dir, checkpoint, data, parse_count(tokens, "--tokens"),
                      parse_count(batch_size, "--batch-size"), hellaswag, parse_count(limit, "--limit"), val, device)
    typer.echo(json.dumps(result, indent=2) if as_json else render(result))


@app.command(cls=Command)
@guarded
def report(
    run: Optional[str] = RUN_ARGUMENT,
    out_dir: Optional[Path] = OUT_DIR_OPTION,
    out: Optional[Path] = typer.Option(None, "--out", help="The PNG to write [default: runs/<run>/report.png]."),
    as_json: bool = JSON_OPTION,
) -> None:
    """The run as a picture (loss against tokens; tokens/s, MFU, power and energy over time;
    restarts and stops marked) and a text summary. Works while the run is going.

    Examples: job report tiny; job report night --out night.png --json
    """
    from job.commands.report import make_report, render

    result = make_report(settings_for(run, out_dir), out)
    typer.echo(json.dumps(result, indent=2) if as_json else render(result))


def main() -> None:
    stop_before_work()  # for the `job` script; `python -m job` did so before importing anything
    try:
        app()
    except Stopped as e:  # a signal while the command line was still being parsed
        typer.echo(f"stopped: {e}", err=True)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:  # a second Ctrl-C: the newest checkpoint is still whole
        sys.exit(EXIT_INTERRUPTED)
    except SystemExit as e:  # every command ends here; a torchrun worker without finalizing
        from job import dist

        dist.leave(e.code)
        raise
