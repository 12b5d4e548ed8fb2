#!/usr/bin/env bash
# Session 57's device calls on one H200 (device tool), one script, by MODE:
#   lab     dev/cuda/swap_ab_lab.cu traffic (no extension build): the swap kernel's k loop with 0-48 KB a k tile of
#           traffic into shared memory (bulk copies from L2, stores from registers, L2 loads into registers), and
#           with its A fragment loaded a k16 step ahead; then the lab's default rows
#   bisect  dev/cuda/swap_ab_lab.cu bisect: which part of the k loop's barrier protocol costs (no traffic), against
#           the plain k_rs loop, in turns; the lab's SASS into $OUT/lab_sass.txt
#   depth   dev/cuda/swap_ab_lab.cu depth: that protocol with 1 / 2 / 3 wgmma groups left in flight, the A fragment a
#           step ahead, relaxed barrier operations; bulk traffic 0 and 48 KB a k tile
#   early   dev/cuda/swap_ab_lab.cu early: the barrier operations after a step's wgmmas are issued (EARLY), 0-48 KB;
#           the lab's SASS into $OUT/lab_sass.txt
#   regs    dev/cuda/swap_ab_lab.cu regs: the loop at 384 threads (168 registers a thread at compile time) against 288
#           (one producer warp, 224 registers, no setmaxnreg), NC 8 / 9 / 10; SASS into $OUT/lab_sass.txt
#   batch   dev/cuda/swap_ab_lab.cu batch: a k tile's wgmmas as one group (CUTLASS's mainloop shape) against a group a
#           k16 step, NC 8 / 9 / 10; SASS into $OUT/lab_sass.txt
#   copy    dev/cuda/swap_ab_lab.cu copy: the bulk-copy ring alone (2-4 slots of 16-48 KB): the L2 -> shared-memory rate
#   hoist   dev/cuda/swap_ab_lab.cu hoist: today's loop with its loop-invariant values pinned (asm volatile movs) and
#           the slot / parity as counters; then the extension's build and moe_swap_kernel's SASS ($OUT/swap_sass.txt)
#   pin     (ran at d0fb081: no gain, removed after) the swap engine's k loop with its invariants pinned (sw_pinned;
#           JAMBA_EXT_MOE_SWAP_NOPIN=1 the loop before): swap tests, dev/moe_epi_ab.py pin, bench_moe at 1536 / 2048 /
#           2304 tokens (ours, nopin, dense mm), moe_swap_kernel's loop SASS
#   wpf     (ran at b4d0ba5: no gain, removed after) EXPERIMENT JAMBA_EXT_MOE_SWAP_WPF=d (the swap producer
#           prefetches the W k tile d tiles ahead into L2): the swap tests and test_moe.py with swap forced,
#           dev/moe_epi_ab.py wpf 2048 2304, bench_moe at 1536 / 2048 / 2304 tokens (ours, wpf4, wpf8, dense mm)
#   opring  (ran in session 58 at 399bbdf, s58_next_399bbdf.log) dev/cuda/swap_ab_lab.cu opring: the hoisted
#           loop on the op's ring (4 stages, a 16 KB W box + 8 token boxes a k tile by TMA), W from HBM or L2, 8 token
#           boxes or one: which of those costs between the lab's 761 TFLOP/s and the op's ~670
#   next    (ran in session 58 at 399bbdf, s58_next_399bbdf.log; BIGBOX removed, WARPSCAN made the default after)
#           opring as above, then the
#           extension's build, the swap tests (test_moe_swap_engine with the same-bits cases of the EXPERIMENTs
#           JAMBA_EXT_MOE_SWAP_BIGBOX=1 and JAMBA_EXT_MOE_SWAP_WARPSCAN=1; test_moe.py with swap forced), bench_moe at
#           1536 / 2048 / 2304 tokens (ours, bigbox, warpscan, dense mm), dev/moe_epi_ab.py ksweep warpscan
# Usage on the device: JAMBA_COMMIT=<sha> bash dev/session57_round.sh MODE   (output: $OUT/round.log)
OUT=${OUT:-/tmp/jamba_round_out}
. benchmarks/round_env.sh
mode=${1:-lab}
# lab_mode MODE [sass [KERNEL_RE]]: build the lab (KERNEL_RE: print those kernels' register counts from ptxas), its SASS
# into $OUT/lab_sass.txt with sass, then run it in MODE
lab_mode() {
  step "dev/cuda/swap_ab_lab.cu $1"
  if [ -n "${3:-}" ]; then
    nvcc -O3 -std=c++17 -gencode=arch=compute_90a,code=sm_90a -Xptxas -v dev/cuda/swap_ab_lab.cu -o /tmp/swap_ab 2>&1 \
      | grep -A1 "$3" | grep -o "Used [0-9]* registers\|C75[0-9]*" | sort | uniq -c
  else
    nvcc -O3 -std=c++17 -gencode=arch=compute_90a,code=sm_90a dev/cuda/swap_ab_lab.cu -o /tmp/swap_ab || exit 1
  fi
  [ "${2:-}" = sass ] && cuobjdump -sass /tmp/swap_ab > "$OUT/lab_sass.txt" 2>&1
  timeout 120 /tmp/swap_ab "$1"
}
{
echo "commit $JAMBA_COMMIT, mode $mode"
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,power.draw --format=csv,noheader
case "$mode" in
lab)
  lab_mode traffic
  step "dev/cuda/swap_ab_lab.cu (the default rows)"
  timeout 60 /tmp/swap_ab ;;
bisect|early) lab_mode "$mode" sass ;;
depth|copy|opring) lab_mode "$mode" ;;
regs) lab_mode regs sass "k_traffic" ;;
batch) lab_mode batch sass "k_traffic.*Li384ELb1" ;;
hoist)
  lab_mode hoist sass
  build_cuda
  cuobjdump -sass jamba_ext/_C.abi3.so 2>/dev/null | awk '/Function :/ {p = /moe_swap_kernel/} p' > "$OUT/swap_sass.txt"
  grep -c "Function" "$OUT/swap_sass.txt" ;;
next)
  echo "mode next ran at 399bbdf (BIGBOX removed after, WARPSCAN the default)"; exit 2 ;;
pin)
  echo "mode pin ran at d0fb081 (its kernel change is removed)"; exit 2 ;;
wpf)
  echo "mode wpf ran at b4d0ba5 (its kernel change is removed)"; exit 2 ;;
*) echo "unknown mode $mode"; exit 2 ;;
esac
step done
} 2>&1 | tee "$OUT/round.log"
