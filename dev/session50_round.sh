#!/usr/bin/env bash
# Session 50's verification call on one H200 (device tool): build; the cross_entropy kernel after its exp change
# (its CUDA tests, the fuzz family from two seeds, bench_kernels --only loss); then every CUDA test, with skip reasons.
# Usage on the device: JAMBA_COMMIT=<sha> bash dev/session50_round.sh   (output: $OUT/round.log, bench_kernels.json)
OUT=${OUT:-/tmp/jamba_round_out}
. benchmarks/round_env.sh
{
echo "commit $JAMBA_COMMIT"
build_cuda
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
