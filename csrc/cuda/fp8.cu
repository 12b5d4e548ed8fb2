/* fp8.cu -- dequant_fp8 on CUDA: e4m3 weight bytes and a scale per row -> f32 / f16 / bf16 rows.
 *
 * Exports (extern "C"): jamba_dequant_fp8_cuda. Semantics and checks: csrc/jamba.h (JAMBA_FP8_API), csrc/cpu/fp8.c.
 *   out (R, K) T = round_T(e4m3(q (R, K) u8) * scale (R,) f32), contiguous; group_offsets (G+1,) i32 optional:
 *   the R rows in G equal groups, a group with no routed rows (equal neighbouring offsets) is skipped.
 * Kernels (grid-stride, 256 threads):
 *   dequant_fp8_v16_kernel<T>  K % 16 == 0 and 16-byte aligned data: a thread takes 16 consecutive bytes of one row
 *                              (one 16-byte load, the conversion of gemv.cuh, 16 / VN 16-byte stores)
 *   dequant_fp8_kernel<T>      any K: one element per thread
 * Why: the MoE prefill path of fp8 experts (jamba_ext/ops.py moe_experts_fp8 above the decode sizes) converts the
 * touched experts before the GEMMs; this is a pure stream, 1 byte read and sizeof(T) written per weight.
 */
#include "gemv.cuh"

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

template <typename T>
__global__ void __launch_bounds__(256) dequant_fp8_v16_kernel(dq_args a) {
    jamba_pdl_begin();
    constexpr int VN = 16 / (int)sizeof(T);
    const int64_t n16 = a.R * (a.K / 16);
    for (int64_t c = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; c < n16; c += (int64_t)gridDim.x * blockDim.x) {
        const int64_t i = c * 16, r = i / a.K;
        if (dq_skip(a, r)) continue;
        float f[16];
        jamba_e4m3x16_ld(gemv_ld_stream(a.q + i), f);
        const float s = a.scale[r];
#pragma unroll
        for (int j = 0; j < 16; j++) f[j] *= s;
        uint4 *o = (uint4 *)((T *)a.out + i);
#pragma unroll
        for (int v = 0; v < 16 / VN; v++) o[v] = jamba_w16<T>::st(f + v * VN);
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
    const bool v16 = a.K % 16 == 0 && jamba_aligned16(a.out) && jamba_aligned16(a.q);
    const int64_t work = v16 ? a.R * (a.K / 16) : a.R * a.K;
    const int64_t blocks = jamba_ceil_div(work, 256), cap = (int64_t)sms * 8;
    const dim3 grid((unsigned)(blocks < cap ? blocks : cap));
    if (v16) {
        jamba_kernel_launch(dequant_fp8_v16_kernel<T>, grid, dim3(256), 0, stream, a);
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
