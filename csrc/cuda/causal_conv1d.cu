/* causal_conv1d.cu -- depthwise causal conv1d over time and its decode-step update, on CUDA.
 *
 * Exports: jamba_causal_conv1d_cuda, jamba_causal_conv1d_update_cuda (checks: csrc/cpu/causal_conv1d.c).
 * Math (both, as csrc/cpu/causal_conv1d.c): over the history h = concat(state, x) of one channel c,
 *   out[t] = act(bias[c] + sum_{j<K} w[c,j] * h[t - (K-1) + j]),   act = silu or identity
 * causal_conv1d : state = initial_state (or zeros); final_state = last S_out entries of h.
 * _update       : state = conv_state (B, DI, S), S >= K-1, rewritten in place as the last S entries of h.
 * The taps are kept right-aligned in a 4-wide register array (wpad[4-K+j] = w[j], the rest 0), so one
 * code path serves K = 2..4 with constant register indices. fp32 accumulation, one rounding at the end.
 *
 * Kernels (shapes and layouts at each): causal_conv1d_fwd_kernel (the forward, every shape: one warp = 4
 * consecutive row segments of 32 lanes x 4 16-byte vectors, halo through warp shuffles, the next segment's
 * loads in flight while one is computed, no shared memory; element loads/stores when the rows are not
 * 16-byte vectors), causal_conv1d_update_vec_kernel (L == 1, S == 4: one thread = 4 channels of 1 or 2 batch
 * rows, 16-byte state rows), causal_conv1d_update_kernel (any other update: one thread per channel).
 * Why this forward (A/B round at eaa685c, benchmarks/results/gpu_round_eaa685c.log, H200, bf16, DI 8192,
 * graph-timed): of six variants it was fastest at 1x32768 / 8x2048 (275.8 / 141.5 us, 91.1% / 88.8% of copy
 * bandwidth, against 288.7 / 153.6 for one segment per warp) and within 1% of the best at 1x8192 (74.1 us
 * vs 73.7; 78.5 before), 23.7 us at 1x2048 (24.4 before; the one-wave 512-step variant: 21.1).
 * Weight and bias dtypes: the VEC forward and the vec update kernel are instantiated per (weight, bias) dtype pair
 * (template parameters W, BT = float or T; conv_fwd_vec_kernel, conv_update_vec_kernel pick one), so that a thread's
 * taps and bias loads go out together. Through the run-time dtype switch (jamba_ld_any, still used by the
 * element-load forward and the per-channel update) each load was converted behind its own branch, one L2 round
 * trip after another: A/B in one binary (gpu_round_aa2c3a2.log, H200 bf16, graph-timed, us, switch vs typed):
 * forward 1x2048 23.3 / 20.3, 1x8192 71.5 / 67.5, 1x32768 274.0 / 258.9, 8x2048 140.0 / 131.7; update batch 1 / 16
 * / 64 / 256: 1.9 / 1.4, 2.3 / 1.9, 4.1 / 3.6, 9.4 / 8.6. Same bits.
 * SiLU: v / (1 + 2^(-v log2 e)) with ex2.approx.ftz and __fdividef (~2 ulp) in the forward and vec kernels;
 * __expf and an IEEE division in causal_conv1d_update_kernel.
 */
#include <string.h>

#include <type_traits>

#include "common.cuh"

/* q = v / d, r = v % d for 0 <= v < n (all threads of a launch see the same n): 32-bit division when n
 * fits (the 64-bit one is a ~100-instruction subroutine) */
__device__ __forceinline__ void conv_split(int64_t v, int64_t d, int64_t n, int64_t *q, int64_t *r) {
    if (n <= (int64_t)0xffffffffu) {
        const uint32_t v32 = (uint32_t)v, d32 = (uint32_t)d, q32 = v32 / d32;
        *q = q32, *r = v32 - q32 * d32;
    } else {
        *q = v / d, *r = v - *q * d;
    }
}

/* 16-byte store (a plain uint4 store of vector 0 came out of nvvm as four 4-byte stores) */
__device__ __forceinline__ void conv_st16(void *p, uint4 v) {
    asm volatile("st.global.v4.u32 [%0], {%1, %2, %3, %4};" ::"l"(p), "r"(v.x), "r"(v.y), "r"(v.z), "r"(v.w)
                 : "memory");
}

/* silu with the fast division and exp2: v / (1 + 2^(-v log2 e)); 0 (the limit) where the exponential
 * overflows, v where it is below 2^-126 (flushed to 0) */
__device__ __forceinline__ float conv_silu(float v) { return __fdividef(v, 1.f + jamba_cu_exp2(-v * JAMBA_LOG2E)); }

struct conv_args {
    void *out, *fin;
    const void *x, *w, *bias, *init;
    int64_t B, DI, L, K, S_in, S_out;
    int64_t sx0, sx1;           /* x strides (batch, channel); unit along L */
    int64_t sw0, sw1, sb;       /* weight (DI, K) and bias strides */
    int64_t si0, si1, sf0, sf1; /* initial/final state strides (batch, channel); unit along S */
    int wdt, bdt, silu;
};

/* element i of a weight / bias tensor as fp32: W = void: its run-time dtype (dt: JAMBA_F32 or x's); W = float
 * or T: that type, without the run-time branch (the VEC forward and the vec update instances) */
template <typename W>
__device__ __forceinline__ float conv_ld(const void *p, int dt, int64_t i) {
    if constexpr (std::is_void<W>::value)
        return jamba_ld_any(p, dt, i);
    else
        return jamba_ld<W>(((const W *)p)[i]);
}

/* right-aligned taps of channel c and its bias (fp32); W, BT: conv_ld's */
template <typename W = void, typename BT = void>
__device__ __forceinline__ void conv_taps(const void *w, int wdt, int64_t sw0, int64_t sw1, int64_t K,
                                          const void *bias, int bdt, int64_t sb, int64_t c, float wp[4],
                                          float *bv) {
#pragma unroll
    for (int m = 0; m < 4; m++) {
        const int64_t j = m - (4 - K);
        wp[m] = j >= 0 ? conv_ld<W>(w, wdt, c * sw0 + j * sw1) : 0.f;
    }
    *bv = bias ? conv_ld<BT>(bias, bdt, c * sb) : 0.f;
}

#define CONV_NV 4    /* 16-byte vectors per lane and segment */
#define CONV_WARPS 4 /* warps per block */
#define CONV_SPW 4   /* segments per warp */
#define CONV_MINB 6  /* resident blocks per SM asked of ptxas for the VEC instances (<= 80 registers) */

/* this lane's CONV_NV vectors of one segment of row x (tl: the first step of its vector 0): whole 16-byte
 * vectors (VEC) or elements, zero bits past L */
template <typename T, bool VEC>
__device__ __forceinline__ void conv_seg_load(uint4 (&v)[CONV_NV], const T *x, int64_t tl, int64_t L) {
    const int VN = 16 / (int)sizeof(T);
#pragma unroll
    for (int j = 0; j < CONV_NV; j++) {
        const int64_t t = tl + j * 32 * VN;
        if (VEC) {
            v[j] = t < L ? *(const uint4 *)(x + t) : make_uint4(0u, 0u, 0u, 0u);
        } else { /* element loads of the raw bits (zero bits = 0.0 past L) */
            uint32_t u[4];
#pragma unroll
            for (int q = 0; q < 4; q++) {
                if (sizeof(T) == 4) {
                    u[q] = t + q < L ? *(const uint32_t *)(x + t + q) : 0u;
                } else {
                    const uint32_t lo = t + 2 * q < L ? *(const unsigned short *)(x + t + 2 * q) : 0u;
                    const uint32_t hi = t + 2 * q + 1 < L ? *(const unsigned short *)(x + t + 2 * q + 1) : 0u;
                    u[q] = lo | (hi << 16);
                }
            }
            v[j] = make_uint4(u[0], u[1], u[2], u[3]);
        }
    }
}

/* h[t0-3 .. t0-1] of a row: x before t0 (t0 > 0), else initial_state (S_in entries, unit stride) or zeros; one
 * predicated load per entry (the source is chosen before the load, so the three loads go out together) */
template <typename T>
__device__ __forceinline__ void conv_halo(float prev[3], const T *x, const T *init, int64_t S_in, int64_t t0) {
#pragma unroll
    for (int m = 0; m < 3; m++) {
        const int64_t t = t0 - 3 + m;
        const T *src = t >= 0 ? x + t : (init != NULL && S_in + t >= 0 ? init + (S_in + t) : NULL);
        prev[m] = src != NULL ? jamba_ld<T>(*src) : 0.f;
    }
}

/* halo shuffles, fp32 sums, silu and stores of one segment.
 * prev: lane 0's halo in; out: lane 31's last 3 steps (the halo of the next segment of the row) */
template <typename T, bool VEC>
__device__ __forceinline__ void conv_seg_compute(const uint4 (&v)[CONV_NV], float prev[3], const float wp[4],
                                                 float bv, int silu, T *out, int64_t tl, int64_t L, int lane) {
    typedef jamba_w16<T> P;
    const int VN = 16 / (int)sizeof(T);
    const int QF = (VN - 3) * (int)sizeof(T) / 4; /* first 32-bit word holding one of the last 3 elements */
    const int src = (lane + 31) & 31;
#pragma unroll
    for (int j = 0; j < CONV_NV; j++) {
        /* lane l-1's vector j (lane 0: lane 31's), only the words holding its last 3 elements */
        uint4 nb = make_uint4(0u, 0u, 0u, 0u);
        nb.w = __shfl_sync(JAMBA_FULL_MASK, v[j].w, src);
        if (QF <= 2) nb.z = __shfl_sync(JAMBA_FULL_MASK, v[j].z, src);
        if (QF <= 1) nb.y = __shfl_sync(JAMBA_FULL_MASK, v[j].y, src);
        float hn[16 / sizeof(T)], win[3 + 16 / sizeof(T)]; /* win[m] = h[t - 3 + m] */
        P::ld(nb, hn);
#pragma unroll
        for (int m = 0; m < 3; m++) {
            win[m] = lane ? hn[VN - 3 + m] : prev[m];
            prev[m] = hn[VN - 3 + m]; /* lane 0: lane 31's vector j, the halo of its vector j+1 */
        }
        P::ld(v[j], win + 3);
        float o[16 / sizeof(T)];
#pragma unroll
        for (int e = 0; e < VN; e++) {
            float acc = bv;
#pragma unroll
            for (int m = 0; m < 4; m++) acc = fmaf(wp[m], win[e + m], acc);
            o[e] = acc;
        }
        if (silu) {
#pragma unroll
            for (int e = 0; e < VN; e++) o[e] = conv_silu(o[e]);
        }
        const int64_t t = tl + j * 32 * VN;
        if (VEC) {
            if (t < L) conv_st16(out + t, P::st(o));
        } else {
#pragma unroll
            for (int e = 0; e < VN; e++)
                if (t + e < L) out[t + e] = jamba_st<T>(o[e]);
        }
    }
}

/* causal_conv1d_fwd_kernel<T, VEC, W, BT>
 *   x (B, DI, L) T, unit stride along L; out (B, DI, L) T contiguous; w (DI, K), bias (DI,) f32|T (W, BT: their
 *   types, or void = read at run time, which the element-load instances do);
 *   initial_state (B, DI, S_in >= K-1) T, unit stride along S; final_state (B, DI, S_out) T, unit stride.
 *   Segment: SEG = 32 * CONV_NV * VN steps of one (b, c) row (1024 in bf16/f16, 512 in f32); lane l of a
 *   warp owns the VN-step vectors j*32 + l, j < CONV_NV (each load instruction of the warp reads 512
 *   contiguous bytes). Vector (j, l) takes the 3 steps before it from lane l-1's vector j, and lane 0 from
 *   lane 31's vector j-1, both through one __shfl_sync of the words holding them.
 *   VEC: x and out rows 16-byte aligned and L % VN == 0 (vectors are whole or past L); else element loads
 *   and stores with the same mapping.
 *   Grid: CONV_WARPS warps per block (not persistent: the hardware schedules the blocks). Warp p < p1 takes
 *   the spw consecutive virtual warps vw = (b*DI + c) * nseg + seg in [p * spw, +spw), the warps after p1 one
 *   each (the launch's last wave or more, see the launcher), cut at nvw = B * DI * nseg, i.e. the segments of a
 *   row in order, then the next row: (b, c, seg) advance by increments (2 divisions per warp, not per segment),
 *   taps and bias are reloaded only at a row start, and lane 0's halo of a segment with seg > 0 is the tail of
 *   the previous one, already in registers (at a row start: initial_state or zeros).
 *   Register double buffer: the loads of segment i+1 (x; at a row start also taps, bias and the
 *   initial-state halo) are issued before segment i is computed and stored, so a warp keeps up to
 *   2 x CONV_NV x 16 bytes per lane in flight and never waits for memory with nothing loaded.
 *   The warp holding a row's last segment writes final_state (from x / initial_state, before its stores of
 *   out). Warp, batch, channel and segment counters are 32-bit: the launcher requires nvw <= INT32_MAX. */
template <typename T, bool VEC, typename W = void, typename BT = void>
__global__ void __launch_bounds__(CONV_WARPS * 32, VEC ? CONV_MINB : 1)
    causal_conv1d_fwd_kernel(conv_args a, int nseg, int spw, int p1) {
    jamba_pdl_begin();
    const int VN = 16 / (int)sizeof(T);
    const int SEG = 32 * CONV_NV * VN;
    const int lane = threadIdx.x & 31;
    const int p = blockIdx.x * CONV_WARPS + (threadIdx.x >> 5);
    /* warps p < p1 take spw segments each, the later ones (the tail of the launch) one each */
    const int64_t nvw = a.B * a.DI * nseg;
    const int64_t vw0 = p < p1 ? (int64_t)p * spw : (int64_t)p1 * spw + (p - p1);
    const int64_t left = nvw - vw0;
    int n = p < p1 ? spw : 1; /* segments of this warp */
    if (left < n) n = (int)(left > 0 ? left : 0);
    if (n <= 0) return;
    int64_t seg64, bc64, b64, c64;
    conv_split(vw0, nseg, nvw, &bc64, &seg64);
    conv_split(bc64, a.DI, nvw, &b64, &c64);
    int seg = (int)seg64, b = (int)b64, c = (int)c64;
    const T *x = (const T *)a.x + b64 * a.sx0 + c64 * a.sx1; /* row (b, c) of x */
    T *out = (T *)a.out + bc64 * a.L;                         /* row (b, c) of out */
    const T *init = a.init ? (const T *)a.init + b64 * a.si0 + c64 * a.si1 : NULL;
    uint4 v[CONV_NV];
    float wp[4], bv, prev[3];
    conv_seg_load<T, VEC>(v, x, (int64_t)seg * SEG + lane * VN, a.L);
    conv_taps<W, BT>(a.w, a.wdt, a.sw0, a.sw1, a.K, a.bias, a.bdt, a.sb, c, wp, &bv);
    conv_halo<T>(prev, x, init, a.S_in, (int64_t)seg * SEG);
    for (;;) {
        const bool more = --n > 0;
        const bool newrow = seg + 1 == nseg; /* the next segment (if any) starts row bc + 1 */
        const int64_t tl = (int64_t)seg * SEG + lane * VN;
        if (a.fin && newrow) { /* last segment of row (b, c): final_state from x / initial_state (no store
                                * of out before it: it only reads x) */
            T *fin = (T *)a.fin + b * a.sf0 + c * a.sf1;
            for (int64_t jj = lane; jj < a.S_out; jj += 32) {
                const int64_t t = a.L - a.S_out + jj; /* position in x; < 0: in the initial state */
                float h = 0.f;
                if (t >= 0) h = jamba_ld<T>(x[t]);
                else if (init && a.S_in + t >= 0) h = jamba_ld<T>(init[a.S_in + t]);
                fin[jj] = jamba_st<T>(h);
            }
        }
        uint4 nv[CONV_NV];
        float nwp[4], nbv = 0.f, nprev[3];
        if (more) { /* every load of segment i+1 before the first store of out in segment i */
            if (newrow) {
                seg = 0;
                if (++c == a.DI) c = 0, b++;
                x = (const T *)a.x + (int64_t)b * a.sx0 + (int64_t)c * a.sx1;
                if (init) init = (const T *)a.init + (int64_t)b * a.si0 + (int64_t)c * a.si1;
            } else {
                seg++;
            }
            conv_seg_load<T, VEC>(nv, x, (int64_t)seg * SEG + lane * VN, a.L);
            if (newrow) {
                conv_taps<W, BT>(a.w, a.wdt, a.sw0, a.sw1, a.K, a.bias, a.bdt, a.sb, c, nwp, &nbv);
                conv_halo<T>(nprev, x, init, a.S_in, 0);
            }
        }
        conv_seg_compute<T, VEC>(v, prev, wp, bv, a.silu, out, tl, a.L, lane);
        if (!more) break;
#pragma unroll
        for (int j = 0; j < CONV_NV; j++) v[j] = nv[j];
        if (newrow) { /* else prev already holds the tail of segment i (lane 0: from lane 31) */
#pragma unroll
            for (int m = 0; m < 4; m++) wp[m] = nwp[m];
            bv = nbv;
#pragma unroll
            for (int m = 0; m < 3; m++) prev[m] = nprev[m];
            out += a.L; /* out rows are contiguous: row bc + 1 follows row bc */
        }
    }
}

/* the VEC forward instance for the weight / bias dtypes (f32 or T; no bias: T): typed taps / bias loads (see the
 * header) */
template <typename T>
static void (*conv_fwd_vec_kernel(bool wf32, bool bf32))(conv_args, int, int, int) {
    if (sizeof(T) == 4 || (wf32 && bf32)) return causal_conv1d_fwd_kernel<T, true, float, float>;
    if (wf32) return causal_conv1d_fwd_kernel<T, true, float, T>;
    if (bf32) return causal_conv1d_fwd_kernel<T, true, T, float>;
    return causal_conv1d_fwd_kernel<T, true, T, T>;
}

template <typename T>
static jamba_status causal_conv1d_launch(const conv_args &a, int device, cudaStream_t stream) {
    const int VN = 16 / (int)sizeof(T);
    const int64_t es = (int64_t)sizeof(T), seg = 32 * CONV_NV * VN;
    if (a.L == 0 && !a.fin) return JAMBA_OK; /* nothing to write */
    const int64_t nseg = a.L > 0 ? jamba_ceil_div(a.L, seg) : 1;
    const int64_t nvw = a.B * a.DI * nseg;
    /* B*DI*L >= 2^31 * 1024 elements (2^31 * 512 in f32) when L >= one segment; only rows of less than a
     * segment (>= 2^31 rows, e.g. L = 1: 4 GiB of bf16 x) get here below that */
    if (nvw > (int64_t)INT32_MAX)
        return jamba_set_error(JAMBA_ERR_ARG,
                               "jamba.causal_conv1d: batch*d_inner*ceil(seqlen/%lld) = %lld row segments, more "
                               "than the kernel's 32-bit counters allow (2^31-1)",
                               (long long)seg, (long long)nvw);
    const bool vec = a.L % VN == 0 && jamba_aligned16(a.x) && jamba_aligned16(a.out) &&
                     (a.B <= 1 || (a.sx0 * es) % 16 == 0) && (a.DI <= 1 || (a.sx1 * es) % 16 == 0);
    /* Schedule (measured, gpu_round_7dc2073.log): CONV_SPW segments per warp, except that the last wave's worth
     * of segments (one resident wave = SMs x CONV_MINB blocks x CONV_WARPS warps) go one per warp, so the
     * launch does not end on a ragged wave of 4-segment warps: 1x8192 74.5 -> 72.5 us, 8x2048 142.1 -> 140.6,
     * 1x2048 24.5 -> 22.8 (graph-timed, H200 bf16). */
    const int64_t spw = CONV_SPW;
    const int64_t slots = (int64_t)jamba_cuda_sm_count(device) * CONV_MINB * CONV_WARPS; /* one resident wave */
    const int64_t tail = slots < nvw ? slots : nvw;
    /* p1 warps with spw segments, then one segment each for the rest. Whole waves of spw-segment warps: where the
     * last one would be less than half full, its segments go one per warp as well (A/B in one binary,
     * conv_sched_1e51c87.log, graph-timed, H200 bf16, us, without / with: 1x2048 20.2-20.5 / 19.0 (3304 -> 3168
     * four-segment warps: the 136 after the first wave ran alone for 4 segments), 8x2048 132.7-133.0 / 132.7, 1x32768
     * 258.9-259.3 / 259.6; 1x8192 is unchanged by the rule). Kept to launches of at least one such wave. */
    int64_t p1 = (nvw - tail) / spw;
    if (p1 >= slots && p1 % slots < slots / 2) p1 -= p1 % slots;
    const int64_t warps = p1 + (nvw - p1 * spw);
    const int64_t grid = jamba_ceil_div(warps, (int64_t)CONV_WARPS); /* <= 2^29 */
    if (vec)
        jamba_kernel_launch(conv_fwd_vec_kernel<T>(a.wdt == JAMBA_F32, a.bias && a.bdt == JAMBA_F32), (unsigned)grid,
                            CONV_WARPS * 32, 0, stream, a, (int)nseg, (int)spw, (int)p1);
    else
        jamba_kernel_launch(causal_conv1d_fwd_kernel<T, false>, (unsigned)grid, CONV_WARPS * 32, 0, stream, a,
            (int)nseg, (int)spw, (int)p1);
    JAMBA_LAUNCH_CHECK("jamba.causal_conv1d: kernel launch", stream);
    return JAMBA_OK;
}

extern "C" jamba_status jamba_causal_conv1d_cuda(const jamba_causal_conv1d_params *p, jamba_launch launch) {
    JAMBA_TRY(jamba_causal_conv1d_check(p));
    const int64_t B = p->x.shape[0], DI = p->x.shape[1];
    if (B == 0 || DI == 0) return JAMBA_OK; /* L == 0 still writes final_state */
    JAMBA_DEVICE_GUARD(launch);
    conv_args a;
    memset(&a, 0, sizeof a);
    a.out = p->out.data;
    a.fin = p->final_state.data;
    a.x = p->x.data;
    a.w = p->weight.data;
    a.bias = p->bias.data;
    a.init = p->initial_state.data;
    a.B = B, a.DI = DI, a.L = p->x.shape[2], a.K = p->weight.shape[1];
    a.S_in = a.init ? p->initial_state.shape[2] : 0;
    a.S_out = a.fin ? p->final_state.shape[2] : 0;
    if (a.fin && a.S_out == 0) a.fin = NULL;
    a.sx0 = p->x.stride[0], a.sx1 = p->x.stride[1];
    a.sw0 = p->weight.stride[0], a.sw1 = p->weight.stride[1];
    a.sb = a.bias ? p->bias.stride[0] : 0;
    if (a.init) a.si0 = p->initial_state.stride[0], a.si1 = p->initial_state.stride[1];
    if (a.fin) a.sf0 = p->final_state.stride[0], a.sf1 = p->final_state.stride[1];
    a.wdt = (int)p->weight.dtype;
    a.bdt = a.bias ? (int)p->bias.dtype : JAMBA_F32;
    a.silu = p->silu;
    cudaStream_t stream = (cudaStream_t)launch.stream;
    jamba_status s = JAMBA_ERR_DTYPE;
    JAMBA_DISPATCH_FLOAT(p->x.dtype, T, s = causal_conv1d_launch<T>(a, launch.device, stream));
    return s;
}

/* ---- decode update ------------------------------------------------------------------------------ */
struct conv_update_args {
    void *out, *state;
    const void *x, *w, *bias;
    int64_t B, DI, L, K, S;
    int64_t sx0, sx1, sx2;      /* x strides (any) */
    int64_t ss0, ss1;           /* conv_state strides (batch, channel); unit along S */
    int64_t sw0, sw1, sb;
    int wdt, bdt, silu;
};

/* causal_conv1d_update_kernel
 *   x (B, DI, L) T any strides; out (B, DI, L) T contiguous; conv_state (B, DI, S) T, unit stride along S,
 *   rewritten in place; w (DI, K), bias (DI,) f32|T.
 *   One thread per (b, c) (flat index on grid.x, adjacent threads = adjacent channels): a 4-wide sliding
 *   window win = h[S+t-3 .. S+t] over h = concat(state, x), then state <- last S entries of h, written in
 *   increasing order (each write reads a later entry, so in place is safe); for S <= 4 straight from the
 *   window registers. */
template <typename T>
__global__ void __launch_bounds__(128) causal_conv1d_update_kernel(conv_update_args a) {
    jamba_pdl_begin();
    const int64_t bc = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (bc >= a.B * a.DI) return;
    const int64_t c = bc % a.DI, b = bc / a.DI;
    T *st = (T *)a.state + b * a.ss0 + c * a.ss1;
    const T *x = (const T *)a.x + b * a.sx0 + c * a.sx1;
    T *out = (T *)a.out + bc * a.L;
    float wp[4], bv;
    conv_taps(a.w, a.wdt, a.sw0, a.sw1, a.K, a.bias, a.bdt, a.sb, c, wp, &bv);
    float win[4];
#pragma unroll
    for (int m = 1; m < 4; m++) {
        const int64_t q = a.S - 4 + m; /* h index of win[m] before the first shift */
        win[m] = q >= 0 ? jamba_ld<T>(st[q]) : 0.f;
    }
    for (int64_t t = 0; t < a.L; t++) {
        win[0] = win[1], win[1] = win[2], win[2] = win[3];
        win[3] = jamba_ld<T>(x[t * a.sx2]);
        float acc = bv;
#pragma unroll
        for (int m = 0; m < 4; m++) acc = fmaf(wp[m], win[m], acc);
        out[t] = jamba_st<T>(a.silu ? jamba_cu_silu(acc) : acc);
    }
    if (a.L == 0) return;
    if (a.S <= 4) { /* the new state is the end of the window: no reload (win[m] = h[S+L-4+m], all real) */
#pragma unroll
        for (int m = 0; m < 4; m++)
            if (m >= 4 - a.S) st[m - (4 - a.S)] = jamba_st<T>(win[m]);
        return;
    }
    for (int64_t i = 0; i < a.S; i++) {
        const int64_t src = a.L + i; /* h index of the new state[i] */
        st[i] = src < a.S ? st[src] : x[(src - a.S) * a.sx2];
    }
}

/* causal_conv1d_update_vec_kernel<T, W, BT, NB, CPT, HF>: the decode step in the HF cache layout, L == 1 and S == 4.
 *   x (B, DI, 1) T any strides (xvec: unit channel stride, the CPT channels = one 4/8/16-byte load); out (B, DI, 1)
 *   T contiguous, 16-byte aligned; conv_state (B, DI, 4) T with rows of 4 contiguous entries (ss1 == 4),
 *   16-byte aligned groups of 4 rows; w (DI, K), bias (DI,) f32|T (wvec: K == 4, unit tap stride, rows
 *   aligned: one 8/16-byte load per channel; wvec >= 2 with 16-bit taps: rows contiguous and 16-byte aligned, two
 *   channels' taps per 16-byte load; wvec == 3: also the CPT biases, 16-bit and contiguous, in one 4/8-byte
 *   load; else conv_taps). DI % 4 == 0.
 *   One thread = channels c..c+CPT-1 of batch rows NB*bt .. NB*bt+NB-1 (< B; NB = 1 or 2) (flat (bt, channel group)
 *   index on grid.x, channel groups fastest, 128 threads per block; HF: see below): the taps and bias once, then per
 *   batch row the CPT state rows (CPT * 4 * sizeof(T) bytes: NQ 16-byte loads) and x, all loaded before the first
 *   store; new row = (h1, h2, h3, x) moved as raw bits (exact); win = (h1, h2, h3, x).
 *   CPT = 4 / sizeof(T) ("p16": one 16-byte state piece per thread and row, so that every state load and store of a
 *   warp covers 512 contiguous bytes; with CPT = 4 a thread's 32 (bf16) or 64 (f32) bytes are 2 or 4 loads 32 or 64
 *   bytes apart across the warp), at every batch; env JAMBA_EXT_CONV_UPDATE_P16=0 runs CPT = 4 (tests, A/B).
 *   A view x = conv_state[..., j] lands in the same thread's rows: loaded before they are rewritten.
 *   NB = 2 from batch CONV_UPDATE_NB2_MIN_BATCH on (with one row per thread every batch row re-reads the taps and
 *   bias, B * DI * 10 bytes in bf16, half the state's bytes, through L2), else 1.
 *   Measured (H200 bf16, graph-timed, us): before the taps and biases came in 16- / 4- / 8-byte groups (wvec 2, 3),
 *   CPT 4 / p16 (conv_p16_72bab8d.log): batch 1 1.4 / 1.4, 16: 1.9 / 1.9, 64: 3.3 / 3.4, 256: 9.0 / 8.1, and NB 1 /
 *   2 / 4 (gpu_round_0520adb.log): batch 1 1.4 / 1.5 / 1.5, 16: 1.9 / 1.9 / 2.3, 64: 3.9 / 3.3 / 3.5, 256: 8.8 /
 *   8.9 / 10.3, so p16 from 128 and NB 2 from 32. With them (conv_nb_468f9b4.log, dev/conv_update_probe.py, best of
 *   4 rounds in turns; CPT 4 NB 1 or 2 as before / CPT 4 NB 1 / p16 NB 2 / p16 NB 1): batch 1 1.49 / 1.48 / 1.42 /
 *   1.45, 16: 1.96 / 1.97 / 1.77 / 1.73, 64: 3.65 / 4.11 / 3.24 / 3.01, 256 (p16 NB 2 before): 9.70 / - / 7.83 /
 *   10.40 (the previous per-channel loads, CPT 4 NB 1 or 2 / p16 at 256: 1.80 / 2.33 / 3.88 / 7.82; a same-size
 *   torch copy 1.48 / 1.56 / 2.69 / 9.07): so p16 at every batch and NB 2 from 128. Env JAMBA_EXT_CONV_UPDATE_NB=1 /
 *   2 forces NB.
 *   HF (the model's decode layout: 16-bit T, CPT 2, contiguous x, taps and bias of T, i.e. xvec 1 and wvec 3 fixed at
 *   compile time): 26 registers instead of the run-time layout instance's 39 (bf16, NB 1), on a (channel groups /
 *   blockDim.x, batch tiles) grid (no division), in 256-thread blocks from 2^18 threads (batch 64 at DI 8192), else
 *   128. Measured (dev/conv_update_probe.py, best of 5-6 rounds in turns, us; conv_update_hf_15e1bc8.log,
 *   conv_update_hf2_a2154f5.log, conv_update_blocks_362c1d7.log): run-time layout instance / HF flat grid / HF 2-D grid
 *   128 threads / the same in 256: batch 1 1.23 / 1.06 / 0.90 / 0.94, 16: 1.72 / 1.50 / 1.34 / 1.67, 32: - / 1.85 /
 *   1.83 / 1.97, 64: 3.04 / 2.96 / 2.90 / 2.50, 128 (NB 2): - / 4.53 / 4.43 / 4.49, 256 (NB 2): 7.77 / 7.50 / 7.40 /
 *   7.40 (a same-size torch copy 1.28 / 1.54 / 1.85 / 2.71 / 4.01 / 9.09; Triton kernels of the same loads and stores,
 *   dev/conv_update_triton_probe.py, conv_update_triton_78a8344.log: batch 64 2.84). The taps and biases through the
 *   read-only path, or loaded once per block of 4-16 batch rows into shared memory (a second kernel,
 *   conv_update_hfk_ac1b20d.log: 2.59 at batch 64, 4.12 at 128, 7.21 at 256): the read-only path changed nothing, the
 *   second kernel loses at 1-64 and wins 3-7% at 128-256, where this one already beats a same-size copy, so it is not
 *   kept. Env JAMBA_EXT_CONV_UPDATE_HF=0 runs the run-time layout instance (tests, A/B). */
#define CONV_UPDATE_NB2_MIN_BATCH 128
template <typename T, typename W, typename BT, int NB, int CPT, bool HF>
__global__ void __launch_bounds__(HF ? 256 : 128)
    causal_conv1d_update_vec_kernel(conv_update_args a, int xvec_, int wvec_) {
    jamba_pdl_begin();
    const int xvec = HF ? 1 : xvec_, wvec = HF ? 3 : wvec_; /* HF: the layout known at compile time */
    typedef jamba_w16<T> P;
    constexpr int NQ = CPT * (int)sizeof(T) / 4; /* 16-byte chunks in CPT rows x 4 entries */
    static_assert(NQ >= 1 && CPT * (int)sizeof(T) % 4 == 0, "whole 16-byte state pieces");
    int64_t bt, c;
    if constexpr (HF) { /* grid (channel groups / blockDim.x, batch tiles) */
        c = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) * CPT, bt = blockIdx.y;
        if (c >= a.DI) return;
    } else {
        const int64_t ng = (a.B + NB - 1) / NB * a.DI / CPT; /* thread groups: batch tiles x channel groups */
        const int64_t g = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
        if (g >= ng) return;
        conv_split(g * CPT, a.DI, ng * CPT, &bt, &c);
    }
    uint32_t sw[NB][4 * NQ]; /* per batch row: its CPT state rows as 32-bit words, in memory order */
    uint32_t xb[NB][CPT];    /* bits of x[b, c + i] (16-bit types: in the low half) */
#pragma unroll
    for (int r = 0; r < NB; r++) {
        const int64_t b = bt * NB + r;
        if (NB > 1 && b >= a.B) break;
        const T *st = (const T *)a.state + b * a.ss0 + c * 4;
#pragma unroll
        for (int q = 0; q < NQ; q++) {
            const uint4 v = ((const uint4 *)st)[q];
            sw[r][4 * q] = v.x, sw[r][4 * q + 1] = v.y, sw[r][4 * q + 2] = v.z, sw[r][4 * q + 3] = v.w;
        }
        const T *x = (const T *)a.x + b * a.sx0 + c * a.sx1;
        if (xvec) {
            if constexpr (CPT * sizeof(T) == 16) {
                const uint4 q = *(const uint4 *)x;
                xb[r][0] = q.x, xb[r][1] = q.y, xb[r][2] = q.z, xb[r][3] = q.w;
            } else if constexpr (CPT * sizeof(T) == 8) {
                const uint2 q = *(const uint2 *)x;
                xb[r][0] = q.x & 0xffffu, xb[r][1] = q.x >> 16, xb[r][2] = q.y & 0xffffu, xb[r][3] = q.y >> 16;
            } else { /* 4 bytes: one f32 or two 16-bit channels */
                const uint32_t q = *(const uint32_t *)x;
                xb[r][0] = sizeof(T) == 4 ? q : q & 0xffffu;
                if constexpr (CPT == 2) xb[r][1] = q >> 16;
            }
        } else {
#pragma unroll
            for (int i = 0; i < CPT; i++)
                xb[r][i] = sizeof(T) == 4 ? *(const uint32_t *)(x + i * a.sx1) : *(const unsigned short *)(x + i * a.sx1);
        }
    }
    float wp[CPT][4], bv[CPT];
    if constexpr (CPT >= 2 && !std::is_same<W, float>::value) { /* wvec >= 2: the taps of channels 2q, 2q + 1 in
                                                                * 16-byte load q */
        if (wvec >= 2) {
#pragma unroll
            for (int q = 0; q < CPT / 2; q++) {
                float f[8];
                P::ld(((const uint4 *)((const T *)a.w + c * 4))[q], f);
#pragma unroll
                for (int m = 0; m < 4; m++) wp[2 * q][m] = f[m], wp[2 * q + 1][m] = f[4 + m];
            }
        }
    }
    constexpr bool BVEC = CPT >= 2 && std::is_same<BT, T>::value && sizeof(T) == 2;
    if constexpr (BVEC) { /* wvec == 3: the CPT biases in one 2 * CPT-byte load */
        if (wvec == 3) {
            float f[8];
            uint4 q = make_uint4(0u, 0u, 0u, 0u);
            if constexpr (CPT == 4) {
                const uint2 h = *(const uint2 *)((const T *)a.bias + c);
                q.x = h.x, q.y = h.y;
            } else {
                q.x = *(const uint32_t *)((const T *)a.bias + c);
            }
            P::ld(q, f);
#pragma unroll
            for (int i = 0; i < CPT; i++) bv[i] = f[i];
        }
    }
#pragma unroll
    for (int i = 0; i < CPT; i++) {
        if (BVEC && wvec == 3) {
            /* taps and bias above */
        } else if (CPT >= 2 && !std::is_same<W, float>::value && wvec >= 2) {
            bv[i] = a.bias ? conv_ld<BT>(a.bias, a.bdt, (c + i) * a.sb) : 0.f;
        } else if (wvec) {
            if (std::is_same<W, float>::value) { /* f32 taps */
                const float4 q = *(const float4 *)((const float *)a.w + (c + i) * a.sw0);
                wp[i][0] = q.x, wp[i][1] = q.y, wp[i][2] = q.z, wp[i][3] = q.w;
            } else { /* 4 taps of T in 8 bytes */
                const uint2 q = *(const uint2 *)((const T *)a.w + (c + i) * a.sw0);
                float f[8];
                P::ld(make_uint4(q.x, q.y, 0u, 0u), f);
                wp[i][0] = f[0], wp[i][1] = f[1], wp[i][2] = f[2], wp[i][3] = f[3];
            }
            bv[i] = a.bias ? conv_ld<BT>(a.bias, a.bdt, (c + i) * a.sb) : 0.f;
        } else {
            conv_taps(a.w, a.wdt, a.sw0, a.sw1, a.K, a.bias, a.bdt, a.sb, c + i, wp[i], &bv[i]); /* run-time dtypes */
        }
    }
#pragma unroll
    for (int r = 0; r < NB; r++) {
        const int64_t b = bt * NB + r;
        if (NB > 1 && b >= a.B) break;
        /* rows: entries h0..h3 of row i; window (h1, h2, h3, x) */
        float o[4] = {0.f, 0.f, 0.f, 0.f};
        uint32_t nw[4 * NQ];
#pragma unroll
        for (int i = 0; i < CPT; i++) {
            float win[4];
            if (sizeof(T) == 4) {
                win[0] = P::f1(sw[r][4 * i + 1]), win[1] = P::f1(sw[r][4 * i + 2]), win[2] = P::f1(sw[r][4 * i + 3]);
                nw[4 * i] = sw[r][4 * i + 1], nw[4 * i + 1] = sw[r][4 * i + 2], nw[4 * i + 2] = sw[r][4 * i + 3];
                nw[4 * i + 3] = xb[r][i];
            } else {
                const uint32_t w0 = sw[r][2 * i], w1 = sw[r][2 * i + 1]; /* (h0 | h1 << 16), (h2 | h3 << 16) */
                win[0] = P::f1(w0 >> 16), win[1] = P::f1(w1 & 0xffffu), win[2] = P::f1(w1 >> 16);
                nw[2 * i] = (w0 >> 16) | (w1 << 16);
                nw[2 * i + 1] = (w1 >> 16) | (xb[r][i] << 16);
            }
            win[3] = P::f1(xb[r][i]);
            float acc = bv[i];
#pragma unroll
            for (int m = 0; m < 4; m++) acc = fmaf(wp[i][m], win[m], acc);
            o[i] = a.silu ? conv_silu(acc) : acc;
        }
        T *st = (T *)a.state + b * a.ss0 + c * 4;
#pragma unroll
        for (int q = 0; q < NQ; q++)
            ((uint4 *)st)[q] = make_uint4(nw[4 * q], nw[4 * q + 1], nw[4 * q + 2], nw[4 * q + 3]);
        T *out = (T *)a.out + b * a.DI + c; /* (B, DI, 1) contiguous */
        if constexpr (sizeof(T) == 4 && CPT == 4) {
            *(uint4 *)out = make_uint4(__float_as_uint(o[0]), __float_as_uint(o[1]), __float_as_uint(o[2]),
                                       __float_as_uint(o[3]));
        } else if constexpr (sizeof(T) == 4) {
            *(float *)out = o[0];
        } else {
            float f[8] = {o[0], o[1], o[2], o[3], 0.f, 0.f, 0.f, 0.f};
            const uint4 q = P::st(f);
            if constexpr (CPT == 4) *(uint2 *)out = make_uint2(q.x, q.y);
            else *(uint32_t *)out = q.x;
        }
    }
}

/* the vec update instance for the weight / bias dtypes (f32 or T; no bias: T) and, with hf (16-bit T, CPT 2, xvec 1,
 * wvec 3: the model's decode layout), the HF instance; see the header; NB, CPT: the kernel's */
template <typename T, int NB, int CPT>
static void (*conv_update_vec_kernel(bool wf32, bool bf32, bool hf))(conv_update_args, int, int) {
    if constexpr (sizeof(T) == 2 && CPT == 2)
        if (hf) return causal_conv1d_update_vec_kernel<T, T, T, NB, CPT, true>;
    if (sizeof(T) == 4 || (wf32 && bf32)) return causal_conv1d_update_vec_kernel<T, float, float, NB, CPT, false>;
    if (wf32) return causal_conv1d_update_vec_kernel<T, float, T, NB, CPT, false>;
    if (bf32) return causal_conv1d_update_vec_kernel<T, T, float, NB, CPT, false>;
    return causal_conv1d_update_vec_kernel<T, T, T, NB, CPT, false>;
}

/* causal_conv1d_update_vec_kernel when L == 1, S == 4, DI % 4 == 0 and the state rows / out are 16-byte
 * groups (*done = true); anything else: causal_conv1d_update_kernel (causal_conv1d_update_launch) */
template <typename T>
static jamba_status causal_conv1d_update_launch_vec(const conv_update_args &a, cudaStream_t stream, bool *done) {
    const int64_t es = (int64_t)sizeof(T);
    *done = false;
    if (!(a.L == 1 && a.S == 4 && a.DI % 4 == 0 && a.ss1 == 4 && jamba_aligned16(a.state) &&
          (a.B <= 1 || (a.ss0 * es) % 16 == 0) && jamba_aligned16(a.out)))
        return JAMBA_OK;
    const char *p16 = getenv("JAMBA_EXT_CONV_UPDATE_P16"); /* "0": CPT = 4 (see the kernel) */
    const bool piece = !(p16 != NULL && p16[0] == '0');
    const int64_t cpt = piece ? 4 / es : 4; /* channels per thread */
    const int xvec = a.sx1 == 1 && ((uintptr_t)a.x % (uintptr_t)(cpt * es)) == 0 && (a.B <= 1 || a.sx0 % cpt == 0);
    const int64_t wes = a.wdt == JAMBA_F32 ? 4 : es;
    int wvec = a.K == 4 && a.sw1 == 1 && a.sw0 % 4 == 0 && ((uintptr_t)a.w % (uintptr_t)(4 * wes)) == 0;
    /* 16-bit taps in rows of 4, 16-byte aligned: CPT / 2 16-byte loads for the CPT channels (wvec 2); and with
     * a contiguous, aligned 16-bit bias: one 2 * CPT-byte load for the CPT biases (wvec 3) */
    if (wvec && wes == 2 && a.sw0 == 4 && jamba_aligned16(a.w)) {
        wvec = 2;
        if (a.bias && a.bdt == a.wdt && a.sb == 1 && (uintptr_t)a.bias % (uintptr_t)(2 * cpt) == 0) wvec = 3;
    }
    int nb = a.B >= CONV_UPDATE_NB2_MIN_BATCH ? 2 : 1; /* batch rows per thread (see the kernel) */
    const char *nbe = getenv("JAMBA_EXT_CONV_UPDATE_NB"); /* "1" / "2" forces it (tests, A/B) */
    if (nbe != NULL && (nbe[0] == '1' || nbe[0] == '2')) nb = nbe[0] - '0';
    const int64_t ntile = jamba_ceil_div(a.B, nb), ngrp = a.DI / cpt; /* batch tiles, channel groups */
    const int64_t blocks = jamba_ceil_div(ntile * ngrp, 128);
    if (blocks > JAMBA_MAX_GRID_X) return JAMBA_OK; /* the scalar kernel reports it */
    const bool wf32 = a.wdt == JAMBA_F32, bf32 = a.bias && a.bdt == JAMBA_F32;
    /* the model's layout (16-bit T, p16, contiguous x, taps and bias): the HF instance on a (channel groups / bs, batch
     * tiles) grid, in 256-thread blocks from 2^18 threads (batch 64 at DI 8192), else 128 (see the kernel) */
    const char *hfe = getenv("JAMBA_EXT_CONV_UPDATE_HF"); /* "0": the run-time layout instance (tests, A/B) */
    const bool hf = piece && es == 2 && xvec && wvec == 3 && ntile <= 65535 && !(hfe != NULL && hfe[0] == '0');
    const int bs = hf && ntile * ngrp >= (1 << 18) ? 256 : 128;
    const dim3 grid = hf ? dim3((unsigned)jamba_ceil_div(ngrp, bs), (unsigned)ntile) : dim3((unsigned)blocks);
    void (*k)(conv_update_args, int, int);
    if (cpt == 4)
        k = nb == 2 ? conv_update_vec_kernel<T, 2, 4>(wf32, bf32, false)
                    : conv_update_vec_kernel<T, 1, 4>(wf32, bf32, false);
    else
        k = nb == 2 ? conv_update_vec_kernel<T, 2, 4 / sizeof(T)>(wf32, bf32, hf)
                    : conv_update_vec_kernel<T, 1, 4 / sizeof(T)>(wf32, bf32, hf);
    jamba_kernel_launch(k, grid, bs, 0, stream, a, xvec, wvec);
    JAMBA_LAUNCH_CHECK("jamba.causal_conv1d_update: kernel launch", stream);
    *done = true;
    return JAMBA_OK;
}

template <typename T>
static jamba_status causal_conv1d_update_launch(const conv_update_args &a, cudaStream_t stream) {
    bool done = false;
    JAMBA_TRY(causal_conv1d_update_launch_vec<T>(a, stream, &done));
    if (done) return JAMBA_OK;
    const int64_t n = a.B * a.DI;
    const int64_t blocks = jamba_ceil_div(n, 128);
    if (blocks > JAMBA_MAX_GRID_X)
        return jamba_set_error(JAMBA_ERR_ARG, "jamba.causal_conv1d_update: batch*d_inner too large (%lld)",
                               (long long)n);
    jamba_kernel_launch(causal_conv1d_update_kernel<T>, (unsigned)blocks, 128, 0, stream, a);
    JAMBA_LAUNCH_CHECK("jamba.causal_conv1d_update: kernel launch", stream);
    return JAMBA_OK;
}

extern "C" jamba_status jamba_causal_conv1d_update_cuda(const jamba_causal_conv1d_update_params *p,
                                                        jamba_launch launch) {
    JAMBA_TRY(jamba_causal_conv1d_update_check(p));
    const int64_t B = p->x.shape[0], DI = p->x.shape[1];
    if (B == 0 || DI == 0) return JAMBA_OK;
    JAMBA_DEVICE_GUARD(launch);
    conv_update_args a;
    memset(&a, 0, sizeof a);
    a.out = p->out.data;
    a.state = p->conv_state.data;
    a.x = p->x.data;
    a.w = p->weight.data;
    a.bias = p->bias.data;
    a.B = B, a.DI = DI, a.L = p->x.shape[2], a.K = p->weight.shape[1], a.S = p->conv_state.shape[2];
    a.sx0 = p->x.stride[0], a.sx1 = p->x.stride[1], a.sx2 = p->x.stride[2];
    a.ss0 = p->conv_state.stride[0], a.ss1 = p->conv_state.stride[1];
    a.sw0 = p->weight.stride[0], a.sw1 = p->weight.stride[1];
    a.sb = a.bias ? p->bias.stride[0] : 0;
    a.wdt = (int)p->weight.dtype;
    a.bdt = a.bias ? (int)p->bias.dtype : JAMBA_F32;
    a.silu = p->silu;
    cudaStream_t stream = (cudaStream_t)launch.stream;
    jamba_status s = JAMBA_ERR_DTYPE;
    JAMBA_DISPATCH_FLOAT(p->x.dtype, T, s = causal_conv1d_update_launch<T>(a, stream));
    return s;
}
