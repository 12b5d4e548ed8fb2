#!/usr/bin/env bash
# The short GPU check of a gemv host-rule change: build, the gemv / static-decode / mamba-step CUDA tests, memcheck of
# sanitize_cases, the Mamba step probe (default, then the ring kernel forced at 1 row with PDL on and off: where does
# its chain cost come from?), bench_model's graph decode at batch 1 / 2 / 4 / 8 (2K prompts, no transformers).
# Usage: JAMBA_COMMIT=<sha> bash dev/gemv_final_check.sh  (log in $OUT)
set -uo pipefail
OUT=${OUT:-/tmp/jamba_gpu_out}; mkdir -p "$OUT"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 JAMBA_COMMIT=${JAMBA_COMMIT:-unknown}
{
echo "commit $JAMBA_COMMIT"
JAMBA_EXT_CUDA=1 pip install --no-build-isolation --no-deps -e . 2>&1 | tail -1
timeout 120 python3 -m pytest -q -m cuda --timeout=60 tests/test_gemv.py tests/test_static_decode.py tests/test_mamba_step.py -p no:cacheprovider 2>&1 | tail -3
timeout 60 compute-sanitizer --tool memcheck --print-limit 10 python3 benchmarks/sanitize_cases.py 2>&1 | tail -2
for v in "JAMBA_EXT_NONE=1" "JAMBA_EXT_GEMV_MMA=ring" "JAMBA_EXT_GEMV_MMA=ring JAMBA_EXT_PDL=0" "JAMBA_EXT_PDL=0"; do
  echo "=== probe with $v"
  env $v timeout 60 python3 dev/mamba_step_probe.py 2>&1 | tail -9
done
timeout 90 python3 benchmarks/bench_model.py --batches 1,2,4,8 --prompts 2048 --no-hf --decode-steps 32 --budget-s 30 2>&1 | tail -10
} 2>&1 | tee "$OUT/gemv_final_check.log"
