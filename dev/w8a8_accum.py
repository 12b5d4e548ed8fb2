"""How much do the e4m3 tensor cores' sums lose over Jamba's K (4096 for gate_up, 14336 for down)? DeepSeek-V3 reports
that Hopper's fp8 MMA keeps ~14 bits in its accumulation (~2% worst relative error at K 4096 without promoting partial
sums to fp32). (1) torch._scaled_mm with use_fast_accum True (no promotion, as our W8A8 kernel) and False (promoted)
on the same e4m3 operands against their exact fp64 product; (2) our W8A8 op at Jamba sizes against its fp64 oracle
(reference.moe_experts_fp8_w8a8), per row: error rms / row rms (median and 99th percentile over rows), next to the
same for the weight-only fp8 op (fp32 sums of bf16 products) against its oracle."""
import sys
import torch
from jamba_ext import ops, reference

dev = torch.device("cuda")
g = torch.Generator(device=dev).manual_seed(0)


def rel_rows(a, r):
    """per row: rms(a - r) / rms(r); (median, p99, max) over rows"""
    e = (a.double() - r).pow(2).mean(-1).sqrt() / r.pow(2).mean(-1).sqrt()
    return e.median().item(), e.quantile(0.99).item(), e.max().item()


print("(1) torch._scaled_mm, M 256 x N 4096, e4m3 operands from N(0,1) rows (per-row scales 1), out fp32")
for K in (512, 4096, 14336):
    a = (torch.randn(256, K, device=dev, generator=g) * 100).clamp(-448, 448).to(torch.float8_e4m3fn)
    b = (torch.randn(4096, K, device=dev, generator=g) * 100).clamp(-448, 448).to(torch.float8_e4m3fn)
    exact = a.double() @ b.double().t()
    one = torch.ones((), device=dev)
    row = []
    for fast in (True, False):
        try:
            y = torch._scaled_mm(a, b.t(), scale_a=one, scale_b=one, out_dtype=torch.float32, use_fast_accum=fast)
            row.append(f"fast_accum={fast}: median {rel_rows(y, exact)[0]:.2e} p99 {rel_rows(y, exact)[1]:.2e} "
                       f"max {rel_rows(y, exact)[2]:.2e}")
        except Exception as ex:  # noqa: BLE001
            row.append(f"fast_accum={fast}: {type(ex).__name__} {str(ex)[:80]}")
    f32 = (a.float() @ b.float().t())
    print(f"  K {K}: " + " | ".join(row) + f" | fp32 matmul median {rel_rows(f32, exact)[0]:.2e}", flush=True)

print("(2) the MoE op at Jamba sizes (H 4096, F 14336), 2 experts, top-2 (every token on both), bf16 x")
H, F, E = 4096, 14336, 2
for T in (64, 256):
    x = torch.randn(T, H, device=dev, generator=g).to(torch.bfloat16)
    q_gu, s_gu = ops.quantize_fp8((torch.randn(E, 2 * F, H, device=dev, generator=g) * H ** -0.5).to(torch.bfloat16))
    q_d, s_d = ops.quantize_fp8((torch.randn(E, H, F, device=dev, generator=g) * F ** -0.5).to(torch.bfloat16))
    w, ids, offs, slots = ops.moe_route(torch.randn(T, E, device=dev, generator=g), 2)
    a8 = ops.moe_experts_fp8(x, w, ids, q_gu, s_gu, q_d, s_d, slots, offs, act_fp8=True)
    a16 = ops.moe_experts_fp8(x, w, ids, q_gu, s_gu, q_d, s_d, slots, offs)
    r8 = reference.moe_experts_fp8_w8a8(x, w, ids, q_gu, s_gu, q_d, s_d)
    r16 = reference.moe_experts_fp8(x, w, ids, q_gu, s_gu, q_d, s_d).double()
    m8, m16 = rel_rows(a8, r8), rel_rows(a16, r16)
    print(f"  T {T}: W8A8 op vs its oracle median {m8[0]:.2e} p99 {m8[1]:.2e} max {m8[2]:.2e} | weight-only op vs its "
          f"oracle median {m16[0]:.2e} p99 {m16[1]:.2e} | W8A8 oracle vs weight-only oracle median "
          f"{rel_rows(r8, r16)[0]:.2e} | W8A8 op vs weight-only oracle median {rel_rows(a8, r16)[0]:.2e}", flush=True)
