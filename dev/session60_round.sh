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
*) echo "unknown mode $mode"; exit 2 ;;
esac
step done
} 2>&1 | tee "$OUT/round.log"
