#!/usr/bin/env bash
# The project's one-call GPU check (see README, "GPU check"): build with the CUDA kernels, run the whole test
# suite (CUDA cases run wherever torch.cuda.is_available()), run the benchmarks, and a compute-sanitizer
# memcheck of the kernels. Logs go to $OUT (at most 8 files come back from the device machine).
# Run from the repository root:  bash scripts/gpu_check.sh
set -u -o pipefail
OUT="${OUT:-$PWD/gpu_out}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
PY="python3 -P"  # -P: never import the source tree's pyfastblocks (it has no compiled _C) instead of the installed one
LOG="$OUT/gpu_check.log"
step() { echo "=== $* ($(date -u +%H:%M:%S))" | tee -a "$LOG"; }

step environment
{ nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.mem --format=csv
  $PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"
  git log -1 --format='commit %H %s' 2>/dev/null || true; } 2>&1 | tee -a "$LOG"

step build
if ! MAX_JOBS=16 FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}" \
    python3 -m pip install --no-build-isolation --no-deps -v . > /tmp/gpu_build.log 2>&1; then
  tail -60 /tmp/gpu_build.log | tee -a "$LOG"; exit 1
fi
grep -E "ptxas|warning" /tmp/gpu_build.log | head -40 >> "$LOG"
$PY -c "import pyfastblocks; print(pyfastblocks.build_info())" 2>&1 | tee -a "$LOG"

QUICK="${GPU_CHECK_QUICK:-0}"  # 1: build, tests, benchmarks and memcheck only

if [ "$QUICK" != 1 ]; then
step "mixed-device errors"
for c in residual_cuda scale_cuda x_cuda scale_cpu; do
  timeout 60 $PY scripts/repro_mixed_device.py $c 2>&1 | tail -4 | tee -a "$LOG"
  if [ "${PIPESTATUS[0]}" -gt 128 ] && command -v cuda-gdb > /dev/null; then
    timeout 120 cuda-gdb -batch -ex run -ex bt --args python3 -P scripts/repro_mixed_device.py $c 2>&1 | grep -E "^#|signal" | head -30 | tee -a "$LOG"
  fi
done
fi

step tests
# -n 4 (pytest-xdist, where installed): a crashing test takes down one worker, not the run.
XDIST=""; $PY -c "import xdist" 2> /dev/null && XDIST="-n 4"  # pytest-xdist may be absent there
timeout 270 $PY -m pytest -q $XDIST -rs tests > "$OUT/tests.log" 2>&1
tail -15 "$OUT/tests.log" | tee -a "$LOG"

if [ "$QUICK" != 1 ]; then
  step "host overhead"
  timeout 60 $PY scripts/overhead_add_relu.py 2>&1 | tee -a "$LOG"
fi

step "benchmark kernels (fp16/bf16 channels_last)"
timeout 150 $PY -m pyfastblocks.bench --sections kernels --out /tmp/bench_kernels 2>&1 | grep -v "it/s" | tail -40 | tee -a "$LOG"
step "benchmark depthwise fp32 NCHW"
timeout 90 $PY -m pyfastblocks.bench --sections kernels --ops depthwise_conv2d --dtype fp32 --layout nchw \
  --no-compile --out /tmp/bench_depthwise_fp32 2>&1 | grep -v "it/s" | tail -25 | tee -a "$LOG"
[ -f /tmp/bench_depthwise_fp32/results.md ] && cp /tmp/bench_depthwise_fp32/results.md "$OUT/bench_depthwise_fp32.md"
if [ "$QUICK" != 1 ]; then
  step "benchmark models (quick: small batch, not compiled)"
  timeout 120 $PY -m pyfastblocks.bench --quick --sections models --out /tmp/bench_models 2>&1 | grep -v "it/s" | tail -20 | tee -a "$LOG"
fi
for d in bench_kernels bench_models; do
  [ -f /tmp/$d/results.json ] && cp /tmp/$d/results.json "$OUT/$d.json"
  [ -f /tmp/$d/results.md ] && cp /tmp/$d/results.md "$OUT/$d.md"
done

step "compute-sanitizer memcheck (+ racecheck)"
if command -v compute-sanitizer > /dev/null; then
  timeout 120 compute-sanitizer --tool memcheck --error-exitcode 9 $PY scripts/sanitizer_workload.py 2>&1 | tail -15 | tee -a "$LOG"
  if [ "$QUICK" != 1 ]; then
    timeout 120 compute-sanitizer --tool racecheck --error-exitcode 9 $PY scripts/sanitizer_workload.py 2>&1 | tail -8 | tee -a "$LOG"
  fi
fi
step "nsight compute"
if [ "$QUICK" != 1 ] && command -v ncu > /dev/null; then
  timeout 150 ncu --clock-control none -k regex:add_relu_forward --section SpeedOfLight --section Occupancy \
    --section LaunchStats $PY scripts/profile_add_relu.py > "$OUT/ncu.log" 2>&1
  grep -E "add_relu_forward|Memory Throughput|DRAM Throughput|Duration|Achieved Occupancy|Registers Per|Compute \(SM\)" "$OUT/ncu.log" | head -60 | tee -a "$LOG"
fi
step done
