#!/usr/bin/env bash
# GPU round of the fp8 expert weights (sessions 36-39) in one device call, ~8 min: build, jamba-ext check, every CUDA test,
# memcheck + racecheck of sanitize_cases.py (fp8 cases included) and memcheck of every MoE engine (the decode GEMV
# kernels are shared with fp8), the fp8 activations' A/B (dev/w8a8_ab.py: W8A8 / W8A16 / bf16 op; FP8_AB_TOKENS=...
# adds dev/fp8_gemv_ab.py: GEMVs, ring kernels, dequantizing path, bf16),
# bench_moe (with its "ours fp8" / "ours fp8 act" rows), bench_model --experts-fp8 --act-fp8 (one Jamba-v0.1 block, no
# transformers), jamba-ext train --lora --experts-fp8 and generate --experts-fp8 [--act-fp8], bench_train's check at
# one size (SKIP_BENCH_TRAIN=1: not).
# Everything goes to $OUT: gpu_round.log, bench_moe.json/.png, bench_model.json/.png, bench_train.json.
# Usage on the device: JAMBA_COMMIT=<sha> bash benchmarks/run_gpu_fp8.sh
. benchmarks/round_env.sh  # strict mode, $OUT, PYTHONPATH, JAMBA_COMMIT, step()
{
step "commit $JAMBA_COMMIT: environment and build"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.mem --format=csv
JAMBA_EXT_CUDA=1 pip install --no-build-isolation --no-deps -e . 2>&1 | grep -iE "error|Successfully inst" | head -5
step "jamba-ext check"
timeout 120 python3 -m jamba_ext check 2>&1 | tail -6
step "tests marked cuda"
timeout 330 python3 -m pytest -q -m cuda --timeout=240 tests -p no:cacheprovider 2>&1 | tail -15
step "compute-sanitizer memcheck / racecheck (sanitize_cases.py), memcheck of every MoE engine"
timeout 90 compute-sanitizer --tool memcheck --print-limit 20 python3 benchmarks/sanitize_cases.py 2>&1 | tail -3
timeout 90 compute-sanitizer --tool racecheck --print-limit 20 python3 benchmarks/sanitize_cases.py 2>&1 | tail -3
timeout 90 compute-sanitizer --tool memcheck --print-limit 20 python3 benchmarks/bench_moe.py --sanitize 2>&1 | tail -3
step "fp8 activations A/B (dev/w8a8_ab.py: W8A8 against the weight-only fp8 op and the bf16 op)"
timeout 150 python3 dev/w8a8_ab.py ${W8A8_TOKENS:-8,16,32,64,128,256,512,1024,2048,4096} 2>&1 | tail -60
if [ -n "${FP8_AB_TOKENS:-}" ]; then
step "fp8 engines A/B (dev/fp8_gemv_ab.py)"
timeout 150 python3 dev/fp8_gemv_ab.py $FP8_AB_TOKENS 2>&1 | tail -60
fi
step "bench_moe"
timeout 150 python3 benchmarks/bench_moe.py --skip "ours:mma,ours:mma64,ours:mma256,ours:wgmma nonpersist,ours:wgmma nohalf,ours:wgmma noepiw,ours:wgmma nomerge,ours:wgmma merge,ours:gemv ring" 2>&1 | grep -v "kernels (us" | tail -45
bench_model_fp8
step "jamba-ext train --lora 8 --experts-fp8, generate --experts-fp8 (built-in model)"
timeout 60 python3 -m jamba_ext train --text-file README.md --steps 40 --seq-len 256 --device cuda --lora 8 \
  --experts-fp8 2>&1 | grep -v "^\[transformers\]" | tail -4
timeout 40 python3 -m jamba_ext generate --prompt "The model" --max-new-tokens 24 --experts-fp8 2>&1 | tail -2
timeout 40 python3 -m jamba_ext generate --prompt "The model" --max-new-tokens 24 --experts-fp8 --act-fp8 2>&1 | tail -2
if [ -z "${SKIP_BENCH_TRAIN:-}" ]; then
step "bench_train's check (ours vs transformers' gradients, one Jamba-v0.1 block) and 1x512"
timeout 90 python3 benchmarks/bench_train.py --batches 1 --lengths 512 2>&1 | grep -v "^\[transformers\]" | tail -5
fi
step "done"
} 2>&1 | tee "$OUT/gpu_round.log"
cp benchmarks/results/bench_moe.json benchmarks/results/bench_moe.png benchmarks/results/bench_model.json \
   benchmarks/results/bench_model.png benchmarks/results/bench_train.json "$OUT"/ 2>/dev/null
exit 0
