#!/usr/bin/env bash
# GPU round of the training path (selective_scan_bwd, the MoE's backward) in one device call: build, CUDA tests,
# compute-sanitizer memcheck and racecheck of sanitize_cases.py (every kernel, the backward's cases included),
# bench_kernels' scan and scan_bwd rows. Log: $OUT/scan_bwd.log, JSON: $OUT/bench_kernels.json.
# Usage on the device: JAMBA_COMMIT=<sha> [SKIP_KERNELS=1] bash benchmarks/run_gpu_bwd.sh
set -uo pipefail
OUT=${OUT:-/tmp/jamba_gpu_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} JAMBA_COMMIT=${JAMBA_COMMIT:-unknown}
step() { echo; echo "=== $* ($(date +%T))"; }
{
step "commit $JAMBA_COMMIT: build"
JAMBA_EXT_CUDA=1 pip install --no-build-isolation --no-deps -e . 2>&1 | grep -v "^ " | tail -2
step "tests (cuda): selective_scan_bwd, selective_scan, the MoE's gradients, the model's training step"
timeout 240 python3 -m pytest -q -m cuda --timeout=120 tests/test_selective_scan_bwd.py tests/test_selective_scan.py \
  "tests/test_moe.py::test_moe_experts_all_grads" "tests/test_moe.py::test_moe_experts_grad_matches_reference" \
  -p no:cacheprovider 2>&1 | tail -25
timeout 120 python3 -m pytest -q --timeout=100 tests/test_model.py -k "training" -p no:cacheprovider 2>&1 | tail -3
if [ "${SKIP_KERNELS:-0}" != 1 ]; then  # SKIP_KERNELS=1: no sanitizers and kernel benchmarks (Python-only changes)
step "compute-sanitizer memcheck (sanitize_cases.py)"
timeout 150 compute-sanitizer --tool memcheck --print-limit 20 python3 benchmarks/sanitize_cases.py 2>&1 | tail -6
step "compute-sanitizer racecheck (sanitize_cases.py)"
timeout 150 compute-sanitizer --tool racecheck --print-limit 20 python3 benchmarks/sanitize_cases.py 2>&1 | tail -6
step "bench_kernels --only scan_bwd,scan"
timeout 200 python3 benchmarks/bench_kernels.py --only scan_bwd,scan 2>&1 | tail -14
cp benchmarks/results/bench_kernels.json "$OUT/bench_kernels.json" 2>/dev/null
fi
step "dev/train_step_probe.py (one Jamba-v0.1 block: a training step, native backward against the reference's)"
timeout 200 python3 dev/train_step_probe.py --lengths 512,2048 --ref-length 512 2>&1 | grep -v "^USDT" | tail -30
step "done"
} 2>&1 | tee "$OUT/scan_bwd.log"
