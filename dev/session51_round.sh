#!/usr/bin/env bash
# Session 51's first call on one H200 (device tool): build; the CUDA tests of the code written since the last device
# call (continuous batching, jamba-ext serve, generate_many, the CLI); bench_serve; run_gpu.sh's bench_batch step.
# Usage on the device: JAMBA_COMMIT=<sha> bash dev/session51_round.sh  (output: $OUT/round.log, bench_serve.json,
# bench_batch.json)
OUT=${OUT:-/tmp/jamba_round_out}
. benchmarks/round_env.sh
{
echo "commit $JAMBA_COMMIT"
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem --format=csv,noheader
build_cuda
step "CUDA tests: continuous batching, serve, generate_many, the CLI"
timeout 200 python3 -m pytest -q -m cuda -rs --timeout=120 --tb=short tests/test_continuous.py tests/test_server.py \
  tests/test_batch.py tests/test_generate_cli.py -p no:cacheprovider 2>&1 | tail -30
step "bench_serve (one Jamba-v0.1 block, bf16, 64 requests, 16 clients)"
timeout 200 python3 benchmarks/bench_serve.py 2>&1 | grep -v "^\[transformers" | tail -16
cp benchmarks/results/bench_serve.json "$OUT/" 2>/dev/null
step "bench_batch --batch-sizes 8,32 --reps 1 (run_gpu.sh's step)"
timeout 200 python3 benchmarks/bench_batch.py --batch-sizes 8,32 --reps 1 2>&1 | tail -16
cp benchmarks/results/bench_batch.json "$OUT/" 2>/dev/null
step done
} 2>&1 | tee "$OUT/round.log"
