"""Val loss per token and per second of each recipe, on the embedded corpus, on this machine.

For each shape (tiny, and a larger one so that the gain is seen to hold as the model grows) and
each seed, the recipes train in turn (interleaved, so that a change in the machine's load falls
on all of them) through the real loop (job.train.train) with the same wall-clock budget: each
recipe's iterations are the budget over its own step time, measured just before on a few steps.
Every run keeps CHECKPOINTS checkpoints along the way; afterwards (not counted in the training
seconds) the last is scored on the whole val split (every non-overlapping window) and each is
scored on the split's first --curve-tokens tokens, the curve (scoring all 180k val tokens at every
checkpoint of every run would take longer than the training). The table gives, per shape and
recipe, the mean over seeds of the whole-split val loss at the budget, and the tokens and seconds
the recipe's mean curve needed to reach the nanogpt recipe's final mean curve loss (linear between
checkpoints), with the ratio to nanogpt's.

The learning rates are the presets' (job/config.py PRESET_RECIPES); where they come from is
recorded in SWEEP below (this script runs no sweep); the larger shape uses tiny's too.
`--quick` (the test suite's) trains one seed for a few seconds.

    .venv/bin/python scripts/bench_recipe.py [--quick] [--budget 60] [--seeds 3] [--out FILE]
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from job.config import resolve  # noqa: E402
from job.device import pick_precision  # noqa: E402
from job.evaluate import evaluate, first_windows  # noqa: E402
from job.model import build_model  # noqa: E402
from job.train import train  # noqa: E402

RECIPES = ("nanogpt", "modern")
SHAPES = {"tiny": {}, "6x192": {"n_layer": 6, "n_head": 6, "n_embd": 192}}
CHECKPOINTS = 6
# Where the learning rates come from (no sweep of muon_lr was finished here: see README "Recipes")
SWEEP = {
    "nanogpt": "lr 3e-3: tiny's preset, tuned before recipes existed",
    "modern": "AdamW lr 6e-3 (a sweep of 800-iteration tiny runs, seed 1337, whole val split: AdamW 3e-3 / 6e-3 "
              "/ 1e-2 at Muon 0.02, and Muon 0.04 at AdamW 3e-3; README, Recipes); Muon lr 0.02, momentum 0.95: "
              "the KellerJordan/Muon README's defaults",
}


def settings(shape: str, recipe: str, seed: int, iters: int, data: Path, out: Path) -> Any:
    every = max(1, iters // CHECKPOINTS)
    return resolve({
        "preset": "tiny", "recipe": recipe, "seed": seed, "max_iters": iters, "data": str(data),
        "out_dir": str(out), "run": f"{shape}-{recipe}-{seed}-{iters}", "device": "cpu", "metrics_port": 0,
        "ckpt_interval": every, "keep_ckpts": CHECKPOINTS + 2, "eval_interval": iters, "eval_iters": 1,
        "log_interval": iters, **SHAPES[shape],
    }, environ={}, dotenv=None)


def quiet_train(cfg: Any) -> None:
    with contextlib.redirect_stdout(io.StringIO()):
        code = train(cfg)
    if code != 0:
        raise SystemExit(f"bench: run {cfg.run_name} ended with exit {code}")


def step_seconds(shape: str, recipe: str, data: Path, out: Path, steps: int) -> float:
    """Seconds per iteration of this recipe here and now, from a short run's own clock (its
    first step, which carries the warm-up, left out)."""
    cfg = settings(shape, recipe, 0, steps + 1, data, out)
    cfg.ckpt_interval = steps + 1
    quiet_train(cfg)
    log = [json.loads(line) for line in (cfg.run_dir / "log.jsonl").read_text().splitlines()]
    first = next(r for r in log if r["event"] == "step")
    last = [r for r in log if r["event"] == "step"][-1]
    return (last["elapsed_s"] - first["elapsed_s"]) / max(1, last["iteration"] - first["iteration"])


def curve(run_dir: Path, val: list, prec: Any, last_only: bool = False) -> list[dict[str, float]]:
    """(tokens, training seconds, val loss on `val`) at each checkpoint of a run, or its last."""
    points = []
    for path in sorted((run_dir / "ckpt").glob("ckpt_*.pt"))[-1 if last_only else 0:]:
        saved = torch.load(path, map_location="cpu", weights_only=True)
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
    iters = {}
    for seed in range(args.seeds):
        for recipe in RECIPES:  # interleaved: the same load falls on both
            s_per_iter = step_seconds(shape, recipe, data, out, args.calibrate)
            iters[recipe] = max(CHECKPOINTS, int(args.budget / s_per_iter))
            cfg = settings(shape, recipe, 1337 + seed, iters[recipe], data, out)
            quiet_train(cfg)
            files = sorted(data.glob("val_*.bin"))
            curves[recipe].append(curve(cfg.run_dir, first_windows(files, cfg.block_size, 16, args.curve_tokens)[0],
                                        prec))
            whole[recipe].append(curve(cfg.run_dir, first_windows(files, cfg.block_size, 16, args.val_tokens)[0],
                                       prec, last_only=True)[-1]["val"])
            print(f"  {shape} {recipe} seed {seed}: {iters[recipe]} iters, val {whole[recipe][-1]:.4f} (whole split)",
                  flush=True)
    means = {r: mean_curve(c) for r, c in curves.items()}
    target = means["nanogpt"][-1]["val"]
    base = reach(means["nanogpt"], target)
    rows = []
    for r in RECIPES:
        got = reach(means[r], target)
        rows.append({"shape": shape, "recipe": r, "seeds": args.seeds, "final_val": sum(whole[r]) / len(whole[r]),
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

    lines = ["| shape | recipe | val at budget (whole split) | tokens, s at budget | tokens to nanogpt's final | "
             "s to it | tokens ratio | s ratio |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append(f"| {r['shape']} | {r['recipe']} | {r['final_val']:.4f} | {r['final_tokens']:,.0f}, "
                     f"{r['final_seconds']:.0f} | {f(r['tokens_to_target'], ',.0f')} | "
                     f"{f(r['seconds_to_target'], '.0f')} | {f(r['token_ratio'], '.2f')} | "
                     f"{f(r['seconds_ratio'], '.2f')} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="one seed, seconds of training, tiny only (the test's)")
    ap.add_argument("--budget", type=float, default=55.0, help="training seconds per run")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--calibrate", type=int, default=8, help="steps that measure each recipe's step time")
    ap.add_argument("--val-tokens", type=int, default=None, help="val tokens the final loss is scored on (all)")
    ap.add_argument("--curve-tokens", type=int, default=16384, help="val tokens each curve point is scored on")
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "bench-recipe.json")
    args = ap.parse_args()
    shapes = ["tiny"] if args.quick else list(SHAPES)
    if args.quick:
        args.budget, args.seeds, args.calibrate = 4.0, 1, 2
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
    print(f"{time.time() - t0:.0f} s in all; budget {args.budget:g} s per run, {args.seeds} seed(s); "
          f"recipes' learning rates: {SWEEP}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"budget_s": args.budget, "seeds": args.seeds, "rows": rows,
                                    "table": table, "sweep": SWEEP}, indent=1))
    print(f"written: {args.out}")


if __name__ == "__main__":
    main()
