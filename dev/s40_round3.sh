#!/usr/bin/env bash
# Session 40's fp8 GEMV calls: the A/B of the two kernels' warps along K (dev/fp8_gemv_ab.py --kw, in turns; "fp8
# gemv" is the default pick, "kw 1,1" the pick before: one warp per row) and the fp8 CUDA tests. (Its earlier forms
# timed the pipelined loop and the kw pairs: fp8_gemv_pipe_e313f60.log, fp8_gemv_pipe_down_fc8bb36.log,
# fp8_gemv_kw_05df184.log.) Log: $OUT/s40c.log. Usage: JAMBA_COMMIT=<sha> bash dev/s40_round3.sh
. benchmarks/round_env.sh  # strict mode, $OUT, PYTHONPATH, JAMBA_COMMIT, step()
{
step "commit $JAMBA_COMMIT: build"
JAMBA_EXT_CUDA=1 pip install --no-build-isolation --no-deps -e . 2>&1 | grep -iE "error|Successfully inst" | head -5
step "fp8 GEMV A/B (one row per warp in the down kernel)"
timeout 200 python3 dev/fp8_gemv_ab.py 1,2,3,4,5,6 --dr 2>&1 | grep -E "gemv|commit|op \(default\)" | tail -40
step "the two kernels' times (torch.profiler, PDL off)"
timeout 60 python3 dev/fp8_gemv_kernels.py dr1 2>&1 | grep "^T=" | tail -8
step "fp8 CUDA tests with JAMBA_EXT_FP8_GEMV_DR=1"
JAMBA_EXT_FP8_GEMV_DR=1 timeout 100 python3 -m pytest -q -m cuda tests/test_fp8.py -k "not w8a8 and not act_fp8" -p no:cacheprovider 2>&1 | tail -2
step "done"
} 2>&1 | tee "$OUT/s40c.log"
exit 0
