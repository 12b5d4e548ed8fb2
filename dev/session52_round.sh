#!/usr/bin/env bash
# Session 52's device calls on one H200 (device tool), one script: build, then by MODE
#   verify   what session 51 left unrun on a GPU: the CUDA tests of serve (n, prompt lists, logprobs, echo, seed,
#            progress lines), continuous batching (logprobs), row sampling and selfcheck (its sample_rows entry);
#            `jamba-ext check`; run_gpu.sh's bench_sampling step (ff5c07d)
#   round2   sample_rows' cluster path and the batcher's prefill_ahead: CUDA tests (sample_rows, row sampling,
#            continuous, server, batch; the cluster tests again with JAMBA_EXT_SYNC=1 and with PDL off); memcheck +
#            racecheck of sanitize_cases; sample_rows_probe; bench_sampling; serve_probe (ahead 0 / 8192, 8 and 16
#            rows); bench_serve (cf32c1d)
#   round3   the cluster size chosen per call (sample_rows) and masked prefills off cuDNN: CUDA tests (sample_rows,
#            static decode, continuous, batch, server); memcheck + racecheck; sample_rows_probe; bench_sampling;
#            sdpa_prefill_probe --masked; serve_probe (ahead 0 / 8192, 8 and 16 rows); bench_serve (381633c)
#   round4   per-request seeds (sample_rows' rng): CUDA tests (sample_rows, row sampling, continuous, server), 2000
#            sample_rows fuzz cases on CUDA; memcheck + racecheck; sample_rows_probe; bench_sampling; bench_serve
#            (b5b222f)
#   round5   the review's sample_rows (the kernels' shared setup and selection, the common cluster launch): CUDA
#            tests (sample_rows, row sampling, continuous, server); memcheck + racecheck; sample_rows_probe (b75dad3)
#   pending  what session 52 left unrun on a GPU (no device time left): the CUDA tests of logit_bias (continuous
#            batching through the decode graph) and the rest of continuous / server
# Usage on the device: JAMBA_COMMIT=<sha> bash dev/session52_round.sh MODE   (output: $OUT/round.log and the JSONs)
OUT=${OUT:-/tmp/jamba_round_out}
. benchmarks/round_env.sh
mode=${1:-verify}
cuda_tests() {   # the files given, cuda-marked tests only, skip reasons listed
  step "CUDA tests: $*"
  timeout 300 python3 -m pytest -q -m cuda -rs --timeout=120 --tb=short "$@" -p no:cacheprovider 2>&1 | tail -30
}
sanitize() {     # compute-sanitizer memcheck + racecheck of sanitize_cases (small cases of every kernel)
  for tool in memcheck racecheck; do
    step "compute-sanitizer $tool (sanitize_cases)"
    timeout 150 compute-sanitizer --tool $tool --print-limit 20 python3 benchmarks/sanitize_cases.py 2>&1 | tail -6
  done
}
probe() {        # sample_rows per setting, default against one-block and each cluster size (graph replays)
  step "dev/sample_rows_probe.py"
  timeout 120 python3 dev/sample_rows_probe.py 2>&1 | tail -30
}
bench_sampling() {
  step "bench_sampling"
  timeout 120 python3 benchmarks/bench_sampling.py 2>&1 | tail -32
  cp benchmarks/results/bench_sampling.json "$OUT/" 2>/dev/null
}
bench_serve() {
  step "bench_serve"
  timeout 200 python3 benchmarks/bench_serve.py 2>&1 | grep -v "^\[transformers" | tail -16
  cp benchmarks/results/bench_serve.json "$OUT/" 2>/dev/null
}
serve_probe() {
  step "dev/serve_probe.py --ahead 0,8192 (8 and 16 rows)"
  timeout 240 python3 dev/serve_probe.py --ahead 0,8192 2>&1 | grep -v "^\[transformers" | tail -20
}
{
echo "commit $JAMBA_COMMIT, mode $mode"
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem --format=csv,noheader
build_cuda
case "$mode" in
verify)
  cuda_tests tests/test_server.py tests/test_continuous.py tests/test_row_sampling.py tests/test_selfcheck.py \
    tests/test_sample_rows.py
  step "jamba-ext check --device cuda"
  timeout 120 python3 -m jamba_ext check --device cuda 2>&1 | tail -8
  step "bench_sampling (run_gpu.sh's step)"
  timeout 100 python3 benchmarks/bench_sampling.py 2>&1 | tail -22
  cp benchmarks/results/bench_sampling.json "$OUT/" 2>/dev/null ;;
round2)
  cuda_tests tests/test_sample_rows.py tests/test_row_sampling.py tests/test_continuous.py tests/test_server.py \
    tests/test_batch.py
  step "cluster tests with JAMBA_EXT_SYNC=1, then with JAMBA_EXT_PDL=0"
  JAMBA_EXT_SYNC=1 timeout 120 python3 -m pytest -q -x tests/test_sample_rows.py -k cluster -p no:cacheprovider 2>&1 | tail -4
  JAMBA_EXT_PDL=0 timeout 120 python3 -m pytest -q -x tests/test_sample_rows.py -k "cluster or graph or reference" \
    -p no:cacheprovider 2>&1 | tail -4
  sanitize; probe; bench_sampling; serve_probe; bench_serve ;;
round3)
  cuda_tests tests/test_sample_rows.py tests/test_static_decode.py tests/test_continuous.py tests/test_batch.py \
    tests/test_server.py
  sanitize; probe; bench_sampling
  step "dev/sdpa_prefill_probe.py --masked"
  timeout 90 python3 -W ignore dev/sdpa_prefill_probe.py --masked 2>&1 | grep "^L" | tail -6
  serve_probe; bench_serve ;;
round4)
  cuda_tests tests/test_sample_rows.py tests/test_row_sampling.py tests/test_continuous.py tests/test_server.py
  step "sample_rows fuzz on CUDA (2000 cases from seed 9000)"
  JAMBA_FUZZ_CASES=2000 JAMBA_FUZZ_SEED=9000 timeout 200 python3 -m pytest -q -m cuda tests/test_fuzz_ops.py \
    -k sample_rows -p no:cacheprovider 2>&1 | tail -3
  sanitize; probe; bench_sampling; bench_serve ;;
round5)
  cuda_tests tests/test_sample_rows.py tests/test_row_sampling.py tests/test_continuous.py tests/test_server.py
  sanitize; probe ;;
pending)
  cuda_tests tests/test_continuous.py tests/test_server.py ;;
*) echo "unknown mode $mode (verify, round2-5 or pending)"; exit 2 ;;
esac
step done
} 2>&1 | tee "$OUT/round.log"
