/* gemv.cuh -- the weight-streaming dot-product loop shared by the decode GEMVs (gemv.cu: the projections;
 * moe_gemv.cu: the MoE experts at one token). Not part of the C API.
 *
 *   gemv_ld_stream(p)                      16 bytes of a weight row, ld.global.nc with L1::no_allocate (read once)
 *   gemv_warp_dot<T, R, MM, U>(...)        one warp's partial dot products of R weight rows with MM rows of x
 *   gemv_warp_dot_f8<T, R, U>(...)         the same for one row of x (bf16 / f16) and weight rows of fp8 e4m3 bytes
 *   jamba_e4m3x16_ld, jamba_e4m3x2_to16<T> e4m3 bytes -> floats / a bf16x2 or f16x2 pair (also moe.cu's fp8 ring)
 *
 * Layout of gemv_warp_dot: weight rows and x rows have unit stride, K elements, 16-byte aligned starts, K a
 * multiple of VN = 16 / sizeof(T). K is cut into chunks of 32 * VN elements; the warp takes chunks ks, ks + kw,
 * ks + 2 kw, ... (kw warps share the rows, each a slice), lane l the VN elements [l VN, (l + 1) VN) of each chunk.
 * U chunks' weight loads (R each) are issued before the first multiply; x is read through the read-only cache
 * (small, shared by every block). acc[r][m] gets this lane's part only (sum it over the warp, then over the kw
 * slices in slice order: the callers do, so the result is deterministic).
 */
#ifndef JAMBA_GEMV_CUH
#define JAMBA_GEMV_CUH

#include "common.cuh"

#include <cuda_fp8.h>

__device__ __forceinline__ uint4 gemv_ld_stream(const void *p) {
    uint4 r;
    asm("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
        : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w)
        : "l"(p));
    return r;
}

/* wrow[r]: weight row r (wok[r] false: not read, counts as zeros); x: row 0 of x, sx its row stride, mc <= MM
 * rows used */
template <typename T, int R, int MM, int U>
__device__ __forceinline__ void gemv_warp_dot(const T *const (&wrow)[R], const bool (&wok)[R], const T *x,
                                              int64_t sx, int mc, int64_t K, int ks, int kw, int lane,
                                              float (&acc)[R][MM]) {
    constexpr int VN = 16 / (int)sizeof(T);
    const int64_t nchunk = K / (32 * VN) + (K % (32 * VN) != 0);
    for (int64_t c0 = ks; c0 < nchunk; c0 += (int64_t)U * kw) {
        uint4 wv[U][R];
#pragma unroll
        for (int u = 0; u < U; u++) {
            const int64_t k = (c0 + (int64_t)u * kw) * (32 * VN) + lane * VN;
#pragma unroll
            for (int r = 0; r < R; r++)
                wv[u][r] = (k < K && wok[r]) ? gemv_ld_stream(wrow[r] + k) : make_uint4(0u, 0u, 0u, 0u);
        }
#pragma unroll
        for (int u = 0; u < U; u++) {
            const int64_t k = (c0 + (int64_t)u * kw) * (32 * VN) + lane * VN;
            if (k >= K) break;
            float wf[R][VN];
#pragma unroll
            for (int r = 0; r < R; r++) jamba_w16<T>::ld(wv[u][r], wf[r]);
#pragma unroll
            for (int m = 0; m < MM; m++) {
                if (m >= mc) break;
                float xf[VN];
                jamba_w16<T>::ld(__ldg((const uint4 *)(x + m * sx + k)), xf);
#pragma unroll
                for (int r = 0; r < R; r++)
#pragma unroll
                    for (int j = 0; j < VN; j++) acc[r][m] = fmaf(xf[j], wf[r][j], acc[r][m]);
            }
        }
    }
}

/* 16 e4m3 bytes of one 16-byte load (the lowest address first) -> 16 floats. Every e4m3 value is exact in f16:
 * cvt.rn.f16x2.e4m3x2 on sm_89+ (cuda_fp8.h emulates it on sm_80), then f16 -> f32. */
__device__ __forceinline__ void jamba_e4m3x16_ld(const uint4 &r, float *f) {
    const uint32_t w[4] = {r.x, r.y, r.z, r.w};
#pragma unroll
    for (int i = 0; i < 4; i++) {
#pragma unroll
        for (int h = 0; h < 2; h++) {
            const __half2_raw hr =
                __nv_cvt_fp8x2_to_halfraw2((__nv_fp8x2_storage_t)((w[i] >> (16 * h)) & 0xffffu), __NV_E4M3);
            const float2 v = __half22float2(__half2(hr));
            f[4 * i + 2 * h] = v.x, f[4 * i + 2 * h + 1] = v.y;
        }
    }
}

/* two e4m3 bytes (the low 16 bits of w2, the lower byte first) -> the same two values as a T2 pair (bf16x2 / f16x2
 * bits, the first value in the low half), exactly: e4m3 -> f16 is exact (cvt.rn.f16x2.e4m3x2), and every e4m3 value
 * is a bf16 value too: f16 -> f32, then the f32's upper 16 bits are its bf16 bits (at most 4 significant bits, so the
 * lower 16 are zero; a NaN stays a NaN), taken by a byte permute instead of a second conversion instruction */
template <typename T> __device__ __forceinline__ uint32_t jamba_e4m3x2_to16(uint32_t w2);
template <> __device__ __forceinline__ uint32_t jamba_e4m3x2_to16<__half>(uint32_t w2) {
    const __half2_raw hr = __nv_cvt_fp8x2_to_halfraw2((__nv_fp8x2_storage_t)(w2 & 0xffffu), __NV_E4M3);
    return (uint32_t)hr.x | ((uint32_t)hr.y << 16);
}
template <> __device__ __forceinline__ uint32_t jamba_e4m3x2_to16<__nv_bfloat16>(uint32_t w2) {
    const __half2_raw hr = __nv_cvt_fp8x2_to_halfraw2((__nv_fp8x2_storage_t)(w2 & 0xffffu), __NV_E4M3);
    const float2 v = __half22float2(__half2(hr));
    return __byte_perm(__float_as_uint(v.x), __float_as_uint(v.y), 0x7632);
}

/* gemv_warp_dot_f8's products of one chunk: x's 16 elements at k (two loads) against this lane's 16 e4m3 bytes of
 * each of the R rows (wv[r]), added into acc[r][0] in order */
template <typename T, int R>
__device__ __forceinline__ void gemv_f8_chunk(const T *x, int64_t k, const uint4 (&wv)[R], float (&acc)[R][1]) {
    float xf[16];
    jamba_w16<T>::ld(__ldg((const uint4 *)(x + k)), xf);
    jamba_w16<T>::ld(__ldg((const uint4 *)(x + k + 8)), xf + 8);
#pragma unroll
    for (int r = 0; r < R; r++) {
        float wf[16];
        jamba_e4m3x16_ld(wv[r], wf);
#pragma unroll
        for (int j = 0; j < 16; j++) acc[r][0] = fmaf(xf[j], wf[j], acc[r][0]);
    }
}

/* gemv_warp_dot for one row of x (T = bf16 / f16) against R weight rows of e4m3 bytes: chunks of 32 * 16 elements
 * (lane l: the 16 weights [16 l, 16 l + 16) of a chunk, one 16-byte load, and x's 16 elements, two loads); K a
 * multiple of 16, row starts 16-byte aligned. acc[r][0] gets this lane's part of sum_k e4m3(w[r][k]) x[k]. */
template <typename T, int R, int U>
__device__ __forceinline__ void gemv_warp_dot_f8(const uint8_t *const (&wrow)[R], const bool (&wok)[R], const T *x,
                                                 int64_t K, int ks, int kw, int lane, float (&acc)[R][1],
                                                 bool fast = true) {
    static_assert(sizeof(T) == 2, "fp8 weights pair with a 16-bit x");
    constexpr int CH = 32 * 16;
    const int64_t nchunk = K / CH + (K % CH != 0);
    int64_t c0 = ks;
    bool allok = fast;
#pragma unroll
    for (int r = 0; r < R; r++) allok = allok && wok[r];
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 890
    allok = false; /* sm_80 converts e4m3 in software: a second copy of the loop only adds spills there */
#endif
    /* batches whose U chunks all lie inside K, every row read: no bound checks (the same loads and sums, in the same
     * order, as the checked loop below, which takes the rest) */
    if (allok)
        for (; (c0 + (int64_t)(U - 1) * kw + 1) * CH <= K; c0 += (int64_t)U * kw) {
            uint4 wv[U][R];
#pragma unroll
            for (int u = 0; u < U; u++)
#pragma unroll
                for (int r = 0; r < R; r++) wv[u][r] = gemv_ld_stream(wrow[r] + (c0 + (int64_t)u * kw) * CH + lane * 16);
#pragma unroll
            for (int u = 0; u < U; u++) gemv_f8_chunk<T, R>(x, (c0 + (int64_t)u * kw) * CH + lane * 16, wv[u], acc);
        }
    for (; c0 < nchunk; c0 += (int64_t)U * kw) {
        uint4 wv[U][R];
#pragma unroll
        for (int u = 0; u < U; u++) {
            const int64_t k = (c0 + (int64_t)u * kw) * CH + lane * 16;
#pragma unroll
            for (int r = 0; r < R; r++)
                wv[u][r] = (k < K && wok[r]) ? gemv_ld_stream(wrow[r] + k) : make_uint4(0u, 0u, 0u, 0u);
        }
#pragma unroll
        for (int u = 0; u < U; u++) {
            const int64_t k = (c0 + (int64_t)u * kw) * CH + lane * 16;
            if (k >= K) break;
            gemv_f8_chunk<T, R>(x, k, wv[u], acc);
        }
    }
}

/* warps along K for a row of nchunk chunks: each warp >= 4 chunks where K allows (kw of 1, 2, 4, 8) */
static inline int gemv_pick_kw(int64_t nchunk, int warps) {
    int kw = 1;
    while (kw < warps && nchunk >= 4 * 2 * kw) kw *= 2;
    return kw;
}

#endif /* JAMBA_GEMV_CUH */
