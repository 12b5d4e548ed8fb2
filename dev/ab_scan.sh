#!/usr/bin/env bash
# A/B round of the pipelined selective_scan variants (JAMBA_EXT_SCAN_VARIANT = 0 .. 3, csrc/cuda/selective_scan.cu),
# for one device call; the package must ALREADY be built (JAMBA_EXT_CUDA=1 pip install ... -e .). Under ~4 min:
# every step has its own `timeout`, capped by what is left of a 235 s budget (later steps keep a reserve), so a
# slow step cuts the ones after it short instead of the call. Output: $OUT/ab_scan.log, $OUT/bench_kernels_scan_ab.json
#   1. the variants' own test (all three variants x f32/bf16/f16 x fast/general paths), once
#   2. the scan's CUDA tests under each variant (1, 2, 3, then 0 = the default)
#   3. compute-sanitizer racecheck of benchmarks/sanitize_cases.py (scan fast + general paths) under 1, 2, 3
#   4. bench_kernels --only scan with the A/B rows (JAMBA_EXT_AB_ROWS=1: "selective_scan (v1)" ..)
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
T0=$SECONDS; BUDGET=235
step() { echo; echo "=== $* ($(date +%T), +$((SECONDS - T0)) s)"; }
# cap WANT RESERVE: WANT seconds, or what is left of the budget minus RESERVE (at least 5)
cap() { local left=$((BUDGET - (SECONDS - T0) - $2)); [ "$left" -lt "$1" ] && echo $((left > 5 ? left : 5)) || echo "$1"; }
{
step "variants test (JAMBA_EXT_SCAN_VARIANT set by the test)"
timeout "$(cap 60 170)" python3 -m pytest -q -m cuda -k "selective_scan_variants" tests -p no:cacheprovider \
    --timeout=55 2>&1 | tail -3
for v in 1 2 3 0; do
    step "scan tests, JAMBA_EXT_SCAN_VARIANT=$v"
    JAMBA_EXT_SCAN_VARIANT=$v timeout "$(cap 100 140)" python3 -m pytest -q -m cuda \
        -k "selective_scan and not 2pow31 and not selective_scan_variants" tests -p no:cacheprovider --timeout=90 2>&1 | tail -3
done
for v in 1 2 3; do
    step "racecheck, JAMBA_EXT_SCAN_VARIANT=$v"
    JAMBA_EXT_SCAN_VARIANT=$v timeout "$(cap 40 110)" compute-sanitizer --tool racecheck --print-limit 10 \
        python3 benchmarks/sanitize_cases.py 2>&1 | tail -2
done
step "bench_kernels --only scan, A/B rows"
JAMBA_EXT_AB_ROWS=1 timeout "$(cap 150 3)" python3 benchmarks/bench_kernels.py --only scan 2>&1 | grep -v "^\s*$" | tail -60
cp benchmarks/results/bench_kernels.json "$OUT/bench_kernels_scan_ab.json" 2>/dev/null || echo "no bench JSON"
step "done"
} 2>&1 | tee "$OUT/ab_scan.log"
