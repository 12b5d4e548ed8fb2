#!/usr/bin/env bash
# Session 50's verification call on one H200 (device tool): build; the cross_entropy kernel after its exp change
# (its CUDA tests, the fuzz family from two seeds, bench_kernels --only loss); then every CUDA test, with skip reasons.
# Usage on the device: JAMBA_COMMIT=<sha> bash dev/session50_round.sh   (output: $OUT/round.log, bench_kernels.json)
set -uo pipefail
OUT=${OUT:-/tmp/jamba_round_out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
{
echo "commit ${JAMBA_COMMIT:-unknown}"
t0=$(date +%s)
JAMBA_EXT_CUDA=1 pip install --no-build-isolation --no-deps -e . 2>&1 | grep -v "^ \|WARNING: Running pip" | tail -2
python3 -c "import jamba_ext; assert jamba_ext.has_cuda_kernels()" || exit 1
echo "build $(( $(date +%s) - t0 )) s"
echo "== cross_entropy CUDA tests"
timeout 90 python3 -m pytest -q -m cuda --tb=line tests/test_cross_entropy.py -p no:cacheprovider 2>&1 | tail -4
for seed in 1000 0; do
  echo "== fuzz cross_entropy, 500 cases from seed $seed, cuda"
  JAMBA_FUZZ_CASES=500 JAMBA_FUZZ_SEED=$seed timeout 90 python3 -m pytest -q -m cuda --tb=line \
    tests/test_fuzz_ops.py -k cross_entropy -p no:cacheprovider 2>&1 | tail -4
done
echo "== bench_kernels --only loss"
timeout 90 python3 benchmarks/bench_kernels.py --only loss 2>&1 | tail -8
cp benchmarks/results/bench_kernels.json "$OUT/" 2>/dev/null
echo "== every CUDA test (-rs: skip reasons)"
timeout 270 python3 -m pytest -q -m cuda -rs --timeout=240 tests -p no:cacheprovider 2>&1 | tail -30
} 2>&1 | tee "$OUT/round.log"
