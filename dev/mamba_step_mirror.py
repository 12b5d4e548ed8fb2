"""dev/mamba_step_mirror.py -- the index plan of csrc/cuda/mamba_step.cu's kernel, replayed on the CPU.

    python3 dev/mamba_step_mirror.py          # a few shapes, ~10 s

A line-by-line mirror of mamba_step_kernel's thread and block mapping in numpy (every thread's loads, the lane
groups its shuffles sum over, the partial-sum rows, the reduction's columns, the state update's lanes), in fp32 with
each rounding to T done as the kernel does it; compared with jamba_ext.reference.mamba_inner_step. It checks the
index plan (what each thread reads and writes, that every output is written once), not the compiled code: a GPU round
runs tests/test_mamba_step.py for that. Keep it in step with the kernel when the kernel changes.
"""
import math
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from jamba_ext import reference  # noqa: E402

CPB, THREADS, MAXNO, MAXR = 64, 256, 320, 256


def rnd(v, dtype):
    """round fp32 value(s) to T and back, as jamba_round<T>"""
    return torch.tensor(np.asarray(v, dtype=np.float32)).to(dtype).float().numpy()


def kernel(a, R, eps, dtype):
    x, z, cs, cw, cb = a["x"], a["z"], a["conv_state"].copy(), a["conv_weight"], a["conv_bias"]
    wx, nw, wdt, A, D, dtb, ssm = a["xproj_weight"], a["norm_weight"], a["dtproj_weight"], a["A"], a["D"], \
        a["dt_bias"], a["ssm_state"].copy()
    B, DI = x.shape
    S, K = cs.shape[2], cw.shape[1]
    NO, N = wx.shape[0], A.shape[1]
    VN = 16 // torch.tensor([], dtype=dtype).element_size()
    LPR, RPP = CPB // VN, THREADS // (CPB // VN)
    NPX, NWD, TPN = MAXNO // RPP, MAXR // VN // 4, N // 4
    nblk = math.ceil(DI / CPB)
    part = np.full((nblk, B, NO), np.nan, np.float32)
    written = np.zeros((nblk, B, NO), np.int32)
    out = np.full((B, DI), np.nan, np.float32)
    # phase 1 + 2 per block
    for blk in range(nblk):
        c0 = blk * CPB
        cw_ = min(CPB, DI - c0)
        s_xc = np.zeros((8, CPB), np.float32)
        for i in range(0, B * CPB, 1):               # conv update, pair i (threads stride the pairs)
            b, cl = divmod(i, CPB)
            c = c0 + cl
            if cl >= cw_:
                continue
            acc = np.float32(cb[c]) if cb is not None else np.float32(0)
            for j in range(K):
                hi = S + 1 - K + j
                v = x[b, c] if hi == S else cs[b, c, hi]
                acc = np.float32(acc + np.float32(cw[c, j]) * np.float32(v))
            s_xc[b, cl] = rnd(acc / (1 + math.exp(-acc)), dtype)
            cs[b, c, :] = np.concatenate([cs[b, c, 1:], [x[b, c]]]) if S > 0 else cs[b, c, :]
        # x_proj partials: thread t -> vector xv = t % LPR of row o = i * RPP + t // LPR
        sums = {}
        for i in range(NPX):
            if i * RPP >= NO:
                break
            for t in range(THREADS):
                xv, xr = t % LPR, t // LPR
                o = i * RPP + xr
                for b in range(B):
                    acc = np.float32(0)
                    if o < NO and xv * VN < cw_:
                        w = wx[o, c0 + xv * VN: c0 + xv * VN + VN]
                        acc = np.float32(np.dot(w.astype(np.float32), s_xc[b, xv * VN: xv * VN + VN]))
                    sums[(i, t // LPR, b)] = sums.get((i, t // LPR, b), np.float32(0)) + acc   # LPR-lane group
            for t in range(0, THREADS, LPR):             # lane xv == 0 of each group writes
                o = i * RPP + t // LPR
                if o < NO:
                    for b in range(B):
                        part[blk, b, o] = sums[(i, t // LPR, b)]
                        written[blk, b, o] += 1
    assert (written == 1).all(), "a partial sum is written twice or never"
    # phase 3: column j by warp (blk * 8 + warp) + m * nblk * 8
    xdbl = np.full(B * NO, np.nan, np.float32)
    seen = np.zeros(B * NO, np.int32)
    for blk in range(nblk):
        for warp in range(THREADS // 32):
            for j in range(blk * 8 + warp, B * NO, nblk * 8):
                b, o = divmod(j, NO)
                xdbl[j] = rnd(part[:, b, o].sum(dtype=np.float32), dtype)
                seen[j] += 1
    assert (seen == 1).all(), "a column reduced twice or never"
    xdbl = xdbl.reshape(B, NO)
    # phase 4 per block
    for blk in range(nblk):
        c0 = blk * CPB
        cw_ = min(CPB, DI - c0)
        s_n = np.zeros((8, MAXNO), np.float32)
        for b in range(B):
            for s0, s1 in ((0, R), (R, R + N), (R + N, NO)):
                v = xdbl[b, s0:s1]
                inv = 1 / math.sqrt(float(np.dot(v, v)) / (s1 - s0) + eps)
                s_n[b, s0:s1] = rnd(rnd(v * np.float32(inv), dtype) * nw[s0:s1].astype(np.float32), dtype)
        s_dl = np.zeros((8, CPB), np.float32)
        nvr = R // VN
        for t in range(THREADS):
            dcl, dq = t >> 2, t & 3
            for b in range(B):
                acc = np.float32(0)
                for i in range(NWD):
                    v = dq + 4 * i
                    if v < nvr and dcl < cw_:
                        acc += np.float32(np.dot(wdt[c0 + dcl, v * VN: v * VN + VN].astype(np.float32),
                                                 s_n[b, v * VN: v * VN + VN]))
                s_dl[b, dcl] = s_dl[b, dcl] + acc if dq else acc            # the 4-lane sum, lane 0 writes
            if dq == 3:
                for b in range(B):
                    s_dl[b, dcl] = rnd(s_dl[b, dcl], dtype)
        s_xc = np.zeros((8, CPB), np.float32)                               # phase 1's values again
        for b in range(B):
            for cl in range(cw_):
                c = c0 + cl
                acc = np.float32(cb[c]) if cb is not None else np.float32(0)
                h = np.concatenate([a["conv_state"][b, c], [x[b, c]]])
                for j in range(K):
                    acc = np.float32(acc + np.float32(cw[c, j]) * np.float32(h[S + 1 - K + j]))
                s_xc[b, cl] = rnd(acc / (1 + math.exp(-acc)), dtype)
        for t in range(THREADS):
            scl, sq = t // TPN, t % TPN
            if scl >= CPB:
                continue
            sc = c0 + scl
            if scl >= cw_:
                continue
            for b in range(B):
                xu = s_xc[b, scl]
                d = float(s_dl[b, scl] + dtb[sc])
                d = math.log1p(math.exp(d)) if d <= 20 else d
                hs = ssm[b, sc, 4 * sq: 4 * sq + 4]
                Bn, Cn = s_n[b, R + 4 * sq: R + 4 * sq + 4], s_n[b, R + N + 4 * sq: R + N + 4 * sq + 4]
                hs[:] = np.exp(d * A[sc, 4 * sq: 4 * sq + 4]) * hs + d * xu * Bn
                if sq == TPN - 1:                                          # the TPN-lane sum complete
                    y = sum(float(np.dot(ssm[b, sc, 4 * q: 4 * q + 4], s_n[b, R + N + 4 * q: R + N + 4 * q + 4]))
                            for q in range(TPN))
                    y = y + float(D[sc]) * xu
                    zz = float(z[b, sc])
                    y *= zz / (1 + math.exp(-zz))
                    out[b, sc] = rnd(y, dtype)
    assert not np.isnan(out).any(), "an output is never written"
    return out, cs, ssm


def main():
    for dtype in (torch.float32, torch.bfloat16):
        for (B, DI, R, N, K, S) in ((1, 200, 16, 16, 4, 4), (2, 136, 24, 8, 4, 4), (2, 72, 32, 4, 3, 2),
                                    (2, 64, 256, 16, 4, 4), (5, 136, 24, 8, 4, 4), (8, 72, 16, 16, 4, 4)):
            g = torch.Generator().manual_seed(B * 1000 + DI)
            rn = lambda *s, sc=1.0, sh=0.0: (torch.randn(*s, generator=g) * sc + sh).to(dtype)  # noqa: E731
            NO = R + 2 * N
            t = dict(x=rn(B, DI), z=rn(B, DI), conv_state=rn(B, DI, S), conv_weight=rn(DI, K, sc=0.5),
                     conv_bias=rn(DI, sc=0.3), xproj_weight=rn(NO, DI, sc=DI ** -0.5), norm_weight=rn(NO, sc=0.3, sh=1),
                     dtproj_weight=rn(DI, R, sc=R ** -0.5), A=-(torch.rand(DI, N, generator=g) * 3 + 0.2),
                     D=torch.randn(DI, generator=g), dt_bias=torch.randn(DI, generator=g) * 0.5 - 1,
                     ssm_state=torch.randn(B, DI, N, generator=g) * 0.5)
            a = {k: v.float().numpy() for k, v in t.items()}
            out, cs, ssm = kernel(a, R, 1e-6, dtype)
            ref = reference.mamba_inner_step(*(t[k].double() for k in ("x", "z", "conv_state", "conv_weight",
                                                                        "conv_bias", "xproj_weight", "norm_weight",
                                                                        "dtproj_weight", "A", "D", "dt_bias",
                                                                        "ssm_state")), R, 1e-6)
            err = np.linalg.norm(out - ref[0].numpy()) / np.linalg.norm(ref[0].numpy())
            serr = np.linalg.norm(ssm - ref[2].numpy()) / np.linalg.norm(ref[2].numpy())
            cok = np.array_equal(cs, ref[1].float().numpy())
            print(f"{str(dtype):15s} B={B} DI={DI} R={R} N={N} K={K} S={S}: out normwise {err:.2e}, "
                  f"state {serr:.2e}, conv_state equal {cok}", flush=True)
            assert err < (1e-5 if dtype == torch.float32 else 3e-2) and serr < 3e-2 and cok


if __name__ == "__main__":
    main()
