/* sum_mid.cu -- fixed-order sums of partials over their middle axis on CUDA (the backward ops' last step).
 *
 * Exports: jamba_cuda_sum_mid (common.cuh). Layout: in (I, K, J) f32 contiguous, out (I, J) f32 contiguous:
 * out[i, j] = sum over k of in[i, k, j], in an order that does not depend on the grid (bit-identical run to run).
 * Used by selective_scan_bwd (dB, dC over channel blocks; dA, dD, ddelta_bias over the batch) and rms_norm_bwd
 * (dweight over row groups).
 */
#include "common.cuh"

/* out[i * J + j] = sum_{k < K} in[(i * K + k) * J + j]. A block (256 threads) takes tiles of 32 consecutive j: warp s
 * sums the k = s (mod 8) terms with 4 loads in flight, then the 8 warps' sums are added in warp order (a fixed order
 * whatever the grid). One thread per output with a chain of K loads (the first version) took ~1 ms per call at
 * K = 256 partials, as long as the scan kernel itself. */
static __global__ void __launch_bounds__(256) sum_mid_kernel(float *out, const float *in, int64_t I, int64_t K,
                                                             int64_t J) {
    jamba_pdl_begin();
    __shared__ float part[8][33];
    const int jl = threadIdx.x & 31, sl = threadIdx.x >> 5;
    const int64_t nJ = (J + 31) / 32;
    for (int64_t tile = blockIdx.x; tile < I * nJ; tile += gridDim.x) {
        const int64_t i = tile / nJ, j = (tile % nJ) * 32 + jl;
        float a0 = 0.f, a1 = 0.f, a2 = 0.f, a3 = 0.f;
        if (j < J) {
            const float *src = in + i * K * J + j;
            int64_t k = sl;
            for (; k + 24 < K; k += 32) {
                a0 += src[k * J];
                a1 += src[(k + 8) * J];
                a2 += src[(k + 16) * J];
                a3 += src[(k + 24) * J];
            }
            for (; k < K; k += 8) a0 += src[k * J];
        }
        part[sl][jl] = (a0 + a1) + (a2 + a3);
        __syncthreads();
        if (sl == 0 && j < J) {
            float t = 0.f;
#pragma unroll
            for (int r = 0; r < 8; r++) t += part[r][jl];
            out[i * J + j] = t;
        }
        __syncthreads();
    }
}

jamba_status jamba_cuda_sum_mid(float *out, const float *in, int64_t I, int64_t K, int64_t J, cudaStream_t stream,
                                const char *what) {
    const int64_t tiles = I * jamba_ceil_div(J, 32);
    if (tiles == 0) return JAMBA_OK;
    const int64_t blocks = tiles < 65536 ? tiles : 65536;
    jamba_kernel_launch(sum_mid_kernel, dim3((unsigned)blocks), dim3(256), 0, stream, out, in, I, K, J);
    JAMBA_LAUNCH_CHECK(what, stream);
    return JAMBA_OK;
}
