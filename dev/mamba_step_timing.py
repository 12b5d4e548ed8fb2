"""dev/mamba_step_timing.py -- where jamba.mamba_inner_step's fused kernel spends its time, phase by phase.

    python3 dev/mamba_step_timing.py        # on the GPU, ~20 s

Jamba-v0.1 shapes (DI 8192, R 256, N 16, K 4), bf16, NL calls with their own weights (cold, as in the model).
1. Graph-timed per call: the fused kernel (cooperative launch), the same launched without the cooperative
   attribute (JAMBA_EXT_MAMBA_STEP_FUSED=nocoop), and the five launches (=0).
2. With JAMBA_EXT_MAMBA_STEP_TIMING=1 the kernel's thread 0 of every block stamps %globaltimer and clock64 at 8
   points (csrc/cuda/mamba_step.cu, ms_stamp) into the workspace's tail; per phase the median and the largest
   over blocks (clock64 cycles turned to us at the SM clock), and from %globaltimer the span from the first
   block's start to the last block's end and the wait of barrier 1 from its last arrival to its first release.
"""
import os
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
sys.path.insert(1, ROOT)
from bench_kernels import Bench  # noqa: E402

from jamba_ext import _C  # noqa: E402
from jamba_ext import ops as K  # noqa: E402

NL = 16
DI, R, N, KW = 8192, 256, 16, 4
NO = R + 2 * N
PHASES = ["conv update (+ weight loads issued)", "x_proj partials (weights arrive)", "barrier 1",
          "column sums + barrier 2", "dt/B/C norms", "dt_proj", "state update + out"]


def make(B, dev):
    bf = torch.bfloat16
    xz = torch.randn(B, 2 * DI, device=dev, dtype=bf)
    return dict(x=xz[:, :DI], z=xz[:, DI:], conv=torch.randn(B, DI, KW, device=dev, dtype=bf),
                cw=torch.randn(DI, KW, device=dev, dtype=bf) * 0.3, cb=torch.randn(DI, device=dev, dtype=bf) * 0.1,
                wx=torch.randn(NO, DI, device=dev, dtype=bf) * 0.02, nw=1 + 0.1 * torch.randn(NO, device=dev, dtype=bf),
                wdt=torch.randn(DI, R, device=dev, dtype=bf) * 0.05, A=-torch.rand(DI, N, device=dev) - 0.5,
                D=torch.randn(DI, device=dev), dtb=torch.randn(DI, device=dev) * 0.1,
                ssm=torch.randn(B, DI, N, device=dev) * 0.1)


def call(s, work):
    return K.mamba_inner_step(s["x"], s["z"], s["conv"], s["cw"], s["cb"], s["wx"], s["nw"], s["wdt"], s["A"], s["D"],
                              s["dtb"], s["ssm"], R, 1e-6, work)


def main():
    dev = torch.device("cuda")
    bb = Bench(dev, False, 20)
    nblk = (DI + 63) // 64
    print(f"copy bandwidth {bb.bw:.0f} GB/s; {NL} calls with their own weights; "
          f"grid {nblk} blocks", flush=True)
    for B in (1, 2):
        torch.manual_seed(B)
        sets = [make(B, dev) for _ in range(NL)]
        wel = _C.mamba_inner_step_work_elems(DI, B, NO)
        works = [torch.zeros(wel + nblk * 16, dtype=torch.int64, device=dev) for _ in range(NL)]
        for mode in ("1", "nocoop", "0"):
            os.environ["JAMBA_EXT_MAMBA_STEP_FUSED"] = mode
            us = bb.graph_us(lambda: [call(sets[i], works[i]) for i in range(NL)], n=1) / NL
            print(f"B={B} JAMBA_EXT_MAMBA_STEP_FUSED={mode:7s}: {us:7.2f} us a call (graph)", flush=True)
        stamps(B, sets, works, wel, nblk)
    os.environ.pop("JAMBA_EXT_MAMBA_STEP_FUSED", None)


def stamps(B, sets, works, wel, nblk):
    """The kernel's stamps (JAMBA_EXT_MAMBA_STEP_TIMING=1) of NL dynamic calls x 5 (after a warm-up round)."""
    os.environ["JAMBA_EXT_MAMBA_STEP_FUSED"] = "force"
    os.environ["JAMBA_EXT_MAMBA_STEP_TIMING"] = "1"
    ph = [[] for _ in PHASES]
    phmax = [[] for _ in PHASES]
    span, skew, bar1, bar2, hz = [], [], [], [], []
    for rep in range(6):
        for i in range(NL):
            call(sets[i], works[i])
            torch.cuda.synchronize()
            if rep == 0:
                continue
            t = works[i][wel:].view(nblk, 16).cpu().double()
            g, c = t[:, :8], t[:, 8:]
            sm_hz = ((c[:, 7] - c[:, 0]) / (g[:, 7] - g[:, 0]).clamp(min=1)).median().item() * 1e9  # cycles/s
            hz.append(sm_hz)
            d = (c[:, 1:] - c[:, :-1]) / sm_hz * 1e6
            for k in range(len(PHASES)):
                ph[k].append(d[:, k].median().item())
                phmax[k].append(d[:, k].max().item())
            span.append((g[:, 7].max() - g[:, 0].min()).item() / 1e3)
            skew.append((g[:, 0].max() - g[:, 0].min()).item() / 1e3)
            bar1.append((g[:, 3].min() - g[:, 2].max()).item() / 1e3)
            bar2.append((g[:, 4].min() - g[:, 3].max()).item() / 1e3)  # last column-sum start .. release
    del os.environ["JAMBA_EXT_MAMBA_STEP_TIMING"]
    med = lambda v: sorted(v)[len(v) // 2]  # noqa: E731
    print(f"B={B} stamps (dynamic launches, median over {len(span)} calls; SM clock "
          f"{med(hz) / 1e9:.2f} GHz from clock64 / globaltimer):", flush=True)
    for k, name in enumerate(PHASES):
        print(f"  {name:38s} median block {med(ph[k]):6.2f} us, slowest block {med(phmax[k]):6.2f} us")
    print(f"  first start .. last end {med(span):6.2f} us; start skew {med(skew):5.2f} us; barrier 1 last arrival"
          f" .. first release {med(bar1):5.2f} us; last column-sum start .. first release of barrier 2 "
          f"{med(bar2):5.2f} us", flush=True)


if __name__ == "__main__":
    main()
