#!/usr/bin/env bash
# The whole GPU round in one call (device tool, H200): build, every test (CUDA ones included),
# compute-sanitizer on small cases of every kernel, and the benchmarks. Everything goes to $OUT:
#   gpu_round.log (all output) and bench_*.json / bench_*.png.
# Usage on the device:  JAMBA_COMMIT=<sha> [SKIP_MODEL=1] [JAMBA_EXT_AB_ROWS=1] [FIRST_TESTS=tests/x.py] bash benchmarks/run_gpu.sh [full]
#   JAMBA_EXT_AB_ROWS=1: also the A/B rows (today: bench_model at batch 1 / 2 / 4 / 8 with JAMBA_EXT_GEMV_ROWS=1 and 8,
#   their JSON kept together as bench_model_ab.json: $OUT holds at most 8 files; bench_kernels' gemv rows with
#   JAMBA_EXT_GEMV_MMA=ring and =0, log only; experiments add their rows to the benchmarks under the same switch)
#   (pass JAMBA_COMMIT: the device copy of .git may be stale; it goes into the log and every JSON)
#   full: also the slow CUDA tests (> 2^31 elements). Each step has a time limit, so one call fits in ~9 min.
set -uo pipefail
OUT=${OUT:-/tmp/jamba_gpu_out}
mkdir -p "$OUT"
LOG="$OUT/gpu_round.log"
export PYTHONUNBUFFERED=1 JAMBA_COMMIT=${JAMBA_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)} PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
mode=${1:-quick}
step() { echo; echo "=== $* ($(date +%T))"; }
{
step "environment (commit $JAMBA_COMMIT)"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.mem --format=csv
python3 -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda)"
python3 -c "import transformers; print('transformers', transformers.__version__)" 2>/dev/null
nvcc --version | tail -1

step "build"
t0=$(date +%s)
JAMBA_EXT_CUDA=1 pip install --no-build-isolation --no-deps -e . 2>&1 | grep -v "^ " | tail -5
python3 -c "import jamba_ext; assert jamba_ext.has_cuda_kernels(), 'built without CUDA'; print('has_cuda_kernels: True')" || exit 1
echo "build took $(( $(date +%s) - t0 )) s"

if [ -n "${FIRST_TESTS:-}" ]; then
  # new kernels first, with a short limit per test, so a hang cannot eat the round's test step
  step "first: $FIRST_TESTS (cuda, 30 s a test)"
  timeout 150 python3 -m pytest -q -m cuda --timeout=30 --timeout-method=thread $FIRST_TESTS -p no:cacheprovider 2>&1 | tail -30
fi

step "jamba-ext check (the installation self-check a user runs)"
timeout 120 python3 -m jamba_ext check 2>&1 | tail -40

step "tests marked cuda (the CPU suite runs in CI)"
slow=0; [ "$mode" = full ] && slow=1
JAMBA_SLOW=$slow timeout 300 python3 -m pytest -q -m cuda --timeout=240 tests -p no:cacheprovider 2>&1 | tail -40

step "compute-sanitizer memcheck (small cases of every kernel)"
timeout 120 compute-sanitizer --tool memcheck --print-limit 20 python3 benchmarks/sanitize_cases.py 2>&1 | tail -8
step "compute-sanitizer racecheck (same cases)"
timeout 120 compute-sanitizer --tool racecheck --print-limit 20 python3 benchmarks/sanitize_cases.py 2>&1 | tail -8

step "compute-sanitizer memcheck of every MoE engine (bench_moe --sanitize)"
timeout 120 compute-sanitizer --tool memcheck --print-limit 20 python3 benchmarks/bench_moe.py --sanitize 2>&1 | tail -4
step "compute-sanitizer racecheck of every MoE engine (bench_moe --sanitize, half tiles forced on)"
JAMBA_EXT_WGMMA_HALF=1 timeout 150 compute-sanitizer --tool racecheck --print-limit 20 python3 benchmarks/bench_moe.py --sanitize 2>&1 | tail -4

step "bench_kernels"
timeout 200 python3 benchmarks/bench_kernels.py 2>&1 | tail -70
step "bench_moe"
timeout 150 python3 benchmarks/bench_moe.py 2>&1 | tail -90
step "dev/mamba_step_probe.py (a Mamba layer's decode step op by op, cold weights; the fused mamba_inner_step)"
timeout 90 python3 dev/mamba_step_probe.py 2>&1 | tail -14
if [ "${JAMBA_EXT_AB_ROWS:-0}" = 1 ]; then
  for v in "JAMBA_EXT_GEMV_ROWS=1" "JAMBA_EXT_GEMV_ROWS=8"; do
    step "bench_model with $v (A/B: cuBLAS or jamba.gemv for the decode step's projections at 2-8 rows; 2K prompts, no transformers)"
    env $v timeout 150 python3 benchmarks/bench_model.py --batches 1,2,4,8 --prompts 2048 --no-hf --decode-steps 16 --budget-s 40 2>&1 | tail -10
    cp benchmarks/results/bench_model.json /tmp/ab_$v.json 2>/dev/null
  done
  cp benchmarks/results/bench_kernels.json /tmp/bk_full.json; cp benchmarks/results/bench_kernels.png /tmp/bk_full.png
  for v in "JAMBA_EXT_GEMV_MMA=ring" "JAMBA_EXT_GEMV_MMA=0"; do
    step "bench_kernels --only gemv with $v (A/B: the ring kernel at 1 row and narrow too; the CUDA-core kernel)"
    env $v timeout 90 python3 benchmarks/bench_kernels.py --only gemv 2>&1 | grep "^gemv"
  done
  cp /tmp/bk_full.json benchmarks/results/bench_kernels.json; cp /tmp/bk_full.png benchmarks/results/bench_kernels.png
  # one file for all (the device tool brings back at most 8 files)
  python3 -c "import json; json.dump({k: json.load(open('/tmp/ab_' + k + '.json')) for k in ('JAMBA_EXT_GEMV_ROWS=1', 'JAMBA_EXT_GEMV_ROWS=8')}, open('$OUT/bench_model_ab.json', 'w'), indent=1)"
fi
step "bench_model"
[ "${SKIP_MODEL:-0}" = 1 ] && echo "skipped (SKIP_MODEL=1)" || timeout 200 python3 benchmarks/bench_model.py --decode-steps 16 --budget-s 60 2>&1 | tail -30
step "done"
} 2>&1 | tee "$LOG"
cp benchmarks/results/bench_kernels.json benchmarks/results/bench_moe.json benchmarks/results/bench_model.json \
   benchmarks/results/bench_kernels.png benchmarks/results/bench_moe.png benchmarks/results/bench_model.png \
   "$OUT"/ 2>/dev/null
exit 0
