#!/usr/bin/env bash
# Session 59's device calls on one H200 (device tool), by MODE:
#   w2d  why gate_up's k loop is slower than down's (s58_diag_88195bd.log: 689-700 against 834-852 TFLOP/s without
#        epilogues): the lab's mode gu (dev/cuda/swap_ab_lab.cu: gate_up's 3-d pair W box and its ldmatrix rows,
#        each alone, against down's shape); then the extension's build, the swap tests (same bits with the EXPERIMENT
#        JAMBA_EXT_MOE_SWAP_W2D=1: gate_up's W in two 2-d boxes), compute-sanitizer memcheck / racecheck on
#        sanitize_cases.py swap, bench_moe at 1536 / 2048 / 2304 tokens (ours, w2d, dense mm), ksweep w2d
# Usage on the device: JAMBA_COMMIT=<sha> bash dev/session59_round.sh MODE   (output: $OUT/round.log)
OUT=${OUT:-/tmp/jamba_round_out}
. benchmarks/round_env.sh
mode=${1:-w2d}
{
echo "commit $JAMBA_COMMIT, mode $mode"
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,power.draw --format=csv,noheader
case "$mode" in
w2d)
  step "dev/cuda/swap_ab_lab.cu gu"
  nvcc -O3 -std=c++17 -gencode=arch=compute_90a,code=sm_90a dev/cuda/swap_ab_lab.cu -o /tmp/swap_ab && \
    timeout 150 /tmp/swap_ab gu
  build_cuda
  step "CUDA tests: test_moe_swap_engine (same bits with JAMBA_EXT_MOE_SWAP_W2D=1)"
  timeout 120 python3 -m pytest -q -m cuda -x --timeout=100 --tb=short tests/test_moe.py -k "swap" \
    -p no:cacheprovider 2>&1 | tail -3
  step "compute-sanitizer memcheck, racecheck: benchmarks/sanitize_cases.py swap"
  timeout 150 compute-sanitizer --tool memcheck --print-limit 20 python3 benchmarks/sanitize_cases.py swap 2>&1 \
    | tail -4
  timeout 200 compute-sanitizer --tool racecheck --print-limit 20 python3 benchmarks/sanitize_cases.py swap 2>&1 \
    | tail -4
  step "bench_moe at 1536 / 2048 / 2304 tokens"
  timeout 120 python3 benchmarks/bench_moe.py --tokens 1536,2048,2304 --only "ours,ours:wgmma w2d,dense mm" \
    --name bench_moe_w2d 2>&1 | grep "^ours\|^dense\|^device" | cut -c1-150
  cp benchmarks/results/bench_moe_w2d.json "$OUT/" 2>/dev/null
  step "dev/moe_epi_ab.py ksweep w2d"
  timeout 100 python3 dev/moe_epi_ab.py ksweep w2d 2>&1 | grep -v "Warning\|_warn" | tail -9 ;;
*) echo "unknown mode $mode"; exit 2 ;;
esac
step done
} 2>&1 | tee "$OUT/round.log"
