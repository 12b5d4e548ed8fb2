#!/usr/bin/env bash
# selective_scan_bwd work round (device tool, one call): build, its CUDA tests and the scan's autograd tests,
# bench_kernels scan_bwd, then an Nsight Compute profile of one call at 1x2048 (pipe use, warp states, per-line
# stall summary).
# Usage: JAMBA_COMMIT=<sha> [NCU=0] [AB_ENV="VAR=1 ..."] bash dev/scan_bwd_round.sh   (log: $OUT/scan_bwd.log; AB_ENV:
# dev/scan_bwd_ab.py's variants, environment settings, timed in turns against the default)
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 JAMBA_COMMIT=${JAMBA_COMMIT:-unknown}
OUT=${OUT:-/tmp/jamba_gpu_out}; mkdir -p "$OUT"
{
echo "=== commit $JAMBA_COMMIT: build"
JAMBA_EXT_CUDA=1 pip install --no-build-isolation --no-deps -e . 2>&1 | tail -1
timeout 200 python3 -m pytest -q -m cuda --timeout=120 tests/test_selective_scan_bwd.py -p no:cacheprovider 2>&1 \
  | tail -3
timeout 200 python3 -m pytest -q --timeout=120 tests/test_selective_scan.py -k "grad or autograd" \
  -p no:cacheprovider 2>&1 | tail -3
[ -n "${AB_ENV:-}" ] && timeout 200 python3 dev/scan_bwd_ab.py $AB_ENV
timeout 240 python3 benchmarks/bench_kernels.py --only scan_bwd 2>&1 | grep -v "^wrote"
cp benchmarks/results/bench_kernels.json "$OUT/bench_kernels_scan_bwd.json" 2>/dev/null
if [ "${NCU:-1}" = 1 ]; then
M=sm__inst_executed_pipe_xu.avg.pct_of_peak_sustained_active,sm__inst_executed_pipe_lsu.avg.pct_of_peak_sustained_active
M=$M,smsp__inst_executed.sum,sm__pipe_fma_cycles_active.avg.pct_of_peak_sustained_active
M=$M,sm__pipe_alu_cycles_active.avg.pct_of_peak_sustained_active,smsp__issue_active.avg.pct_of_peak_sustained_active
M=$M,l1tex__data_pipe_lsu_wavefronts_mem_shared.sum,l1tex__data_bank_conflicts_pipe_lsu_mem_shared.sum
timeout 200 ncu --section WarpStateStats --section SchedulerStats --section Occupancy --section SourceCounters \
  --metrics $M -k regex:scan_bwd_kernel -c 1 -f -o $OUT/sbwd python3 dev/ncu_scan_bwd.py 1 2048 > $OUT/ncu_run.log 2>&1
tail -2 $OUT/ncu_run.log
ncu -i $OUT/sbwd.ncu-rep --page details 2>&1 | grep -v "^\s*$" | grep -v "^    ---" | head -90
ncu -i $OUT/sbwd.ncu-rep --page source --csv --print-source sass > $OUT/src_sass.csv 2>&1
python3 dev/ncu_src_summary.py $OUT/src_sass.csv 30 2>&1 | cut -c1-260
rm -f $OUT/src_sass.csv
fi
} 2>&1 | tee "$OUT/scan_bwd.log"
