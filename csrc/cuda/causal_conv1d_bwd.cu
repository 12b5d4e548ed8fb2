/* causal_conv1d_bwd.cu -- gradients of the depthwise causal conv1d on CUDA (training).
 *
 * Exports: jamba_causal_conv1d_bwd_cuda (checks and math: csrc/cpu/causal_conv1d_bwd.c, csrc/jamba.h).
 * Shapes and layouts: x, dout (B, DI, L) T, unit stride along L, (B, DI) strides free; weight (DI, K) f32 or T, any
 * strides; bias (DI,) or absent; initial_state (B, DI, S_in) T, unit stride along S_in. Outputs contiguous: dx
 * (B, DI, L) T, dinitial_state (B, DI, S_in) T, dweight (DI, K) f32, dbias (DI,) f32; ws (DI, B * NCH, PART) f32.
 *
 * conv_bwd_kernel<T, WT, VEC>: (WT: the taps' type, f32 or T) one block of CB_THREADS threads per (row
 * r = b * DI + c, chunk q of CH = JAMBA_CONV_BWD_CHUNK steps), blockIdx.x = r * NCH + q. The block stages in shared
 * memory, as fp32 (VEC: the rows of x and dout 16-byte aligned, each thread loads its 8 steps as 16-byte vectors, all
 * loads before any conversion; else element loads):
 *   sh[i] = h at time t = t0 - 3 + i, i < CH + 6 (initial_state's entries before t = 0, zeros where absent or t >= L)
 *   sg[i] = g at time t0 + i, i < CH + 3 (zero from t = L on): dout times the SiLU derivative at pre (recomputed)
 * then writes dx[t0 + i] = sum_j w[j] sg[i + K-1 - j] for its CH steps and, in chunk 0, dinitial_state (the K-1
 * last entries from sg, zeros before). dweight / dbias: each thread sums g * h over its own steps (a fixed stride),
 * the block sums its threads in a fixed order (warp shuffles, then warps in order) into ws[c][b * NCH + q][0..K];
 * conv_bwd_sum then adds the B * NCH partials of each (c, j) in order: no atomics, bit-identical run to run.
 */
#include <string.h>

#include "common.cuh"

#define CB_THREADS 256
#define CB_CH JAMBA_CONV_BWD_CHUNK
#define CB_PART JAMBA_CONV_BWD_PART

struct cb_args {
    const void *x, *dout, *init, *w, *bias;
    void *dx, *dinit;
    float *ws;
    int64_t B, DI, L, K, S_in, NCH;
    int64_t sx0, sx1, so0, so1, si0, si1, sw0, sw1, sb;
    int bdt, silu;
};

template <typename T, typename WT, bool VEC>
__global__ void __launch_bounds__(CB_THREADS) conv_bwd_kernel(cb_args a) {
    jamba_pdl_begin();
    __shared__ float sh[CB_CH + 6], sg[CB_CH + 3], red[CB_THREADS / 32][CB_PART];
    const int tid = threadIdx.x;
    const int64_t q = blockIdx.x % a.NCH, r = blockIdx.x / a.NCH, b = r / a.DI, c = r % a.DI;
    const int64_t t0 = q * CB_CH, L = a.L;
    const int K = (int)a.K, H = K - 1;
    const T *xr = (const T *)a.x + b * a.sx0 + c * a.sx1;
    const T *gr = (const T *)a.dout + b * a.so0 + c * a.so1;
    const T *ir = a.init ? (const T *)a.init + b * a.si0 + c * a.si1 : nullptr;
    if (VEC) {
        /* thread tid: steps t0 + 8 tid .. + 7 as 16-byte vectors (rows 16-byte aligned: the host checks), every load
         * issued before the first conversion; threads 0-2 the three steps before the chunk, 3-5 the three after */
        static_assert(CB_CH == 8 * CB_THREADS, "one 8-step vector group per thread");
        constexpr int NV = 8 * (int)sizeof(T) / 16, PV = 16 / (int)sizeof(T);
        const int64_t e0 = t0 + 8 * tid;
        const bool full = e0 + 8 <= L;
        uint4 vx[NV], vd[NV];
        if (full)
#pragma unroll
            for (int v = 0; v < NV; v++) {
                vx[v] = reinterpret_cast<const uint4 *>(xr + e0)[v];
                vd[v] = reinterpret_cast<const uint4 *>(gr + e0)[v];
            }
        float hx = 0.f, hd = 0.f;
        if (tid < 3) {
            const int64_t t = t0 - 3 + tid;
            if (t >= 0) hx = t < L ? jamba_ld<T>(xr[t]) : 0.f;
            else if (ir && a.S_in + t >= 0) hx = jamba_ld<T>(ir[a.S_in + t]);
        } else if (tid < 6) {
            const int64_t t = t0 + CB_CH + tid - 3;
            if (t < L) hx = jamba_ld<T>(xr[t]), hd = jamba_ld<T>(gr[t]);
        }
        float fx[8], fd[8];
        if (full) {
#pragma unroll
            for (int v = 0; v < NV; v++) {
                jamba_w16<T>::ld(vx[v], fx + v * PV);
                jamba_w16<T>::ld(vd[v], fd + v * PV);
            }
        } else {
#pragma unroll
            for (int k = 0; k < 8; k++) {
                const bool in = e0 + k < L;
                fx[k] = in ? jamba_ld<T>(xr[e0 + k]) : 0.f;
                fd[k] = in ? jamba_ld<T>(gr[e0 + k]) : 0.f;
            }
        }
#pragma unroll
        for (int k = 0; k < 8; k++) sh[3 + 8 * tid + k] = fx[k], sg[8 * tid + k] = fd[k];
        if (tid < 3) sh[tid] = hx;
        else if (tid < 6) sh[CB_CH + tid] = hx, sg[CB_CH + tid - 3] = hd;
    } else {
        for (int i = tid; i < CB_CH + 6; i += CB_THREADS) {
            const int64_t t = t0 - 3 + i;
            float v = 0.f;
            if (t >= 0 && t < L) v = jamba_ld<T>(xr[t]);
            else if (t < 0 && ir && a.S_in + t >= 0) v = jamba_ld<T>(ir[a.S_in + t]);
            sh[i] = v;
        }
        for (int i = tid; i < CB_CH + 3; i += CB_THREADS) {
            const int64_t t = t0 + i;
            sg[i] = t < L ? jamba_ld<T>(gr[t]) : 0.f;
        }
    }
    /* the taps and bias after the staging loads (they are needed from here on; typed loads issue together) */
    const WT *wr = (const WT *)a.w + c * a.sw0;
    float w[JAMBA_MAX_CONV_WIDTH] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
    for (int j = 0; j < JAMBA_MAX_CONV_WIDTH; j++)
        if (j < K) w[j] = jamba_ld<WT>(wr[j * a.sw1]);
    const float bias = a.bias ? jamba_ld_any(a.bias, a.bdt, c * a.sb) : 0.f;
    __syncthreads();
    /* g in place; h[t - (K-1) + j] = sh[i + 3 - H + j]; partial sums over this thread's own steps (i < CH) */
    /* the tap loops are unrolled to the widest conv with a guard (j < K), so that w and the partial sums stay in
     * registers (a loop to a run-time K put them on the stack) */
    float pw[JAMBA_MAX_CONV_WIDTH] = {0.f, 0.f, 0.f, 0.f}, pb = 0.f;
    for (int i = tid; i < CB_CH + 3; i += CB_THREADS) {
        if (t0 + i >= L) break;
        const float *hp = sh + i + 3 - H;
        float pre = bias;
#pragma unroll
        for (int j = 0; j < JAMBA_MAX_CONV_WIDTH; j++)
            if (j < K) pre = fmaf(w[j], hp[j], pre);
        float g = sg[i];
        if (a.silu) {
            const float s = __fdividef(1.f, 1.f + __expf(-pre));
            g *= s * (1.f + pre * (1.f - s));
        }
        sg[i] = g;
        if (i < CB_CH) {
#pragma unroll
            for (int j = 0; j < JAMBA_MAX_CONV_WIDTH; j++)
                if (j < K) pw[j] = fmaf(g, hp[j], pw[j]);
            pb += g;
        }
    }
    __syncthreads();
    T *dxr = (T *)a.dx + r * L;
    for (int i = tid; i < CB_CH && t0 + i < L; i += CB_THREADS) {
        float v = 0.f;
#pragma unroll
        for (int j = 0; j < JAMBA_MAX_CONV_WIDTH; j++)
            if (j < K) v = fmaf(w[j], sg[i + H - j], v);
        dxr[t0 + i] = jamba_st<T>(v);
    }
    if (q == 0 && a.dinit) {
        T *dir = (T *)a.dinit + r * a.S_in;
        for (int64_t e = tid; e < a.S_in; e += CB_THREADS) {
            const int64_t m = e - (a.S_in - H); /* history index 0..H-1, time m - H */
            float v = 0.f;
#pragma unroll
            for (int j = 0; j < JAMBA_MAX_CONV_WIDTH; j++)
                if (j < K && m - j >= 0) v = fmaf(w[j], sg[m - j], v);
            dir[e] = jamba_st<T>(v);
        }
    }
    /* block sums of the partials, a fixed order */
    float part[CB_PART] = {pw[0], pw[1], pw[2], pw[3], pb};
#pragma unroll
    for (int k = 0; k < CB_PART; k++) part[k] = jamba_warp_sum(part[k]);
    if ((tid & 31) == 0)
#pragma unroll
        for (int k = 0; k < CB_PART; k++) red[tid >> 5][k] = part[k];
    __syncthreads();
    if (tid < CB_PART) {
        float v = 0.f;
#pragma unroll
        for (int wi = 0; wi < CB_THREADS / 32; wi++) v += red[wi][tid];
        a.ws[((c * a.B + b) * a.NCH + q) * CB_PART + tid] = v;
    }
}

/* dweight[c, j] (j < K) and dbias[c] (j = K): the sum of ws[c][0 .. Q)[j] in order; one thread per (c, j) */
__global__ void __launch_bounds__(CB_THREADS) conv_bwd_sum(float *dw, float *db, const float *ws, int64_t DI,
                                                           int64_t K, int64_t Q) {
    jamba_pdl_begin();
    const int64_t i = (int64_t)blockIdx.x * CB_THREADS + threadIdx.x;
    if (i >= DI * (K + 1)) return;
    const int64_t c = i / (K + 1), j = i % (K + 1);
    const int k = j < K ? (int)j : CB_PART - 1;
    const float *src = ws + c * Q * CB_PART + k;
    float v = 0.f;
    for (int64_t p = 0; p < Q; p++) v += src[p * CB_PART];
    if (j < K) dw[c * K + j] = v;
    else db[c] = v;
}

extern "C" jamba_status jamba_causal_conv1d_bwd_cuda(const jamba_causal_conv1d_bwd_params *p, jamba_launch launch) {
    JAMBA_TRY(jamba_causal_conv1d_bwd_check(p));
    const char *op = "jamba.causal_conv1d_bwd";
    const int64_t B = p->x.shape[0], DI = p->x.shape[1], L = p->x.shape[2], K = p->weight.shape[1];
    const int64_t need = jamba_causal_conv1d_bwd_ws_elems(B, DI, L);
    JAMBA_TRY(jamba_check_workspace(op, &p->ws, need));
    JAMBA_DEVICE_GUARD(launch);
    cudaStream_t stream = (cudaStream_t)launch.stream;
    cb_args a;
    memset(&a, 0, sizeof a);
    a.B = B, a.DI = DI, a.L = L, a.K = K;
    a.NCH = L > 0 ? jamba_ceil_div(L, CB_CH) : 1;
    if (B * DI * a.NCH > JAMBA_MAX_GRID_X)
        return jamba_set_error(JAMBA_ERR_ARG, "%s: x: batch x channels x chunks of %d steps over the grid limit", op,
                               CB_CH);
    a.x = p->x.data, a.dout = p->dout.data, a.w = p->weight.data, a.bias = p->bias.data;
    a.init = p->initial_state.data, a.dx = p->dx.data, a.dinit = p->dinitial_state.data, a.ws = (float *)p->ws.data;
    a.sx0 = p->x.stride[0], a.sx1 = p->x.stride[1], a.so0 = p->dout.stride[0], a.so1 = p->dout.stride[1];
    a.sw0 = p->weight.stride[0], a.sw1 = p->weight.stride[1];
    if (a.bias) a.sb = p->bias.stride[0], a.bdt = (int)p->bias.dtype;
    if (a.init) {
        a.si0 = p->initial_state.stride[0], a.si1 = p->initial_state.stride[1];
        a.S_in = p->initial_state.shape[2];
    }
    a.silu = p->silu;
    if (B > 0 && DI > 0) {
        jamba_status s = JAMBA_ERR_DTYPE;
        const int64_t es = jamba_dtype_size(p->x.dtype);
        const bool vec = jamba_aligned16(a.x) && jamba_aligned16(a.dout) &&
                         (B <= 1 || ((a.sx0 * es) % 16 == 0 && (a.so0 * es) % 16 == 0)) &&
                         (DI <= 1 || ((a.sx1 * es) % 16 == 0 && (a.so1 * es) % 16 == 0));
        const dim3 grid((unsigned)(B * DI * a.NCH));
        JAMBA_DISPATCH_FLOAT(p->x.dtype, T, {
            const bool wf = p->weight.dtype == JAMBA_F32;
            if (vec && wf) jamba_kernel_launch(conv_bwd_kernel<T, float, true>, grid, dim3(CB_THREADS), 0, stream, a);
            else if (vec) jamba_kernel_launch(conv_bwd_kernel<T, T, true>, grid, dim3(CB_THREADS), 0, stream, a);
            else if (wf) jamba_kernel_launch(conv_bwd_kernel<T, float, false>, grid, dim3(CB_THREADS), 0, stream, a);
            else jamba_kernel_launch(conv_bwd_kernel<T, T, false>, grid, dim3(CB_THREADS), 0, stream, a);
            s = JAMBA_OK;
        });
        JAMBA_TRY(s);
        JAMBA_LAUNCH_CHECK("jamba.causal_conv1d_bwd: conv_bwd_kernel", stream);
    }
    if (DI > 0) {
        const int64_t n = DI * (K + 1);
        jamba_kernel_launch(conv_bwd_sum, dim3((unsigned)jamba_ceil_div(n, CB_THREADS)), dim3(CB_THREADS), 0, stream,
                            (float *)p->dweight.data, (float *)p->dbias.data, (const float *)a.ws, DI, K, B * a.NCH);
        JAMBA_LAUNCH_CHECK("jamba.causal_conv1d_bwd: conv_bwd_sum", stream);
    }
    return JAMBA_OK;
}
