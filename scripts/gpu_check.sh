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
