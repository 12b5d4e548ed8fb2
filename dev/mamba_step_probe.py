"""dev/mamba_step_probe.py -- where a Mamba layer's decode step (batch 1, Jamba-v0.1 shapes, bf16) spends its time.

    python3 dev/mamba_step_probe.py [BATCH]  # on the GPU, ~30 s; batch 1 by default

Graph-timed like bench_kernels (PDL as the library launches), over NL mixers with their own weights and states,
so that each call's weights come from DRAM, as in the model (where ~200 MB of other weights pass between two Mamba
layers): each op of JambaMambaMixer.step alone (one call per mixer in the graph), the five between in_proj and
out_proj as a sequence, and the whole step; per row the floor (its bytes at the measured copy bandwidth). Last,
the model's chain: add_rms_norm, then the whole step, each layer's input the previous layer's output.
"""
import os
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
sys.path.insert(1, ROOT)
from bench_kernels import Bench  # noqa: E402

from jamba_ext import modeling_jamba as mj  # noqa: E402
from jamba_ext import ops as K  # noqa: E402

NL = 16


def main():
    dev = torch.device("cuda")
    bb = Bench(dev, False, 20)
    cfg = mj.JambaConfig(num_hidden_layers=2)
    torch.manual_seed(0)
    with torch.device(dev):
        mixers = [mj.JambaMambaMixer(cfg, 0).to(torch.bfloat16) for _ in range(NL)]
    for m in mixers:
        for name, p in m.named_parameters():
            if name not in ("A_log", "D"):
                torch.nn.init.normal_(p, std=0.02)
    H, DI, R, N = cfg.hidden_size, cfg.mamba_d_inner, cfg.mamba_dt_rank, cfg.mamba_d_state
    Bsz = int(sys.argv[1]) if len(sys.argv) > 1 else 1
    h = [torch.randn(Bsz, 1, H, device=dev, dtype=torch.bfloat16) for _ in range(NL)]
    conv = [torch.randn(Bsz, DI, 4, device=dev, dtype=torch.bfloat16) for _ in range(NL)]
    ssm = [torch.randn(Bsz, DI, N, device=dev) * 0.1 for _ in range(NL)]
    print(f"copy bandwidth {bb.bw:.0f} GB/s; {NL} mixers, batch {Bsz}", flush=True)
    with torch.no_grad(), mj._GemvScope(True):             # jamba.gemv, as in the model's static decode step
        st = [dict() for _ in range(NL)]
        for i, m in enumerate(mixers):                      # the step's intermediates, per mixer
            s = st[i]
            s["xz"] = mj._proj(h[i][:, 0], m.in_proj.weight)
            s["x"], s["z"] = s["xz"][:, :DI], s["xz"][:, DI:]
            s["xc"] = K.causal_conv1d_update(s["x"], conv[i], m.conv1d.weight, m.conv1d.bias, True)
            s["xdbl"] = mj._proj(s["xc"], m.x_proj.weight)
            s["dt"], s["Bm"], s["Cm"] = m._xproj_norms(s["xdbl"])
            s["delta"] = mj._proj(s["dt"], m.dt_proj.weight)
            s["A"], s["D"], s["dtb"] = m._ssm_params()
            s["y"] = K.selective_state_update(ssm[i], s["xc"], s["delta"], s["A"], s["Bm"], s["Cm"], s["D"], s["z"],
                                              s["dtb"], True)
        w = lambda t: t.numel() * t.element_size()  # noqa: E731
        m0, s0 = mixers[0], st[0]
        nw = m0._xproj_norm_weight()[0]
        rows = [
            ("in_proj gemv", lambda i: mj._proj(h[i][:, 0], mixers[i].in_proj.weight), w(m0.in_proj.weight)),
            ("conv update", lambda i: K.causal_conv1d_update(st[i]["x"], conv[i], mixers[i].conv1d.weight,
                                                              mixers[i].conv1d.bias, True),
             2 * w(conv[0]) + w(m0.conv1d.weight) + w(m0.conv1d.bias) + 2 * 2 * DI),
            ("x_proj gemv", lambda i: mj._proj(st[i]["xc"], mixers[i].x_proj.weight), w(m0.x_proj.weight)),
            ("dt/B/C norms", lambda i: mixers[i]._xproj_norms(st[i]["xdbl"]), 2 * w(s0["xdbl"]) + w(nw)),
            ("dt_proj gemv", lambda i: mj._proj(st[i]["dt"], mixers[i].dt_proj.weight), w(m0.dt_proj.weight)),
            ("state update", lambda i: K.selective_state_update(ssm[i], st[i]["xc"], st[i]["delta"], st[i]["A"],
                                                                  st[i]["Bm"], st[i]["Cm"], st[i]["D"], st[i]["z"],
                                                                  st[i]["dtb"], True),
             2 * w(ssm[0]) + w(s0["A"]) + 3 * 4 * DI + 4 * 2 * DI),
            ("out_proj gemv", lambda i: mj._proj(st[i]["y"], mixers[i].out_proj.weight), w(m0.out_proj.weight)),
        ]
        total = 0.0
        for name, fn, nbytes in rows:
            us = bb.graph_us(lambda: [fn(i) for i in range(NL)], n=1) / NL
            floor = nbytes / (bb.bw * 1e3)
            total += us
            print(f"{name:14s} {us:7.2f} us  floor {floor:6.2f} us ({100 * floor / us:5.1f}%)  {nbytes / 1e6:7.2f} MB",
                  flush=True)

        def middle(i):
            m, s = mixers[i], st[i]
            xc = K.causal_conv1d_update(s["x"], conv[i], m.conv1d.weight, m.conv1d.bias, True)
            dt, Bm, Cm = m._xproj_norms(mj._proj(xc, m.x_proj.weight))
            return K.selective_state_update(ssm[i], xc, mj._proj(dt, m.dt_proj.weight), s["A"], Bm, Cm, s["D"],
                                            s["z"], s["dtb"], True)
        mid_bytes = sum(r[2] for r in rows[1:6])
        us = bb.graph_us(lambda: [middle(i) for i in range(NL)], n=1) / NL
        print(f"the 5 between in_proj and out_proj in sequence: {us:7.2f} us, floor {mid_bytes / (bb.bw * 1e3):6.2f} us"
              f" ({mid_bytes / 1e6:.2f} MB)", flush=True)
        fused_default = mj.MAMBA_STEP_FUSED
        mj.MAMBA_STEP_FUSED = False                         # the five launches (the model's path before ecff4ec)
        us = bb.graph_us(lambda: [mixers[i].step(h[i], conv[i], ssm[i]) for i in range(NL)], n=1) / NL
        all_bytes = sum(r[2] for r in rows)
        print(f"whole step (five launches): {us:7.2f} us (sum of the rows {total:7.2f}), floor {all_bytes / (bb.bw * 1e3):6.2f} us "
              f"({100 * all_bytes / (bb.bw * 1e3) / us:.1f}%)", flush=True)

        if Bsz > mj.MAMBA_STEP_MAX_BATCH:                  # the fused kernel's limit: the model runs the five
            return
        # the same five as one jamba.mamba_inner_step (the fused kernel), and the step with it (MAMBA_STEP_FUSED)
        works = [K.mamba_inner_step_workspace(DI, Bsz, R + 2 * N, dev) for _ in range(NL)]

        def fused(i):
            m, s = mixers[i], st[i]
            nw_eps = m._xproj_norm_weight()
            return K.mamba_inner_step(s["x"], s["z"], conv[i], m.conv1d.weight, m.conv1d.bias, m.x_proj.weight,
                                      nw_eps[0], m.dt_proj.weight, s["A"], s["D"], s["dtb"], ssm[i], R, nw_eps[1],
                                      works[i])
        us = bb.graph_us(lambda: [fused(i) for i in range(NL)], n=1) / NL
        print(f"jamba.mamba_inner_step (fused):                   {us:7.2f} us, floor "
              f"{mid_bytes / (bb.bw * 1e3):6.2f} us", flush=True)
        mj.MAMBA_STEP_FUSED = True
        us = bb.graph_us(lambda: [mixers[i].step(h[i], conv[i], ssm[i]) for i in range(NL)], n=1) / NL
        print(f"whole step with MAMBA_STEP_FUSED: {us:7.2f} us", flush=True)

        # the chain as the model runs it (session 28): each layer's input is add_rms_norm(the previous layer's
        # output, the residual), so in_proj follows the norm, not the previous layer's out_proj
        nh = torch.ones(H, device=dev, dtype=torch.bfloat16)
        us_norm = bb.graph_us(lambda: [K.add_rms_norm(h[i][:, 0], h[(i + 1) % NL][:, 0], nh) for i in range(NL)],
                              n=1) / NL

        def chained():
            x, res = h[0][:, 0], h[1][:, 0]
            for i in range(NL):
                x, res = K.add_rms_norm(x, res, nh)
                x = mixers[i].step(x[:, None], conv[i], ssm[i])[:, 0]
            return x
        us = bb.graph_us(chained, n=1) / NL
        mj.MAMBA_STEP_FUSED = fused_default
        print(f"add_rms_norm of one row alone: {us_norm:7.2f} us; add_rms_norm + whole step (fused), chained: "
              f"{us:7.2f} us", flush=True)


if __name__ == "__main__":
    main()
