#!/usr/bin/env bash
# A/B of a causal_conv1d EXPERIMENT switch in one device call (device tool): build; the conv CUDA tests (they
# include each switch's same-bits test); bench_kernels --only conv with JAMBA_EXT_AB_ROWS=1 (the default kernel and
# every switch value as rows of one run), two runs; memcheck and racecheck of sanitize_cases.py with the switch
# set to each value given. Usage on the device:  bash dev/conv_ab.sh JAMBA_EXT_CONV_FLAT 1 2 4
#   (log: $OUT/conv_ab.log, JSON per run: $OUT/bench_conv_r<N>.json)
[ $# -ge 2 ] || { echo "usage: conv_ab.sh ENV_VAR VALUE [VALUE ...]"; exit 2; }
OUT=${OUT:-/tmp/jamba_gpu_out}; mkdir -p "$OUT"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
var=$1; shift
{
echo "=== commit ${JAMBA_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null)} | build ($(date +%T))"
JAMBA_EXT_CUDA=1 pip install --no-build-isolation --no-deps -e . 2>&1 | grep -v "^ \|WARNING" | tail -1 | cut -c1-100
echo "=== conv CUDA tests ($(date +%T))"
timeout 200 python3 -m pytest -q -m cuda -k "conv" tests -p no:cacheprovider --timeout=190 2>&1 | tail -4
for r in 1 2; do
  echo "=== bench conv, A/B rows, run $r ($(date +%T))"
  JAMBA_EXT_AB_ROWS=1 timeout 120 python3 benchmarks/bench_kernels.py --only conv 2>&1 \
    | grep "^causal_conv1d" | sed 's/GB\/s.*in a CUDA graph/| graph/' | cut -c1-150
  cp benchmarks/results/bench_kernels.json "$OUT/bench_conv_r$r.json"
done
for v in "$@"; do
  echo "=== memcheck / racecheck [$var=$v]"
  env "$var=$v" timeout 60 compute-sanitizer --tool memcheck --print-limit 10 python3 benchmarks/sanitize_cases.py 2>&1 | tail -1
  env "$var=$v" timeout 60 compute-sanitizer --tool racecheck --print-limit 10 python3 benchmarks/sanitize_cases.py 2>&1 | tail -1
done
echo "=== done ($(date +%T))"
} 2>&1 | tee "$OUT/conv_ab.log"
