#!/usr/bin/env bash
# Session 40's third device call: the fp8 GEMVs' software-pipelined loop (JAMBA_EXT_FP8_GEMV_PIPE=1 / 2) against the
# plain one at 1-6 tokens (dev/fp8_gemv_ab.py --pipe, in turns, same bits checked), and the fp8 CUDA tests with the
# switch set. Log: $OUT/s40c.log. Usage: JAMBA_COMMIT=<sha> bash dev/s40_round3.sh
. benchmarks/round_env.sh  # strict mode, $OUT, PYTHONPATH, JAMBA_COMMIT, step()
{
step "commit $JAMBA_COMMIT: build"
JAMBA_EXT_CUDA=1 pip install --no-build-isolation --no-deps -e . 2>&1 | grep -iE "error|Successfully inst" | head -5
step "fp8 GEMV A/B (pipelined loop)"
timeout 200 python3 dev/fp8_gemv_ab.py 1,2,4 --pipe 2>&1 | grep -E "gemv|commit|op \(default\)" | tail -40
step "the two kernels' times (torch.profiler, PDL off)"
timeout 60 python3 dev/fp8_gemv_kernels.py 1,3,4 2>&1 | grep "^T=" | tail -8
for v in 3 4; do
step "fp8 CUDA tests, JAMBA_EXT_FP8_GEMV_PIPE=$v"
JAMBA_EXT_FP8_GEMV_PIPE=$v timeout 100 python3 -m pytest -q -m cuda tests/test_fp8.py -k "not w8a8 and not act_fp8 and not wgmma" -p no:cacheprovider 2>&1 | tail -2
done
step "done"
} 2>&1 | tee "$OUT/s40c.log"
exit 0
