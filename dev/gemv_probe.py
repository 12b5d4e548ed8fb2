"""cuBLAS (F.linear) at decode sizes against the weight-bandwidth floor, CUDA-graph timed.
Usage: python3 dev/gemv_probe.py  (H200; prints one line per shape)"""
import torch
import torch.nn.functional as F

from benchmarks import common

SHAPES = [("mamba in_proj", 16384, 4096), ("mamba out_proj", 4096, 8192), ("mamba x_proj", 288, 8192),
          ("mamba dt_proj", 8192, 256), ("mlp gate/up", 2 * 14336, 4096), ("mlp down", 4096, 14336),
          ("attn qkv", 6144, 4096), ("attn o", 4096, 4096), ("lm_head", 65536, 4096)]


def graph_us(fn, reps=20):
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for _ in range(reps):
            fn()
    ts = []
    for _ in range(15):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record(); g.replay(); b.record(); torch.cuda.synchronize()
        ts.append(a.elapsed_time(b) * 1e3 / reps)
    ts.sort()
    return ts[len(ts) // 2]


def main():
    dev = torch.device("cuda")
    bw = common.copy_bandwidth_gbs(dev) if hasattr(common, "copy_bandwidth_gbs") else None
    print("copy GB/s", bw)
    for name, N, K in SHAPES:
        nw = max(4, -(-(256 << 20) // (N * K * 2)))            # rotate over > 256 MB of weights (> L2)
        ws = [torch.randn(N, K, device=dev, dtype=torch.bfloat16) for _ in range(nw)]
        for M in (1, 8):
            x = torch.randn(M, K, device=dev, dtype=torch.bfloat16)
            i = [0]

            def fn():
                F.linear(x, ws[i[0] % nw])
                i[0] += 1
            t = graph_us(fn)
            floor = N * K * 2 / (bw * 1e3)
            print(f"{name:16s} N={N:6d} K={K:6d} M={M}: cuBLAS {t:7.1f} us | floor {floor:6.1f} us | "
                  f"{100 * floor / t:5.1f}%")


if __name__ == "__main__":
    main()
