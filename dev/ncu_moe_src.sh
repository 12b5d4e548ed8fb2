#!/usr/bin/env bash
# Source-level Nsight Compute profile of the shipped MoE wgmma engine (moe_wgmma_persist_kernel) at T tokens (default
# 4096; Jamba-v0.1, bf16), device tool, one call: builds, profiles the gate_up launch (launch 1) and the down launch
# (launch 2) of one moe_experts call (dev/ncu_moe.py), writes for each the details page and the per-line stall summary
# (dev/ncu_src_summary.py) and the gzipped per-SASS-line CSV to $OUT. ncu locks the clocks at base: read durations
# as ratios.
#   Usage on the device:  bash dev/ncu_moe_src.sh [T] [fp8]   (fp8: moe_experts_fp8's moe_wgmma_f8ws_kernel, session 38)
#   Env: KRE, the kernel-name regex (default by mode; session 55: moe_swap for the swap-AB engine); NO_BUILD=1 skips
#   the build (the caller built); MEM=1 adds the memory workload section (L2 / DRAM throughput and hit rates).
T=${1:-4096}
MODE=${2:-bf16}
DEF_KRE=moe_wgmma_persist; [ "$MODE" = fp8 ] && DEF_KRE=moe_wgmma_f8
KRE=${KRE:-$DEF_KRE}
EXTRA=(); [ "${MEM:-0}" = 1 ] && EXTRA=(--section MemoryWorkloadAnalysis)
OUT=${OUT:-/tmp/jamba_gpu_out}; mkdir -p "$OUT"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
[ "${NO_BUILD:-0}" = 1 ] || JAMBA_EXT_CUDA=1 pip install --no-build-isolation --no-deps -e . 2>&1 | tail -1
for g in gate_up down; do
  skip=0; [ $g = down ] && skip=1
  timeout 170 ncu --section SpeedOfLight --section WarpStateStats --section SchedulerStats --section SourceCounters \
    "${EXTRA[@]}" --import-source yes -k regex:$KRE -s $skip -c 1 -f -o /tmp/moe_$g python3 dev/ncu_moe.py $T $MODE \
    > /tmp/ncu_run_$g.log 2>&1; echo "ncu $g rc $?"; tail -2 /tmp/ncu_run_$g.log
  ncu -i /tmp/moe_$g.ncu-rep --page details > "$OUT/ncu_moe_${g}_details.txt" 2>&1
  ncu -i /tmp/moe_$g.ncu-rep --page source --csv --print-source sass > /tmp/src_$g.csv 2>&1
  python3 dev/ncu_src_summary.py /tmp/src_$g.csv 30 2>&1 | cut -c1-300 > "$OUT/ncu_moe_${g}_stalls.txt"
  gzip -c /tmp/src_$g.csv > "$OUT/ncu_moe_${g}_src.csv.gz" # every SASS line's samples, for summaries by code region
  grep -v "^\s*$" "$OUT/ncu_moe_${g}_details.txt" \
    | grep -i "duration\|throughput\|stall\|cycles per\|issue\|eligible\|active warps\|hit rate\|busy" | head -32
  head -40 "$OUT/ncu_moe_${g}_stalls.txt"
done
