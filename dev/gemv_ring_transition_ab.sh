#!/usr/bin/env bash
# A/B on the device: does a decode step lose time where it passes into / out of gemv_ring_kernel (98 KB of shared
# memory a block, carveout set to max shared)? dev/mamba_step_probe.py's "whole step" against its sum of rows, and
# bench_model's graph decode at batch 1, under: the default (ring kernel at 1 row for N 512..8192), JAMBA_EXT_GEMV_MMA=0
# (the CUDA-core kernel at every row count), JAMBA_EXT_GEMV_RING_CARVEOUT=0 (the ring kernel without the carveout
# preference). Usage: JAMBA_COMMIT=<sha> bash dev/gemv_ring_transition_ab.sh  (log in $OUT)
set -uo pipefail
OUT=${OUT:-/tmp/jamba_gpu_out}; mkdir -p "$OUT"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 JAMBA_COMMIT=${JAMBA_COMMIT:-unknown}
{
echo "commit $JAMBA_COMMIT"
JAMBA_EXT_CUDA=1 pip install --no-build-isolation --no-deps -e . 2>&1 | tail -1
for i in 1 2; do
  for v in "JAMBA_EXT_NONE=1" "JAMBA_EXT_GEMV_MMA=0" "JAMBA_EXT_GEMV_RING_CARVEOUT=0"; do
    echo "=== $v (run $i)"
    env $v timeout 60 python3 dev/mamba_step_probe.py 2>&1 | tail -9
    env $v timeout 60 python3 benchmarks/bench_model.py --batches 1 --prompts 2048 --no-hf --decode-steps 32 --budget-s 20 2>&1 | grep -E "^jamba_ext\+graph"
  done
done
} 2>&1 | tee "$OUT/gemv_ring_transition_ab.log"
