"""dev/moe_power.py -- the MoE op and a dense matmul of the same work, each sustained, under nvidia-smi sampling:
is the op slower than the dense matmul because it costs more energy per FLOP at the power limit? (session 64)

    python3 dev/moe_power.py MARKS [T ...]     # on the GPU; the round script samples nvidia-smi meanwhile

For each token count T (default 2048, 4096), bench_moe's setup (H 4096, F 14336, E 16, top-2, bf16; router
randn * H^-0.5 * 4, x randn): phases of ~SECONDS each, in the order op, dense, op, dense -- the op
(moe_route + moe_experts, impl auto) and the same-work dense matmul (all 2T slots through expert 0's weights, as
bench_moe's "dense mm" row) -- each phase's mean time a call (CUDA events over the phase) written to stdout and its
start (unix seconds) to MARKS for dev/smi_phases.py. The op streams every expert's weights from HBM once a call
(16 x 3 x 4096 x 14336 x 2 bytes = 5.6 GB), the dense matmul one expert's (0.35 GB): at equal power the op's SM
clock shows what that traffic costs."""
import os
import sys
import time

import torch
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from jamba_ext import ops  # noqa: E402

H, Fd, E, K, SECONDS = 4096, 14336, 16, 2, 3.0


def phase(name, fn, marks, flops):
    fn()
    torch.cuda.synchronize()
    marks.write(f"{time.time():.3f} {name}\n")
    marks.flush()
    n, t0 = 0, time.time()
    e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    e0.record()
    while time.time() - t0 < SECONDS:
        for _ in range(10):
            fn()
        n += 10
        torch.cuda.synchronize()
    e1.record()
    torch.cuda.synchronize()
    us = e0.elapsed_time(e1) * 1e3 / n
    print(f"  {name:14s} {us:9.1f} us a call over {n} calls  {flops / us / 1e6:6.1f} TFLOP/s", flush=True)


def main():
    marks = open(sys.argv[1], "w")
    tokens = [int(t) for t in sys.argv[2:]] or [2048, 4096]
    dev, dt = torch.device("cuda"), torch.bfloat16
    torch.manual_seed(0)
    w_gate_up = (torch.randn(E, 2 * Fd, H, device=dev) * H ** -0.5).to(dt)
    w_down = (torch.randn(E, H, Fd, device=dev) * Fd ** -0.5).to(dt)
    router = (torch.randn(E, H, device=dev) * H ** -0.5 * 4).to(dt)
    for T in tokens:
        x = torch.randn(T, H, device=dev).to(dt)
        logits = F.linear(x, router)
        xs = x.repeat(K, 1)

        def op():
            w, ids, offsets, slots = ops.moe_route(logits, K)
            return ops.moe_experts(x, w, ids, w_gate_up, w_down, slots, offsets)

        def dense():
            return torch.matmul(torch.matmul(xs, w_gate_up[0].t())[:, :Fd], w_down[0].t())

        flops = 2.0 * T * K * 3 * H * Fd
        print(f"T {T}:", flush=True)
        for r in range(2):
            phase(f"op T{T} {r}", op, marks, flops)
            phase(f"dense T{T} {r}", dense, marks, flops)
    marks.write(f"{time.time():.3f} end\n")


if __name__ == "__main__":
    main()
