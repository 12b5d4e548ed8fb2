#!/usr/bin/env bash
# A/B of two builds in one device call: OLD (a commit, built in a worktree) vs the working tree (built with
# pip -e), a benchmark run in alternating processes (ROUNDS, default 3), rows matching GREP kept; log $OUT/ab.log.
# Usage on the device: OLD=<commit> [BENCH=benchmarks/bench_moe.py] [GREP="T="] [ROUNDS=3] \
#                      bash benchmarks/ab_two_builds.sh <benchmark args>
# or, where the device's copy of .git lacks the commit, an extracted tree carried along (an ignored path):
#   here: rm -rf .ab_old && mkdir .ab_old && git archive <commit> | tar -x -C .ab_old
#   run tool: carry [".ab_old"], command OLD_DIR=.ab_old bash benchmarks/ab_two_builds.sh <benchmark args>
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"; LOG=$OUT/ab.log
{
if [ -n "${OLD_DIR:-}" ]; then rm -rf /tmp/old && cp -r "$OLD_DIR" /tmp/old
else git worktree add -f /tmp/old "$OLD" >/dev/null 2>&1 || echo "worktree failed"; fi
(cd /tmp/old && JAMBA_EXT_CUDA=1 python3 setup.py build_ext --inplace >/tmp/old_build.log 2>&1; echo "old build rc $?")
JAMBA_EXT_CUDA=1 pip install --no-build-isolation --no-deps -e . 2>&1 | tail -1
for r in $(seq ${ROUNDS:-3}); do
  for v in old new; do
    d=$PWD; [ $v = old ] && d=/tmp/old
    echo "--- $v round $r"
    (cd $d && PYTHONPATH=$d python3 ${BENCH:-benchmarks/bench_moe.py} "$@" 2>&1 | grep -- "${GREP:-T=}" | grep -v speed-up)
  done
done
} 2>&1 | tee $LOG
