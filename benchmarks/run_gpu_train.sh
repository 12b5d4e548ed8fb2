#!/usr/bin/env bash
# GPU round of the training path in one device call: build, the CUDA tests of the backward ops (selective_scan_bwd
# and the scan, causal_conv1d_bwd, rms_norm_bwd, silu_mul_bwd, the MoE's gradients, the model's training step),
# memcheck and racecheck of sanitize_cases.py, bench_kernels' scan_bwd, conv_bwd and norm_bwd rows, then
# dev/train_step_probe.py with PDL off (a per-kernel breakdown). Log: $OUT/train.log, JSON:
# $OUT/bench_kernels_train.json; benchmarks/bench_train.py (ours vs transformers' step): $OUT/bench_train.json / .png.
# Usage on the device: JAMBA_COMMIT=<sha> [SKIP_KERNELS=1] [SKIP_BENCH_TRAIN=1] [PROBE_ARGS="--batch 4"] bash benchmarks/run_gpu_train.sh
# (SKIP_KERNELS=1: no sanitizers and kernel benchmarks, for Python-only changes)
. benchmarks/round_env.sh  # strict mode, $OUT, PYTHONPATH, JAMBA_COMMIT, step()
{
step "commit $JAMBA_COMMIT: build"
JAMBA_EXT_CUDA=1 pip install --no-build-isolation --no-deps -e . 2>&1 | grep -v "^ " | tail -2
step "tests (cuda): the backward ops and the training step"
timeout 300 python3 -m pytest -q -m cuda --timeout=120 tests/test_selective_scan_bwd.py tests/test_causal_conv1d.py \
  tests/test_moe.py tests/test_rms_norm.py tests/test_model.py ${EXTRA_TESTS:-} \
  -k "silu_mul or grad or bwd or backward or train or lm_loss or autocast" \
  -p no:cacheprovider 2>&1 | tail -8
timeout 200 python3 -m pytest -q -m cuda --timeout=120 tests/test_selective_scan.py -p no:cacheprovider 2>&1 | tail -3
timeout 120 python3 -m pytest -q --timeout=100 tests/test_model.py -k "training" -p no:cacheprovider 2>&1 | tail -3
if [ "${SKIP_KERNELS:-0}" != 1 ]; then
step "compute-sanitizer memcheck (sanitize_cases.py)"
timeout 150 compute-sanitizer --tool memcheck --print-limit 20 python3 benchmarks/sanitize_cases.py 2>&1 | tail -4
step "compute-sanitizer racecheck (sanitize_cases.py)"
timeout 150 compute-sanitizer --tool racecheck --print-limit 20 python3 benchmarks/sanitize_cases.py 2>&1 | tail -4
step "bench_kernels --only scan_bwd,conv_bwd,norm_bwd"
timeout 240 python3 benchmarks/bench_kernels.py --only scan_bwd,conv_bwd,norm_bwd 2>&1 | tail -8
cp benchmarks/results/bench_kernels.json "$OUT/bench_kernels_train.json" 2>/dev/null
fi
step "jamba-ext train on the GPU (built-in model, fp32 weights under bf16 autocast; then generate from the result)"
timeout 120 python3 -m jamba_ext train --text-file README.md --steps 60 --seq-len 256 --device cuda --save /tmp/jt 2>&1 \
  | grep -v "^\[transformers\]" | tail -4
timeout 60 python3 -m jamba_ext generate --model /tmp/jt --prompt "The model" --max-new-tokens 24 --temperature 0.8 2>&1 | tail -2
timeout 120 python3 -m jamba_ext train --text-file README.md --steps 60 --seq-len 256 --device cuda --lora 8 --save /tmp/jl \
  2>&1 | grep -v "^\[transformers\]" | tail -4
timeout 60 python3 -m jamba_ext generate --model /tmp/jl --prompt "The model" --max-new-tokens 24 --repetition-penalty 1.3 \
  --min-new-tokens 8 2>&1 | tail -2
if [ "${SKIP_BENCH_TRAIN:-0}" != 1 ]; then
step "bench_train (ours vs transformers' training step, same weights)"
timeout 300 python3 benchmarks/bench_train.py 2>&1 | grep -v "^\[transformers\]" | tail -20
cp benchmarks/results/bench_train.json benchmarks/results/bench_train.png "$OUT/" 2>/dev/null
fi
step "dev/train_step_probe.py at 2048 tokens, PDL off"
JAMBA_EXT_PDL=0 timeout 240 python3 dev/train_step_probe.py --lengths 512,2048 --ref-length 0 --copies 24 ${PROBE_ARGS:-} 2>&1 | grep -v "^USDT" \
  | sed -n '/^commit\|^L=/p;/kernels by device/,$p'
step "done"
} 2>&1 | tee "$OUT/train.log"
