#!/usr/bin/env bash
# Session 51's second call on one H200 (device tool): build; the CUDA tests of per-request sampling (row_sampling,
# the batcher, the server) and of continuous batching; bench_serve (warm-up run, median of 2, the mixed-settings
# row); dev/serve_probe.py (the server against the offline batcher, step by step).
# Usage on the device: JAMBA_COMMIT=<sha> bash dev/session51_round2.sh  (output: $OUT/round.log, bench_serve.json)
OUT=${OUT:-/tmp/jamba_round_out}
. benchmarks/round_env.sh
{
echo "commit $JAMBA_COMMIT"
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem --format=csv,noheader
build_cuda
step "CUDA tests: row sampling, continuous batching, serve"
timeout 200 python3 -m pytest -q -m cuda -rs --timeout=120 --tb=short tests/test_row_sampling.py \
  tests/test_continuous.py tests/test_server.py -p no:cacheprovider 2>&1 | tail -30
step "bench_serve (one Jamba-v0.1 block, bf16, 64 requests, 16 clients; warm-up run, median of 2)"
timeout 240 python3 benchmarks/bench_serve.py 2>&1 | grep -v "^\[transformers" | tail -16
cp benchmarks/results/bench_serve.json "$OUT/" 2>/dev/null
step "dev/serve_probe.py (8 and 16 rows)"
timeout 200 python3 dev/serve_probe.py 2>&1 | grep -v "^\[transformers" | tail -16
step done
} 2>&1 | tee "$OUT/round.log"
