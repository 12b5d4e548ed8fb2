#!/usr/bin/env bash
# Session 67's device calls on one H200 (device tool), by MODE:
#   swapmix the swap-AB engine in one GEMM only (JAMBA_EXT_MOE_SWAP=g: gate_up, d: down; the persistent 128 x 256
#           tiles in the other): build, test_moe_swap_one_gemm and test_moe_swap_engine, bench_moe twice at
#           2560-5120 tokens (ours, swap, swap g, swap d, dense mm)
#   swapd   the same tests, then bench_moe four times at 2816-5120 tokens (ours, swap d, swap, dense mm)
#   rule    the down GEMM on the swap engine by default from 368 to 607 slots an expert: build, test_moe.py's CUDA
#           tests, bench_moe twice at 2048-4864 tokens (ours, noswap, swap g, swap d, dense mm)
#   band    bench_moe twice at 2304-2816 tokens (288-352 slots an expert), every engine variant (merged tiles, swap in
#           both / gate_up / down, half tiles forced on)
#   gband   (written for the next session, not run in 67) gate_up's half tiles at any size (JAMBA_EXT_WGMMA_HALF=G),
#           alone and with down on the swap engine, at 2304-2944 tokens: tests, then bench_moe three times
#   final   the session's code: build, `jamba_ext check`, every test marked cuda, bench_kernels (issue 3's shapes),
#           bench_moe at the issue's sizes
#   sanit   memcheck of every op's cases (rest, sample_rows, swap, tiles), racecheck of rest and swap (builds first
#           only when the machine holds no CUDA build), then bench_moe twice at 2560-3072 tokens with half tiles
#           forced on (JAMBA_EXT_WGMMA_HALF=1; by default gate_up's from 384 slots an expert) and off, and at
#           6144 / 8192 tokens with down on the swap engine (swap d)
# Usage on the device: JAMBA_COMMIT=<sha> bash dev/session67_round.sh MODE   (output: $OUT/round.log)
# (swapmix .. band ran before moe_tests / moe_runs took their steps over: the same tests and runs; the time limits
# and the output filter differ a little.)
OUT=${OUT:-/tmp/jamba_round_out}
. benchmarks/round_env.sh
mode=${1:-final}
stamp=$(mktemp)   # this call's JSON: the files newer than it
moe_tests() {   # $1: pytest -k expression over tests/test_moe.py's CUDA tests
  step "test_moe.py's CUDA tests: ${1:-all}"
  timeout 200 python3 -m pytest -q -m cuda --timeout=150 --tb=short tests/test_moe.py ${1:+-k "$1"} \
    -p no:cacheprovider 2>&1 | tail -3
}
moe_runs() {   # $1 name, $2 runs, $3 tokens, $4 bench_moe variants: bench_moe $2 times, JSON bench_moe_s67_$1<run>
  local r
  for r in $(seq 1 "$2"); do
    step "bench_moe run $r: $3 tokens ($4)"
    timeout 170 python3 benchmarks/bench_moe.py --tokens "$3" --name "bench_moe_s67_$1$r" --only "$4" 2>&1 \
      | grep "^ours\|^dense\|^device\|kernels" | cut -c1-250
  done
}
{
round_header "$mode"
case "$mode" in
swapmix)
  build_cuda
  moe_tests "swap_one_gemm or swap_engine"
  moe_runs swapmix 2 2560,3072,3584,4096,5120 "ours,ours:wgmma swap,ours:wgmma swap g,ours:wgmma swap d,dense mm" ;;
swapd)
  build_cuda
  moe_tests "swap_one_gemm or swap_engine"
  moe_runs swapd 4 2816,3072,3584,4096,4608,5120 "ours,ours:wgmma swap d,ours:wgmma swap,dense mm" ;;
rule)
  build_cuda
  moe_tests ""
  moe_runs rule 2 2048,2304,2944,3072,4096,4864 "ours,ours:wgmma noswap,ours:wgmma swap g,ours:wgmma swap d,dense mm" ;;
band)
  build_cuda
  moe_runs band 2 2304,2560,2816 \
    "ours,ours:wgmma merge,ours:wgmma swap,ours:wgmma swap g,ours:wgmma swap d,ours:wgmma half,dense mm" ;;
gband)
  build_cuda
  moe_tests "wgmma_tiles or swap_one_gemm"
  moe_runs gband 3 2304,2560,2816,2944 \
    "ours,ours:wgmma half G,ours:wgmma half G swap d,ours:wgmma swap d,ours:wgmma swap,dense mm" ;;
final)
  check_and_suite 280
  bench_issues s67 ;;
sanit)
  sanitize_all
  moe_runs half 2 2560,2816,2944,3072 "ours,ours:wgmma half,ours:wgmma nohalf,dense mm"
  moe_runs big 1 6144,8192 "ours,ours:wgmma swap d,dense mm" ;;
*) echo "unknown mode $mode"; exit 2 ;;
esac
step done
} 2>&1 | tee "$OUT/round.log"
# only this call's JSON (all of session 67's committed ones passed the device tool's file count in the sanit call)
find benchmarks/results -name "bench_moe_s67*.json" -newer "$stamp" -exec cp {} "$OUT/" \; 2>/dev/null
exit 0
