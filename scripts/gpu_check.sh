#!/usr/bin/env bash
# The one-call GPU check (README, "GPU check"): build for the present card, the CUDA tests, compute-sanitizer
# memcheck and racecheck, the kernel benchmarks and the model benchmark, in under 8 minutes on an H100/H200 with
# 16 cores. The steps, their commands and their time budgets live in scripts/gpu_check_plan.py (one place, which
# tests/test_gpu_check.py reads); this script runs them in order, each under `timeout`, and prints one line per
# step with its wall time. A failed build skips the rest; any other failure or timeout goes on to the next step.
#
#   bash scripts/gpu_check.sh             # from the repository root, on the GPU machine
#   bash scripts/gpu_check.sh --dry-run   # (or GPU_CHECK_DRY_RUN=1) print the plan; runs nothing, needs no GPU
#
# Everything that comes back is under $OUT (default ./gpu_out; at most 8 files, listed by the dry run), ready to
# commit as benchmarks/results/<date>-<card>/. Scratch (build log, bench folders) goes to $WORK (default a fresh
# temporary folder). GPU_CHECK_COMMIT names the commit where the tree has no .git (the device machine's copy).
set -u -o pipefail
cd "$(dirname "$0")/.." || exit 2

DRY="${GPU_CHECK_DRY_RUN:-0}"
for arg in "$@"; do
  case "$arg" in
    --dry-run) DRY=1 ;;
    -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
    *) echo "gpu_check.sh: unknown argument '$arg' (--dry-run, --help)" >&2; exit 2 ;;
  esac
done

PLAN="${GPU_CHECK_PLAN:-scripts/gpu_check_plan.py}"  # another plan: tests run this runner on stand-in steps
plan="$(python3 "$PLAN" bash)" || { echo "gpu_check.sh: cannot read the plan $PLAN" >&2; exit 2; }
eval "$plan"

OUT="${OUT:-$PWD/gpu_out}"
NPROC="$(nproc 2> /dev/null || echo 1)"
WORKERS=$(( NPROC / 2 )); [ "$WORKERS" -gt 8 ] && WORKERS=8; [ "$WORKERS" -lt 1 ] && WORKERS=1
PY="python3 -P"  # -P: import the installed pyfastblocks, never the uncompiled source folder
SANITIZER="$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer 2> /dev/null | head -n 1)"
GPU_CHECK_COMMIT="${GPU_CHECK_COMMIT:-$(git rev-parse --short HEAD 2> /dev/null || echo unknown)}"
total_budget=0
for b in "${STEP_BUDGETS[@]}"; do total_budget=$(( total_budget + b )); done
n_steps=${#STEP_IDS[@]}

if [ "$DRY" = 1 ]; then
  echo "gpu_check.sh --dry-run: the plan ($PLAN); nothing is run"
  echo "variables: PY='$PY' OUT='$OUT' WORK=<fresh temporary folder> NPROC=$NPROC WORKERS=$WORKERS" \
       "SANITIZER='${SANITIZER:-not found here}' GPU_CHECK_COMMIT=$GPU_CHECK_COMMIT"
  elapsed=0
  for i in "${!STEP_IDS[@]}"; do
    elapsed=$(( elapsed + STEP_BUDGETS[i] ))
    echo
    echo "=== [$(( i + 1 ))/$n_steps] ${STEP_IDS[i]}: ${STEP_TITLES[i]} -- budget ${STEP_BUDGETS[i]} s" \
         "(by ${elapsed} s)$([ "${STEP_REQUIRED[i]}" = 1 ] && echo '; the rest is skipped if it fails')"
    echo "would run, under timeout -k $KILL_AFTER_S ${STEP_BUDGETS[i]}:"
    printf '%s\n' "${STEP_COMMANDS[i]}" | sed -e '/^$/d' -e 's/^/    /'
    [ -n "${STEP_AFTER[i]}" ] && echo "then, whatever its outcome:" && echo "    ${STEP_AFTER[i]}"
  done
  echo
  echo "planned total: ${total_budget} s of the ${TOTAL_LIMIT_S} s limit (at worst ${WORST_CASE_S} s:" \
       "every step killed at its budget, ${KILL_AFTER_S} s each to die)"
  echo "files under \$OUT (${#OUT_FILES[@]} of at most 8): ${OUT_FILES[*]}"
  [ "$WORST_CASE_S" -lt "$TOTAL_LIMIT_S" ] || { echo "the plan exceeds the limit" >&2; exit 1; }
  exit 0
fi

mkdir -p "$OUT" || exit 2
WORK="${WORK:-$(mktemp -d /tmp/gpu_check.XXXXXX)}"
mkdir -p "$WORK"
LOG="$OUT/gpu_check.log"
STEPS_TSV="$WORK/steps.tsv"
: > "$LOG"; : > "$STEPS_TSV"
export PY OUT WORK NPROC WORKERS SANITIZER GPU_CHECK_COMMIT PLAN
export PYTHONUNBUFFERED=1 TQDM_DISABLE=1  # output in order, no progress bars in the log

say() { echo "$*" | tee -a "$LOG"; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }  # seconds since a now() reading
t_start=$(now)
say "gpu_check.sh: ${n_steps} steps, planned ${total_budget} s (limit ${TOTAL_LIMIT_S} s); results in $OUT, scratch in $WORK"
skip_rest=""
for i in "${!STEP_IDS[@]}"; do
  id="${STEP_IDS[i]}"; budget="${STEP_BUDGETS[i]}"
  say ""
  say "=== [$(( i + 1 ))/$n_steps] $id: ${STEP_TITLES[i]} -- budget ${budget} s ($(date -u +%H:%M:%S) UTC)"
  if [ -n "$skip_rest" ]; then
    say "--- [$(( i + 1 ))/$n_steps] $id: SKIPPED ($skip_rest)"
    printf '%s\t%s\t%s\t%s\n' "$id" -1 0 "skipped ($skip_rest)" >> "$STEPS_TSV"
    continue
  fi
  t0=$(now)
  timeout -k "$KILL_AFTER_S" "$budget" bash -c "${STEP_COMMANDS[i]}" 2>&1 | tee -a "$LOG"
  status=${PIPESTATUS[0]}
  wall=$(since "$t0")
  case "$status" in
    0) outcome="ok" ;;
    124|137) outcome="TIMEOUT (killed at ${budget} s)" ;;
    *) outcome="FAILED (exit $status)" ;;
  esac
  if [ -n "${STEP_AFTER[i]}" ]; then bash -c "${STEP_AFTER[i]}" 2>&1 | tee -a "$LOG"; fi
  say "--- [$(( i + 1 ))/$n_steps] $id: $outcome in ${wall} s of ${budget} s"
  printf '%s\t%s\t%s\t%s\n' "$id" "$status" "$wall" "$outcome" >> "$STEPS_TSV"
  if [ "$status" != 0 ] && [ "${STEP_REQUIRED[i]}" = 1 ]; then skip_rest="$id failed"; fi
done

GPU_CHECK_CARD="$(nvidia-smi --query-gpu=name --format=csv,noheader 2> /dev/null | head -n 1)"
export GPU_CHECK_CARD="${GPU_CHECK_CARD:-unknown card}"
say ""
say "=== summary ($(since "$t_start") s in all)"
python3 "$PLAN" report "$OUT" "$STEPS_TSV" 2>&1 | tee -a "$LOG"
slug="$(echo "$GPU_CHECK_CARD" | tr '[:upper:]' '[:lower:]' | sed -e 's/nvidia //' -e 's/[^a-z0-9]\+/-/g' -e 's/^-//' -e 's/-$//')"
say "files under $OUT: $(cd "$OUT" && ls | tr '\n' ' ')"
say "commit them as benchmarks/results/$(date -u +%Y-%m-%d)-${slug}/"
