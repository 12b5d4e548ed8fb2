#!/usr/bin/env bash
# Nsight Compute on the scan at 1x8192 (device tool): build, then stall reasons / instruction mix of the
# pipelined kernel for each JAMBA_EXT_SCAN_G given (default "8 4"). Output: $OUT/ncu_scan.log
set -uo pipefail
OUT=${OUT:-/tmp/jamba_gpu_out}; mkdir -p "$OUT"
export PYTHONPATH=$PWD
{
JAMBA_EXT_CUDA=1 pip install --no-build-isolation --no-deps -e . 2>&1 | tail -1
for g in ${GS:-8 4}; do
  echo "=== G=$g"
  JAMBA_EXT_SCAN_G=$g timeout 200 ncu --section WarpStateStats --section SchedulerStats --section InstructionStats \
    --section SourceCounters --section LaunchStats --section Occupancy -k regex:pc_kernel -c 1 python3 dev/ncu_scan.py 1 8192 2>&1 | grep -v "^==WARNING\|^    Warning"
done
} 2>&1 | tee "$OUT/ncu_scan.log"
