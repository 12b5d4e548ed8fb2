#!/usr/bin/env bash
# One device call for the memory-bound A/B of session 5: the conv forward (JAMBA_EXT_CONV_VARIANT=0..5,
# csrc/cuda/causal_conv1d.cu) and the state update's fast kernel (JAMBA_EXT_SSU_VARIANT=0..2,
# csrc/cuda/selective_state_update.cu). The package must ALREADY be built (the caller builds once):
#   JAMBA_EXT_CUDA=1 pip install --no-build-isolation --no-deps -e . && bash dev/ab_mem.sh
# Steps (~3-4 min; every step has its own timeout):
#   1. CUDA tests -k "conv or state_update" under variant 0 (they include the bit-identity tests that run
#      every variant against variant 0 on chained-segment shapes);
#   2. under each conv variant: the conv forward tests; under each SSU variant: the state-update tests
#      (the whole "conv or state_update" set per value would be ~50 s x 8);
#   3. compute-sanitizer memcheck of conv forward cases (16-byte and element rows, several segments per
#      warp, initial / final state) under each conv variant (no shared memory in them: no racecheck);
#      memcheck and racecheck of benchmarks/sanitize_cases.py under each SSU variant (shared B/C, a barrier);
#   4. bench_kernels --only conv,decode with the A/B rows (JAMBA_EXT_AB_ROWS=1), graph-timed.
# Output: $OUT/ab_mem.log, $OUT/bench_kernels_mem.json
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
unset JAMBA_EXT_CONV_VARIANT JAMBA_EXT_SSU_VARIANT JAMBA_EXT_AB_ROWS
step() { echo; echo "=== $* ($(date +%T))"; }
CASES=$OUT/ab_conv_cases.py
cat > "$CASES" <<'EOF'
"""conv forward cases for compute-sanitizer: 16-byte rows (VEC) and odd L (element loads), enough segments
per warp that the one-wave grids chain segments across row ends, initial and final state."""
import torch
from jamba_ext import ops
dev = torch.device("cuda")
g = torch.Generator(device=dev).manual_seed(0)
for dt in (torch.bfloat16, torch.float32):
    for B, DI, L, K, S in ((2, 300, 8200, 4, 4), (2, 300, 8199, 3, 5), (2, 72, 37, 4, 4), (1, 5, 0, 4, 6)):
        x = torch.randn(B, DI, L, generator=g, device=dev).to(dt)
        w = torch.randn(DI, K, generator=g, device=dev)
        b = torch.randn(DI, generator=g, device=dev)
        init = torch.randn(B, DI, K - 1, generator=g, device=dev).to(dt)
        ops.causal_conv1d(x, w, b, init, True, S)
        ops.causal_conv1d(x, w.to(dt), None, None, False, 0)
torch.cuda.synchronize()
print("ab_conv_cases: all ran")
EOF
{
step "environment"
nvidia-smi --query-gpu=name,clocks.max.sm,memory.total --format=csv,noheader 2>&1 | head -2
git log -1 --format="%h %s" 2>/dev/null | cut -c1-120
git status --short 2>/dev/null | head -20

step "CUDA tests, conv or state_update (variant 0; includes the variant bit-identity tests)"
timeout 150 python3 -m pytest -q -m cuda -k "conv or state_update" tests -p no:cacheprovider --timeout=120 2>&1 | tail -6

for v in 1 2 3 4 5; do
    step "conv forward tests, JAMBA_EXT_CONV_VARIANT=$v"
    JAMBA_EXT_CONV_VARIANT=$v timeout 60 python3 -m pytest -q -m cuda -k "causal_conv1d and not update and not ab_variants" \
        tests -p no:cacheprovider --timeout=120 2>&1 | tail -3
done
for v in 1 2; do
    step "state update tests, JAMBA_EXT_SSU_VARIANT=$v"
    JAMBA_EXT_SSU_VARIANT=$v timeout 60 python3 -m pytest -q -m cuda -k "state_update and not ab_variants" \
        tests -p no:cacheprovider --timeout=120 2>&1 | tail -3
done

for v in 0 1 2 3 4 5; do
    step "memcheck, conv forward cases, JAMBA_EXT_CONV_VARIANT=$v"
    JAMBA_EXT_CONV_VARIANT=$v timeout 60 compute-sanitizer --tool memcheck --print-limit 10 python3 "$CASES" 2>&1 | tail -3
done
for v in 1 2; do
    for tool in memcheck racecheck; do
        step "$tool, sanitize_cases.py, JAMBA_EXT_SSU_VARIANT=$v"
        JAMBA_EXT_SSU_VARIANT=$v timeout 60 compute-sanitizer --tool $tool --print-limit 10 \
            python3 benchmarks/sanitize_cases.py 2>&1 | tail -3
    done
done

step "bench_kernels --only conv,decode (A/B rows)"
JAMBA_EXT_AB_ROWS=1 timeout 240 python3 benchmarks/bench_kernels.py --only conv,decode 2>&1 | grep -v "^\s*$" | tail -70
cp benchmarks/results/bench_kernels.json "$OUT/bench_kernels_mem.json" && echo "copied to $OUT/bench_kernels_mem.json"

step "summary: graph-timed us per row (conv, state update)"
python3 - "$OUT/bench_kernels_mem.json" <<'EOF'
import json, sys
for r in json.load(open(sys.argv[1]))["rows"]:
    op = r["op"]
    if op.startswith("selective_state_update") or (op.startswith("causal_conv1d") and "update" not in op):
        print(f"{r['label']:<66} {r.get('graph_us', float('nan')):7.1f} us  "
              f"{r.get('pct_copy_bw_graph', float('nan')):5.1f}% copy bw")
EOF

step "done"
} 2>&1 | tee "$OUT/ab_mem.log"
