#!/usr/bin/env bash
# Session 53's device calls on one H200 (device tool), one script: build, then by MODE
#   first    what session 52 left unrun on a GPU: the CUDA tests of continuous batching (logit_bias through the
#            decode graph), the server (best_of) and row sampling (RowSampler.pick with rng); then Nsight Compute
#            profiles of sample_rows' cluster kernel (dev/ncu_sample_rows.sh: B = 1 top_p / top_k, B = 16 top_p)
#   sr       sample_rows' histograms without atomics (a copy a warp, popcounts for top_k) and top_p's mass Z summed
#            in its first radix pass: CUDA tests (sample_rows, row sampling, continuous, server; the cluster tests again
#            with JAMBA_EXT_SYNC=1), 1000 sample_rows fuzz cases on CUDA, memcheck + racecheck of sample_rows' cases,
#            sample_rows_probe, bench_sampling
#   sr2      the same kernels with e = exp(s - m) computed from the key where a pass needs it (ws halved: keys only),
#            the reductions only for digits shared by lanes, the draw's keys loaded ahead: CUDA tests, fuzz, memcheck,
#            sample_rows_probe, Nsight Compute (B = 1 temperature / top_p, finest sampling), then racecheck (its own
#            time limit: it ran past 150 s in sr)
#   sr3      the same with pass 1's logits loaded ahead, block reductions over the warps' results by warp 0 (a
#            butterfly, not every thread's loop of 32), a __syncwarp after each histogram add (sr2's racecheck warned of
#            intra-warp hazards there): CUDA tests (+ JAMBA_EXT_SYNC=1 cluster tests), fuzz, memcheck, racecheck,
#            sample_rows_probe, bench_sampling
#   final    the draw without the Philox of columns that cannot reach the argmax column's value (jamba_uniform24
#            clamped below 1): CUDA tests of sample_rows and of what calls it (row sampling, continuous, server,
#            selfcheck, static decode, logits filters, batch), the cluster tests with
#            JAMBA_EXT_SYNC=1, fuzz, memcheck, sample_rows_probe, bench_sampling, bench_serve, racecheck
#   peaky    sample_rows_probe on logits like a trained model's (--peaky: the draw's skipped Philox) and as before
# Usage on the device: JAMBA_COMMIT=<sha> bash dev/session53_round.sh MODE   (output: $OUT/round.log and the profiles)
OUT=${OUT:-/tmp/jamba_round_out}
. benchmarks/round_env.sh
mode=${1:-first}
. dev/sr_round_lib.sh
{
echo "commit $JAMBA_COMMIT, mode $mode"
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem --format=csv,noheader
build_cuda
case "$mode" in
first)
  cuda_tests tests/test_continuous.py tests/test_server.py tests/test_row_sampling.py
  step "dev/ncu_sample_rows.sh"
  bash dev/ncu_sample_rows.sh 1:top_p 1:top_k 16:top_p ;;
sr)
  cuda_tests tests/test_sample_rows.py tests/test_row_sampling.py tests/test_continuous.py tests/test_server.py
  sync_cluster; fuzz 1000 5300; sanitize_sr memcheck 150; sanitize_sr racecheck 150; probe
  step "bench_sampling"
  timeout 120 python3 benchmarks/bench_sampling.py 2>&1 | tail -32
  cp benchmarks/results/bench_sampling.json "$OUT/" 2>/dev/null ;;
sr2)
  cuda_tests tests/test_sample_rows.py tests/test_row_sampling.py tests/test_continuous.py tests/test_server.py
  fuzz 1000 5310; sanitize_sr memcheck 100; probe
  step "dev/ncu_sample_rows.sh 1:temp 1:top_p"
  bash dev/ncu_sample_rows.sh 1:temp 1:top_p 2>&1 | grep -v "^          \|^    ---\|OPT\|INF"
  sanitize_sr racecheck "${RACE_S:-250}" ;;
sr3)
  cuda_tests tests/test_sample_rows.py tests/test_row_sampling.py tests/test_continuous.py tests/test_server.py \
    tests/test_selfcheck.py
  sync_cluster; fuzz 1000 5320; sanitize_sr memcheck 100; probe
  step "bench_sampling"
  timeout 120 python3 benchmarks/bench_sampling.py 2>&1 | tail -32
  cp benchmarks/results/bench_sampling.json "$OUT/" 2>/dev/null
  sanitize_sr racecheck "${RACE_S:-250}" ;;
final)
  cuda_tests tests/test_sample_rows.py tests/test_row_sampling.py tests/test_continuous.py tests/test_server.py \
    tests/test_selfcheck.py tests/test_static_decode.py tests/test_logits_filters.py tests/test_batch.py
  sync_cluster; fuzz 1000 5330; sanitize_sr memcheck 100; probe
  step "bench_sampling"
  timeout 120 python3 benchmarks/bench_sampling.py 2>&1 | tail -32
  cp benchmarks/results/bench_sampling.json "$OUT/" 2>/dev/null
  step "bench_serve"
  timeout 150 python3 benchmarks/bench_serve.py 2>&1 | grep -v "^\[transformers" | tail -12
  cp benchmarks/results/bench_serve.json "$OUT/" 2>/dev/null
  sanitize_sr racecheck "${RACE_S:-150}" ;;
peaky)
  step "dev/sample_rows_probe.py --peaky"
  timeout 100 python3 dev/sample_rows_probe.py --peaky 2>&1 | tail -24
  probe ;;
*) echo "unknown mode $mode (first, sr, sr2, sr3, final, peaky)"; exit 2 ;;
esac
step done
} 2>&1 | tee "$OUT/round.log"
