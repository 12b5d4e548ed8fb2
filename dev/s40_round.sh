#!/usr/bin/env bash
# Session 40's first device call: build, `jamba_ext check` (with its new W8A8 case), the self-check and W8A8 CUDA
# tests, dev/w8a8_gap.py (PDL on / off, profiler against wall time at 16384 tokens) with the clocks sampled.
# Log: $OUT/s40.log. Usage: JAMBA_COMMIT=<sha> bash dev/s40_round.sh
. benchmarks/round_env.sh  # strict mode, $OUT, PYTHONPATH, JAMBA_COMMIT, step()
{
step "commit $JAMBA_COMMIT: build"
JAMBA_EXT_CUDA=1 pip install --no-build-isolation --no-deps -e . 2>&1 | grep -iE "error|Successfully inst" | head -5
step "jamba_ext check"
timeout 120 python3 -m jamba_ext check 2>&1 | tail -30
step "self-check and W8A8 CUDA tests"
timeout 150 python3 -m pytest -q -m cuda tests/test_selfcheck.py tests/test_fp8.py -k "selfcheck or check or w8a8 or act_fp8" -p no:cacheprovider 2>&1 | tail -4
step "W8A8 gap at 16384 tokens (clocks sampled every 200 ms into clocks.csv)"
nvidia-smi --query-gpu=timestamp,clocks.sm,power.draw,clocks_throttle_reasons.active --format=csv -lms 200 > "$OUT/clocks.csv" 2>&1 &
smi=$!
timeout 150 python3 dev/w8a8_gap.py 2>&1 | tail -20
kill $smi 2>/dev/null
step "done"
} 2>&1 | tee "$OUT/s40.log"
exit 0
