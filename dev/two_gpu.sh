#!/usr/bin/env bash
# The two-GPU checks in one device call (kind nvidia-h200-x2): build, the tests that need two GPUs (tensors on cuda:1
# while cuda:0 is current: every Mamba kernel, the MoE op), and `jamba-ext check`, which checks every visible GPU.
# Usage on the device:  JAMBA_COMMIT=<sha> [FULL=1] [SPLIT_PROBE=1] bash dev/two_gpu.sh   (log: $OUT/two_gpu.log; ~1.5 min; pass the
# sha as a literal: the device's copy of .git may be stale). FULL=1: then every CUDA test and the sanitizer steps of
# run_gpu.sh as well (~6.5 min in all), so that one call on the two-GPU machine is a whole test round. SPLIT_PROBE=1:
# also dev/split_decode_probe.py (a model's layers over both GPUs against one GPU; SPLIT_PROBE_ARGS passes arguments).
OUT=${OUT:-/tmp/jamba_gpu_out}; mkdir -p "$OUT"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
{
echo "=== commit ${JAMBA_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null)} ($(date +%T))"
nvidia-smi -L
python3 -c "import torch; n = torch.cuda.device_count(); print('GPUs', n); assert n >= 2, 'needs 2 GPUs'" || exit 1
echo "=== build ($(date +%T))"
JAMBA_EXT_CUDA=1 pip install --no-build-isolation --no-deps -e . 2>&1 | grep -v "^ \|WARNING" | tail -1 | cut -c1-100
echo "=== two-GPU tests ($(date +%T))"
timeout 240 python3 -m pytest -q -rs -k "second_gpu or two_gpus or split_decode" tests -p no:cacheprovider --timeout=230 2>&1 | tail -6
if [ "${SPLIT_PROBE:-0}" = 1 ]; then
  echo "=== a model split over the two GPUs: decode speed (dev/split_decode_probe.py) ($(date +%T))"
  timeout 300 python3 dev/split_decode_probe.py ${SPLIT_PROBE_ARGS:-} 2>&1 | tail -12
fi
echo "=== jamba-ext check, every GPU ($(date +%T))"
timeout 120 python3 -m jamba_ext check 2>&1 | tail -25
if [ "${FULL:-0}" = 1 ]; then
  echo "=== every CUDA test ($(date +%T))"
  timeout 300 python3 -m pytest -q -rfE -m cuda --timeout=240 tests -p no:cacheprovider 2>&1 \
    | tee "$OUT/cuda_tests.log" \
    | grep -E "^(FAILED|ERROR)" | head -20; tail -2 "$OUT/cuda_tests.log"
  echo "=== compute-sanitizer memcheck / racecheck, small cases of every kernel ($(date +%T))"
  timeout 120 compute-sanitizer --tool memcheck --print-limit 20 python3 benchmarks/sanitize_cases.py 2>&1 | tail -2
  timeout 120 compute-sanitizer --tool racecheck --print-limit 20 python3 benchmarks/sanitize_cases.py 2>&1 | tail -2
  echo "=== compute-sanitizer memcheck / racecheck (half tiles forced on) of every MoE engine ($(date +%T))"
  timeout 120 compute-sanitizer --tool memcheck --print-limit 20 python3 benchmarks/bench_moe.py --sanitize 2>&1 | tail -2
  JAMBA_EXT_WGMMA_HALF=1 timeout 150 compute-sanitizer --tool racecheck --print-limit 20 python3 benchmarks/bench_moe.py \
    --sanitize 2>&1 | tail -2
fi
echo "=== done ($(date +%T))"
} 2>&1 | tee "$OUT/two_gpu.log"
