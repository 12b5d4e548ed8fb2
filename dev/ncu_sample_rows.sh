#!/usr/bin/env bash
# Nsight Compute profile of jamba.sample_rows' kernel (session 53), device tool: for each "B:SETTING" given (default
# 1:top_p 1:top_k 16:top_p), the second launch of dev/ncu_sample_rows.py: the details page (speed of light, warp
# states, scheduler) and the stall samples by SASS line (dev/ncu_src_summary.py; the CUDA-line view of the source page
# has no sampling column in this ncu) to $OUT, at the finest warp sampling interval.
# Assumes the CUDA build is in place (build_cuda). ncu locks the clocks at base: read durations as ratios.
#   Usage on the device:  bash dev/ncu_sample_rows.sh [B:SETTING ...]
OUT=${OUT:-/tmp/jamba_gpu_out}; mkdir -p "$OUT"
cases=("$@"); [ ${#cases[@]} -eq 0 ] && cases=(1:top_p 1:top_k 16:top_p)
for c in "${cases[@]}"; do
  B=${c%%:*}; S=${c#*:}; tag=sr_${B}_$S
  timeout 150 ncu --warp-sampling-interval 0 --section SpeedOfLight --section WarpStateStats \
    --section SchedulerStats --section SourceCounters \
    --section LaunchStats --section Occupancy --import-source yes -k regex:sr_ -s 1 -c 1 -f -o /tmp/$tag \
    python3 dev/ncu_sample_rows.py "$B" "$S" > /tmp/ncu_$tag.log 2>&1; echo "ncu $tag rc $?"; tail -2 /tmp/ncu_$tag.log
  ncu -i /tmp/$tag.ncu-rep --page details > "$OUT/ncu_${tag}_details.txt" 2>&1
  ncu -i /tmp/$tag.ncu-rep --page source --csv --print-source sass > /tmp/src_$tag.csv 2>&1
  python3 dev/ncu_src_summary.py /tmp/src_$tag.csv 40 2>&1 | cut -c1-260 > "$OUT/ncu_${tag}_sass.txt"
  grep -v "^\s*$" "$OUT/ncu_${tag}_details.txt" \
    | grep -i "sr_\|duration\|throughput\|stall\|cycles per\|issue\|eligible\|active warps\|registers" | head -24
  head -45 "$OUT/ncu_${tag}_sass.txt"
done
