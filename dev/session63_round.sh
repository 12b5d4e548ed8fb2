#!/usr/bin/env bash
# Session 63's device calls on one H200 (device tool), by MODE:
#   wbox  (ran at 10c2aee, s63_wbox_10c2aee.log; the experiment since removed, so this mode's moe_epi_ab step no
#         longer runs) the 128 x 256 tiles' W in one 32 KB TMA box a k tile against the two 16 KB boxes
#         (JAMBA_EXT_MOE_WBOX=2 then): build, test_moe's wgmma tiles / swap engine / graph tests (the two forms bit
#         for bit), memcheck / racecheck of the tiles cases, the op in turns (dev/moe_epi_ab.py wbox) at 3072 - 16384
#         tokens, bench_moe's swap engine forced / off at 2560 - 4096 tokens twice (its upper bound), and session 62's
#         CUDA cases never run (SiLU of huge negative pre-activations, rms_norm's zero-width backward)
#   nan   build, the cuda cases of the NaN rules' tests (decode_attention, cross_entropy, sample_rows; row-expanded
#         silu_mul / cross_entropy inputs; fp8.cu's max now jamba_max_nan), and their three CUDA mutants
#   final the session's code: build, `jamba_ext check`, every test marked cuda, memcheck of every op's cases and
#         racecheck of all but sample_rows' (its cluster kernels take racecheck ~110 s), bench_moe at the issue's sizes
# Usage on the device: JAMBA_COMMIT=<sha> bash dev/session63_round.sh MODE   (output: $OUT/round.log)
OUT=${OUT:-/tmp/jamba_round_out}
. benchmarks/round_env.sh
mode=${1:-wbox}
sanitize() {   # memcheck / racecheck of sanitize_cases.py families
  for fam in "$@"; do
    step "compute-sanitizer memcheck / racecheck: sanitize_cases.py $fam"
    timeout 60 compute-sanitizer --tool memcheck --print-limit 20 python3 benchmarks/sanitize_cases.py "$fam" 2>&1 \
      | tail -2
    timeout 80 compute-sanitizer --tool racecheck --print-limit 20 python3 benchmarks/sanitize_cases.py "$fam" 2>&1 \
      | tail -2
  done
}
{
round_header "$mode"
case "$mode" in
wbox)
  build_cuda
  step "test_moe: wgmma tiles (one W box / two, bit for bit), swap engine, graphs; session 62's unrun CUDA cases"
  timeout 200 python3 -m pytest -q -m cuda --timeout=190 tests/test_moe.py -k "wgmma or swap or graph" \
    -p no:cacheprovider 2>&1 | tail -4
  timeout 60 python3 -m pytest -q --timeout=50 tests/test_causal_conv1d.py tests/test_rms_norm.py \
    -k "huge_negative or zero_width_rows_backward" -p no:cacheprovider 2>&1 | tail -2
  sanitize tiles
  step "the op in turns: dev/moe_epi_ab.py wbox (one W box / two)"
  timeout 170 python3 dev/moe_epi_ab.py wbox 3072 4096 8192 16384 2>&1 | grep -v "warn" | tail -30
  for r in 1 2; do
    step "bench_moe: the swap engine forced / off (run $r)"
    timeout 90 python3 benchmarks/bench_moe.py --name bench_moe_s63_swap$r --tokens 2560,3072,3584,4096 \
      --only "ours,ours:wgmma swap,ours:wgmma noswap,dense mm" 2>&1 | grep -v "^ " | cut -c1-140 | tail -24
    cp benchmarks/results/bench_moe_s63_swap$r.json "$OUT/" 2>/dev/null
  done
  nvidia-smi --query-gpu=clocks.sm,power.draw,temperature.gpu --format=csv,noheader ;;
nan)
  build_cuda
  step "NaN as the reference (decode_attention, cross_entropy, sample_rows) and row-expanded inputs, cuda cases"
  timeout 200 python3 -m pytest -q -m cuda --timeout=190 tests/test_decode_attention.py tests/test_cross_entropy.py \
    tests/test_sample_rows.py tests/test_row_sampling.py tests/test_fp8.py -p no:cacheprovider 2>&1 | tail -6
  timeout 100 python3 -m pytest -q -m cuda --timeout=90 tests/test_moe.py -k silu -p no:cacheprovider 2>&1 | tail -2
  step "the new CUDA mutants"
  timeout 280 python3 dev/mutation_cuda.py --run --budget 240 --out "$OUT/mutation_cuda.log" \
    --only attn_combine_nan_max,ce_fwd_nan_max,sr_pass1_nan_kept 2>&1 | tail -8 ;;
final)
  check_and_suite 280
  step "bench_moe at the issue's sizes and the swap engine's (before the sanitizers: they may meet the call's limit)"
  timeout 100 python3 benchmarks/bench_moe.py --name bench_moe_s63 --tokens 1,8,64,512,1536,2048,2304,4096,16384 \
    --only "ours,(a) hf_loop,(b) sorted_mm,(c) grouped_mm,dense mm" 2>&1 | grep -v "^ " | cut -c1-160 | tail -45
  cp benchmarks/results/bench_moe_s63.json "$OUT/" 2>/dev/null
  step "compute-sanitizer: memcheck of every op (rest, sample_rows, tiles: the NaN rules' kernels changed), racecheck rest"
  for fam in rest sample_rows tiles; do
    timeout 120 compute-sanitizer --tool memcheck --print-limit 20 python3 benchmarks/sanitize_cases.py "$fam" 2>&1 \
      | tail -2
  done
  timeout 150 compute-sanitizer --tool racecheck --print-limit 20 python3 benchmarks/sanitize_cases.py rest 2>&1 \
    | tail -2 ;;
*) echo "unknown mode $mode"; exit 2 ;;
esac
step done
} 2>&1 | tee "$OUT/round.log"
