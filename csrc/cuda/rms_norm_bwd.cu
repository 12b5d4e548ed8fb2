/* rms_norm_bwd.cu -- gradients of rms_norm / rms_norm_segments on CUDA (training).
 *
 * Exports: jamba_rms_norm_bwd_cuda (checks and math: csrc/cpu/rms_norm_bwd.c, csrc/jamba.h).
 * Shapes and layouts: x, dy (rows, dim) T, unit stride along dim, row strides lx / ld; weight (dim,) f32 or T,
 * contiguous; dx (rows, dim) T contiguous; dweight (dim,) f32. ws: r (rows, JAMBA_NORM_MAX_SEGS) f32, then partial
 * sums (G, dim) f32 with G = ceil(rows / RG), RG = JAMBA_NORM_BWD_ROWS.
 *
 * nb_rows_kernel<T, WT>: (WT: weight's type, f32 or T, a template parameter so that the loads of x, dy and w issue
 *   together: a run-time dtype switch between a load and its conversion serialises them) a warp per row (8 rows per
 *   256-thread block, grid-stride over rows). Per segment [a, e): the lanes
 *   sum x^2 and dy w x over i = a + lane, a + lane + 32, ... (fp32, then a butterfly sum: every lane has the totals),
 *   r = rsqrtf(mean + eps), then dx_i = r dy_i w_i - x_i r^3 sum / n; lane 0 stores r.
 * nb_dw_kernel<T>: thread per column i (blockIdx.x), row group g (blockIdx.y): the sum over the group's rows of
 *   dy[m, i] * round_T(x[m, i] r[m, seg(i)]) into ws. nb_dw_sum: dweight[i] = the G partials in order.
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

template <typename T, typename WT> __global__ void __launch_bounds__(NB_THREADS) nb_rows_kernel(nb_args a) {
    jamba_pdl_begin();
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
            for (int64_t i = s0 + lane; i < s1; i += 32) {
                const float x = jamba_ld<T>(xr[i]), g = jamba_ld<T>(gr[i]) * jamba_ld<WT>(wt[i]);
                sxx = fmaf(x, x, sxx);
                sgx = fmaf(g, x, sgx);
            }
            sxx = jamba_warp_sum(sxx);
            sgx = jamba_warp_sum(sgx);
            const float n = (float)(s1 - s0), r = rsqrtf(sxx / n + a.eps), c = sgx / n * r * r * r;
#pragma unroll 4
            for (int64_t i = s0 + lane; i < s1; i += 32) {
                const float x = jamba_ld<T>(xr[i]), g = jamba_ld<T>(gr[i]) * jamba_ld<WT>(wt[i]);
                o[i] = jamba_st<T>(r * g - x * c);
            }
            if (lane == 0) a.r[m * JAMBA_NORM_MAX_SEGS + s] = r;
            s0 = s1;
        }
    }
}

template <typename T> __global__ void __launch_bounds__(NB_THREADS) nb_dw_kernel(nb_args a) {
    jamba_pdl_begin();
    const int64_t i = (int64_t)blockIdx.x * NB_THREADS + threadIdx.x, g = blockIdx.y;
    if (i >= a.dim) return;
    int s = 0;
    while (s + 1 < a.nseg && a.ends[s] <= i) s++;
    const int64_t m0 = g * NB_RG, m1 = m0 + NB_RG < a.rows ? m0 + NB_RG : a.rows;
    float acc = 0.f;
#pragma unroll 4
    for (int64_t m = m0; m < m1; m++) {
        const float xh = jamba_round<T>(jamba_ld<T>(((const T *)a.x)[m * a.lx + i]) * a.r[m * JAMBA_NORM_MAX_SEGS + s]);
        acc = fmaf(jamba_ld<T>(((const T *)a.dy)[m * a.ld + i]), xh, acc);
    }
    a.part[g * a.dim + i] = acc;
}

__global__ void __launch_bounds__(NB_THREADS) nb_dw_sum(nb_args a) {
    jamba_pdl_begin();
    const int64_t i = (int64_t)blockIdx.x * NB_THREADS + threadIdx.x;
    if (i >= a.dim) return;
    float v = 0.f;
    for (int64_t g = 0; g < a.G; g++) v += a.part[g * a.dim + i];
    a.dw[i] = v;
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
    jamba_status s = JAMBA_ERR_DTYPE;
    if (rows > 0) {
        const int64_t rb = jamba_ceil_div(rows, NB_THREADS / 32);
        const unsigned rgrid = (unsigned)(rb < 65536 ? rb : 65536);
        JAMBA_DISPATCH_FLOAT(p->x.dtype, T, {
            if (p->weight.dtype == JAMBA_F32)
                jamba_kernel_launch(nb_rows_kernel<T, float>, dim3(rgrid), dim3(NB_THREADS), 0, stream, a);
            else jamba_kernel_launch(nb_rows_kernel<T, T>, dim3(rgrid), dim3(NB_THREADS), 0, stream, a);
            JAMBA_LAUNCH_CHECK("jamba.rms_norm_bwd: nb_rows_kernel", stream);
            jamba_kernel_launch(nb_dw_kernel<T>, dim3(cblocks, (unsigned)a.G), dim3(NB_THREADS), 0, stream, a);
            s = JAMBA_OK;
        });
        JAMBA_TRY(s);
        JAMBA_LAUNCH_CHECK("jamba.rms_norm_bwd: nb_dw_kernel", stream);
    }
    jamba_kernel_launch(nb_dw_sum, dim3(cblocks), dim3(NB_THREADS), 0, stream, a);
    JAMBA_LAUNCH_CHECK("jamba.rms_norm_bwd: nb_dw_sum", stream);
    return JAMBA_OK;
}
