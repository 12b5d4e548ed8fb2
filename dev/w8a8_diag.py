import os, sys, torch
sys.path.insert(0, "tests")
from conftest import randn
from jamba_ext import ops, reference
import test_fp8 as tf
dev = torch.device("cuda")
torch.manual_seed(0)
for (T, H, F) in tf.W8A8_SHAPES:
    for E, K in [(1, 1), (8, 2)]:
        dt = torch.bfloat16
        x = randn(T, H, device=dev, dtype=dt)
        q_gu, s_gu, q_d, s_d = tf.fp8_experts(E, H, F, dev)
        w, ids, offsets, slots = tf.routed(T, E, K, dev)
        out = ops.moe_experts_fp8(x, w, ids, q_gu, s_gu, q_d, s_d, slots, offsets, act_fp8=True)
        ref8 = tf.ref_w8a8(x, w, ids, q_gu, s_gu, q_d, s_d)
        ref16 = tf.ref_fp8(x, w, ids, q_gu, s_gu, q_d, s_d).double()
        w16 = ops.moe_experts_fp8(x, w, ids, q_gu, s_gu, q_d, s_d, slots, offsets).double()
        sc = ref8.abs().max().item()
        e8 = (out.double() - ref8).abs(); gap = (ref8 - ref16).abs()
        print(f"T{T} H{H} F{F} E{E}: scale {sc:.3g} | out-ref8 max {e8.max().item()/sc:.4f} mean {e8.mean().item()/sc:.5f} | "
              f"ref8-ref16 mean {gap.mean().item()/sc:.5f} | out-ref16 mean {(out.double()-ref16).abs().mean().item()/sc:.5f} | "
              f"w8a16op-ref16 mean {(w16-ref16).abs().mean().item()/sc:.5f} | nan {torch.isnan(out.float()).sum().item()}", flush=True)
        if T == 300 and E == 1:  # per-row view: which rows are bad
            r = e8.max(1).values / sc
            bad = (r > 0.015).nonzero().flatten()
            print("  bad rows", bad.numel(), bad[:20].tolist(), "offsets", offsets.tolist()[:3], flush=True)
