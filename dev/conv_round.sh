#!/usr/bin/env bash
# Short GPU call: build, the causal_conv1d CUDA tests, bench_kernels --only conv (SiLU A/B rows). $OUT/conv_round.log
set -uo pipefail
OUT=${OUT:-/tmp/jamba_gpu_out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD JAMBA_COMMIT=${JAMBA_COMMIT:-unknown}
{
echo "=== build (commit $JAMBA_COMMIT, $(date +%T))"
JAMBA_EXT_CUDA=1 pip install --no-build-isolation --no-deps -e . 2>&1 | grep -v "^ \|WARNING" | tail -1
echo "=== bench_kernels --only conv ($(date +%T))"
timeout 60 python3 benchmarks/bench_kernels.py --only conv 2>&1 | grep -v "^\s*$" | cut -c1-200 | tail -12
cp benchmarks/results/bench_kernels.json "$OUT/bench_kernels_conv.json"
echo "=== conv CUDA tests ($(date +%T))"
timeout 70 python3 -m pytest -q -m cuda -k "conv" tests -p no:cacheprovider 2>&1 | tail -2
echo "=== done ($(date +%T))"
} 2>&1 | tee "$OUT/conv_round.log"
