/* moe.cuh -- pieces shared by the MoE CUDA files (moe.cu: routing, permutation, mma.sync / decode / SIMT
 * GEMMs, combine; moe_wgmma.cu: the sm_90a wgmma GEMM): the GEMM argument block, the m-tile -> expert map,
 * the grouped block order, the HF rounding of the epilogues, cp.async and paired stores. Not part of the C API.
 */
#ifndef JAMBA_MOE_CUH
#define JAMBA_MOE_CUH

#include "common.cuh"

/* ---- shared pieces ----------------------------------------------------------------------------------- */
/* key of an expert id: its bucket, E for ids outside [0, E) (they go after expert_offsets[E]) */
__device__ __forceinline__ int moe_key(int id, int E) { return (id >= 0 && id < E) ? id : E; }

/* The m-tiles of all experts, expert-major: tile mt -> (expert, first row, end row) in sorted order; an expert's
 * last partial tile counts only if it holds more than min_last rows (0: every partial tile; the wgmma engine's
 * WT_FULL mode leaves the tails of <= 64 rows to another launch). Upper bound of the tile count, known on the
 * host: ceil(slots / BM) + E. False for tiles past the end. */
__device__ __forceinline__ bool moe_find_tile(const int32_t *offsets, int E, int64_t mt, int bm, int min_last,
                                              int *e_out, int64_t *row0, int64_t *row_end) {
    for (int e = 0; e < E; e++) {
        const int64_t lo = offsets[e], hi = offsets[e + 1];
        const int64_t nt = (hi - lo) / bm + ((hi - lo) % bm > min_last ? 1 : 0);
        if (mt < nt) {
            *e_out = e;
            *row0 = lo + mt * bm;
            *row_end = hi;
            return true;
        }
        mt -= nt;
    }
    return false;
}

/* Grouped block order of the prefill GEMMs over an m_tiles x n_tiles grid of output tiles: `group`
 * consecutive m-tiles visit each n-tile (one W tile) before the next n-tile, so that W tile is re-read while
 * it is still in L2. Block pid -> (m-tile, n-tile); the last group may hold fewer m-tiles. */
__device__ __forceinline__ void moe_grouped_tile(int64_t pid, int64_t m_tiles, int64_t n_tiles, int group,
                                                 int64_t *mt, int64_t *nt) {
    const int64_t in_group = (int64_t)group * n_tiles;
    const int64_t first_m = (pid / in_group) * group;
    const int64_t gsize = m_tiles - first_m < group ? m_tiles - first_m : group;
    *mt = first_m + (pid % in_group) % gsize;
    *nt = (pid % in_group) / gsize;
}

struct moe_gemm_args {
    const void *A;            /* gate_up: x (T, H), rows gathered by sorted_slots / TOPK; down: act (slots, F) */
    const void *W;            /* w_gate_up (E, 2F, H) or w_down (E, H, F) */
    void *C;                  /* gate_up: act (slots, F) in sorted order; down: slot_out (slots, H), slot order */
    const int32_t *offsets;   /* (E+1,) */
    const int32_t *sorted;    /* (slots,) */
    const float *weights;     /* (T*TOPK,) f32, slot order */
    int64_t Kd;               /* reduction size: H (gate_up) or F (down) */
    int64_t N;                /* outputs per row: F (gate_up) or H (down) */
    int64_t w_rows;           /* rows of one expert's W: 2F or H */
    int E, topk, gate_up;
    int32_t *sched;           /* impl wgmma: this GEMM's tile counter, zero on entry (NULL: non-persistent kernel) */
    int half_tiles;           /* persistent wgmma kernel: an expert's last <= 64 rows as a half tile (set by its launcher) */
    const float *wscale;      /* fp8 weights (moe_decode_kernel F8, moe_wgmma_gemm_f8): (E, w_rows) row scales */
    const float *ascale;      /* fp8 A rows (moe_wgmma_gemm_q8): (slots,) a scale per sorted row */
    int epi_f2f;              /* wgmma engines (set by moe_wgmma_gemm): 1 = the epilogues round a value a conversion
                               * (moe_act_fast / moe_scaled) instead of a pair (moe_act_fast2 / moe_scaled2); A/B */
};

/* gate_up: value of act from the fp32 dot products; down: value of slot_out */
template <typename T> __device__ __forceinline__ float moe_act(float g, float u) {
    const float gr = jamba_round<T>(g);
    return jamba_round<T>(jamba_round<T>(gr / (1.f + expf(-gr))) * jamba_round<T>(u));
}
/* moe_act with the fast exponential and division (ex2.approx, ~4 ulp of fp32 in all): the bf16/f16 result can
 * differ from moe_act's by one unit in ~1e-4 of the elements (the same math as the silu_mul op) */
template <typename T> __device__ __forceinline__ float moe_act_fast(float g, float u) {
    const float gr = jamba_round<T>(g);
    return jamba_round<T>(jamba_round<T>(__fdividef(gr, 1.f + __expf(-gr))) * jamba_round<T>(u));
}
template <typename T> __device__ __forceinline__ float moe_scaled(float y, float w) {
    return jamba_round<T>(jamba_round<T>(y) * jamba_round<T>(w));
}

/* Two outputs at a time (session 56): one packed conversion (cvt.rn.bf16x2.f32 / f16x2) rounds a pair, where the
 * forms above round each value by itself (an F2F each, on the 16-a-cycle pipe that the exponential and the division
 * use too). The same bits as moe_pack2 of moe_act_fast / moe_scaled; lo is the lower address. */
template <typename T> __device__ __forceinline__ uint32_t moe_pack2(float lo, float hi) {
    if constexpr (std::is_same<T, __half>::value) return jamba_f16x2_st(lo, hi);
    else return jamba_bf16x2_st(lo, hi);
}
template <typename T> __device__ __forceinline__ void moe_unpack2(uint32_t p, float &lo, float &hi) {
    if constexpr (std::is_same<T, __half>::value) {
        lo = __half2float(__ushort_as_half((unsigned short)(p & 0xffffu)));
        hi = __half2float(__ushort_as_half((unsigned short)(p >> 16)));
    } else {
        lo = __uint_as_float(p << 16);
        hi = __uint_as_float(p & 0xffff0000u);
    }
}
/* moe_pack2(moe_act_fast(g0, u0), moe_act_fast(g1, u1)) */
template <typename T> __device__ __forceinline__ uint32_t moe_act_fast2(float g0, float g1, float u0, float u1) {
    float a0, a1, b0, b1, s0, s1;
    moe_unpack2<T>(moe_pack2<T>(g0, g1), a0, a1);
    moe_unpack2<T>(moe_pack2<T>(u0, u1), b0, b1);
    moe_unpack2<T>(moe_pack2<T>(__fdividef(a0, 1.f + __expf(-a0)), __fdividef(a1, 1.f + __expf(-a1))), s0, s1);
    return moe_pack2<T>(s0 * b0, s1 * b1);
}
/* moe_pack2(moe_scaled(y0, w0), moe_scaled(y1, w1)) for w0, w1 already rounded to T */
template <typename T> __device__ __forceinline__ uint32_t moe_scaled2(float y0, float y1, float w0, float w1) {
    float a0, a1;
    moe_unpack2<T>(moe_pack2<T>(y0, y1), a0, a1);
    return moe_pack2<T>(a0 * w0, a1 * w1);
}

/* ---- stores (the async copies: common.cuh) ------------------------------------------------------------ */
/* two adjacent elements (4-byte aligned) */
template <typename T> __device__ __forceinline__ void store2(T *p, float a, float b);
template <> __device__ __forceinline__ void store2<__nv_bfloat16>(__nv_bfloat16 *p, float a, float b) {
    *reinterpret_cast<__nv_bfloat162 *>(p) = __floats2bfloat162_rn(a, b);
}
template <> __device__ __forceinline__ void store2<__half>(__half *p, float a, float b) {
    *reinterpret_cast<__half2 *>(p) = __floats2half2_rn(a, b);
}

/* engines defined in moe_wgmma.cu (sm_90a; UNSUPPORTED elsewhere). moe_wgmma_gemm: one GEMM with A rows in
 * sorted order (a.gate_up: the rows gathered by moe_gather_rows) */
jamba_status moe_wgmma_gemm(int dtype, const moe_gemm_args &a, int64_t slots, int device, cudaStream_t stream);
/* moe_wgmma_gemm on e4m3 weights (a.W bytes, a.wscale the (E, w_rows) row scales; moe_wgmma_f8ws_kernel): the fp32
 * sums times the row scales, then the same epilogues; bf16 / f16 A, Kd % 16 == 0 */
jamba_status moe_wgmma_gemm_f8(int dtype, const moe_gemm_args &a, int64_t slots, int device, cudaStream_t stream);
/* W8A8 (moe_experts_fp8 with act_fp8, Hopper): moe_wgmma_gemm with A (slots, Kd) e4m3 bytes in sorted order and
 * a.ascale their row scales, W e4m3 bytes and a.wscale its row scales: C from sum_k e4m3(A[p, k]) e4m3(W[n, k]) (wgmma e4m3,
 * fp32 accumulators) times ascale[p] * wscale[n], then the same epilogues; the persistent kernel (a.sched required);
 * dtype = C's (bf16 / f16), Kd % 16 == 0 */
jamba_status moe_wgmma_gemm_q8(int dtype, const moe_gemm_args &a, int64_t slots, int device, cudaStream_t stream);
/* per-row e4m3 quantization (fp8.cu): for r < rows, src row = x row (idx ? idx[r] / topk : r) of K elements of dtype
 * (bf16 / f16): amax = max |x|, scale[r] = amax / 448 and q[r, k] = e4m3_satfinite(x[k] * (448 / amax)) (fp32, round to
 * nearest even; amax 0: scale 1, q 0); K % 16 == 0, 16-byte aligned rows; sched[0..1] = 0 (if not NULL) */
jamba_status moe_quant_rows_fp8(int dtype, uint8_t *q, float *scale, const void *x, const int32_t *idx, int topk,
                                int64_t rows, int64_t K, int32_t *sched, cudaStream_t stream);
/* xs[p, :] = x[sorted[p] / topk, :], p < slots; H % 8 == 0, 16-byte aligned rows; sched[0..1] = 0 (if not NULL:
 * the tile counters of the two GEMMs that follow) */
jamba_status moe_gather_rows(int dtype, void *xs, const void *x, const int32_t *sorted, int topk, int64_t slots,
                             int64_t H, int32_t *sched, cudaStream_t stream);
/* the experts of a few tokens by the weight-streaming GEMVs of moe_gemv.cu, fused combine included; *ran = 0
 * when the path does not apply (more tokens than it takes, dtype not bf16/f16, env JAMBA_EXT_MOE_GEMV=0): nothing
 * was launched */
jamba_status moe_gemv_decode(int dtype, const jamba_moe_experts_params *p, cudaStream_t stream, int *ran);
/* moe_experts_fp8 with the permutation given (expert_offsets, sorted_slots, slot_out): moe.cu's ring kernels on the
 * e4m3 weights, then the combine; bf16 / f16, H and F multiples of 16, aligned data (checked by the caller) */
jamba_status moe_fp8_ring(const jamba_moe_experts_fp8_params *p, int device, cudaStream_t stream);
/* 1 when the TMA coordinates of the wgmma GEMMs fit int32: E experts of w_rows W rows each (plus a tile), slots A rows
 * (plus a tile); moe_wgmma_gemm / moe_wgmma_gemm_f8 refuse the others */
int moe_wgmma_coords_fit(int64_t E, int64_t w_rows, int64_t slots);
/* 1 when the wgmma kernels can run on `device` (a Hopper GPU and sm_90a code in this build), cached */
int moe_wgmma_available(int device);

#endif /* JAMBA_MOE_CUH */
