#!/usr/bin/env bash
# One GPU round for selective_scan work (device tool): build, the scan's CUDA tests,
# compute-sanitizer on the small cases, bench_kernels --only scan, and Nsight Compute
# stall reasons of the pipelined kernel at 1x8192. Output: $OUT/scan_round.log, $OUT/bench_kernels_scan.json
set -uo pipefail
OUT=${OUT:-/tmp/jamba_gpu_out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD JAMBA_COMMIT=${JAMBA_COMMIT:-unknown}
step() { echo; echo "=== $* ($(date +%T))"; }
{
step "build (commit $JAMBA_COMMIT)"
JAMBA_EXT_CUDA=1 pip install --no-build-isolation --no-deps -e . 2>&1 | grep -v "^ \|WARNING" | tail -2
step "scan tests"
timeout 150 python3 -m pytest -q -m cuda -k "selective_scan and not 2pow31" tests -p no:cacheprovider 2>&1 | tail -4
step "sanitizer (memcheck, racecheck)"
timeout 100 compute-sanitizer --tool memcheck --print-limit 10 python3 benchmarks/sanitize_cases.py 2>&1 | tail -3
timeout 100 compute-sanitizer --tool racecheck --print-limit 10 python3 benchmarks/sanitize_cases.py 2>&1 | tail -2
step "bench_kernels --only scan"
timeout 200 python3 benchmarks/bench_kernels.py --only scan 2>&1 | grep -v "^\s*$" | tail -40
cp benchmarks/results/bench_kernels.json "$OUT/bench_kernels_scan.json"

step "ncu stall reasons (1x8192)"
timeout 120 ncu --metrics regex:smsp__average_warps_issue_stalled_.*_per_issue_active\.ratio,smsp__inst_executed.sum,smsp__issue_active.avg.pct_of_peak_sustained_active,smsp__warps_active.avg.per_cycle_active,sm__pipe_fma_cycles_active.avg.pct_of_peak_sustained_active,sm__inst_executed_pipe_xu.avg.pct_of_peak_sustained_active \
     -k regex:selective_scan -c 1 python3 dev/ncu_scan.py 1 8192 2>&1 | grep -v "^==\|Warning" | awk '$NF != "0" && $NF != "0.00"' | tail -40

step "done"
} 2>&1 | tee "$OUT/scan_round.log"
