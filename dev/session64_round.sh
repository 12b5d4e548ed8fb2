#!/usr/bin/env bash
# Session 64's device calls on one H200 (device tool), by MODE:
#   ss    (ran at c1ff08f, s64_ss_c1ff08f.log; the experiment and this mode since removed) the swap kernel's W as
#         the wgmma's A operand from shared memory (SS, gate_up through a 4-d TMA view that interleaves 8 gate rows
#         and their up rows) against ldmatrix into registers: tests (bit for bit), sanitizers, the op in turns at
#         1536 - 2304 tokens, ksweep, bench_moe
#   order (ran at f0c89df, s64_order_f0c89df.log; the order and this mode since removed) the swap kernel's blocks
#         expert-major (an expert's chunks of one W block adjacent) against chunk-major:
#         build, test_moe's swap / wgmma / graph tests, sanitizers on the swap cases, the op in turns (dev/moe_epi_ab.py
#         order: swap forced in both orders, the tiles) at 2304 - 4096 tokens, bench_moe swap forced / off
#   final the session's code: build, `jamba_ext check`, every test marked cuda, bench_kernels (issue 3's shapes) and
#         bench_moe at the sizes; the op and the same-work dense mm sustained under nvidia-smi sampling
#         (dev/moe_power.py: SM clock and power of each); the CLI's out-of-memory line on a GPU
#   sanit memcheck of every op's cases (rest, sample_rows, swap, tiles), racecheck of rest and swap (builds first only
#         when the machine holds no CUDA build: a warm machine keeps final's)
# Usage on the device: JAMBA_COMMIT=<sha> bash dev/session64_round.sh MODE   (output: $OUT/round.log)
OUT=${OUT:-/tmp/jamba_round_out}
. benchmarks/round_env.sh
mode=${1:-final}
{
round_header "$mode"
case "$mode" in
ss)
  echo "mode ss ran at c1ff08f (s64_ss_c1ff08f.log; the SS swap kernel is removed)"; exit 2 ;;
order)
  echo "mode order ran at f0c89df (s64_order_f0c89df.log; the expert-major block order is removed)"; exit 2 ;;
final)
  check_and_suite 280
  step "bench_kernels (issue 3: Jamba-v0.1 shapes, bf16)"
  timeout 150 python3 benchmarks/bench_kernels.py 2>&1 | grep -v "^ \|warn" | tail -90
  cp benchmarks/results/bench_kernels.json "$OUT/bench_kernels_s64.json" 2>/dev/null
  step "bench_moe at the issue's sizes and the swap engine's"
  timeout 100 python3 benchmarks/bench_moe.py --name bench_moe_s64 --tokens 1,8,64,512,1536,2048,2304,4096,16384 \
    --only "ours,(a) hf_loop,(b) sorted_mm,(c) grouped_mm,dense mm" 2>&1 | grep -v "^ " | cut -c1-160 | tail -45
  cp benchmarks/results/bench_moe_s64.json "$OUT/" 2>/dev/null
  step "the op and the same-work dense mm sustained, SM clock and power (dev/moe_power.py, nvidia-smi every 50 ms)"
  nvidia-smi --query-gpu=timestamp,clocks.sm,power.draw --format=csv,noheader,nounits -lms 50 > /tmp/smi.csv &
  smi=$!
  timeout 90 python3 dev/moe_power.py /tmp/marks.txt 2048 4096 2>&1 | grep -v warn
  kill $smi
  python3 dev/smi_phases.py /tmp/smi.csv /tmp/marks.txt
  step "the CLI's out-of-memory line on a GPU (session 63's test, not marked cuda: the CLI's default device)"
  timeout 60 python3 -m pytest -q tests/test_generate_cli.py -k out_of_memory -p no:cacheprovider 2>&1 | tail -2
  python3 -m jamba_ext generate --prompt x --max-new-tokens 100000000000000 2>&1 | tail -1
  echo "exit ${PIPESTATUS[0]}" ;;
sanit)
  sanitize_all ;;
*) echo "unknown mode $mode"; exit 2 ;;
esac
step done
} 2>&1 | tee "$OUT/round.log"
