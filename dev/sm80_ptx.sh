#!/usr/bin/env bash
# The sm_80 code paths on the H200: a PTX build for compute_80 (JAMBA_EXT_ARCHS=80 JAMBA_EXT_PTX=1), which the
# driver compiles for sm_90 at first use, so the A100 paths (mma engines, no wgmma / TMA) run here.
# Usage on the device: JAMBA_COMMIT=<sha> [TESTS="tests/x.py ..."] [PYTEST_K="expr"] [SKIP_CHECK=1] [SUITE_S=420] bash dev/sm80_ptx.sh  -> $OUT/sm80_ptx.log
set -uo pipefail
OUT=${OUT:-/tmp/jamba_gpu_out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
# the driver's JIT cache: big enough for every kernel, so each later process loads the compiled code
export CUDA_CACHE_PATH=/tmp/jamba_jit_cache CUDA_CACHE_MAXSIZE=4294967295
{
echo "commit ${JAMBA_COMMIT:-unknown}: sm_80 code paths on the H200 through PTX (JAMBA_EXT_ARCHS=80 JAMBA_EXT_PTX=1)"
t0=$(date +%s)
JAMBA_EXT_CUDA=1 JAMBA_EXT_ARCHS=80 JAMBA_EXT_PTX=1 pip install --no-build-isolation --no-deps -e . 2>&1 | grep -v "^ " | tail -3
echo "build $(( $(date +%s) - t0 )) s"
python3 -c "import jamba_ext.ops as o; print('archs', o.cuda_archs(), 'ptx', o.cuda_ptx(), 'has_cuda', o.has_cuda_kernels())"
if [ "${SKIP_CHECK:-0}" != 1 ]; then
  echo "=== jamba-ext check --device cuda $(date +%T)"
  timeout 150 python3 -m jamba_ext check --device cuda 2>&1 | tail -40
fi
echo "=== tests marked cuda $(date +%T)"
timeout ${SUITE_S:-420} python3 -m pytest -q -m cuda --timeout=150 --timeout-method=thread -rfE --tb=short \
  --durations=12 ${TESTS:-tests} ${PYTEST_K:+-k "$PYTEST_K"} -p no:cacheprovider 2>&1 | tail -120
echo "=== done $(date +%T)"
} 2>&1 | tee "$OUT/sm80_ptx.log"
