#!/usr/bin/env bash
# One device call for the fp8 wgmma kernel (session 38): build, its tests and the other fp8 tests, memcheck and
# racecheck of sanitize_cases.py (fp8 cases: ring, wgmma forced, dequantizing path), then the fp8 engines' A/B
# (dev/fp8_gemv_ab.py) at FP8_AB_TOKENS. Log: $OUT/fp8_wgmma.log. Usage: JAMBA_COMMIT=<sha> bash dev/fp8_wgmma_round.sh
set -uo pipefail
OUT=${OUT:-/tmp/jamba_gpu_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} JAMBA_COMMIT=${JAMBA_COMMIT:-unknown}
step() { echo; echo "=== $* ($(date +%T))"; }
{
step "commit $JAMBA_COMMIT: build"
nvidia-smi --query-gpu=name,clocks.sm --format=csv,noheader
JAMBA_EXT_CUDA=1 pip install --no-build-isolation --no-deps -e . 2>&1 | grep -iE "error|Successfully inst" | head -5
step "wgmma smoke test"
timeout 60 python3 -m pytest -q -x tests/test_fp8.py -k "wgmma_matches_fp64 and T64H512F272" -p no:cacheprovider 2>&1 | tail -4
step "fp8 tests (CUDA)"
timeout ${TEST_S:-200} python3 -m pytest -q -m cuda tests/test_fp8.py tests/test_fp8_model.py -p no:cacheprovider 2>&1 | tail -8
if [ -z "${SKIP_SAN:-}" ]; then
step "memcheck / racecheck (sanitize_cases.py)"
timeout 100 compute-sanitizer --tool memcheck --print-limit 20 python3 benchmarks/sanitize_cases.py 2>&1 | tail -3
timeout 100 compute-sanitizer --tool racecheck --print-limit 20 python3 benchmarks/sanitize_cases.py 2>&1 | tail -3
fi
step "fp8 engines A/B"
timeout ${AB_S:-170} python3 dev/fp8_gemv_ab.py ${FP8_AB_TOKENS:-16,32,64,128,256,512,1024,2048} 2>&1 | tail -60
step "done"
} 2>&1 | tee "$OUT/fp8_wgmma.log"
