#!/usr/bin/env bash
# Session 40's fp8 GEMV calls: the A/B of the two kernels' warps along K (dev/fp8_gemv_ab.py --kw, in turns; "fp8
# gemv" is the default pick, "kw 1,1" the pick before: one warp per row) and the fp8 CUDA tests. (Its earlier forms
# timed the pipelined loop and the kw pairs: fp8_gemv_pipe_e313f60.log, fp8_gemv_pipe_down_fc8bb36.log,
# fp8_gemv_kw_05df184.log.) Log: $OUT/s40c.log. Usage: JAMBA_COMMIT=<sha> bash dev/s40_round3.sh
. benchmarks/round_env.sh  # strict mode, $OUT, PYTHONPATH, JAMBA_COMMIT, step()
{
step "commit $JAMBA_COMMIT: build"
JAMBA_EXT_CUDA=1 pip install --no-build-isolation --no-deps -e . 2>&1 | grep -iE "error|Successfully inst" | head -5
step "fp8 GEMV A/B (warps along K)"
timeout 200 python3 dev/fp8_gemv_ab.py 1,2,3,4,5,6 --kw 2>&1 | grep -E "gemv$|gemv |commit|op \(default\)" | grep -v "kw [24],4" | tail -40
step "fp8 CUDA tests"
timeout 100 python3 -m pytest -q -m cuda tests/test_fp8.py -k "not w8a8 and not act_fp8" -p no:cacheprovider 2>&1 | tail -2
step "done"
} 2>&1 | tee "$OUT/s40c.log"
exit 0
