#!/usr/bin/env bash
# Session 54's device calls on one H200 (device tool), one script: build, then by MODE
#   first    top_k's first radix digit counted in sample_rows' pass 1 (its cluster barrier shared with pass 1's
#            combine) and top_p's first pass through sr_pass_adds<true> (sr_mass_adds merged): the CUDA tests of
#            sample_rows (test_uniform_below_one's CUDA variant among them: not run on a GPU in session 53), row
#            sampling, continuous, server; the cluster tests with JAMBA_EXT_SYNC=1; 1000 CUDA fuzz cases; memcheck;
#            sample_rows_probe (default and --peaky); racecheck last, with the time left
#   full     the whole tree's check: `jamba_ext check`, every CUDA test (the last full run was session 48's), memcheck
#            and racecheck of every kernel's small cases; then the A/B of sample_rows_probe against the tree before
#            this session (carry .ab_old: git archive dc08210, extracted)
#   race     racecheck of every op but sample_rows (full's racecheck of all cases ran past its 100 s: sample_rows'
#            cluster cases alone take ~110 s, and ran clean in first); first dev/cuda/swap_ab_lab.cu (the tensor-pipe
#            rate of a swap-AB MoE tile: A in registers, tokens in n32 / n64 chunks, against today's m64n256 tile)
#   (gemmlab, removed with its lab, dev/cuda/swap_ab_gemm_lab.cu, once moe_swap_kernel replaced it: both in git
#            history at 5fb0249; it ran that lab, bench_moe's op at 2048 tokens and torch's matmul rate in one call)
#   swap     the swap-AB engine in the op (moe_wgmma.cu moe_swap_kernel, JAMBA_EXT_MOE_SWAP=1): its test, all of
#            test_moe.py's CUDA tests with it forced, memcheck, bench_moe swap / noswap at 512-8192 tokens
#   swaprule the default rule (swap from 160 to 287 slots an expert): the MoE and model CUDA tests, racecheck with
#            swap forced, bench_moe at 1024-2560 tokens (default / swap / noswap)
# Usage on the device: JAMBA_COMMIT=<sha> bash dev/session54_round.sh MODE   (output: $OUT/round.log)
OUT=${OUT:-/tmp/jamba_round_out}
. benchmarks/round_env.sh
mode=${1:-first}
. dev/sr_round_lib.sh
ab_probe() {     # sample_rows_probe in turns: the tree before this session's change (.ab_old, carried: sm_90 only) / now
  step "A/B: sample_rows_probe, .ab_old (dc08210) / this tree, in turns"
  [ -d .ab_old ] || { echo "no .ab_old"; return; }
  rm -rf /tmp/old && cp -r .ab_old /tmp/old
  (cd /tmp/old && JAMBA_EXT_CUDA=1 JAMBA_EXT_ARCHS=90 timeout 200 python3 setup.py build_ext --inplace \
     >/tmp/old_build.log 2>&1; echo "old build rc $?")
  for r in 1 2; do
    for v in old new; do
      d=$PWD; [ $v = old ] && d=/tmp/old
      echo "--- $v round $r"
      (cd $d && PYTHONPATH=$d timeout 60 python3 dev/sample_rows_probe.py 2>&1 | grep -E "^---|top_k|top_p 0.95 ")
    done
  done
}
{
echo "commit $JAMBA_COMMIT, mode $mode"
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem --format=csv,noheader
build_cuda
case "$mode" in
first)
  cuda_tests tests/test_sample_rows.py tests/test_row_sampling.py tests/test_continuous.py tests/test_server.py
  sync_cluster; fuzz 1000 5400; sanitize_sr memcheck 100; probe
  step "dev/sample_rows_probe.py --peaky"
  timeout 100 python3 dev/sample_rows_probe.py --peaky 2>&1 | tail -24
  sanitize_sr racecheck "${RACE_S:-150}" ;;
full)
  step "jamba-ext check"
  timeout 100 python3 -m jamba_ext check 2>&1 | tail -4
  step "every CUDA test"
  timeout 330 python3 -m pytest -q -m cuda --timeout=240 tests -p no:cacheprovider 2>&1 | tail -12
  step "compute-sanitizer memcheck / racecheck (small cases of every kernel)"
  timeout 100 compute-sanitizer --tool memcheck --print-limit 20 python3 benchmarks/sanitize_cases.py 2>&1 | tail -3
  timeout 100 compute-sanitizer --tool racecheck --print-limit 20 python3 benchmarks/sanitize_cases.py 2>&1 | tail -3
  ab_probe ;;
race)
  step "dev/cuda/swap_ab_lab.cu (ptxas -v: any C75xx serialisation warning; then its timings)"
  nvcc -O3 -std=c++17 -gencode arch=compute_90a,code=sm_90a -Xptxas -v dev/cuda/swap_ab_lab.cu -o /tmp/swap_ab \
    2>&1 | grep -E "C75|registers|error" ; timeout 60 /tmp/swap_ab; timeout 60 /tmp/swap_ab
  step "compute-sanitizer racecheck (sanitize_cases rest: every op but sample_rows, whose racecheck ran in first)"
  timeout 200 compute-sanitizer --tool racecheck --print-limit 20 python3 benchmarks/sanitize_cases.py rest 2>&1 \
    | tail -3 ;;
swap)
  step "CUDA tests: test_moe_swap_engine, then all of test_moe.py with JAMBA_EXT_MOE_SWAP=1"
  timeout 120 python3 -m pytest -q -m cuda -x --timeout=100 --tb=short tests/test_moe.py -k swap_engine \
    -p no:cacheprovider 2>&1 | tail -15
  JAMBA_EXT_MOE_SWAP=1 timeout 200 python3 -m pytest -q -m cuda --timeout=100 --tb=line tests/test_moe.py \
    -p no:cacheprovider 2>&1 | tail -12
  step "compute-sanitizer memcheck of the MoE engines with JAMBA_EXT_MOE_SWAP=1 (bench_moe --sanitize)"
  JAMBA_EXT_MOE_SWAP=1 timeout 90 compute-sanitizer --tool memcheck --print-limit 10 python3 benchmarks/bench_moe.py \
    --sanitize 2>&1 | tail -4
  step "bench_moe: the swap engine against the 128 x 256 tiles, in turns"
  timeout 200 python3 benchmarks/bench_moe.py --tokens 512,1024,1536,2048,3072,4096,8192 \
    --only "ours:wgmma swap,ours:wgmma noswap" --name bench_moe_swap 2>&1 | grep -v "Warning\|_warn_once" | tail -24
  cp benchmarks/results/bench_moe_swap.json "$OUT/" 2>/dev/null ;;
swaprule)
  step "CUDA tests of the MoE and the model with the default rule (the swap engine from 160 to 287 slots an expert)"
  timeout 150 python3 -m pytest -q -m cuda --timeout=100 --tb=short tests/test_moe.py tests/test_model.py \
    -p no:cacheprovider 2>&1 | tail -8
  step "compute-sanitizer racecheck of the MoE engines with JAMBA_EXT_MOE_SWAP=1 (bench_moe --sanitize)"
  JAMBA_EXT_MOE_SWAP=1 timeout 100 compute-sanitizer --tool racecheck --print-limit 10 python3 \
    benchmarks/bench_moe.py --sanitize 2>&1 | tail -3
  step "bench_moe around the rule's edges: the default (ours), swap forced, swap off, in turns"
  timeout 200 python3 benchmarks/bench_moe.py --tokens 1024,1280,1536,2048,2304,2560 \
    --only "ours,ours:wgmma swap,ours:wgmma noswap" --name bench_moe_swaprule 2>&1 \
    | grep -v "Warning\|_warn_once\|speed-up" | tail -24
  cp benchmarks/results/bench_moe_swaprule.json "$OUT/" 2>/dev/null ;;
*) echo "unknown mode $mode (first, full, race, swap, swaprule)"; exit 2 ;;
esac
step done
} 2>&1 | tee "$OUT/round.log"
