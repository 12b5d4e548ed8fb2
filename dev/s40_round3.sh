#!/usr/bin/env bash
# Session 40's fp8 GEMV calls: the A/B of the two kernels' warps along K (dev/fp8_gemv_ab.py --kw, in turns) and
# the two kernels' times (dev/fp8_gemv_kernels.py). (Its first two forms timed the pipelined loop: logs
# fp8_gemv_pipe_e313f60.log, fp8_gemv_pipe_down_fc8bb36.log.) Log: $OUT/s40c.log. Usage: JAMBA_COMMIT=<sha> bash dev/s40_round3.sh
. benchmarks/round_env.sh  # strict mode, $OUT, PYTHONPATH, JAMBA_COMMIT, step()
{
step "commit $JAMBA_COMMIT: build"
JAMBA_EXT_CUDA=1 pip install --no-build-isolation --no-deps -e . 2>&1 | grep -iE "error|Successfully inst" | head -5
step "fp8 GEMV A/B (warps along K)"
timeout 200 python3 dev/fp8_gemv_ab.py 1,2,4,6 --kw 2>&1 | grep -E "gemv|commit|op \(default\)" | tail -40
step "the two kernels' times (torch.profiler, PDL off)"
timeout 60 python3 dev/fp8_gemv_kernels.py 1,2 1,4 2>&1 | grep "^T=" | tail -8
step "done"
} 2>&1 | tee "$OUT/s40c.log"
exit 0
