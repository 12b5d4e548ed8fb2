#!/usr/bin/env bash
# Half tiles (an expert's last <= 64 rows as a 64-row tile in the persistent wgmma kernel) at large sizes:
# the default (on from 384 slots per expert) against JAMBA_EXT_WGMMA_HALF=0, in turns inside each bench_moe process
# (ours = the default; "ours:wgmma nohalf" = the same kernel without half tiles), three processes.
# Then the CUDA tests touched by session 43 (transformers integration, the autocast training tests).
# Usage on the device: JAMBA_COMMIT=<sha> bash dev/half_ab.sh  -> $OUT/half_ab.log
set -uo pipefail
OUT=${OUT:-/tmp/jamba_gpu_out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
{
echo "commit ${JAMBA_COMMIT:-unknown}: half tiles A/B at 3072-16384 tokens"
t0=$(date +%s)
JAMBA_EXT_CUDA=1 pip install --no-build-isolation --no-deps -e . 2>&1 | grep -v "^ " | tail -1
echo "build $(( $(date +%s) - t0 )) s"
for r in 1 2 3; do
  echo "=== round $r $(date +%T)"
  timeout 150 python3 benchmarks/bench_moe.py --tokens ${TOKENS:-3072,4096,8192,16384} --reps 20 --name half_ab_$r \
    --only "ours,ours:wgmma,ours:wgmma nohalf,dense mm" 2>&1 | grep -E "^(ours|dense|device)" | cut -c1-140
done
echo "=== CUDA tests of the transformers integration and the autocast training $(date +%T)"
timeout 200 python3 -m pytest -q -m cuda tests/test_integration_transformers.py tests/test_model.py -rs \
  -p no:cacheprovider 2>&1 | tail -8
echo "=== done $(date +%T)"
} 2>&1 | tee "$OUT/half_ab.log"
