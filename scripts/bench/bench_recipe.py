"""Val loss per token and per second of each recipe, on the embedded corpus, on this machine.

The question is the one a night is bought with: how many tokens and seconds does the default
recipe need to reach the loss that the nanogpt recipe (the training before recipes) reaches in
--iters iterations? For each shape (tiny, and a larger one so that the gain is seen to hold as
the model grows) and each seed, nanogpt trains --iters iterations and modern trains --share of
them (its own schedule sized to that length, as a user's run would be), one after the other
through the real loop (job.train.train), interleaved by seed so that a change in the machine's
load falls on both. Each run keeps CHECKPOINTS checkpoints; afterwards (not counted in its
seconds) the last is scored on the whole val split (every non-overlapping window) and each is
scored on the split's first --curve-tokens tokens, the curve (the whole split at every checkpoint
of every run would take longer than the training).

The table gives, per shape and recipe, the mean over seeds of the whole-split val loss at the
run's end, its tokens and training seconds (the run's own clock), and the tokens and seconds the
recipe's mean curve needed to reach nanogpt's final mean curve loss (linear between checkpoints),
with the ratio to nanogpt's. A modern ratio at or below --share with its whole-split loss at or
below nanogpt's says the same thing twice: the target was reached within the share.

The learning rates are the presets' (job/config.py PRESET_RECIPES); where they come from is
recorded in SWEEP below (this script runs no sweep); the larger shape uses tiny's too.
`--quick` (the test suite's) trains one seed for a few iterations.

    .venv/bin/python scripts/bench/bench_recipe.py [--quick] [--iters 100] [--share 0.5] [--seeds 3] [--out FILE]
    .venv/bin/python scripts/bench/bench_recipe.py --iters 800 --curve-tokens 16384 # docs/benchmarks.md's table: 95 min
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from job import checkpoint  # noqa: E402
from job.config import resolve  # noqa: E402
from job.device import pick_precision  # noqa: E402
from job.evaluate import evaluate, first_windows  # noqa: E402
from job.model import build_model  # noqa: E402
from job.train import train  # noqa: E402

# Each arm's settings: nanogpt as main trained before recipes (dtype auto was fp32 on every CPU
# then), modern as `job train` does now (dtype auto: bf16 where the CPU multiplies it natively)
RECIPES = {"nanogpt": {"recipe": "nanogpt", "dtype": "float32"}, "modern": {"recipe": "modern", "dtype": "auto"}}
SHAPES = {"tiny": {}, "6x192": {"n_layer": 6, "n_head": 6, "n_embd": 192}}
CHECKPOINTS = 6
# Where the learning rates come from (no sweep of muon_lr was finished here: see docs/recipes.md)
SWEEP = {
    "nanogpt": "lr 3e-3: tiny's preset, tuned before recipes existed",
    "modern": "AdamW lr 6e-3 (a sweep of 800-iteration tiny runs, seed 1337, whole val split: AdamW 3e-3 / 6e-3 "
              "/ 1e-2 at Muon 0.02, and Muon 0.04 at AdamW 3e-3; docs/recipes.md); Muon lr 0.02, momentum 0.95: "
              "the KellerJordan/Muon README's defaults",
}


def settings(shape: str, recipe: str, seed: int, iters: int, data: Path, out: Path) -> Any:
    every = max(1, iters // CHECKPOINTS)
    return resolve({
        "preset": "tiny", **RECIPES[recipe], "seed": seed, "max_iters": iters, "data": str(data),
        "out_dir": str(out), "run": f"{shape}-{recipe}-{seed}-{iters}", "device": "cpu", "metrics_port": 0,
        "ckpt_interval": every, "keep_ckpts": CHECKPOINTS + 2, "eval_interval": iters, "eval_iters": 1,
        "log_interval": iters, **SHAPES[shape],
    }, environ={}, dotenv=None)


def quiet_train(cfg: Any) -> None:
    with contextlib.redirect_stdout(io.StringIO()):
        code = train(cfg)
    if code != 0:
        raise SystemExit(f"bench: run {cfg.run_name} ended with exit {code}")


def curve(run_dir: Path, val: list, prec: Any, last_only: bool = False) -> list[dict[str, float]]:
    """(tokens, training seconds, val loss on `val`) at each checkpoint of a run, or its last."""
    points = []
    for path in sorted((run_dir / "ckpt").glob("ckpt_*.pt"))[-1 if last_only else 0:]:
        saved = checkpoint.read(path)
        model = build_model({**saved["config"], "loss_chunk": 0})  # plain loss: no gradient work in eval
        model.load_state_dict(saved["model"])
        points.append({"tokens": saved["tokens"], "seconds": saved["elapsed_s"],
                       "val": evaluate(model, val, prec)})
    return points


def mean_curve(curves: list[list[dict[str, float]]]) -> list[dict[str, float]]:
    n = min(len(c) for c in curves)
    return [{k: sum(c[i][k] for c in curves) / len(curves) for k in ("tokens", "seconds", "val")} for i in range(n)]


def reach(points: list[dict[str, float]], target: float) -> tuple[float, float] | None:
    """Tokens and seconds at which the curve first gets down to `target` (linear between points)."""
    prev = {"tokens": 0.0, "seconds": 0.0, "val": math.log(50304)}
    for p in points:
        if p["val"] <= target + 1e-9:
            f = (prev["val"] - target) / (prev["val"] - p["val"]) if prev["val"] > p["val"] else 1.0
            return tuple(prev[k] + f * (p[k] - prev[k]) for k in ("tokens", "seconds"))  # type: ignore[return-value]
        prev = p
    return None


def bench_shape(shape: str, args: argparse.Namespace, data: Path, out: Path) -> list[dict[str, Any]]:
    prec = pick_precision(torch.device("cpu"), "float32")
    curves: dict[str, list] = {r: [] for r in RECIPES}
    whole: dict[str, list[float]] = {r: [] for r in RECIPES}
    iters = {"nanogpt": args.iters, "modern": max(CHECKPOINTS, round(args.iters * args.share))}
    files = sorted(data.glob("val_*.bin"))
    for seed in range(args.seeds):
        for recipe in RECIPES:  # interleaved: the same load falls on both
            cfg = settings(shape, recipe, 1337 + seed, iters[recipe], data, out)
            quiet_train(cfg)
            curves[recipe].append(curve(cfg.run_dir, first_windows(files, cfg.block_size, 16, args.curve_tokens)[0],
                                        prec))
            whole[recipe].append(curve(cfg.run_dir, first_windows(files, cfg.block_size, 16, args.val_tokens)[0],
                                       prec, last_only=True)[-1]["val"])
            took = curves[recipe][-1][-1]["seconds"]
            print(f"  {shape} {recipe} seed {seed}: {iters[recipe]} iters in {took:.0f} s, "
                  f"val {whole[recipe][-1]:.4f} (whole split)", flush=True)
    means = {r: mean_curve(c) for r, c in curves.items()}
    target = means["nanogpt"][-1]["val"]
    base = reach(means["nanogpt"], target)
    rows = []
    for r in RECIPES:
        got = reach(means[r], target)
        rows.append({"shape": shape, "recipe": r, "seeds": args.seeds, "iters": iters[r],
                     "final_val": sum(whole[r]) / len(whole[r]), "final_vals": whole[r],
                     "final_curve_val": means[r][-1]["val"],
                     "final_tokens": means[r][-1]["tokens"], "final_seconds": means[r][-1]["seconds"],
                     "target": target, "tokens_to_target": got[0] if got else None,
                     "seconds_to_target": got[1] if got else None,
                     "token_ratio": got[0] / base[0] if got and base else None,
                     "seconds_ratio": got[1] / base[1] if got and base else None, "curve": means[r]})
    return rows


def render(rows: list[dict[str, Any]]) -> str:
    def f(v: float | None, spec: str) -> str:
        return "not reached" if v is None else format(v, spec)

    lines = ["| shape | recipe | iterations | val at the end (whole split, mean) | tokens, s | "
             "tokens to nanogpt's final | s to it | tokens ratio | s ratio |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        spread = max(r["final_vals"]) - min(r["final_vals"])
        lines.append(f"| {r['shape']} | {r['recipe']} | {r['iters']} | {r['final_val']:.4f} (spread {spread:.3f}) | "
                     f"{r['final_tokens']:,.0f}, "
                     f"{r['final_seconds']:.0f} | {f(r['tokens_to_target'], ',.0f')} | "
                     f"{f(r['seconds_to_target'], '.0f')} | {f(r['token_ratio'], '.2f')} | "
                     f"{f(r['seconds_ratio'], '.2f')} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="one seed, a few iterations, tiny only (the test's)")
    ap.add_argument("--iters", type=int, default=100, help="nanogpt's iterations per run (tiny's preset: 800)")
    ap.add_argument("--share", type=float, default=0.5, help="modern's iterations as a share of nanogpt's")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--val-tokens", type=int, default=None, help="val tokens the final loss is scored on (all)")
    ap.add_argument("--curve-tokens", type=int, default=8192, help="val tokens each curve point is scored on")
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "bench-recipe.json")
    args = ap.parse_args()
    shapes = ["tiny"] if args.quick else list(SHAPES)
    if args.quick:
        args.iters, args.seeds = 12, 1
        args.val_tokens, args.curve_tokens = args.val_tokens or 4096, 2048
    torch.set_num_threads(torch.get_num_threads())
    t0 = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "shakespeare"
        subprocess.run([sys.executable, "-m", "job", "prepare", "--source", "shakespeare", "--out", str(data)],
                       cwd=ROOT, check=True, capture_output=True)
        rows = [row for shape in shapes for row in bench_shape(shape, args, data, Path(tmp) / "runs")]
    table = render(rows)
    print(table)
    print(f"{time.time() - t0:.0f} s in all; nanogpt {args.iters} iterations, modern {args.share:g} of them, "
          f"{args.seeds} seed(s); recipes' learning rates: {SWEEP}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"iters": args.iters, "share": args.share, "seeds": args.seeds, "rows": rows,
                                    "table": table, "sweep": SWEEP}, indent=1))
    print(f"written: {args.out}")


if __name__ == "__main__":
    main()
