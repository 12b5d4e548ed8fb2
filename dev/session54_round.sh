#!/usr/bin/env bash
# Session 54's device calls on one H200 (device tool), one script: build, then by MODE
#   first    top_k's first radix digit counted in sample_rows' pass 1 (its cluster barrier shared with pass 1's
#            combine) and top_p's first pass through sr_pass_adds<true> (sr_mass_adds merged): the CUDA tests of
#            sample_rows (test_uniform_below_one's CUDA variant among them: not run on a GPU in session 53), row
#            sampling, continuous, server; the cluster tests with JAMBA_EXT_SYNC=1; 1000 CUDA fuzz cases; memcheck;
#            sample_rows_probe (default and --peaky); racecheck last, with the time left
# Usage on the device: JAMBA_COMMIT=<sha> bash dev/session54_round.sh MODE   (output: $OUT/round.log)
OUT=${OUT:-/tmp/jamba_round_out}
. benchmarks/round_env.sh
mode=${1:-first}
cuda_tests() {   # the files given, cuda-marked tests only, skip reasons listed
  step "CUDA tests: $*"
  timeout 300 python3 -m pytest -q -m cuda -rs --timeout=120 --tb=short "$@" -p no:cacheprovider 2>&1 | tail -30
}
sync_cluster() {  # sample_rows' cluster tests with JAMBA_EXT_SYNC=1 (a device sync after each launch)
  step "cluster tests with JAMBA_EXT_SYNC=1"
  JAMBA_EXT_SYNC=1 timeout 120 python3 -m pytest -q -x tests/test_sample_rows.py -k cluster -p no:cacheprovider \
    2>&1 | tail -3
}
fuzz() {         # N sample_rows fuzz cases on CUDA from seed S
  step "sample_rows fuzz on CUDA ($1 cases from seed $2)"
  JAMBA_FUZZ_CASES=$1 JAMBA_FUZZ_SEED=$2 timeout 200 python3 -m pytest -q -m cuda tests/test_fuzz_ops.py \
    -k sample_rows -p no:cacheprovider 2>&1 | tail -3
}
sanitize_sr() {  # compute-sanitizer TOOL on sanitize_cases' sample_rows cases, with a time limit (s)
  step "compute-sanitizer $1 (sanitize_cases sample_rows), up to $2 s"
  timeout "$2" compute-sanitizer --tool "$1" --print-limit 20 python3 benchmarks/sanitize_cases.py sample_rows \
    2>&1 | tail -6; echo "$1 rc ${PIPESTATUS[0]}"
}
probe() {        # sample_rows per setting, default against one-block and each cluster size (graph replays)
  step "dev/sample_rows_probe.py"
  timeout 120 python3 dev/sample_rows_probe.py 2>&1 | tail -30
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
*) echo "unknown mode $mode (first)"; exit 2 ;;
esac
step done
} 2>&1 | tee "$OUT/round.log"
