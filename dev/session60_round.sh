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
#   halfg the EXPERIMENT JAMBA_EXT_WGMMA_HALF=g (half tiles in gate_up only): build, every MoE CUDA test, the wgmma tile
#         tests with it, Nsight Compute of down at 4096 tokens with and without it (DRAM, L2 hit rate), bench_moe twice
#         at 3072 / 4096 / 6144 / 8192 / 16384 tokens (ours, half g, nohalf, dense mm)
#         (ran at d45668e, s60_halfg_d45668e.log: without down's half tiles its DRAM traffic falls 45 -> 30%, but
#         bench_moe gains 1-2% at 3072 / 6144 and loses 1-4% at 8192 / 16384: the switch removed)
#   final the session's last commit (the swap kernel's down epilogue without the JAMBA_EXT_MOE_SWAP_PRELOAD=0 branch):
#         build, every MoE CUDA test, memcheck / racecheck on the swap cases, bench_moe at 1536 / 2048 / 2304 / 4096
#         tokens (ours, dense mm)
#         (ran at 188cf0a, s60_final_188cf0a.log)
#   uniform (for session 61, NOT YET RUN) the EXPERIMENT JAMBA_EXT_MOE_MERGE=u (experts of 513-576, 897-960, ... rows
#         as 192-row merged tiles only, so that their tiles keep one pace): build, test_moe_uniform_tiles and every MoE
#         CUDA test, memcheck / racecheck on sanitize_cases.py merge_u, Nsight Compute of both GEMMs at 4096 tokens
#         without and with it (DRAM, L2 hit rate), bench_moe twice at 3072 / 4096 / 6144 / 8192 / 16384 tokens (ours,
#         merge u, dense mm)
# Usage on the device: JAMBA_COMMIT=<sha> bash dev/session60_round.sh MODE   (output: $OUT/round.log)
OUT=${OUT:-/tmp/jamba_round_out}
. benchmarks/round_env.sh
mode=${1:-check}
{
echo "commit $JAMBA_COMMIT, mode $mode"
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,power.draw --format=csv,noheader
case "$mode" in
check)
  build_cuda
  step "CUDA tests: tests/test_moe.py (default engines; test_moe_swap_engine forces the swap engine)"
  timeout 150 python3 -m pytest -q -m cuda --timeout=120 --tb=short tests/test_moe.py -p no:cacheprovider 2>&1 \
    | tail -3
  step "compute-sanitizer memcheck, racecheck: benchmarks/sanitize_cases.py swap"
  timeout 100 compute-sanitizer --tool memcheck --print-limit 20 python3 benchmarks/sanitize_cases.py swap 2>&1 \
    | tail -3
  timeout 100 compute-sanitizer --tool racecheck --print-limit 20 python3 benchmarks/sanitize_cases.py swap 2>&1 \
    | tail -3
  for r in 1 2; do
    step "bench_moe run $r: 1024 / 1280 / 2048 / 2560 / 3072 / 4096 tokens (ours, swap forced, swap off, dense mm)"
    timeout 200 python3 benchmarks/bench_moe.py --tokens 1024,1280,2048,2560,3072,4096 \
      --only "ours,ours:wgmma swap,ours:wgmma noswap,dense mm" --name bench_moe_rule$r 2>&1 \
      | grep "^ours\|^dense\|^device" | cut -c1-150
    cp benchmarks/results/bench_moe_rule$r.json "$OUT/" 2>/dev/null
  done ;;
ttile)
  build_cuda
  step "tests/test_moe.py -k ttiles (JAMBA_EXT_MOE_TTILE=1 against the reference and the default tiles)"
  timeout 120 python3 -m pytest -q -m cuda --timeout=100 --tb=short tests/test_moe.py -k ttiles \
    -p no:cacheprovider 2>&1 | grep -i "transposed\|passed\|failed\|error\|assert" | tail -8
  step "CUDA tests: tests/test_moe.py (default engines)"
  timeout 150 python3 -m pytest -q -m cuda --timeout=120 --tb=short tests/test_moe.py -p no:cacheprovider 2>&1 \
    | tail -3
  step "compute-sanitizer memcheck, racecheck: benchmarks/sanitize_cases.py ttile"
  timeout 100 compute-sanitizer --tool memcheck --print-limit 20 python3 benchmarks/sanitize_cases.py ttile 2>&1 \
    | tail -3
  timeout 100 compute-sanitizer --tool racecheck --print-limit 20 python3 benchmarks/sanitize_cases.py ttile 2>&1 \
    | tail -3
  for r in 1 2; do
    step "bench_moe run $r: 2048 / 3072 / 4096 / 8192 / 16384 tokens (ours, ttile, swap off + ttile, dense mm)"
    timeout 200 python3 benchmarks/bench_moe.py --tokens 2048,3072,4096,8192,16384 \
      --only "ours,ours:wgmma ttile,ours:wgmma noswap ttile,dense mm" --name bench_moe_ttile$r 2>&1 \
      | grep "^ours\|^dense\|^device" | cut -c1-150
    cp benchmarks/results/bench_moe_ttile$r.json "$OUT/" 2>/dev/null
  done ;;
ttab)
  build_cuda
  step "tests/test_moe.py -k ttiles"
  timeout 120 python3 -m pytest -q -m cuda --timeout=100 --tb=short tests/test_moe.py -k ttiles \
    -p no:cacheprovider 2>&1 | tail -3
  step "dev/moe_epi_ab.py ttile 2048 4096"
  timeout 200 python3 dev/moe_epi_ab.py ttile 2048 4096 2>&1 | grep -v "Warning\|_warn"
  for tt in 0 1; do
    step "ncu, 4096 tokens, JAMBA_EXT_MOE_TTILE=$tt (gate_up launch, then down)"
    JAMBA_EXT_MOE_TTILE=$tt timeout 120 ncu --section SpeedOfLight --section MemoryWorkloadAnalysis \
      -k regex:moe_wgmma_persist -c 2 python3 dev/ncu_moe.py 4096 > "$OUT/ncu_tt$tt.txt" 2>&1
    echo "ncu rc $?"
    grep -i "duration\|dram throughput\|memory throughput\|l2 hit rate\|compute (sm) throughput\|l1/tex hit" \
      "$OUT/ncu_tt$tt.txt" | head -20
  done ;;
ttiles)
  build_cuda
  for r in 1 2; do
    step "bench_moe run $r: 3072 / 4096 / 6144 / 8192 / 16384 tokens (ours, ttile s, dense mm)"
    timeout 200 python3 benchmarks/bench_moe.py --tokens 3072,4096,6144,8192,16384 \
      --only "ours,ours:wgmma ttile s,dense mm" --name bench_moe_ttiles$r 2>&1 \
      | grep "^ours\|^dense\|^device" | cut -c1-150
    cp benchmarks/results/bench_moe_ttiles$r.json "$OUT/" 2>/dev/null
  done ;;
halfg)
  build_cuda
  step "CUDA tests: tests/test_moe.py (default engines), then test_moe_wgmma_tiles with JAMBA_EXT_WGMMA_HALF=g"
  timeout 150 python3 -m pytest -q -m cuda --timeout=120 --tb=short tests/test_moe.py -p no:cacheprovider 2>&1 \
    | tail -2
  JAMBA_EXT_WGMMA_HALF=g timeout 100 python3 -m pytest -q -m cuda --timeout=90 --tb=short tests/test_moe.py \
    -k "wgmma_tiles or moe_experts" -p no:cacheprovider 2>&1 | tail -2
  for hv in 1 g; do
    step "ncu, 4096 tokens, JAMBA_EXT_WGMMA_HALF=$hv (gate_up launch, then down)"
    JAMBA_EXT_WGMMA_HALF=$hv timeout 100 ncu --section SpeedOfLight --section MemoryWorkloadAnalysis \
      -k regex:moe_wgmma_persist -c 2 python3 dev/ncu_moe.py 4096 > "$OUT/ncu_half$hv.txt" 2>&1
    echo "ncu rc $?"
    grep -i "duration\|dram throughput\|l2 hit rate" "$OUT/ncu_half$hv.txt" | head -8
  done
  for r in 1 2; do
    step "bench_moe run $r: 3072 / 4096 / 6144 / 8192 / 16384 tokens (ours, half g, nohalf, dense mm)"
    timeout 200 python3 benchmarks/bench_moe.py --tokens 3072,4096,6144,8192,16384 \
      --only "ours,ours:wgmma half g,ours:wgmma nohalf,dense mm" --name bench_moe_halfg$r 2>&1 \
      | grep "^ours\|^dense\|^device" | cut -c1-150
    cp benchmarks/results/bench_moe_halfg$r.json "$OUT/" 2>/dev/null
  done ;;
final)
  build_cuda
  step "CUDA tests: tests/test_moe.py (default engines; test_moe_swap_engine forces the swap engine)"
  timeout 120 python3 -m pytest -q -m cuda --timeout=100 --tb=short tests/test_moe.py -p no:cacheprovider 2>&1 \
    | tail -2
  step "compute-sanitizer memcheck, racecheck: benchmarks/sanitize_cases.py swap"
  timeout 60 compute-sanitizer --tool memcheck --print-limit 20 python3 benchmarks/sanitize_cases.py swap 2>&1 \
    | tail -2
  timeout 60 compute-sanitizer --tool racecheck --print-limit 20 python3 benchmarks/sanitize_cases.py swap 2>&1 \
    | tail -2
  step "bench_moe at 1536 / 2048 / 2304 / 4096 tokens"
  timeout 100 python3 benchmarks/bench_moe.py --tokens 1536,2048,2304,4096 --only "ours,dense mm" \
    --name bench_moe_final 2>&1 | grep "^ours\|^dense\|^device" | cut -c1-150
  cp benchmarks/results/bench_moe_final.json "$OUT/" 2>/dev/null ;;
uniform)
  build_cuda
  step "tests/test_moe.py -k uniform_tiles, then every MoE CUDA test"
  timeout 100 python3 -m pytest -q -m cuda --timeout=90 --tb=short tests/test_moe.py -k uniform_tiles \
    -p no:cacheprovider 2>&1 | tail -3
  timeout 120 python3 -m pytest -q -m cuda --timeout=100 --tb=short tests/test_moe.py -p no:cacheprovider 2>&1 \
    | tail -2
  step "compute-sanitizer memcheck, racecheck: benchmarks/sanitize_cases.py merge_u"
  timeout 60 compute-sanitizer --tool memcheck --print-limit 20 python3 benchmarks/sanitize_cases.py merge_u 2>&1 \
    | tail -2
  timeout 60 compute-sanitizer --tool racecheck --print-limit 20 python3 benchmarks/sanitize_cases.py merge_u 2>&1 \
    | tail -2
  for mv in default u; do
    step "ncu, 4096 tokens, JAMBA_EXT_MOE_MERGE=$mv (gate_up launch, then down)"
    env $([ $mv = u ] && echo JAMBA_EXT_MOE_MERGE=u) timeout 100 ncu --section SpeedOfLight \
      --section MemoryWorkloadAnalysis -k regex:moe_wgmma_persist -c 2 python3 dev/ncu_moe.py 4096 \
      > "$OUT/ncu_merge_$mv.txt" 2>&1
    echo "ncu rc $?"
    grep -i "duration\|dram throughput\|l2 hit rate" "$OUT/ncu_merge_$mv.txt" | head -8
  done
  for r in 1 2; do
    step "bench_moe run $r: 3072 / 4096 / 6144 / 8192 / 16384 tokens (ours, merge u, dense mm)"
    timeout 200 python3 benchmarks/bench_moe.py --tokens 3072,4096,6144,8192,16384 \
      --only "ours,ours:wgmma merge u,dense mm" --name bench_moe_uniform$r 2>&1 \
      | grep "^ours\|^dense\|^device" | cut -c1-150
    cp benchmarks/results/bench_moe_uniform$r.json "$OUT/" 2>/dev/null
  done ;;
*) echo "unknown mode $mode"; exit 2 ;;
esac
step done
} 2>&1 | tee "$OUT/round.log"
