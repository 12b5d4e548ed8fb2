#!/usr/bin/env bash
# The MoE part of a GPU round in one device call: build, the MoE CUDA tests, compute-sanitizer memcheck of every
# MoE engine, and bench_moe (variants timed in turns). Everything goes to $OUT/moe_round.log and the bench JSON.
# Usage on the device:  JAMBA_COMMIT=<sha> [JAMBA_EXT_AB_ROWS=1] bash benchmarks/run_gpu_moe.sh [bench_moe args]
#   e.g. bash benchmarks/run_gpu_moe.sh --tokens 512,2048,4096 --only "ours:wgmma,(b) sorted_mm"
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
export PYTHONPATH=$PWD
LOG="$OUT/moe_round.log"
step() { echo; echo "=== $* ($(date +%H:%M:%S))"; }
{
step "environment (commit ${JAMBA_COMMIT:-unknown})"
nvidia-smi --query-gpu=name,driver_version,clocks.current.sm --format=csv,noheader
step "build"
JAMBA_EXT_CUDA=1 pip install --no-build-isolation --no-deps -e . 2>&1 | grep -v "^ " | tail -2
python3 -c "import jamba_ext; assert jamba_ext.has_cuda_kernels(), 'built without CUDA'" || exit 1
step "MoE tests marked cuda"
timeout 200 python3 -m pytest -q -m cuda --timeout=180 tests/test_moe.py tests/test_model.py -p no:cacheprovider 2>&1 | tail -25
step "compute-sanitizer memcheck of every MoE engine (bench_moe --sanitize)"
timeout 150 compute-sanitizer --tool memcheck --print-limit 20 python3 benchmarks/bench_moe.py --sanitize 2>&1 | tail -6
step "bench_moe $*"
timeout 240 python3 benchmarks/bench_moe.py --name bench_moe_round "$@" 2>&1 | grep -v "_warn_once\|UserWarning" | tail -80
step "done"
} 2>&1 | tee "$LOG"
cp benchmarks/results/bench_moe_round.json "$OUT"/ 2>/dev/null
exit 0
