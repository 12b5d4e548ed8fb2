#!/usr/bin/env bash
# Which CUDA 12.x toolkits can build the CUDA kernels? (no GPU needed; PyPI must be reachable)
# A CUDA 12 nvcc front end is not on PyPI (the nvidia-cuda-nvcc-cu12 wheels carry ptxas, not nvcc or cicc), so this
# checks the two parts that an older toolkit could reject, with the pieces PyPI has:
#   1. the device code's PTX: every .cu file is compiled to PTX by the local nvcc (sm_80, and sm_90 / sm_90a as
#      setup.py picks), its `.version` set to the older release's PTX ISA, and assembled by that release's ptxas
#      (nvidia-cuda-nvcc-cu12 wheels). ptxas names any instruction or modifier that needs a newer ISA; a negative
#      control (the wgmma file at ISA 7.8, below the 8.0 that wgmma and mbarrier expect_tx need) must fail.
#   2. the host side: every runtime / driver API name and device intrinsic the kernels use must be declared in that
#      release's headers (nvidia-cuda-runtime-cu12), except what the source guards by CUDART_VERSION.
# Not checked: the older nvcc's C++ front end itself (EDG / cicc), which no PyPI wheel carries.
# Usage: bash dev/toolkit_compat.sh [12.0 12.4 ...]   (writes its report to stdout)
set -uo pipefail
cd "$(dirname "$0")/.."
W=${TOOLKIT_COMPAT_DIR:-/tmp/jamba_toolkit_compat}
mkdir -p "$W/ptx"
declare -A NVCC_WHL=([12.0]=12.0.140 [12.1]=12.1.105 [12.2]=12.2.140 [12.3]=12.3.107 [12.4]=12.4.131
                     [12.5]=12.5.82 [12.6]=12.6.85 [12.8]=12.8.93 [12.9]=12.9.86)
declare -A RT_WHL=([12.0]=12.0.107 [12.1]=12.1.105 [12.2]=12.2.140 [12.3]=12.3.101 [12.4]=12.4.127
                   [12.5]=12.5.82 [12.6]=12.6.77 [12.8]=12.8.90 [12.9]=12.9.79)
declare -A ISA=([12.0]=8.0 [12.1]=8.1 [12.2]=8.2 [12.3]=8.3 [12.4]=8.4 [12.5]=8.5 [12.6]=8.5 [12.8]=8.7 [12.9]=8.8)
releases=("$@"); [ ${#releases[@]} -eq 0 ] && releases=(12.0 12.4)
echo "local nvcc: $(nvcc --version | tail -1); commit $(git rev-parse --short HEAD 2>/dev/null)"

echo "== PTX of every kernel file (local nvcc)"
for f in csrc/cuda/*.cu; do
  b=$(basename "$f" .cu)
  for a in 80 90; do
    aa=$a; [ $a = 90 ] && head -c 4096 "$f" | grep -q 'jamba-build: sm90a' && aa=90a
    [ -s "$W/ptx/$b.$aa.ptx" ] && [ "$W/ptx/$b.$aa.ptx" -nt "$f" ] && continue
    nvcc -ptx "$f" -o "$W/ptx/$b.$aa.ptx" -O3 -std=c++17 -DJAMBA_WITH_CUDA --expt-relaxed-constexpr -I csrc \
      -arch=compute_$aa || echo "local nvcc failed: $f $aa"
  done
done
ls "$W"/ptx/*.ptx | wc -l | xargs echo "PTX files:"

fail=0
for r in "${releases[@]}"; do
  d="$W/$r"
  if [ ! -x "$d/nvidia/cuda_nvcc/bin/ptxas" ] || [ ! -d "$d/nvidia/cuda_runtime/include" ]; then
    mkdir -p "$d/whl"
    python3 -m pip download --no-deps -q "nvidia-cuda-nvcc-cu12==${NVCC_WHL[$r]}" \
      "nvidia-cuda-runtime-cu12==${RT_WHL[$r]}" -d "$d/whl" 2>&1 | grep -v '^WARNING' || true
    for w in "$d"/whl/*.whl; do (cd "$d" && python3 -m zipfile -e "$w" .); done
    chmod +x "$d/nvidia/cuda_nvcc/bin/ptxas" 2>/dev/null
  fi
  P="$d/nvidia/cuda_nvcc/bin/ptxas"
  echo "== CUDA $r: $("$P" --version | tail -1), PTX ISA ${ISA[$r]}"
  ok=0; bad=0
  for f in "$W"/ptx/*.ptx; do
    arch=$(grep -m1 '^\.target' "$f" | awk '{print $2}')
    sed -E "s/^\.version [0-9.]+/.version ${ISA[$r]}/" "$f" > "$W/t.ptx"
    if out=$("$P" -arch="$arch" -O3 "$W/t.ptx" -o /dev/null 2>&1); then ok=$((ok + 1)); else
      bad=$((bad + 1)); echo "  ptxas rejects $(basename "$f"): $(echo "$out" | grep -m2 . | tr '\n' ' ')"; fi
  done
  echo "  ptxas: $ok of $((ok + bad)) PTX files assemble"
  sed -E "s/^\.version [0-9.]+/.version 7.8/" "$W/ptx/moe_wgmma.90a.ptx" > "$W/t.ptx"
  if "$P" -arch=sm_90a "$W/t.ptx" -o /dev/null > /dev/null 2>&1; then
    echo "  NEGATIVE CONTROL DID NOT FAIL (wgmma PTX at ISA 7.8 assembled): the check above proves nothing"; bad=$((bad + 1))
  else echo "  negative control: the wgmma file at PTX ISA 7.8 is rejected, as it must be"; fi
  H="$d/nvidia/cuda_runtime/include"
  missing=""
  for id in $(grep -ohE '\b(cuda[A-Z][A-Za-z0-9_]*|CU_[A-Z0-9_]+|CUtensor[A-Za-z]*|__nv_[a-z0-9_]+|CUDART_[A-Z_]+)\b' \
              csrc/cuda/*.cu csrc/cuda/*.cuh | sort -u); do
    grep -rqw "$id" "$H" || missing="$missing $id"
  done
  guarded=""
  for id in $missing; do
    # a name used only inside an `#if CUDART_VERSION >= N` block with N above this release is fine
    grep -B3 -h "\b$id\b" csrc/cuda/*.cu csrc/cuda/*.cuh | grep -q 'CUDART_VERSION >=' && guarded="$guarded $id" \
      || { echo "  not declared in CUDA $r's headers: $id"; bad=$((bad + 1)); }
  done
  [ -n "$guarded" ] && echo "  newer names, used under a CUDART_VERSION guard:$guarded"
  [ $bad -eq 0 ] && echo "  CUDA $r: PASS (PTX ISA and host API names)" || { echo "  CUDA $r: FAIL"; fail=1; }
done
exit $fail
