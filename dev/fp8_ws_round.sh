#!/usr/bin/env bash
# One device call for the fp8 wgmma kernel with converter warps (session 38): build, the fp8 tests, memcheck +
# racecheck + synccheck of a small wgmma case, the fp8 engines' A/B at FP8_AB_TOKENS.
# Log: $OUT/fp8_ws.log. Usage: JAMBA_COMMIT=<sha> bash dev/fp8_ws_round.sh
. benchmarks/round_env.sh  # strict mode, $OUT, PYTHONPATH, JAMBA_COMMIT, step()
{
step "commit $JAMBA_COMMIT: build"
JAMBA_EXT_CUDA=1 pip install --no-build-isolation --no-deps -e . 2>&1 | grep -iE "error|Successfully inst" | head -5
step "fp8 tests (CUDA; the wgmma kernel with converter warps)"
timeout 120 python3 -m pytest -q -m cuda tests/test_fp8.py tests/test_fp8_model.py -p no:cacheprovider 2>&1 | tail -4
step "memcheck / racecheck of a small wgmma case (H 272: 5 k tiles over the 4-stage ring; 3 m-tiles on expert 0)"
cat > /tmp/ws_case.py <<'PY'
import os, torch
from jamba_ext import ops
os.environ["JAMBA_EXT_FP8_WGMMA"] = "1"
dev = torch.device("cuda")
for dt, (T, K) in ((torch.bfloat16, (150, 1)), (torch.float16, (40, 2))):
    E, H, F = 4, 272, 48
    q = (*ops.quantize_fp8(torch.randn(E, 2 * F, H, device=dev)), *ops.quantize_fp8(torch.randn(E, H, F, device=dev)))
    lg = torch.randn(T, E, device=dev)
    if K == 1:
        lg[:, 0] += 100.0
    w, ids, offs, slots = ops.moe_route(lg, K)
    ops.moe_experts_fp8(torch.randn(T, H, device=dev, dtype=dt), w, ids, *q, slots, offs)
torch.cuda.synchronize()
print("ws_case ran")
PY
timeout 60 compute-sanitizer --tool memcheck --print-limit 10 python3 /tmp/ws_case.py 2>&1 | tail -2
timeout 60 compute-sanitizer --tool racecheck --print-limit 10 python3 /tmp/ws_case.py 2>&1 | tail -2
timeout 60 compute-sanitizer --tool synccheck --print-limit 10 python3 /tmp/ws_case.py 2>&1 | tail -2
step "fp8 engines A/B"
timeout ${AB_S:-150} python3 dev/fp8_gemv_ab.py ${FP8_AB_TOKENS:-128,256,512,2048,4096} 2>&1 | grep -v "gemv \|ring" | tail -40
step "done"
} 2>&1 | tee "$OUT/fp8_ws.log"
