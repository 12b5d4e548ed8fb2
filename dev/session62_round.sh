#!/usr/bin/env bash
# Session 62's device calls on one H200 (device tool), by MODE:
#   mc    (the name of its first form) the swap kernel's EXPERIMENTS: build, the swap engine's tests (each against the
#         default, bit for bit; graph capture), test_moe.py with the swap engine and the variant forced, memcheck /
#         racecheck of the swap cases, then the whole op in turns (dev/moe_epi_ab.py mc: its ABOX_VARIANTS, MC_VARIANTS
#         when these calls ran, at 1536 / 2048 / 2304 tokens) and the kernels alone (mcsweep: gate_up / down at H
#         2048 / 4096 / 8192, 256 rows an expert).
#         Ran with JAMBA_EXT_MOE_SWAP_MC=2|4 (clusters of W blocks, the A boxes multicast) at 3cebd00
#         (s62_mc_3cebd00.log: every k loop slow, MEMBAR.ALL.GPU before each arrival) and b99e235 (s62_mc_b99e235.log:
#         default 77.6% at 2048 tokens, mc2 / mc4 ~2x slower a k step), then with the diagnostic "2s" (the clusters
#         without the multicast: as fast as none) and JAMBA_EXT_MOE_SWAP_ABOX=64 (down 11% faster) at fed32ef
#         (s62_mc_fed32ef.log); the multicast removed after, ABOX 64 / 128 (mixed boxes, the largest first) next
#   final the session's code (the swap kernel's A loads of up to 128 rows the default): build, `jamba_ext check`, every
#         test marked cuda, memcheck / racecheck of the swap cases, bench_moe at the sizes and at 1536 / 2048 /
#         2304 tokens (the swap engine's), and the swap engine's size rule again (swap forced / off in turns at 1024 /
#         1280 / 2560 / 3072 tokens: does the faster kernel move its bounds?)
#         (ran at ab259b9, s62_final_ab259b9.log: 27 failed, 2837 passed: every x_in_state case of
#         test_causal_conv1d_update_vector_path, a test session 61's overlap refusal made stale, since dropped)
#   verify  build, that test and test_errors' overlap refusals
# Usage on the device: JAMBA_COMMIT=<sha> bash dev/session62_round.sh MODE   (output: $OUT/round.log)
OUT=${OUT:-/tmp/jamba_round_out}
. benchmarks/round_env.sh
mode=${1:-mc}
{
echo "commit $JAMBA_COMMIT, mode $mode"
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,power.draw,power.limit --format=csv,noheader
python3 -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', \
  torch.version.cuda)"
case "$mode" in
mc)
  build_cuda
  step "the swap engine's tests (each variant against the default, bit for bit; graph capture)"
  timeout 150 python3 -m pytest -q -m cuda --timeout=140 tests/test_moe.py -k "swap" -p no:cacheprovider 2>&1 | tail -4
  step "test_moe.py with the swap engine and A loads of up to 4 chunks forced (JAMBA_EXT_MOE_SWAP_ABOX=128)"
  JAMBA_EXT_MOE_SWAP=1 JAMBA_EXT_MOE_SWAP_ABOX=128 timeout 200 python3 -m pytest -q -m cuda --timeout=190 \
    tests/test_moe.py -p no:cacheprovider 2>&1 | tail -4
  step "compute-sanitizer memcheck / racecheck: sanitize_cases.py swap (the variants included)"
  timeout 60 compute-sanitizer --tool memcheck --print-limit 20 python3 benchmarks/sanitize_cases.py swap 2>&1 | tail -2
  timeout 80 compute-sanitizer --tool racecheck --print-limit 20 python3 benchmarks/sanitize_cases.py swap 2>&1 \
    | tail -2
  step "the whole op in turns: dev/moe_epi_ab.py mc (ABOX_VARIANTS)"
  timeout 200 python3 dev/moe_epi_ab.py mc 1536 2048 2304 2>&1 | grep -v "warn" | tail -36
  step "the kernels alone: mcsweep"
  timeout 150 python3 dev/moe_epi_ab.py mcsweep 2>&1 | grep -v "warn" | tail -22
  nvidia-smi --query-gpu=clocks.sm,power.draw,temperature.gpu --format=csv,noheader ;;
final)
  check_and_suite 280
  step "compute-sanitizer memcheck / racecheck: sanitize_cases.py swap"
  timeout 50 compute-sanitizer --tool memcheck --print-limit 20 python3 benchmarks/sanitize_cases.py swap 2>&1 | tail -1
  timeout 50 compute-sanitizer --tool racecheck --print-limit 20 python3 benchmarks/sanitize_cases.py swap 2>&1 \
    | tail -1
  step "bench_moe at the issue's sizes and the swap engine's"
  timeout 100 python3 benchmarks/bench_moe.py --name bench_moe_s62 --tokens 1,8,64,512,1536,2048,2304,4096,16384 \
    --only "ours,(a) hf_loop,(b) sorted_mm,(c) grouped_mm,dense mm" 2>&1 | grep -v "^ " | cut -c1-160 | tail -45
  cp benchmarks/results/bench_moe_s62.json "$OUT/" 2>/dev/null
  step "the swap engine's size rule: swap forced / off in turns"
  timeout 100 python3 dev/moe_epi_ab.py swaprule 1024 1280 2560 3072 2>&1 | grep -v "warn\|kernels," | tail -14 ;;
verify)
  build_cuda
  step "test_cuda_extra -k vector_path, test_errors -k overlap (cuda)"
  timeout 100 python3 -m pytest -q -m cuda --timeout=90 tests/test_cuda_extra.py tests/test_errors.py \
    -k "vector_path or overlap" -p no:cacheprovider 2>&1 | tail -2 ;;
*) echo "unknown mode $mode"; exit 2 ;;
esac
step done
} 2>&1 | tee "$OUT/round.log"
