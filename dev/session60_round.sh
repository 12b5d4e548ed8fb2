#!/usr/bin/env bash
# Session 60's device calls on one H200 (device tool), by MODE:
#   check the extension at the commit (csrc/cuda last changed in 57b94ca, never run on a GPU before): build, every
#         MoE CUDA test (tests/test_moe.py), compute-sanitizer memcheck / racecheck on the swap cases, then
#         bench_moe twice over 1024 / 1280 / 2048 / 2560 / 3072 / 4096 tokens (ours, swap forced, swap off, dense
#         mm): where the swap engine's size rule (176-303 slots an expert, set in session 54 against the old
#         kernel) should sit, and 2048 / 4096 tokens against issue 4's 80% again
#   ttile the EXPERIMENT JAMBA_EXT_MOE_TTILE=1 (an expert's last < 128 rows as a transposed tail tile, wp_ttile):
#         build, tests/test_moe.py -k ttiles (against the reference and the default tiles; whether the bits match),
#         every MoE CUDA test, memcheck / racecheck on sanitize_cases.py ttile, bench_moe twice at 2048 / 3072 /
#         4096 / 8192 / 16384 tokens (ours, ttile, swap off + ttile, dense mm)
#         (ran at 37ed298, s60_ttile_37ed298.log: same bits as the default tiles, tests and sanitizers clean, but
#         4096 tokens 7-8% slower, 3072 10%, 2048 with the swap engine off 15%; 8192 / 16384 within +-1.5%)
#   ttab  why: dev/moe_epi_ab.py ttile at 2048 / 4096 tokens (the op in turns, swap off: all tails, small / large tails
#         only, gate_up / down only), then Nsight Compute (SpeedOfLight, MemoryWorkloadAnalysis: duration, DRAM
#         bytes, L2 hit rate; clocks locked) of both GEMM launches at 4096 tokens without and with JAMBA_EXT_MOE_TTILE=1
#         (ran at c1b2fb4, s60_ttab_c1b2fb4.log: ttiles of 65-127 rows cost most, down more than gate_up; ncu at 4096:
#         down's DRAM throughput 44 -> 64%, L2 hit rate 61 -> 47%, 1.57 -> 1.85 ms: the tails miss their W slab in L2)
#   ttiles bench_moe twice at 3072 / 4096 / 6144 / 8192 / 16384 tokens: ours against JAMBA_EXT_MOE_TTILE=s (tails of
#         <= 64 rows only, where half tiles run by default) and dense mm
#         (ran at f89ed21, s60_ttiles_f89ed21.log: no gain; the transposed tail tiles were removed after it)
#   halfg the EXPERIMENT JAMBA_EXT_WGMMA_HALF=g (half tiles in gate_up only): build, every MoE CUDA test, the wgmma tile
#         tests with it, Nsight Compute of down at 4096 tokens with and without it (DRAM, L2 hit rate), bench_moe twice
#         at 3072 / 4096 / 6144 / 8192 / 16384 tokens (ours, half g, nohalf, dense mm)
#         (ran at d45668e, s60_halfg_d45668e.log: without down's half tiles its DRAM traffic falls 45 -> 30%, but
#         bench_moe gains 1-2% at 3072 / 6144 and loses 1-4% at 8192 / 16384: the switch removed)
#   final the session's last commit (the swap kernel's down epilogue without the JAMBA_EXT_MOE_SWAP_PRELOAD=0 branch):
#         build, every MoE CUDA test, memcheck / racecheck on the swap cases, bench_moe at 1536 / 2048 / 2304 / 4096
#         tokens (ours, dense mm)
#         (ran at 188cf0a, s60_final_188cf0a.log)
#   uniform the EXPERIMENT JAMBA_EXT_MOE_MERGE=u (experts of 513-576, 897-960, ... rows
#         as 192-row merged tiles only, so that their tiles keep one pace): build, test_moe_uniform_tiles and every MoE
#         CUDA test, memcheck / racecheck on sanitize_cases.py merge_u, Nsight Compute of both GEMMs at 4096 tokens
#         without and with it (DRAM, L2 hit rate), bench_moe twice at 3072 / 4096 / 6144 / 8192 / 16384 tokens (ours,
#         merge u, merge ud: in down only, dense mm)
#         (ran in session 61 at 24f2c1a, s61_uniform_24f2c1a.log: same bits, tests and sanitizers clean; `u` no faster
#         anywhere, `ud` 1-2% faster at 4096 tokens and 1-3% slower at 8192 / 16384: the switch removed)
# Usage on the device: JAMBA_COMMIT=<sha> bash dev/session60_round.sh MODE   (output: $OUT/round.log)
# (The modes of removed switches, ttile / ttab / ttiles / halfg / uniform, are stubs now; their commands are in git
# history, f89ed21, d45668e and 24f2c1a.)
OUT=${OUT:-/tmp/jamba_round_out}
. benchmarks/round_env.sh
mode=${1:-check}
moe_tests() {   # every MoE CUDA test (tests/test_moe.py; test_moe_swap_engine forces the swap engine)
  step "CUDA tests: tests/test_moe.py (default engines)"
  timeout 150 python3 -m pytest -q -m cuda --timeout=120 --tb=short tests/test_moe.py -p no:cacheprovider 2>&1 \
    | tail -2
}
sanitize() {    # memcheck and racecheck on one family of benchmarks/sanitize_cases.py
  step "compute-sanitizer memcheck, racecheck: benchmarks/sanitize_cases.py $1"
  for tool in memcheck racecheck; do
    timeout 100 compute-sanitizer --tool $tool --print-limit 20 python3 benchmarks/sanitize_cases.py "$1" 2>&1 | tail -2
  done
}
bench() {       # bench() NAME TOKENS VARIANTS RUNS: bench_moe RUNS times, JSON bench_moe_NAME<run> to $OUT
  for r in $(seq 1 "$4"); do
    step "bench_moe $1 run $r: $2 tokens ($3)"
    timeout 200 python3 benchmarks/bench_moe.py --tokens "$2" --only "$3" --name "bench_moe_$1$r" 2>&1 \
      | grep "^ours\|^dense\|^device" | cut -c1-150
    cp "benchmarks/results/bench_moe_$1$r.json" "$OUT/" 2>/dev/null
  done
}
ncu_ab() {      # ncu_ab VAR VALUE...: Nsight Compute of both GEMM launches at 4096 tokens with VAR unset / at VALUE
  for v in default "${@:2}"; do
    step "ncu, 4096 tokens, $1=$v (gate_up launch, then down)"
    env $([ "$v" != default ] && echo "$1=$v") timeout 100 ncu --section SpeedOfLight \
      --section MemoryWorkloadAnalysis -k regex:moe_wgmma_persist -c 2 python3 dev/ncu_moe.py 4096 \
      > "$OUT/ncu_$v.txt" 2>&1
    echo "ncu rc $?"
    grep -i "duration\|dram throughput\|l2 hit rate" "$OUT/ncu_$v.txt" | head -8
  done
}
{
echo "commit $JAMBA_COMMIT, mode $mode"
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,power.draw --format=csv,noheader
case "$mode" in
check)
  build_cuda
  moe_tests
  sanitize swap
  bench rule 1024,1280,2048,2560,3072,4096 "ours,ours:wgmma swap,ours:wgmma noswap,dense mm" 2 ;;
ttile|ttab|ttiles|halfg|uniform)
  echo "mode $mode ran at 37ed298 / c1b2fb4 / f89ed21 / d45668e / 24f2c1a (s60_*, s61_*.log); its switch is removed"
  exit 2 ;;
final)
  build_cuda
  moe_tests
  sanitize swap
  bench final 1536,2048,2304,4096 "ours,dense mm" 1 ;;
*) echo "unknown mode $mode"; exit 2 ;;
esac
step done
} 2>&1 | tee "$OUT/round.log"
