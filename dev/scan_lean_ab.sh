export PYTHONPATH=$PWD PYTHONUNBUFFERED=1; B=benchmarks/results/bench_kernels.json
JAMBA_EXT_CUDA=1 pip install --no-build-isolation --no-deps -e . 2>&1 | tail -1 | cut -c1-80
for r in 1 2; do for L in 0 1; do echo "=== bench scan LEAN=$L round $r ($(date +%T))"; JAMBA_EXT_SCAN_LEAN=$L timeout 60 python3 benchmarks/bench_kernels.py --only scan 2>&1 | grep "^selective_scan" | grep -v "(old)\|(pipelined)" | cut -c1-125; cp $B $OUT/bench_scan_lean${L}_r$r.json; done; done
echo "=== memcheck LEAN=1 ($(date +%T))"; JAMBA_EXT_SCAN_LEAN=1 timeout 60 compute-sanitizer --tool memcheck --print-limit 10 python3 benchmarks/sanitize_cases.py 2>&1 | tail -2
echo "=== racecheck LEAN=1"; JAMBA_EXT_SCAN_LEAN=1 timeout 60 compute-sanitizer --tool racecheck --print-limit 10 python3 benchmarks/sanitize_cases.py 2>&1 | tail -2
echo "=== scan CUDA tests LEAN=1 ($(date +%T))"; JAMBA_EXT_SCAN_LEAN=1 timeout 175 python3 -m pytest -q -m cuda -k "selective_scan" tests -p no:cacheprovider --timeout=170 2>&1 | tail -5
echo "=== done ($(date +%T))"
