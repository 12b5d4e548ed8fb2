"""The six torch._grouped_mm calls of a bf16 MoE training step on Hopper (ops._moe_grouped_forward and
ops._moe_grouped_grads with the forward's tensors kept), each timed alone at Jamba-v0.1 sizes, against the measured
dense bf16 matmul rate and, for the weight gradients (whose output is every expert's whole weight), against the bytes
they must write at the measured copy bandwidth. Session 34: where a training step's ~9 ms per MoE layer goes at
2048 tokens.

    python3 dev/moe_grouped_gemm_probe.py [--tokens 2048,8192] [--smoke]

Rows (S = routed slots = 2 x tokens, one GEMM unit = 2 * S * H * F FLOPs):
  fwd gate_up   xs (S, H) @ w_gate_up^T per expert          -> (S, 2F)   2 units
  fwd down      act (S, F) @ w_down^T per expert            -> (S, H)    1 unit
  dW down       dys^T (H, S) @ act (S, F), K-grouped        -> (E, H, F) 1 unit
  d act         dys (S, H) @ w_down per expert              -> (S, F)    1 unit
  dW gate_up    da^T (2F, S) @ xs (S, H), K-grouped         -> (E, 2F, H) 2 units
  d xs          da (S, 2F) @ w_gate_up per expert           -> (S, H)    2 units
"""
import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def timed(fn, reps: int = 10) -> float:
    """Median ms of reps calls, each between two events, after two warm-up calls."""
    for _ in range(2):
        fn()
    ts = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        ts.append(a.elapsed_time(b))
    return sorted(ts)[len(ts) // 2]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", default="2048,8192")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes (still needs a Hopper GPU)")
    args = ap.parse_args()
    if not torch.cuda.is_available() or not hasattr(torch, "_grouped_mm"):
        sys.exit("moe_grouped_gemm_probe: needs a CUDA GPU and torch._grouped_mm")
    from jamba_ext import ops
    dev, bf = torch.device("cuda"), torch.bfloat16
    E, K, H, F = (4, 2, 256, 512) if args.smoke else (16, 2, 4096, 14336)
    g = torch.Generator(device=dev).manual_seed(0)
    n = 2048 if args.smoke else 8192
    a, b = torch.randn(n, n, device=dev, dtype=bf, generator=g), torch.randn(n, n, device=dev, dtype=bf, generator=g)
    mm_tf = 2 * n ** 3 / timed(lambda: torch.mm(a, b)) / 1e9
    src = torch.empty(256 << 20, dtype=torch.uint8, device=dev)
    dst = torch.empty_like(src)
    copy_gbs = 2 * src.numel() / timed(lambda: dst.copy_(src)) / 1e6
    del a, b, src, dst
    print(f"commit {os.environ.get('JAMBA_COMMIT', 'unknown')}; E={E} top-{K} H={H} F={F} bf16; dense mm "
          f"{mm_tf:.0f} TFLOP/s ({n}^3), copy {copy_gbs:.0f} GB/s")
    wgu = torch.randn(E, 2 * F, H, device=dev, dtype=bf, generator=g) * 0.02
    wd = torch.randn(E, H, F, device=dev, dtype=bf, generator=g) * 0.02
    for T in [int(t) for t in args.tokens.split(",")]:
        logits = torch.randn(T, E, device=dev, generator=g)
        _, _, offsets, _ = ops.moe_route(logits, K)
        ends = offsets[1:].to(torch.int32)
        S = T * K
        rows = torch.diff(offsets).tolist()
        xs = torch.randn(S, H, device=dev, dtype=bf, generator=g)
        act = torch.randn(S, F, device=dev, dtype=bf, generator=g)
        dys = torch.randn(S, H, device=dev, dtype=bf, generator=g)
        da = torch.randn(S, 2 * F, device=dev, dtype=bf, generator=g)
        unit = 2 * S * H * F
        calls = [
            ("fwd gate_up", 2, 0, lambda: torch._grouped_mm(xs, wgu.transpose(1, 2), offs=ends)),
            ("fwd down", 1, 0, lambda: torch._grouped_mm(act, wd.transpose(1, 2), offs=ends)),
            ("dW down", 1, E * H * F * 2, lambda: torch._grouped_mm(dys.t(), act, offs=ends)),
            ("d act", 1, 0, lambda: torch._grouped_mm(dys, wd, offs=ends)),
            ("dW gate_up", 2, E * 2 * F * H * 2, lambda: torch._grouped_mm(da.t(), xs, offs=ends)),
            ("d xs", 2, 0, lambda: torch._grouped_mm(da, wgu, offs=ends)),
        ]
        print(f"\ntokens {T} (slots {S}; rows per expert {min(rows)}-{max(rows)}):")
        print(f"  {'call':12s} {'ms':>8s} {'TFLOP/s':>8s} {'% of mm':>8s} {'out GB':>7s} {'write floor ms':>15s}")
        total = 0.0
        for name, units, out_bytes, fn in calls:
            ms = timed(fn)
            total += ms
            tf = units * unit / ms / 1e9
            floor = f"{out_bytes / copy_gbs / 1e6:15.3f}" if out_bytes else f"{'-':>15s}"
            print(f"  {name:12s} {ms:8.3f} {tf:8.0f} {100 * tf / mm_tf:7.1f}% {out_bytes / 1e9:7.2f} {floor}")
        tf_all = 9 * unit / total / 1e9
        print(f"  {'all six':12s} {total:8.3f} {tf_all:8.0f} {100 * tf_all / mm_tf:7.1f}%"
              f"   (9 units; at the dense rate {9 * unit / mm_tf / 1e9:.3f} ms)")
        # the dense products of the same sizes, for scale: one (S, H) x (H, 2F) and one K = S weight gradient
        d1 = timed(lambda: torch.mm(xs, wgu[0].t()))
        d2 = timed(lambda: torch.mm(da[:, :F].t(), xs[:, :]))
        print(f"  dense same sizes: xs @ W^T (S x H x 2F) {d1:.3f} ms ({2 * unit / d1 / 1e9:.0f} TFLOP/s); "
              f"one (F, H) weight gradient over all S rows {d2:.3f} ms ({unit / d2 / 1e9:.0f} TFLOP/s)")
        del xs, act, dys, da


if __name__ == "__main__":
    main()
