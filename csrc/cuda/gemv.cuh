/* gemv.cuh -- the weight-streaming dot-product loop shared by the decode GEMVs (gemv.cu: the projections;
 * moe_gemv.cu: the MoE experts at one token). Not part of the C API.
 *
 *   gemv_ld_stream(p)                      16 bytes of a weight row, ld.global.nc with L1::no_allocate (read once)
 *   gemv_warp_dot<T, R, MM, U>(...)        one warp's partial dot products of R weight rows with MM rows of x
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

/* warps along K for a row of nchunk chunks: each warp >= 4 chunks where K allows (kw of 1, 2, 4, 8) */
static inline int gemv_pick_kw(int64_t nchunk, int warps) {
    int kw = 1;
    while (kw < warps && nchunk >= 4 * 2 * kw) kw *= 2;
    return kw;
}

#endif /* JAMBA_GEMV_CUH */
