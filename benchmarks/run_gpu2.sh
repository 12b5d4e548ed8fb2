#!/usr/bin/env bash
# The two-GPU checks (device tool, kind nvidia-h200-x2): build, then the tests that put tensors on cuda:1
# while cuda:0 is current (tests/test_cuda_extra.py, tests/test_moe.py: "second_gpu"). ~2 min with the build.
# Usage on the device:  JAMBA_COMMIT=<sha> bash benchmarks/run_gpu2.sh   (log: $OUT/gpu2.log)
set -uo pipefail
OUT=${OUT:-/tmp/jamba_gpu_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
{
echo "=== commit ${JAMBA_COMMIT:-unknown} ($(date +%T))"
nvidia-smi --query-gpu=index,name,memory.total --format=csv
JAMBA_EXT_CUDA=1 pip install --no-build-isolation --no-deps -e . 2>&1 | grep -v "^ " | tail -3
python3 -c "import torch; assert torch.cuda.device_count() >= 2, 'needs 2 GPUs'; print('GPUs:', torch.cuda.device_count())" || exit 1
timeout 240 python3 -m pytest -q -m cuda -k second_gpu --timeout=200 tests -p no:cacheprovider -rs 2>&1 | tail -15
echo "=== done ($(date +%T))"
} 2>&1 | tee "$OUT/gpu2.log"
