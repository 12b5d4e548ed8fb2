#!/usr/bin/env bash
# A/B of the memory-bound Mamba kernels on the GPU (issue 3): the default kernels against the variants behind
# JAMBA_EXT_CONV_IMPL=new (pipelined persistent causal_conv1d forward; JAMBA_EXT_CONV_NV=2|4 vectors per lane)
# and JAMBA_EXT_SSU_IMPL=new (pipelined persistent selective_state_update fast path). Both variants are
# bit-identical to the defaults (tests/test_memkernel_variants.py). ~3-4 min on an H200 (tests ~1, sanitizer ~1, 3 bench runs ~0.5 each).
# Usage on the device, after the build (run_gpu.sh's, or this script's when jamba_ext has no CUDA kernels):
#   bash benchmarks/ab_memkernels.sh        -> $OUT/ab_memkernels.log, $OUT/bench_kernels_<label>.json
set -uo pipefail
OUT=${OUT:-/tmp/jamba_gpu_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
step() { echo; echo "=== $* ($(date +%T))"; }
NEW="JAMBA_EXT_CONV_IMPL=new JAMBA_EXT_SSU_IMPL=new"
{
if ! python3 -c "import jamba_ext, sys; sys.exit(0 if jamba_ext.has_cuda_kernels() else 1)" 2>/dev/null; then
    step "build"
    JAMBA_EXT_CUDA=1 pip install --no-build-isolation --no-deps -e . 2>&1 | grep -v "^ " | tail -3
fi
step "CUDA tests of conv / state_update with the new variants ($NEW)"
env $NEW timeout 150 python3 -m pytest -q -m cuda -k "conv or state_update" tests \
    -p no:cacheprovider 2>&1 | tail -8
env $NEW JAMBA_EXT_CONV_NV=2 timeout 60 python3 -m pytest -q -m cuda -k "conv" \
    tests/test_causal_conv1d.py tests/test_cuda_extra.py -p no:cacheprovider 2>&1 | tail -3
step "compute-sanitizer memcheck + racecheck of the new variants (shapes where the persistent loops turn)"
cat > /tmp/ab_memkernels_cases.py <<'PY'
import os
import torch
from jamba_ext import ops
dev = torch.device("cuda")
g = torch.Generator(device=dev).manual_seed(0)
rn = lambda *s, dt=torch.bfloat16: torch.randn(*s, generator=g, device=dev).to(dt)
x = rn(1, 2048, 4096)
for nv in ("2", "4"):
    os.environ["JAMBA_EXT_CONV_NV"] = nv
    ops.causal_conv1d(x, rn(2048, 4), rn(2048), rn(1, 2048, 3), True, 3)
for Bsz, DI in ((64, 8192), (5, 130)):
    h = torch.randn(Bsz, DI, 16, device=dev)
    A = -torch.rand(DI, 16, device=dev) - 0.1
    ops.selective_state_update(h, rn(Bsz, DI), rn(Bsz, DI), A, rn(Bsz, 16), rn(Bsz, 16), rn(DI, dt=torch.float32),
                               rn(Bsz, DI), rn(DI, dt=torch.float32), True)
torch.cuda.synchronize()
print("cases ok")
PY
env $NEW timeout 90 compute-sanitizer --tool memcheck --print-limit 10 python3 /tmp/ab_memkernels_cases.py 2>&1 | tail -4
env $NEW timeout 90 compute-sanitizer --tool racecheck --print-limit 10 python3 /tmp/ab_memkernels_cases.py 2>&1 | tail -4
for cfg in "default:" "new_nv4:$NEW JAMBA_EXT_CONV_NV=4" "new_nv2:JAMBA_EXT_CONV_IMPL=new JAMBA_EXT_CONV_NV=2"; do
    label=${cfg%%:*}; vars=${cfg#*:}
    step "bench_kernels --only conv,decode: $label (${vars:-defaults})"
    env $vars timeout 100 python3 benchmarks/bench_kernels.py --only conv,decode 2>&1 | grep -E "device:|causal_conv1d|selective_state_update|Error|error"
    cp benchmarks/results/bench_kernels.json "$OUT/bench_kernels_$label.json" 2>/dev/null
done
step "done"
} 2>&1 | tee "$OUT/ab_memkernels.log"
exit 0
