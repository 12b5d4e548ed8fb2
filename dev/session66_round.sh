#!/usr/bin/env bash
# Session 66's device calls on one H200 (device tool), by MODE:
#   f8nt2 the fp8 ring kernels at NT 2 (33-103 tokens at top-2 of 16 experts) with 4 m16 tiles a warp
#         (JAMBA_EXT_MOE_F8_MT4=24) against 2 (the default "4": MT 4 at NT 4 only): build, test_fp8's ring and engine
#         tests (every MT4 value), memcheck of the rest family with "24", dev/moe_ring_ab.py at fp8 24-128 tokens
#         (default; MT 4 at NT 2; NT 2 forced with MT 4; NT 4 forced)
#   halfg the EXPERIMENT JAMBA_EXT_WGMMA_HALF=g (half tiles in gate_up only; down's m-tiles keep one pace): build, the
#         MoE tests with it, bench_moe twice at 2560-6144 tokens (ours, half g, nohalf, swap, dense mm)
#   f8model one Jamba-v0.1 block with fp8 experts, decode at batch 48 / 64 after 512-token prompts (the fp8 ring at NT 2),
#         the default against JAMBA_EXT_MOE_F8_MT4=4 (MT 2 at NT 2, session 65's), no transformers
#   final the session's code: build, `jamba_ext check`, every test marked cuda, bench_kernels (issue 3's shapes),
#         bench_moe at the issue's sizes
#   sanit memcheck of every op's cases (rest, sample_rows, swap, tiles), racecheck of rest and swap (builds first only
#         when the machine holds no CUDA build: a warm machine keeps final's); then bench_moe at 3072-8192 tokens
#         against half tiles in both GEMMs by the old rule (JAMBA_EXT_WGMMA_HALF=b), dev/moe_ring_ab.py (fp8 40-128
#         tokens: default / "0")
# Usage on the device: JAMBA_COMMIT=<sha> bash dev/session66_round.sh MODE   (output: $OUT/round.log)
OUT=${OUT:-/tmp/jamba_round_out}
. benchmarks/round_env.sh
mode=${1:-final}
{
round_header "$mode"
case "$mode" in
f8nt2)
  build_cuda
  step "test_fp8's ring and engine tests (JAMBA_EXT_MOE_F8_MT4 0 / 4 / 24)"
  timeout 240 python3 -m pytest -q -m cuda tests/test_fp8.py -k "ring or engine or wgmma" -p no:cacheprovider 2>&1 \
    | tail -3
  step "memcheck of the rest family with JAMBA_EXT_MOE_F8_MT4=24"
  JAMBA_EXT_MOE_F8_MT4=24 timeout 120 compute-sanitizer --tool memcheck --print-limit 20 \
    python3 benchmarks/sanitize_cases.py rest 2>&1 | tail -2
  step "dev/moe_ring_ab.py, fp8 24-128 tokens"
  v=default,mt4nt2=JAMBA_EXT_MOE_F8_MT4:24,nt2=JAMBA_EXT_FP8_RING_NT:2+JAMBA_EXT_MOE_F8_MT4:24
  timeout 320 python3 dev/moe_ring_ab.py --bf16 "" --fp8 24,32,40,48,64,80,96,128 \
    --variants "$v,nt4=JAMBA_EXT_FP8_RING_NT:4" 2>&1 | grep -v -i "warn" ;;
halfg)
  build_cuda
  step "test_moe.py with JAMBA_EXT_WGMMA_HALF=g"
  JAMBA_EXT_WGMMA_HALF=g timeout 150 python3 -m pytest -q -m cuda --timeout=120 --tb=short tests/test_moe.py \
    -p no:cacheprovider 2>&1 | tail -2
  for r in 1 2; do
    step "bench_moe run $r: 2560-6144 tokens (ours, half g, nohalf, swap, dense mm)"
    timeout 200 python3 benchmarks/bench_moe.py --tokens 2560,3072,3584,4096,5120,6144 --name bench_moe_s66_halfg$r \
      --only "ours,ours:wgmma half g,ours:wgmma nohalf,ours:wgmma swap,dense mm" 2>&1 \
      | grep "^ours\|^dense\|^device\|matmul" | cut -c1-150
  done ;;
f8model)
  build_cuda
  for mt in 24 4; do
    step "bench_model --experts-fp8, batch 48 / 64, 512-token prompts, JAMBA_EXT_MOE_F8_MT4=$mt"
    JAMBA_EXT_MOE_F8_MT4=$mt timeout 120 python3 benchmarks/bench_model.py --no-hf --batches 48,64 --prompts 512 \
      --decode-steps 16 --experts-fp8 --budget-s 60 2>&1 | grep -E "^check|^impl|^jamba_ext" | tail -12
  done ;;
final)
  check_and_suite 280
  bench_issues s66 ;;
sanit)
  sanitize_all
  step "bench_moe at 3072-8192 tokens: ours (down's half tiles from 1024 slots an expert) / both from 384 (before)"
  timeout 150 python3 benchmarks/bench_moe.py --tokens 3072,3584,4096,5120,6144,8192 --name bench_moe_s66_halfb \
    --only "ours,ours:wgmma half both,dense mm" 2>&1 | grep "^ours\|^dense\|^device" | cut -c1-150
  step "dev/moe_ring_ab.py (fp8, graph-timed in turns: default, MT 2 everywhere)"
  timeout 150 python3 dev/moe_ring_ab.py --bf16 "" --fp8 40,64,96,128 --variants default,mt2=JAMBA_EXT_MOE_F8_MT4:0 \
    2>&1 | grep -v -i warn ;;
*) echo "unknown mode $mode"; exit 2 ;;
esac
step done
} 2>&1 | tee "$OUT/round.log"
cp benchmarks/results/bench_moe_s66*.json "$OUT/" 2>/dev/null
exit 0
