#!/usr/bin/env bash
# One device call for the W8A8 path of moe_experts_fp8 (act_fp8; session 39): build, the fp8 tests (W8A8 first),
# memcheck + racecheck + synccheck of small W8A8 cases, the A/B (dev/w8a8_ab.py at W8A8_TOKENS).
# Log: $OUT/w8a8.log. Usage: JAMBA_COMMIT=<sha> bash dev/w8a8_round.sh
set -uo pipefail
OUT=${OUT:-/tmp/jamba_gpu_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} JAMBA_COMMIT=${JAMBA_COMMIT:-unknown}
step() { echo; echo "=== $* ($(date +%T))"; }
{
step "commit $JAMBA_COMMIT: build"
JAMBA_EXT_CUDA=1 pip install --no-build-isolation --no-deps -e . 2>&1 | grep -iE "error|Successfully inst" | head -5
step "W8A8 tests first (30 s a test)"
timeout 150 python3 -m pytest -q -m cuda -k "w8a8 or act_fp8 or permutation" --timeout=30 --timeout-method=thread tests/test_fp8.py -p no:cacheprovider 2>&1 | tail -25
step "memcheck / racecheck / synccheck of small W8A8 cases (H 272: 3 k tiles; 300 rows on one expert; half tiles on)"
cat > /tmp/w8a8_case.py <<'PY'
import os, torch
from jamba_ext import ops
os.environ["JAMBA_EXT_WGMMA_HALF"] = "1"
dev = torch.device("cuda")
for dt, (T, K) in ((torch.bfloat16, (300, 1)), (torch.float16, (40, 2))):
    E, H, F = 4, 272, 144
    q = (*ops.quantize_fp8(torch.randn(E, 2 * F, H, device=dev)), *ops.quantize_fp8(torch.randn(E, H, F, device=dev)))
    lg = torch.randn(T, E, device=dev)
    if K == 1:
        lg[:, 0] += 100.0
    w, ids, offs, slots = ops.moe_route(lg, K)
    ops.moe_experts_fp8(torch.randn(T, H, device=dev, dtype=dt), w, ids, *q, slots, offs, act_fp8=True)
torch.cuda.synchronize()
print("w8a8_case ran")
PY
for tool in memcheck racecheck synccheck; do
  timeout 60 compute-sanitizer --tool $tool --print-limit 10 python3 /tmp/w8a8_case.py 2>&1 | tail -2
done
step "W8A8 A/B"
timeout ${AB_S:-200} python3 dev/w8a8_ab.py ${W8A8_TOKENS:-64,256,512,1024,2048,4096,8192} 2>&1 | tail -40
step "all fp8 tests (CUDA)"
timeout 150 python3 -m pytest -q -m cuda tests/test_fp8.py tests/test_fp8_model.py -p no:cacheprovider 2>&1 | tail -6
step "done"
} 2>&1 | tee "$OUT/w8a8.log"
