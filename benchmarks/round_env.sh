# Sourced (from the repo root) by the device round scripts (run_gpu_fp8.sh, run_gpu_train.sh, dev/*_round.sh,
# dev/w8a8_final.sh): strict mode, the output folder $OUT (the device tool's, else /tmp/jamba_gpu_out), unbuffered
# Python with the repo on its path, JAMBA_COMMIT for the logs (the device copy of .git may be stale), and step(), a
# timestamped section header; round_header, a round log's first lines; build_cuda, the editable CUDA build;
# check_and_suite, that build, `jamba_ext check` and every test marked cuda; sanitize_all, memcheck of every op's
# sanitize_cases family and racecheck of rest / swap (building first where the machine holds no CUDA build);
# bench_model_fp8, one Jamba block with fp8 experts and activations (2K prompts, batch 1 / 8, no transformers), the
# step both fp8 rounds run; bench_issues, bench_kernels (issue 3) and bench_moe (issue 4) at the issues' sizes.
set -uo pipefail
OUT=${OUT:-/tmp/jamba_gpu_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} JAMBA_COMMIT=${JAMBA_COMMIT:-unknown}
step() { echo; echo "=== $* ($(date +%T))"; }
round_header() {   # what ran where: the commit and mode ($1), the GPU's clocks and power, python / torch / CUDA
  echo "commit $JAMBA_COMMIT, mode $1"
  nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,power.draw,power.limit --format=csv,noheader
  python3 -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', \
    torch.version.cuda)"
}
build_cuda() {   # the editable build with every CUDA kernel, checked, and how long it took (exit 1 without CUDA)
  local t0; t0=$(date +%s)
  JAMBA_EXT_CUDA=1 pip install --no-build-isolation --no-deps -e . 2>&1 | grep -v "^ \|WARNING: Running pip" | tail -2
  python3 -c "import jamba_ext; assert jamba_ext.has_cuda_kernels(), 'built without CUDA'" || exit 1
  echo "build took $(( $(date +%s) - t0 )) s"
}
check_and_suite() {   # build_cuda, `jamba_ext check`, every test marked cuda (pytest's wall limit $1 s, default 290)
  build_cuda
  step "jamba_ext check (the installation self-check a user runs)"
  timeout 60 python3 -m jamba_ext check 2>&1 | tail -3
  step "every test marked cuda"
  timeout "${1:-290}" python3 -m pytest -q -m cuda --timeout=240 tests -p no:cacheprovider 2>&1 | tail -6
}
bench_model_fp8() {
  step "bench_model --experts-fp8 --act-fp8 (one block, 2K prompts, batch 1 / 8, no transformers)"
  timeout 150 python3 benchmarks/bench_model.py --no-hf --batches 1,8 --prompts 2048 --decode-steps 32 --experts-fp8 \
    --act-fp8 --budget-s 60 2>&1 | grep -E "^check|^impl|^jamba_ext" | tail -14
}
sanitize_all() {   # compute-sanitizer: memcheck of every op (rest, sample_rows, swap, tiles), racecheck of rest and swap
  python3 -c "import jamba_ext; assert jamba_ext.has_cuda_kernels()" 2>/dev/null || build_cuda
  step "compute-sanitizer: memcheck of every op (rest, sample_rows, swap, tiles), racecheck rest and swap"
  for fam in rest sample_rows swap tiles; do
    timeout 120 compute-sanitizer --tool memcheck --print-limit 20 python3 benchmarks/sanitize_cases.py "$fam" 2>&1 \
      | tail -2
  done
  for fam in rest swap; do
    timeout 150 compute-sanitizer --tool racecheck --print-limit 20 python3 benchmarks/sanitize_cases.py "$fam" 2>&1 \
      | tail -2
  done
}
bench_issues() {   # $1 (e.g. s66): bench_kernels and bench_moe at issues 3 / 4's sizes, their JSON into $OUT
  step "bench_kernels (issue 3: Jamba-v0.1 shapes, bf16)"
  timeout 150 python3 benchmarks/bench_kernels.py 2>&1 | grep -v "^ \|warn" | tail -90
  cp benchmarks/results/bench_kernels.json "$OUT/bench_kernels_$1.json" 2>/dev/null
  step "bench_moe at the issue's sizes"
  timeout 100 python3 benchmarks/bench_moe.py --name "bench_moe_$1" --tokens 1,8,64,512,2048,3072,4096,16384 \
    --only "ours,(a) hf_loop,(b) sorted_mm,(c) grouped_mm,dense mm" 2>&1 | grep -v "^ " | cut -c1-160 | tail -45
  cp "benchmarks/results/bench_moe_$1.json" "$OUT/" 2>/dev/null
}
