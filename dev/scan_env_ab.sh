#!/usr/bin/env bash
# A/B of selective_scan EXPERIMENT switches in one device call (device tool): build; bench_kernels --only scan
# with no switch, each switch alone and all together, in turns (two rounds, a JSON per run); then memcheck,
# racecheck and the scan CUDA tests with all switches on (the tests include the switches' bit-identity test).
# Usage on the device:  bash dev/scan_env_ab.sh JAMBA_EXT_SCAN_<SWITCH> [ANOTHER_SWITCH ...]
#   (log: $OUT/scan_env_ab.log). Session 14 ran its first form for JAMBA_EXT_SCAN_LEAN
#   (benchmarks/results/scan_lean_ab_e25f711.log).
[ $# -ge 1 ] || { echo "usage: scan_env_ab.sh ENV_VAR [ENV_VAR ...]"; exit 2; }
OUT=${OUT:-/tmp/jamba_gpu_out}; mkdir -p "$OUT"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
B=benchmarks/results/bench_kernels.json
all=(); for v in "$@"; do all+=("$v=1"); done
configs=("none"); for v in "$@"; do configs+=("$v=1"); done; [ $# -gt 1 ] && configs+=("all")
{
echo "=== build ($(date +%T))"
JAMBA_EXT_CUDA=1 pip install --no-build-isolation --no-deps -e . 2>&1 | grep -v "^ \|WARNING" | tail -1 | cut -c1-100
for r in 1 2; do for c in "${configs[@]}"; do
  case $c in none) envs=();; all) envs=("${all[@]}");; *) envs=("$c");; esac
  echo "=== bench scan [$c] round $r ($(date +%T))"
  env "${envs[@]}" timeout 60 python3 benchmarks/bench_kernels.py --only scan 2>&1 | grep "^selective_scan" | grep -v "(old)\|(pipelined)" | cut -c1-125
  cp $B "$OUT/bench_scan_${c//[=\/]/_}_r$r.json"
done; done
echo "=== memcheck [${all[*]}] ($(date +%T))"
env "${all[@]}" timeout 60 compute-sanitizer --tool memcheck --print-limit 10 python3 benchmarks/sanitize_cases.py 2>&1 | tail -2
echo "=== racecheck [${all[*]}]"
env "${all[@]}" timeout 60 compute-sanitizer --tool racecheck --print-limit 10 python3 benchmarks/sanitize_cases.py 2>&1 | tail -2
echo "=== scan CUDA tests [${all[*]}] ($(date +%T))"
env "${all[@]}" timeout 175 python3 -m pytest -q -m cuda -k "selective_scan" tests -p no:cacheprovider --timeout=170 2>&1 | tail -4
echo "=== done ($(date +%T))"
} 2>&1 | tee "$OUT/scan_env_ab.log"
