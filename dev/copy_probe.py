"""dev/copy_probe.py -- how fast can any kernel move the bytes of the two memory-bound shapes that miss issue 3's
90%-of-copy-bandwidth target (causal_conv1d 1x2048: 33.5 MB read + 33.5 MB written; causal_conv1d_update batch 64:
5.3 MB + 5.3 MB), and one that meets it (conv 1x8192)?

    python3 dev/copy_probe.py      # on the GPU, ~1 min

Graph-timed like bench_kernels (20 calls in one CUDA graph, replayed; us per call, best of 3): torch's copy_ (what
bench_kernels' "same-size copy" row uses) and Triton copy kernels over a grid of block sizes and warp counts (16-byte
vectors where the block allows), each checked to have copied. The issue's floor is bytes / the copy bandwidth of a
2 GiB copy; 90% of it is the target. If no copy of the same bytes reaches the target time, the target asks for
more than the hardware gives a launch that short.
"""
import os
import sys

import torch
import triton
import triton.language as tl

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
sys.path.insert(1, ROOT)
import common  # noqa: E402
from bench_kernels import Bench  # noqa: E402


@triton.jit
def _copy(src, dst, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    m = offs < n
    tl.store(dst + offs, tl.load(src + offs, mask=m), mask=m)


def main():
    dev = torch.device("cuda")
    bb = Bench(dev, False, 20)
    shapes = [("conv 1x2048", 2 * 8192 * 2048 * 2), ("conv_update b64", 2 * 64 * 8192 * 4 * 2 + 2 * 64 * 8192 * 2),
              ("conv 1x8192", 2 * 8192 * 8192 * 2)]
    for name, nbytes in shapes:
        n = nbytes // 2 // 4  # int32 elements per side
        src = torch.randint(0, 1 << 30, (n,), device=dev, dtype=torch.int32)
        dst = torch.empty_like(src)
        floor = nbytes / (bb.bw * 1e3)
        rows = [("torch copy_", lambda: dst.copy_(src))]
        for block in (1024, 2048, 4096, 8192):
            for warps in (4, 8):
                grid = (triton.cdiv(n, block),)
                rows.append((f"triton block {block} warps {warps}",
                             lambda g=grid, b=block, w=warps: _copy[g](src, dst, n, BLOCK=b, num_warps=w)))
        cells = []
        for label, fn in rows:
            dst.zero_()
            fn()
            torch.cuda.synchronize()
            assert torch.equal(dst, src), label
            us = min(bb.graph_us(fn) for _ in range(3))
            cells.append((us, label))
        best = min(cells)
        print(f"{name}: {nbytes / 1e6:.1f} MB moved, floor {floor:.2f} us, 90% target {floor / 0.9:.2f} us | best "
              f"{best[0]:.2f} us ({best[1]}, {100 * floor / best[0]:.1f}% of copy bandwidth) | " +
              " | ".join(f"{lab} {us:.2f}" for us, lab in cells), flush=True)
        del src, dst


if __name__ == "__main__":
    main()
