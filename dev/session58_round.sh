#!/usr/bin/env bash
# Session 58's device calls on one H200 (device tool), one script, by MODE:
#   opring  dev/cuda/swap_ab_lab.cu opring (no extension build): the hoisted loop on the op's ring, W from HBM or L2,
#           tile-contiguous W boxes, the ring alone (no math), L2 cache policies on the TMA loads
#   hint    the extension's build; the swap tests (test_moe_swap_engine with the same-bits cases JAMBA_EXT_MOE_L2HINT=0
#           and 1; test_moe.py with swap forced); bench_moe at 1536 / 2048 / 2304 / 4096 tokens (ours, l2hint0, l2hint1,
#           swap forced, dense mm); dev/moe_epi_ab.py ksweep l2hint
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
hint)
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
