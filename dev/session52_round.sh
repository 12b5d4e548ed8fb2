#!/usr/bin/env bash
# Session 52's device calls on one H200 (device tool), one script: build, then by MODE
#   verify   what session 51 left unrun on a GPU: the CUDA tests of serve (n, prompt lists, logprobs, echo, seed,
#            progress lines), continuous batching (logprobs), row sampling and selfcheck (its sample_rows entry);
#            `jamba-ext check`; run_gpu.sh's bench_sampling step
# Usage on the device: JAMBA_COMMIT=<sha> bash dev/session52_round.sh MODE   (output: $OUT/round.log and the JSONs)
OUT=${OUT:-/tmp/jamba_round_out}
. benchmarks/round_env.sh
mode=${1:-verify}
cuda_tests() {   # the files given, cuda-marked tests only, skip reasons listed
  step "CUDA tests: $*"
  timeout 300 python3 -m pytest -q -m cuda -rs --timeout=120 --tb=short "$@" -p no:cacheprovider 2>&1 | tail -30
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
*) echo "unknown mode $mode (verify)"; exit 2 ;;
esac
step done
} 2>&1 | tee "$OUT/round.log"
