# Sourced (from the repo root) by the device round scripts (run_gpu_fp8.sh, run_gpu_train.sh, dev/*_round.sh,
# dev/w8a8_final.sh): strict mode, the output folder $OUT (the device tool's, else /tmp/jamba_gpu_out), unbuffered
# Python with the repo on its path, JAMBA_COMMIT for the logs (the device copy of .git may be stale), and step(), a
# timestamped section header.
set -uo pipefail
OUT=${OUT:-/tmp/jamba_gpu_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} JAMBA_COMMIT=${JAMBA_COMMIT:-unknown}
step() { echo; echo "=== $* ($(date +%T))"; }
