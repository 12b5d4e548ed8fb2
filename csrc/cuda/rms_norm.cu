/* rms_norm.cu -- RMSNorm and fused residual-add RMSNorm on CUDA.
 *
 * Exports: jamba_rms_norm_cuda (rms_norm when p->residual is absent, add_rms_norm when present),
 * jamba_rms_norm_segments_cuda (the same per segment of a row, at the end: rms_norm_seg_reg_kernel for rows of
 * dim <= 384, rms_norm_seg_kernel for longer ones).
 * Math (HF JambaRMSNorm, same as csrc/cpu/rms_norm.c), per row of dim elements:
 *   s   = residual ? round_x(x + residual) : x          (residual_out = s)
 *   r   = rsqrt(mean(float(s)^2) + eps)                  (fp32 statistics)
 *   out = round_x( round_x(s * r) * float(weight) )
 * Layout: rows with unit stride along dim and free row strides (x, residual, out, residual_out);
 * weight (dim,) contiguous, f32 or x's dtype. out / residual_out are written, never accumulated.
 *
 * Kernels: rms_norm_row_kernel (16-byte rows, dim <= 4096 16-byte vectors; every load of a thread is issued
 * before its first store), rms_norm_kernel (any alignment / dim, two passes). H200 at 2751aca, 8192 x 4096
 * bf16, in a CUDA graph: rms_norm 34.7 us (91% of copy bandwidth), add_rms_norm 67.0 us (94%); the previous
 * vector kernel (37.5 / 71.0 us in the same run) is deleted.
 */
#include <string.h>

#include "common.cuh"

#define RMS_BLOCK 128     /* threads per block when several rows share a block */

struct rms_args {
    void *out, *res_out;
    const void *x, *res, *w;
    int64_t rows, dim;
    int64_t sx, sr, so, sro; /* row strides (elements) */
    int wdt;                 /* weight dtype: JAMBA_F32 or x's */
    float eps;
};

/* Sum over the TPR threads of one row (blockDim = (TPR, R)); TPR is a multiple of 32. Every thread of
 * the block must call it (it holds a __syncthreads when TPR > 32). */
__device__ __forceinline__ float rms_row_sum(float v) {
    __shared__ float part[32];
    v = jamba_warp_sum(v);
    const int tpr = blockDim.x;
    if (tpr <= 32) return v;
    const int nw = tpr >> 5, w = threadIdx.x >> 5;
    if ((threadIdx.x & 31) == 0) part[threadIdx.y * nw + w] = v;
    __syncthreads();
    float s = 0.f;
    for (int i = 0; i < nw; i++) s += part[threadIdx.y * nw + i];
    return s;
}

/* rms_norm_kernel: any alignment and any dim; two passes over the row (the second one re-reads s from
 *   x or res_out, written by the same thread, through L1/L2). Same block/grid mapping as above. */
template <typename T>
__global__ void __launch_bounds__(1024) rms_norm_kernel(rms_args a) {
    jamba_pdl_begin();
    const int64_t row = (int64_t)blockIdx.x * blockDim.y + threadIdx.y;
    const bool active = row < a.rows;
    const T *x = (const T *)a.x + (active ? row * a.sx : 0);
    const T *r = a.res ? (const T *)a.res + (active ? row * a.sr : 0) : NULL;
    T *ro = a.res ? (T *)a.res_out + (active ? row * a.sro : 0) : NULL;
    float ss = 0.f;
    if (active) {
        for (int64_t i = threadIdx.x; i < a.dim; i += blockDim.x) {
            float f = jamba_ld<T>(x[i]);
            if (r) {
                const T sv = jamba_st<T>(f + jamba_ld<T>(r[i]));
                ro[i] = sv;
                f = jamba_ld<T>(sv);
            }
            ss += f * f;
        }
    }
    const float inv = rsqrtf(rms_row_sum(ss) / (float)a.dim + a.eps);
    if (!active) return;
    const T *s = r ? (const T *)ro : x;
    T *out = (T *)a.out + row * a.so;
    for (int64_t i = threadIdx.x; i < a.dim; i += blockDim.x) {
        const float w = jamba_ld_any(a.w, a.wdt, i);
        out[i] = jamba_st<T>(jamba_round<T>(jamba_ld<T>(s[i]) * inv) * w);
    }
}

/* rms_norm_row_kernel<T, RES, NV>: the row lives in registers as 16-byte vectors, NV (4 or 8) per thread.
 *   x, res, out, res_out: (rows, dim) T in {f32, f16, bf16}, every row start 16-byte aligned, dim % VN == 0,
 *   nvec = dim / VN <= NV * 512; weight (dim,) W = f32 or T, 16-byte aligned.
 *   block (TPR, R): R rows per block, TPR threads per row (multiple of 32, TPR * R <= 512: up to 128
 *   registers, no spills); thread tx owns vectors tx + i*TPR, i < NV; grid.x = ceil(rows / R).
 *   At hidden 4096 bf16: NV 4, TPR 128, R 1 (64 bytes of x per thread, 128 more of x+res for add).
 *   NV 8 only for nvec in (2048, 4096] (dim up to 32768 bf16 / 16384 f32); larger dims: rms_norm_kernel.
 *   Order per thread: all loads of x (and res) -> weight loads (before the reduction when the registers
 *   allow: EARLY_W) -> row sum -> stores. No store comes between two loads, so the compiler keeps every load
 *   of the thread in flight at once (the old kernel stored res_out between loads and loaded the weight
 *   between stores, serialising up to 8 round trips per thread).
 *   16-byte vectors <-> floats through jamba_w16 (common.cuh): no per-element registers. */
template <typename T, typename W, bool RES, int RMS_NV>
__device__ __forceinline__ void rms_norm_row(const rms_args &a) {
    const int VN = 16 / (int)sizeof(T);
    const int NW = (int)(sizeof(W) * VN / 16); /* 16-byte weight chunks per vector: 1, or 2 (f32 w, 2-byte T) */
    /* registers of row data per thread: early weights only when they fit beside x (and res) in 64 */
    const bool EARLY_W = RMS_NV * 4 * (RES ? 2 : 1) + RMS_NV * NW * 4 <= 64;
    const int64_t row = (int64_t)blockIdx.x * blockDim.y + threadIdx.y;
    const bool active = row < a.rows;
    const int tpr = blockDim.x, tx = threadIdx.x;
    const int nvec = (int)(a.dim / VN); /* <= RMS_NV * 512 (launcher) */
    const int64_t r0 = active ? row : 0;
    const uint4 *xp = (const uint4 *)((const T *)a.x + r0 * a.sx);
    const uint4 *rp = RES ? (const uint4 *)((const T *)a.res + r0 * a.sr) : NULL;
    const uint4 *wp = (const uint4 *)a.w; /* vector k of the weight: wp[k * NW + q], q < NW */
    uint4 s[RMS_NV], r[RES ? RMS_NV : 1], w[RMS_NV][NW];
#pragma unroll
    for (int i = 0; i < RMS_NV; i++) {
        const int k = i * tpr + tx;
        if (active && k < nvec) {
            s[i] = xp[k];
            if (RES) r[RES ? i : 0] = rp[k];
        }
    }
    if (EARLY_W) {
#pragma unroll
        for (int i = 0; i < RMS_NV; i++) {
            const int k = i * tpr + tx;
            if (active && k < nvec) {
#pragma unroll
                for (int q = 0; q < NW; q++) w[i][q] = wp[k * NW + q];
            }
        }
    }
    float ss = 0.f;
#pragma unroll
    for (int i = 0; i < RMS_NV; i++) {
        const int k = i * tpr + tx;
        if (active && k < nvec) {
            float f[16 / sizeof(T)];
            jamba_w16<T>::ld(s[i], f);
            if (RES) {
                float g[16 / sizeof(T)];
                jamba_w16<T>::ld(r[RES ? i : 0], g);
#pragma unroll
                for (int e = 0; e < VN; e++) f[e] += g[e];
                s[i] = jamba_w16<T>::st(f); /* s = round_x(x + res) */
                jamba_w16<T>::ld(s[i], f);
            }
#pragma unroll
            for (int e = 0; e < VN; e++) ss += f[e] * f[e];
        }
    }
    const float inv = rsqrtf(rms_row_sum(ss) / (float)a.dim + a.eps);
    if (!active) return;
    if (!EARLY_W) { /* all weight loads of the thread, then all stores */
#pragma unroll
        for (int i = 0; i < RMS_NV; i++) {
            const int k = i * tpr + tx;
            if (k < nvec) {
#pragma unroll
                for (int q = 0; q < NW; q++) w[i][q] = wp[k * NW + q];
            }
        }
    }
    uint4 *op = (uint4 *)((T *)a.out + row * a.so);
    uint4 *rop = RES ? (uint4 *)((T *)a.res_out + row * a.sro) : NULL;
#pragma unroll
    for (int i = 0; i < RMS_NV; i++) {
        const int k = i * tpr + tx;
        if (k < nvec) {
            if (RES) rop[k] = s[i];
            float f[16 / sizeof(T)], wf[16 / sizeof(T)];
            jamba_w16<T>::ld(s[i], f);
#pragma unroll
            for (int q = 0; q < NW; q++) jamba_w16<W>::ld(w[i][q], wf + q * (VN / NW));
#pragma unroll
            for (int e = 0; e < VN; e++) f[e] = jamba_round<T>(f[e] * inv) * wf[e];
            op[k] = jamba_w16<T>::st(f);
        }
    }
}

template <typename T, typename W, bool RES, int NV>
__global__ void __launch_bounds__(512, (NV == 4 && sizeof(W) == sizeof(T)) ? 2 : 1) rms_norm_row_kernel(rms_args a) {
    jamba_pdl_begin();
    rms_norm_row<T, W, RES, NV>(a);
}

template <typename T, typename W>
static void rms_norm_row_go(const rms_args &a, int nv, dim3 grid, dim3 block, cudaStream_t stream) {
    if (nv == 4 && a.res)
        jamba_kernel_launch(rms_norm_row_kernel<T, W, true, 4>, grid, block, 0, stream, a);
    else if (nv == 4)
        jamba_kernel_launch(rms_norm_row_kernel<T, W, false, 4>, grid, block, 0, stream, a);
    else if (a.res)
        jamba_kernel_launch(rms_norm_row_kernel<T, W, true, 8>, grid, block, 0, stream, a);
    else
        jamba_kernel_launch(rms_norm_row_kernel<T, W, false, 8>, grid, block, 0, stream, a);
}

static int64_t round_up32(int64_t v) { return (v + 31) / 32 * 32; }

/* 16-byte rows: every row start of x/out (res/res_out) and the weight aligned, dim a multiple of the vector */
template <typename T>
static bool rms_rows_aligned16(const rms_args &a) {
    const int VN = 16 / (int)sizeof(T);
    const int64_t es = (int64_t)sizeof(T);
    bool ok = a.dim % VN == 0 && jamba_aligned16(a.x) && jamba_aligned16(a.out) && jamba_aligned16(a.w) &&
              (a.rows <= 1 || ((a.sx * es) % 16 == 0 && (a.so * es) % 16 == 0));
    if (a.res)
        ok = ok && jamba_aligned16(a.res) && jamba_aligned16(a.res_out) &&
             (a.rows <= 1 || ((a.sr * es) % 16 == 0 && (a.sro * es) % 16 == 0));
    return ok;
}

/* default path: rms_norm_row_kernel when the rows are 16-byte aligned and nvec <= 8 * 512 (NV 4 up to 2048
 * vectors, NV 8 above), else the two-pass rms_norm_kernel. TPR = nvec / NV rounded up to a warp; rows per
 * block R = 128 / TPR (>= 1). */
template <typename T>
static jamba_status rms_norm_launch_row(const rms_args &a, cudaStream_t stream) {
    const int VN = 16 / (int)sizeof(T);
    const int64_t nvec = a.dim / VN;
    const bool vec = rms_rows_aligned16<T>(a) && nvec <= 8 * 512;
    const int nv = nvec <= 4 * 512 ? 4 : 8;
    const int64_t per_row = vec ? jamba_ceil_div(nvec, nv) : jamba_ceil_div(a.dim, 8);
    const int tpr = (int)(round_up32(per_row) < 1024 ? round_up32(per_row) : 1024);
    const int r = tpr >= RMS_BLOCK ? 1 : RMS_BLOCK / tpr;
    const int64_t blocks = jamba_ceil_div(a.rows, r);
    if (blocks > JAMBA_MAX_GRID_X)
        return jamba_set_error(JAMBA_ERR_ARG, "jamba.rms_norm: too many rows (%lld)", (long long)a.rows);
    dim3 block(tpr, r);
    if (vec && a.wdt == JAMBA_F32)
        rms_norm_row_go<T, float>(a, nv, dim3((unsigned)blocks), block, stream);
    else if (vec)
        rms_norm_row_go<T, T>(a, nv, dim3((unsigned)blocks), block, stream);
    else
        jamba_kernel_launch(rms_norm_kernel<T>, (unsigned)blocks, block, 0, stream, a);
    JAMBA_LAUNCH_CHECK("jamba.rms_norm: kernel launch", stream);
    return JAMBA_OK;
}

extern "C" jamba_status jamba_rms_norm_cuda(const jamba_rms_norm_params *p, jamba_launch launch) {
    JAMBA_TRY(jamba_rms_norm_check(p));
    const int64_t rows = p->x.shape[0], dim = p->x.shape[1];
    if (rows == 0 || dim == 0) return JAMBA_OK;
    JAMBA_DEVICE_GUARD(launch);
    rms_args a;
    a.out = p->out.data;
    a.res_out = p->residual.data ? p->residual_out.data : NULL;
    a.x = p->x.data;
    a.res = p->residual.data;
    a.w = p->weight.data;
    a.rows = rows;
    a.dim = dim;
    a.sx = p->x.stride[0];
    a.sr = p->residual.data ? p->residual.stride[0] : 0;
    a.so = p->out.stride[0];
    a.sro = p->residual.data ? p->residual_out.stride[0] : 0;
    a.wdt = (int)p->weight.dtype;
    a.eps = (float)p->eps;
    cudaStream_t stream = (cudaStream_t)launch.stream;
    jamba_status s = JAMBA_ERR_DTYPE;
    JAMBA_DISPATCH_FLOAT(p->x.dtype, T, s = rms_norm_launch_row<T>(a, stream));
    return s;
}

/* ---- rms_norm_segments ---------------------------------------------------------------------------------- */
/* rms_norm_seg_kernel<T> (rows of dim > 384; shorter ones: rms_norm_seg_reg_kernel below)
 *   x, out: (rows, dim) T, unit stride along dim, row strides sx / so; weight (dim,) f32 or T.
 *   The row is cut at ends[0] < ... < ends[nseg-1] = dim; each segment is normalised on its own with the
 *   numerics of rms_norm_kernel (fp32 sum of squares, rsqrtf, round to T before the weight product).
 *   One warp per row, 8 rows per block: the decode-sized rows of Mamba's dt / B / C norms (dim 256 + 2 x 16
 *   in Jamba-v0.1), one launch instead of three. */
struct rms_seg_args {
    void *out;
    const void *x, *w;
    int64_t rows, sx, so;
    int64_t ends[JAMBA_NORM_MAX_SEGS];
    int nseg, wdt;
    float eps;
};

template <typename T>
__global__ void __launch_bounds__(256) rms_norm_seg_kernel(rms_seg_args a) {
    jamba_pdl_begin();
    const int64_t row = (int64_t)blockIdx.x * 8 + (threadIdx.x >> 5);
    if (row >= a.rows) return; /* whole warp */
    const int lane = threadIdx.x & 31;
    const T *x = (const T *)a.x + row * a.sx;
    T *out = (T *)a.out + row * a.so;
    int64_t s0 = 0;
#pragma unroll
    for (int si = 0; si < JAMBA_NORM_MAX_SEGS; si++) { /* constant indices: a.ends stays in the parameter space */
        if (si >= a.nseg) break;
        const int64_t s1 = a.ends[si];
        float ss = 0.f;
        for (int64_t i = s0 + lane; i < s1; i += 32) {
            const float f = jamba_ld<T>(x[i]);
            ss += f * f;
        }
        const float inv = rsqrtf(jamba_warp_sum(ss) / (float)(s1 - s0) + a.eps);
        for (int64_t i = s0 + lane; i < s1; i += 32)
            out[i] = jamba_st<T>(jamba_round<T>(jamba_ld<T>(x[i]) * inv) * jamba_ld_any(a.w, a.wdt, i));
        s0 = s1;
    }
}

/* rms_norm_seg_reg_kernel<T, W>: the same op for rows of dim <= 32 * RMS_SEG_R (Mamba's dt / B / C rows: 288 in
 *   Jamba-v0.1), one warp per row, 8 rows per block, the weight's dtype W (f32 or T) a template parameter. Lane l
 *   holds elements l + 32 r (r < RMS_SEG_R) of x and of the weight in registers, all loaded before any use; each
 *   segment's sum of squares runs over the lane's elements of that segment in increasing order, then over the
 *   warp. Why: rms_norm_seg_kernel walks each segment with one dependent load per loop trip and reloads x and
 *   the weight (through a runtime dtype switch) for the output pass: 5.0 us per one-row call in a CUDA graph
 *   against 1.2 us for rms_norm of the same row (gpu_938b141 norm rows); its register form with the runtime
 *   weight switch, tried in 61ac87b, kept the loads apart too (5.4 us). The lanes are assigned from the row
 *   start, not from each segment's start, so the fp32 sums run in another order than rms_norm_seg_kernel's. */
#define RMS_SEG_R 12
template <typename T, typename W>
__global__ void __launch_bounds__(256) rms_norm_seg_reg_kernel(rms_seg_args a, int dim) {
    jamba_pdl_begin();
    const int64_t row = (int64_t)blockIdx.x * 8 + (threadIdx.x >> 5);
    if (row >= a.rows) return; /* whole warp */
    const int lane = threadIdx.x & 31;
    const T *x = (const T *)a.x + row * a.sx;
    const W *w = (const W *)a.w;
    T *out = (T *)a.out + row * a.so;
    float xv[RMS_SEG_R], wv[RMS_SEG_R];
#pragma unroll
    for (int r = 0; r < RMS_SEG_R; r++) { /* every load of the lane first */
        const int i = lane + 32 * r;
        xv[r] = i < dim ? jamba_ld<T>(x[i]) : 0.f;
        wv[r] = i < dim ? jamba_ld<W>(w[i]) : 0.f;
    }
    int e[JAMBA_NORM_MAX_SEGS]; /* segment ends; past nseg: dim (no element reaches them) */
#pragma unroll
    for (int s = 0; s < JAMBA_NORM_MAX_SEGS; s++) e[s] = s < a.nseg ? (int)a.ends[s] : dim;
    float ss[JAMBA_NORM_MAX_SEGS];
#pragma unroll
    for (int s = 0; s < JAMBA_NORM_MAX_SEGS; s++) ss[s] = 0.f;
#pragma unroll
    for (int r = 0; r < RMS_SEG_R; r++) {
        const int i = lane + 32 * r;
        const float q = xv[r] * xv[r];
#pragma unroll
        for (int s = 0; s < JAMBA_NORM_MAX_SEGS; s++) ss[s] += (i >= (s ? e[s - 1] : 0) && i < e[s]) ? q : 0.f;
    }
    float inv[JAMBA_NORM_MAX_SEGS];
#pragma unroll
    for (int s = 0; s < JAMBA_NORM_MAX_SEGS; s++) {
        const int n = e[s] - (s ? e[s - 1] : 0);
        inv[s] = rsqrtf(jamba_warp_sum(ss[s]) / (float)(n > 0 ? n : 1) + a.eps);
    }
#pragma unroll
    for (int r = 0; r < RMS_SEG_R; r++) {
        const int i = lane + 32 * r;
        float f = inv[0];
#pragma unroll
        for (int s = 1; s < JAMBA_NORM_MAX_SEGS; s++) f = i >= e[s - 1] ? inv[s] : f;
        if (i < dim) out[i] = jamba_st<T>(jamba_round<T>(xv[r] * f) * wv[r]);
    }
}

extern "C" jamba_status jamba_rms_norm_segments_cuda(const jamba_rms_norm_segments_params *p, jamba_launch launch) {
    JAMBA_TRY(jamba_rms_norm_segments_check(p));
    const int64_t rows = p->x.shape[0];
    if (rows == 0) return JAMBA_OK;
    JAMBA_DEVICE_GUARD(launch);
    rms_seg_args a;
    memset(&a, 0, sizeof a);
    a.out = p->out.data;
    a.x = p->x.data;
    a.w = p->weight.data;
    a.rows = rows;
    a.sx = p->x.stride[0];
    a.so = p->out.stride[0];
    for (int i = 0; i < JAMBA_NORM_MAX_SEGS; i++) a.ends[i] = p->ends[i];
    a.nseg = (int)p->nseg;
    a.wdt = (int)p->weight.dtype;
    a.eps = (float)p->eps;
    cudaStream_t stream = (cudaStream_t)launch.stream;
    const int64_t blocks = jamba_ceil_div(rows, 8);
    if (blocks > JAMBA_MAX_GRID_X)
        return jamba_set_error(JAMBA_ERR_ARG, "jamba.rms_norm_segments: too many rows (%lld)", (long long)rows);
    jamba_status s = JAMBA_ERR_DTYPE;
    const int64_t dim = a.ends[a.nseg - 1];
    JAMBA_DISPATCH_FLOAT(p->x.dtype, T, {
        if (dim <= 32 * RMS_SEG_R && a.wdt == JAMBA_F32)
            jamba_kernel_launch(rms_norm_seg_reg_kernel<T, float>, (unsigned)blocks, 256, 0, stream, a, (int)dim);
        else if (dim <= 32 * RMS_SEG_R)
            jamba_kernel_launch(rms_norm_seg_reg_kernel<T, T>, (unsigned)blocks, 256, 0, stream, a, (int)dim);
        else
            jamba_kernel_launch(rms_norm_seg_kernel<T>, (unsigned)blocks, 256, 0, stream, a);
        s = JAMBA_OK;
    });
    JAMBA_TRY(s);
    JAMBA_LAUNCH_CHECK("jamba.rms_norm_segments: kernel launch", stream);
    return JAMBA_OK;
}
