#!/usr/bin/env bash
# Session 56's device calls on one H200 (device tool), one script: build, then by MODE
#   first   (ran at df6bcc7; its script and kernels are in git history there) chunk counters by which the swap
#           engine's down GEMM started as its chunk's gate_up blocks ended, and the blocks longest chunk first:
#           SASS spills, the swap tests, dev/swap_sched_ab.py ab / ksweep, test_moe.py with swap forced (both ideas
#           within +-1.5%: removed)
#   epi     (ran at 48a6862 and f5db73f) the swap engine's epilogues with their roundings in pairs: the swap tests,
#           dev/swap_sched_ab.py ab 2048 2304 and ksweep
#   second  (ran at 03058e6) the MoE and model CUDA tests, test_moe.py with swap forced, memcheck / racecheck
#   bench   (ran at 03058e6) bench_moe at 1536 / 2048 / 2304 tokens, dev/swap_sched_ab.py ab 2048 and ksweep
#   tiles   the paired roundings in every wgmma engine's epilogue (moe_act_fast2 / moe_scaled2 in moe.cuh; the
#           128 x 256 tiles, their epilogue warps, the fp8 kernels too): the MoE and model CUDA tests, test_moe.py
#           with swap forced, memcheck / racecheck, bench_moe at 2048 / 4096 / 16384 tokens (ours, ours:wgmma f2f,
#           dense mm), dev/moe_epi_ab.py ab 4096 16384
#   again   the same kernels: bench_moe at 2048 / 4096 / 16384 three times (orders random, rotate, random), then
#           dev/moe_epi_ab.py ab 16384 (more samples of the epilogue A/B)
#   f16     the swap engine in f16 (no spills since the paired roundings; off by default in f16): test_moe_swap_engine,
#           dev/moe_epi_ab.py swapf16 at 1280-2560 tokens (swap forced against the 128 x 256 tiles), then
#           dev/moe_epi_ab.py ab 2048 (its kernel times now from bench_moe.kernel_breakdown)
#   final   the swap engine by default in f16 too: the MoE and model CUDA tests (refused in session 56: no device
#           time left; the prefetch call ran those tests at 83ee634)
#   prefetch (ran at 83ee634 in session 57: no gain, removed after) EXPERIMENT JAMBA_EXT_MOE_SWAP_PREFETCH=1: the f16
#           rule's and the fp8 epilogues' CUDA tests, test_moe_swap_engine, dev/moe_epi_ab.py prefetch 1536 2048
#           2304, bench_moe at 2048 tokens with the prefetch row
# Usage on the device: JAMBA_COMMIT=<sha> bash dev/session56_round.sh MODE   (output: $OUT/round.log)
OUT=${OUT:-/tmp/jamba_round_out}
. benchmarks/round_env.sh
mode=${1:-tiles}
. dev/sr_round_lib.sh
{
echo "commit $JAMBA_COMMIT, mode $mode"
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem --format=csv,noheader
build_cuda
case "$mode" in
first|epi|second|bench|tiles|again|f16|prefetch|final)
  echo "mode $mode ran at an earlier commit of session 56 (see the header); check that commit out to run it again"
  exit 2 ;;
tiles)
  step "CUDA tests of the MoE and the model, default rule"
  timeout 200 python3 -m pytest -q -m cuda --timeout=100 --tb=short tests/test_moe.py tests/test_model.py \
    -p no:cacheprovider 2>&1 | tail -6
  step "all of test_moe.py's CUDA tests with JAMBA_EXT_MOE_SWAP=1"
  JAMBA_EXT_MOE_SWAP=1 timeout 150 python3 -m pytest -q -m cuda --timeout=100 --tb=line tests/test_moe.py \
    -p no:cacheprovider 2>&1 | tail -4
  for tool in memcheck racecheck; do
    step "compute-sanitizer $tool of the MoE engines (bench_moe --sanitize)"
    timeout 120 compute-sanitizer --tool $tool --print-limit 10 python3 benchmarks/bench_moe.py --sanitize 2>&1 \
      | tail -3
  done
  step "bench_moe at 2048 / 4096 / 16384 tokens"
  timeout 240 python3 benchmarks/bench_moe.py --tokens 2048,4096,16384 --only "ours,ours:wgmma f2f,dense mm" \
    --name bench_moe_s56 2>&1 | grep -v "Warning\|_warn_once\|speed-up" | tail -16
  cp benchmarks/results/bench_moe_s56.json "$OUT/" 2>/dev/null
  step "dev/moe_epi_ab.py ab 4096 16384"
  timeout 120 python3 dev/moe_epi_ab.py ab 4096 16384 2>&1 | grep -v Warning | tail -12 ;;
again)
  i=0
  for order in random rotate random; do
    i=$((i + 1))
    step "bench_moe at 2048 / 4096 / 16384 tokens, order $order"
    timeout 150 python3 benchmarks/bench_moe.py --tokens 2048,4096,16384 --only "ours,ours:wgmma f2f,dense mm" \
      --order $order --name bench_moe_s56_again$i 2>&1 | grep "^ours\|^dense\|^device" | cut -c1-150
  done
  cp benchmarks/results/bench_moe_s56_*.json "$OUT/" 2>/dev/null
  step "dev/moe_epi_ab.py ab 16384"
  timeout 120 python3 dev/moe_epi_ab.py ab 16384 2>&1 | grep -v "Warning\|kernels" | tail -5 ;;
f16)
  step "CUDA tests: test_moe_swap_engine"
  timeout 150 python3 -m pytest -q -m cuda -x --timeout=120 --tb=short tests/test_moe.py -k swap_engine \
    -p no:cacheprovider 2>&1 | tail -2
  step "dev/moe_epi_ab.py swapf16 1280 1536 2048 2304 2560"
  timeout 200 python3 dev/moe_epi_ab.py swapf16 1280 1536 2048 2304 2560 2>&1 | grep -v "Warning\|_warn" | tail -24
  step "dev/moe_epi_ab.py ab 2048"
  timeout 100 python3 dev/moe_epi_ab.py ab 2048 2>&1 | grep -v "Warning\|_warn" | tail -6 ;;
final)
  step "CUDA tests of the MoE and the model, default rule"
  timeout 150 python3 -m pytest -q -m cuda --timeout=100 --tb=short tests/test_moe.py tests/test_model.py \
    -p no:cacheprovider 2>&1 | tail -3 ;;
*) echo "unknown mode $mode (tiles; the others ran at earlier commits)"; exit 2 ;;
esac
step done
} 2>&1 | tee "$OUT/round.log"
