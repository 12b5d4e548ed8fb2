#!/usr/bin/env bash
# Session 59's device calls on one H200 (device tool), by MODE:
#   w2d  why gate_up's k loop is slower than down's (s58_diag_88195bd.log: 689-700 against 834-852 TFLOP/s without
#        epilogues): the lab's mode gu (dev/cuda/swap_ab_lab.cu: gate_up's 3-d pair W box and its ldmatrix rows,
#        each alone, against down's shape); then the extension's build, the swap tests (same bits with the EXPERIMENT
#        JAMBA_EXT_MOE_SWAP_W2D=1: gate_up's W in two 2-d boxes), compute-sanitizer memcheck / racecheck on
#        sanitize_cases.py swap, bench_moe at 1536 / 2048 / 2304 tokens (ours, w2d, dense mm), ksweep w2d
#        (ran at 300b0b2, s59_w2d_300b0b2.log: the 3-d box and the rows cost nothing in the lab, W2D no gain: removed)
#   data does the k loop's speed depend on the operands' values (the labs ran on zeros)? The lab's mode gurand (the
#        op's gate_up shape on zeros and on random values, in turns and each alone for ~1 s) and dev/moe_epi_ab.py
#        data (the op's swap kernels and a dense mm on random operands and on zeros), with nvidia-smi's SM clock and
#        power every 50 ms summarised by phase (dev/smi_phases.py)
#        (ran at b86e48e, s59_data_b86e48e.log: on random values the lab's loop runs at the op's rate, ~690 TFLOP/s,
#        against ~760-800 on zeros; alone for ~1 s it falls to ~600 at 1365 MHz and ~680 W: the power limit)
#   rsrand the plain loops (no ring) on zeros and on random values: SS m64n256 (today's tiles), the op's RS n32 x 8,
#        n64 x 4, RS n256 in one instruction (lab mode rsrand, with nvidia-smi by phase)
#        (ran at 98ccdb6, s59_rsrand_98ccdb6.log: at the power limit RS n256 856, n64 x 4 843, n32 x 8 831 TFLOP/s)
#   wide the EXPERIMENT JAMBA_EXT_MOE_SWAP_WIDE=1 (a k16 step as one wgmma for all of a tile's chunks): build, swap
#        tests (same bits), sanitizers, test_moe.py with swap and wide forced, bench_moe 1536 / 2048 / 2304 (ours,
#        wide, dense mm), ksweep wide (ran at f77ce11, s59_wide_f77ce11.log: same bits, faster: made the default)
#   final the session's last commit: build, every MoE CUDA test (tests/test_moe.py; test_moe_swap_engine forces the
#        swap engine on its cases), sanitizers on the swap cases, bench_moe 1536 / 2048 / 2304 (ours, dense mm)
#   next (for session 60, not yet run) where the swap engine's size rule should sit now that it is faster (176-303
#        slots an expert, MOE_SWAP_MIN / MAX_SLOTS_PER_EXPERT, were set in session 54 against the old kernel): build,
#        bench_moe at 1024 / 1280 / 2560 / 3072 tokens (ours, swap forced, swap off, dense mm)
# Usage on the device: JAMBA_COMMIT=<sha> bash dev/session59_round.sh MODE   (output: $OUT/round.log)
OUT=${OUT:-/tmp/jamba_round_out}
. benchmarks/round_env.sh
mode=${1:-final}
lab_smi() {   # build the lab, start nvidia-smi sampling (SM clock, power every 50 ms) into $OUT/smi.csv
  nvcc -O3 -std=c++17 -gencode=arch=compute_90a,code=sm_90a dev/cuda/swap_ab_lab.cu -o /tmp/swap_ab || exit 1
  nvidia-smi --query-gpu=timestamp,clocks.sm,power.draw --format=csv,noheader,nounits -lms 50 > "$OUT/smi.csv" &
  smi=$!
}
{
echo "commit $JAMBA_COMMIT, mode $mode"
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,power.draw --format=csv,noheader
case "$mode" in
w2d)
  echo "mode w2d ran at 300b0b2 (s59_w2d_300b0b2.log; the W2D switch is removed)"; exit 2 ;;
data)
  lab_smi
  step "dev/cuda/swap_ab_lab.cu gurand"
  timeout 150 /tmp/swap_ab gurand "$OUT/marks_lab.txt"
  python3 dev/smi_phases.py "$OUT/smi.csv" "$OUT/marks_lab.txt"
  build_cuda
  step "dev/moe_epi_ab.py data"
  echo "$(date +%s.%N) op data" > "$OUT/marks_op.txt"
  timeout 150 python3 dev/moe_epi_ab.py data 2>&1 | grep -v "Warning\|_warn" | tail -4
  echo "$(date +%s.%N) end" >> "$OUT/marks_op.txt"
  kill $smi
  python3 dev/smi_phases.py "$OUT/smi.csv" "$OUT/marks_op.txt" ;;
rsrand)
  lab_smi
  step "dev/cuda/swap_ab_lab.cu rsrand"
  timeout 200 /tmp/swap_ab rsrand "$OUT/marks_lab.txt"
  kill $smi
  python3 dev/smi_phases.py "$OUT/smi.csv" "$OUT/marks_lab.txt" ;;
wide)
  echo "mode wide ran at f77ce11 (s59_wide_f77ce11.log; now the default, the switch removed)"; exit 2 ;;
final)
  build_cuda
  step "CUDA tests: tests/test_moe.py (default engines)"
  timeout 150 python3 -m pytest -q -m cuda --timeout=120 --tb=short tests/test_moe.py -p no:cacheprovider 2>&1 \
    | tail -3
  step "compute-sanitizer memcheck, racecheck: benchmarks/sanitize_cases.py swap"
  timeout 100 compute-sanitizer --tool memcheck --print-limit 20 python3 benchmarks/sanitize_cases.py swap 2>&1 \
    | tail -3
  timeout 100 compute-sanitizer --tool racecheck --print-limit 20 python3 benchmarks/sanitize_cases.py swap 2>&1 \
    | tail -3
  step "bench_moe at 1536 / 2048 / 2304 tokens"
  timeout 120 python3 benchmarks/bench_moe.py --tokens 1536,2048,2304 --only "ours,dense mm" \
    --name bench_moe_final 2>&1 | grep "^ours\|^dense\|^device" | cut -c1-150
  cp benchmarks/results/bench_moe_final.json "$OUT/" 2>/dev/null ;;
next)
  build_cuda
  step "bench_moe at 1024 / 1280 / 2560 / 3072 tokens: the swap engine's rule"
  timeout 300 python3 benchmarks/bench_moe.py --tokens 1024,1280,2560,3072 \
    --only "ours,ours:wgmma swap,ours:wgmma noswap,dense mm" --name bench_moe_rule 2>&1 \
    | grep "^ours\|^dense\|^device" | cut -c1-150
  cp benchmarks/results/bench_moe_rule.json "$OUT/" 2>/dev/null ;;
*) echo "unknown mode $mode"; exit 2 ;;
esac
step done
} 2>&1 | tee "$OUT/round.log"
