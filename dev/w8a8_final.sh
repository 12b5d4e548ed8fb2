#!/usr/bin/env bash
# Session 39's last W8A8 round in one device call: build, the fp8 CUDA tests (the W8A8 ones three times: their
# statistical criteria must not be flaky), the W8A8 A/B at the decode-side token counts, bench_moe's bf16 / fp8 / fp8
# act / (b) rows, bench_model --experts-fp8 --act-fp8 (one block). Log: $OUT/w8a8_final.log; bench_moe.json,
# bench_model.json. Usage: JAMBA_COMMIT=<sha> bash dev/w8a8_final.sh
. benchmarks/round_env.sh  # strict mode, $OUT, PYTHONPATH, JAMBA_COMMIT, step()
{
step "commit $JAMBA_COMMIT: build"
JAMBA_EXT_CUDA=1 pip install --no-build-isolation --no-deps -e . 2>&1 | grep -iE "error|Successfully inst" | head -5
step "fp8 CUDA tests"
timeout 120 python3 -m pytest -q -m cuda tests/test_fp8.py tests/test_fp8_model.py -p no:cacheprovider 2>&1 | tail -4
for i in 1 2; do
  step "W8A8 tests again ($i)"
  timeout 60 python3 -m pytest -q -m cuda -k "w8a8 or act_fp8" tests/test_fp8.py -p no:cacheprovider 2>&1 | tail -3
done
step "W8A8 A/B at few tokens"
timeout 90 python3 dev/w8a8_ab.py ${W8A8_TOKENS:-8,16,32,64} 2>&1 | tail -20
step "bench_moe (ours, ours fp8, ours fp8 act, (b))"
timeout 150 python3 benchmarks/bench_moe.py --only "ours,ours fp8,ours fp8 act,(b) sorted_mm" 2>&1 | grep -v "kernels (us" | tail -40
bench_model_fp8
step "done"
} 2>&1 | tee "$OUT/w8a8_final.log"
cp benchmarks/results/bench_moe.json benchmarks/results/bench_model.json "$OUT"/ 2>/dev/null
exit 0
