#!/usr/bin/env bash
# The whole-model round in one call (device tool, H200): build, the gemv / PDL-chain CUDA tests, the A/B of the
# one-block graph decode step under the gemv kernel-pick rules (dev/gemv_decode_ab.py, replays timed in turns), and
# the whole Jamba-v0.1 (bench_model.py --layers 32: 51.6B parameters, ~103 GB, random weights; no transformers), and
# dev/long_prompt_probe.py (32K / 256K-token prompts: chunked prefill against one forward).
# Everything goes to $OUT: model_round.log, bench_model_L32.json / .png.
# Usage on the device:  JAMBA_COMMIT=<sha> bash benchmarks/run_gpu_model.sh   (pass JAMBA_COMMIT: the device's .git
# may be stale)
set -uo pipefail
OUT=${OUT:-/tmp/jamba_gpu_out}
mkdir -p "$OUT"
note=""  # the device's copy of .git may be stale: its HEAD is only a fallback, and the log says so
[ -z "${JAMBA_COMMIT:-}" ] && note=" from .git (JAMBA_COMMIT not given; the device copy of .git may be stale)"
export PYTHONUNBUFFERED=1 JAMBA_COMMIT=${JAMBA_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)} PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
step() { echo; echo "=== $* ($(date +%T))"; }
{
step "environment (commit $JAMBA_COMMIT$note)"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.mem --format=csv
step "build"
t0=$(date +%s)
JAMBA_EXT_CUDA=1 pip install --no-build-isolation --no-deps -e . 2>&1 | grep -v "^ " | tail -2
python3 -c "import jamba_ext; assert jamba_ext.has_cuda_kernels(), 'built without CUDA'" || exit 1
echo "build took $(( $(date +%s) - t0 )) s"
step "tests: gemv, the PDL chain, the static decode step (cuda)"
timeout 120 python3 -m pytest -q -m cuda --timeout=60 -p no:cacheprovider -k "gemv or pdl or static_decode" \
  tests/test_gemv.py tests/test_cuda_extra.py tests/test_static_decode.py 2>&1 | tail -4
B=${AB_BATCH:-1}
step "dev/gemv_decode_ab.py: graph decode step, one block, batch $B, JAMBA_EXT_GEMV_MMA default / vec1 / ring / wide"
timeout 120 python3 dev/gemv_decode_ab.py --env JAMBA_EXT_GEMV_MMA --values default,vec1,ring,wide --batch $B 2>&1 | tail -70
step "bench_model --layers 32 (the whole Jamba-v0.1, no transformers)"
timeout ${L32_TIMEOUT:-330} python3 benchmarks/bench_model.py --layers 32 --no-hf --decode-steps 32 2>&1 | tail -25
step "dev/long_prompt_probe.py: the whole model, 32K and 256K-token prompts, chunked prefill against one forward"
timeout 150 python3 dev/long_prompt_probe.py --layers 32 --lengths 32768,262144 2>&1 | grep -v Warn | tail -8
step "done"
} 2>&1 | tee "$OUT/model_round.log"
cp benchmarks/results/bench_model_L32.json benchmarks/results/bench_model_L32.png "$OUT"/ 2>/dev/null
exit 0
