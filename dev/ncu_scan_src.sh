#!/usr/bin/env bash
# Source-level Nsight Compute profile of the shipped selective_scan at 1x8192 bf16 (device tool, one call):
# builds, profiles one call (dev/ncu_scan.py), writes the report, details page, and per-line stall summaries to $OUT.
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
JAMBA_EXT_CUDA=1 pip install --no-build-isolation --no-deps -e . 2>&1 | tail -1
M=sm__inst_executed_pipe_xu.avg.pct_of_peak_sustained_active,sm__pipe_shared_cycles_active.avg.pct_of_peak_sustained_active,sm__inst_executed_pipe_lsu.avg.pct_of_peak_sustained_active,smsp__inst_executed.sum,sm__pipe_fma_cycles_active.avg.pct_of_peak_sustained_active,sm__pipe_alu_cycles_active.avg.pct_of_peak_sustained_active,smsp__issue_active.avg.pct_of_peak_sustained_active,l1tex__data_pipe_lsu_wavefronts_mem_shared.sum,smsp__inst_executed_op_shared_ld.sum,smsp__inst_executed_op_shfl.sum
timeout 200 ncu --section WarpStateStats --section SchedulerStats --section SourceCounters --metrics $M --import-source yes -k regex:selective_scan -c 1 -f -o $OUT/scan_src python3 dev/ncu_scan.py 1 8192 > $OUT/ncu_run.log 2>&1; tail -3 $OUT/ncu_run.log
ncu -i $OUT/scan_src.ncu-rep --page details > $OUT/ncu_details.txt 2>&1
ncu -i $OUT/scan_src.ncu-rep --page source --csv --print-source sass > $OUT/src_sass.csv 2>&1
ls -la $OUT; grep -v "^\s*$" $OUT/ncu_details.txt | head -80
python3 dev/ncu_src_summary.py $OUT/src_sass.csv 25 2>&1 | cut -c1-300 | tee $OUT/sass_summary.txt
gzip -f $OUT/src_sass.csv
