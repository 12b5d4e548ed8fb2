/* selective_scan_bwd.cu -- gradients of the Mamba-1 selective scan on CUDA (training).
 *
 * Exports: jamba_selective_scan_bwd_cuda (checks and math: csrc/cpu/selective_scan_bwd.c, csrc/jamba.h).
 * Shapes and layouts (letters of jamba.h): u, delta, z, dout (B, DI, L), unit stride along L; A (DI, N) f32;
 * Bm, Cm (B, N, L) any strides, f32 or u's dtype; D, delta_bias (DI,) f32; initial_state, dlast_state (B, DI, N)
 * f32, unit stride along N. Outputs contiguous: du, ddelta, dz (B, DI, L) u's dtype; dBm, dCm (B, N, L), dA (DI, N),
 * dD, ddelta_bias (DI,), dinitial_state (B, DI, N) f32. N <= 32.
 *
 * scan_bwd_kernel<T>: time-parallel within a warp, as mamba_ssm's backward: a warp takes one channel at a time, lane
 * l owns the SB_IT = 8 consecutive steps t0 + 8l .. of a chunk of SB_TC = 256 steps, and the N states are a loop.
 * Block x = b * P + p (256 threads, 8 warps) covers the SB_CPB = 32 channels p * 32 .. of batch row b, warp w taking
 * channels w, w + 8, w + 16, w + 24 (the rounds) of every chunk. Per (channel, state n, chunk) a lane folds its
 * steps' affine maps h -> exp(dt A) h + dt B u into one (P, H), and a warp scan over the lanes (shuffles) gives
 * each lane its incoming state. The kernel
 *   1. walks the chunks forward and stores the state at each chunk start (ckpt, workspace (B, DI, NC, N)); the warp
 *      combines the lanes' maps in lane order (butterfly, so every lane has the chunk's map);
 *   2. walks them in reverse: per state, the forward scan gives h at every step, then the same for the gradient
 *      g' (dL/dh[t] carried into step t - 1: g' = exp(dt A) (g'_next + dy C)) from the chunk's end, carried from the
 *      next chunk; the sums over n (y0, du, ddt) accumulate in registers; each warp's dB / dC of a state go through
 *      shared memory (xch: two buffers taken in turn, state step by state step) and are added over the block's 8
 *      warps in warp order, over the rounds in round order, into the block's per-chunk sums (acc), stored as the
 *      block's partials (workspace (2, B, P, N, L)); per-channel dD, ddelta_bias, dA partials in shared memory;
 *   3. stores dinitial_state (the carried g' at t = 0) and the per-(b, c) dA, dD, ddelta_bias partials.
 * Padding steps (t >= L) take dt = u = dy = 0: identity maps, no contribution. jamba_cuda_sum_mid (sum_mid.cu) then
 * sums the partials over blocks (dB, dC) and over the batch (dA, dD, ddelta_bias) in a fixed order: bit-identical
 * results run to run. Workspace: jamba_selective_scan_bwd_ws_elems (csrc/cpu/selective_scan_bwd.c).
 * Session 30's kernel (a thread per (channel, state), serial over time, 16 lanes per channel with shuffled sums over n:
 * 1.98 ms at batch 1, seqlen 2048, d_inner 8192, against 0.94 ms for this one) is in git history (b9cb54b).
 */
#include <string.h>

#include "common.cuh"

#define SB_NW 8
#define SB_THREADS (SB_NW * 32)
#define SB_IT 8
#define SB_TC JAMBA_SCAN_BWD_CHUNK /* = 32 * SB_IT */
#define SB_CPB JAMBA_SCAN_BWD_CPB
#define SB_ROUNDS (SB_CPB / SB_NW)
static_assert(SB_TC == 32 * SB_IT, "chunk = 32 lanes x SB_IT steps");
static_assert(SB_CPB % SB_NW == 0, "whole rounds");

struct sb_args {
    const void *u, *delta, *z, *dout, *Bm, *Cm;
    const float *A, *D, *dtb, *h0, *dlast;
    void *du, *ddelta, *dz;
    float *dinit, *ckpt, *part, *pA, *pD, *pdb;
    int64_t B, DI, L, N, P, NC;
    int64_t su0, su1, sd0, sd1, sz0, sz1, so0, so1;
    int64_t sB0, sB1, sB2, sC0, sC1, sC2, sA0, sA1, sD, sdtb, si0, si1, sl0, sl1;
    int bdt, cdt, softplus;
    int vu, vd, vz, vo, vout; /* 16-byte access allowed on the rows of u, delta, z, dout, and the outputs */
};

/* float4 piece q of a chunk row in shared memory: swizzled so that the lanes' two pieces (2l, 2l + 1) and the
 * float2 reads of the cross-warp sum are free of bank conflicts */
__device__ __forceinline__ int sb_swz(int q) { return q ^ ((q >> 3) & 1); }
__device__ __forceinline__ int sb_pos(int tl) { return (sb_swz(tl >> 2) << 2) | (tl & 3); }
__device__ __forceinline__ void sb_ld_row(const float *row, int lane, float *v) {
    const float4 x = *(const float4 *)(row + 4 * sb_swz(2 * lane));
    const float4 y = *(const float4 *)(row + 4 * sb_swz(2 * lane + 1));
    v[0] = x.x, v[1] = x.y, v[2] = x.z, v[3] = x.w, v[4] = y.x, v[5] = y.y, v[6] = y.z, v[7] = y.w;
}
__device__ __forceinline__ void sb_st_row(float *row, int lane, const float *v) {
    *(float4 *)(row + 4 * sb_swz(2 * lane)) = make_float4(v[0], v[1], v[2], v[3]);
    *(float4 *)(row + 4 * sb_swz(2 * lane + 1)) = make_float4(v[4], v[5], v[6], v[7]);
}
/* SB_IT consecutive elements of a row from step t (a multiple of SB_IT), zero from L on; vec: 16-byte loads allowed */
template <typename T> __device__ __forceinline__ void sb_ld8(const T *row, int64_t t, int64_t L, bool vec, float *v) {
    constexpr int VN = 16 / (int)sizeof(T);
    if (vec && t + SB_IT <= L) {
#pragma unroll
        for (int j = 0; j < SB_IT / VN; j++) jamba_w16<T>::ld(*(const uint4 *)(row + t + j * VN), v + j * VN);
    } else {
#pragma unroll
        for (int i = 0; i < SB_IT; i++) v[i] = t + i < L ? jamba_ld<T>(row[t + i]) : 0.f;
    }
}
template <typename T> __device__ __forceinline__ void sb_st8(T *row, int64_t t, int64_t L, bool vec, const float *v) {
    constexpr int VN = 16 / (int)sizeof(T);
    if (vec && t + SB_IT <= L) {
#pragma unroll
        for (int j = 0; j < SB_IT / VN; j++) *(uint4 *)(row + t + j * VN) = jamba_w16<T>::st(v + j * VN);
    } else {
#pragma unroll
        for (int i = 0; i < SB_IT; i++)
            if (t + i < L) row[t + i] = jamba_st<T>(v[i]);
    }
}

__device__ __forceinline__ float sb_dt(float x, int softplus) { return softplus ? jamba_cu_softplus(x) : x; }
__device__ __forceinline__ float sb_sigmoid(float x) { return __fdividef(1.f, 1.f + __expf(-x)); }

/* dt (after bias and softplus; 0 past L) and u of a lane's steps */
template <typename T>
__device__ __forceinline__ void sb_load_dt_u(const sb_args &a, int64_t b, int64_t c, bool ch, int64_t t, float *dt,
                                             float *u) {
    if (!ch) {
#pragma unroll
        for (int i = 0; i < SB_IT; i++) dt[i] = 0.f, u[i] = 0.f;
        return;
    }
    sb_ld8<T>((const T *)a.u + b * a.su0 + c * a.su1, t, a.L, a.vu, u);
    sb_ld8<T>((const T *)a.delta + b * a.sd0 + c * a.sd1, t, a.L, a.vd, dt);
    const float bias = a.dtb ? a.dtb[c * a.sdtb] : 0.f;
#pragma unroll
    for (int i = 0; i < SB_IT; i++) dt[i] = t + i < a.L ? sb_dt(dt[i] + bias, a.softplus) : 0.f;
}

/* One (N, SB_TC) matrix of B or C from step t0 (src at batch row b) into a chunk row set of shared memory: thread
 * tid takes step t0 + tid (SB_THREADS == SB_TC), its N elements loaded in groups of 8 before the stores */
static_assert(SB_THREADS == SB_TC, "a thread per step of the chunk when staging");
template <typename TB>
__device__ __forceinline__ void sb_stage_mat(float *dst, const TB *src, int64_t s1, int64_t s2, int64_t t0, int64_t L,
                                             int N, int tid) {
    const int64_t t = t0 + tid;
    const bool ok = t < L;
    const TB *q = src + t * s2;
    dst += sb_pos(tid);
    for (int n0 = 0; n0 < N; n0 += 8) {
        float v[8];
#pragma unroll
        for (int j = 0; j < 8; j++) v[j] = ok && n0 + j < N ? jamba_ld<TB>(q[(n0 + j) * s1]) : 0.f;
#pragma unroll
        for (int j = 0; j < 8; j++)
            if (n0 + j < N) dst[(n0 + j) * SB_TC] = v[j];
    }
}

/* the next round's rows into L2 while this round computes (their loads at the round start were ~14% of the stall
 * samples, long scoreboard) */
template <typename T>
__device__ __forceinline__ void sb_prefetch(const sb_args &a, int64_t b, int64_t c, int64_t t, bool full) {
    if (c >= a.DI || t >= a.L) return;
    asm volatile("prefetch.global.L2 [%0];" ::"l"((const T *)a.u + b * a.su0 + c * a.su1 + t));
    asm volatile("prefetch.global.L2 [%0];" ::"l"((const T *)a.delta + b * a.sd0 + c * a.sd1 + t));
    if (!full) return;
    asm volatile("prefetch.global.L2 [%0];" ::"l"((const T *)a.dout + b * a.so0 + c * a.so1 + t));
    if (a.z) asm volatile("prefetch.global.L2 [%0];" ::"l"((const T *)a.z + b * a.sz0 + c * a.sz1 + t));
}

template <typename T> __global__ void __launch_bounds__(SB_THREADS, 2) scan_bwd_kernel(sb_args a) {
    jamba_pdl_begin();
    extern __shared__ float4 sb_smem4[];
    const int N = (int)a.N;
    float *sbc = (float *)sb_smem4;           /* [2][N][SB_TC]: the chunk's B, C (pieces swizzled) */
    float *acc = sbc + 2 * N * SB_TC;         /* [2][N][SB_TC]: the chunk's dB / dC summed over the block's channels */
    float *xch = acc + 2 * N * SB_TC;         /* [2][SB_NW][2][SB_TC]: each warp's dB / dC of one state (2 buffers) */
    float *cst = xch + 4 * SB_NW * SB_TC;     /* [SB_CPB][N]: the carried state (phase 1: h, phase 2: g') */
    float *dAs = cst + SB_CPB * N;            /* [SB_CPB][N]: dA sums */
    float *pDs = dAs + SB_CPB * N;            /* [SB_CPB][32]: each lane's dD sums */
    float *pbs = pDs + SB_CPB * 32;           /* [SB_CPB][32]: each lane's ddelta_bias sums */
    const int tid = threadIdx.x, lane = tid & 31, w = tid >> 5;
    const int64_t b = blockIdx.x / a.P, p = blockIdx.x % a.P, cb = p * SB_CPB, L = a.L, DI = a.DI;

    /* B (and C) of the chunk from t0 into sbc: N elements a thread and matrix, loads issued before the stores */
    auto stage = [&](int64_t t0, int nbc) {
        for (int which = 0; which < nbc; which++) {
            const int64_t s0 = which ? a.sC0 : a.sB0, s1 = which ? a.sC1 : a.sB1, s2 = which ? a.sC2 : a.sB2;
            const void *src = which ? a.Cm : a.Bm;
            float *dst = sbc + which * N * SB_TC;
            switch (which ? a.cdt : a.bdt) {
            case JAMBA_F32: sb_stage_mat<float>(dst, (const float *)src + b * s0, s1, s2, t0, L, N, tid); break;
            case JAMBA_BF16:
                sb_stage_mat<__nv_bfloat16>(dst, (const __nv_bfloat16 *)src + b * s0, s1, s2, t0, L, N, tid);
                break;
            default: sb_stage_mat<__half>(dst, (const __half *)src + b * s0, s1, s2, t0, L, N, tid); break;
            }
        }
    };

    for (int i = tid; i < SB_CPB * N; i += SB_THREADS) {
        const int64_t c = cb + i / N;
        cst[i] = c < DI && a.h0 ? a.h0[b * a.si0 + c * a.si1 + i % N] : 0.f;
        dAs[i] = 0.f;
    }
    for (int i = tid; i < SB_CPB * 32; i += SB_THREADS) pDs[i] = 0.f, pbs[i] = 0.f;

    /* 1. forward: the state at every chunk start */
    for (int64_t k = 0; k < a.NC; k++) {
        const int64_t t0 = k * SB_TC, tl0 = t0 + SB_IT * lane;
        __syncthreads();
        stage(t0, 1);
        __syncthreads();
        for (int g = 0; g < SB_ROUNDS; g++) {
            const int cl = g * SB_NW + w;
            const int64_t c = cb + cl;
            const bool ch = c < DI;
            float dt[SB_IT], u[SB_IT];
            sb_load_dt_u<T>(a, b, c, ch, tl0, dt, u);
            if (g + 1 < SB_ROUNDS) sb_prefetch<T>(a, b, c + SB_NW, tl0, false);
            else sb_prefetch<T>(a, b, cb + w, tl0 + SB_TC, false);
            float sdt = 0.f; /* the lane's map multiplies by exp2(A2 * sum dt) */
#pragma unroll
            for (int i = 0; i < SB_IT; i++) sdt += dt[i];
            const float Al = ch && lane < N ? a.A[c * a.sA0 + lane * a.sA1] * JAMBA_LOG2E : 0.f; /* lane n: A[c, n] */
            float hsave = 0.f;
            for (int n = 0; n < N; n++) {
                const float A2 = __shfl_sync(JAMBA_FULL_MASK, Al, n);
                float Bv[SB_IT];
                sb_ld_row(sbc + n * SB_TC, lane, Bv);
                float P = jamba_cu_exp2(A2 * sdt), H = 0.f;
#pragma unroll
                for (int i = 0; i < SB_IT; i++) H = fmaf(jamba_cu_exp2(dt[i] * A2), H, dt[i] * u[i] * Bv[i]);
                /* the lanes' maps composed in lane order: at each level the lower block's map runs first */
#pragma unroll
                for (int off = 1; off < 32; off <<= 1) {
                    const float Po = __shfl_xor_sync(JAMBA_FULL_MASK, P, off);
                    const float Ho = __shfl_xor_sync(JAMBA_FULL_MASK, H, off);
                    H = lane & off ? fmaf(P, Ho, H) : fmaf(Po, H, Ho);
                    P *= Po;
                }
                const float hs = cst[cl * N + n];
                if (lane == n) hsave = hs;
                __syncwarp();
                if (lane == 0) cst[cl * N + n] = fmaf(P, hs, H);
            }
            if (ch && lane < N) a.ckpt[((b * DI + c) * a.NC + k) * N + lane] = hsave;
        }
    }

    /* 2. reverse */
    __syncthreads();
    for (int i = tid; i < SB_CPB * N; i += SB_THREADS) {
        const int64_t c = cb + i / N;
        cst[i] = c < DI && a.dlast ? a.dlast[b * a.sl0 + c * a.sl1 + i % N] : 0.f;
    }
    const int xw = tid >> 7, xt = (tid & 127) * 2; /* this thread's pair of the cross-warp sums: (dB | dC, steps) */
    const int xpos = (sb_swz(xt >> 2) << 2) | (xt & 3);
    int xp = 0; /* xch buffer of this state step: alternates every step (so also across rounds when N is odd) */
    for (int64_t k = a.NC - 1; k >= 0; k--) {
        const int64_t t0 = k * SB_TC, tl0 = t0 + SB_IT * lane;
        __syncthreads();
        stage(t0, 2);
        __syncthreads();
        for (int g = 0; g < SB_ROUNDS; g++) {
            const int cl = g * SB_NW + w;
            const int64_t c = cb + cl;
            const bool ch = c < DI;
            float dt[SB_IT], u[SB_IT], dyp[SB_IT], dus[SB_IT], dds[SB_IT], y0[SB_IT];
            sb_load_dt_u<T>(a, b, c, ch, tl0, dt, u);
            if (g + 1 < SB_ROUNDS) sb_prefetch<T>(a, b, c + SB_NW, tl0, true);
            else if (k > 0) sb_prefetch<T>(a, b, cb + w, tl0 - SB_TC, true);
            float sdt = 0.f;
#pragma unroll
            for (int i = 0; i < SB_IT; i++) sdt += dt[i];
            {
                float zv[SB_IT];
                if (ch) {
                    sb_ld8<T>((const T *)a.dout + b * a.so0 + c * a.so1, tl0, L, a.vo, dyp);
                    if (a.z) {
                        sb_ld8<T>((const T *)a.z + b * a.sz0 + c * a.sz1, tl0, L, a.vz, zv);
#pragma unroll
                        for (int i = 0; i < SB_IT; i++) dyp[i] *= zv[i] * sb_sigmoid(zv[i]);
                    }
                } else {
#pragma unroll
                    for (int i = 0; i < SB_IT; i++) dyp[i] = 0.f;
                }
            }
#pragma unroll
            for (int i = 0; i < SB_IT; i++) dus[i] = 0.f, dds[i] = 0.f, y0[i] = 0.f;
            /* lane n: A[c, n] and the state at the chunk's start */
            const float Al = ch && lane < N ? a.A[c * a.sA0 + lane * a.sA1] : 0.f;
            const float hl = ch && lane < N ? a.ckpt[((b * DI + c) * a.NC + k) * N + lane] : 0.f;
            for (int n = 0; n < N; n++) {
                const float An = __shfl_sync(JAMBA_FULL_MASK, Al, n), A2 = An * JAMBA_LOG2E;
                float Bv[SB_IT], Cv[SB_IT], av[SB_IT], bb[SB_IT], hh[SB_IT];
                sb_ld_row(sbc + n * SB_TC, lane, Bv);
                sb_ld_row(sbc + (N + n) * SB_TC, lane, Cv);
                /* the lane's maps: h -> P h + H forward, g' -> P g' + G backward (G = sum_i a_0..a_i dy_i C_i) */
                float P = jamba_cu_exp2(A2 * sdt), H = 0.f, G = 0.f, pr = 1.f;
#pragma unroll
                for (int i = 0; i < SB_IT; i++) {
                    av[i] = jamba_cu_exp2(dt[i] * A2);
                    bb[i] = dt[i] * u[i] * Bv[i];
                    H = fmaf(av[i], H, bb[i]);
                    pr *= av[i];
                    G = fmaf(pr, dyp[i] * Cv[i], G);
                }
                /* inclusive scans over the lanes: forward (lanes 0..l) and reverse (lanes l..31) */
                float Pf = P, Hf = H, Pr = P, Gr = G;
#pragma unroll
                for (int off = 1; off < 32; off <<= 1) {
                    const float Po = __shfl_up_sync(JAMBA_FULL_MASK, Pf, off);
                    const float Ho = __shfl_up_sync(JAMBA_FULL_MASK, Hf, off);
                    const float Qo = __shfl_down_sync(JAMBA_FULL_MASK, Pr, off);
                    const float Go = __shfl_down_sync(JAMBA_FULL_MASK, Gr, off);
                    if (lane >= off) Hf = fmaf(Pf, Ho, Hf), Pf *= Po;
                    if (lane + off < 32) Gr = fmaf(Pr, Go, Gr), Pr *= Qo;
                }
                const float h0 = __shfl_sync(JAMBA_FULL_MASK, hl, n), gc = cst[cl * N + n];
                const float Pe = __shfl_up_sync(JAMBA_FULL_MASK, Pf, 1), He = __shfl_up_sync(JAMBA_FULL_MASK, Hf, 1);
                const float Qe = __shfl_down_sync(JAMBA_FULL_MASK, Pr, 1);
                const float Ge = __shfl_down_sync(JAMBA_FULL_MASK, Gr, 1);
                const float gnew = fmaf(Pr, gc, Gr); /* lane 0: g' into the previous chunk */
                float h = lane ? fmaf(Pe, h0, He) : h0, gp = lane < 31 ? fmaf(Qe, gc, Ge) : gc;
#pragma unroll
                for (int i = 0; i < SB_IT; i++) {
                    h = fmaf(av[i], h, bb[i]);
                    hh[i] = h;
                }
                float sdA = 0.f, dBc[SB_IT], dCc[SB_IT];
#pragma unroll
                for (int i = SB_IT - 1; i >= 0; i--) {
                    const float gn = fmaf(dyp[i], Cv[i], gp);
                    const float s = gn * (hh[i] - bb[i]); /* gn * exp(dt A) h[t-1] */
                    dds[i] = fmaf(s, An, dds[i]);
                    sdA = fmaf(s, dt[i], sdA);
                    dus[i] = fmaf(gn, Bv[i], dus[i]);
                    dBc[i] = gn * (dt[i] * u[i]);
                    dCc[i] = dyp[i] * hh[i];
                    y0[i] = fmaf(Cv[i], hh[i], y0[i]);
                    gp = av[i] * gn;
                }
                float *xo = xch + (xp * SB_NW + w) * 2 * SB_TC;
                sb_st_row(xo, lane, dBc);
                sb_st_row(xo + SB_TC, lane, dCc);
                sdA = jamba_warp_sum(sdA);
                __syncthreads();
                if (lane == 0) {
                    cst[cl * N + n] = gnew;
                    dAs[cl * N + n] += sdA;
                }
                /* this thread's pair of the block's sums, warps in order, rounds in order */
                const float *xr = xch + xp * SB_NW * 2 * SB_TC + xw * SB_TC + xpos;
                float2 sm = *(const float2 *)xr;
#pragma unroll
                for (int ww = 1; ww < SB_NW; ww++) {
                    const float2 v = *(const float2 *)(xr + ww * 2 * SB_TC);
                    sm.x += v.x, sm.y += v.y;
                }
                float2 *ap = (float2 *)(acc + (xw * N + n) * SB_TC + xt);
                if (g) {
                    const float2 o = *ap;
                    sm.x = o.x + sm.x, sm.y = o.y + sm.y;
                }
                *ap = sm;
                xp ^= 1;
            }
            /* per-(c, t) results; delta, dout and z are read again (from L2) rather than kept through the state
             * loop: their 24 registers would push it past 128 */
            if (ch) {
                float zv[SB_IT], ov[SB_IT], xv[SB_IT], r[SB_IT];
                const float Dc = a.D ? a.D[c * a.sD] : 0.f, bias = a.dtb ? a.dtb[c * a.sdtb] : 0.f;
                sb_ld8<T>((const T *)a.delta + b * a.sd0 + c * a.sd1, tl0, L, a.vd, xv);
                float sD = 0.f, sdb = 0.f;
#pragma unroll
                for (int i = 0; i < SB_IT; i++) {
                    const float x = xv[i] + bias;
                    const float dsp = a.softplus ? (x <= 20.f ? sb_sigmoid(x) : 1.f) : 1.f;
                    xv[i] = tl0 + i < L ? fmaf(u[i], dus[i], dds[i]) * dsp : 0.f; /* ddelta */
                    r[i] = fmaf(Dc, dyp[i], dt[i] * dus[i]);                        /* du */
                    sD = fmaf(dyp[i], u[i], sD);
                    sdb += xv[i];
                }
                const int64_t o = (b * DI + c) * L;
                sb_st8<T>((T *)a.du + o, tl0, L, a.vout, r);
                sb_st8<T>((T *)a.ddelta + o, tl0, L, a.vout, xv);
                if (a.z) {
                    sb_ld8<T>((const T *)a.dout + b * a.so0 + c * a.so1, tl0, L, a.vo, ov);
                    sb_ld8<T>((const T *)a.z + b * a.sz0 + c * a.sz1, tl0, L, a.vz, zv);
#pragma unroll
                    for (int i = 0; i < SB_IT; i++) {
                        const float sz = sb_sigmoid(zv[i]);
                        r[i] = ov[i] * fmaf(Dc, u[i], y0[i]) * sz * (1.f + zv[i] * (1.f - sz));
                    }
                    sb_st8<T>((T *)a.dz + o, tl0, L, a.vout, r);
                }
                pDs[cl * 32 + lane] += sD;
                pbs[cl * 32 + lane] += sdb;
            }
        }
        /* the chunk's partials (this thread's own entries of acc) */
        for (int n = 0; n < N; n++) {
            const float2 v = *(const float2 *)(acc + (xw * N + n) * SB_TC + xt);
            float *dst = a.part + (((int64_t)xw * a.B + b) * a.P + p) * N * L + (int64_t)n * L + t0 + xt;
            if (t0 + xt < L) dst[0] = v.x;
            if (t0 + xt + 1 < L) dst[1] = v.y;
        }
    }
    /* 3. per-(b, c) results */
    __syncthreads();
    for (int i = tid; i < SB_CPB * N; i += SB_THREADS) {
        const int64_t c = cb + i / N;
        if (c >= DI) continue;
        const int64_t sidx = (b * DI + c) * N + i % N;
        if (a.dinit) a.dinit[sidx] = cst[i];
        a.pA[sidx] = dAs[i];
    }
    for (int i = tid; i < SB_CPB; i += SB_THREADS) {
        const int64_t c = cb + i;
        if (c >= DI) continue;
        float sD = 0.f, sdb = 0.f;
        for (int l = 0; l < 32; l++) sD += pDs[i * 32 + l], sdb += pbs[i * 32 + l];
        a.pD[b * DI + c] = sD;
        a.pdb[b * DI + c] = sdb;
    }
}

/* 2 blocks of 256 threads per SM (128 registers; ptxas recomputes a few exponentials of the state loop). A 1-block
 * instance (164 registers, no recomputation) ran 1271 / 5000 us against 941 / 3670 at 1x2048 / 1x8192 (d763690). */
template <typename T> static jamba_status scan_bwd_launch(const sb_args &a, cudaStream_t stream) {
    const size_t smem =
        sizeof(float) * (size_t)(4 * a.N * SB_TC + 4 * SB_NW * SB_TC + 2 * SB_CPB * a.N + 2 * SB_CPB * 32);
    JAMBA_CUDA_CHECK(cudaFuncSetAttribute(scan_bwd_kernel<T>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
    jamba_kernel_launch(scan_bwd_kernel<T>, dim3((unsigned)(a.B * a.P)), dim3(SB_THREADS), smem, stream, a);
    JAMBA_LAUNCH_CHECK("jamba.selective_scan_bwd: scan_bwd_kernel", stream);
    return JAMBA_OK;
}

/* 16-byte row access: the base and both outer strides a multiple of 16 bytes */
static int sb_vec_ok(const jamba_tensor *t, int64_t es) {
    return t->data && jamba_aligned16(t->data) && (t->stride[0] * es) % 16 == 0 && (t->stride[1] * es) % 16 == 0;
}

extern "C" jamba_status jamba_selective_scan_bwd_cuda(const jamba_selective_scan_bwd_params *p, jamba_launch launch) {
    JAMBA_TRY(jamba_selective_scan_bwd_check(p));
    const char *op = "jamba.selective_scan_bwd";
    const int64_t B = p->u.shape[0], DI = p->u.shape[1], L = p->u.shape[2], N = p->A.shape[1];
    if (N > JAMBA_SCAN_BWD_CUDA_MAX_N)
        return jamba_set_error(JAMBA_ERR_UNSUPPORTED, "%s: A: the CUDA kernel takes d_state <= %d, got %lld", op,
                               JAMBA_SCAN_BWD_CUDA_MAX_N, (long long)N);
    const int64_t need = jamba_selective_scan_bwd_ws_elems(B, DI, L, N);
    JAMBA_TRY(jamba_check_workspace(op, &p->ws, need));
    JAMBA_DEVICE_GUARD(launch);
    cudaStream_t stream = (cudaStream_t)launch.stream;
    sb_args a;
    memset(&a, 0, sizeof a);
    a.B = B, a.DI = DI, a.L = L, a.N = N;
    a.P = jamba_ceil_div(DI, SB_CPB), a.NC = jamba_ceil_div(L, SB_TC);
    if (B * a.P > JAMBA_MAX_GRID_X)
        return jamba_set_error(JAMBA_ERR_ARG, "%s: u: batch x channel blocks over the grid limit (B %lld, DI %lld)",
                               op, (long long)B, (long long)DI);
    a.u = p->u.data, a.delta = p->delta.data, a.z = p->z.data, a.dout = p->dout.data;
    a.Bm = p->Bm.data, a.Cm = p->Cm.data, a.bdt = (int)p->Bm.dtype, a.cdt = (int)p->Cm.dtype;
    a.A = (const float *)p->A.data, a.D = (const float *)p->D.data, a.dtb = (const float *)p->delta_bias.data;
    a.h0 = (const float *)p->initial_state.data, a.dlast = (const float *)p->dlast_state.data;
    a.du = p->du.data, a.ddelta = p->ddelta.data, a.dz = p->dz.data, a.dinit = (float *)p->dinitial_state.data;
    a.su0 = p->u.stride[0], a.su1 = p->u.stride[1], a.sd0 = p->delta.stride[0], a.sd1 = p->delta.stride[1];
    if (a.z) a.sz0 = p->z.stride[0], a.sz1 = p->z.stride[1];
    a.so0 = p->dout.stride[0], a.so1 = p->dout.stride[1];
    a.sB0 = p->Bm.stride[0], a.sB1 = p->Bm.stride[1], a.sB2 = p->Bm.stride[2];
    a.sC0 = p->Cm.stride[0], a.sC1 = p->Cm.stride[1], a.sC2 = p->Cm.stride[2];
    a.sA0 = p->A.stride[0], a.sA1 = p->A.stride[1];
    if (a.D) a.sD = p->D.stride[0];
    if (a.dtb) a.sdtb = p->delta_bias.stride[0];
    if (a.h0) a.si0 = p->initial_state.stride[0], a.si1 = p->initial_state.stride[1];
    if (a.dlast) a.sl0 = p->dlast_state.stride[0], a.sl1 = p->dlast_state.stride[1];
    a.softplus = p->delta_softplus;
    const int64_t es = jamba_dtype_size(p->u.dtype);
    a.vu = sb_vec_ok(&p->u, es), a.vd = sb_vec_ok(&p->delta, es), a.vz = a.z ? sb_vec_ok(&p->z, es) : 0;
    a.vo = sb_vec_ok(&p->dout, es);
    a.vout = sb_vec_ok(&p->du, es) && sb_vec_ok(&p->ddelta, es) && (!a.z || sb_vec_ok(&p->dz, es));
    float *ws = (float *)p->ws.data;
    a.ckpt = ws;
    a.part = a.ckpt + B * DI * a.NC * N;
    a.pA = a.part + 2 * B * a.P * N * L;
    a.pD = a.pA + B * DI * N;
    a.pdb = a.pD + B * DI;
    if (B > 0 && DI > 0) {
        jamba_status s = JAMBA_ERR_DTYPE;
        JAMBA_DISPATCH_FLOAT(p->u.dtype, T, s = scan_bwd_launch<T>(a, stream));
        JAMBA_TRY(s);
    }
    JAMBA_TRY(jamba_cuda_sum_mid((float *)p->dBm.data, a.part, B, a.P, N * L, stream, op));
    JAMBA_TRY(jamba_cuda_sum_mid((float *)p->dCm.data, a.part + B * a.P * N * L, B, a.P, N * L, stream, op));
    JAMBA_TRY(jamba_cuda_sum_mid((float *)p->dA.data, a.pA, 1, B, DI * N, stream, op));
    if (p->dD.data) JAMBA_TRY(jamba_cuda_sum_mid((float *)p->dD.data, a.pD, 1, B, DI, stream, op));
    if (p->ddelta_bias.data)
        JAMBA_TRY(jamba_cuda_sum_mid((float *)p->ddelta_bias.data, a.pdb, 1, B, DI, stream, op));
    return JAMBA_OK;
}
