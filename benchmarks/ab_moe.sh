#!/usr/bin/env bash
# A/B of the MoE decode grids (issue 4) on the GPU machine, ~2-3 min: bench_moe at 1, 8, 64 tokens (impl auto =
# the decode engine there), once per JAMBA_EXT_MOE_DECODE setting, then the CUDA MoE tests under the new one.
#   old (unset)  moe_decode_kernel                       new        moe_decode_persist_kernel + PDL on the down GEMM
#   new_nopdl    moe_decode_persist_kernel, plain launches
# Usage on the device:  JAMBA_COMMIT=<sha> bash benchmarks/ab_moe.sh   (logs and JSON into $OUT)
set -uo pipefail
OUT=${OUT:-/tmp/jamba_gpu_out}
mkdir -p "$OUT"
LOG="$OUT/ab_moe.log"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
export JAMBA_BENCH_RESULTS=${JAMBA_BENCH_RESULTS:-$OUT}  # bench JSON straight into $OUT
{
if ! python3 -c "import jamba_ext, sys; sys.exit(0 if jamba_ext.has_cuda_kernels() else 1)" 2>/dev/null; then
    echo "=== build ($(date +%T))"
    JAMBA_EXT_CUDA=1 pip install --no-build-isolation --no-deps -e . 2>&1 | grep -v "^ " | tail -3
fi
for mode in old new new_nopdl; do
    echo; echo "=== bench_moe JAMBA_EXT_MOE_DECODE=$mode ($(date +%T))"
    if [ "$mode" = old ]; then unset JAMBA_EXT_MOE_DECODE; else export JAMBA_EXT_MOE_DECODE=$mode; fi
    timeout 150 python3 benchmarks/bench_moe.py --tokens 1,8,64 --only ours --reps 30 --name "bench_moe_ab_$mode"
done
echo; echo "=== CUDA MoE tests, JAMBA_EXT_MOE_DECODE=new ($(date +%T))"
JAMBA_EXT_MOE_DECODE=new timeout 240 python3 -m pytest -q -m cuda tests/test_moe.py -p no:cacheprovider 2>&1 | tail -15
echo; echo "=== compute-sanitizer racecheck + memcheck, new decode path ($(date +%T))"
JAMBA_EXT_MOE_DECODE=new timeout 90 compute-sanitizer --tool racecheck --print-limit 10 python3 benchmarks/bench_moe.py --sanitize 2>&1 | tail -4
JAMBA_EXT_MOE_DECODE=new timeout 90 compute-sanitizer --tool memcheck --print-limit 10 python3 benchmarks/bench_moe.py --sanitize 2>&1 | tail -4
echo "=== done ($(date +%T))"
} 2>&1 | tee "$LOG"
