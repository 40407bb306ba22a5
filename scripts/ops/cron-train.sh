#!/usr/bin/env bash
# Start or resume one training run, safe to call from cron as often as you like.
#
#   scripts/ops/cron-train.sh           start/resume the run unless it runs, is DONE or is given up
#   scripts/ops/cron-train.sh --stop    ask a running job to checkpoint and exit 75 (SIGTERM)
#   scripts/ops/cron-train.sh --reset   forget the crash-loop counter, then start/resume
#
# Settings come from the environment, then from the env file (JOB_ENV_FILE, default .env in the
# repository); the real environment wins, as it does for the job itself:
#   JOB_RUN, JOB_PRESET, JOB_OUT_DIR, JOB_DATA_ROOT, JOB_METRICS_PORT   the job's own settings
#   JOB_NPROC (and JOB_NNODES, JOB_RDZV_ENDPOINT)   several GPUs: the job starts torchrun itself
#   JOB_LAUNCHER=local|docker   local: the venv's python; docker: the image, with --gpus all (no
#                               --init: the image's entrypoint is tini, a second init only warns)
#   JOB_PYTHON                  local python (default .venv/bin/python of the repository)
#   JOB_IMAGE                   docker image (default job:latest)
#   JOB_MAX_FAILURES            stop restarting after this many failures in a row that made no
#                               progress (default 3)
#   JOB_WORKDIR                 where the job runs and relative paths start (default: the repo)
#
# Exit codes pass through from the job: 0 done (or nothing to do), 75 stopped with a checkpoint,
# 1 failed (also: given up after a crash loop), 2 bad settings. Everything is appended, with a
# timestamp on each line, to $JOB_OUT_DIR/.cron/<run>.log; the lock and the failure counter
# live next to it, never inside the run directory.
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
mode=run
case "${1:-}" in
  "") ;;
  --stop) mode=stop ;;
  --reset) mode=reset ;;
  -h|--help) sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
  *) echo "error: unknown argument '$1'; use --stop, --reset or nothing" >&2; exit 2 ;;
esac

# KEY=VALUE lines of the env file, for keys the environment does not already set. The file is
# data, never sourced: it is also docker's --env-file, which takes values literally.
env_file=${JOB_ENV_FILE:-$ROOT/.env}
if [[ -f $env_file ]]; then
  while IFS= read -r line || [[ -n $line ]]; do
    [[ $line =~ ^[[:space:]]*(export[[:space:]]+)?([A-Za-z_][A-Za-z0-9_]*)=(.*)$ ]] || continue
    key=${BASH_REMATCH[2]} val=${BASH_REMATCH[3]}
    if [[ $val =~ ^\"(.*)\"$ || $val =~ ^\'(.*)\'$ ]]; then val=${BASH_REMATCH[1]}; else val=${val%% #*}; fi
    [[ -v $key ]] || export "$key=$val"
  done < "$env_file"
fi

cd "${JOB_WORKDIR:-$ROOT}" || exit 2
run=${JOB_RUN:-${JOB_PRESET:-tiny}}
out_dir=${JOB_OUT_DIR:-runs}
run_dir=$out_dir/$run
cron_dir=$out_dir/.cron
log=$cron_dir/$run.log
fails_file=$cron_dir/$run.failures
max_failures=${JOB_MAX_FAILURES:-3}
launcher=${JOB_LAUNCHER:-local}

say() { printf '%(%Y-%m-%dT%H:%M:%S%z)T [cron %s] %s\n' -1 "$$" "$*" >> "$log"; }

# Newest sealed checkpoint's iteration, from the seal file names alone: no python, no torch,
# so it works the same for a docker run on a host without a venv.
progress() {
  local f n best=0
  for f in "$run_dir"/ckpt/ckpt_*.json; do
    [[ -e $f ]] || continue
    n=${f##*/ckpt_}; n=$((10#${n%.json}))
    (( n > best )) && best=$n
  done
  echo "$best"
}

# DONE, unless max_iters (from the environment) was raised past the iteration it finished at.
is_done() {
  [[ -f $run_dir/DONE ]] || return 1
  local at
  at=$(sed -n 's/.*"iteration": *\([0-9]*\).*/\1/p' "$run_dir/DONE")
  ! [[ ${JOB_MAX_ITERS:-} =~ ^[0-9]+$ && -n $at ]] || (( JOB_MAX_ITERS <= at ))
}

if [[ $mode != stop ]] && is_done; then exit 0; fi   # quietly: cron mails any output

mkdir -p "$cron_dir" || exit 1
exec 9>> "$cron_dir/$run.lock"
if ! flock -n 9; then
  if [[ $mode == stop ]]; then
    pid=$(cat "$cron_dir/$run.pid" 2>/dev/null)
    # the holder may be a job whose wrapper was killed: never signal a recycled pid
    if [[ -z $pid ]] || ! ps -o args= -p "$pid" | grep -q cron-train; then
      say "--stop: the job runs without its wrapper; stop it by hand (kill -TERM <its pid>)"
      exit 1
    fi
    say "--stop: sending SIGTERM to the wrapper (pid $pid); the job checkpoints and exits 75"
    kill -TERM "$pid"
    exit 0
  fi
  say "already running (lock held); nothing to do"
  exit 0
fi
[[ $mode == stop ]] && exit 0   # nothing runs, nothing to stop
is_done && exit 0               # finished while we waited for the lock
echo "$$" > "$cron_dir/$run.pid"

# Crash-loop guard: "count iteration" of the failures in a row that made no progress. It resets
# on --reset, on progress, or when the env file changed since (someone fixed the settings).
read -r fails stuck_at 2>/dev/null < "$fails_file" || { fails=0; stuck_at=-1; }
before=$(progress)
if [[ $mode == reset || $before != "$stuck_at" || ( -f $env_file && $env_file -nt $fails_file ) ]]; then
  fails=0
fi
if (( fails >= max_failures )); then
  say "not restarting run '$run': $fails failures in a row without progress (stuck at iteration" \
      "$stuck_at, JOB_MAX_FAILURES=$max_failures); fix the cause, then run $0 --reset"
  exit 1
fi

case $launcher in
  local)
    py=${JOB_PYTHON:-$ROOT/.venv/bin/python}
    if [[ ! -x $py ]]; then say "error: no python at $py; run 'make setup' or set JOB_PYTHON"; exit 2; fi
    cmd=("$py" -m job train --run "$run" --out-dir "$out_dir") ;;
  docker)
    port=${JOB_METRICS_PORT:-9838}
    data_root=${JOB_DATA_ROOT:-data}
    hf_cache=${HF_HOME:-$HOME/.cache/huggingface}
    mkdir -p "$data_root" "$out_dir" "$hf_cache"   # else docker creates them owned by root
    # --shm-size: NCCL's shared memory between the processes of JOB_NPROC > 1 (docker gives 64 MB)
    cmd=(docker run --rm --gpus "${JOB_GPUS:-all}" --shm-size 1g --name "job-$run" --stop-timeout 120
         -v "$(cd "$data_root" && pwd):/app/data" -v "$(cd "$out_dir" && pwd):/app/runs"
         -v "$hf_cache:/home/job/.cache/huggingface" -v /etc/localtime:/etc/localtime:ro)
    [[ -f $env_file ]] && cmd+=(--env-file "$env_file")
    # Settings from the environment too (cron's JOB_STOP_AT=07:00 above all); -e NAME passes the
    # value without putting it on the command line, where `ps` would show an HF_TOKEN.
    for name in $(compgen -e | grep -E '^(JOB_|HF_TOKEN$|TZ$)'); do cmd+=(-e "$name"); done
    [[ $port != 0 ]] && cmd+=(-p "127.0.0.1:$port:$port")
    cmd+=("${JOB_IMAGE:-job:latest}" train --run "$run" --out-dir /app/runs --data-root /app/data) ;;
  *) say "error: JOB_LAUNCHER='$launcher' is not local or docker"; exit 2 ;;
esac

# SIGTERM/SIGINT to this wrapper go on to the job, which checkpoints and exits 75.
stop_requested=0
child=
forward() { stop_requested=1; [[ -n $child ]] && kill -"$1" "$child" 2>/dev/null; }
trap 'forward TERM' TERM
trap 'forward INT' INT

say "starting run '$run' at iteration $before ($launcher): ${cmd[*]}"
# The job inherits the lock (fd 9): if this wrapper dies, the job still holds it, so nothing
# starts twice. The timestamping reader must outlive a signal to the group, or the job would
# lose its stdout in the middle of writing its checkpoint; it ends when the job's output does.
"${cmd[@]}" > >(trap '' TERM INT HUP; exec 9>&-
                while IFS= read -r l; do printf '%(%Y-%m-%dT%H:%M:%S%z)T | %s\n' -1 "$l"; done >> "$log") 2>&1 &
child=$!
while kill -0 "$child" 2>/dev/null; do wait "$child"; done
wait "$child"; rc=$?
child=
after=$(progress)

case $rc in
  0) say "run '$run' finished (exit 0) at iteration $after" ;;
  75) say "run '$run' stopped with a checkpoint (exit 75) at iteration $after; resume later" ;;
  1|2) say "run '$run' failed (exit $rc) at iteration $after" ;;
  *) if (( stop_requested )); then
       say "run '$run' ended by signal on request (exit $rc) at iteration $after; counted as stopped"
       rc=75
     else
       say "run '$run' ended abnormally (exit $rc: a signal, or docker could not start it) at iteration $after"
       rc=1
     fi ;;
esac
if (( rc == 0 || rc == 75 || after != before )); then
  rm -f "$fails_file"
else
  fails=$((fails + 1))
  echo "$fails $after" > "$fails_file"
  if (( fails >= max_failures )); then
    msg="giving up on run '$run': $fails failures in a row without progress (stuck at iteration $after);"
    msg+=" cron will not restart it until you fix the cause and run $0 --reset (see $log)"
    say "$msg"
    echo "$msg" >&2   # once, so cron mails it
  fi
fi
exit "$rc"
