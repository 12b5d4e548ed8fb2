#!/usr/bin/env bash
# Session 55's device calls on one H200 (device tool), one script: build, then by MODE
#   first    what session 54 left unrun on a GPU (the swap engine's final rule 176-303 slots an expert, bf16 only; its
#            bounds commit; the WGMMA_CASES test refactor; the server's cancel / metrics / api-key / stream-usage /
#            multi-choice / Content-Length code): the CUDA tests of test_moe, test_model, test_server, test_continuous;
#            racecheck of the MoE engines (swap forced); then where the MoE op's time goes at 1536 / 2048 / 4096 tokens
#            (dev/moe_breakdown.py) and Nsight Compute of the swap kernels at 2048 tokens (dev/ncu_moe_src.sh, memory
#            section on); bench_moe at 2048 tokens
#   persist  the swap engine persistent (moe_swap_kernel: a CTA an SM, the ring kept full across tiles, the epilogue
#            through the last k tile's stage; chunks of <= 288 rows, an expert's chunks of one W block together):
#            test_moe_swap_engine and test_moe_wgmma_tiles, all of test_moe.py with it forced, the MoE and model
#            tests by default; memcheck and racecheck with it forced; bench_moe at 1536-2560 tokens in turns (default,
#            swap, swap a CTA a tile, the 128 x 256 tiles); the breakdown at 2048
#   (persist and why measured a779e8c's persistent form: down 732 -> 1054 us at 2048 tokens, starved for data;
#   reverted to session 54's kernel)
#   mc       the swap engine in clusters of two sharing the token boxes by TMA multicast: its tests, all of
#            test_moe.py with swap forced, memcheck / racecheck / synccheck with swap forced; bench_moe at 1536 / 2048
#            / 2304 tokens in turns (default = swap with multicast, swap without, the 128 x 256 tiles); the breakdown
#            (53744f1, s55_mc: the multicast form ran at 3675 against 2347 us at 2048 tokens: reverted)
#   final    session 54's kernel again (the tree as at e82804a but the tests): the MoE and model CUDA tests, test_moe
#            with swap forced (test_moe_swap_engine's new cases), memcheck / racecheck with swap forced (the new
#            sanitize cases), bench_moe at 2048 tokens
# persist, why and mc ran at their commits (a779e8c, 67934c7, 53744f1); the kernels and bench variants they name
# ("swap nonpersist", "swap nomc", JAMBA_EXT_MOE_SWAP_MC) were removed after (f66a35a).
# Usage on the device: JAMBA_COMMIT=<sha> bash dev/session55_round.sh MODE   (output: $OUT/round.log)
OUT=${OUT:-/tmp/jamba_round_out}
. benchmarks/round_env.sh
mode=${1:-first}
. dev/sr_round_lib.sh
swap_tests() {     # test_moe_swap_engine and test_moe_wgmma_tiles, then all of test_moe.py with the swap engine forced
  step "CUDA tests: test_moe_swap_engine, test_moe_wgmma_tiles"
  timeout 150 python3 -m pytest -q -m cuda -x --timeout=120 --tb=short tests/test_moe.py \
    -k "swap_engine or wgmma_tiles" -p no:cacheprovider 2>&1 | tail -15
  step "all of test_moe.py's CUDA tests with JAMBA_EXT_MOE_SWAP=1"
  JAMBA_EXT_MOE_SWAP=1 timeout 150 python3 -m pytest -q -m cuda --timeout=100 --tb=line tests/test_moe.py \
    -p no:cacheprovider 2>&1 | tail -6
}
moe_model_tests() { # the CUDA tests of the MoE and the model with the default rule
  step "CUDA tests of the MoE and the model, default rule"
  timeout 150 python3 -m pytest -q -m cuda --timeout=100 --tb=short tests/test_moe.py tests/test_model.py \
    -p no:cacheprovider 2>&1 | tail -6
}
moe_sanitize() {   # compute-sanitizer TOOL ... on bench_moe --sanitize with the swap engine forced
  for tool in "$@"; do
    step "compute-sanitizer $tool of the MoE engines with JAMBA_EXT_MOE_SWAP=1 (bench_moe --sanitize)"
    JAMBA_EXT_MOE_SWAP=1 timeout 120 compute-sanitizer --tool $tool --print-limit 10 python3 \
      benchmarks/bench_moe.py --sanitize 2>&1 | tail -4
  done
}
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
persist)
  swap_tests; moe_model_tests; moe_sanitize memcheck racecheck
  step "bench_moe in turns: default, swap (persistent), swap a CTA a tile, the 128 x 256 tiles"
  timeout 240 python3 benchmarks/bench_moe.py --tokens 1536,2048,2304,2560 \
    --only "ours,ours:wgmma swap,ours:wgmma swap nonpersist,ours:wgmma noswap,dense mm" --name bench_moe_persist \
    2>&1 | grep -v "Warning\|_warn_once\|speed-up" | tail -30
  cp benchmarks/results/bench_moe_persist.json "$OUT/" 2>/dev/null
  step "dev/moe_breakdown.py 2048"
  timeout 60 python3 dev/moe_breakdown.py 2048 2>&1 | grep -v Warning | tail -10 ;;
why)
  step "dev/moe_breakdown.py 2048: persistent, then a CTA a tile (JAMBA_EXT_WGMMA_PERSIST=0)"
  timeout 60 python3 dev/moe_breakdown.py 2048 2>&1 | grep -v Warning | tail -8
  JAMBA_EXT_WGMMA_PERSIST=0 timeout 60 python3 dev/moe_breakdown.py 2048 2>&1 | grep -v Warning | tail -8
  step "SASS of moe_swap_kernel (bf16): HGMMA operands, R2UR, spills"
  so=$(python3 -c "import jamba_ext._C as m; print(m.__file__)" 2>/dev/null || ls jamba_ext/*.so | head -1)
  echo "library $so"
  cuobjdump -sass "$so" 2>/dev/null \
    | awk '/Function : .*moe_swap_kernel.*nv_bfloat16/{p=1} /Function : /{if ($0 !~ /moe_swap_kernel/) p=0} p' \
    > "$OUT/sass_swap.txt"
  wc -l "$OUT/sass_swap.txt"; grep -c "HGMMA" "$OUT/sass_swap.txt"; grep -c "R2UR" "$OUT/sass_swap.txt"
  grep -c "LDL\|STL" "$OUT/sass_swap.txt"
  step "Nsight Compute of moe_swap_kernel at 2048 tokens (gate_up, down)"
  NO_BUILD=1 MEM=1 KRE=moe_swap timeout 300 bash dev/ncu_moe_src.sh 2048 2>&1 | cut -c1-220 ;;
mc)
  swap_tests; moe_sanitize memcheck racecheck synccheck
  step "bench_moe in turns: default (swap + multicast), swap without multicast, the 128 x 256 tiles"
  timeout 200 python3 benchmarks/bench_moe.py --tokens 1536,2048,2304 \
    --only "ours,ours:wgmma swap nomc,ours:wgmma noswap,dense mm" --name bench_moe_mc \
    2>&1 | grep -v "Warning\|_warn_once\|speed-up" | tail -24
  cp benchmarks/results/bench_moe_mc.json "$OUT/" 2>/dev/null
  step "dev/moe_breakdown.py 2048: multicast, then not"
  timeout 60 python3 dev/moe_breakdown.py 2048 2>&1 | grep -v Warning | tail -7
  JAMBA_EXT_MOE_SWAP_MC=0 timeout 60 python3 dev/moe_breakdown.py 2048 2>&1 | grep -v Warning | tail -7 ;;
final)
  moe_model_tests; swap_tests; moe_sanitize memcheck racecheck
  step "bench_moe at 2048 tokens"
  timeout 100 python3 benchmarks/bench_moe.py --tokens 2048 --only "ours,ours:wgmma noswap,dense mm" \
    --name bench_moe_final 2>&1 | grep -v "Warning\|_warn_once\|speed-up" | tail -8
  cp benchmarks/results/bench_moe_final.json "$OUT/" 2>/dev/null ;;
*) echo "unknown mode $mode (first, persist, why, mc, final)"; exit 2 ;;
esac
step done
} 2>&1 | tee "$OUT/round.log"
