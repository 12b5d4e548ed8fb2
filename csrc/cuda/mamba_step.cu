/* mamba_step.cu -- a Mamba layer's decode step between in_proj and out_proj (mamba_inner_step), on CUDA.
 *
 * Exports: jamba_mamba_inner_step_cuda (checks and the five-op split: csrc/cpu/mamba_step.c).
 * Math: csrc/jamba.h (conv update -> x_proj -> dt / B / C norms -> dt_proj -> state update, each rounding to T).
 * Why: in a batch-1 decode step these five ops are launch- and latency-bound: 13.2 us a Mamba layer in a CUDA graph
 * against 2.6 us for their 10.9 MB at copy bandwidth (dev/mamba_step_probe.py, mamba_step_probe_gemv_*.log), ~28%
 * of a step's gap to its floor over Jamba-v0.1's 28 Mamba layers. Their data flow needs only two grid-wide joins:
 * x_proj reduces over every channel, and everything after it needs all of its outputs.
 *
 * Kernel mamba_step_kernel<T, N> (its arrays hold MS_MAXB = 2 batch rows): one block of 256 threads per 64 channels (grid = ceil(DI / 64) blocks, every block resident at
 * once: the launcher checks the occupancy and launches with the cooperative attribute, so that a grid that cannot
 * be resident fails to launch instead of waiting at a barrier; then the five launches run).
 *   x, z (B, DI) T, unit stride along DI, batch strides sx / sz; conv_state (B, DI, S) T, unit stride along S, batch /
 *   channel strides scs0 / scs1; conv_weight (DI, K) T contiguous rows; conv_bias (DI,) T or NULL; xproj_weight
 *   (NO, DI) T contiguous; norm_weight (NO,) T; dtproj_weight (DI, R) T contiguous; A (DI, N) f32 contiguous;
 *   D, dt_bias (DI,) f32; ssm_state (B, DI, N) f32 contiguous; out (B, DI) T contiguous.
 *   work (int64, zero before its first use): the grid barrier's u32 count in its first 4 bytes (ms_grid_sync: back
 *   to its start after each barrier, whatever the grid), floats from byte 64: part (nblk, B, NO) then xdbl (B, NO).
 *   1. Before the PDL wait (weights only: common.cuh, jamba_pdl_weights_first) the block's weight loads are issued
 *      into registers: its xproj_weight columns (NO rows x 64 channels: LPR lanes a row, one 16-byte vector each),
 *      its dtproj_weight rows (64 rows x R: 4 lanes a row), A, D, dt_bias (TMA bulk copies into shared memory, one
 *      per x_proj row, were slower: 12.7 against 10.9 us at batch 1). After the wait: the state and z, then the
 *      conv update of its 64 channels x B rows (xc rounded to T, kept in shared memory; the state shifted in place).
 *   2. x_proj partial sums of its channels for every output o < NO and row b (the LPR lanes of a row added by
 *      shuffles in a fixed order) -> part[blk, b, o]; grid barrier.
 *   3. xdbl[b, o] = round_T(sum over blocks of part, in block order, one warp a column); grid barrier.
 *   4. every block: the three RMS norms of xdbl (rms_norm's numerics) into shared memory; dt_proj of its 64
 *      channels (4 lanes a channel); the state update of its channels (N / 4 lanes a channel, 4 states each, as
 *      selective_state_update's f32 kernel), out rounded to T.
 *   Deterministic: every sum runs in a fixed order; the barrier's count only counts.
 * Limits (else the five launches): B <= 2 (the per-row work here is serial: at batch 8 the five launches took 26 us
 * against 38 for a first version, and 23.2 against 28.4 us for an 8-row instance that read xc from registers,
 * gpu_round_519cb9a.log; removed), N in {4, 8, 16},
 * R % VN == 0 and R <= 256, NO <= 320, DI % VN == 0 (VN = 16 / sizeof(T)); x with unit stride along DI;
 * xproj_weight, dtproj_weight, A (contiguous) and ssm_state 16-byte aligned; D, dt_bias with unit stride; every
 * block resident at once (occupancy x SMs >= grid).
 */
#include <stdlib.h>
#include <string.h>

#include "gemv.cuh"

#define MS_CPB 64      /* channels per block */
#define MS_THREADS 256 /* threads per block */
#define MS_MAXB 2      /* batch rows (larger batches: the five launches, faster there) */
#define MS_MAXNO 320   /* x_proj outputs (R + 2N) */
#define MS_MAXR 256    /* dt rank */

struct ms_args {
    void *out, *conv_state;
    const void *x, *z, *cw, *cb, *wx, *nw, *wdt;
    const float *A, *D, *dtb;
    float *ssm;
    unsigned *bar; /* the grid barrier's count (ms_grid_sync) */
    float *part, *xdbl;
    long long *tim; /* NULL, or (nblk, 16): globaltimer, clock64 at 8 points a block (JAMBA_EXT_MAMBA_STEP_TIMING) */
    int64_t sx, sz, scs0, scs1;
    int B, DI, S, K, R, N, NO, nblk;
    float eps;
};

/* the conv forward's silu (causal_conv1d.cu): v / (1 + 2^(-v log2 e)) */
__device__ __forceinline__ float ms_conv_silu(float v) { return __fdividef(v, 1.f + jamba_cu_exp2(-v * JAMBA_LOG2E)); }

/* All blocks of the grid meet (cooperative groups' scheme): every block adds to a u32 count once, block 0
 * 2^31 - (nblk - 1) and the others 1, so that bit 31 flips exactly at the last arrival and the low bits end where they
 * began (0 in a zeroed workspace, whatever nblk each call has); a block waits for bit 31 to differ from the value its
 * own add returned. Thread 0 arrives (release) and waits (acquire) for its block, between two __syncthreads. */
__device__ __forceinline__ void ms_grid_sync(unsigned *bar, unsigned nblk) {
    __syncthreads();
    if (threadIdx.x == 0) {
        const unsigned add = blockIdx.x == 0 ? 0x80000000u - (nblk - 1u) : 1u;
        unsigned old, c;
        asm volatile("atom.release.gpu.global.add.u32 %0, [%1], %2;" : "=r"(old) : "l"(bar), "r"(add) : "memory");
        do {
            asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(c) : "l"(bar) : "memory");
        } while (((c ^ old) & 0x80000000u) == 0u);
    }
    __syncthreads();
}

/* dev timing (a.tim set): thread 0 of each block stamps point k */
__device__ __forceinline__ void ms_stamp(const ms_args &a, int k) {
    if (a.tim && threadIdx.x == 0) {
        long long g;
        asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(g));
        a.tim[blockIdx.x * 16 + k] = g;
        a.tim[blockIdx.x * 16 + 8 + k] = clock64();
    }
}

template <typename T, int N>
__global__ void __launch_bounds__(MS_THREADS, 1) mamba_step_kernel(ms_args a) {
    jamba_pdl_weights_first(); /* weights (x_proj, dt_proj, A, D, dt_bias) are loaded before the wait */
    typedef jamba_w16<T> P;
    constexpr int VN = 16 / (int)sizeof(T);
    constexpr int LPR = MS_CPB / VN;           /* lanes per x_proj row: 8 (16-bit T) or 16 (f32) */
    constexpr int RPP = MS_THREADS / LPR;      /* x_proj rows per pass */
    constexpr int NPX = MS_MAXNO / RPP;        /* passes: 10 or 20 */
    constexpr int NWD = MS_MAXR / VN / 4;      /* dt_proj vectors per thread: 8 or 16 */
    constexpr int TPN = N / 4;                 /* state-update lanes per channel */
    __shared__ float s_xc[MS_MAXB][MS_CPB];    /* conv outputs (rounded to T) */
    __shared__ float s_n[MS_MAXB][MS_MAXNO];   /* normalised xdbl (rounded to T) */
    __shared__ float s_dl[MS_MAXB][MS_CPB];    /* delta (rounded to T) */
    const int t = threadIdx.x, lane = t & 31, warp = t >> 5;
    const int blk = blockIdx.x, c0 = blk * MS_CPB;
    const int cw = a.DI - c0 < MS_CPB ? a.DI - c0 : MS_CPB;
    const int B = a.B, NO = a.NO, R = a.R;
    const int xv = t % LPR, xr = t / LPR; /* x_proj: vector of a row, row within a pass */
    const int dcl = t >> 2, dq = t & 3;   /* dt_proj: channel of the block, lane of the channel */
    const int nvr = R / VN;
    const uint4 zero4 = make_uint4(0u, 0u, 0u, 0u);

    /* 1. weights into registers, before the PDL wait */
    uint4 wx[NPX], wd[NWD];
#pragma unroll
    for (int i = 0; i < NPX; i++) {
        const int o = i * RPP + xr;
        wx[i] = (o < NO && xv * VN < cw) ? gemv_ld_stream((const T *)a.wx + (int64_t)o * a.DI + c0 + xv * VN) : zero4;
    }
#pragma unroll
    for (int i = 0; i < NWD; i++) {
        const int v = dq + 4 * i;
        wd[i] = (v < nvr && dcl < cw) ? gemv_ld_stream((const T *)a.wdt + (int64_t)(c0 + dcl) * R + v * VN) : zero4;
    }
    /* the state update's weights (4c.): channel scl of the block, states 4 sq .. 4 sq + 3 */
    const int scl = t / TPN, sq = t % TPN, sc = c0 + scl;
    const bool sv = scl < MS_CPB && scl < cw;
    float4 Aq = make_float4(0.f, 0.f, 0.f, 0.f);
    float Dc = 0.f, dtb = 0.f;
    if (sv) {
        Aq = *(const float4 *)(a.A + (int64_t)sc * N + 4 * sq);
        if (a.D) Dc = a.D[sc];
        if (a.dtb) dtb = a.dtb[sc];
    }

    jamba_pdl_begin(); /* from here on: activations, states and the workspace */
    ms_stamp(a, 0);
    float4 hs[MS_MAXB];
    float zs[MS_MAXB];
#pragma unroll
    for (int b = 0; b < MS_MAXB; b++) {
        const bool ok = sv && b < B;
        hs[b] = ok ? *(const float4 *)(a.ssm + ((int64_t)b * a.DI + sc) * N + 4 * sq) : make_float4(0.f, 0.f, 0.f, 0.f);
        zs[b] = ok && sq == 0 && a.z ? jamba_ld<T>(((const T *)a.z)[b * a.sz + sc]) : 0.f;
    }
    /* conv update of (b, channel) pairs */
    for (int i = t; i < B * MS_CPB; i += MS_THREADS) {
        const int b = i / MS_CPB, cl = i % MS_CPB, c = c0 + cl;
        float xcv = 0.f;
        if (cl < cw) {
            T *st = (T *)a.conv_state + b * a.scs0 + (int64_t)c * a.scs1;
            const T xnew = ((const T *)a.x)[b * a.sx + c];
            float acc = a.cb ? jamba_ld<T>(((const T *)a.cb)[c]) : 0.f;
            const T *w = (const T *)a.cw + (int64_t)c * a.K;
            /* window h[S + 1 - K .. S] of h = concat(state, x) (S >= K - 1) */
            for (int j = 0; j < a.K; j++) {
                const int hi = a.S + 1 - a.K + j;
                acc = fmaf(jamba_ld<T>(w[j]), jamba_ld<T>(hi == a.S ? xnew : st[hi]), acc);
            }
            xcv = jamba_round<T>(ms_conv_silu(acc));
            for (int j = 0; j < a.S; j++) st[j] = j + 1 < a.S ? st[j + 1] : xnew; /* in place: each read is ahead */
        }
        s_xc[b][cl] = xcv;
    }
    __syncthreads();
    ms_stamp(a, 1);

    /* 2. x_proj partial sums of this block's channels (this thread's VN channels of xc in registers) */
    float xq[MS_MAXB][VN];
#pragma unroll
    for (int b = 0; b < MS_MAXB; b++)
#pragma unroll
        for (int e = 0; e < VN; e++) xq[b][e] = b < B ? s_xc[b][xv * VN + e] : 0.f;
#pragma unroll
    for (int i = 0; i < NPX; i++) {
        const int o = i * RPP + xr;
        if (i * RPP >= NO) break; /* uniform: no row of this pass exists */
        float wf[VN];
        P::ld(wx[i], wf);
#pragma unroll
        for (int b = 0; b < MS_MAXB; b++) {
            if (b >= B) break;
            float acc = 0.f;
#pragma unroll
            for (int e = 0; e < VN; e++) acc = fmaf(wf[e], xq[b][e], acc);
#pragma unroll
            for (int m = 1; m < LPR; m <<= 1) acc += __shfl_xor_sync(JAMBA_FULL_MASK, acc, m);
            if (xv == 0 && o < NO) a.part[((int64_t)blk * B + b) * NO + o] = acc;
        }
    }
    ms_stamp(a, 2);
    ms_grid_sync(a.bar, (unsigned)a.nblk);
    ms_stamp(a, 3);

    /* 3. xdbl = round_T(sum of the blocks' parts), one warp a column, blocks in order */
    for (int j = blk * (MS_THREADS / 32) + warp; j < B * NO; j += a.nblk * (MS_THREADS / 32)) {
        const int b = j / NO, o = j % NO;
        float s = 0.f;
        for (int k = lane; k < a.nblk; k += 32) s += __ldcg(a.part + ((int64_t)k * B + b) * NO + o);
        s = jamba_warp_sum(s);
        if (lane == 0) a.xdbl[j] = jamba_round<T>(s);
    }
    ms_grid_sync(a.bar, (unsigned)a.nblk);
    ms_stamp(a, 4);

    /* 4a. the dt / B / C norms of every row (segment (b, g) per warp) */
    for (int j = warp; j < B * 3; j += MS_THREADS / 32) {
        const int b = j / 3, g = j % 3;
        const int s0 = g == 0 ? 0 : g == 1 ? R : R + N, s1 = g == 0 ? R : g == 1 ? R + N : NO;
        float ss = 0.f;
        for (int o = s0 + lane; o < s1; o += 32) {
            const float v = __ldcg(a.xdbl + b * NO + o);
            s_n[b][o] = v;
            ss = fmaf(v, v, ss);
        }
        const float inv = rsqrtf(jamba_warp_sum(ss) / (float)(s1 - s0) + a.eps);
        __syncwarp();
        for (int o = s0 + lane; o < s1; o += 32)
            s_n[b][o] = jamba_round<T>(jamba_round<T>(s_n[b][o] * inv) * jamba_ld<T>(((const T *)a.nw)[o]));
    }
    __syncthreads();
    ms_stamp(a, 5);

    /* 4b. dt_proj of this block's channels: delta[b, c] = round_T(dt_n[b] . dtproj_weight[c]) */
    for (int b = 0; b < B; b++) {
        float acc = 0.f;
#pragma unroll
        for (int i = 0; i < NWD; i++) {
            const int v = dq + 4 * i;
            if (v < nvr) {
                float wf[VN];
                P::ld(wd[i], wf);
#pragma unroll
                for (int e = 0; e < VN; e++) acc = fmaf(wf[e], s_n[b][v * VN + e], acc);
            }
        }
        acc += __shfl_xor_sync(JAMBA_FULL_MASK, acc, 1);
        acc += __shfl_xor_sync(JAMBA_FULL_MASK, acc, 2);
        if (dq == 0) s_dl[b][dcl] = jamba_round<T>(acc);
    }
    __syncthreads();
    ms_stamp(a, 6);

    /* 4c. state update: channel scl, states 4 sq .. 4 sq + 3 (TPN lanes a channel; state loaded in 1.) */
    if (MS_THREADS / TPN > MS_CPB && scl >= MS_CPB) return; /* N < 16: spare threads (no barrier below) */
#pragma unroll
    for (int b = 0; b < MS_MAXB; b++) {
        if (b >= B) break;
        float4 h = hs[b];
        const float xu = s_xc[b][scl];
        const float d = jamba_cu_softplus(s_dl[b][scl] + dtb);
        const float dxu = d * xu, dl2 = d * JAMBA_LOG2E;
        const float *Bn = &s_n[b][R + 4 * sq], *Cn = &s_n[b][R + N + 4 * sq];
        float y = 0.f;
        h.x = fmaf(jamba_cu_exp2(dl2 * Aq.x), h.x, dxu * Bn[0]);
        y = fmaf(h.x, Cn[0], y);
        h.y = fmaf(jamba_cu_exp2(dl2 * Aq.y), h.y, dxu * Bn[1]);
        y = fmaf(h.y, Cn[1], y);
        h.z = fmaf(jamba_cu_exp2(dl2 * Aq.z), h.z, dxu * Bn[2]);
        y = fmaf(h.z, Cn[2], y);
        h.w = fmaf(jamba_cu_exp2(dl2 * Aq.w), h.w, dxu * Bn[3]);
        y = fmaf(h.w, Cn[3], y);
        if (TPN >= 4) y += __shfl_xor_sync(JAMBA_FULL_MASK, y, 2);
        if (TPN >= 2) y += __shfl_xor_sync(JAMBA_FULL_MASK, y, 1);
        if (sv) {
            *(float4 *)(a.ssm + ((int64_t)b * a.DI + sc) * N + 4 * sq) = h;
            if (sq == 0) {
                float yo = fmaf(Dc, xu, y);
                if (a.z) yo *= jamba_cu_silu(zs[b]);
                ((T *)a.out)[(int64_t)b * a.DI + sc] = jamba_st<T>(yo);
            }
        }
    }
    ms_stamp(a, 7);
}

/* the env switch JAMBA_EXT_MAMBA_STEP_FUSED: "0" the five launches; "force" the fused kernel or an error saying why
 * not (tests); "nocoop" the fused kernel without the cooperative attribute (A/B); else (unset) the fused kernel where
 * it applies, the five launches elsewhere */
static int ms_mode(void) {
    const char *e = getenv("JAMBA_EXT_MAMBA_STEP_FUSED");
    if (!e) return 1;
    if (!strcmp(e, "0")) return 0;
    if (!strcmp(e, "force")) return 2;
    if (!strcmp(e, "nocoop")) return 3;
    return 1;
}

template <typename T, int N>
static jamba_status ms_launch_n(const ms_args &a, int device, cudaStream_t stream, bool *ran, int mode) {
    static int per_sm_of[64]; /* resident blocks per SM, per device (0: not asked yet; -1: the query failed) */
    int per_sm = device >= 0 && device < 64 ? per_sm_of[device] : 0;
    if (per_sm == 0) {
        if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, mamba_step_kernel<T, N>, MS_THREADS, 0) !=
            cudaSuccess) {
            (void)cudaGetLastError();
            per_sm = -1;
        }
        if (device >= 0 && device < 64) per_sm_of[device] = per_sm;
    }
    /* every block must be resident at once (the grid barriers): else *ran stays false, the five launches run */
    if (per_sm <= 0 || (int64_t)per_sm * jamba_cuda_sm_count(device) < a.nblk) {
        if (mode == 2)
            return jamba_set_error(JAMBA_ERR_UNSUPPORTED, "jamba.mamba_inner_step: %d blocks do not fit at once "
                                   "(%d per SM x %d SMs)", a.nblk, per_sm, jamba_cuda_sm_count(device));
        return JAMBA_OK;
    }
    if (mode == 3) {
        jamba_kernel_launch(mamba_step_kernel<T, N>, (unsigned)a.nblk, MS_THREADS, 0, stream, a);
        JAMBA_LAUNCH_CHECK("jamba.mamba_inner_step (mamba_step_kernel)", stream);
    } else {
        const cudaError_t e = jamba_kernel_launch_coop(mamba_step_kernel<T, N>, (unsigned)a.nblk, MS_THREADS, 0,
                                                       stream, a);
        if (e != cudaSuccess) { /* refused (e.g. not co-resident): the five launches, or the reason (force) */
            if (mode == 2)
                return jamba_set_error(JAMBA_ERR_CUDA, "jamba.mamba_inner_step: the cooperative launch failed: %s",
                                       cudaGetErrorString(e));
            return JAMBA_OK;
        }
    }
    *ran = true;
    return JAMBA_OK;
}

/* the kernel instance for d_state a.N (4, 8 or 16) */
template <typename T>
static jamba_status ms_launch_b(const ms_args &a, int device, cudaStream_t stream, bool *ran, int mode) {
    switch (a.N) {
    case 4: return ms_launch_n<T, 4>(a, device, stream, ran, mode);
    case 8: return ms_launch_n<T, 8>(a, device, stream, ran, mode);
    default: return ms_launch_n<T, 16>(a, device, stream, ran, mode);
    }
}

template <typename T>
static jamba_status ms_launch(const jamba_mamba_inner_step_params *p, int device, cudaStream_t stream, bool *ran) {
    const int64_t VN = 16 / (int64_t)sizeof(T);
    const int64_t B = p->x.shape[0], DI = p->x.shape[1], S = p->conv_state.shape[2], K = p->conv_weight.shape[1];
    const int64_t R = p->dt_rank, NO = p->xproj_weight.shape[0], N = p->A.shape[1];
    const int mode = ms_mode();
    if (mode == 0) return JAMBA_OK;
    const bool vec_ok = (p->x.shape[1] <= 1 || p->x.stride[1] == 1) && jamba_aligned16(p->xproj_weight.data) &&
                        jamba_aligned16(p->dtproj_weight.data) && jamba_aligned16(p->ssm_state.data) &&
                        jamba_aligned16(p->A.data) && p->A.stride[1] == 1 && p->A.stride[0] == N &&
                        (!p->D.data || p->D.stride[0] == 1) && (!p->dt_bias.data || p->dt_bias.stride[0] == 1);
    if (!p->work.data || B < 1 || B > MS_MAXB || (N != 4 && N != 8 && N != 16) || R % VN ||
        R > MS_MAXR || NO > MS_MAXNO || DI % VN || DI > INT32_MAX / 2 || !vec_ok) {
        if (mode == 2)
            return jamba_set_error(JAMBA_ERR_UNSUPPORTED, "jamba.mamba_inner_step: the fused kernel does not apply "
                                   "(workspace %s, B %lld <= %d, N %lld in {4, 8, 16}, R %lld: multiple of %lld and "
                                   "<= %d, NO %lld <= %d, DI %lld multiple of %lld, layout %s)",
                                   p->work.data ? "given" : "absent", (long long)B, MS_MAXB, (long long)N, (long long)R,
                                   (long long)VN, MS_MAXR, (long long)NO, MS_MAXNO, (long long)DI, (long long)VN,
                                   vec_ok ? "ok" : "not");
        return JAMBA_OK;
    }
    const int64_t nblk = jamba_ceil_div(DI, (int64_t)MS_CPB);
    const int64_t wel = jamba_mamba_inner_step_work_elems(DI, B, NO);
    if (p->work.shape[0] < wel) return JAMBA_OK; /* checked before */
    ms_args a;
    memset(&a, 0, sizeof a);
    a.out = p->out.data, a.conv_state = p->conv_state.data;
    a.x = p->x.data, a.z = p->z.data, a.cw = p->conv_weight.data, a.cb = p->conv_bias.data;
    a.wx = p->xproj_weight.data, a.nw = p->norm_weight.data, a.wdt = p->dtproj_weight.data;
    a.A = (const float *)p->A.data, a.D = (const float *)p->D.data, a.dtb = (const float *)p->dt_bias.data;
    a.ssm = (float *)p->ssm_state.data;
    a.bar = (unsigned *)p->work.data;
    a.part = (float *)((char *)p->work.data + 64);
    a.xdbl = a.part + nblk * B * NO;
    a.sx = p->x.stride[0], a.sz = p->z.data ? p->z.stride[0] : 0;
    a.scs0 = p->conv_state.stride[0], a.scs1 = p->conv_state.stride[1];
    a.B = (int)B, a.DI = (int)DI, a.S = (int)S, a.K = (int)K, a.R = (int)R, a.N = (int)N, a.NO = (int)NO;
    a.nblk = (int)nblk;
    a.eps = (float)p->eps;
    const char *te = getenv("JAMBA_EXT_MAMBA_STEP_TIMING"); /* dev: stamps after the workspace, if it has room */
    if (te && te[0] == '1' && p->work.shape[0] >= wel + nblk * 16) a.tim = (long long *)p->work.data + wel;
    return ms_launch_b<T>(a, device, stream, ran, mode);
}

extern "C" jamba_status jamba_mamba_inner_step_cuda(const jamba_mamba_inner_step_params *p, jamba_launch launch) {
    JAMBA_TRY(jamba_mamba_inner_step_check(p));
    if (p->x.shape[0] == 0 || p->x.shape[1] == 0) return JAMBA_OK;
    JAMBA_DEVICE_GUARD(launch);
    cudaStream_t stream = (cudaStream_t)launch.stream;
    bool ran = false;
    jamba_status s = JAMBA_ERR_DTYPE;
    JAMBA_DISPATCH_FLOAT(p->x.dtype, T, s = ms_launch<T>(p, launch.device, stream, &ran));
    if (s != JAMBA_OK || ran) return s;
    /* the five ops, one launch each */
    jamba_mamba_inner_step_parts q;
    jamba_mamba_inner_step_split(p, &q);
    JAMBA_TRY(jamba_causal_conv1d_update_cuda(&q.conv, launch));
    JAMBA_TRY(jamba_gemv_cuda(&q.xproj, launch));
    JAMBA_TRY(jamba_rms_norm_segments_cuda(&q.norm, launch));
    JAMBA_TRY(jamba_gemv_cuda(&q.dtproj, launch));
    return jamba_selective_state_update_cuda(&q.ssu, launch);
}
