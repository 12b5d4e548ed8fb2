# The helpers of the sample_rows device rounds (sourced by dev/session53_round.sh and dev/session54_round.sh, after
# benchmarks/round_env.sh): each a step of the round's log.
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
