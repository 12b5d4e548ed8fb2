#!/usr/bin/env bash
# Session 56's device calls on one H200 (device tool), one script: build, then by MODE
#   first   (ran at df6bcc7) chunk counters by which the swap engine's down GEMM started as its chunk's gate_up blocks
#           ended, and the blocks longest chunk first: where ptxas spilled (SASS), test_moe_swap_engine / wgmma_tiles /
#           swap_cuda_graph, dev/swap_sched_ab.py ab at 1536 / 2048 / 2304 tokens and ksweep, all of test_moe.py with
#           the swap engine forced (both ideas within +-1.5%: removed after)
#   epi     (ran at 48a6862 and f5db73f, the same kernels) the epilogues with their roundings in pairs (sw_act2 /
#           sw_scaled2): the swap tests, dev/swap_sched_ab.py ab 2048 2304 (variants in turns; f2f = a conversion a
#           value) and ksweep (the fit for both epilogues)
#   second  the kernel as kept (the pairs, no counters): the MoE and model CUDA tests by default, all of test_moe.py
#           with swap forced, memcheck / racecheck of the MoE engines with swap forced
#   bench   bench_moe at 1536 / 2048 / 2304 tokens (ours, swap with the f2f epilogue, the 128 x 256 tiles, dense mm),
#           then dev/swap_sched_ab.py ab 2048 and ksweep
# Usage on the device: JAMBA_COMMIT=<sha> bash dev/session56_round.sh MODE   (output: $OUT/round.log)
OUT=${OUT:-/tmp/jamba_round_out}
. benchmarks/round_env.sh
mode=${1:-first}
. dev/sr_round_lib.sh
sass_spills() {    # the local-memory instructions of moe_swap_kernel (bf16), with the lines before them
  step "SASS of moe_swap_kernel (bf16): STL / LDL and their neighbours"
  so=$(python3 -c "import jamba_ext._C as m; print(m.__file__)" 2>/dev/null || ls jamba_ext/*.so | head -1)
  cuobjdump -sass "$so" 2>/dev/null \
    | awk '/Function : .*moe_swap_kernel.*nv_bfloat16/{p=1} /Function : /{if ($0 !~ /moe_swap_kernel/) p=0} p' \
    > "$OUT/sass_swap.txt"
  wc -l < "$OUT/sass_swap.txt"; grep -n "Function\|STL\|LDL" "$OUT/sass_swap.txt" | head -20
  grep -B12 -A3 "STL\|LDL" "$OUT/sass_swap.txt" | cut -c1-110 | head -80
}
{
echo "commit $JAMBA_COMMIT, mode $mode"
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem --format=csv,noheader
build_cuda
case "$mode" in
first)
  sass_spills
  step "CUDA tests: test_moe_swap_engine, test_moe_wgmma_tiles, test_moe_swap_cuda_graph"
  timeout 200 python3 -m pytest -q -m cuda -x --timeout=150 --tb=short tests/test_moe.py \
    -k "swap_engine or wgmma_tiles or swap_cuda_graph" -p no:cacheprovider 2>&1 | tail -15
  step "dev/swap_sched_ab.py ab 1536 2048 2304"
  timeout 150 python3 dev/swap_sched_ab.py ab 1536 2048 2304 2>&1 | grep -v Warning | tail -30
  step "dev/swap_sched_ab.py ksweep"
  timeout 100 python3 dev/swap_sched_ab.py ksweep 2>&1 | grep -v Warning | tail -8
  step "all of test_moe.py's CUDA tests with JAMBA_EXT_MOE_SWAP=1"
  JAMBA_EXT_MOE_SWAP=1 timeout 150 python3 -m pytest -q -m cuda --timeout=100 --tb=line tests/test_moe.py \
    -p no:cacheprovider 2>&1 | tail -6 ;;
epi)
  step "CUDA tests: test_moe_swap_engine, test_moe_wgmma_tiles, test_moe_swap_cuda_graph"
  timeout 200 python3 -m pytest -q -m cuda -x --timeout=150 --tb=short tests/test_moe.py \
    -k "swap_engine or wgmma_tiles or swap_cuda_graph" -p no:cacheprovider 2>&1 | tail -4
  step "dev/swap_sched_ab.py ab 2048 2304"
  timeout 200 python3 dev/swap_sched_ab.py ab 2048 2304 2>&1 | grep -v Warning | tail -30
  step "dev/swap_sched_ab.py ksweep"
  timeout 150 python3 dev/swap_sched_ab.py ksweep 2>&1 | grep -v Warning | tail -12 ;;
second)
  step "CUDA tests of the MoE and the model, default rule"
  timeout 200 python3 -m pytest -q -m cuda --timeout=100 --tb=short tests/test_moe.py tests/test_model.py \
    -p no:cacheprovider 2>&1 | tail -6
  step "all of test_moe.py's CUDA tests with JAMBA_EXT_MOE_SWAP=1"
  JAMBA_EXT_MOE_SWAP=1 timeout 150 python3 -m pytest -q -m cuda --timeout=100 --tb=line tests/test_moe.py \
    -p no:cacheprovider 2>&1 | tail -4
  for tool in memcheck racecheck; do
    step "compute-sanitizer $tool of the MoE engines with JAMBA_EXT_MOE_SWAP=1 (bench_moe --sanitize)"
    JAMBA_EXT_MOE_SWAP=1 timeout 120 compute-sanitizer --tool $tool --print-limit 10 python3 \
      benchmarks/bench_moe.py --sanitize 2>&1 | tail -4
  done ;;
bench)
  step "bench_moe at 1536 / 2048 / 2304 tokens"
  timeout 200 python3 benchmarks/bench_moe.py --tokens 1536,2048,2304 \
    --only "ours,ours:wgmma swap f2f,ours:wgmma noswap,dense mm" --name bench_moe_s56 \
    2>&1 | grep -v "Warning\|_warn_once\|speed-up" | tail -24
  cp benchmarks/results/bench_moe_s56.json "$OUT/" 2>/dev/null
  step "dev/swap_sched_ab.py ab 2048"
  timeout 100 python3 dev/swap_sched_ab.py ab 2048 2>&1 | grep -v Warning | tail -8
  step "dev/swap_sched_ab.py ksweep"
  timeout 150 python3 dev/swap_sched_ab.py ksweep 2>&1 | grep -v Warning | tail -12 ;;
*) echo "unknown mode $mode (first, epi, second, bench)"; exit 2 ;;
esac
step done
} 2>&1 | tee "$OUT/round.log"
