/* causal_conv1d.cu -- depthwise causal conv1d over time and its decode-step update, on CUDA.
 *
 * Exports: jamba_causal_conv1d_cuda, jamba_causal_conv1d_update_cuda (checks: csrc/cpu/causal_conv1d.c).
 * Math (both, as csrc/cpu/causal_conv1d.c): over the history h = concat(state, x) of one channel c,
 *   out[t] = act(bias[c] + sum_{j<K} w[c,j] * h[t - (K-1) + j]),   act = silu or identity
 * causal_conv1d : state = initial_state (or zeros); final_state = last S_out entries of h.
 * _update       : state = conv_state (B, DI, S), S >= K-1, rewritten in place as the last S entries of h.
 * The taps are kept right-aligned in a 4-wide register array (wpad[4-K+j] = w[j], the rest 0), so one
 * code path serves K = 2..4 with constant register indices. fp32 accumulation, one rounding at the end.
 */
#include "common.cuh"

#define CONV_THREADS 128
#define CONV_EPT 16                              /* consecutive time steps per thread: 32-64 bytes of loads
                                                  * in flight per thread (8 gave 42% of copy bw on H200) */
#define CONV_TILE (CONV_THREADS * CONV_EPT)      /* time steps per block */
#define CONV_HALO 3                              /* JAMBA_MAX_CONV_WIDTH - 1 */

struct conv_args {
    void *out, *fin;
    const void *x, *w, *bias, *init;
    int64_t B, DI, L, K, S_in, S_out;
    int64_t sx0, sx1;           /* x strides (batch, channel); unit along L */
    int64_t sw0, sw1, sb;       /* weight (DI, K) and bias strides */
    int64_t si0, si1, sf0, sf1; /* initial/final state strides (batch, channel); unit along S */
    int wdt, bdt, silu;
};

/* right-aligned taps of channel c and its bias (fp32) */
__device__ __forceinline__ void conv_taps(const void *w, int wdt, int64_t sw0, int64_t sw1, int64_t K,
                                          const void *bias, int bdt, int64_t sb, int64_t c, float wp[4],
                                          float *bv) {
#pragma unroll
    for (int m = 0; m < 4; m++) {
        const int64_t j = m - (4 - K);
        wp[m] = j >= 0 ? jamba_ld_any(w, wdt, c * sw0 + j * sw1) : 0.f;
    }
    *bv = bias ? jamba_ld_any(bias, bdt, c * sb) : 0.f;
}

/* causal_conv1d_fwd_kernel
 *   x (B, DI, L) T, unit stride along L; out (B, DI, L) T contiguous; w (DI, K), bias (DI,) f32|T;
 *   initial_state (B, DI, S_in >= K-1) T, unit stride along S; final_state (B, DI, S_out) T, unit stride.
 *   One block = one (b, c) row x CONV_TILE time steps; thread i owns steps t0 + 16i .. t0 + 16i + 15 in
 *   registers (16-byte loads when the row is aligned) and takes the 3 steps before them from its left
 *   neighbour through shared memory (thread 0: from x before t0, initial_state or zeros).
 *   Blocks are virtual: vb = ((b * DI) + c) * nchunk + chunk, looped with a grid stride (no grid-axis limit).
 *   The block holding a row's last chunk also writes final_state. */
template <typename T>
__global__ void __launch_bounds__(CONV_THREADS) causal_conv1d_fwd_kernel(conv_args a, int64_t nchunk) {
    __shared__ float tail[(CONV_THREADS + 1) * CONV_HALO];
    typedef jamba_vec16<T> V;
    const int VN = V::n;
    const int64_t nvb = a.B * a.DI * nchunk;
    for (int64_t vb = blockIdx.x; vb < nvb; vb += gridDim.x) {
        const int64_t chunk = vb % nchunk, bc = vb / nchunk;
        const int64_t c = bc % a.DI, b = bc / a.DI;
        const T *x = (const T *)a.x + b * a.sx0 + c * a.sx1;         /* row (b, c) of x */
        T *out = (T *)a.out + bc * a.L;                             /* row (b, c) of out */
        const T *init = a.init ? (const T *)a.init + b * a.si0 + c * a.si1 : NULL;
        const int64_t t0 = chunk * CONV_TILE;
        const int64_t tt = t0 + (int64_t)threadIdx.x * CONV_EPT;   /* this thread's first step */

        float wp[4], bv;
        conv_taps(a.w, a.wdt, a.sw0, a.sw1, a.K, a.bias, a.bdt, a.sb, c, wp, &bv);

        float v[CONV_EPT];
        if (jamba_aligned16(x) && tt + CONV_EPT <= a.L) {
#pragma unroll
            for (int q = 0; q < CONV_EPT / VN; q++) {
                V r;
                r.raw = *(const uint4 *)(x + tt + q * VN);
#pragma unroll
                for (int e = 0; e < VN; e++) v[q * VN + e] = jamba_ld<T>(r.v[e]);
            }
        } else {
#pragma unroll
            for (int e = 0; e < CONV_EPT; e++) v[e] = tt + e < a.L ? jamba_ld<T>(x[tt + e]) : 0.f;
        }
        /* tail[i+1] = last 3 steps of thread i; tail[0] = the 3 steps before t0 */
#pragma unroll
        for (int m = 0; m < CONV_HALO; m++) tail[(threadIdx.x + 1) * CONV_HALO + m] = v[CONV_EPT - CONV_HALO + m];
        if (threadIdx.x == 0) {
#pragma unroll
            for (int m = 0; m < CONV_HALO; m++) {
                const int64_t t = t0 - CONV_HALO + m;
                float h = 0.f;
                if (t >= 0) h = jamba_ld<T>(x[t]);
                else if (init && a.S_in + t >= 0) h = jamba_ld<T>(init[a.S_in + t]);
                tail[m] = h;
            }
        }
        __syncthreads();
        float win[CONV_HALO + CONV_EPT]; /* win[m] = h[tt - 3 + m] */
#pragma unroll
        for (int m = 0; m < CONV_HALO; m++) win[m] = tail[threadIdx.x * CONV_HALO + m];
#pragma unroll
        for (int e = 0; e < CONV_EPT; e++) win[CONV_HALO + e] = v[e];
        T o[CONV_EPT];
#pragma unroll
        for (int e = 0; e < CONV_EPT; e++) {
            float acc = bv;
#pragma unroll
            for (int m = 0; m < 4; m++) acc = fmaf(wp[m], win[e + m], acc);
            o[e] = jamba_st<T>(a.silu ? jamba_cu_silu(acc) : acc);
        }
        if (jamba_aligned16(out) && ((a.L * (int64_t)sizeof(T)) & 15) == 0 && tt + CONV_EPT <= a.L) {
#pragma unroll
            for (int q = 0; q < CONV_EPT / VN; q++) {
                V r;
#pragma unroll
                for (int e = 0; e < VN; e++) r.v[e] = o[q * VN + e];
                *(uint4 *)(out + tt + q * VN) = r.raw;
            }
        } else {
#pragma unroll
            for (int e = 0; e < CONV_EPT; e++)
                if (tt + e < a.L) out[tt + e] = o[e];
        }
        if (a.fin && chunk == nchunk - 1) {
            T *fin = (T *)a.fin + b * a.sf0 + c * a.sf1;
            for (int64_t j = threadIdx.x; j < a.S_out; j += blockDim.x) {
                const int64_t t = a.L - a.S_out + j; /* position in x; < 0: in the initial state */
                float h = 0.f;
                if (t >= 0) h = jamba_ld<T>(x[t]);
                else if (init && a.S_in + t >= 0) h = jamba_ld<T>(init[a.S_in + t]);
                fin[j] = jamba_st<T>(h);
            }
        }
        __syncthreads(); /* tail is rewritten by the next virtual block */
    }
}

template <typename T>
static jamba_status causal_conv1d_launch(const conv_args &a, cudaStream_t stream, int sms) {
    const int64_t nchunk = a.L > 0 ? jamba_ceil_div(a.L, CONV_TILE) : 1;
    const int64_t nvb = a.B * a.DI * nchunk;
    (void)sms;
    const int64_t grid = nvb < JAMBA_MAX_GRID_X ? nvb : JAMBA_MAX_GRID_X; /* the kernel loops beyond */
    causal_conv1d_fwd_kernel<T><<<(unsigned)grid, CONV_THREADS, 0, stream>>>(a, nchunk);
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
    const int sms = jamba_cuda_sm_count(launch.device);
    jamba_status s = JAMBA_ERR_DTYPE;
    JAMBA_DISPATCH_FLOAT(p->x.dtype, T, s = causal_conv1d_launch<T>(a, stream, sms));
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

template <typename T>
static jamba_status causal_conv1d_update_launch(const conv_update_args &a, cudaStream_t stream) {
    const int64_t n = a.B * a.DI;
    const int64_t blocks = jamba_ceil_div(n, 128);
    if (blocks > JAMBA_MAX_GRID_X)
        return jamba_set_error(JAMBA_ERR_ARG, "jamba.causal_conv1d_update: batch*d_inner too large (%lld)",
                               (long long)n);
    causal_conv1d_update_kernel<T><<<(unsigned)blocks, 128, 0, stream>>>(a);
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
