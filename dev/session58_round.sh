#!/usr/bin/env bash
# Session 58's device calls on one H200 (device tool), one script, by MODE:
#   opring  dev/cuda/swap_ab_lab.cu opring (no extension build): the hoisted loop on the op's ring, W from HBM or L2,
#           tile-contiguous W boxes, the ring alone (no math), L2 cache policies on the TMA loads
#   clocks  (ran at 0eb1add, s58_clocks_0eb1add.log: 1965-1980 MHz in every phase) the SM clock and power through
#           each phase (nvidia-smi every 50 ms): the lab's opring rows, the op's gate_up / down alone
#           (dev/moe_epi_ab.py ksweep default), bench_moe at 2048 tokens (ours, dense mm); the swap tests first
#   diag    (ran at 88195bd, s58_diag_88195bd.log; the switch removed after) DIAGNOSTIC: ksweep with the swap
#           engine's epilogue skipped (JAMBA_EXT_MOE_SWAP_DIAG=1) and its math skipped (2: the TMA ring alone),
#           against the default
#   hint    (ran at 75a34df: no gain, removed after) the extension's build; the swap tests (test_moe_swap_engine with
#           the same-bits cases JAMBA_EXT_MOE_L2HINT=0 and 1; test_moe.py with swap forced); bench_moe at 1536 / 2048
#           / 2304 / 4096 tokens (ours, l2hint0, l2hint1, swap forced, dense mm); dev/moe_epi_ab.py ksweep l2hint
#   next    (ran at f297029 in session 59, s59_persist_f297029.log: 30-45% slower, removed) the persistent swap kernel
#           (JAMBA_EXT_MOE_SWAP_PERSIST=1): build; the swap tests (same bits, the profiler sees it run);
#           compute-sanitizer memcheck and racecheck on sanitize_cases.py swap; test_moe.py with swap and persist
#           forced; bench_moe at 1536 / 2048 / 2304 (ours, persist, dense mm); dev/moe_epi_ab.py ksweep persist
#   preload (ran at 991af43, s58_preload_991af43.log: kept as the default) the swap engine's down epilogue reading
#           sorted[] and the weights from shared memory
#           (JAMBA_EXT_MOE_SWAP_PRELOAD; 0 = before): build, swap tests, bench_moe at 1536 / 2048 / 2304 (ours,
#           nopreload, dense mm), test_moe.py with swap forced, dev/moe_epi_ab.py ksweep preload
# Usage on the device: JAMBA_COMMIT=<sha> bash dev/session58_round.sh MODE   (output: $OUT/round.log)
OUT=${OUT:-/tmp/jamba_round_out}
. benchmarks/round_env.sh
mode=${1:-next}
{
echo "commit $JAMBA_COMMIT, mode $mode"
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,power.draw --format=csv,noheader
case "$mode" in
opring)
  step "dev/cuda/swap_ab_lab.cu opring"
  nvcc -O3 -std=c++17 -gencode=arch=compute_90a,code=sm_90a dev/cuda/swap_ab_lab.cu -o /tmp/swap_ab || exit 1
  timeout 200 /tmp/swap_ab opring ;;
clocks)
  echo "mode clocks ran at 0eb1add (its ksweep set is removed)"; exit 2 ;;
diag)
  echo "mode diag ran at 88195bd (its kernel switch is removed)"; exit 2 ;;
next)
  echo "mode next ran at f297029 in session 59 (s59_persist_f297029.log; the persistent kernel is removed)"; exit 2 ;;
preload)
  echo "mode preload ran at 991af43 (kept as the default)"; exit 2 ;;
hint)
  echo "mode hint ran at 75a34df (its kernel change is removed)"; exit 2 ;;
*) echo "unknown mode $mode"; exit 2 ;;
esac
step done
} 2>&1 | tee "$OUT/round.log"
