/* cross_entropy.cu -- the language-model loss per row of logits and its gradient on CUDA (training).
 *
 * Exports: jamba_cross_entropy_cuda, jamba_cross_entropy_bwd_cuda (checks and math: csrc/cpu/cross_entropy.c,
 * csrc/jamba.h).
 * Layout: logits x (N, V) T in {f32, f16, bf16}, unit stride along V, row stride ld (elements); target (N,) i64 or
 *   i32 contiguous; loss, lse, dloss (N,) f32 contiguous; dlogits (N, V) T contiguous.
 * Work split: one block of CE_THREADS threads per row (grid-stride over rows when N > CE_MAX_GRID); a thread
 *   reads CE_UNROLL 16-byte vectors (VEC: V a multiple of 16 / sizeof(T), rows 16-byte aligned) or single
 *   elements per round, all loads of a round issued before any math.
 *   forward: each thread folds its elements into a running (max m, sum s of exp(x - m)), the block merges the
 *     pairs (warp shuffles, then one pair per warp in shared memory); thread 0 writes lse = m + log(s) and
 *     loss = lse - x[target] (0 for ignore_index, NaN for a target outside [0, V)). One read of the logits.
 *   backward: dlogits = round((exp(x - lse) - [v == target]) * dloss), zeros on ignored rows (their logits are not
 *     read), NaN rows for a target outside [0, V). One read and one write.
 * Exps on the special-function unit (ex2.approx of (x - max or lse) * log2(e)): a few fp32 ulp from expf. The
 * difference comes first (exact where x is near max or lse, by Sterbenz), not x * log2(e) - lse * log2(e) in one fma:
 * that form rounds lse * log2(e), an absolute error of ~8e-6 at |logits| ~ 130 that exp turns into a relative error
 * of every probability (dlogits 2.3e-5 from the float64 reference in fp32, found by tests/test_fuzz_ops.py on the
 * H200 at 918f458; the CPU's exp(x - lse) gave < 2e-5). No atomics, no host synchronisation: the results do not
 * depend on the launch (fixed reduction order per row).
 * NaN (as the CPU op): the running maxima are NaN-propagating (jamba_max_nan: max.NaN, the cost of fmaxf, which would
 * skip a NaN), so a NaN logit makes m and s NaN in its thread whatever else the thread reads (with fmaxf a thread
 * whose round held only NaN and -inf skipped it: a row of NaNs got lse -inf, and one NaN could vanish), and the
 * merges carry it: lse and loss NaN; the backward's exp(x - lse) is then NaN for every x (-inf included). A row of
 * -inf only: lse -inf (m stays -inf: the "empty" guards test m == -inf, which a NaN does not pass).
 */
#include "common.cuh"

#include <math.h>

#define CE_THREADS 256
#define CE_WARPS (CE_THREADS / 32)
#define CE_UNROLL 4
#define CE_MAX_GRID (1 << 30)

__device__ __forceinline__ int64_t ce_target(const void *target, int tgt64, int64_t n) {
    return tgt64 ? ((const int64_t *)target)[n] : (int64_t)((const int32_t *)target)[n];
}

/* VN elements of row, vector i (VN > 1: one 16-byte load), as floats */
template <typename T, int VN>
__device__ __forceinline__ void ce_load(const T *row, int64_t i, float *f) {
    if (VN > 1) jamba_w16<T>::ld(*reinterpret_cast<const uint4 *>(row + i * VN), f);
    else f[0] = jamba_ld<T>(row[i]);
}

template <typename T, int VN>
__device__ __forceinline__ void ce_store(T *row, int64_t i, const float *f) {
    if (VN > 1) *reinterpret_cast<uint4 *>(row + i * VN) = jamba_w16<T>::st(f);
    else row[i] = jamba_st<T>(f[0]);
}

/* (m, s) += (m2, s2): the running max and the sum of exp(x - max) of two sets of elements merged (NaN sticks) */
__device__ __forceinline__ void ce_merge(float &m, float &s, float m2, float s2) {
    const float mm = jamba_max_nan(m, m2);
    if (mm == -INFINITY) return;  /* both empty (or all -inf) */
    s = s * jamba_cu_exp2((m - mm) * JAMBA_LOG2E) + s2 * jamba_cu_exp2((m2 - mm) * JAMBA_LOG2E);
    m = mm;
}

template <typename T, bool VEC>
__global__ void __launch_bounds__(CE_THREADS) ce_fwd_kernel(float *loss, float *lse, const T *x, const void *target,
                                                            int tgt64, int64_t N, int64_t V, int64_t ld, int64_t ignore) {
    jamba_pdl_begin();
    constexpr int VN = VEC ? 16 / (int)sizeof(T) : 1;
    __shared__ float sm[CE_WARPS], ss[CE_WARPS];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int64_t nv = V / VN;
    for (int64_t n = blockIdx.x; n < N; n += gridDim.x) {
        const T *row = x + n * ld;
        float m = -INFINITY, s = 0.f;
        for (int64_t i0 = threadIdx.x; i0 < nv; i0 += (int64_t)CE_THREADS * CE_UNROLL) {
            float f[CE_UNROLL][VN];
#pragma unroll
            for (int u = 0; u < CE_UNROLL; u++) {
                const int64_t i = i0 + (int64_t)u * CE_THREADS;
                if (i < nv) ce_load<T, VN>(row, i, f[u]);
                else
#pragma unroll
                    for (int q = 0; q < VN; q++) f[u][q] = -INFINITY;
            }
            float vm = -INFINITY;
#pragma unroll
            for (int u = 0; u < CE_UNROLL; u++)
#pragma unroll
                for (int q = 0; q < VN; q++) vm = jamba_max_nan(vm, f[u][q]);
            const float mm = jamba_max_nan(m, vm);
            if (mm == -INFINITY) continue;
            float add = 0.f;  /* NaN logits: mm NaN, so add, s and m NaN from here on */
#pragma unroll
            for (int u = 0; u < CE_UNROLL; u++)
#pragma unroll
                for (int q = 0; q < VN; q++) add += jamba_cu_exp2((f[u][q] - mm) * JAMBA_LOG2E);
            s = s * jamba_cu_exp2((m - mm) * JAMBA_LOG2E) + add;
            m = mm;
        }
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) {
            const float m2 = __shfl_xor_sync(JAMBA_FULL_MASK, m, o), s2 = __shfl_xor_sync(JAMBA_FULL_MASK, s, o);
            ce_merge(m, s, m2, s2);
        }
        if (lane == 0) sm[warp] = m, ss[warp] = s;
        __syncthreads();
        if (threadIdx.x == 0) {
            for (int w = 1; w < CE_WARPS; w++) ce_merge(m, s, sm[w], ss[w]);
            const float l = m == -INFINITY ? -INFINITY : m + logf(s);
            const int64_t t = ce_target(target, tgt64, n);
            lse[n] = l;
            loss[n] = t == ignore ? 0.f : (t < 0 || t >= V) ? NAN : l - jamba_ld<T>(row[t]);
        }
        __syncthreads();  /* sm / ss are reused by the next row */
    }
}

template <typename T, bool VEC>
__global__ void __launch_bounds__(CE_THREADS) ce_bwd_kernel(T *dx, const T *x, const void *target, int tgt64,
                                                            const float *lse, const float *dloss, int64_t N, int64_t V,
                                                            int64_t ld, int64_t ignore) {
    jamba_pdl_begin();
    constexpr int VN = VEC ? 16 / (int)sizeof(T) : 1;
    const int64_t nv = V / VN;
    for (int64_t n = blockIdx.x; n < N; n += gridDim.x) {
        const T *row = x + n * ld;
        T *out = dx + n * V;
        const int64_t t = ce_target(target, tgt64, n);
        const bool ign = t == ignore;
        const float d = (!ign && (t < 0 || t >= V)) ? NAN : dloss[n];
        const float l = lse[n];
        for (int64_t i0 = threadIdx.x; i0 < nv; i0 += (int64_t)CE_THREADS * CE_UNROLL) {
            float f[CE_UNROLL][VN];
#pragma unroll
            for (int u = 0; u < CE_UNROLL; u++) {
                const int64_t i = i0 + (int64_t)u * CE_THREADS;
                if (i < nv && !ign) ce_load<T, VN>(row, i, f[u]);
                else
#pragma unroll
                    for (int q = 0; q < VN; q++) f[u][q] = 0.f;
            }
#pragma unroll
            for (int u = 0; u < CE_UNROLL; u++) {
                const int64_t i = i0 + (int64_t)u * CE_THREADS;
                if (i >= nv) continue;
                float g[VN];
#pragma unroll
                for (int q = 0; q < VN; q++) {
                    const float p = jamba_cu_exp2((f[u][q] - l) * JAMBA_LOG2E);
                    g[q] = ign ? 0.f : (p - (i * VN + q == t ? 1.f : 0.f)) * d;
                }
                ce_store<T, VN>(out, i, g);
            }
        }
    }
}

/* VEC when the rows are 16-byte vectors of T at 16-byte aligned addresses */
static bool ce_vec(const jamba_tensor *x, const void *out, int64_t es) {
    const int64_t N = x->shape[0], V = x->shape[1];
    return V % (16 / es) == 0 && jamba_aligned16(x->data) && (out == NULL || jamba_aligned16(out)) &&
           (N <= 1 || (x->stride[0] * es) % 16 == 0);
}

extern "C" jamba_status jamba_cross_entropy_cuda(const jamba_cross_entropy_params *p, jamba_launch launch) {
    JAMBA_TRY(jamba_cross_entropy_check(p));
    const int64_t N = p->logits.shape[0], V = p->logits.shape[1], ld = p->logits.stride[0];
    if (N == 0) return JAMBA_OK;
    JAMBA_DEVICE_GUARD(launch);
    cudaStream_t stream = (cudaStream_t)launch.stream;
    const int64_t es = jamba_dtype_size(p->logits.dtype);
    const bool vec = ce_vec(&p->logits, NULL, es);
    const dim3 grid((unsigned)(N < CE_MAX_GRID ? N : CE_MAX_GRID));
    const int tgt64 = p->target.dtype == JAMBA_I64;
    jamba_status s = JAMBA_ERR_DTYPE;
    JAMBA_DISPATCH_FLOAT(p->logits.dtype, T, {
        if (vec) jamba_kernel_launch(ce_fwd_kernel<T, true>, grid, CE_THREADS, 0, stream, (float *)p->loss.data,
            (float *)p->lse.data, (const T *)p->logits.data, (const void *)p->target.data, tgt64, N, V, ld,
            p->ignore_index);
        else jamba_kernel_launch(ce_fwd_kernel<T, false>, grid, CE_THREADS, 0, stream, (float *)p->loss.data,
            (float *)p->lse.data, (const T *)p->logits.data, (const void *)p->target.data, tgt64, N, V, ld,
            p->ignore_index);
        s = JAMBA_OK;
    });
    JAMBA_TRY(s);
    JAMBA_LAUNCH_CHECK("jamba.cross_entropy: kernel launch", stream);
    return JAMBA_OK;
}

extern "C" jamba_status jamba_cross_entropy_bwd_cuda(const jamba_cross_entropy_bwd_params *p, jamba_launch launch) {
    JAMBA_TRY(jamba_cross_entropy_bwd_check(p));
    const int64_t N = p->logits.shape[0], V = p->logits.shape[1], ld = p->logits.stride[0];
    if (N == 0) return JAMBA_OK;
    JAMBA_DEVICE_GUARD(launch);
    cudaStream_t stream = (cudaStream_t)launch.stream;
    const int64_t es = jamba_dtype_size(p->logits.dtype);
    const bool vec = ce_vec(&p->logits, p->dlogits.data, es);
    const dim3 grid((unsigned)(N < CE_MAX_GRID ? N : CE_MAX_GRID));
    const int tgt64 = p->target.dtype == JAMBA_I64;
    jamba_status s = JAMBA_ERR_DTYPE;
    JAMBA_DISPATCH_FLOAT(p->logits.dtype, T, {
        if (vec) jamba_kernel_launch(ce_bwd_kernel<T, true>, grid, CE_THREADS, 0, stream, (T *)p->dlogits.data,
            (const T *)p->logits.data, (const void *)p->target.data, tgt64, (const float *)p->lse.data,
            (const float *)p->dloss.data, N, V, ld, p->ignore_index);
        else jamba_kernel_launch(ce_bwd_kernel<T, false>, grid, CE_THREADS, 0, stream, (T *)p->dlogits.data,
            (const T *)p->logits.data, (const void *)p->target.data, tgt64, (const float *)p->lse.data,
            (const float *)p->dloss.data, N, V, ld, p->ignore_index);
        s = JAMBA_OK;
    });
    JAMBA_TRY(s);
    JAMBA_LAUNCH_CHECK("jamba.cross_entropy_bwd: kernel launch", stream);
    return JAMBA_OK;
}
