#!/usr/bin/env bash
# Session 40's last device call: the fp8 down GEMV with 8 chunks' loads a batch (JAMBA_EXT_FP8_GEMV_UD=8) against the
# default at 1 / 2 / 4 tokens (dev/fp8_gemv_ab.py --ud), and the fp8 GEMV tests with it. Log: $OUT/s40d.log.
. benchmarks/round_env.sh  # strict mode, $OUT, PYTHONPATH, JAMBA_COMMIT, step()
{
step "commit $JAMBA_COMMIT: build"
JAMBA_EXT_CUDA=1 pip install --no-build-isolation --no-deps -e . 2>&1 | grep -iE "error|Successfully inst" | head -5
step "fp8 GEMV A/B (down kernel, 8 chunks a batch)"
timeout 60 python3 dev/fp8_gemv_ab.py 1,2,4 --ud 2>&1 | grep -E "gemv|commit" | tail -12
step "fp8 GEMV tests with JAMBA_EXT_FP8_GEMV_UD=8"
JAMBA_EXT_FP8_GEMV_UD=8 timeout 40 python3 -m pytest -q -m cuda tests/test_fp8.py -k "fp8_matches_fp64 or engines_agree or without_tokens or cuda_vs_cpu or bad_id or cuda_graph" -p no:cacheprovider 2>&1 | tail -2
step "done"
} 2>&1 | tee "$OUT/s40d.log"
exit 0
