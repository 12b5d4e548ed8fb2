#!/usr/bin/env bash
# Session 65's device calls on one H200 (device tool), by MODE:
#   ks    (ran at 8493417, s65_ks_8493417.log; the switch and this mode since removed) the ring kernels' gate_up k
#         split over 4 warps (JAMBA_EXT_MOE_DEC_KS=4) against 2: build, the ring tests of
#         test_moe / test_fp8 (both splits), memcheck of the rest family with the split at 4, dev/moe_dec_ks_ab.py
#         (bf16 5-8 tokens, fp8 8-128, graph-timed in turns), bench_moe at 8 tokens with each split
#   mt    (ran at 15e322f, s65_mt_15e322f.log) the ring kernels with one m16 tile a warp (JAMBA_EXT_MOE_DEC_MT=down
#         / all then) against 2: build, the ring tests (test_moe decode engine with mt1, test_fp8 ring with MT 2 /
#         all), memcheck of the rest family with MT all,
#         dev/moe_ring_waves.py (kernel times against touched experts 3-16), dev/moe_ring_ab.py, bench_moe at 5 / 8
#   f8mt4 (ran at 2dc1f7f, s65_f8mt4_2dc1f7f.log) the fp8 ring kernels at NT 4 with 4 m16 tiles a warp
#         (JAMBA_EXT_MOE_F8_MT4=1 then) against 2: build, test_fp8's ring tests (both), memcheck of the rest family
#         with it, dev/moe_ring_ab.py at fp8 64-512 tokens (64: NT 2, a control)
#   f8cross where the fp8 ring (now MT 4 at NT 4) and the wgmma kernel cross: build, test_fp8 ring / wgmma tests,
#         dev/moe_ring_ab.py at 96-320 tokens with each engine forced
#   final the session's code: build, `jamba_ext check`, every test marked cuda, bench_kernels (issue 3's shapes),
#         bench_moe at the issue's sizes, dev/moe_ring_waves.py and dev/moe_ring_ab.py (down on MT 1 / 2)
#   sanit memcheck of every op's cases (rest, sample_rows, swap, tiles), racecheck of rest and swap (builds first only
#         when the machine holds no CUDA build: a warm machine keeps final's)
# Usage on the device: JAMBA_COMMIT=<sha> bash dev/session65_round.sh MODE   (output: $OUT/round.log)
OUT=${OUT:-/tmp/jamba_round_out}
. benchmarks/round_env.sh
mode=${1:-final}
{
round_header "$mode"
case "$mode" in
ks)
  echo "mode ks ran at 8493417 (s65_ks_8493417.log; the JAMBA_EXT_MOE_DEC_KS switch is removed)"; exit 2 ;;
mt)
  echo "mode mt ran at 15e322f (s65_mt_15e322f.log; down on one m16 tile a warp is the default since)"; exit 2 ;;
f8mt4)
  echo "mode f8mt4 ran at 2dc1f7f (s65_f8mt4_2dc1f7f.log; MT 4 at NT 4 is the fp8 ring's default since)"; exit 2 ;;
f8cross)
  build_cuda
  step "test_fp8's ring, wgmma and engine tests"
  timeout 200 python3 -m pytest -q -m cuda tests/test_fp8.py -k "ring or wgmma or engine" -p no:cacheprovider 2>&1 \
    | tail -3
  step "dev/moe_ring_ab.py, fp8 96-320 tokens: the default, the ring forced (MT 4), the wgmma kernel forced"
  timeout 200 python3 dev/moe_ring_ab.py --bf16 "" --fp8 96,128,160,192,256,320 \
    --variants default,ring=JAMBA_EXT_FP8_WGMMA:0,wgmma=JAMBA_EXT_FP8_WGMMA:1 2>&1 | grep -v -i "warn\|kernels" ;;
final)
  check_and_suite 280
  bench_issues s65
  step "dev/moe_ring_waves.py (ring kernel times against the touched experts, down on MT 2 / 1)"
  timeout 120 python3 dev/moe_ring_waves.py 2>&1 | grep -v -i warn
  step "dev/moe_ring_ab.py (graph-timed in turns: default, mt2)"
  timeout 150 python3 dev/moe_ring_ab.py --fp8 8,64 2>&1 | grep -v -i warn ;;
sanit)
  sanitize_all ;;
*) echo "unknown mode $mode"; exit 2 ;;
esac
step done
} 2>&1 | tee "$OUT/round.log"
cp benchmarks/results/bench_moe_s65*.json "$OUT/" 2>/dev/null
exit 0
