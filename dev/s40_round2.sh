#!/usr/bin/env bash
# Session 40's second device call: the W8A8 timing gap after idle (dev/w8a8_gap.py) and the e4m3 accumulation
# (dev/w8a8_accum.py). Log: $OUT/s40b.log. Usage: JAMBA_COMMIT=<sha> bash dev/s40_round2.sh
. benchmarks/round_env.sh  # strict mode, $OUT, PYTHONPATH, JAMBA_COMMIT, step()
{
step "commit $JAMBA_COMMIT: build"
JAMBA_EXT_CUDA=1 pip install --no-build-isolation --no-deps -e . 2>&1 | grep -iE "error|Successfully inst" | head -5
step "e4m3 accumulation (dev/w8a8_accum.py)"
timeout 150 python3 dev/w8a8_accum.py 2>&1 | grep -v Warning | tail -20
step "W8A8 gap at 16384 tokens"
timeout 150 python3 dev/w8a8_gap.py 2>&1 | grep -v -i warn | tail -24
step "done"
} 2>&1 | tee "$OUT/s40b.log"
exit 0
