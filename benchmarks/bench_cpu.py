"""CPU benchmark: the C kernels of jamba_ext against reference.py in torch eager on the same inputs.

Shapes (issue 2): batch 1, d_inner 2048, seqlen 2048, d_state 16, width 4 for the sequence ops; a decode
step at batch 8 (d_inner 2048); rms_norm over 2048 rows of 2048; the training loss (forward + backward, against
F.cross_entropy and its autograd) over 512 rows of a 32768-word vocabulary; moe_grad_rows over 2048 slots of 2048.
fp32 (the CPU dtype that matters).
Each row is checked against the reference at that shape before it is timed. Prints median times and
the speedup; writes benchmarks/results/local/bench_cpu.json (+ .png; gitignored, so a run leaves the checkout
clean), or the --out file: the committed measurement is benchmarks/results/bench_cpu.json.

    python benchmarks/bench_cpu.py            # full shapes
    python benchmarks/bench_cpu.py --smoke    # tiny shapes (CI)
    python benchmarks/bench_cpu.py --out benchmarks/results/bench_cpu.json   # replace the committed measurement
"""
import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

from jamba_ext import ops, reference as R  # noqa: E402


def cases(Bsz, DI, L, N, K, Bdec):
    g = torch.Generator().manual_seed(0)
    rn = lambda *s, scale=1.0: torch.randn(*s, generator=g) * scale
    x = rn(Bsz, DI, L)
    w, b = rn(DI, K, scale=0.5), rn(DI, scale=0.1)
    u, delta, z = rn(Bsz, DI, L), rn(Bsz, DI, L, scale=0.5), rn(Bsz, DI, L)
    A = -torch.exp(rn(DI, N, scale=0.5))
    Bm, Cm = rn(Bsz, N, L), rn(Bsz, N, L)
    D, dbias = rn(DI), rn(DI, scale=0.2)
    rows = rn(DI, DI)  # rms_norm: DI rows of DI
    nw = rn(DI, scale=0.1) + 1
    # decode step, batch Bdec
    xs, dts, zs = rn(Bdec, DI), rn(Bdec, DI, scale=0.5), rn(Bdec, DI)
    bs, cs = rn(Bdec, N), rn(Bdec, N)
    ssm = rn(Bdec, DI, N)
    conv_state = rn(Bdec, DI, K)
    yield ("rms_norm", f"rows={DI} dim={DI}",
           lambda: ops.rms_norm(rows, nw, 1e-6), lambda: R.rms_norm(rows, nw, 1e-6))
    yield ("causal_conv1d", f"B={Bsz} DI={DI} L={L} K={K} silu",
           lambda: ops.causal_conv1d(x, w, b, None, True)[0], lambda: R.causal_conv1d(x, w, b, None, True)[0])
    yield ("selective_scan", f"B={Bsz} DI={DI} L={L} N={N} z,D,softplus",
           lambda: ops.selective_scan(u, delta, A, Bm, Cm, D, z, dbias, True)[0],
           lambda: R.selective_scan(u, delta, A, Bm, Cm, D, z, dbias, True)[0])
    yield ("causal_conv1d_update", f"B={Bdec} DI={DI} K={K} (decode)",
           lambda: ops.causal_conv1d_update(xs, conv_state.clone(), w, b, True),
           lambda: R.causal_conv1d_update(xs, conv_state, w, b, True)[0])
    yield ("selective_state_update", f"B={Bdec} DI={DI} N={N} (decode)",
           lambda: ops.selective_state_update(ssm.clone(), xs, dts, A, bs, cs, D, zs, dbias, True),
           lambda: R.selective_state_update(ssm, xs, dts, A, bs, cs, D, zs, dbias, True)[0])
    # training: the LM loss (forward + backward) over DI // 4 rows of a 16 * DI-word vocabulary, and the start of
    # the MoE backward (moe_grad_rows) over DI slots of DI // 2 (top-2)
    V, NR = 16 * DI, max(DI // 4, 1)
    logits, tgt = rn(NR, V, scale=3.0), torch.randint(0, V, (NR,), generator=g)
    dl = torch.full((NR,), 1.0 / NR)

    def ce_ours():
        _, lse = ops.cross_entropy(logits, tgt)
        return ops.cross_entropy_bwd(logits, tgt, lse, dl)

    def ce_ref():
        x = logits.clone().requires_grad_()
        torch.nn.functional.cross_entropy(x, tgt).backward()
        return x.grad

    yield ("cross_entropy fwd+bwd", f"rows={NR} vocab={V}", ce_ours, ce_ref)
    T2 = max(DI // 2, 1)
    go, yv, wt = rn(T2, DI), rn(2 * T2, DI), torch.rand(T2, 2, generator=g)
    slots = torch.randperm(2 * T2, generator=g).to(torch.int32)
    yield ("moe_grad_rows", f"slots={2 * T2} H={DI}",
           lambda: torch.cat([t.reshape(-1) for t in ops.moe_grad_rows(go, wt, slots, yv)]),
           lambda: torch.cat([t.reshape(-1) for t in R.moe_grad_rows(go, wt, slots, yv)]))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="tiny shapes, few repetitions (CI)")
    ap.add_argument("--out", default=None, help="the JSON file to write (its .png beside it); default "
                    "benchmarks/results/local/bench_cpu[_smoke].json")
    args = ap.parse_args()
    shape = (1, 64, 64, 16, 4, 8) if args.smoke else (1, 2048, 2048, 16, 4, 8)
    reps = 3 if args.smoke else 10
    dev = torch.device("cpu")
    print(f"jamba_ext CPU benchmark on {common.device_name(dev)}, torch {torch.__version__}")
    rows = []
    for name, desc, ours, ref in cases(*shape):
        a, r = ours(), ref()
        torch.testing.assert_close(a, r, rtol=1e-4, atol=1e-4)  # a fast wrong kernel never reaches the table
        t_ours = common.time_ms(ours, dev, warmup=2, reps=reps)
        t_ref = common.time_ms(ref, dev, warmup=1, reps=max(3, reps // 3))
        ratio = t_ref["median_ms"] / t_ours["median_ms"]
        rows.append({"op": name, "label": f"{name} {desc}", "shape": desc, "dtype": "float32",
                     "median_us": t_ours["median_ms"] * 1e3, "p10_us": t_ours["p10_ms"] * 1e3,
                     "p90_us": t_ours["p90_ms"] * 1e3, "reference_eager_us": t_ref["median_ms"] * 1e3,
                     "speedup_vs_reference": ratio})
        print(f"{name:<24} {desc:<40} ours {t_ours['median_ms']:9.3f} ms | torch eager reference "
              f"{t_ref['median_ms']:9.3f} ms | {ratio:6.1f}x")
    if args.out:
        folder, name = os.path.split(os.path.abspath(args.out))
        name = name[:-len(".json")] if name.endswith(".json") else name
    else:
        folder, name = common.LOCAL, "bench_cpu_smoke" if args.smoke else "bench_cpu"
    path = common.write_results(name, rows, common.meta(dev, threads=torch.get_num_threads(), smoke=args.smoke),
                                folder=folder)
    print("wrote", path)


if __name__ == "__main__":
    main()
