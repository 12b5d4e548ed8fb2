#!/usr/bin/env bash
# Session 56's device calls on one H200 (device tool), one script: build, then by MODE
#   first   (ran at df6bcc7; its script and kernels are in git history there) chunk counters by which the swap
#           engine's down GEMM started as its chunk's gate_up blocks ended, and the blocks longest chunk first:
#           SASS spills, the swap tests, dev/swap_sched_ab.py ab / ksweep, test_moe.py with swap forced (both ideas
#           within +-1.5%: removed)
#   epi     (ran at 48a6862 and f5db73f) the swap engine's epilogues with their roundings in pairs: the swap tests,
#           dev/swap_sched_ab.py ab 2048 2304 and ksweep
#   second  (ran at 03058e6) the MoE and model CUDA tests, test_moe.py with swap forced, memcheck / racecheck
#   bench   (ran at 03058e6) bench_moe at 1536 / 2048 / 2304 tokens, dev/swap_sched_ab.py ab 2048 and ksweep
#   tiles   the paired roundings in every wgmma engine's epilogue (moe_act_fast2 / moe_scaled2 in moe.cuh; the
#           128 x 256 tiles, their epilogue warps, the fp8 kernels too): the MoE and model CUDA tests, test_moe.py
#           with swap forced, memcheck / racecheck, bench_moe at 2048 / 4096 / 16384 tokens (ours, ours:wgmma f2f,
#           dense mm), dev/moe_epi_ab.py ab 4096 16384
#   again   the same kernels: bench_moe at 2048 / 4096 / 16384 three times (orders random, rotate, random), then
#           dev/moe_epi_ab.py ab 16384 (more samples of the epilogue A/B)
#   f16     the swap engine in f16 (no spills since the paired roundings; off by default in f16): test_moe_swap_engine,
#           dev/moe_epi_ab.py swapf16 at 1280-2560 tokens (swap forced against the 128 x 256 tiles), then
#           dev/moe_epi_ab.py ab 2048 (its kernel times now from bench_moe.kernel_breakdown)
#   final   the swap engine by default in f16 too: the MoE and model CUDA tests (refused in session 56: no device
#           time left; the prefetch call ran those tests at 83ee634)
#   prefetch (ran at 83ee634 in session 57: no gain, removed after) EXPERIMENT JAMBA_EXT_MOE_SWAP_PREFETCH=1: the f16
#           rule's and the fp8 epilogues' CUDA tests, test_moe_swap_engine, dev/moe_epi_ab.py prefetch 1536 2048
#           2304, bench_moe at 2048 tokens with the prefetch row
# Usage on the device: JAMBA_COMMIT=<sha> bash dev/session56_round.sh MODE   (output: $OUT/round.log)
# Every mode has run, each at its commit (above); this copy only says so: check that commit out to run one again.
echo "dev/session56_round.sh: mode ${1:-} ran at an earlier commit of session 56 (see the header)"
exit 2
