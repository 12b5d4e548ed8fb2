"""Runs every CUDA op of jamba_ext once on small, odd shapes, for compute-sanitizer (memcheck, racecheck).

    compute-sanitizer --tool memcheck python3 benchmarks/sanitize_cases.py [sample_rows | swap | tiles | rest]
(sample_rows: that op's cases only; swap: the MoE swap-AB engine's kernels only (Hopper); tiles: the MoE 128 x 256
tiles' persistent kernel only (Hopper); rest: every other op's,
without sample_rows' cluster kernels, which take racecheck ~110 s on an H200.) Exits non-zero if an op raises; the
sanitizer reports memory errors and races itself.
"""

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402,F401  (puts the checkout's jamba_ext first when it is built, as in the benchmarks)
import jamba_ext  # noqa: E402
from jamba_ext import ops  # noqa: E402


def sample_rows_cases(dev, rn):
    """sample_rows on the shapes, settings and paths of both of its kernels"""
    # sample_rows: greedy and sampled rows with every filter and both penalties, a row stride, a 1-column row
    P = torch.tensor([[0.0, 0, 1.0, 0.0, 1.2, 0.5, 0.1], [0.8, 5, 0.9, 0.05, 1.0, 0.0, 0.0],
                      [1.0, 0, 0.5, 0.0, 1.1, 0.3, 0.2]], device=dev)
    for logits in (rn(3, 1001), rn(3, 1040)[:, 8:1032], rn(3, 1, dt=torch.float32)):
        V = logits.shape[1]
        ops.sample_rows(logits, P, torch.rand(3, V, device=dev) < 0.1,
                        torch.randint(0, 3, (3, V), device=dev, dtype=torch.int32), seed=1, offset=2)
        ops.sample_rows(logits, P)
    # sample_rows' cluster kernel (sm_90+; elsewhere the switch falls back to the one-block kernel): the default from
    # V = 4096 (4099: the fifth CTA owns 3 columns, the last three none), then forced on the shapes above (V = 1: seven
    # empty slices) and on rows with NaNs (sr_cluster_argmax's exact path, its extra cluster barrier)
    nanrows = rn(3, 2100, dt=torch.float32)
    nanrows[0, 0] = nanrows[1, 1] = nanrows[1, 1500] = nanrows[2, 2099] = float("nan")
    ops.sample_rows(rn(3, 4099), P, torch.rand(3, 4099, device=dev) < 0.1,
                    torch.randint(0, 3, (3, 4099), device=dev, dtype=torch.int32), seed=1, offset=2)
    rng = torch.tensor([[5, 0], [2 ** 63 - 1, 7], [0, 2 ** 40]], device=dev)     # (each row's own key and counter)
    ops.sample_rows(rn(3, 4099), P, rng=rng)
    os.environ["JAMBA_EXT_SAMPLE_ROWS_CLUSTER"] = "0"
    ops.sample_rows(rn(3, 1001), P, rng=rng)
    for size in ("1", "4", "2"):                   # (each cluster size forced: 8, 4, 2)
        os.environ["JAMBA_EXT_SAMPLE_ROWS_CLUSTER"] = size
        for logits in (rn(3, 1001), rn(3, 1040)[:, 8:1032], rn(3, 1, dt=torch.float32), nanrows):
            ops.sample_rows(logits, P, seed=1, offset=2)
    del os.environ["JAMBA_EXT_SAMPLE_ROWS_CLUSTER"]


def swap_cases(dev, rn):
    """moe_experts on the swap-AB engine (JAMBA_EXT_MOE_SWAP=1): moe_swap_kernel, down's epilogue with its rows and
    weights preloaded by the producer warpgroup (gate_up: 32 W blocks x 8 chunks; Kd 136 and 2048: KT 3 and 32);
    then with A loads of a chunk / up to 2 chunks (JAMBA_EXT_MOE_SWAP_ABOX=32, 64); experts of 3 chunks"""
    T, H, F, E = 600, 136, 2048, 8
    wr, ids, offs, slots = ops.moe_route(rn(T, E), 2)
    x, wgu, wd = rn(T, H), rn(E, 2 * F, H), rn(E, H, F)
    os.environ["JAMBA_EXT_MOE_SWAP"] = "1"
    ops.moe_experts(x, wr, ids, wgu, wd, slots, offs, "wgmma")
    for abox in ("32", "64"):   # A loads of a chunk / up to 2 chunks (the default: up to 4)
        os.environ["JAMBA_EXT_MOE_SWAP_ABOX"] = abox
        ops.moe_experts(x, wr, ids, wgu, wd, slots, offs, "wgmma")
    del os.environ["JAMBA_EXT_MOE_SWAP_ABOX"]
    wr, ids, offs, slots = ops.moe_route(rn(T + 300, 2), 2)   # experts of 3 chunks (~900 rows each)
    ops.moe_experts(rn(T + 300, H), wr, ids, rn(2, 2 * F, H), rn(2, H, F), slots, offs, "wgmma")
    del os.environ["JAMBA_EXT_MOE_SWAP"]


def tiles_cases(dev, rn):
    """moe_experts on the persistent wgmma kernel (the 128 x 256 tiles, JAMBA_EXT_MOE_SWAP=0): F 2048, and F 192
    (the last expert's last tile's W boxes partly past the tensor: TMA's zero fill)"""
    os.environ["JAMBA_EXT_MOE_SWAP"] = "0"
    for T, H, F, E in ((600, 136, 2048, 4), (900, 200, 192, 4)):
        wr, ids, offs, slots = ops.moe_route(rn(T, E), 2)
        ops.moe_experts(rn(T, H), wr, ids, rn(E, 2 * F, H), rn(E, H, F), slots, offs, "wgmma")
    del os.environ["JAMBA_EXT_MOE_SWAP"]


def main():
    if not torch.cuda.is_available() or not jamba_ext.has_cuda_kernels():
        sys.exit("sanitize_cases: needs a GPU and jamba_ext built with its CUDA kernels (JAMBA_EXT_CUDA=1)")
    dev = torch.device("cuda")
    g = torch.Generator(device=dev).manual_seed(0)
    rn = lambda *s, dt=torch.bfloat16: torch.randn(*s, generator=g, device=dev).to(dt)
    # one family only: (its cases, Hopper only)
    families = {"sample_rows": (sample_rows_cases, False), "swap": (swap_cases, True), "tiles": (tiles_cases, True)}
    if len(sys.argv) == 2 and sys.argv[1] in families:
        cases, hopper = families[sys.argv[1]]
        if not hopper or torch.cuda.get_device_capability(dev)[0] == 9:
            cases(dev, rn)
        torch.cuda.synchronize()
        print(f"sanitize_cases: {sys.argv[1]} ran")
        return
    B, DI, L, N, K = 2, 72, 37, 16, 4
    x = rn(3, 130)
    ops.rms_norm(x, rn(130))
    ops.add_rms_norm(x, rn(3, 130), rn(130))
    ops.rms_norm_segments(rn(5, 300)[:, 6:294], rn(288), [256, 272])   # Mamba's dt / B / C norms, strided rows
    ops.rms_norm_segments(rn(3, 37), rn(37, dt=torch.float32), [5, 6, 30])
    ops.rms_norm_bwd(rn(5, 300)[:, 6:294], rn(288), rn(5, 288), [256, 272])         # dt / B / C segments, strided
    ops.rms_norm_bwd(rn(70, 130, dt=torch.float32), rn(130, dt=torch.float32), rn(70, 130, dt=torch.float32), [])
    ops.rms_norm_bwd(rn(40, 264), rn(264, dt=torch.float32), rn(40, 264), [256])     # the 16-byte path
    xc = rn(B, DI, L)
    w, b = rn(DI, K, dt=torch.float32), rn(DI, dt=torch.float32)
    out, st = ops.causal_conv1d(xc, w, b, None, True, K)
    ops.causal_conv1d(xc, w, b, rn(B, DI, K - 1), True, -1)
    ops.causal_conv1d(rn(B, DI, 2056), w, b, rn(B, DI, K - 1), True, -1)  # 16-byte rows, f32 taps / bias
    ops.causal_conv1d(rn(B, DI, 2056), rn(DI, K), rn(DI), None, True, K)  # 16-byte rows, bf16 taps / bias
    ops.causal_conv1d_bwd(rn(B, DI + 3, L)[:, 2:2 + DI], w, b, rn(B, DI, K + 1), rn(B, DI, L), True)  # strided x
    ops.causal_conv1d_bwd(rn(B, DI, 2100), rn(DI, 3), None, None, rn(B, DI, 2100), False)  # two chunks, width 3
    ops.causal_conv1d_bwd(rn(B, DI, 2056), w, b, rn(B, DI, K - 1), rn(B, DI, 2056), True)  # 16-byte rows
    ops.causal_conv1d_bwd(rn(B, DI, 2056, dt=torch.float32), w, b, None, rn(B, DI, 2056, dt=torch.float32), True)
    ops.causal_conv1d_update(rn(B, DI), st, w, b, True)
    ops.causal_conv1d_update(rn(B, DI), st, rn(DI, K), rn(DI), True)
    ops.causal_conv1d_update(rn(129, DI), rn(129, DI, K), w, b, True)  # two batch rows per thread, the last alone
    ops.causal_conv1d_update(rn(129, DI), rn(129, DI, K), rn(DI, K), rn(DI), True)
    ops.causal_conv1d_update(rn(64, 8200), rn(64, 8200, K), rn(8200, K), rn(8200), True)  # 256-thread blocks, partial
    os.environ["JAMBA_EXT_CONV_UPDATE_P16"] = "0"  # 4 channels per thread (p16, one 16-byte piece, is the default)
    ops.causal_conv1d_update(rn(33, DI), rn(33, DI, K), rn(DI, K), rn(DI), True)
    ops.causal_conv1d_update(rn(3, DI), rn(3, DI, K), w, b, True)
    os.environ["JAMBA_EXT_CONV_UPDATE_NB"] = "2"  # two batch rows per thread below batch 128 too
    ops.causal_conv1d_update(rn(33, DI), rn(33, DI, K), rn(DI, K), rn(DI), True)
    del os.environ["JAMBA_EXT_CONV_UPDATE_P16"], os.environ["JAMBA_EXT_CONV_UPDATE_NB"]
    A = -torch.rand(DI, N, device=dev) - 0.1
    u, d, z = rn(B, DI, L), rn(B, DI, L), rn(B, DI, L)
    Bm, Cm = rn(B, N, L), rn(B, N, L)
    D, db = rn(DI, dt=torch.float32), rn(DI, dt=torch.float32)
    y, h = ops.selective_scan(u, d, A, Bm, Cm, D, z, db, True, None)
    ops.selective_scan(u, d, A, Bm, Cm, D, z, db, True, h)
    L2 = 136  # 16-byte aligned rows (cp.async path), 5 chunks of 32 (the ring of 3 stages wraps), tail of 8
    u2, d2, z2 = rn(B, DI, L2), rn(B, DI, L2), rn(B, DI, L2)
    Bt, Ct = rn(B, L2, N).transpose(1, 2), rn(B, L2, N).transpose(1, 2)  # the model's n-fast B/C
    ops.selective_scan(u2, d2, A, Bt, Ct, D, z2, db, True, h)
    ops.selective_scan(u2, d2, A, rn(B, N, L2), rn(B, N, L2), D, None, db, True, None)
    c64 = slice(0, 64)  # whole blocks of channels: the converter's fast path (no range checks)
    ops.selective_scan(u2[:, c64].contiguous(), d2[:, c64].contiguous(), A[c64].contiguous(), Bt, Ct,
                       D[c64].contiguous(), z2[:, c64].contiguous(), db[c64].contiguous(), True, None)
    # the bf16 g4 kernel (d_inner % 32 == 0, L % 8 == 0): B/C t-fast, initial state, a 24-step tail chunk
    ops.selective_scan(u2[:, c64, :120].contiguous(), d2[:, c64, :120].contiguous(), A[c64].contiguous(),
                       rn(B, N, 120), rn(B, N, 120), D[c64].contiguous(), z2[:, c64, :120].contiguous(),
                       db[c64].contiguous(), True, h[:, c64].contiguous())
    # the g4 kernel over 8 chunks (7 full, then an 8-step tail; n-fast B/C): its full-chunk loop body runs
    # (chunks 1 .. 3), then the checked one
    L3 = 232
    ops.selective_scan(rn(B, 64, L3), rn(B, 64, L3), A[c64].contiguous(), rn(B, L3, N).transpose(1, 2),
                       rn(B, L3, N).transpose(1, 2), D[c64].contiguous(), rn(B, 64, L3), db[c64].contiguous(), True,
                       None)
    ops.selective_state_update(h, rn(B, DI), rn(B, DI), A, rn(B, N), rn(B, N), D, rn(B, DI), db, True)
    # selective_scan_bwd: chunk tail (L 37 = 2 x 16 + 5), channels past the last block's end, with and without the
    # optional tensors; d_state 5 (lanes past N) and 32
    ops.selective_scan_bwd(u[:, :, :37].contiguous(), d[:, :, :37].contiguous(), A, Bm[:, :, :37], Cm[:, :, :37], D,
                           z[:, :, :37].contiguous(), db, True, h, rn(B, DI, 37), rn(B, DI, N, dt=torch.float32))
    ops.selective_scan_bwd(u2, d2, A, Bt, Ct, None, None, None, False, None, rn(B, DI, L2), None)
    for n_state in (5, 32):
        A5 = -torch.rand(DI, n_state, device=dev) - 0.1
        ops.selective_scan_bwd(u, d, A5, rn(B, n_state, L), rn(B, n_state, L), D, z, db, True, None, rn(B, DI, L),
                               None)
    for M in (1, 3, 8, 11):                                    # gemv: each x-row group size, two groups at 11
        ops.gemv(rn(M, 2056), rn(37, 2056), rn(37))            # vector kernel, a partial 256-element chunk
    ops.gemv(rn(2, 8192), rn(288, 8192))                       # 8 K-slices per row pair
    ops.gemv(rn(2, 256), rn(100, 256), rn(100, dt=torch.float32))  # 1 K-slice, 16 rows per block, f32 bias
    ops.gemv(rn(3, 13), rn(9, 13))                             # element kernel
    ops.gemv(rn(5, 1032), rn(520, 1032), rn(520))              # ring kernel: partial row tile and stage, K slices
    ops.gemv(rn(1, 1032), rn(520, 1032))                       # ... at 1 row
    ops.gemv(rn(6, 1032), rn(264, 1032))                       # ... N 256-511, from 5 rows
    os.environ["JAMBA_EXT_GEMV_MMA"] = "ring"                  # the ring kernel at 1 row and narrow
    ops.gemv(rn(1, 1032), rn(40, 1032), rn(40))
    ops.gemv(rn(3, 1032), rn(40, 1032))
    os.environ["JAMBA_EXT_GEMV_MMA"] = "0"                     # 2-8 rows on the CUDA-core kernel
    ops.gemv(rn(2, 8192), rn(1024, 8192))
    os.environ.pop("JAMBA_EXT_GEMV_MMA")
    for Bm, DIm, Rm, Nm in ((1, 200, 16, 16), (2, 136, 24, 8)):  # mamba_inner_step: the fused kernel (4 / 3 blocks,
        NOm = Rm + 2 * Nm                                             # partial last ones), grid barriers, twice each
        work = ops.mamba_inner_step_workspace(DIm, Bm, NOm, dev)
        cs, ss = rn(Bm, DIm, 4), torch.randn(Bm, DIm, Nm, generator=g, device=dev)
        xz = rn(Bm, 2 * DIm)
        Am = -torch.rand(DIm, Nm, generator=g, device=dev) - 0.1
        for _ in range(2):
            ops.mamba_inner_step(xz[:, :DIm], xz[:, DIm:], cs, rn(DIm, 1, 4), rn(DIm), rn(NOm, DIm), rn(NOm),
                                 rn(DIm, Rm), Am, torch.randn(DIm, device=dev), torch.randn(DIm, device=dev), ss, Rm,
                                 1e-6, work)
    mk = torch.rand(2, 300, generator=g, device=dev) > 0.3
    for mma in ("1", "0"):  # the tensor-core kernel (bf16 / f16, D 64 / 128), then the CUDA-core one
        os.environ["JAMBA_EXT_ATTN_MMA"] = mma
        ops.decode_attention(rn(2, 3, 4, 128), rn(2, 3, 300, 128), rn(2, 3, 300, 128), mk)  # 4 rows, masked
        ops.decode_attention(rn(1, 2, 5, 64), rn(1, 2, 7, 64), rn(1, 2, 7, 64))             # 8-row form, empty splits
    del os.environ["JAMBA_EXT_ATTN_MMA"]
    ops.decode_attention(rn(1, 1, 2, 256, dt=torch.float32), rn(1, 1, 40, 256, dt=torch.float32),
                         rn(1, 1, 40, 256, dt=torch.float32))
    moe = getattr(jamba_ext, "moe", None)
    if moe is not None and hasattr(moe, "sparse_moe_forward"):
        T, H, F, E = 13, 72, 88, 4
        moe.sparse_moe_forward(rn(T, H), rn(E, H), rn(E, 2 * F, H), rn(E, H, F), 2)  # small route+permute kernel
        ops.moe_route(rn(40, E), 2)                                                  # route, then permute
        ops.moe_permute(torch.randint(-1, E + 1, (3000, 2), device="cuda", dtype=torch.int32), E)  # 32 warps busy
        ops.silu_mul(rn(7, 26))                                # element path
        ops.silu_mul(rn(9, 144)[:, 8:136])                     # 16-byte path, row stride 144
        ops.silu_mul_bwd(rn(7, 26), rn(7, 13))                 # element path
        ops.silu_mul_bwd(rn(9, 144)[:, 8:136], rn(9, 80)[:, 8:72])  # 16-byte path, row strides 144 / 80
        wr, ids, _, slots = ops.moe_route(rn(T, E), 2)
        ops.moe_combine(rn(2 * T, 13), wr, ids, slots, E)      # element path
        ops.moe_combine(rn(2 * T, H), wr, ids, slots, E)       # 16-byte path
        ops.moe_grad_rows(rn(T, 13), wr, slots, rn(2 * T, 13))   # element path
        ops.moe_grad_rows(rn(T, H + 8)[:, 8:], wr, slots, rn(2 * T, H))   # 16-byte path, row stride H + 8
        ops.moe_grad_rows(rn(T, H), wr, slots)                  # without y
        if hasattr(torch, "_grouped_mm"):
            ops.moe_experts(rn(T, H), wr, ids, rn(E, 2 * F, H), rn(E, H, F), impl="grouped_mm")
    if hasattr(torch, "float8_e4m3fn"):  # fp8 expert weights: dequant (16-byte and element paths, skipped groups)
        T, H, F, E = 3, 64, 48, 4
        qgu, sgu = ops.quantize_fp8(rn(E, 2 * F, H, dt=torch.float32))
        qd, sd = ops.quantize_fp8(rn(E, H, F, dt=torch.float32))
        ops.dequant_fp8(qgu, sgu, torch.bfloat16, torch.tensor([0, 2, 2, 5, 6], dtype=torch.int32, device=dev))
        q7, s7 = ops.quantize_fp8(rn(5, 37, dt=torch.float32))
        ops.dequant_fp8(q7, s7, torch.float32)
        # the GEMVs (1-6 tokens), the ring kernels (4 n-tiles a pass at 32-70 tokens over E 4; 70 tokens on one
        # expert with top-1: 3 passes; 1 and 2 n-tiles at 3 and 12 tokens below; 513 tokens: 33 passes), then the
        # wgmma kernel (Hopper) and the dequantizing path, each forced
        for xdt in (torch.bfloat16, torch.float16):
            os.environ["JAMBA_EXT_FP8_WGMMA"] = "0"  # the ring (on Hopper the C op picks wgmma from 40 tokens here)
            for T, K in ((1, 2), (32, 2), (40, 2), (70, 1), (ops.FP8_RING_MAX_TOKENS + 1, 2)):
                lg = rn(T, E)
                if K == 1:
                    lg[:, 0] += 100.0  # every token on expert 0
                wr, ids, offs, slots = ops.moe_route(lg, K)
                ops.moe_experts_fp8(rn(T, H, dt=xdt), wr, ids, qgu, sgu, qd, sd, slots, offs)
            old = ops.FP8_CUDA_GEMV_MAX_TOKENS
            ops.FP8_CUDA_GEMV_MAX_TOKENS = 0  # the ring at 1-6 tokens too
            for T in (3, 12):
                wr, ids, offs, slots = ops.moe_route(rn(T, E), 2)
                ops.moe_experts_fp8(rn(T, H, dt=xdt), wr, ids, qgu, sgu, qd, sd, slots, offs)
            ops.FP8_CUDA_GEMV_MAX_TOKENS = old
            del os.environ["JAMBA_EXT_FP8_WGMMA"]
            if torch.cuda.get_device_capability(dev)[0] == 9:  # the wgmma kernel (Hopper): 3 tokens, 150 on one expert
                os.environ["JAMBA_EXT_FP8_WGMMA"] = "1"
                for T, K in ((3, 2), (150, 1)):
                    lg = rn(T, E)
                    if K == 1:
                        lg[:, 0] += 100.0
                    wr, ids, offs, slots = ops.moe_route(lg, K)
                    ops.moe_experts_fp8(rn(T, H, dt=xdt), wr, ids, qgu, sgu, qd, sd, slots, offs)
                    # fp8 activations (W8A8: the row quantization and the persistent kernel's e4m3 instances), with
                    # and without half tiles for the 150 rows' 22-row tail
                    for half in ("0", "1"):
                        os.environ["JAMBA_EXT_WGMMA_HALF"] = half
                        ops.moe_experts_fp8(rn(T, H, dt=xdt), wr, ids, qgu, sgu, qd, sd, slots, offs, act_fp8=True)
                    del os.environ["JAMBA_EXT_WGMMA_HALF"]
                del os.environ["JAMBA_EXT_FP8_WGMMA"]
            old = ops.FP8_SM90_MAX_TOKENS
            ops.FP8_SM90_MAX_TOKENS = 0  # the dequantizing path above FP8_RING_MAX_TOKENS on Hopper too
            wr, ids, offs, slots = ops.moe_route(rn(ops.FP8_RING_MAX_TOKENS + 1, E), 2)
            ops.moe_experts_fp8(rn(ops.FP8_RING_MAX_TOKENS + 1, H, dt=xdt), wr, ids, qgu, sgu, qd, sd, slots, offs)
            ops.FP8_SM90_MAX_TOKENS = old
    for logits in (rn(5, 1001), rn(9, 1040)[:, 8:1032], rn(3, 40, dt=torch.float32)):  # element, 16-byte, f32 paths
        t = torch.randint(0, logits.shape[1], (logits.shape[0],), device=dev)
        t[1] = -100
        loss, lse = ops.cross_entropy(logits, t)
        ops.cross_entropy_bwd(logits, t, lse, torch.rand_like(lse))
    if sys.argv[1:] != ["rest"]:
        sample_rows_cases(dev, rn)
    torch.cuda.synchronize()
    print("sanitize_cases: all ops" + (" but sample_rows" if sys.argv[1:] == ["rest"] else "") + " ran")


if __name__ == "__main__":
    main()
