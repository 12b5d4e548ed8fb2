#!/usr/bin/env bash
# The whole GPU round in one call (device tool, H200): build, every test (CUDA ones included),
# compute-sanitizer on small cases of every kernel, and the benchmarks. Everything goes to $OUT:
#   gpu_round.log (all output) and bench_*.json / bench_*.png.
# Usage on the device:  JAMBA_COMMIT=<sha> bash benchmarks/run_gpu.sh [quick]
#   quick: skip the model benchmark and the slow tests.
set -uo pipefail
OUT=${OUT:-/tmp/jamba_gpu_out}
mkdir -p "$OUT"
LOG="$OUT/gpu_round.log"
export PYTHONUNBUFFERED=1 JAMBA_COMMIT=${JAMBA_COMMIT:-unknown} PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
mode=${1:-full}
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

step "tests (all, CUDA included)"
if [ "$mode" = quick ]; then
  python3 -m pytest -q -x --timeout=900 tests -p no:cacheprovider 2>&1 | tail -40
else
  JAMBA_SLOW=1 python3 -m pytest -q --timeout=900 tests -p no:cacheprovider 2>&1 | tail -60
fi

step "compute-sanitizer memcheck"
compute-sanitizer --tool memcheck --print-limit 20 python3 benchmarks/sanitize_cases.py 2>&1 | tail -15
step "compute-sanitizer racecheck"
compute-sanitizer --tool racecheck --print-limit 20 python3 benchmarks/sanitize_cases.py 2>&1 | tail -15

step "bench_kernels"
python3 benchmarks/bench_kernels.py 2>&1 | tail -60
step "bench_moe"
python3 benchmarks/bench_moe.py 2>&1 | tail -40
if [ "$mode" != quick ]; then
  step "bench_model"
  python3 benchmarks/bench_model.py 2>&1 | tail -30
fi
step "done"
} 2>&1 | tee "$LOG"
cp benchmarks/results/bench_kernels.json benchmarks/results/bench_moe.json benchmarks/results/bench_model.json \
   benchmarks/results/bench_kernels.png benchmarks/results/bench_moe.png benchmarks/results/bench_model.png \
   "$OUT"/ 2>/dev/null
exit 0
