#!/usr/bin/env bash
# The whole GPU round in one call (device tool, H200): build, every test (CUDA ones included),
# compute-sanitizer on small cases of every kernel, and the benchmarks. Everything goes to $OUT:
#   gpu_round.log (all output) and bench_*.json / bench_*.png.
# Usage on the device:  JAMBA_COMMIT=<sha> [SKIP_MODEL=1] [SKIP_BENCH_KERNELS=1] [BENCH_MODEL_ARGS="..."] [JAMBA_EXT_AB_ROWS=1]
#                       [FIRST_TESTS=tests/x.py] bash benchmarks/run_gpu.sh [full]
#   SKIP_BENCH_KERNELS=1: no bench_kernels (the Mamba-path kernels unchanged since the last round's JSON);
#   BENCH_MODEL_ARGS: bench_model's arguments (default "--decode-steps 32 --budget-s 60"; e.g. add --experts-fp8)
#   JAMBA_EXT_AB_ROWS=1: also the A/B rows (today: dev/mamba_step_probe.py at batch 1, 4 and 8 and bench_model's
#   graph decode at batch 1 / 8 under the gemv kernel-pick switches JAMBA_EXT_GEMV_MMA=vec1 / wide / ring;
#   bench_model's JSONs kept together as bench_model_ab.json: $OUT holds at most 8 files; experiments add their rows
#   to the benchmarks under the same switch)
#   (pass JAMBA_COMMIT: the device copy of .git may be stale; it goes into the log and every JSON)
#   full: also the slow CUDA tests (> 2^31 elements). Each step has a time limit, so one call fits in ~9 min.
set -uo pipefail
OUT=${OUT:-/tmp/jamba_gpu_out}
mkdir -p "$OUT"
LOG="$OUT/gpu_round.log"
note=""  # the device's copy of .git may be stale: its HEAD is only a fallback, and the log says so
[ -z "${JAMBA_COMMIT:-}" ] && note=" from .git (JAMBA_COMMIT not given; the device copy of .git may be stale)"
export PYTHONUNBUFFERED=1 JAMBA_COMMIT=${JAMBA_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)} PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
mode=${1:-quick}
step() { echo; echo "=== $* ($(date +%T))"; }
{
step "environment (commit $JAMBA_COMMIT$note)"
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
[ "${SKIP_BENCH_KERNELS:-0}" = 1 ] && echo "skipped (SKIP_BENCH_KERNELS=1)" || timeout 200 python3 benchmarks/bench_kernels.py 2>&1 | tail -250
step "bench_moe"
timeout 150 python3 benchmarks/bench_moe.py 2>&1 | tail -250
step "dev/mamba_step_probe.py (a Mamba layer's decode step op by op, cold weights; the fused mamba_inner_step)"
timeout 90 python3 dev/mamba_step_probe.py 2>&1 | tail -14
if [ "${JAMBA_EXT_AB_ROWS:-0}" = 1 ]; then
  # the cost of switching between the two gemv kernels in a decode step's chain (PERF_NOTES session 27)
  for v in "JAMBA_EXT_GEMV_MMA=vec1" "JAMBA_EXT_GEMV_MMA=ring"; do
    step "dev/mamba_step_probe.py at batch 1 with $v (A/B: gemv kernel switches in the chain)"
    env $v timeout 60 python3 dev/mamba_step_probe.py 2>&1 | tail -9
  done
  for bv in "8 JAMBA_EXT_NONE=1" "8 JAMBA_EXT_GEMV_MMA=wide" "4 JAMBA_EXT_NONE=1" "4 JAMBA_EXT_GEMV_MMA=ring"; do
    set -- $bv
    step "dev/mamba_step_probe.py at batch $1 with $2 (A/B: x_proj on the ring kernel, or the vec kernel)"
    env $2 timeout 60 python3 dev/mamba_step_probe.py $1 2>&1 | tail -9
  done
  for v in "JAMBA_EXT_GEMV_MMA=wide" "JAMBA_EXT_NONE=1" "JAMBA_EXT_GEMV_MMA=vec1"; do
    step "bench_model with $v (A/B; 2K prompts, batch 1 / 8, no transformers)"
    env $v timeout 100 python3 benchmarks/bench_model.py --batches 1,8 --prompts 2048 --no-hf --decode-steps 32 --budget-s 30 2>&1 | grep -E "^jamba_ext\+graph|^impl"
    cp benchmarks/results/bench_model.json "/tmp/ab_$v.json" 2>/dev/null
  done
  # one file for all (the device tool brings back at most 8 files)
  python3 -c "import json; json.dump({k: json.load(open('/tmp/ab_' + k + '.json')) for k in ('JAMBA_EXT_GEMV_MMA=wide', 'JAMBA_EXT_NONE=1', 'JAMBA_EXT_GEMV_MMA=vec1')}, open('$OUT/bench_model_ab.json', 'w'), indent=1)"
fi
step "bench_beam (generate(num_beams=4) of one block, 2K prompt: graph / eager / transformers)"
[ "${SKIP_MODEL:-0}" = 1 ] && echo "skipped (SKIP_MODEL=1)" || timeout 150 python3 benchmarks/bench_beam.py 2>&1 | grep -v "^\[transformers" | tail -12
step "bench_batch (offline generation of one block: static and continuous batching, shared prefix; batch 8, 32)"
# (batch 8 and 32, one timed run after the warm-up: ~2.5 min; the script's defaults, batch 1 / 8 / 16 / 32 and the
# median of two, take ~4.5 min: run it alone for those)
[ "${SKIP_MODEL:-0}" = 1 ] && echo "skipped (SKIP_MODEL=1)" || \
  timeout 200 python3 benchmarks/bench_batch.py --batch-sizes 8,32 --reps 1 2>&1 | tail -16
step "bench_sampling (sample_rows against the pick in torch ops; bf16, V = 65536; JSON not copied: 8 files at most)"
timeout 100 python3 benchmarks/bench_sampling.py 2>&1 | tail -22
step "bench_model"
[ "${SKIP_MODEL:-0}" = 1 ] && echo "skipped (SKIP_MODEL=1)" || timeout 200 python3 benchmarks/bench_model.py ${BENCH_MODEL_ARGS:---decode-steps 32 --budget-s 60} 2>&1 | tail -30
step "done"
} 2>&1 | tee "$LOG"
# (the device tool brings back 8 files: the log, 5 JSONs and the two PNGs the issues ask for)
cp benchmarks/results/bench_kernels.json benchmarks/results/bench_moe.json benchmarks/results/bench_model.json benchmarks/results/bench_beam.json \
   benchmarks/results/bench_batch.json benchmarks/results/bench_kernels.png benchmarks/results/bench_moe.png \
   "$OUT"/ 2>/dev/null
exit 0
