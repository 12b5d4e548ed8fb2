#!/usr/bin/env bash
# Session 51's device calls on one H200 (device tool), one script: build, then by MODE
#   serve     the CUDA tests of continuous batching, serve, generate_many and the CLI; bench_serve; run_gpu.sh's
#             bench_batch step (the first call, 61100e2)
#   settings  the CUDA tests of per-request sampling, continuous batching and serve; bench_serve (warm-up run, median
#             of 2, the mixed-settings row); dev/serve_probe.py (85d0418)
#   kernel    the CUDA tests of jamba.sample_rows, per-request sampling, continuous batching and serve;
#             compute-sanitizer memcheck + racecheck of sanitize_cases; bench_sampling; bench_serve (bb68f11 ..
#             0fca187)
# Usage on the device: JAMBA_COMMIT=<sha> bash dev/session51_round.sh MODE   (output: $OUT/round.log and the JSONs)
OUT=${OUT:-/tmp/jamba_round_out}
. benchmarks/round_env.sh
mode=${1:-kernel}
cuda_tests() {   # the files given, cuda-marked tests only, skip reasons listed
  step "CUDA tests: $*"
  timeout 200 python3 -m pytest -q -m cuda -rs --timeout=120 --tb=short "$@" -p no:cacheprovider 2>&1 | tail -30
}
bench_serve() {
  step "bench_serve (one Jamba-v0.1 block, bf16, 64 requests, 16 clients)"
  timeout 240 python3 benchmarks/bench_serve.py 2>&1 | grep -v "^\[transformers" | tail -16
  cp benchmarks/results/bench_serve.json "$OUT/" 2>/dev/null
}
{
echo "commit $JAMBA_COMMIT, mode $mode"
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem --format=csv,noheader
build_cuda
case "$mode" in
serve)
  cuda_tests tests/test_continuous.py tests/test_server.py tests/test_batch.py tests/test_generate_cli.py
  bench_serve
  step "bench_batch --batch-sizes 8,32 --reps 1 (run_gpu.sh's step)"
  timeout 200 python3 benchmarks/bench_batch.py --batch-sizes 8,32 --reps 1 2>&1 | tail -16
  cp benchmarks/results/bench_batch.json "$OUT/" 2>/dev/null ;;
settings)
  cuda_tests tests/test_row_sampling.py tests/test_continuous.py tests/test_server.py
  bench_serve
  step "dev/serve_probe.py (8 and 16 rows)"
  timeout 200 python3 dev/serve_probe.py 2>&1 | grep -v "^\[transformers" | tail -16 ;;
kernel)
  cuda_tests tests/test_sample_rows.py tests/test_row_sampling.py tests/test_continuous.py tests/test_server.py
  for tool in memcheck racecheck; do
    step "compute-sanitizer $tool (sanitize_cases)"
    timeout 120 compute-sanitizer --tool $tool --print-limit 20 python3 benchmarks/sanitize_cases.py 2>&1 | tail -6
  done
  step "bench_sampling (bf16, V = 65536, batch 1 / 16 / 64)"
  timeout 120 python3 benchmarks/bench_sampling.py 2>&1 | tail -24
  cp benchmarks/results/bench_sampling.json "$OUT/" 2>/dev/null
  bench_serve ;;
*) echo "unknown mode $mode (serve, settings or kernel)"; exit 2 ;;
esac
step done
} 2>&1 | tee "$OUT/round.log"
