/* selective_scan_bwd.cu -- gradients of the Mamba-1 selective scan on CUDA (training).
 *
 * Exports: jamba_selective_scan_bwd_cuda (checks and math: csrc/cpu/selective_scan_bwd.c, csrc/jamba.h).
 * Shapes and layouts (letters of jamba.h): u, delta, z, dout (B, DI, L), unit stride along L; A (DI, N) f32;
 * Bm, Cm (B, N, L) any strides, f32 or u's dtype; D, delta_bias (DI,) f32; initial_state, dlast_state (B, DI, N)
 * f32, unit stride along N. Outputs contiguous: du, ddelta, dz (B, DI, L) u's dtype; dBm, dCm (B, N, L), dA (DI, N),
 * dD, ddelta_bias (DI,), dinitial_state (B, DI, N) f32. N <= 32.
 *
 * scan_bwd_kernel<T, NP>: 512 threads; NP (the power of two >= N) lanes per channel, CPB = 512 / NP channels per block;
 * block x = b * P + p covers channels p * CPB .. of batch row b (P = ceil(DI / CPB)); thread (channel c, lane n) owns
 * state element n of channel c. Each thread
 *   1. runs the forward recurrence over all L and stores h at the start of every SB_TC-step chunk (ckpt, workspace
 *      (B, DI, NC, N));
 *   2. walks the chunks in reverse: h[t-1] of the chunk recomputed from its checkpoint into shared memory (hs), then
 *      t from the chunk's end down, with g = dL/dh[t] carried in a register; the sums over n (y0, du, ddt) are
 *      shuffles within the channel's NP lanes, the sums over channels (dB, dC) shuffles within the warp, then, per
 *      chunk, a fixed-order sum over the block's 16 warps from shared memory (red) into the block's partials
 *      (workspace (2, B, P, N, L));
 *   3. stores dinitial_state and its per-(b, c) parts of dA, dD, ddelta_bias (workspace).
 * sum_mid_kernel then sums the partials over blocks (dB, dC) and over the batch (dA, dD, ddelta_bias) in a fixed order:
 * bit-identical results run to run. Workspace: jamba_selective_scan_bwd_ws_elems (csrc/cpu/selective_scan_bwd.c).
 */
#include <string.h>

#include "common.cuh"

#define SB_THREADS 512
#define SB_TC 16 /* steps per chunk (must match jamba_selective_scan_bwd_ws_elems) */

struct sb_args {
    const void *u, *delta, *z, *dout, *Bm, *Cm;
    const float *A, *D, *dtb, *h0, *dlast;
    void *du, *ddelta, *dz;
    float *dinit, *ckpt, *part, *pA, *pD, *pdb;
    int64_t B, DI, L, N, P, NC;
    int64_t su0, su1, sd0, sd1, sz0, sz1, so0, so1;
    int64_t sB0, sB1, sB2, sC0, sC1, sC2, sA0, sA1, sD, sdtb, si0, si1, sl0, sl1;
    int bdt, cdt, softplus;
};

template <int NP> __device__ __forceinline__ float sb_group_sum(float v) {
#pragma unroll
    for (int off = NP / 2; off >= 1; off >>= 1) v += __shfl_xor_sync(JAMBA_FULL_MASK, v, off);
    return v;
}
/* sum over the warp's channels (lanes with the same n) */
template <int NP> __device__ __forceinline__ float sb_channel_sum(float v) {
#pragma unroll
    for (int off = NP; off < 32; off <<= 1) v += __shfl_xor_sync(JAMBA_FULL_MASK, v, off);
    return v;
}

__device__ __forceinline__ float sb_dt(float x, int softplus) {
    return softplus ? (x <= 20.f ? log1pf(expf(x)) : x) : x;
}

/* channels per block: 32 (16 when NP = 32); threads = SB_CPB(NP) * NP <= 512 (must match the workspace size rule) */
#define SB_CPB(np) ((np) == 32 ? 16 : 32)

template <typename T, int NP>
__global__ void __launch_bounds__(SB_THREADS) scan_bwd_kernel(sb_args a) {
    jamba_pdl_begin();
    constexpr int CPB = SB_CPB(NP), NT = CPB * NP, NW = NT / 32 > 0 ? NT / 32 : 1;
    extern __shared__ float sb_smem[];
    float *hs = sb_smem;                      /* [SB_TC][NT]: h[t-1] of the chunk's steps, per thread */
    float *red = hs + SB_TC * NT;             /* [NW][2][SB_TC][NP]: each warp's dB / dC sums */
    float *st = red + NW * 2 * SB_TC * NP;    /* [6][CPB][SB_TC]: u, dt, dt'(x), silu(z), dz factor, dout */
    float *sbc = st + 6 * CPB * SB_TC;        /* [2][SB_TC][NP]: B, C */
    float *so = sbc + 2 * SB_TC * NP;         /* [3][CPB][SB_TC]: du, ddelta, dz of the chunk */
    const int tid = threadIdx.x, lane = tid & 31, w = tid >> 5, n = tid % NP, cl = tid / NP;
    const int64_t b = blockIdx.x / a.P, p = blockIdx.x % a.P, cb = p * CPB;
    const int64_t c = cb + cl;
    const bool ch = c < a.DI, act = ch && n < a.N;
    const int64_t L = a.L;
    const float An = act ? a.A[c * a.sA0 + n * a.sA1] : 0.f;
    const float Dc = ch && a.D ? a.D[c * a.sD] : 0.f;
    float *ck = a.ckpt + ((b * a.DI + (ch ? c : 0)) * a.NC) * a.N + n;
    float *su = st, *sdt = st + CPB * SB_TC, *sdsp = sdt + CPB * SB_TC, *sgz = sdsp + CPB * SB_TC;
    float *sdzf = sgz + CPB * SB_TC, *sdo = sdzf + CPB * SB_TC;

    /* the chunk's per-(channel, step) inputs and B / C into shared memory, coalesced along time; full: the
     * backward's set (z and dout too), else the forward's (u, dt, B) */
    auto stage = [&](int64_t t0, int64_t t1, bool full) {
        for (int i = tid; i < CPB * SB_TC; i += NT) {
            const int cc = i / SB_TC, tl = i % SB_TC;
            const int64_t cg = cb + cc, t = t0 + tl;
            float uv = 0.f, xv = 0.f, zv = 0.f, ov = 0.f;
            if (cg < a.DI && t < t1) {
                uv = jamba_ld<T>(((const T *)a.u)[b * a.su0 + cg * a.su1 + t]);
                xv = jamba_ld<T>(((const T *)a.delta)[b * a.sd0 + cg * a.sd1 + t]) + (a.dtb ? a.dtb[cg * a.sdtb] : 0.f);
                if (full) {
                    if (a.z) zv = jamba_ld<T>(((const T *)a.z)[b * a.sz0 + cg * a.sz1 + t]);
                    ov = jamba_ld<T>(((const T *)a.dout)[b * a.so0 + cg * a.so1 + t]);
                }
            }
            su[i] = uv;
            sdt[i] = sb_dt(xv, a.softplus);
            if (full) {
                sdsp[i] = a.softplus ? (xv <= 20.f ? 1.f / (1.f + expf(-xv)) : 1.f) : 1.f;
                const float sz = 1.f / (1.f + expf(-zv));
                sgz[i] = a.z ? zv * sz : 1.f;
                sdzf[i] = sz * (1.f + zv * (1.f - sz));
                sdo[i] = ov;
            }
        }
        for (int i = tid; i < (full ? 2 : 1) * SB_TC * NP; i += NT) {
            const int which = i / (SB_TC * NP), tl = (i / NP) % SB_TC, m = i % NP;
            const int64_t t = t0 + tl;
            float v = 0.f;
            if (m < a.N && t < t1)
                v = which == 0 ? jamba_ld_any(a.Bm, a.bdt, b * a.sB0 + m * a.sB1 + t * a.sB2)
                               : jamba_ld_any(a.Cm, a.cdt, b * a.sC0 + m * a.sC1 + t * a.sC2);
            sbc[i] = v;
        }
    };

    /* 1. forward: checkpoints */
    float h = act && a.h0 ? a.h0[b * a.si0 + c * a.si1 + n] : 0.f;
    for (int64_t k = 0; k < a.NC; k++) {
        const int64_t t0 = k * SB_TC, t1 = t0 + SB_TC < L ? t0 + SB_TC : L;
        if (act) ck[k * a.N] = h;
        __syncthreads();
        stage(t0, t1, false);
        __syncthreads();
        for (int tl = 0; tl < (int)(t1 - t0); tl++) {
            const float dt = sdt[cl * SB_TC + tl];
            h = __expf(dt * An) * h + dt * sbc[tl * NP + n] * su[cl * SB_TC + tl];
        }
    }

    /* 2. reverse, chunk by chunk */
    float g = act && a.dlast ? a.dlast[b * a.sl0 + c * a.sl1 + n] : 0.f;
    float sA = 0.f, sD = 0.f, sdb = 0.f;
    for (int64_t k = a.NC - 1; k >= 0; k--) {
        const int64_t t0 = k * SB_TC, t1 = t0 + SB_TC < L ? t0 + SB_TC : L;
        const int nt = (int)(t1 - t0);
        __syncthreads();
        stage(t0, t1, true);
        __syncthreads();
        h = act ? ck[k * a.N] : 0.f;
        for (int tl = 0; tl < nt; tl++) {
            hs[tl * NT + tid] = h;
            const float dt = sdt[cl * SB_TC + tl];
            h = __expf(dt * An) * h + dt * sbc[tl * NP + n] * su[cl * SB_TC + tl];
        }
        for (int tl = nt - 1; tl >= 0; tl--) {
            const int e = cl * SB_TC + tl;
            const float ut = su[e], dt = sdt[e], ot = sdo[e];
            const float Bn = sbc[tl * NP + n], Cn = sbc[(SB_TC + tl) * NP + n];
            const float an = __expf(dt * An), hp = hs[tl * NT + tid];
            const float ht = an * hp + dt * Bn * ut;
            const float y0 = sb_group_sum<NP>(Cn * ht) + Dc * ut;
            const float dyp = ot * sgz[e];
            const float gn = g + dyp * Cn;
            const float cB = sb_channel_sum<NP>(gn * dt * ut), cC = sb_channel_sum<NP>(dyp * ht);
            if (lane < NP) {
                red[((w * 2 + 0) * SB_TC + tl) * NP + lane] = cB;
                red[((w * 2 + 1) * SB_TC + tl) * NP + lane] = cC;
            }
            const float sdu = sb_group_sum<NP>(gn * Bn);
            const float sddt = sb_group_sum<NP>(gn * (Bn * ut + hp * an * An));
            sA += gn * hp * an * dt;
            g = an * gn;
            if (n == 0) {
                const float ddt = sddt * sdsp[e];
                so[e] = dyp * Dc + dt * sdu;
                so[CPB * SB_TC + e] = ddt;
                so[2 * CPB * SB_TC + e] = ot * y0 * sdzf[e];
                sD += dyp * ut;
                sdb += ddt;
            }
        }
        __syncthreads();
        /* the chunk's dB / dC: the warps' sums in warp order, into this block's partials */
        for (int i = tid; i < 2 * SB_TC * NP; i += NT) {
            const int which = i / (SB_TC * NP), tl = (i / NP) % SB_TC, m = i % NP;
            if (m < a.N && tl < nt) {
                float sum = 0.f;
                for (int ww = 0; ww < NW; ww++) sum += red[((ww * 2 + which) * SB_TC + tl) * NP + m];
                a.part[(((int64_t)which * a.B + b) * a.P + p) * a.N * L + (int64_t)m * L + t0 + tl] = sum;
            }
        }
        /* du, ddelta, dz of the chunk (rows contiguous (B, DI, L)) */
        for (int i = tid; i < CPB * SB_TC; i += NT) {
            const int cc = i / SB_TC, tl = i % SB_TC;
            const int64_t cg = cb + cc;
            if (cg < a.DI && tl < nt) {
                const int64_t o = (b * a.DI + cg) * L + t0 + tl;
                ((T *)a.du)[o] = jamba_st<T>(so[i]);
                ((T *)a.ddelta)[o] = jamba_st<T>(so[CPB * SB_TC + i]);
                if (a.z) ((T *)a.dz)[o] = jamba_st<T>(so[2 * CPB * SB_TC + i]);
            }
        }
    }
    /* 3. per-(b, c) results */
    if (act) {
        const int64_t sidx = (b * a.DI + c) * a.N + n;
        if (a.dinit) a.dinit[sidx] = g;
        a.pA[sidx] = sA;
    }
    if (ch && n == 0) {
        a.pD[b * a.DI + c] = sD;
        a.pdb[b * a.DI + c] = sdb;
    }
}

/* out[i * J + j] = sum_{k < K} in[(i * K + k) * J + j]. A block (256 threads) takes tiles of 32 consecutive j: warp s
 * sums the k = s (mod 8) terms with 4 loads in flight, then the 8 warps' sums are added in warp order (a fixed order
 * whatever the grid). One thread per output with a chain of K loads (the first version) took ~1 ms per call at
 * K = 256 partials, as long as the scan kernel itself. */
__global__ void __launch_bounds__(256) sum_mid_kernel(float *out, const float *in, int64_t I, int64_t K, int64_t J) {
    jamba_pdl_begin();
    __shared__ float part[8][33];
    const int jl = threadIdx.x & 31, sl = threadIdx.x >> 5;
    const int64_t nJ = (J + 31) / 32;
    for (int64_t tile = blockIdx.x; tile < I * nJ; tile += gridDim.x) {
        const int64_t i = tile / nJ, j = (tile % nJ) * 32 + jl;
        float a0 = 0.f, a1 = 0.f, a2 = 0.f, a3 = 0.f;
        if (j < J) {
            const float *src = in + i * K * J + j;
            int64_t k = sl;
            for (; k + 24 < K; k += 32) {
                a0 += src[k * J];
                a1 += src[(k + 8) * J];
                a2 += src[(k + 16) * J];
                a3 += src[(k + 24) * J];
            }
            for (; k < K; k += 8) a0 += src[k * J];
        }
        part[sl][jl] = (a0 + a1) + (a2 + a3);
        __syncthreads();
        if (sl == 0 && j < J) {
            float t = 0.f;
#pragma unroll
            for (int r = 0; r < 8; r++) t += part[r][jl];
            out[i * J + j] = t;
        }
        __syncthreads();
    }
}

static jamba_status sum_mid(float *out, const float *in, int64_t I, int64_t K, int64_t J, cudaStream_t stream) {
    const int64_t tiles = I * jamba_ceil_div(J, 32);
    if (tiles == 0) return JAMBA_OK;
    const int64_t blocks = tiles < 65536 ? tiles : 65536;
    jamba_kernel_launch(sum_mid_kernel, dim3((unsigned)blocks), dim3(256), 0, stream, out, in, I, K, J);
    JAMBA_LAUNCH_CHECK("jamba.selective_scan_bwd: sum_mid_kernel", stream);
    return JAMBA_OK;
}

template <typename T, int NP> static jamba_status scan_bwd_launch(const sb_args &a, cudaStream_t stream) {
    constexpr int CPB = SB_CPB(NP), NT = CPB * NP, NW = NT / 32 > 0 ? NT / 32 : 1;
    const size_t smem =
        sizeof(float) * (size_t)(SB_TC * NT + NW * 2 * SB_TC * NP + 9 * CPB * SB_TC + 2 * SB_TC * NP);
    JAMBA_CUDA_CHECK(cudaFuncSetAttribute(scan_bwd_kernel<T, NP>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                          (int)smem));
    jamba_kernel_launch(scan_bwd_kernel<T, NP>, dim3((unsigned)(a.B * a.P)), dim3(NT), smem, stream, a);
    JAMBA_LAUNCH_CHECK("jamba.selective_scan_bwd: scan_bwd_kernel", stream);
    return JAMBA_OK;
}

template <typename T> static jamba_status scan_bwd_dispatch(const sb_args &a, int np, cudaStream_t stream) {
    switch (np) {
    case 1: return scan_bwd_launch<T, 1>(a, stream);
    case 2: return scan_bwd_launch<T, 2>(a, stream);
    case 4: return scan_bwd_launch<T, 4>(a, stream);
    case 8: return scan_bwd_launch<T, 8>(a, stream);
    case 16: return scan_bwd_launch<T, 16>(a, stream);
    default: return scan_bwd_launch<T, 32>(a, stream);
    }
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
    int np = 1;
    while (np < N) np <<= 1;
    sb_args a;
    memset(&a, 0, sizeof a);
    a.B = B, a.DI = DI, a.L = L, a.N = N;
    a.P = jamba_ceil_div(DI, SB_CPB(np)), a.NC = jamba_ceil_div(L, SB_TC);
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
    float *ws = (float *)p->ws.data;
    a.ckpt = ws;
    a.part = a.ckpt + B * DI * a.NC * N;
    a.pA = a.part + 2 * B * a.P * N * L;
    a.pD = a.pA + B * DI * N;
    a.pdb = a.pD + B * DI;
    if (B > 0 && DI > 0) {
        jamba_status s = JAMBA_ERR_DTYPE;
        JAMBA_DISPATCH_FLOAT(p->u.dtype, T, s = scan_bwd_dispatch<T>(a, np, stream));
        JAMBA_TRY(s);
    }
    JAMBA_TRY(sum_mid((float *)p->dBm.data, a.part, B, a.P, N * L, stream));
    JAMBA_TRY(sum_mid((float *)p->dCm.data, a.part + B * a.P * N * L, B, a.P, N * L, stream));
    JAMBA_TRY(sum_mid((float *)p->dA.data, a.pA, 1, B, DI * N, stream));
    if (p->dD.data) JAMBA_TRY(sum_mid((float *)p->dD.data, a.pD, 1, B, DI, stream));
    if (p->ddelta_bias.data) JAMBA_TRY(sum_mid((float *)p->ddelta_bias.data, a.pdb, 1, B, DI, stream));
    return JAMBA_OK;
}
