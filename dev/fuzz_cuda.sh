#!/usr/bin/env bash
# The fuzz tests (tests/test_fuzz_ops.py) on one GPU, in one device call: build, CASES random cases an op family from
# seed SEED on CUDA, then compute-sanitizer memcheck and racecheck on fewer cases of the families in SAN_K (a pytest
# -k expression; all families when empty). Output: $OUT/fuzz_cuda.log.
# Usage on the device: JAMBA_COMMIT=<sha> [CASES=500] [SEED=0] [SAN_CASES=20] [SAN_K="fp8 or inner"] \
#   [SAN_LIMIT=150 (s a tool)] bash dev/fuzz_cuda.sh
OUT=${OUT:-/tmp/jamba_fuzz_out}
. benchmarks/round_env.sh
CASES=${CASES:-500}; SEED=${SEED:-0}; SAN_CASES=${SAN_CASES:-20}; SAN_K=${SAN_K:-}
kargs=(); [ -n "$SAN_K" ] && kargs=(-k "$SAN_K")
{
echo "commit $JAMBA_COMMIT; CASES=$CASES SEED=$SEED SAN_CASES=$SAN_CASES SAN_K='$SAN_K'"
build_cuda
echo "== fuzz, $CASES cases an op from seed $SEED, cuda"
JAMBA_FUZZ_CASES=$CASES JAMBA_FUZZ_SEED=$SEED timeout 240 python3 -m pytest -q -m cuda --tb=line \
  tests/test_fuzz_ops.py -p no:cacheprovider 2>&1 | tail -25
for tool in memcheck racecheck; do
  echo "== $tool, $SAN_CASES cases an op from seed $SEED${SAN_K:+, families: $SAN_K}"
  JAMBA_FUZZ_CASES=$SAN_CASES JAMBA_FUZZ_SEED=$SEED timeout ${SAN_LIMIT:-150} \
    compute-sanitizer --tool $tool --print-limit 20 \
    python3 -m pytest -q -m cuda --tb=line tests/test_fuzz_ops.py "${kargs[@]}" -p no:cacheprovider 2>&1 | tail -8
done
} 2>&1 | tee "$OUT/fuzz_cuda.log"
