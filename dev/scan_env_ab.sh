#!/usr/bin/env bash
# A/B of a selective_scan EXPERIMENT switch in one device call (device tool): build, then bench_kernels --only scan
# with VAR unset and VAR=1 in turns (two rounds), memcheck + racecheck and the scan CUDA tests with VAR=1.
# Usage on the device:  bash dev/scan_env_ab.sh JAMBA_EXT_SCAN_BCF32     (log: $OUT/scan_env_ab.log, JSON per run)
# Session 14 ran its first form for JAMBA_EXT_SCAN_LEAN (benchmarks/results/scan_lean_ab_e25f711.log).
VAR=${1:?usage: scan_env_ab.sh ENV_VAR}
OUT=${OUT:-/tmp/jamba_gpu_out}; mkdir -p "$OUT"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
B=benchmarks/results/bench_kernels.json
{
echo "=== build ($(date +%T))"
JAMBA_EXT_CUDA=1 pip install --no-build-isolation --no-deps -e . 2>&1 | grep -v "^ \|WARNING" | tail -1 | cut -c1-100
for r in 1 2; do for v in 0 1; do
  echo "=== bench scan $VAR=$v round $r ($(date +%T))"
  env "$VAR=$v" timeout 60 python3 benchmarks/bench_kernels.py --only scan 2>&1 | grep "^selective_scan" | grep -v "(old)\|(pipelined)" | cut -c1-125
  cp $B "$OUT/bench_scan_${VAR}_${v}_r$r.json"
done; done
echo "=== memcheck $VAR=1 ($(date +%T))"
env "$VAR=1" timeout 60 compute-sanitizer --tool memcheck --print-limit 10 python3 benchmarks/sanitize_cases.py 2>&1 | tail -2
echo "=== racecheck $VAR=1"
env "$VAR=1" timeout 60 compute-sanitizer --tool racecheck --print-limit 10 python3 benchmarks/sanitize_cases.py 2>&1 | tail -2
echo "=== scan CUDA tests $VAR=1 ($(date +%T))"
env "$VAR=1" timeout 175 python3 -m pytest -q -m cuda -k "selective_scan" tests -p no:cacheprovider --timeout=170 2>&1 | tail -4
echo "=== done ($(date +%T))"
} 2>&1 | tee "$OUT/scan_env_ab.log"
