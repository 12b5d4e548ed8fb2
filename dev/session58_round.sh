#!/usr/bin/env bash
# Session 58's device calls on one H200 (device tool), one script, by MODE:
#   opring  dev/cuda/swap_ab_lab.cu opring (no extension build): the hoisted loop on the op's ring, W from HBM or L2,
#           tile-contiguous W boxes, the ring alone (no math), L2 cache policies on the TMA loads
#   clocks  the SM clock and power through each phase (nvidia-smi every 50 ms): the lab's opring rows, the op's
#           gate_up / down alone (dev/moe_epi_ab.py ksweep default), bench_moe at 2048 tokens (ours, dense mm); the
#           swap tests first
#   diag    DIAGNOSTIC (its kernel switch removed after the call): ksweep with the swap engine's epilogue skipped
#           (JAMBA_EXT_MOE_SWAP_DIAG=1) and its math skipped (2: the TMA ring alone), against the default
#   hint    (ran at 75a34df: no gain, removed after) the extension's build; the swap tests (test_moe_swap_engine with
#           the same-bits cases JAMBA_EXT_MOE_L2HINT=0 and 1; test_moe.py with swap forced); bench_moe at 1536 / 2048
#           / 2304 / 4096 tokens (ours, l2hint0, l2hint1, swap forced, dense mm); dev/moe_epi_ab.py ksweep l2hint
# Usage on the device: JAMBA_COMMIT=<sha> bash dev/session58_round.sh MODE   (output: $OUT/round.log)
OUT=${OUT:-/tmp/jamba_round_out}
. benchmarks/round_env.sh
mode=${1:-hint}
{
echo "commit $JAMBA_COMMIT, mode $mode"
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,power.draw --format=csv,noheader
case "$mode" in
opring)
  step "dev/cuda/swap_ab_lab.cu opring"
  nvcc -O3 -std=c++17 -gencode=arch=compute_90a,code=sm_90a dev/cuda/swap_ab_lab.cu -o /tmp/swap_ab || exit 1
  timeout 200 /tmp/swap_ab opring ;;
clocks)
  build_cuda
  step "CUDA tests: test_moe.py -k swap"
  timeout 150 python3 -m pytest -q -m cuda -x --timeout=120 --tb=short tests/test_moe.py -k "swap" \
    -p no:cacheprovider 2>&1 | tail -2
  nvcc -O3 -std=c++17 -gencode=arch=compute_90a,code=sm_90a dev/cuda/swap_ab_lab.cu -o /tmp/swap_ab || exit 1
  nvidia-smi --query-gpu=timestamp,clocks.sm,power.draw --format=csv,noheader,nounits -lms 50 > "$OUT/smi.csv" &
  smi=$!
  mark() { echo "$(date +%s.%N) $1" >> "$OUT/marks.txt"; }
  sleep 1; mark lab; step "dev/cuda/swap_ab_lab.cu opring"
  timeout 200 /tmp/swap_ab opring
  mark ksweep; step "dev/moe_epi_ab.py ksweep default"
  timeout 150 python3 dev/moe_epi_ab.py ksweep default 2>&1 | grep -v "Warning\|_warn" | tail -5
  mark bench; step "bench_moe at 2048 tokens (ours, dense mm)"
  timeout 100 python3 benchmarks/bench_moe.py --tokens 2048 --only "ours,dense mm" --name bench_moe_clk 2>&1 \
    | grep "^ours\|^dense\|^device" | cut -c1-150
  mark end; sleep 1; kill $smi
  step "SM clock (MHz) and power (W) a phase: median, 10th-90th percentile of the samples above 100 W"
  python3 dev/smi_phases.py "$OUT/smi.csv" "$OUT/marks.txt" ;;
diag)
  build_cuda
  step "dev/moe_epi_ab.py ksweep diag (DIAGNOSTIC: the swap engine without its epilogue / its math)"
  timeout 150 python3 dev/moe_epi_ab.py ksweep diag 2>&1 | grep -v "Warning\|_warn" | tail -14 ;;
hint)
  echo "mode hint ran at 75a34df (its kernel change is removed)"; exit 2
  build_cuda
  step "CUDA tests: test_moe_swap_engine, then test_moe.py with JAMBA_EXT_MOE_SWAP=1"
  timeout 150 python3 -m pytest -q -m cuda -x --timeout=120 --tb=short tests/test_moe.py -k "swap" \
    -p no:cacheprovider 2>&1 | tail -2
  JAMBA_EXT_MOE_SWAP=1 timeout 150 python3 -m pytest -q -m cuda --timeout=100 --tb=line tests/test_moe.py \
    -p no:cacheprovider 2>&1 | tail -2
  step "bench_moe at 1536 / 2048 / 2304 / 4096 tokens"
  timeout 240 python3 benchmarks/bench_moe.py --tokens 1536,2048,2304,4096 \
    --only "ours,ours:wgmma l2hint0,ours:wgmma l2hint1,ours:wgmma swap,dense mm" --name bench_moe_hint 2>&1 \
    | grep "^ours\|^dense\|^device" | cut -c1-150
  cp benchmarks/results/bench_moe_hint.json "$OUT/" 2>/dev/null
  step "dev/moe_epi_ab.py ksweep l2hint"
  timeout 150 python3 dev/moe_epi_ab.py ksweep l2hint 2>&1 | grep -v "Warning\|_warn" | tail -13 ;;
*) echo "unknown mode $mode"; exit 2 ;;
esac
step done
} 2>&1 | tee "$OUT/round.log"
