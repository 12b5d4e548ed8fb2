#!/usr/bin/env bash
# Session 51's third call on one H200 (device tool): build; the CUDA tests of jamba.sample_rows, per-request sampling,
# continuous batching and serve; compute-sanitizer memcheck + racecheck of sanitize_cases (sample_rows among them);
# bench_sampling; bench_serve (the mixed-settings row now on the kernel).
# Usage on the device: JAMBA_COMMIT=<sha> bash dev/session51_round3.sh  (output: $OUT/round.log, bench_sampling.json,
# bench_serve.json)
OUT=${OUT:-/tmp/jamba_round_out}
. benchmarks/round_env.sh
{
echo "commit $JAMBA_COMMIT"
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem --format=csv,noheader
build_cuda
step "CUDA tests: sample_rows, row sampling, continuous batching, serve"
timeout 200 python3 -m pytest -q -m cuda -rs --timeout=120 --tb=short tests/test_sample_rows.py tests/test_row_sampling.py \
  tests/test_continuous.py tests/test_server.py -p no:cacheprovider 2>&1 | tail -30
step "compute-sanitizer memcheck (sanitize_cases)"
timeout 120 compute-sanitizer --tool memcheck --print-limit 20 python3 benchmarks/sanitize_cases.py 2>&1 | tail -6
step "compute-sanitizer racecheck (sanitize_cases)"
timeout 120 compute-sanitizer --tool racecheck --print-limit 20 python3 benchmarks/sanitize_cases.py 2>&1 | tail -6
step "bench_sampling (bf16, V = 65536, batch 1 / 16 / 64)"
timeout 120 python3 benchmarks/bench_sampling.py 2>&1 | tail -24
cp benchmarks/results/bench_sampling.json "$OUT/" 2>/dev/null
step "bench_serve (one Jamba-v0.1 block, bf16, 64 requests, 16 clients; warm-up run, median of 2)"
timeout 240 python3 benchmarks/bench_serve.py 2>&1 | grep -v "^\[transformers" | tail -16
cp benchmarks/results/bench_serve.json "$OUT/" 2>/dev/null
step done
} 2>&1 | tee "$OUT/round.log"
