/* gemv.cu -- out = x @ weight^T (+ bias) for a few rows of x (the decode step's projections), on CUDA.
 *
 * Exports: jamba_gemv_cuda (checks: csrc/cpu/gemv.c). Math as csrc/cpu/gemv.c: fp32 dot products in a fixed order
 * (deterministic), bias added in fp32, one rounding to x's dtype. The summation order differs from the CPU op's.
 *
 * Kernels (shapes and layouts at each):
 *   gemv_vec_kernel<T, MM>: x (M, K), weight (N, K), out (M, N), unit stride along the last dim, rows and base
 *     pointers 16-byte aligned, K a multiple of VN = 16 / sizeof(T). A block of 8 warps owns RB = 2 * 8 / KW weight
 *     rows and MM rows of x (grid (N / RB, M / MM)): its warps form 8 / KW row pairs x KW slices of K; lane l of a
 *     warp reads VN elements of each of its 2 weight rows per chunk of 32 * VN, chunks KW apart, U chunks' weight
 *     loads issued before the first multiply; x is read through the read-only cache (tiny, shared by every
 *     block), the weight with L1::no_allocate (read once): gemv_warp_dot (gemv.cuh). Each warp's 2 x MM sums go
 *     through a shuffle butterfly, then the KW slices of a row are added in slice order through shared memory.
 *   gemv_ring_kernel<T>: T bf16 / f16, 1 <= M <= 8, the vec kernel's layout conditions; the default for 2-8 rows at
 *     N >= 512, for 5-8 rows at N >= 256 and for 1 row at 512 <= N <= 8192 (gemv_ring_pick). Tensor cores (mma
 *     m16n8k16): weight rows are the product's 16-row side, the rows of x its 8-column side (rows >= M zero-filled, never stored). Each warp owns 16
 *     weight rows and a slice of K's stages of 128 elements, and copies its stages (16 W + 8 x rows x 256 bytes) into
 *     its own cp.async ring in shared memory, 4 stages in flight; layout and swizzle at the kernel. The accumulators:
 *     rows g / g + 8, x rows 2t / 2t + 1 of lane (g, t) = (lane / 4, lane % 4); the KW slices added in slice order
 *     through shared memory (deterministic). (A register-direct version, the weights and x loaded straight into the
 *     fragments, read wide weights at 80-87% of copy bandwidth against this kernel's 88-96%: removed after
 *     gpu_round_660e493.log.)
 *   gemv_any_kernel<T>: any alignment or K: one warp per weight row, lanes striding K, every row of x.
 * Why: cuBLAS at these shapes (benchmarks/results/gemv_probe_17ebd72.log, H200 bf16, M = 1,
 * graph-timed) runs the long-K, short-N projections at 58-88% of the weight-read floor (Mamba out_proj 4096 x 8192:
 * 22.0 us against 15.8; x_proj 288 x 8192: 7.7 against 1.1; attention o 4096 x 4096: 13.6 against 7.9; MLP down
 * 4096 x 14336: 31.5 against 27.6), the wide ones at 95-99%; it also cannot start before our PDL kernels end.
 * At 2-8 rows the ring kernel beats cuBLAS on every decode projection but the widest two (in_proj, MLP gate|up:
 * within 2%; numbers at gemv_ring_pick).
 */
#include <stdlib.h>
#include <string.h>

#include "gemv.cuh"

#define GEMV_WARPS 8 /* warps per block */
#define GEMV_R 2     /* weight rows per warp */
#define GEMV_RING_MAXM 8

struct gemv_args {
    void *out;
    const void *x, *w, *bias;
    int64_t M, N, K;
    int64_t sx, sw, so; /* row strides (elements) */
    int bdt;            /* bias dtype (JAMBA_F32 or x's); bias may be NULL */
    int kw;             /* vec kernel: warps along K (1, 2, 4 or 8) */
};

__device__ __forceinline__ float gemv_bias(const gemv_args &a, int64_t n) {
    return a.bias ? jamba_ld_any(a.bias, a.bdt, n) : 0.f;
}

template <typename T, int MM>
__global__ void __launch_bounds__(GEMV_WARPS * 32) gemv_vec_kernel(gemv_args a) {
    jamba_pdl_begin();
    constexpr int U = MM <= 2 ? 4 : 2; /* chunks per batch of loads */
    __shared__ float red[GEMV_WARPS][GEMV_R][MM];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, kw = a.kw, ks = warp % kw;
    const int rows_per_block = GEMV_R * (GEMV_WARPS / kw);
    const int64_t n0 = (int64_t)blockIdx.x * rows_per_block + (warp / kw) * GEMV_R;
    const int64_t m0 = (int64_t)blockIdx.y * MM;
    const int mc = (int)min((int64_t)MM, a.M - m0);
    const T *wrow[GEMV_R];
    bool wok[GEMV_R];
#pragma unroll
    for (int r = 0; r < GEMV_R; r++) {
        wok[r] = n0 + r < a.N;
        wrow[r] = (const T *)a.w + (wok[r] ? n0 + r : 0) * a.sw;
    }
    float acc[GEMV_R][MM];
#pragma unroll
    for (int r = 0; r < GEMV_R; r++)
#pragma unroll
        for (int m = 0; m < MM; m++) acc[r][m] = 0.f;

    gemv_warp_dot<T, GEMV_R, MM, U>(wrow, wok, (const T *)a.x + m0 * a.sx, a.sx, mc, a.K, ks, kw, lane, acc);
#pragma unroll
    for (int r = 0; r < GEMV_R; r++)
#pragma unroll
        for (int m = 0; m < MM; m++) {
            const float v = jamba_warp_sum(acc[r][m]);
            if (lane == 0) red[warp][r][m] = v;
        }
    __syncthreads();
    /* thread t < rows_per_block * MM: row n0b + t / MM of the block, x row t % MM; slices added in order */
    const int t = threadIdx.x;
    if (t < rows_per_block * MM) {
        const int rb = t / MM, m = t % MM, pair = rb / GEMV_R, r = rb % GEMV_R;
        const int64_t n = (int64_t)blockIdx.x * rows_per_block + rb;
        if (n < a.N && m < mc) {
            float s = 0.f;
            for (int j = 0; j < kw; j++) s += red[pair * kw + j][r][m];
            ((T *)a.out)[(m0 + m) * a.so + n] = jamba_st<T>(s + gemv_bias(a, n));
        }
    }
}

/* the ring kernel's end: the KW slices of each 16-row tile added in slice order (red: [warps][4][32] floats
 * of shared memory, every thread of the block calls this), then accumulator j of lane (g, t) = W row n0 + g +
 * (j / 2) 8, x row 2t + j % 2, plus the bias, rounded to T */
template <typename T, int WARPS>
__device__ __forceinline__ void gemv_ring_store(const gemv_args &a, float (&c)[4], float (&red)[WARPS][4][32],
                                               int warp, int lane, int64_t n0) {
    const int kw = a.kw, ks = warp % kw, g = lane >> 2, t = lane & 3;
    if (kw > 1) {
#pragma unroll
        for (int j = 0; j < 4; j++) red[warp][j][lane] = c[j];
        __syncthreads();
        if (ks != 0) return;
#pragma unroll
        for (int j = 0; j < 4; j++) {
            float s = 0.f;
            for (int q = 0; q < kw; q++) s += red[warp + q][j][lane];
            c[j] = s;
        }
    }
#pragma unroll
    for (int j = 0; j < 4; j++) {
        const int64_t n = n0 + g + (j >> 1) * 8;
        const int m = 2 * t + (j & 1);
        if (n < a.N && m < a.M) ((T *)a.out)[m * a.so + n] = jamba_st<T>(c[j] + gemv_bias(a, n));
    }
}

/* out (M, N) = x (M, K) @ W (N, K)^T on tensor cores (mma m16n8k16; T bf16 / f16, 1 <= M <= 8): weight rows are the
 * product's 16-row side, the rows of x its 8-column side. Blocks of GR_WARPS warps; warp (pair = warp / KW, slice
 * ks = warp % KW) owns weight rows n0 .. n0 + 15 and K's stages of 128 elements ks, ks + KW, ... Each warp streams its
 * stages through its own cp.async ring (GR_S stages in flight): a stage holds its 16 W rows and 8 x rows (rows >= M
 * and k >= K zero-filled) x 256 bytes; lane l copies rows 2i + l / 16, 16-byte unit l % 16, i < 8 (W) / 4 (x), so
 * one copy instruction covers 2 rows x 256 bytes. Units of odd rows are stored at unit ^ 4 (conflict-free 16-byte
 * reads: in a quarter warp rows 2p and 2p + 1 fall in different halves of the 8 bank groups; dev/gemv_ring_mirror.py
 * replays the plan and counts conflicts). Each lane waits for its own copies, then __syncwarp (lanes read each
 * other's). Lane (g, t) = (lane / 4, lane % 4) reads unit 4j + t (elements 32j + 8t .. +7) of W rows g, g + 8 and of
 * x row g: elements 8t .. 8t+3 of each 32 feed the first mma, 8t+4 .. 8t+7 the second, a permutation of K that is
 * the same for both operands. Why a ring: loading the same fragments straight from global memory (warp loads of 8
 * rows x 64 bytes) read wide weights at 80-87% of copy bandwidth, this kernel at 88-96% (gpu_round_e5a091f.log). */
#define GR_WARPS 4
#define GR_S 4
#define GR_STAGE ((16 + 8) * 256) /* bytes: 16 W rows + 8 x rows of 128 elements (bf16 / f16) */
#define GR_SMEM (GR_WARPS * GR_S * GR_STAGE)

template <typename T>
__global__ void __launch_bounds__(GR_WARPS * 32, 2) gemv_ring_kernel(gemv_args a) {
    jamba_pdl_begin();
    extern __shared__ __align__(16) unsigned char gr_smem[];
    __shared__ float red[GR_WARPS][4][32];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, kw = a.kw, ks = warp % kw;
    const int g = lane >> 2, t = lane & 3, half = lane >> 4, unit = lane & 15;
    const int64_t n0 = ((int64_t)blockIdx.x * (GR_WARPS / kw) + warp / kw) * 16;
    unsigned char *ring = gr_smem + warp * (GR_S * GR_STAGE);
    const uint32_t ring_s = smem_u32(ring);
    const int64_t nst = (a.K + 127) / 128;                        /* stages of 128 elements over K */
    const int nq = (int)(nst > ks ? (nst - ks + kw - 1) / kw : 0); /* this warp's: ks + q kw, q < nq */
    /* this lane's copies: W rows 2i + half (i < 8), x rows 2i + half (i < 4), unit `unit` of each */
    auto issue = [&](int slot, int q) {
        const int64_t k = ((int64_t)ks + (int64_t)q * kw) * 128 + unit * 8;
        const bool kin = k < a.K;
        const uint32_t base = ring_s + (uint32_t)(slot * GR_STAGE);
#pragma unroll
        for (int i = 0; i < 8; i++) {
            const int r = 2 * i + half;
            const bool v = kin && n0 + r < a.N;
            cp_async16_mem(base + (uint32_t)(r * 256 + ((unit ^ (half << 2)) * 16)),
                           v ? (const void *)((const T *)a.w + (n0 + r) * a.sw + k) : a.w, v);
        }
#pragma unroll
        for (int i = 0; i < 4; i++) {
            const int r = 2 * i + half;
            const bool v = kin && r < a.M;
            cp_async16_mem(base + (uint32_t)((16 + r) * 256 + ((unit ^ (half << 2)) * 16)),
                           v ? (const void *)((const T *)a.x + r * a.sx + k) : a.x, v);
        }
    };
#pragma unroll
    for (int q = 0; q < GR_S - 1; q++) {
        if (q < nq) issue(q, q);
        cp_async_commit_mem();
    }
    float c[4] = {0.f, 0.f, 0.f, 0.f};
    const int sw = (g & 1) << 2; /* rows g and g + 8 have g's parity */
    int slot = 0;
#pragma unroll 1
    for (int q = 0; q < nq; q++) {
        cp_async_wait_mem<GR_S - 2>(); /* stage q: this lane's copies have landed */
        __syncwarp();                  /* ... and every lane's (and every lane is done with stage q - 1's slot) */
        if (q + GR_S - 1 < nq) issue(slot == 0 ? GR_S - 1 : slot - 1, q + GR_S - 1);
        cp_async_commit_mem();
        const unsigned char *st = ring + slot * GR_STAGE;
#pragma unroll
        for (int j = 0; j < 4; j++) {
            const int u = (4 * j + t) ^ sw;
            const uint4 r0 = *reinterpret_cast<const uint4 *>(st + g * 256 + u * 16);
            const uint4 r8 = *reinterpret_cast<const uint4 *>(st + (g + 8) * 256 + u * 16);
            const uint4 xv = *reinterpret_cast<const uint4 *>(st + (16 + g) * 256 + u * 16);
            const uint32_t a0[4] = {r0.x, r8.x, r0.y, r8.y};
            const uint32_t a1[4] = {r0.z, r8.z, r0.w, r8.w};
            mma16816<T>(c, a0, xv.x, xv.y);
            mma16816<T>(c, a1, xv.z, xv.w);
        }
        slot = slot + 1 == GR_S ? 0 : slot + 1;
    }
    cp_async_wait_mem<0>();
    gemv_ring_store<T>(a, c, red, warp, lane, n0);
}

template <typename T>
__global__ void __launch_bounds__(GEMV_WARPS * 32) gemv_any_kernel(gemv_args a) {
    jamba_pdl_begin();
    const int lane = threadIdx.x & 31;
    const int64_t n = (int64_t)blockIdx.x * GEMV_WARPS + (threadIdx.x >> 5);
    if (n >= a.N) return;
    const T *w = (const T *)a.w + n * a.sw;
    for (int64_t m = 0; m < a.M; m++) {
        const T *x = (const T *)a.x + m * a.sx;
        float s = 0.f;
        for (int64_t k = lane; k < a.K; k += 32) s = fmaf(jamba_ld<T>(x[k]), jamba_ld<T>(w[k]), s);
        s = jamba_warp_sum(s);
        if (lane == 0) ((T *)a.out)[m * a.so + n] = jamba_st<T>(s + gemv_bias(a, n));
    }
}

/* Whether gemv_ring_kernel takes this call (else the vec kernel). By default for 2-8 rows at N >= GEMV_RING_MIN_N
 * (gpu_round_660e493.log, graph-timed, weights cold; ring / the removed register-direct kernel / cuBLAS at 8 rows,
 * us): in_proj 33.8 / 38.5 / 33.3, out_proj 17.8 / 20.6 / 21.8, MLP down 28.9 / 33.3 / 31.7, attention q|o 10.3 /
 * 12.2 / 13.1, k|v 5.2 / 6.3 / 7.7, LM head 123.1 / 149.7 / 126.4; and for 1 row at GEMV_RING_MIN_N <= N <=
 * GEMV_RING_1ROW_MAX_N, where alone it beats the vec kernel too (out_proj 17.5 against 19.0 us, down 28.5 / 31.3, q|o
 * 10.2 / 11.7, dt_proj 3.3 / 3.9; the widest three, in_proj, gate|up and the LM head, tie or lose by 1-2%).
 * The 1-row rule is judged on the model's captured decode step, not on dev/mamba_step_probe.py: the probe's chain of
 * Mamba steps alone (in_proj on the vec kernel straight after out_proj on the ring) read 73.8 against 65.7 us with
 * it (gpu_round_23f1014.log): the vec kernel launched right after the ring kernel under PDL costs ~9 us; with
 * add_rms_norm between the layers, as in the model, 65.4 against 64.9 (probe_chain_b268f58.log). The one-block
 * model's graph replays, timed in turns (gemv_decode_ab_89d24ac.log), took 1669.5 against 1681.2 us a step at batch
 * 1 (6 rounds of 200, spreads 0.8 / 6.9 us; 1691.4 against 1702.9 at an 8K prompt), and bench_model's graph decode
 * 587.6 against 581.2 tok/s in the same round; with the ring kernel for every 1-row projection (in_proj, gate|up, LM
 * head too) 1692.0. In the model's step no vec-kernel gemv follows a ring-kernel gemv directly.
 * Below GEMV_RING_MIN_N rows (32 tiles of 16) too few blocks pull the weights: Mamba's x_proj (288 rows, K 8192) ran
 * 8.1-8.3 us at 1-8 rows on the ring kernel against 3.7 / 4.5 / 6.1 / 9.5 at 1 / 2 / 4 / 8 rows on the vec kernel,
 * so from N 256 (16 row tiles) the ring kernel takes 5-8 rows there (the vec kernel's 8-row instance; 5-7 rows not
 * timed; the switch also keeps a batch-8 Mamba step on one gemv kernel: 73.2 us against 75.1 with x_proj on the vec
 * kernel, and at batch 4 the vec kernel's 69.0 against 71.0 on the ring, gpu_round_23f1014.log). Narrower
 * weights (the MoE router's 16 rows: one row tile, one block) stay on the vec kernel.
 * Env JAMBA_EXT_GEMV_MMA=0: the vec kernel (A/B); "ring": the ring kernel for 1-8 rows at any N (A/B, tests);
 * "vec1": the default but 1 row on the vec kernel (fe9f22a-23f1014's rule), "wide": the ring kernel for 2-8 rows at
 * N >= 512 only (fe9f22a's rule; A/B). */
#define GEMV_RING_MIN_N 512
#define GEMV_RING_1ROW_MAX_N 8192
#define GEMV_RING_NARROW_M 5
#define GEMV_RING_NARROW_N 256
static bool gemv_ring_pick(int64_t M, int64_t N) {
    const char *e = getenv("JAMBA_EXT_GEMV_MMA");
    if (e && e[0] == '0' && e[1] == 0) return false;
    if (M < 1 || M > GEMV_RING_MAXM) return false;
    if (e && !strcmp(e, "ring")) return true;
    if (e && !strcmp(e, "wide")) return M >= 2 && N >= GEMV_RING_MIN_N;
    if (M == 1) return !(e && !strcmp(e, "vec1")) && N >= GEMV_RING_MIN_N && N <= GEMV_RING_1ROW_MAX_N;
    return N >= GEMV_RING_MIN_N || (M >= GEMV_RING_NARROW_M && N >= GEMV_RING_NARROW_N);
}

/* env JAMBA_EXT_GEMV_KW=1|2|4|8: the warps along K of every kernel (capped by the block's warps; A/B) */
static int gemv_kw_forced(int warps) {
    const char *kwe = getenv("JAMBA_EXT_GEMV_KW");
    if (!(kwe && (kwe[0] == '1' || kwe[0] == '2' || kwe[0] == '4' || kwe[0] == '8') && kwe[1] == 0)) return 0;
    return kwe[0] - '0' < warps ? kwe[0] - '0' : warps;
}

/* the ring kernel's warps along K (a->kw): doubled while the grid is under 2 waves' worth of blocks and each
 * warp keeps >= 1 of the `units` (groups / stages) along K; JAMBA_EXT_GEMV_KW forces it. Returns the grid (blocks of
 * `warps` warps, 16 rows per warp row) */
static int64_t gemv_ring_grid(gemv_args *a, int64_t units, int warps, int sms) {
    int kw = 1;
    while (kw < warps && 2 * kw <= units && jamba_ceil_div(a->N, 16 * (warps / kw)) < 2 * sms) kw *= 2;
    if (gemv_kw_forced(warps)) kw = gemv_kw_forced(warps);
    a->kw = kw;
    return jamba_ceil_div(a->N, 16 * (warps / kw));
}

/* gemv_ring_kernel's launch (raises its shared-memory limit once per device) */
template <typename T>
static jamba_status gemv_ring_launch(gemv_args a, int sms, cudaStream_t stream) {
    static int smem_set[64];
    int dev = 0;
    JAMBA_CUDA_CHECK(cudaGetDevice(&dev));
    if (dev < 0 || dev >= 64 || !smem_set[dev]) {
        JAMBA_CUDA_CHECK(cudaFuncSetAttribute(gemv_ring_kernel<T>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                              GR_SMEM));
        JAMBA_CUDA_CHECK(cudaFuncSetAttribute(gemv_ring_kernel<T>, cudaFuncAttributePreferredSharedMemoryCarveout,
                                              cudaSharedmemCarveoutMaxShared));
        if (dev >= 0 && dev < 64) smem_set[dev] = 1;
    }
    const int64_t bx = gemv_ring_grid(&a, jamba_ceil_div(a.K, 128), GR_WARPS, sms);
    if (bx > JAMBA_MAX_GRID_X)
        return jamba_set_error(JAMBA_ERR_ARG, "jamba.gemv: N = %lld is too large", (long long)a.N);
    jamba_kernel_launch(gemv_ring_kernel<T>, dim3((unsigned)bx), dim3(GR_WARPS * 32), GR_SMEM, stream, a);
    JAMBA_LAUNCH_CHECK("jamba.gemv (gemv_ring_kernel)", stream);
    return JAMBA_OK;
}

template <typename T>
static jamba_status gemv_launch(gemv_args a, int sms, cudaStream_t stream) {
    constexpr int VN = 16 / (int)sizeof(T);
    const bool vec = a.K % VN == 0 && a.sx % VN == 0 && a.sw % VN == 0 && jamba_aligned16(a.x) &&
                     jamba_aligned16(a.w);
    if (!vec) {
        const int64_t blocks = jamba_ceil_div(a.N, GEMV_WARPS);
        if (blocks > JAMBA_MAX_GRID_X)
            return jamba_set_error(JAMBA_ERR_ARG, "jamba.gemv: N = %lld is too large", (long long)a.N);
        jamba_kernel_launch(gemv_any_kernel<T>, dim3((unsigned)blocks), dim3(GEMV_WARPS * 32), 0, stream, a);
        JAMBA_LAUNCH_CHECK("jamba.gemv (gemv_any_kernel)", stream);
        return JAMBA_OK;
    }
    if constexpr (sizeof(T) == 2) if (gemv_ring_pick(a.M, a.N)) return gemv_ring_launch<T>(a, sms, stream);
    /* warps along K: each warp >= 4 chunks where K allows, then more slices while the grid is under 2 waves'
     * worth of blocks (a short, wide projection such as Mamba's x_proj: N 288, K 8192) */
    const int64_t nchunk = jamba_ceil_div(a.K, 32 * VN);
    int kw = gemv_pick_kw(nchunk, GEMV_WARPS);
    while (kw < GEMV_WARPS && 2 * kw <= nchunk && jamba_ceil_div(a.N, GEMV_R * (GEMV_WARPS / kw)) < 2 * sms) kw *= 2;
    if (gemv_kw_forced(GEMV_WARPS)) kw = gemv_kw_forced(GEMV_WARPS); /* A/B (PERF_NOTES session 24) */
    a.kw = kw;
    const int64_t bx = jamba_ceil_div(a.N, GEMV_R * (GEMV_WARPS / kw));
    const int mm = a.M <= 1 ? 1 : a.M <= 2 ? 2 : a.M <= 4 ? 4 : 8;
    const int64_t by = jamba_ceil_div(a.M, mm);
    if (bx > JAMBA_MAX_GRID_X || by > 65535)
        return jamba_set_error(JAMBA_ERR_ARG, "jamba.gemv: N = %lld, M = %lld: grid too large", (long long)a.N,
                               (long long)a.M);
    const dim3 grid((unsigned)bx, (unsigned)by), block(GEMV_WARPS * 32);
    switch (mm) {
    case 1: jamba_kernel_launch(gemv_vec_kernel<T, 1>, grid, block, 0, stream, a); break;
    case 2: jamba_kernel_launch(gemv_vec_kernel<T, 2>, grid, block, 0, stream, a); break;
    case 4: jamba_kernel_launch(gemv_vec_kernel<T, 4>, grid, block, 0, stream, a); break;
    default: jamba_kernel_launch(gemv_vec_kernel<T, 8>, grid, block, 0, stream, a); break;
    }
    JAMBA_LAUNCH_CHECK("jamba.gemv (gemv_vec_kernel)", stream);
    return JAMBA_OK;
}

extern "C" jamba_status jamba_gemv_cuda(const jamba_gemv_params *p, jamba_launch launch) {
    JAMBA_TRY(jamba_gemv_check(p));
    const int64_t M = p->x.shape[0], K = p->x.shape[1], N = p->weight.shape[0];
    if (M == 0 || N == 0) return JAMBA_OK;
    JAMBA_DEVICE_GUARD(launch);
    gemv_args a;
    memset(&a, 0, sizeof a);
    a.out = p->out.data;
    a.x = p->x.data;
    a.w = p->weight.data;
    a.bias = p->bias.data;
    a.bdt = p->bias.data ? (int)p->bias.dtype : (int)JAMBA_F32;
    a.M = M, a.N = N, a.K = K;
    a.sx = p->x.stride[0], a.sw = p->weight.stride[0], a.so = p->out.stride[0];
    a.kw = 1;
    const int sms = jamba_cuda_sm_count(launch.device);
    cudaStream_t stream = (cudaStream_t)launch.stream;
    jamba_status s = JAMBA_ERR_DTYPE;
    JAMBA_DISPATCH_FLOAT(p->x.dtype, T, s = gemv_launch<T>(a, sms, stream));
    return s;
}
