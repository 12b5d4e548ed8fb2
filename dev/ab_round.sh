#!/usr/bin/env bash
# One GPU call for the A/B round of session 3: build once, the scan variants (bench_kernels --only scan),
# then benchmarks/ab_memkernels.sh and benchmarks/ab_moe.sh (each skips its build). Logs into $OUT.
set -uo pipefail
OUT=${OUT:-/tmp/jamba_gpu_out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD JAMBA_COMMIT=${JAMBA_COMMIT:-unknown}
{
echo "=== build (commit $JAMBA_COMMIT, $(date +%T))"
JAMBA_EXT_CUDA=1 pip install --no-build-isolation --no-deps -e . 2>&1 | grep -v "^ \|WARNING" | tail -1
echo "=== bench_kernels --only scan ($(date +%T))"
timeout 150 python3 benchmarks/bench_kernels.py --only scan 2>&1 | grep -v "^\s*$" | tail -40
cp benchmarks/results/bench_kernels.json "$OUT/bench_kernels_scan.json"
} 2>&1 | tee "$OUT/ab_round.log"
timeout 270 bash benchmarks/ab_memkernels.sh > /dev/null 2>&1
timeout 200 bash benchmarks/ab_moe.sh > /dev/null 2>&1
echo "=== done ($(date +%T))" >> "$OUT/ab_round.log"
