#!/usr/bin/env bash
# Session 41, the first GPU call (s41a.log, e5ae5a8; then s41b.log, the variants 1-4 of the bulk kernel; then s41c.log, the split partial sums; then s41d.log, the dot loop's unchecked path): the build, the fp8 CUDA tests (the bulk down kernel's same-bits test, session 40's
# fp8_act_applies asserts, the dequant kernels after the dq_live refactor), memcheck / racecheck of the sanitizer
# cases (the bulk kernel included), the A/B of the fp8 GEMVs with the EXPERIMENT JAMBA_EXT_MOE_GEMV_BULK=1 (in turns,
# dev/fp8_gemv_ab.py --bulk; its first line times dequant_fp8) and the two kernels' profiler breakdown.
# Log: $OUT/s41d.log. Usage: JAMBA_COMMIT=<sha> bash dev/s41_round.sh
. benchmarks/round_env.sh  # strict mode, $OUT, PYTHONPATH, JAMBA_COMMIT, step()
{
step "commit $JAMBA_COMMIT: build"
JAMBA_EXT_CUDA=1 pip install --no-build-isolation --no-deps -e . 2>&1 | grep -iE "error|Successfully inst" | head -5
step "fp8 CUDA tests"
timeout 150 python3 -m pytest -q -m cuda tests/test_fp8.py -k "not w8a8" -p no:cacheprovider 2>&1 | tail -2
step "fp8 CUDA tests with JAMBA_EXT_FP8_GEMV_FAST=0"
JAMBA_EXT_FP8_GEMV_FAST=0 timeout 150 python3 -m pytest -q -m cuda tests/test_fp8.py -k "not w8a8" -p no:cacheprovider 2>&1 | tail -2
step "fp8 GEMV A/B (the dot loop's unchecked path, and without it)"
timeout 150 python3 dev/fp8_gemv_ab.py 1,2,4,6 --fast 2>&1 | grep -vE "ring|bf16 op"
step "kernel breakdown"
timeout 60 python3 dev/fp8_gemv_kernels.py checked 2>&1 | tail -8
step "done"
} 2>&1 | tee "$OUT/s41d.log"
exit 0
