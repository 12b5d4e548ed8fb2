"""dev/read_pattern_probe.py -- session 41: is the one-token fp8 down GEMV's ~76% of copy bandwidth a property of its
read pattern? That kernel reads 117 MB (two experts' 4096 x 14336 e4m3 rows) with 256 long-lived blocks (one wave,
458 KB each, a fixed share per block); the gate_up kernel, at 93%, reads 235 MB with 3584 short blocks (64 KB each,
3.4 waves, the block scheduler balancing the SMs). Triton read-and-sum kernels over the same byte counts: P programs
each summing a contiguous span (a loop of BLOCK int32 a step), from few long programs to many short ones.

    python3 dev/read_pattern_probe.py [--gemv | --sass]     # on the GPU, ~1 min

--gemv: instead, a Triton fp8 GEMV of the down kernel's shape (8192 e4m3 rows of 14336 bytes, i.e. both experts'
rows, against one bf16 row; ROWS rows a program, BK bytes a step, fp32 products summed per lane then across), with
the CUDA down kernel's profiled time beside it (dev/fp8_gemv_kernels.py) for comparison. --sass: that GEMV's SASS
for its two best configurations (8 rows x 1 KB, 4 warps; 32 rows x 512 B, 8 warps): the instruction histogram and the
loop body, to set beside csrc/cuda/moe_gemv.cu's down kernel (cuobjdump -sass).

Graph-timed like bench_kernels (us per call, best of 3); % of the copy bandwidth (2 GiB copy) for the bytes read.
"""
import os
import sys

import torch
import triton
import triton.language as tl

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
sys.path.insert(1, ROOT)


@triton.jit
def _span_sum(src, out, span, BLOCK: tl.constexpr):
    base = tl.program_id(0).to(tl.int64) * span
    acc = tl.zeros([BLOCK], dtype=tl.int32)
    for k in range(0, span, BLOCK):
        acc += tl.load(src + base + k + tl.arange(0, BLOCK))
    tl.store(out + tl.program_id(0), tl.sum(acc, axis=0))


@triton.jit
def _gemv_fp8(w, x, out, F, ROWS: tl.constexpr, BK: tl.constexpr):
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    acc = tl.zeros([ROWS, BK], dtype=tl.float32)
    for k in range(0, F, BK):
        cols = k + tl.arange(0, BK)
        wv = tl.load(w + rows.to(tl.int64)[:, None] * F + cols[None, :])
        wf = wv.to(tl.float8e4nv, bitcast=True).to(tl.float32)
        acc += wf * tl.load(x + cols).to(tl.float32)[None, :]
    tl.store(out + rows, tl.sum(acc, axis=1))


def gemv_main():
    from bench_kernels import Bench
    dev = torch.device("cuda")
    bb = Bench(dev, False, 20)
    R, F = 2 * 4096, 14336
    print(f"commit {os.environ.get('JAMBA_COMMIT', '?')} | copy {bb.bw:.0f} GB/s | fp8 GEMV {R} x {F}", flush=True)
    w = torch.randint(0, 126, (R, F), device=dev, dtype=torch.uint8)
    x = (torch.randn(F, device=dev) * 0.1).to(torch.bfloat16)
    want = (w.view(torch.float8_e4m3fn).float() @ x.float())
    floor = R * F / (bb.bw * 1e3)
    print(f"floor {floor:.1f} us", flush=True)
    for rows, bk, warps in ((16, 512, 8), (16, 1024, 8), (32, 512, 8), (8, 1024, 4), (8, 512, 4), (16, 256, 4),
                            (32, 256, 8), (4, 2048, 4), (16, 2048, 8)):
        out = torch.empty(R, device=dev, dtype=torch.float32)
        fn = lambda: _gemv_fp8[(R // rows,)](w, x, out, F, ROWS=rows, BK=bk, num_warps=warps)  # noqa: E731
        fn()
        torch.cuda.synchronize()
        err = ((out - want).norm() / want.norm()).item()
        assert err < 1e-4, err
        us = min(bb.graph_us(fn) for _ in range(3))
        print(f"  {R // rows:5d} programs, {rows} rows x {bk} bytes a step, {warps} warps: {us:6.1f} us "
              f"({100 * floor / us:5.1f}%)", flush=True)


def sass_main():
    import collections
    import re
    dev = torch.device("cuda")
    R, F = 2 * 4096, 14336
    w = torch.randint(0, 126, (R, F), device=dev, dtype=torch.uint8)
    x = (torch.randn(F, device=dev) * 0.1).to(torch.bfloat16)
    out = torch.empty(R, device=dev, dtype=torch.float32)
    for rows, bk, warps in ((8, 1024, 4), (32, 512, 8)):
        k = _gemv_fp8[(R // rows,)](w, x, out, F, ROWS=rows, BK=bk, num_warps=warps)
        sass = k.asm.get("sass", "")
        if not sass and "cubin" in k.asm:  # no nvdisasm on the machine: the cubin, for cuobjdump -sass elsewhere
            path = os.path.join(os.environ.get("OUT", "/tmp"), f"triton_gemv_{rows}x{bk}_w{warps}.cubin")
            with open(path, "wb") as f:
                f.write(k.asm["cubin"])
            print(f"wrote {path}")
        ops = [m.group(1).split(".")[0] for m in re.finditer(r"^\s+/\*[0-9a-f]+\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]+)", sass,
                                                                re.M)]
        print(f"=== {rows} rows x {bk} bytes, {warps} warps: {len(ops)} instructions, registers "
              f"{getattr(k, 'n_regs', '?')}, spills {getattr(k, 'n_spills', '?')}")
        print("  " + ", ".join(f"{n} {c}" for n, c in collections.Counter(ops).most_common(24)))
        print(sass[:40000] if rows == 8 else "", flush=True)


def main():
    from bench_kernels import Bench
    dev = torch.device("cuda")
    bb = Bench(dev, False, 20)
    print(f"commit {os.environ.get('JAMBA_COMMIT', '?')} | copy {bb.bw:.0f} GB/s | "
          f"{torch.cuda.get_device_properties(dev).multi_processor_count} SMs", flush=True)
    for name, nbytes in (("fp8 down, 1 token (117 MB)", 2 * 4096 * 14336), ("fp8 gate_up, 1 token (235 MB)",
                                                                            2 * 2 * 14336 * 4096)):
        n = nbytes // 4
        src = torch.randint(-1000, 1000, (n,), device=dev, dtype=torch.int32)
        floor = nbytes / (bb.bw * 1e3)
        print(f"{name}: floor {floor:.1f} us", flush=True)
        for P in (128, 256, 264, 512, 1024, 2048, 4096, 8192, 16384, 32768):
            span = n // P
            for block, warps in ((1024, 4), (2048, 8)):
                if span % block:
                    continue
                out = torch.empty(P, device=dev, dtype=torch.int32)
                fn = lambda: _span_sum[(P,)](src, out, span, BLOCK=block, num_warps=warps)  # noqa: E731
                fn()
                torch.cuda.synchronize()
                want = src[:span].sum().item()
                assert out[0].item() == want, (out[0].item(), want)
                us = min(bb.graph_us(fn) for _ in range(3))
                print(f"  {P:6d} programs x {span * 4 / 1024:8.1f} KB, block {block} warps {warps}: {us:7.1f} us "
                      f"({100 * floor / us:5.1f}%)", flush=True)


if __name__ == "__main__":
    sass_main() if "--sass" in sys.argv else gemv_main() if "--gemv" in sys.argv else main()
