#!/usr/bin/env bash
# Nsight Compute of the fp8 GEMVs at one token (moe_gemv_gate_up_kernel / moe_gemv_down_kernel, F8): speed of light,
# memory workload, occupancy, launch and warp-state sections of the third call's two kernels (ncu locks the clocks at
# base: compare the two kernels with each other, not with timed runs). Log: $OUT/ncu_fp8_gemv.txt.
# Usage: JAMBA_COMMIT=<sha> bash dev/ncu_fp8_gemv.sh
. benchmarks/round_env.sh  # strict mode, $OUT, PYTHONPATH, JAMBA_COMMIT, step()
{
step "commit $JAMBA_COMMIT: build"
JAMBA_EXT_CUDA=1 pip install --no-build-isolation --no-deps -e . 2>&1 | grep -iE "error|Successfully inst" | head -5
step "ncu, one token"
timeout 150 ncu --kernel-name regex:moe_gemv_ --launch-skip 4 --launch-count 2 --section SpeedOfLight \
  --section MemoryWorkloadAnalysis --section Occupancy --section LaunchStats --section WarpStateStats \
  python3 dev/ncu_fp8_gemv.py 1 2>&1 | grep -v "^==PROF==" | tail -150
step "done"
} 2>&1 | tee "$OUT/ncu_fp8_gemv.txt"
exit 0
