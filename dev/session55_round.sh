#!/usr/bin/env bash
# Session 55's device calls on one H200 (device tool), one script: build, then by MODE
#   first    what session 54 left unrun on a GPU (the swap engine's final rule 176-303 slots an expert, bf16 only; its
#            bounds commit; the WGMMA_CASES test refactor; the server's cancel / metrics / api-key / stream-usage /
#            multi-choice / Content-Length code): the CUDA tests of test_moe, test_model, test_server, test_continuous;
#            racecheck of the MoE engines (swap forced); then where the MoE op's time goes at 1536 / 2048 / 4096 tokens
#            (dev/moe_breakdown.py) and Nsight Compute of the swap kernels at 2048 tokens (dev/ncu_moe_src.sh, memory
#            section on); bench_moe at 2048 tokens
# Usage on the device: JAMBA_COMMIT=<sha> bash dev/session55_round.sh MODE   (output: $OUT/round.log)
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
  cuda_tests tests/test_moe.py tests/test_model.py tests/test_server.py tests/test_continuous.py
  step "compute-sanitizer racecheck of the MoE engines with JAMBA_EXT_MOE_SWAP=1 (bench_moe --sanitize)"
  JAMBA_EXT_MOE_SWAP=1 timeout 100 compute-sanitizer --tool racecheck --print-limit 10 python3 \
    benchmarks/bench_moe.py --sanitize 2>&1 | tail -3
  step "dev/moe_breakdown.py: the op's kernels (torch.profiler) at 1536 / 2048 / 4096 tokens"
  timeout 90 python3 dev/moe_breakdown.py 1536 2048 4096 2>&1 | grep -v Warning | tail -40
  step "Nsight Compute of moe_swap_kernel at 2048 tokens (gate_up, down)"
  NO_BUILD=1 MEM=1 KRE=moe_swap timeout 300 bash dev/ncu_moe_src.sh 2048 2>&1 | cut -c1-220
  step "bench_moe at 2048 tokens"
  timeout 120 python3 benchmarks/bench_moe.py --tokens 2048 --only "ours,ours:wgmma noswap,dense mm" \
    --name bench_moe_s55 2>&1 | grep -v "Warning\|_warn_once" | tail -12
  cp benchmarks/results/bench_moe_s55.json "$OUT/" 2>/dev/null ;;
*) echo "unknown mode $mode (first)"; exit 2 ;;
esac
step done
} 2>&1 | tee "$OUT/round.log"
