#!/usr/bin/env bash
# The CPU kernels under AddressSanitizer + UndefinedBehaviorSanitizer: builds jamba_ext._C (C only) with
# -fsanitize=address,undefined in a fresh clone of this checkout's HEAD, runs the test suite against it with the
# sanitizer runtimes preloaded into python (torch itself is not instrumented; leak checking is off, since CPython
# and torch keep memory on purpose until exit), and prints every distinct report. Exit 0 when the suite passes
# and no sanitizer reported anything.
#   bash dev/sanitize_cpu.sh [LOG] [pytest args...]     (default: the whole suite; ~5 min on 2 cores)
# The build probe for -fopenmp fails under the sanitizer flags, so the kernels run single-threaded here (the
# same code, serially). GCC's sanitizers; a report prints the C stack (-g).
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
log=${1:-/tmp/jamba_sanitize_cpu.log}; shift || true
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
git clone -q "$root" "$work/p" || exit 2
cd "$work/p"
CFLAGS="-fsanitize=address,undefined -fno-omit-frame-pointer -g" LDFLAGS="-fsanitize=address,undefined" \
  JAMBA_EXT_CUDA=0 python3 setup.py -q build_ext --inplace 2>&1 | tail -1
ldd jamba_ext/_C*.so | grep -q libasan || { echo "the build is not instrumented"; exit 2; }
echo "commit $(git rev-parse --short HEAD); sanitized build in $work/p"
export LD_PRELOAD="$(gcc -print-file-name=libasan.so):$(gcc -print-file-name=libubsan.so)"
export ASAN_OPTIONS=detect_leaks=0 UBSAN_OPTIONS=print_stacktrace=1
# -s: a sanitizer writes to fd 2, which pytest's capture would drop if the process died
PYTHONPATH="$work/p" python3 -m pytest -q -s -p no:cacheprovider "${@:-tests}" > "$log" 2>&1
rc=$?
tail -1 "$log"
n=$(grep -c "runtime error:\|ERROR: AddressSanitizer" "$log")
grep -o "csrc/[^ ]*: runtime error: .*\|ERROR: AddressSanitizer.*" "$log" | sort | uniq -c
echo "pytest rc $rc; sanitizer reports: $n (full output: $log)"
[ "$rc" = 0 ] && [ "$n" = 0 ]
