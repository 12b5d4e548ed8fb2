#!/usr/bin/env bash
# Session 4's A/B round in two device calls (each builds only when the package is not built yet):
#   bash dev/ab_round_s4.sh mem    # conv forward / state update variants (dev/ab_mem.sh) + MoE tests and bench_moe A/B rows
#   bash dev/ab_round_s4.sh scan   # selective_scan variants (dev/ab_scan.sh)
# Output under $OUT: ab_round_<part>.log and the scripts' own logs / JSON.
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD JAMBA_COMMIT=${JAMBA_COMMIT:-unknown}
part=${1:-mem}
{
echo "=== build check (commit $JAMBA_COMMIT, part $part) $(date +%T)"
python3 -c "import jamba_ext, sys; sys.exit(0 if jamba_ext.has_cuda_kernels() else 1)" 2>/dev/null || \
    JAMBA_EXT_CUDA=1 pip install --no-build-isolation --no-deps -e . 2>&1 | grep -v "^ \|WARNING" | tail -2
python3 -c "import jamba_ext; print('has_cuda_kernels', jamba_ext.has_cuda_kernels())"
} 2>&1 | tee "$OUT/ab_round_$part.log"
if [ "$part" = mem ]; then
    bash dev/ab_mem.sh
    {
    echo "=== MoE CUDA tests $(date +%T)"
    timeout 90 python3 -m pytest -q -m cuda tests/test_moe.py -p no:cacheprovider --timeout=80 2>&1 | tail -3
    echo "=== bench_moe A/B rows $(date +%T)"
    JAMBA_EXT_AB_ROWS=1 timeout 100 python3 benchmarks/bench_moe.py --tokens 1,8,64,4096,16384 \
        --skip "ours:mma,ours:mma256,ours:mma64,ours:gemv,(a) hf_loop,(c) grouped_mm" 2>&1 | grep -v "Warn\|warn" | tail -40
    cp benchmarks/results/bench_moe.json "$OUT/bench_moe_ab.json"
    echo "=== done $(date +%T)"
    } 2>&1 | tee -a "$OUT/ab_round_$part.log"
else
    bash dev/ab_scan.sh
fi
