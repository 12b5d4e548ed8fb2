#!/usr/bin/env bash
# Session 61's device calls on one H200 (device tool), by MODE:
#   full  the whole CUDA suite at the session's commit (the last whole-suite run was session 54's, at 67a0b78; since
#         then the MoE kernels changed and ran test_moe.py only): build, `jamba_ext check`, every test marked cuda,
#         compute-sanitizer memcheck of every op's small cases, racecheck of every op's but sample_rows' (its cluster
#         kernels take racecheck ~110 s; sample_rows.cu is unchanged since session 54's run) and of the swap engine's,
#         then bench_moe at the sizes (ours against the torch paths)
#         (ran at 25d0cf2, s61_full_25d0cf2.log: 2856 passed, 61 skipped; check 162/162; sanitizers clean)
#   mutation  dev/mutation_cuda.py --run, all 34 CUDA-kernel mutants (three of them re-pointed at today's source in
#         session 61: moe_wgmma_epi_gate_up_swap, wgmma_down_weight_sorted, ce_fwd_no_rescale; the last whole run was
#         session 49's, at 9a238d9)
#   verify  the session's last code (C argument checks changed after the full call: csrc/common.c's shape message and
#         overlap checks, the d_state check of selective_scan.c, the in-place states' overlap checks of causal_conv1d.c /
#         selective_scan.c / mamba_step.c; int64 expert ids past int32 in ops.py; csrc/cuda unchanged): build,
#         `jamba_ext check`, the tests marked cuda that those changes reach (errors, conv, scan, state update, the fused
#         decode step, MoE permutation and bad inputs)
# Usage on the device: JAMBA_COMMIT=<sha> bash dev/session61_round.sh MODE   (output: $OUT/round.log, bench JSON)
OUT=${OUT:-/tmp/jamba_round_out}
. benchmarks/round_env.sh
mode=${1:-full}
{
echo "commit $JAMBA_COMMIT, mode $mode"
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,power.draw --format=csv,noheader
python3 -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda)"
case "$mode" in
full)
  check_and_suite 290
  step "compute-sanitizer memcheck (small cases of every op)"
  timeout 90 compute-sanitizer --tool memcheck --print-limit 20 python3 benchmarks/sanitize_cases.py 2>&1 | tail -2
  for fam in rest swap; do
    step "compute-sanitizer racecheck: sanitize_cases.py $fam"
    timeout 60 compute-sanitizer --tool racecheck --print-limit 20 python3 benchmarks/sanitize_cases.py $fam 2>&1 \
      | tail -2
  done
  step "bench_moe at the issue's sizes"
  timeout 150 python3 benchmarks/bench_moe.py --name bench_moe_s61 --tokens 1,8,64,512,2048,4096,16384 \
    --only "ours,(a) hf_loop,(b) sorted_mm,(c) grouped_mm,dense mm" 2>&1 | grep -v "^ " | cut -c1-160 | tail -45
  cp benchmarks/results/bench_moe_s61.json "$OUT/" 2>/dev/null ;;
mutation)
  step "dev/mutation_cuda.py --run (every mutant: its file mutated in a copy, rebuilt, its CUDA tests run)"
  timeout 540 python3 dev/mutation_cuda.py --run --budget 470 --out "$OUT/mutation_cuda.log" 2>&1 | tail -40 ;;
verify)
  build_cuda
  step "jamba_ext check"
  timeout 60 python3 -m jamba_ext check 2>&1 | tail -2
  step "tests marked cuda: errors, conv, scan, fused decode step"
  timeout 200 python3 -m pytest -q -m cuda --timeout=120 tests/test_errors.py tests/test_causal_conv1d.py \
    tests/test_selective_scan.py tests/test_mamba_step.py -p no:cacheprovider 2>&1 | tail -4
  step "tests marked cuda: state update (test_cuda_extra -k state_update), MoE permutation and bad inputs"
  timeout 120 python3 -m pytest -q -m cuda --timeout=100 tests/test_cuda_extra.py tests/test_moe.py \
    -k "state_update or permute_matches or bad_inputs" -p no:cacheprovider 2>&1 | tail -4 ;;
*) echo "unknown mode $mode"; exit 2 ;;
esac
step done
} 2>&1 | tee "$OUT/round.log"
