#!/usr/bin/env bash
# Predicted against measured peak memory and step time for gpt2-40m at micro-batch 16 on the GPU
# in this machine (issue 4's GPU acceptance). Needs a CUDA GPU; run from the repository root:
#   scripts/gpu_check.sh            (compile on, as the preset)
#   scripts/gpu_check.sh --no-compile
set -euo pipefail
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
"$PY" -m job plan --preset gpt2-40m --batch-size 16 --grad-accum 1 --gpu auto --device cuda --measure --json "$@" \
  > /tmp/gpu_check_plan.json
"$PY" - /tmp/gpu_check_plan.json <<'PYEND'
import json, sys
p = json.load(open(sys.argv[1]))
m, mem, g = p["measured"], p["memory"], p["gpu"]
torch_pred = mem["total"] - mem["workspace"]  # torch's peak allocated excludes context and slack
print(f"card        {m.get('device_name')} -> table row {g['key']} ({g['peak_tflops']} TFLOP/s)")
print(f"memory      predicted {torch_pred / 1e9:.2f} GB (tensors), measured {m['peak_memory_bytes'] / 1e9:.2f} GB"
      f" -> ratio {torch_pred / m['peak_memory_bytes']:.2f}")
for part in ("weights", "weight_copies", "grads", "adamw", "activations", "logits"):
    print(f"  {part:14}{mem[part] / 1e9:8.2f} GB")
print(f"step        measured {m['micro_step_s'] * 1e3:.1f} ms/micro-step, {m['s_per_iter']:.3f} s/iter "
      f"(grad_accum 1), MFU {100 * m['mfu']:.1f}%")
for r in p["time"]:
    print(f"  predicted at MFU {100 * r['mfu']:.0f}%: {r['s_per_iter']:.3f} s/iter -> "
          f"measured/predicted {m['s_per_iter'] / r['s_per_iter']:.2f}")
PYEND

# Issue 3's GPU acceptance: scrape the metrics endpoint during a real GPU run and show the GPU
# series (power > 0, energy rising, memory used > 0) and the energy the checkpoint carries.
out=$(mktemp -d)
port=${GPU_CHECK_PORT:-9309}
"$PY" -m job train --preset tiny --device cuda --run gpu-check --out-dir "$out" --max-iters 3000 \
  --metrics-port "$port" --ckpt-interval 500 --loss-chunk 0 > "$out/train.log" 2>&1 &
train_pid=$!
trap 'kill "$train_pid" 2>/dev/null || true' EXIT
"$PY" - "$port" <<'PYEND'
import re, sys, time, urllib.request
url = f"http://127.0.0.1:{sys.argv[1]}/metrics"

def scrape() -> dict[str, float]:
    for _ in range(120):  # the run needs a few seconds to start
        try:
            text = urllib.request.urlopen(url, timeout=2).read().decode()
            break
        except OSError:
            time.sleep(1)
    else:
        sys.exit("metrics endpoint never answered")
    return {m.group(1): float(m.group(2)) for m in re.finditer(r"^(trainer_gpu_\S+) (\S+)$", text, re.M)}

first = scrape()
time.sleep(15)
second = scrape()
for name in sorted(second):
    print(f"{name:70} {second[name]:>16.2f}")
energy = [k for k in second if k.startswith("trainer_gpu_energy_joules_total")]
power = [second[k] for k in second if k.startswith("trainer_gpu_power_watts")]
mem = [second[k] for k in second if k.startswith("trainer_gpu_memory_used_bytes")]
rise = [second[k] - first.get(k, 0.0) for k in energy]
print(f"power > 0: {all(p > 0 for p in power) and bool(power)}; energy rising: {all(r > 0 for r in rise) and bool(rise)}"
      f" (+{sum(rise):.0f} J in 15 s); memory used > 0: {all(m > 0 for m in mem) and bool(mem)}")
PYEND
kill -TERM "$train_pid"; wait "$train_pid" || true
"$PY" -m job status gpu-check --out-dir "$out" --json | grep -E '"(iteration|energy_j|energy_kwh)"'

# Issue 13's GPU check: `job train` under torchrun on NCCL (it cannot run on the CPU-only CI). One
# process still takes the whole DDP path: NCCL process group, DDP wrapper, the step's all-reduce,
# rank 0 handing the checkpoint to every rank. Then, with 2+ GPUs, `job train --nproc N` against
# one process on the same global batch (losses within 1e-3: bf16, and another reduction order).
out=$(mktemp -d)
JOB_RUN=nccl1 JOB_OUT_DIR="$out" "$PY" -m torch.distributed.run --standalone --nproc-per-node 1 -m job train \
  --preset tiny --device cuda --max-iters 40 --grad-accum 4 --log-interval 1 --metrics-port 0 > "$out/nccl1.log" 2>&1
grep -E "DDP, cuda|^done:" "$out/nccl1.log"
"$PY" - "$out/nccl1/log.jsonl" <<'PYEND'
import json, sys
recs = [json.loads(l) for l in open(sys.argv[1])]
start = next(r for r in recs if r["event"] == "start")
assert start["world_size"] == 1 and start["device"].startswith("cuda"), start
print(f"nccl, 1 process: {sum(r['event'] == 'step' for r in recs)} steps logged, world_size {start['world_size']}")
PYEND
gpus=$(nvidia-smi -L | wc -l)
if (( gpus >= 2 )); then
  "$PY" -m job train --run one --out-dir "$out" --preset tiny --device cuda --max-iters 40 --grad-accum 4 --log-interval 1 \
    --metrics-port 0 > "$out/one.log" 2>&1
  "$PY" -m job train --run many --out-dir "$out" --preset tiny --device cuda --max-iters 40 --grad-accum 4 --log-interval 1 \
    --metrics-port 0 --nproc 2 > "$out/many.log" 2>&1
  "$PY" - "$out" <<'PYEND'
import json, sys
def losses(run):
    return {r["iteration"]: r["train_loss"] for r in map(json.loads, open(f"{sys.argv[1]}/{run}/log.jsonl"))
            if r["event"] == "step"}
a, b = losses("one"), losses("many")
worst = max(abs(a[i] - b[i]) / abs(a[i]) for i in a)
print(f"nccl, 2 processes vs 1: worst relative loss difference {worst:.2e} over {len(a)} steps")
assert worst < 1e-3
PYEND
fi
