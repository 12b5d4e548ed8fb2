/* fp8.cu -- the e4m3 conversions on CUDA: dequant_fp8 (e4m3 weight bytes and a scale per row -> f32 / f16 / bf16
 * rows) and its inverse for activations, moe_quant_rows_fp8 (bf16 / f16 rows -> e4m3 bytes and a scale per row).
 *
 * Exports (extern "C"): jamba_dequant_fp8_cuda; (C++, moe.cuh) moe_quant_rows_fp8, for moe_experts_fp8's W8A8 path
 * (moe.cu). Semantics and checks: csrc/jamba.h (JAMBA_FP8_API), csrc/cpu/fp8.c.
 *   out (R, K) T = round_T(e4m3(q (R, K) u8) * scale (R,) f32), contiguous; group_offsets (G+1,) i32 optional:
 *   the R rows in G equal groups, a group with no routed rows (equal neighbouring offsets) is skipped.
 * Kernels (grid-stride, 256 threads):
 *   dequant_fp8_v8_kernel<T, I>   bf16 / f16 out, K % 8 == 0, aligned data: a thread takes 8 consecutive bytes of
 *                              one row (one 8-byte load, one 16-byte store), DQ_U8 such chunks an iteration
 *   dequant_fp8_v16_kernel<T, I>  the rest with K % 16 == 0 and 16-byte aligned data (f32 out): 16 consecutive bytes
 *                              (one 16-byte load, the conversion of gemv.cuh, 16 / VN 16-byte stores), DQ_U chunks an
 *                              iteration; 32-bit index math when it fits
 *   dequant_fp8_kernel<T>      any K: one element per thread
 * Why: the MoE prefill path of fp8 experts (jamba_ext/ops.py moe_experts_fp8 above the decode sizes) converts the
 * touched experts before the GEMMs; this is a pure stream, 1 byte read and sizeof(T) written per weight.
 */
#include "gemv.cuh"
#include "moe.cuh"

#include <stdint.h>

struct dq_args {
    void *out;
    const uint8_t *q;
    const float *scale;
    const int32_t *goff; /* NULL: every row */
    int64_t R, K, per;   /* per: rows per group */
};

__device__ __forceinline__ bool dq_skip(const dq_args &a, int64_t r) {
    return a.goff != nullptr && a.goff[r / a.per + 1] == a.goff[r / a.per];
}

/* chunk c of a kernel whose rows hold cpr chunks (n in all) is in range and in a group with routed rows */
template <typename I>
__device__ __forceinline__ bool dq_live(const dq_args &a, I c, I cpr, I n, I per) {
    bool live = c < n;
    if (live && a.goff != nullptr) {
        const I g = c / cpr / per;
        live = a.goff[g + 1] != a.goff[g];
    }
    return live;
}

/* chunk c (16 bytes: row c / c16) of the v16 kernel, its values converted, scaled and stored */
template <typename T, typename I>
__device__ __forceinline__ void dq_chunk(const dq_args &a, I c, I c16, const uint4 &q) {
    constexpr int VN = 16 / (int)sizeof(T);
    const I r = c / c16;
    float f[16];
    jamba_e4m3x16_ld(q, f);
    const float s = a.scale[r];
#pragma unroll
    for (int j = 0; j < 16; j++) f[j] *= s;
    uint4 *o = (uint4 *)((T *)a.out + (int64_t)c * 16);
#pragma unroll
    for (int v = 0; v < 16 / VN; v++) o[v] = jamba_w16<T>::st(f + v * VN);
}

/* I: the chunk index type, uint32_t when the chunks and rows fit (the row and group of a chunk by 32-bit division,
 * a few instructions instead of a 64-bit division's ~70 per 16 bytes), else int64_t. DQ_U chunks a thread and
 * iteration, their loads issued before the first store (more bytes in flight per SM). */
#define DQ_U 2
template <typename T, typename I>
__global__ void __launch_bounds__(256, sizeof(I) == 4 ? 8 : 5) dequant_fp8_v16_kernel(dq_args a) {
    jamba_pdl_begin();
    const I c16 = (I)(a.K / 16), n16 = (I)a.R * c16, per = (I)a.per;
    const I stride = (I)gridDim.x * blockDim.x;
    for (I c0 = (I)blockIdx.x * blockDim.x + threadIdx.x; c0 < n16; c0 += stride * DQ_U) {
        uint4 q[DQ_U];
        bool go[DQ_U];
#pragma unroll
        for (int u = 0; u < DQ_U; u++) {
            const I c = c0 + (I)u * stride;
            go[u] = dq_live<I>(a, c, c16, n16, per);
            if (go[u]) q[u] = gemv_ld_stream(a.q + (int64_t)c * 16);
        }
#pragma unroll
        for (int u = 0; u < DQ_U; u++)
            if (go[u]) dq_chunk<T, I>(a, c0 + (I)u * stride, c16, q[u]);
    }
}

/* bf16 / f16 outputs (session 37): chunks of 8 bytes, one 8-byte load and one 16-byte store, so each store
 * instruction of a warp writes 512 contiguous bytes (the 16-byte chunks' two stores each wrote every other 16 bytes
 * of 1 KB); DQ_U8 chunks a thread and iteration; K % 8 == 0, aligned data, 32-bit indices. Jamba-v0.1's experts
 * (2.8 G weights, bf16 out; dequant_probe_252858e.log): 2296 us, 86.8% of the copy bandwidth for its 3 bytes a weight,
 * against 3108 us (64.1%) for the 16-byte chunks in the same run (session 36's 16-byte kernel, by the dequantizing
 * path's times, about as fast), 1664 us for a bf16 fill of the output alone and 2638 us for a copy of it. */
#define DQ_U8 4
template <typename T, typename I>
__global__ void __launch_bounds__(256, sizeof(I) == 4 ? 8 : 5) dequant_fp8_v8_kernel(dq_args a) {
    jamba_pdl_begin();
    static_assert(sizeof(T) == 2, "16-bit outputs");
    const I c8 = (I)(a.K / 8), n8 = (I)a.R * c8, per = (I)a.per;
    const I stride = (I)gridDim.x * blockDim.x;
    for (I c0 = (I)blockIdx.x * blockDim.x + threadIdx.x; c0 < n8; c0 += stride * DQ_U8) {
        uint2 q[DQ_U8];
        bool go[DQ_U8];
#pragma unroll
        for (int u = 0; u < DQ_U8; u++) {
            const I c = c0 + (I)u * stride;
            go[u] = dq_live<I>(a, c, c8, n8, per);
            if (go[u]) q[u] = __ldcs((const uint2 *)(a.q + (int64_t)c * 8));
        }
#pragma unroll
        for (int u = 0; u < DQ_U8; u++)
            if (go[u]) {
                const I c = c0 + (I)u * stride;
                const float s = a.scale[c / c8];
                const uint32_t w[2] = {q[u].x, q[u].y};
                float f[8];
#pragma unroll
                for (int i = 0; i < 2; i++)
#pragma unroll
                    for (int h = 0; h < 2; h++) {
                        const __half2_raw hr = __nv_cvt_fp8x2_to_halfraw2(
                            (__nv_fp8x2_storage_t)((w[i] >> (16 * h)) & 0xffffu), __NV_E4M3);
                        const float2 v = __half22float2(__half2(hr));
                        f[4 * i + 2 * h] = v.x * s, f[4 * i + 2 * h + 1] = v.y * s;
                    }
                *(uint4 *)((T *)a.out + (int64_t)c * 8) = jamba_w16<T>::st(f);
            }
    }
}

template <typename T>
__global__ void __launch_bounds__(256) dequant_fp8_kernel(dq_args a) {
    jamba_pdl_begin();
    const int64_t n = a.R * a.K;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
        const int64_t r = i / a.K;
        if (dq_skip(a, r)) continue;
        const __half_raw h = __nv_cvt_fp8_to_halfraw((__nv_fp8_storage_t)a.q[i], __NV_E4M3);
        ((T *)a.out)[i] = jamba_st<T>(__half2float(__half(h)) * a.scale[r]);
    }
}

template <typename T>
static jamba_status dq_launch(const dq_args &a, int device, cudaStream_t stream) {
    int sms = 0;
    JAMBA_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
    /* one wave: as many blocks as fit at once (8 of 256 threads per SM is full occupancy: the chunk kernels with 32-bit
     * indices are bounded to 32 registers for it, 5 with 64-bit ones); a grid of more runs its grid-stride loops in a
     * second, partial wave */
    const int64_t slack = (int64_t)sms * 8 * 256 * DQ_U8; /* the loops' indices run this far past the end */
    const bool v8 = sizeof(T) == 2 && a.K % 8 == 0 && jamba_aligned16(a.out) && ((uintptr_t)a.q % 8 == 0) &&
                    a.R * (a.K / 8) + slack < ((int64_t)1 << 32);
    const bool v16 = !v8 && a.K % 16 == 0 && jamba_aligned16(a.out) && jamba_aligned16(a.q);
    const bool idx32 = v16 && a.R * (a.K / 16) + slack < ((int64_t)1 << 32);
    const int64_t work = v8 ? a.R * (a.K / 8) : v16 ? a.R * (a.K / 16) : a.R * a.K;
    const int64_t blocks = jamba_ceil_div(work, 256), cap = (int64_t)sms * (v16 && !idx32 ? 5 : 8);
    const dim3 grid((unsigned)(blocks < cap ? blocks : cap));
    if constexpr (sizeof(T) == 2) {
        if (v8) {
            jamba_kernel_launch(dequant_fp8_v8_kernel<T, uint32_t>, grid, dim3(256), 0, stream, a);
            JAMBA_LAUNCH_CHECK("dequant_fp8_v8_kernel", stream);
            return JAMBA_OK;
        }
    }
    if (idx32) { /* the loop's indices fit 32 bits */
        jamba_kernel_launch(dequant_fp8_v16_kernel<T, uint32_t>, grid, dim3(256), 0, stream, a);
        JAMBA_LAUNCH_CHECK("dequant_fp8_v16_kernel", stream);
    } else if (v16) {
        jamba_kernel_launch(dequant_fp8_v16_kernel<T, int64_t>, grid, dim3(256), 0, stream, a);
        JAMBA_LAUNCH_CHECK("dequant_fp8_v16_kernel", stream);
    } else {
        jamba_kernel_launch(dequant_fp8_kernel<T>, grid, dim3(256), 0, stream, a);
        JAMBA_LAUNCH_CHECK("dequant_fp8_kernel", stream);
    }
    return JAMBA_OK;
}

extern "C" jamba_status jamba_dequant_fp8_cuda(const jamba_dequant_fp8_params *p, jamba_launch launch) {
    JAMBA_TRY(jamba_dequant_fp8_check(p));
    dq_args a;
    a.out = p->out.data, a.q = (const uint8_t *)p->q.data, a.scale = (const float *)p->scale.data;
    a.goff = (const int32_t *)p->group_offsets.data;
    a.R = p->q.shape[0], a.K = p->q.shape[1];
    a.per = a.goff ? a.R / (p->group_offsets.shape[0] - 1) : (a.R ? a.R : 1);
    if (a.R == 0 || a.K == 0) return JAMBA_OK;
    JAMBA_DEVICE_GUARD(launch);
    cudaStream_t stream = (cudaStream_t)launch.stream;
    jamba_status s = JAMBA_ERR_DTYPE;
    JAMBA_DISPATCH_FLOAT(p->out.dtype, T, s = dq_launch<T>(a, launch.device, stream));
    return s;
}

/* ---- per-row quantization of activations (moe_quant_rows_fp8; moe.cuh states the semantics) ----
 * fp8_quant_rows_kernel<T>: x rows (K T elements, K % 16 == 0, 16-byte aligned; row r of the output reads row
 * idx[r] / topk of x, or row r without idx: the MoE's gather into sorted order done on the way) -> q (rows, K) e4m3
 * bytes and scale (rows,) f32. One 256-thread block per row; thread t holds the row's 16-byte vectors t + 256 i,
 * i < FQ_NV, in registers (rows up to 256 * FQ_NV * 8 = 16384 elements: Jamba-v0.1's H 4096 and F 14336), so the row is
 * read once: the absolute maximum (max.NaN, so a NaN reaches the scale; warp shuffles, then the 8 warps' maxima through
 * shared memory), then x * (448 / amax) in fp32 rounded to e4m3 with saturation (cvt.rn.satfinite), 8 bytes a vector.
 * Longer rows: their vectors past the registers are read again in the second pass. The same bits as
 * jamba_ext/reference.py quantize_rows_fp8 (fp32 division and product, round to nearest even).
 * Why a block per row: the first form (a warp per row, both passes from memory) read each row twice: 702 us of a
 * 11.6 ms W8A8 op at 16384 tokens (w8a8_ab_79b13cf.log), ~1.5x its bytes' time. */
#define FQ_NV 8
template <typename T> __device__ __forceinline__ float fq_amax16(const uint4 &u, float m) {
    float f[8];
    jamba_w16<T>::ld(u, f);
#pragma unroll
    for (int i = 0; i < 8; i++) m = jamba_max_nan(m, fabsf(f[i]));
    return m;
}
template <typename T> __device__ __forceinline__ uint2 fq_cvt16(const uint4 &u, float inv) {
    float f[8];
    jamba_w16<T>::ld(u, f);
    uint32_t w[4];
#pragma unroll
    for (int i = 0; i < 4; i++)
        w[i] = (uint32_t)__nv_cvt_float2_to_fp8x2(make_float2(__fmul_rn(f[2 * i], inv), __fmul_rn(f[2 * i + 1], inv)),
                                                 __NV_SATFINITE, __NV_E4M3);
    return make_uint2(w[0] | (w[1] << 16), w[2] | (w[3] << 16));
}
template <typename T>
__global__ void __launch_bounds__(256) fp8_quant_rows_kernel(uint8_t *q, float *scale, const T *x, const int32_t *idx,
                                                             int topk, int64_t K, int32_t *sched) {
    jamba_pdl_begin();
    __shared__ float wmax[8];
    if (sched != NULL && blockIdx.x == 0 && threadIdx.x < 2) sched[threadIdx.x] = 0; /* the GEMMs' tile counters */
    const int64_t r = blockIdx.x;
    const int t = threadIdx.x, lane = t & 31;
    const int64_t sr = idx != NULL ? (int64_t)(idx[r] / topk) : r;
    const uint4 *src = reinterpret_cast<const uint4 *>(x + sr * K);
    const int64_t nv = K / 8;
    uint4 v[FQ_NV];
#pragma unroll
    for (int i = 0; i < FQ_NV; i++) /* every load before the first use */
        if (t + 256 * i < nv) v[i] = src[t + 256 * i];
    float m = 0.f;
#pragma unroll
    for (int i = 0; i < FQ_NV; i++)
        if (t + 256 * i < nv) m = fq_amax16<T>(v[i], m);
    for (int64_t j = t + 256 * FQ_NV; j < nv; j += 256) m = fq_amax16<T>(src[j], m); /* rows past the registers */
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) m = jamba_max_nan(m, __shfl_xor_sync(0xffffffffu, m, o));
    if (lane == 0) wmax[t >> 5] = m;
    __syncthreads();
#pragma unroll
    for (int w = 0; w < 8; w++) m = jamba_max_nan(m, wmax[w]);
    const float inv = m > 0.f ? __fdiv_rn(448.f, m) : 1.f;
    if (t == 0) scale[r] = m > 0.f ? __fdiv_rn(m, 448.f) : 1.f;
    uint2 *dst = reinterpret_cast<uint2 *>(q + r * K);
#pragma unroll
    for (int i = 0; i < FQ_NV; i++)
        if (t + 256 * i < nv) dst[t + 256 * i] = fq_cvt16<T>(v[i], inv);
    for (int64_t j = t + 256 * FQ_NV; j < nv; j += 256) dst[j] = fq_cvt16<T>(src[j], inv);
}

jamba_status moe_quant_rows_fp8(int dtype, uint8_t *q, float *scale, const void *x, const int32_t *idx, int topk,
                                int64_t rows, int64_t K, int32_t *sched, cudaStream_t stream) {
    if (rows == 0) return JAMBA_OK;
    if (K % 16 != 0 || !jamba_aligned16(x) || !jamba_aligned16(q))
        return jamba_set_error(JAMBA_ERR_ARG, "jamba.moe_experts_fp8: fp8 activations need rows of a multiple of 16 "
                               "elements and 16-byte aligned data");
    if (rows > INT32_MAX)
        return jamba_set_error(JAMBA_ERR_ARG, "jamba.moe_experts_fp8: fp8 activations of at most 2^31 - 1 rows");
    const unsigned grid = (unsigned)rows; /* a block per row */
    if (dtype == JAMBA_BF16)
        jamba_kernel_launch(fp8_quant_rows_kernel<__nv_bfloat16>, grid, 256, 0, stream, q, scale,
            (const __nv_bfloat16 *)x, idx, topk, K, sched);
    else if (dtype == JAMBA_F16)
        jamba_kernel_launch(fp8_quant_rows_kernel<__half>, grid, 256, 0, stream, q, scale, (const __half *)x, idx, topk,
            K, sched);
    else
        return jamba_set_error(JAMBA_ERR_UNSUPPORTED, "jamba.moe_experts_fp8: fp8 activations from bf16 / f16 rows");
    JAMBA_LAUNCH_CHECK("fp8_quant_rows_kernel", stream);
    return JAMBA_OK;
}
