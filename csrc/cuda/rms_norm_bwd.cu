/* rms_norm_bwd.cu -- gradients of rms_norm / rms_norm_segments on CUDA (training).
 *
 * Exports: jamba_rms_norm_bwd_cuda (checks and math: csrc/cpu/rms_norm_bwd.c, csrc/jamba.h).
 * Shapes and layouts: x, dy (rows, dim) T, unit stride along dim, row strides lx / ld; weight (dim,) f32 or T,
 * contiguous; dx (rows, dim) T contiguous; dweight (dim,) f32. ws: r (rows, JAMBA_NORM_MAX_SEGS) f32, then partial
 * sums (G, dim) f32 with G = ceil(rows / RG), RG = JAMBA_NORM_BWD_ROWS.
 *
 * nb_rows_kernel<T, WT, VEC>: (WT: weight's type, f32 or T, a template parameter so that the loads of x, dy and w
 *   issue together: a run-time dtype switch between a load and its conversion serialises them) a warp per row (8 rows
 *   per 256-thread block, grid-stride over rows). Per segment [a, e): the lanes sum x^2 and dy w x over their
 *   elements (VEC: VN = 16 / sizeof(T) consecutive elements per 16-byte load, lane l from a + l VN in steps of 32 VN;
 *   else one element per load from a + l in steps of 32), fp32, then a butterfly sum (every lane has the totals),
 *   r = rsqrtf(mean + eps), then dx_i = r dy_i w_i - x_i r^3 sum / n from a second read of the row; lane 0 stores r.
 * nb_dw_kernel<T, VEC>: thread per column i (VEC: per column pair), row group g (blockIdx.y): the sum over the
 *   group's rows of dy[m, i] * round_T(x[m, i] r[m, seg(i)]) into ws; jamba_cuda_sum_mid (sum_mid.cu) adds the G
 *   partials in a fixed order (it replaced nb_dw_sum, a thread per column adding them one after another: 12.6 us at
 *   2048 x 4096, a chain of 64 dependent loads).
 * No atomics: bit-identical run to run.
 */
#include <string.h>

#include "common.cuh"

#define NB_THREADS 256
#define NB_RG JAMBA_NORM_BWD_ROWS

struct nb_args {
    const void *x, *dy, *w;
    void *dx;
    float *r, *part, *dw;
    int64_t rows, dim, lx, ld, nseg, G;
    int64_t ends[JAMBA_NORM_MAX_SEGS];
    float eps;
};

/* VN = 16 / sizeof(T) weights as floats from p (16-byte aligned): one or two 16-byte loads */
template <typename WT, int VN> __device__ __forceinline__ void nb_ldw(const WT *p, float *w) {
    if constexpr (sizeof(WT) == 4) {
#pragma unroll
        for (int j = 0; j < VN / 4; j++) {
            const float4 v = ((const float4 *)p)[j];
            w[4 * j] = v.x, w[4 * j + 1] = v.y, w[4 * j + 2] = v.z, w[4 * j + 3] = v.w;
        }
    } else {
        jamba_w16<WT>::ld(*(const uint4 *)p, w);
    }
}

/* x, dy and w at one position: VN = 16 / sizeof(T) consecutive elements each (VEC), else one */
template <typename T, typename WT, bool VEC>
__device__ __forceinline__ void nb_ld(const T *xp, const T *gp, const WT *wp, float *x, float *g, float *w) {
    if constexpr (VEC) {
        jamba_w16<T>::ld(*(const uint4 *)xp, x);
        jamba_w16<T>::ld(*(const uint4 *)gp, g);
        nb_ldw<WT, 16 / (int)sizeof(T)>(wp, w);
    } else {
        x[0] = jamba_ld<T>(*xp), g[0] = jamba_ld<T>(*gp), w[0] = jamba_ld<WT>(*wp);
    }
}

/* VEC: x, dy, dx and the weight 16-byte aligned, row strides and segment ends multiples of VN elements: each lane
 * takes VN consecutive elements per 16-byte load (unrolled 4: 12 loads in flight), else one element per load */
template <typename T, typename WT, bool VEC>
__global__ void __launch_bounds__(NB_THREADS) nb_rows_kernel(nb_args a) {
    jamba_pdl_begin();
    constexpr int VN = VEC ? 16 / (int)sizeof(T) : 1;
    const int lane = threadIdx.x & 31;
    const WT *wt = (const WT *)a.w;
    const int64_t warps = (int64_t)gridDim.x * (NB_THREADS / 32);
    for (int64_t m = (int64_t)blockIdx.x * (NB_THREADS / 32) + (threadIdx.x >> 5); m < a.rows; m += warps) {
        const T *xr = (const T *)a.x + m * a.lx, *gr = (const T *)a.dy + m * a.ld;
        T *o = (T *)a.dx + m * a.dim;
        int64_t s0 = 0;
        for (int s = 0; s < a.nseg; s++) {
            const int64_t s1 = a.ends[s];
            float sxx = 0.f, sgx = 0.f;
#pragma unroll 4
            for (int64_t i = s0 + lane * VN; i < s1; i += 32 * VN) {
                float x[VN], g[VN], w[VN];
                nb_ld<T, WT, VEC>(xr + i, gr + i, wt + i, x, g, w);
#pragma unroll
                for (int j = 0; j < VN; j++) {
                    sxx = fmaf(x[j], x[j], sxx);
                    sgx = fmaf(g[j] * w[j], x[j], sgx);
                }
            }
            sxx = jamba_warp_sum(sxx);
            sgx = jamba_warp_sum(sgx);
            const float n = (float)(s1 - s0), r = rsqrtf(sxx / n + a.eps), c = sgx / n * r * r * r;
#pragma unroll 4
            for (int64_t i = s0 + lane * VN; i < s1; i += 32 * VN) {
                float x[VN], g[VN], w[VN];
                nb_ld<T, WT, VEC>(xr + i, gr + i, wt + i, x, g, w);
#pragma unroll
                for (int j = 0; j < VN; j++) x[j] = r * (g[j] * w[j]) - x[j] * c;
                if constexpr (VEC) *(uint4 *)(o + i) = jamba_w16<T>::st(x);
                else o[i] = jamba_st<T>(x[0]);
            }
            if (lane == 0) a.r[m * JAMBA_NORM_MAX_SEGS + s] = r;
            s0 = s1;
        }
    }
}

/* two consecutive elements as floats (4- or 8-byte aligned) */
__device__ __forceinline__ float2 nb_ld2(const float *p) { return *(const float2 *)p; }
__device__ __forceinline__ float2 nb_ld2(const __nv_bfloat16 *p) {
    return __bfloat1622float2(*(const __nv_bfloat162 *)p);
}
__device__ __forceinline__ float2 nb_ld2(const __half *p) { return __half22float2(*(const __half2 *)p); }

/* thread per CPT columns (VEC: 2, one 4- or 8-byte load per row; the segment ends are even then), row group g */
template <typename T, bool VEC> __global__ void __launch_bounds__(NB_THREADS) nb_dw_kernel(nb_args a) {
    jamba_pdl_begin();
    constexpr int CPT = VEC ? 2 : 1;
    const int64_t i = ((int64_t)blockIdx.x * NB_THREADS + threadIdx.x) * CPT, g = blockIdx.y;
    if (i >= a.dim) return;
    int s = 0;
    while (s + 1 < a.nseg && a.ends[s] <= i) s++;
    const int64_t m0 = g * NB_RG, m1 = m0 + NB_RG < a.rows ? m0 + NB_RG : a.rows;
    float acc0 = 0.f, acc1 = 0.f;
#pragma unroll 8
    for (int64_t m = m0; m < m1; m++) {
        const float r = a.r[m * JAMBA_NORM_MAX_SEGS + s];
        const T *xp = (const T *)a.x + m * a.lx + i, *gp = (const T *)a.dy + m * a.ld + i;
        if constexpr (VEC) {
            const float2 x = nb_ld2(xp), d = nb_ld2(gp);
            acc0 = fmaf(d.x, jamba_round<T>(x.x * r), acc0);
            acc1 = fmaf(d.y, jamba_round<T>(x.y * r), acc1);
        } else {
            acc0 = fmaf(jamba_ld<T>(*gp), jamba_round<T>(jamba_ld<T>(*xp) * r), acc0);
        }
    }
    a.part[g * a.dim + i] = acc0;
    if constexpr (VEC) a.part[g * a.dim + i + 1] = acc1;
}

extern "C" jamba_status jamba_rms_norm_bwd_cuda(const jamba_rms_norm_bwd_params *p, jamba_launch launch) {
    JAMBA_TRY(jamba_rms_norm_bwd_check(p));
    const char *op = "jamba.rms_norm_bwd";
    const int64_t rows = p->x.shape[0], dim = p->x.shape[1];
    const int64_t need = jamba_rms_norm_bwd_ws_elems(rows, dim);
    JAMBA_TRY(jamba_check_workspace(op, &p->ws, need));
    if (dim == 0) return JAMBA_OK;
    JAMBA_DEVICE_GUARD(launch);
    cudaStream_t stream = (cudaStream_t)launch.stream;
    nb_args a;
    memset(&a, 0, sizeof a);
    a.x = p->x.data, a.dy = p->dy.data, a.w = p->weight.data;
    a.dx = p->dx.data, a.dw = (float *)p->dweight.data;
    a.rows = rows, a.dim = dim, a.lx = p->x.stride[0], a.ld = p->dy.stride[0], a.nseg = p->nseg;
    for (int s = 0; s < JAMBA_NORM_MAX_SEGS; s++) a.ends[s] = s < p->nseg ? p->ends[s] : dim;
    a.eps = (float)p->eps;
    a.G = jamba_ceil_div(rows, NB_RG);
    a.r = (float *)p->ws.data, a.part = a.r + rows * JAMBA_NORM_MAX_SEGS;
    if (a.G > 65535)
        return jamba_set_error(JAMBA_ERR_ARG, "%s: x: at most %lld rows, got %lld", op, 65535LL * NB_RG,
                               (long long)rows);
    const unsigned cblocks = (unsigned)jamba_ceil_div(dim, NB_THREADS);
    /* the 16-byte path: every pointer 16-byte aligned, row strides and segment ends whole vectors */
    const int64_t vn = 16 / jamba_dtype_size(p->x.dtype);
    bool vec = jamba_aligned16(a.x) && jamba_aligned16(a.dy) && jamba_aligned16(a.dx) && jamba_aligned16(a.w) &&
               a.lx % vn == 0 && a.ld % vn == 0;
    for (int k = 0; k < p->nseg; k++) vec = vec && a.ends[k] % vn == 0;
    const unsigned dblocks = vec ? (unsigned)jamba_ceil_div(dim, 2 * NB_THREADS) : cblocks;
    jamba_status s = JAMBA_ERR_DTYPE;
    if (rows > 0) {
        const int64_t rb = jamba_ceil_div(rows, NB_THREADS / 32);
        const unsigned rgrid = (unsigned)(rb < 65536 ? rb : 65536);
        const dim3 rg(rgrid), dg(dblocks, (unsigned)a.G), bk(NB_THREADS);
        JAMBA_DISPATCH_FLOAT(p->x.dtype, T, {
            const bool wf = p->weight.dtype == JAMBA_F32;
            if (vec && wf) jamba_kernel_launch(nb_rows_kernel<T, float, true>, rg, bk, 0, stream, a);
            else if (vec) jamba_kernel_launch(nb_rows_kernel<T, T, true>, rg, bk, 0, stream, a);
            else if (wf) jamba_kernel_launch(nb_rows_kernel<T, float, false>, rg, bk, 0, stream, a);
            else jamba_kernel_launch(nb_rows_kernel<T, T, false>, rg, bk, 0, stream, a);
            JAMBA_LAUNCH_CHECK("jamba.rms_norm_bwd: nb_rows_kernel", stream);
            if (vec) jamba_kernel_launch(nb_dw_kernel<T, true>, dg, bk, 0, stream, a);
            else jamba_kernel_launch(nb_dw_kernel<T, false>, dg, bk, 0, stream, a);
            s = JAMBA_OK;
        });
        JAMBA_TRY(s);
        JAMBA_LAUNCH_CHECK("jamba.rms_norm_bwd: nb_dw_kernel", stream);
    }
    return jamba_cuda_sum_mid(a.dw, a.part, 1, a.G, dim, stream, "jamba.rms_norm_bwd: the dweight sum");
}
