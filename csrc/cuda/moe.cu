/* moe.cu -- MoE routing, token permutation, grouped expert GEMMs and the weighted combine on CUDA.
 *
 * Exports (extern "C"): jamba_moe_route_cuda, jamba_moe_permute_cuda, jamba_moe_experts_cuda.
 * Math and shapes: csrc/jamba.h (JAMBA_MOE_API) and csrc/cpu/moe.c, the same algorithm in C.
 * No host synchronisation anywhere: every grid is sized from T, TOPK, E, H, F (known on the host); the
 * per-expert counts live on the device and the GEMM blocks find their expert from expert_offsets, so
 * the whole op can be captured in a CUDA graph. No float atomics: every output element is written by
 * exactly one thread, and the combine adds a token's TOPK slot outputs in a fixed order.
 *
 * Kernels (one launch each, in this order):
 *   moe_route_kernel     one warp per token: fp32 softmax over E (a row in shared memory) + top-k
 *   moe_permute_kernel   one block per expert bucket: stable compaction of the slots routed to it
 *   moe_route_permute_small_kernel  both in one block for decode sizes (T*TOPK <= 64, E <= 64)
 *   moe_mma_kernel       prefill: grouped GEMM on tensor cores (mma.sync m16n8k16, bf16/f16, fp32
 *                        accumulate), 128x128x32 tiles, 4-stage cp.async pipeline, ldmatrix from a
 *                        swizzled shared tile; the A rows are gathered through sorted_slots. Run twice:
 *                        gate_up (SiLU(gate)*up fused in the epilogue) and down (times the routing weight,
 *                        scattered to slot order).
 *   (moe_gemv.cu)        decode (impl gemv) up to 4 tokens: register-direct GEMVs, combine fused (moe_gemv_decode).
 *   moe_decode_kernel    decode (impl gemv): few tokens per expert. A grid over the touched experts only
 *                        (found on the device); each warp streams its W rows through its own cp.async
 *                        ring in shared memory into mma fragments, split-K over the warps of a block,
 *                        reduced in shared memory in a fixed order. Run twice, as the prefill GEMM.
 *   moe_simt_kernel      fp32 inputs, sizes not multiple of 8, misaligned pointers: fp32 CUDA-core tiles.
 *   (moe_wgmma.cu)       prefill on Hopper, impl wgmma: x gathered into sorted order, the same GEMMs with
 *                        wgmma fed by TMA (sm_90a); persistent, tiles handed out through the op's sched workspace.
 *   moe_combine_kernel   out[t] = slot_out[t*TOPK] + ... (rounded to the model dtype after each add).
 * Rounding (HF in model dtype dt): act = round(round(silu(round(g))) * round(u));
 * slot_out = round(round(y) * round(w)); out = round(o_0 + o_1) ...
 */
#include "moe.cuh"
#include "gemv.cuh" /* e4m3 conversion (the fp8 ring) */

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <type_traits>

/* ---- routing ------------------------------------------------------------------------------------------- */
#define ROUTE_WARPS 8

/* Routing of token t by one warp: p = exp(l - max) / sum over the E logits of row t (expf, IEEE divide: as
 * torch.softmax; the row is kept in p, E floats of shared memory), then top-k by warp argmax, ties to the
 * lower id; a NaN row yields ids -1 (treated as out of range downstream: NaN output). Lane 0 writes
 * weights[t*K + j], ids[t*K + j] (and ids_sh[t*K + j] when given). */
__device__ __forceinline__ void moe_route_token(const void *logits, int dtype, int64_t t, int E, int64_t ld, int K,
                                                float *weights, int32_t *ids, float *p, int32_t *ids_sh) {
    const int lane = threadIdx.x & 31;
    float m = -INFINITY;
    for (int e = lane; e < E; e += 32) {
        const float v = jamba_ld_any(logits, dtype, t * ld + e);
        p[e] = v;
        m = fmaxf(m, v);
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) m = fmaxf(m, __shfl_xor_sync(JAMBA_FULL_MASK, m, o));
    float s = 0.f;
    for (int e = lane; e < E; e += 32) {
        const float v = expf(p[e] - m);
        p[e] = v;
        s += v;
    }
    s = jamba_warp_sum(s);
    for (int e = lane; e < E; e += 32) p[e] = p[e] / s;
    __syncwarp();
    for (int j = 0; j < K; j++) {
        float best = -1.f;
        int bi = -1;
        for (int e = lane; e < E; e += 32) {
            const float v = p[e];
            if (v >= 0.f && (bi < 0 || v > best)) { best = v; bi = e; } /* e ascending: ties keep the lower */
        }
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) {
            const float ob = __shfl_xor_sync(JAMBA_FULL_MASK, best, o);
            const int oi = __shfl_xor_sync(JAMBA_FULL_MASK, bi, o);
            if (oi >= 0 && (bi < 0 || ob > best || (ob == best && oi < bi))) { best = ob; bi = oi; }
        }
        if (lane == 0) {
            weights[t * K + j] = bi >= 0 ? best : __int_as_float(0x7fc00000);
            ids[t * K + j] = bi;
            if (ids_sh) ids_sh[t * K + j] = bi;
            if (bi >= 0) p[bi] = -1.f; /* taken */
        }
        __syncwarp();
    }
}

/* logits (T, E) f32|f16|bf16, row stride ld, unit stride along E -> weights, ids (T, TOPK).
 * grid ceil(T / 8), 256 threads, one warp per token (moe_route_token); shared: 8 rows of E floats. */
__global__ void __launch_bounds__(ROUTE_WARPS * 32)
moe_route_kernel(const void *logits, int dtype, int64_t T, int E, int64_t ld, int K, float *weights,
                 int32_t *ids) {
    jamba_pdl_begin();
    extern __shared__ float route_smem[];
    const int warp = threadIdx.x >> 5;
    const int64_t t = (int64_t)blockIdx.x * ROUTE_WARPS + warp;
    if (t >= T) return; /* whole warp */
    moe_route_token(logits, dtype, t, E, ld, K, weights, ids, route_smem + (size_t)warp * E, NULL);
}

/* Decode-sized routing and permutation in one launch (T*TOPK <= ROUTE_SMALL_SLOTS, E <= ROUTE_SMALL_E): one
 * block of 256 threads; warp w routes tokens w, w + 8, ... (moe_route_token, ids also into shared memory);
 * then thread b <= E writes offsets[b] = #slots with key < b, and slot s goes to sorted[offsets[key(s)] +
 * #(s' < s with key(s') == key(s))]: the same stable permutation as moe_permute_kernel, by counting (at most
 * 64 slots). Saves one launch and its gap on every decode step (H200, Jamba-v0.1, same run: 1 token 209.1 vs
 * 210.9 us for the whole op, moe_quick_7c4e1f3.log; 220.0 vs 224.2 us, gpu_round_eaa685c.log). */
#define ROUTE_SMALL_SLOTS 64
#define ROUTE_SMALL_E 64
__global__ void __launch_bounds__(ROUTE_WARPS * 32)
moe_route_permute_small_kernel(const void *logits, int dtype, int64_t T, int E, int64_t ld, int K, float *weights,
                               int32_t *ids, int32_t *offsets, int32_t *sorted) {
    jamba_pdl_begin();
    __shared__ float p_sh[ROUTE_WARPS][ROUTE_SMALL_E];
    __shared__ int32_t ids_sh[ROUTE_SMALL_SLOTS];
    __shared__ int32_t off_sh[ROUTE_SMALL_E + 1];
    const int warp = threadIdx.x >> 5;
    for (int64_t t = warp; t < T; t += ROUTE_WARPS)
        moe_route_token(logits, dtype, t, E, ld, K, weights, ids, p_sh[warp], ids_sh);
    __syncthreads();
    const int slots = (int)(T * K);
    for (int b = threadIdx.x; b <= E; b += blockDim.x) {
        int n = 0;
        for (int s = 0; s < slots; s++) n += moe_key(ids_sh[s], E) < b;
        off_sh[b] = n;
        offsets[b] = n;
    }
    __syncthreads();
    for (int s = threadIdx.x; s < slots; s += blockDim.x) {
        const int k = moe_key(ids_sh[s], E);
        int r = 0;
        for (int q = 0; q < s; q++) r += moe_key(ids_sh[q], E) == k;
        sorted[off_sh[k] + r] = s;
    }
}

/* ---- permutation ------------------------------------------------------------------------------------- */
#define PERMUTE_THREADS 1024

/* ids (slots,) -> offsets (E+1,), sorted (slots,). grid E+1 (one block per bucket b, b == E: bad ids),
 * 1024 threads = 32 warps. Warp w owns the contiguous slots [w * pw, (w + 1) * pw), pw = ceil(slots / 32) rounded
 * up to 32, read in coalesced chunks of 32 (lane l: slot c + l): a first pass counts its slots with key < b
 * (per lane) and key == b (ballots), one block scan turns the counts into offsets[b] (the total below b) and the
 * warp's first place in bucket b, a second pass writes the warp's slots of bucket b there in ascending order
 * (ballot + popc per chunk). Deterministic, no atomics, two block barriers. Measured (H200): the first version
 * (two barriers per chunk of 1024 slots) 10.6 / 44.2 us at 8192 / 32768 slots (gpu_round_95e41f3.log); one
 * contiguous range per thread (uncoalesced) 4.8 / 48.1 us (moe_glue_fe3aa9d.log). */
__global__ void __launch_bounds__(PERMUTE_THREADS)
moe_permute_kernel(const int32_t *ids, int64_t slots, int E, int32_t *offsets, int32_t *sorted) {
    jamba_pdl_begin();
    __shared__ int warp_lt[PERMUTE_THREADS / 32], warp_eq[PERMUTE_THREADS / 32];
    const int b = blockIdx.x, warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int64_t pw = ((slots + 31) / 32 + 31) / 32 * 32;
    const int64_t s0 = (int64_t)warp * pw, s1 = s0 + pw < slots ? s0 + pw : slots;
    int lt = 0, eq = 0; /* lt per lane; eq per warp (uniform) */
    for (int64_t c = s0; c < s1; c += 32) {
        const int64_t s = c + lane;
        const int k = s < s1 ? moe_key(ids[s], E) : E + 1;
        lt += k < b;
        eq += __popc(__ballot_sync(JAMBA_FULL_MASK, k == b));
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) lt += __shfl_xor_sync(JAMBA_FULL_MASK, lt, o);
    if (lane == 0) warp_lt[warp] = lt, warp_eq[warp] = eq;
    __syncthreads();
    if (warp == 0) { /* exclusive scan of the warps' eq counts, sum of their lt counts */
        const int v = warp_eq[lane];
        int x = v;
#pragma unroll
        for (int o = 1; o < 32; o <<= 1) {
            const int y = __shfl_up_sync(JAMBA_FULL_MASK, x, o);
            if (lane >= o) x += y;
        }
        int l = warp_lt[lane];
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) l += __shfl_xor_sync(JAMBA_FULL_MASK, l, o);
        warp_eq[lane] = x - v;
        if (lane == 0) warp_lt[0] = l, offsets[b] = l;
    }
    __syncthreads();
    int pos = warp_lt[0] + warp_eq[warp]; /* the warp's first place in bucket b */
    const unsigned lt_mask = (1u << lane) - 1u;
    for (int64_t c = s0; c < s1; c += 32) {
        const int64_t s = c + lane;
        const bool f = s < s1 && moe_key(ids[s], E) == b;
        const unsigned bal = __ballot_sync(JAMBA_FULL_MASK, f);
        if (f) sorted[pos + __popc(bal & lt_mask)] = (int32_t)s;
        pos += __popc(bal);
    }
}

/* ---- tensor-core helpers (sm_80+) --------------------------------------------------------------------- */
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], uint32_t addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr));
}

/* ---- prefill: grouped GEMM on tensor cores ------------------------------------------------------------ */
#define MMA_BM 128      /* rows (token slots) per block */
#define MMA_THREADS 256 /* 8 warps: 2 along M (64 rows each) x 4 along N */
#define MMA_GROUP_M 8   /* block order: 8 m-tiles share each W tile in L2 while it is hot */
/* Variants (template <T, BK, STAGES, BN>), chosen by impl:
 *   mma     BK 32, 4 stages, BN 128: warp tile 64 x 32, 64 KB shared, 2 blocks per SM
 *   mma64   BK 64, 3 stages, BN 128: the same with half the barriers per k, 96 KB, 2 blocks per SM
 *   mma256  BK 32, 4 stages, BN 256: warp tile 64 x 64 (0.25 ldmatrix per mma instead of 0.375), 96 KB, 1 block
 * BN counts W rows: for gate_up, BN/2 gate rows and the BN/2 up rows of the same outputs.
 * A shared row of BK elements holds BK/8 chunks of 16 B, XOR-swizzled so that ldmatrix (8 rows, one chunk
 * column) and the cp.async stores are free of bank conflicts. */
#define MMA_SMEM(BK, STAGES, BN) ((MMA_BM + (BN)) * (BK) * (STAGES) * 2)

/* element offset of 16-byte chunk c of row r inside a [rows][BK] tile (BK 32: 64-byte rows, pairs of rows
 * share a 128-byte bank window; BK 64: 128-byte rows) */
template <int BK> __device__ __forceinline__ int mma_swz(int r, int c) {
    return BK == 32 ? r * 32 + ((c ^ ((r >> 1) & 3)) << 3) : r * BK + ((c ^ (r & 7)) << 3);
}

/* gate_up: act[p, f] for p in the expert's sorted rows, f < F; down: slot_out[slot(p), h].
 * 1-D grid over (m-tile, n-tile), grouped by MMA_GROUP_M m-tiles; m-tiles from moe_find_tile.
 * Warp (wm, wn) owns rows wm*64..+63 and the W-tile rows wn*BN/8..+BN/8-1 of each half of the W tile: for
 * gate_up the two halves are the gate and the up rows of the same BN/8 outputs, so SiLU(gate)*up is formed
 * in registers. n8-tile ni of a warp (NT = BN/32 of them): half ni / (NT/2), rows +(ni % (NT/2))*8.
 * Requires Kd % 8 == 0, N % 8 == 0 and 16-byte aligned A, W (checked by the launcher). */
template <typename T, int BK, int STAGES, int BN>
__global__ void __launch_bounds__(MMA_THREADS, BN == 128 ? 2 : 1)
moe_mma_kernel(moe_gemm_args a, int64_t m_tiles, int64_t n_tiles) {
    jamba_pdl_begin();
    constexpr int CPR = BK / 8;                           /* 16-byte chunks per shared row */
    constexpr int LA = MMA_BM * CPR / MMA_THREADS;        /* A chunks per thread per stage */
    constexpr int LB = BN * CPR / MMA_THREADS;            /* W chunks per thread per stage */
    constexpr int NT = BN / 32;                           /* n8-tiles per warp */
    constexpr int WR = BN / 8;                            /* W rows per warp in each half */
    extern __shared__ __align__(128) unsigned char mma_smem[];
    T *sA = reinterpret_cast<T *>(mma_smem);
    T *sB = sA + STAGES * MMA_BM * BK;

    /* grouped block order */
    int64_t mt, nt;
    moe_grouped_tile(blockIdx.x, m_tiles, n_tiles, MMA_GROUP_M, &mt, &nt);

    int e;
    int64_t row0, row_end;
    if (!moe_find_tile(a.offsets, a.E, mt, MMA_BM, 0, &e, &row0, &row_end)) return;
    const int64_t n0 = nt * (a.gate_up ? BN / 2 : BN);

    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
    const int wm = warp >> 2, wn = warp & 3;
    const T *A = reinterpret_cast<const T *>(a.A);
    const T *W = reinterpret_cast<const T *>(a.W) + (int64_t)e * a.w_rows * a.Kd;

    /* this thread's A and W rows of every stage (chunk c = tid + j*256: row c/CPR, chunk c%CPR, the same
     * chunk column for every j) */
    const int cc = tid % CPR;
    const T *a_src[LA], *b_src[LB];
    bool a_ok[LA], b_ok[LB];
#pragma unroll
    for (int j = 0; j < LA; j++) {
        const int r = (tid + j * MMA_THREADS) / CPR;
        const int64_t p = row0 + r;
        a_ok[j] = p < row_end;
        const int64_t src_row = a_ok[j] ? (a.gate_up ? (int64_t)(a.sorted[p] / a.topk) : p) : 0;
        a_src[j] = A + src_row * a.Kd + cc * 8;
    }
#pragma unroll
    for (int j = 0; j < LB; j++) {
        const int r = (tid + j * MMA_THREADS) / CPR;
        int64_t wrow;
        if (a.gate_up) {
            const int64_t f = n0 + (r % (BN / 2));
            b_ok[j] = f < a.N;
            wrow = r < BN / 2 ? f : a.N + f;
        } else {
            wrow = n0 + r;
            b_ok[j] = wrow < a.N;
        }
        b_src[j] = W + (b_ok[j] ? wrow : 0) * a.Kd + cc * 8;
    }
    const uint32_t sA0 = smem_u32(sA), sB0 = smem_u32(sB);
    const int KT = (int)((a.Kd + BK - 1) / BK);

    auto load_tile = [&](int stage, int kt) {
        const int64_t k = (int64_t)kt * BK;
        const bool kin = k + cc * 8 < a.Kd;
#pragma unroll
        for (int j = 0; j < LA; j++) {
            const int r = (tid + j * MMA_THREADS) / CPR;
            const bool v = a_ok[j] && kin;
            cp_async16(sA0 + (uint32_t)((stage * MMA_BM * BK + mma_swz<BK>(r, cc)) * 2),
                       v ? (const void *)(a_src[j] + k) : a.A, v);
        }
#pragma unroll
        for (int j = 0; j < LB; j++) {
            const int r = (tid + j * MMA_THREADS) / CPR;
            const bool v = b_ok[j] && kin;
            cp_async16(sB0 + (uint32_t)((stage * BN * BK + mma_swz<BK>(r, cc)) * 2),
                       v ? (const void *)(b_src[j] + k) : a.W, v);
        }
    };

    float acc[4][NT][4];
#pragma unroll
    for (int i = 0; i < 4; i++)
#pragma unroll
        for (int j = 0; j < NT; j++)
#pragma unroll
            for (int r = 0; r < 4; r++) acc[i][j][r] = 0.f;

#pragma unroll
    for (int s = 0; s < STAGES - 1; s++) {
        if (s < KT) load_tile(s, s);
        cp_async_commit();
    }
    const int lm = lane >> 3, lr = lane & 7; /* ldmatrix: which 8x8 matrix this lane addresses, which row */
    for (int kt = 0; kt < KT; kt++) {
        cp_async_wait<STAGES - 2>();
        __syncthreads();
        const int nk = kt + STAGES - 1;
        if (nk < KT) load_tile(nk % STAGES, nk);
        cp_async_commit();
        const int stage = kt % STAGES;
        const uint32_t aS = sA0 + (uint32_t)(stage * MMA_BM * BK * 2);
        const uint32_t bS = sB0 + (uint32_t)(stage * BN * BK * 2);
#pragma unroll
        for (int ks = 0; ks < BK / 16; ks++) {
            uint32_t af[4][4], bf[NT / 2][4];
#pragma unroll
            for (int mi = 0; mi < 4; mi++) {
                const int r = wm * 64 + mi * 16 + (lm & 1) * 8 + lr;
                ldmatrix_x4(af[mi], aS + (uint32_t)(mma_swz<BK>(r, ks * 2 + (lm >> 1)) * 2));
            }
#pragma unroll
            for (int L = 0; L < NT / 2; L++) { /* n8-tiles 2L, 2L+1 */
                const int r = (L / (NT / 4)) * (BN / 2) + wn * WR + (L % (NT / 4)) * 16 + (lm >> 1) * 8 + lr;
                ldmatrix_x4(bf[L], bS + (uint32_t)(mma_swz<BK>(r, ks * 2 + (lm & 1)) * 2));
            }
#pragma unroll
            for (int mi = 0; mi < 4; mi++)
#pragma unroll
                for (int ni = 0; ni < NT; ni++)
                    mma16816<T>(acc[mi][ni], af[mi], bf[ni >> 1][(ni & 1) * 2], bf[ni >> 1][(ni & 1) * 2 + 1]);
        }
    }
    cp_async_wait<0>();

    /* epilogue: accumulator (mi, ni) element r is row g + (r>>1)*8, column tq*2 + (r&1) of its 16x8 tile */
    const int g = lane >> 2, tq = lane & 3;
    T *C = reinterpret_cast<T *>(a.C);
#pragma unroll
    for (int mi = 0; mi < 4; mi++) {
#pragma unroll
        for (int h = 0; h < 2; h++) {
            const int64_t p = row0 + wm * 64 + mi * 16 + g + h * 8;
            if (p >= row_end) continue;
            if (a.gate_up) {
#pragma unroll
                for (int ni = 0; ni < NT / 2; ni++) { /* gate tile ni, up tile ni + NT/2: the same outputs */
                    const int64_t f = n0 + wn * WR + ni * 8 + tq * 2;
                    if (f >= a.N) continue;
                    store2<T>(C + p * a.N + f, moe_act<T>(acc[mi][ni][h * 2], acc[mi][ni + NT / 2][h * 2]),
                              moe_act<T>(acc[mi][ni][h * 2 + 1], acc[mi][ni + NT / 2][h * 2 + 1]));
                }
            } else {
                const int64_t slot = a.sorted[p];
                const float w = a.weights[slot];
#pragma unroll
                for (int ni = 0; ni < NT; ni++) {
                    const int64_t col = n0 + (ni / (NT / 2)) * (BN / 2) + wn * WR + (ni % (NT / 2)) * 8 + tq * 2;
                    if (col >= a.N) continue;
                    store2<T>(C + slot * a.N + col, moe_scaled<T>(acc[mi][ni][h * 2], w),
                              moe_scaled<T>(acc[mi][ni][h * 2 + 1], w));
                }
            }
        }
    }
}

/* one launch of a tensor-core variant; raises the dynamic shared-memory limit once per device (not a
 * stream operation, but kept out of graph captures after the first call; racing threads set the same value) */
template <typename T, int BK, int STAGES, int BN>
static jamba_status mma_launch(const moe_gemm_args &a, int64_t slots, cudaStream_t stream) {
    static int smem_set[64];
    int dev = 0;
    JAMBA_CUDA_CHECK(cudaGetDevice(&dev));
    if (dev < 0 || dev >= 64 || !smem_set[dev]) {
        JAMBA_CUDA_CHECK(cudaFuncSetAttribute(moe_mma_kernel<T, BK, STAGES, BN>,
                                              cudaFuncAttributeMaxDynamicSharedMemorySize, MMA_SMEM(BK, STAGES, BN)));
        if (dev >= 0 && dev < 64) smem_set[dev] = 1;
    }
    const int64_t m_tiles = jamba_ceil_div(slots, MMA_BM) + a.E;
    const int64_t n_tiles = jamba_ceil_div(a.N, a.gate_up ? BN / 2 : BN);
    jamba_kernel_launch(moe_mma_kernel<T, BK, STAGES, BN>, (unsigned)(m_tiles * n_tiles), MMA_THREADS,
        MMA_SMEM(BK, STAGES, BN), stream, a, m_tiles, n_tiles);
    JAMBA_LAUNCH_CHECK("moe_mma_kernel", stream);
    return JAMBA_OK;
}

/* ---- decode: weight streaming over the touched experts, per-warp cp.async rings ------------------------- */
/* The decode engine (impl gemv) from 5 tokens (1-4: moe_gemv.cu, unless JAMBA_EXT_MOE_GEMV=0).
 * Grid: only the touched experts. UB = min(slots, E) bounds the number of experts with tokens (known on the
 * host, no sync); block b works on the (b / tiles)-th expert with a nonzero count (found on the device from
 * expert_offsets, moe_nth_expert) and on its output tile b % tiles of DEC_OUTS outputs. Blocks past the
 * touched experts are the last ones in the grid and exit at once.
 * Block: 4 warps = DEC_WR row groups x DEC_KS k-splits (gate_up 2 x 2, down 1 x 4). A warp owns MT m16 tiles of W rows
 * (DEC_MT = 2; 1 for bf16 / f16 down, see DEC_OUTS; 4 for fp8 at NT 2 / 4, dec_f8_mt4) (gate_up: rows 0-7 of a tile are
 * the gate rows of 8 outputs, rows 8-15 their up rows, so SiLU(gate)*up is formed in registers; down: 16 output rows)
 * and a 1/KS range of k, streamed in steps of 64 k: per step and lane 2 x 16 B of each of its 2 MT W rows (rows g, g+8
 * of each tile, k + tq*8 and k + 32 + tq*8: the warp reads whole 128-byte lines), and the same 16 B of its token g of
 * each active n-tile (up to NT n-tiles of 8 tokens per pass). Each lane copies those pieces with cp.async into its own
 * slots of a ring of DEC_STAGES(NT) steps in shared memory and reads back only what it copied itself, so a warp's
 * stream needs no barrier: DEC_STAGES - 1 steps (12-16 KB of weights per warp, 96-128 KB per SM at 2 blocks of 4 warps)
 * stay in flight while it multiplies the oldest one (mma m16n8k16, the k order permuted identically for W and x, so no
 * shuffle is needed). After the pass the KS partial sums are added in shared memory in k-split order (deterministic, no
 * atomics) and the first k-split's warps write the outputs.
 * Tokens of an expert beyond NT*8 take further passes (W re-read per pass).
 * Shapes: gate_up: x (T, H) rows gathered through sorted_slots, w_gate_up (E, 2F, H) -> act (slots, F) in
 * sorted order; down: act (slots, F), w_down (E, H, F) -> slot_out (slots, H) in slot order.
 * Requires Kd % 8 == 0 and 16-byte aligned A, W (checked by the launcher).
 * F8 (moe_experts_fp8 with the permutation given, moe_fp8_ring below; jamba_ext/ops.py passes it from 7 to 512
 * tokens on CUDA): W holds e4m3 bytes, so a
 * step of 64 k is one 16-byte piece per W row and lane (row g / g+8, k + tq*16 .. +15: 64 contiguous bytes per row
 * and step) and x's pieces follow the same k (k + tq*16 + h*8, h = 0, 1); the bytes are converted to T pairs in
 * registers (exact) before the same mma, with the k order permuted as for T weights; each W row's f32 scale
 * (a.wscale) multiplies its fp32 sums before the epilogue. Half the W pieces per step, so more steps in the ring
 * (DEC_STAGES: the same 96 KB per block). Requires Kd % 16 == 0. */
#define DEC_WARPS 4
#define DEC_MT 2
#define DEC_KS(GU) ((GU) ? 2 : 4)
#define DEC_WR(GU) (DEC_WARPS / DEC_KS(GU))
/* MT: m16 tiles a warp: DEC_MT, or 1 for the down GEMM of T weights (16 outputs a block: twice the blocks, a smaller
 * last wave; up to 12 steps in the same 96 KB). Session 65 (s65_mt_15e322f.log, dev/moe_ring_waves.py): with 2,
 * down's time per touched expert rose 3-9% wherever its blocks (128 an expert, 264 resident) spilled just past whole
 * waves (3 / 5 / 7 / 9 / 11 experts: 34.4 / 33.3 / 32.9 / 32.7 / 32.2 us) and fell back as the wave filled (4 / 6 / 8
 * / 10 / 12: 32.6 / 31.9 / 31.6 / 31.4 / 31.5); with 1, 29.1-32.3, falling evenly. Whole op, bf16, 5 / 6 / 7 / 8
 * tokens, graph-timed in turns (dev/moe_ring_ab.py), us, MT 1 / 2 for down: 671.1 / 683.4, 786.0 / 804.4, 884.2 /
 * 904.9, 893.3 / 916.8 (91-92% of the touched weights' floor against 89%; the same bits). gate_up on MT 1 lost 0-1%
 * and fp8's down 30-35% (its x pieces then weigh as much as its e4m3 W pieces): those stay at 2. */
#define DEC_OUTS(GU, MT) (DEC_WR(GU) * (MT) * ((GU) ? 8 : 16)) /* outputs per block: 32 (MT 1: 16) */
#define DEC_WPIECES(F8, MT) ((F8) ? 2 * (MT) : 4 * (MT))       /* W pieces per lane and step */
#define DEC_PIECES(NT, F8, MT) (DEC_WPIECES(F8, MT) + 2 * (NT)) /* 16-byte pieces per lane and step */
/* MT 1 / 4: as many steps as fit 96 KB, at most 12 (MT 1, T weights: 8 / 6 / 4 at NT 1 / 2 / 4; MT 4, F8: 4 / 3 at
 * NT 2 / 4) */
#define DEC_STAGES(NT, F8, MT) ((MT) != 2 ? (48 / DEC_PIECES(NT, F8, MT) < 12 ? 48 / DEC_PIECES(NT, F8, MT) : 12) \
    : (F8) ? ((NT) == 1 ? 8 : (NT) == 2 ? 6 : 4) : ((NT) == 1 ? 5 : (NT) == 2 ? 4 : 3))
/* MT 2: T weights 100 KB, 96 KB, 96 KB at NT 1 / 2 / 4, F8 96 KB each; MT 1 (T weights) and MT 4 (F8) 96 KB */
#define DEC_SMEM(NT, F8, MT) (DEC_WARPS * DEC_STAGES(NT, F8, MT) * DEC_PIECES(NT, F8, MT) * 512)

/* the u-th expert (ascending id) with tokens, or -1, with its first sorted row and token count; every lane of
 * the warp gets them (call with full warps) */
__device__ __forceinline__ int moe_nth_expert(const int32_t *offsets, int E, int u, int64_t *off, int64_t *cnt) {
    const int lane = threadIdx.x & 31;
    for (int e0 = 0; e0 < E; e0 += 32) {
        const int e = e0 + lane;
        const int lo = e < E ? offsets[e] : 0, hi = e < E ? offsets[e + 1] : 0;
        unsigned m = __ballot_sync(JAMBA_FULL_MASK, hi > lo);
        const int c = __popc(m);
        if (u < c) { /* warp-uniform */
            for (int i = 0; i < u; i++) m &= m - 1; /* drop the u lowest set bits */
            const int src = __ffs(m) - 1;
            const int l = __shfl_sync(JAMBA_FULL_MASK, lo, src), h = __shfl_sync(JAMBA_FULL_MASK, hi, src);
            *off = l;
            *cnt = h - l;
            return e0 + src;
        }
        u -= c;
    }
    return -1;
}

__device__ __forceinline__ uint4 lds128(const unsigned char *p) { return *reinterpret_cast<const uint4 *>(p); }

/* ---- pieces shared by the two decode kernels (ring layout per warp and step: MT*4 W pieces, then NT*2 x
 * pieces, 512 bytes each = 32 lanes x 16 bytes) ---- */
/* the k steps (of 64) of k-split warp ks among KS: ks, ks + KS, ... (round-robin), returned as s0 + st * sk for
 * st < the count. The KS warps of a block read neighbouring 128-byte pieces of each W row at about the same
 * time (KS x 128 contiguous bytes per row for DRAM) instead of KS distant ranges. Measured against the
 * contiguous split in one run (H200, Jamba-v0.1, bf16, gpu_round_eaa685c.log): 1 token 199.7 vs 220.0 us,
 * 8 tokens 736 vs 803 us, 64 tokens 1475 vs 1531 us. */
__device__ __forceinline__ int dec_k_steps(const moe_gemm_args &a, int ks, int KS, int64_t *s0, int64_t *sk) {
    const int64_t steps_all = (a.Kd + 63) / 64;
    *s0 = ks, *sk = KS;
    return (int)(steps_all > ks ? (steps_all - ks + KS - 1) / KS : 0);
}

/* this lane's W rows of an output tile at ob: tile i, r = 0: row g, r = 1: row g + 8 (gate_up: the gate / up
 * row of output ob+i*8+g); rows past N point at row 0 and are masked */
template <typename WT, int MT, bool GATE_UP>
__device__ __forceinline__ void dec_w_rows(const moe_gemm_args &a, const WT *W, int64_t ob, int g, int lofs,
                                           const WT *(&wp)[MT][2], bool (&wok)[MT][2]) {
#pragma unroll
    for (int i = 0; i < MT; i++)
#pragma unroll
        for (int r = 0; r < 2; r++) {
            const int64_t out = GATE_UP ? ob + i * 8 + g : ob + i * 16 + r * 8 + g;
            wok[i][r] = out < a.N;
            const int64_t wrow = (GATE_UP && r) ? a.N + out : out;
            wp[i][r] = W + (wok[i][r] ? wrow : 0) * a.Kd + lofs;
        }
}
/* the copies of one 16-byte piece per W row (at element kk of each row; kin: the piece lies inside k) into the slots
 * (i * IS + r) * 512 bytes after dst; pieces outside k or the rows are zeros */
template <int IS, typename P, int MT>
__device__ __forceinline__ void dec_issue_w_rows(const moe_gemm_args &a, uint32_t dst, int64_t kk, bool kin,
                                                 const P *const (&wp)[MT][2], const bool (&wok)[MT][2]) {
#pragma unroll
    for (int i = 0; i < MT; i++)
#pragma unroll
        for (int r = 0; r < 2; r++) {
            const bool v = kin && wok[i][r];
            cp_async16_mem(dst + (uint32_t)((i * IS + r) * 512), v ? (const void *)(wp[i][r] + kk) : a.W, v);
        }
}
/* the W copies of k step ks64 (of 64) into the ring slot at dst: two pieces per row (8 T elements each: k + tq*8 and
 * k + 32 + tq*8), piece h of row (i, r) in slot ((i * 2 + h) * 2 + r) */
template <typename T, int MT>
__device__ __forceinline__ void dec_issue_w(const moe_gemm_args &a, uint32_t dst, int64_t ks64, int tq,
                                            const T *const (&wp)[MT][2], const bool (&wok)[MT][2]) {
    const int64_t k = ks64 * 64;
#pragma unroll
    for (int h = 0; h < 2; h++) {
        const int64_t kk = k + h * 32;
        dec_issue_w_rows<4>(a, dst + (uint32_t)(h * 2 * 512), kk, kk + tq * 8 < a.Kd, wp, wok);
    }
}
/* F8: the W copies of k step ks64, one piece (16 e4m3 bytes: k + tq*16 ..) per row, row (i, r) in slot i * 2 + r */
template <int MT>
__device__ __forceinline__ void dec_issue_w_f8(const moe_gemm_args &a, uint32_t dst, int64_t ks64, int tq,
                                               const uint8_t *const (&wp)[MT][2], const bool (&wok)[MT][2]) {
    const int64_t k = ks64 * 64;
    dec_issue_w_rows<2>(a, dst, k, k + tq * 16 < a.Kd, wp, wok);
}
/* the x copies (tokens) of k step ks64 into the ring slot at dst, after the WP W pieces (xp: row start + the lane's
 * offset, tq*8 for T weights, tq*16 for F8; piece h at + h*32, F8 + h*8) */
template <typename T, int NT, int WP, bool F8>
__device__ __forceinline__ void dec_issue_x(const moe_gemm_args &a, uint32_t dst, int64_t ks64, int tq, int nt_act,
                                            const T *const (&xp)[NT], const bool (&xok)[NT]) {
    const int64_t k = ks64 * 64;
#pragma unroll
    for (int h = 0; h < 2; h++) {
        const int64_t kk = k + h * (F8 ? 8 : 32);
        const bool kin = kk + tq * (F8 ? 16 : 8) < a.Kd;
#pragma unroll
        for (int j = 0; j < NT; j++)
            if (j < nt_act) {
                const bool v = kin && xok[j];
                cp_async16_ca_mem(dst + (uint32_t)((WP + j * 2 + h) * 512), v ? (const void *)(xp[j] + kk) : a.A, v);
            }
    }
}
/* the mma of one landed ring slot (src: this lane's 16 bytes of piece 0) into acc */
template <typename T, int MT, int NT, int WP>
__device__ __forceinline__ void dec_mma_slot(float (&acc)[MT][NT][4], const unsigned char *src, int nt_act) {
#pragma unroll
    for (int h = 0; h < 2; h++) {
        uint4 xv[NT];
#pragma unroll
        for (int j = 0; j < NT; j++)
            if (j < nt_act) xv[j] = lds128(src + (WP + j * 2 + h) * 512);
#pragma unroll
        for (int i = 0; i < MT; i++) {
            const uint4 r0 = lds128(src + ((i * 2 + h) * 2) * 512), r8 = lds128(src + ((i * 2 + h) * 2 + 1) * 512);
            const uint32_t a0[4] = {r0.x, r8.x, r0.y, r8.y};
            const uint32_t a1[4] = {r0.z, r8.z, r0.w, r8.w};
#pragma unroll
            for (int j = 0; j < NT; j++)
                if (j < nt_act) {
                    mma16816<T>(acc[i][j], a0, xv[j].x, xv[j].y);
                    mma16816<T>(acc[i][j], a1, xv[j].z, xv[j].w);
                }
        }
    }
}
/* F8: the mma of one landed ring slot. Lane (g, tq) holds 16 e4m3 weights of rows g and g+8 (k = tq*16 + 0..15 of
 * the step) and x's same 16 k of its token g (pieces h = 0, 1: k + h*8 ..); mma q (0..3) takes physical k
 * tq*16 + 4q .. 4q+3: the weights' 32-bit word q (two T pairs) and x's words 2(q%2), 2(q%2)+1 of piece q/2 */
template <typename T, int MT, int NT, int WP>
__device__ __forceinline__ void dec_mma_slot_f8(float (&acc)[MT][NT][4], const unsigned char *src, int nt_act) {
    uint4 xv[NT][2];
#pragma unroll
    for (int j = 0; j < NT; j++)
        if (j < nt_act) xv[j][0] = lds128(src + (WP + j * 2) * 512), xv[j][1] = lds128(src + (WP + j * 2 + 1) * 512);
#pragma unroll
    for (int i = 0; i < MT; i++) {
        const uint4 r0 = lds128(src + (i * 2) * 512), r8 = lds128(src + (i * 2 + 1) * 512);
        const uint32_t w0[4] = {r0.x, r0.y, r0.z, r0.w}, w8[4] = {r8.x, r8.y, r8.z, r8.w};
#pragma unroll
        for (int q = 0; q < 4; q++) {
            const uint32_t af[4] = {jamba_e4m3x2_to16<T>(w0[q]), jamba_e4m3x2_to16<T>(w8[q]),
                                    jamba_e4m3x2_to16<T>(w0[q] >> 16), jamba_e4m3x2_to16<T>(w8[q] >> 16)};
#pragma unroll
            for (int j = 0; j < NT; j++)
                if (j < nt_act) {
                    const uint4 &xh = xv[j][q >> 1];
                    if (q & 1)
                        mma16816<T>(acc[i][j], af, xh.z, xh.w);
                    else
                        mma16816<T>(acc[i][j], af, xh.x, xh.y);
                }
        }
    }
}
/* the outputs of accumulator (i, j) (summed over the k split: c), element r: W row g + (r>>1)*8 of tile i, token
 * t0 + j*8 + tq*2 + (r&1). gate_up: silu(gate) * up into act (sorted rows); down: scaled by the router weight
 * into slot_out (slot rows) */
template <typename T, bool GATE_UP>
__device__ __forceinline__ void dec_store(const moe_gemm_args &a, T *C, const float (&c)[4], int i, int j, int64_t t0,
                                          int64_t ob, int64_t off, int64_t cnt, int g, int tq) {
#pragma unroll
    for (int b = 0; b < 2; b++) {
        const int64_t n = t0 + j * 8 + tq * 2 + b;
        if (n >= cnt) continue;
        if (GATE_UP) {
            const int64_t f = ob + i * 8 + g;
            if (f < a.N) C[(off + n) * a.N + f] = jamba_st<T>(moe_act<T>(c[b], c[2 + b]));
        } else {
            const int64_t slot_id = a.sorted[off + n];
            const float w = a.weights[slot_id];
#pragma unroll
            for (int hh = 0; hh < 2; hh++) {
                const int64_t hrow = ob + i * 16 + hh * 8 + g;
                if (hrow < a.N) C[slot_id * a.N + hrow] = jamba_st<T>(moe_scaled<T>(c[hh * 2 + b], w));
            }
        }
    }
}

template <typename T, bool GATE_UP, int NT, bool F8, int MT>
__global__ void __launch_bounds__(DEC_WARPS * 32, 2) moe_decode_kernel(moe_gemm_args a, int tiles) {
    jamba_pdl_begin();
    using WT = typename std::conditional<F8, uint8_t, T>::type; /* weight element */
    constexpr int KS = DEC_KS(GATE_UP), WR = DEC_WR(GATE_UP), P = DEC_PIECES(NT, F8, MT);
    constexpr int S = DEC_STAGES(NT, F8, MT);
    constexpr int WP = DEC_WPIECES(F8, MT); /* W pieces per lane and step; x pieces follow */
    constexpr int LOFS = F8 ? 16 : 8;   /* k offset of lane tq: tq * LOFS */
    constexpr int V = MT * NT * 4;      /* accumulators per lane */
    constexpr int STAGE = P * 512;      /* bytes of one ring slot of a warp */
    extern __shared__ __align__(16) unsigned char dec_smem[];
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, tq = lane & 3;
    const int wr = warp % WR, ks = warp / WR;
    int64_t off = 0, cnt = 0;
    const int e = moe_nth_expert(a.offsets, a.E, (int)(blockIdx.x / (unsigned)tiles), &off, &cnt);
    if (e < 0) return; /* whole block: no such expert */
    const int64_t ob = (int64_t)(blockIdx.x % (unsigned)tiles) * DEC_OUTS(GATE_UP, MT) + wr * MT * (GATE_UP ? 8 : 16);
    const T *A = reinterpret_cast<const T *>(a.A);
    const WT *W = reinterpret_cast<const WT *>(a.W) + (int64_t)e * a.w_rows * a.Kd;
    T *C = reinterpret_cast<T *>(a.C);

    const WT *wp[MT][2]; /* this lane's W rows */
    bool wok[MT][2];
    dec_w_rows<WT, MT, GATE_UP>(a, W, ob, g, tq * LOFS, wp, wok);
    /* this warp's k steps of 64: s0 + st * sk, st < nsteps (round-robin over the k-split warps, dec_k_steps) */
    int64_t s0, sk;
    const int nsteps = dec_k_steps(a, ks, KS, &s0, &sk);

    const uint32_t ring_s = smem_u32(dec_smem) + (uint32_t)(warp * S * STAGE + lane * 16);
    const unsigned char *ring_p = dec_smem + warp * S * STAGE + lane * 16;
    float *red = reinterpret_cast<float *>(dec_smem); /* [warp][V][32], over the rings after a pass */

    for (int64_t t0 = 0; t0 < cnt; t0 += NT * 8) {
        const int nt_act = (int)((cnt - t0 + 7) / 8 < NT ? (cnt - t0 + 7) / 8 : NT); /* warp-uniform */
        bool xok[NT];
        int64_t xrow[NT];
#pragma unroll
        for (int j = 0; j < NT; j++) { /* gate_up: the slot loads start here, their values are used below */
            const int64_t n = t0 + j * 8 + g;
            xok[j] = j < nt_act && n < cnt;
            xrow[j] = xok[j] ? (GATE_UP ? (int64_t)a.sorted[off + n] : off + n) : 0;
        }
        /* copies of step st (relative to s0) into ring slot `slot` */
        auto issue_w = [&](int slot, int st) {
            if constexpr (F8)
                dec_issue_w_f8<MT>(a, ring_s + (uint32_t)(slot * STAGE), s0 + st * sk, tq, wp, wok);
            else
                dec_issue_w<T, MT>(a, ring_s + (uint32_t)(slot * STAGE), s0 + st * sk, tq, wp, wok);
        };
        /* the weights of the first steps do not wait for the slot loads: they go out first */
#pragma unroll
        for (int st = 0; st < S - 1; st++)
            if (st < nsteps) issue_w(st, st);
        const T *xp[NT];
#pragma unroll
        for (int j = 0; j < NT; j++) xp[j] = A + (GATE_UP ? xrow[j] / a.topk : xrow[j]) * a.Kd + tq * LOFS;
        auto issue_x = [&](int slot, int st) {
            dec_issue_x<T, NT, WP, F8>(a, ring_s + (uint32_t)(slot * STAGE), s0 + st * sk, tq, nt_act, xp, xok);
        };

        float acc[MT][NT][4];
#pragma unroll
        for (int i = 0; i < MT; i++)
#pragma unroll
            for (int j = 0; j < NT; j++)
#pragma unroll
                for (int r = 0; r < 4; r++) acc[i][j][r] = 0.f;

        /* Commit groups: S-1 in the prologue (the first holds all S-1 prologue steps: issued together, they
         * land together; the others are empty), then one per loop step st holding step st+S-1 (empty past the
         * end). At step st, S-1+st groups are committed; at most S-2 pending means groups 0 .. st have landed,
         * and step st is in group 0 (st < S-1) or in the group committed at step st-S+1 (group st). */
#pragma unroll
        for (int st = 0; st < S - 1; st++)
            if (st < nsteps) issue_x(st, st);
#pragma unroll
        for (int st = 0; st < S - 1; st++) cp_async_commit_mem();
        int slot = 0; /* ring slot of step st: st % S */
#pragma unroll 1
        for (int st = 0; st < nsteps; st++) {
            cp_async_wait_mem<S - 2>(); /* step st has landed (this lane's copies) */
            /* refill the slot read in the previous step (its values went into mma already) */
            if (st + S - 1 < nsteps) {
                issue_w(slot == 0 ? S - 1 : slot - 1, st + S - 1);
                issue_x(slot == 0 ? S - 1 : slot - 1, st + S - 1);
            }
            cp_async_commit_mem();
            if constexpr (F8)
                dec_mma_slot_f8<T, MT, NT, WP>(acc, ring_p + slot * STAGE, nt_act);
            else
                dec_mma_slot<T, MT, NT, WP>(acc, ring_p + slot * STAGE, nt_act);
            slot = slot + 1 == S ? 0 : slot + 1;
        }
        cp_async_wait_mem<0>();
        __syncthreads(); /* every warp is done with its ring: red may overwrite it */
#pragma unroll
        for (int i = 0; i < MT; i++)
#pragma unroll
            for (int j = 0; j < NT; j++)
#pragma unroll
                for (int r = 0; r < 4; r++) red[(warp * V + (i * NT + j) * 4 + r) * 32 + lane] = acc[i][j][r];
        __syncthreads();
        if (ks == 0) {
            /* accumulator (i, j) element r: W row g + (r>>1)*8 of tile i, token t0 + j*8 + tq*2 + (r&1) */
#pragma unroll
            for (int i = 0; i < MT; i++)
#pragma unroll
                for (int j = 0; j < NT; j++) {
                    if (j >= nt_act) continue;
                    float c[4];
#pragma unroll
                    for (int r = 0; r < 4; r++) {
                        float v = 0.f;
#pragma unroll
                        for (int q = 0; q < KS; q++) v += red[((q * WR + wr) * V + (i * NT + j) * 4 + r) * 32 + lane];
                        c[r] = v;
                    }
                    if constexpr (F8) { /* each W row's scale on its sums: element r is row g + (r>>1)*8 of tile i */
                        const float *sc = a.wscale + (int64_t)e * a.w_rows;
#pragma unroll
                        for (int r = 0; r < 4; r += 2) {
                            const int64_t out = GATE_UP ? ob + i * 8 + g : ob + i * 16 + (r >> 1) * 8 + g;
                            const int64_t wrow = (GATE_UP && r) ? a.N + out : out;
                            const float s = out < a.N ? sc[wrow] : 0.f;
                            c[r] *= s, c[r + 1] *= s;
                        }
                    }
                    dec_store<T, GATE_UP>(a, C, c, i, j, t0, ob, off, cnt, g, tq);
                }
        }
        __syncthreads(); /* red is over the rings of the next pass */
    }
}

/* ---- fallback: fp32 CUDA-core tiles ------------------------------------------------------------------- */
#define SIMT_TILE 32 /* 32 rows x 32 outputs x 32 k; 256 threads, 2x2 outputs each */

/* Same outputs as moe_mma_kernel, any dtype (f32, f16, bf16), any sizes and alignment.
 * grid (ceil(slots / 32) + E, ceil(N / 32)), 256 threads. */
template <typename T>
__global__ void __launch_bounds__(256) moe_simt_kernel(moe_gemm_args a) {
    jamba_pdl_begin();
    __shared__ float sa[SIMT_TILE][SIMT_TILE + 1], sg[SIMT_TILE][SIMT_TILE + 1], su[SIMT_TILE][SIMT_TILE + 1];
    int e;
    int64_t row0, row_end;
    if (!moe_find_tile(a.offsets, a.E, blockIdx.x, SIMT_TILE, 0, &e, &row0, &row_end)) return;
    const int64_t n0 = (int64_t)blockIdx.y * SIMT_TILE;
    const T *A = reinterpret_cast<const T *>(a.A);
    const T *W = reinterpret_cast<const T *>(a.W) + (int64_t)e * a.w_rows * a.Kd;
    const int tid = threadIdx.x, tx = tid & 15, ty = tid >> 4;
    float accg[2][2] = {{0.f, 0.f}, {0.f, 0.f}}, accu[2][2] = {{0.f, 0.f}, {0.f, 0.f}};
    for (int64_t k0 = 0; k0 < a.Kd; k0 += SIMT_TILE) {
        for (int i = tid; i < SIMT_TILE * SIMT_TILE; i += 256) {
            const int r = i / SIMT_TILE, kk = i % SIMT_TILE;
            const int64_t k = k0 + kk, p = row0 + r, n = n0 + r;
            float va = 0.f, vg = 0.f, vu = 0.f;
            if (k < a.Kd) {
                if (p < row_end) {
                    const int64_t src = a.gate_up ? (int64_t)(a.sorted[p] / a.topk) : p;
                    va = jamba_ld<T>(A[src * a.Kd + k]);
                }
                if (n < a.N) {
                    vg = jamba_ld<T>(W[n * a.Kd + k]);
                    if (a.gate_up) vu = jamba_ld<T>(W[(a.N + n) * a.Kd + k]);
                }
            }
            sa[r][kk] = va;
            sg[r][kk] = vg;
            su[r][kk] = vu;
        }
        __syncthreads();
#pragma unroll 8
        for (int kk = 0; kk < SIMT_TILE; kk++) {
#pragma unroll
            for (int i = 0; i < 2; i++)
#pragma unroll
                for (int j = 0; j < 2; j++) {
                    accg[i][j] += sa[ty * 2 + i][kk] * sg[tx * 2 + j][kk];
                    accu[i][j] += sa[ty * 2 + i][kk] * su[tx * 2 + j][kk];
                }
        }
        __syncthreads();
    }
    T *C = reinterpret_cast<T *>(a.C);
#pragma unroll
    for (int i = 0; i < 2; i++) {
        const int64_t p = row0 + ty * 2 + i;
        if (p >= row_end) continue;
#pragma unroll
        for (int j = 0; j < 2; j++) {
            const int64_t n = n0 + tx * 2 + j;
            if (n >= a.N) continue;
            if (a.gate_up) {
                C[p * a.N + n] = jamba_st<T>(moe_act<T>(accg[i][j], accu[i][j]));
            } else {
                const int64_t slot = a.sorted[p];
                C[slot * a.N + n] = jamba_st<T>(moe_scaled<T>(accg[i][j], a.weights[slot]));
            }
        }
    }
}

/* ---- combine ------------------------------------------------------------------------------------------ */
/* out[t, h] = round(...round(slot_out[t*K, h] + slot_out[t*K+1, h])...); NaN when an id of t is bad.
 * Grid-stride over T*H/vec elements; vec: 16-byte vectors when H allows. */
template <typename T>
__global__ void __launch_bounds__(256) moe_combine_kernel(T *out, const T *slot_out, const int32_t *ids, int64_t T_,
                                                          int64_t H, int K, int E, int vec) {
    jamba_pdl_begin();
    constexpr int V = 16 / (int)sizeof(T);
    const int64_t per_row = vec ? H / V : H;
    const int64_t total = T_ * per_row;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += (int64_t)gridDim.x * blockDim.x) {
        const int64_t t = i / per_row, c = i % per_row;
        bool bad = false;
        for (int j = 0; j < K; j++) bad |= moe_key(ids[t * K + j], E) == E;
        if (vec) {
            float acc[V];
            jamba_vec16<T> v;
            v.raw = *reinterpret_cast<const uint4 *>(slot_out + (t * K) * H + c * V);
#pragma unroll
            for (int q = 0; q < V; q++) acc[q] = jamba_ld<T>(v.v[q]);
            for (int j = 1; j < K; j++) {
                v.raw = *reinterpret_cast<const uint4 *>(slot_out + (t * K + j) * H + c * V);
#pragma unroll
                for (int q = 0; q < V; q++) acc[q] = jamba_round<T>(acc[q] + jamba_ld<T>(v.v[q]));
            }
#pragma unroll
            for (int q = 0; q < V; q++) v.v[q] = jamba_st<T>(bad ? __int_as_float(0x7fc00000) : acc[q]);
            *reinterpret_cast<uint4 *>(out + t * H + c * V) = v.raw;
        } else {
            float acc = jamba_ld<T>(slot_out[(t * K) * H + c]);
            for (int j = 1; j < K; j++) acc = jamba_round<T>(acc + jamba_ld<T>(slot_out[(t * K + j) * H + c]));
            out[t * H + c] = jamba_st<T>(bad ? __int_as_float(0x7fc00000) : acc);
        }
    }
}

/* ---- launchers ---------------------------------------------------------------------------------------- */
static jamba_status permute_launch(const int32_t *ids, int64_t slots, int E, int32_t *offsets, int32_t *sorted,
                                   cudaStream_t stream) {
    jamba_kernel_launch(moe_permute_kernel, E + 1, PERMUTE_THREADS, 0, stream, ids, slots, E, offsets, sorted);
    JAMBA_LAUNCH_CHECK("moe_permute_kernel", stream);
    return JAMBA_OK;
}

extern "C" jamba_status jamba_moe_route_cuda(const jamba_moe_route_params *p, jamba_launch launch) {
    JAMBA_TRY(jamba_moe_route_check(p));
    if (p->logits.dtype == JAMBA_F64)
        return jamba_set_error(JAMBA_ERR_DTYPE, "jamba.moe_route: router_logits must have dtype "
                               "float32|float16|bfloat16 on CUDA, got float64");
    JAMBA_DEVICE_GUARD(launch);
    cudaStream_t stream = (cudaStream_t)launch.stream;
    const int64_t T = p->logits.shape[0];
    const int E = (int)p->logits.shape[1], K = (int)p->top_k;
    if (p->expert_offsets.data != NULL && T > 0 && T * K <= ROUTE_SMALL_SLOTS && E <= ROUTE_SMALL_E) {
        jamba_kernel_launch(moe_route_permute_small_kernel, 1, ROUTE_WARPS * 32, 0, stream, p->logits.data,
            (int)p->logits.dtype, T, E, p->logits.stride[0], K, (float *)p->weights.data,
            (int32_t *)p->expert_ids.data, (int32_t *)p->expert_offsets.data, (int32_t *)p->sorted_slots.data);
        JAMBA_LAUNCH_CHECK("moe_route_permute_small_kernel", stream);
        return JAMBA_OK;
    }
    if (T > 0) {
        const size_t smem = (size_t)ROUTE_WARPS * E * sizeof(float);
        jamba_kernel_launch(moe_route_kernel, (unsigned)jamba_ceil_div(T, ROUTE_WARPS), ROUTE_WARPS * 32, smem,
            stream, p->logits.data, (int)p->logits.dtype, T, E, p->logits.stride[0], K, (float *)p->weights.data,
            (int32_t *)p->expert_ids.data);
        JAMBA_LAUNCH_CHECK("moe_route_kernel", stream);
    }
    if (p->expert_offsets.data != NULL)
        return permute_launch((const int32_t *)p->expert_ids.data, T * K, E, (int32_t *)p->expert_offsets.data,
                              (int32_t *)p->sorted_slots.data, stream);
    return JAMBA_OK;
}

extern "C" jamba_status jamba_moe_permute_cuda(const jamba_moe_permute_params *p, jamba_launch launch) {
    JAMBA_TRY(jamba_moe_permute_check(p));
    JAMBA_DEVICE_GUARD(launch);
    return permute_launch((const int32_t *)p->expert_ids.data, p->expert_ids.shape[0] * p->expert_ids.shape[1],
                          (int)p->num_experts, (int32_t *)p->expert_offsets.data, (int32_t *)p->sorted_slots.data,
                          (cudaStream_t)launch.stream);
}

/* one launch of moe_decode_kernel; raises the shared-memory limit once per device (see mma_launch) */
template <typename T, bool GATE_UP, int NT, bool F8, int MT = DEC_MT>
static jamba_status decode_launch_nt(const moe_gemm_args &a, int64_t slots, cudaStream_t stream) {
    static int smem_set[64];
    int dev = 0;
    JAMBA_CUDA_CHECK(cudaGetDevice(&dev));
    if (dev < 0 || dev >= 64 || !smem_set[dev]) {
        JAMBA_CUDA_CHECK(cudaFuncSetAttribute(moe_decode_kernel<T, GATE_UP, NT, F8, MT>,
                                              cudaFuncAttributeMaxDynamicSharedMemorySize, DEC_SMEM(NT, F8, MT)));
        /* two blocks per SM need the largest shared-memory carveout */
        JAMBA_CUDA_CHECK(cudaFuncSetAttribute(moe_decode_kernel<T, GATE_UP, NT, F8, MT>,
                                              cudaFuncAttributePreferredSharedMemoryCarveout,
                                              cudaSharedmemCarveoutMaxShared));
        if (dev >= 0 && dev < 64) smem_set[dev] = 1;
    }
    const int64_t ub = slots < a.E ? slots : a.E; /* experts that can have tokens */
    const int64_t tiles = jamba_ceil_div(a.N, DEC_OUTS(GATE_UP, MT));
    if (ub <= 0 || tiles <= 0) return JAMBA_OK;
    jamba_kernel_launch(moe_decode_kernel<T, GATE_UP, NT, F8, MT>, (unsigned)(ub * tiles), DEC_WARPS * 32,
        DEC_SMEM(NT, F8, MT), stream, a, (int)tiles);
    JAMBA_LAUNCH_CHECK("moe_decode_kernel", stream);
    return JAMBA_OK;
}

/* opt-in shared memory per block of the current device (sm_86 / sm_89: 99 KB, sm_80: 163 KB, sm_90: 227 KB),
 * cached per device (a device attribute, no stream work: fine inside a capture) */
static jamba_status decode_smem_optin(int *optin) {
    static int cache[64];
    int dev = 0;
    JAMBA_CUDA_CHECK(cudaGetDevice(&dev));
    if (dev >= 0 && dev < 64 && cache[dev] > 0) {
        *optin = cache[dev];
        return JAMBA_OK;
    }
    JAMBA_CUDA_CHECK(cudaDeviceGetAttribute(optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
    if (dev >= 0 && dev < 64) cache[dev] = *optin;
    return JAMBA_OK;
}

/* The fp8 ring kernels at NT 2 and 4 with 4 m16 tiles a warp (64 outputs a block): at MT 2 a step held 4 W pieces and
 * 2 NT x pieces a lane, so the ring's 96 KB kept only 32-48 KB of weights in flight a block; at MT 4, 8 W pieces and
 * 4 / 8 x pieces (4 / 3 steps: 64 / 48 KB; 182 / 223 registers at NT 2 / 4, still 2 blocks an SM). The same bits.
 * Session 65 (s65_f8mt4_2dc1f7f.log, dev/moe_ring_ab.py, graph-timed in turns, Jamba-v0.1, bf16 x), NT 4: 128 tokens
 * 1013.3 against 1285.1 us (gate_up 742 / 1051, down 376 / 520). Session 66 (s66_f8nt2_c4c2e09.log), NT 2, us, MT 4
 * / 2: 40 tokens 821.7 / 939.6, 48 812.3 / 950.0, 64 843.3 / 994.5, 80 903.6 / 1059.1, 96 967.7 / 1131.0 (70% ->
 * 80% of the touched weights' floor at 40-48 tokens; at 96 still ahead of NT 4, 1001.4; at 24-32 tokens NT 2 on MT 4
 * lost to NT 1 on MT 2 by 1-2%). JAMBA_EXT_MOE_F8_MT4 names the NT values that run MT 4, as digits: "24" (the
 * default), "4", "0" (MT 2 at every NT: the A/B). */
static bool dec_f8_mt4(int nt) {
    const char *s = getenv("JAMBA_EXT_MOE_F8_MT4");
    if (!s || !*s) s = "24";
    return strchr(s, '0' + nt) != NULL;
}
/* JAMBA_EXT_MOE_DEC_MT=2 (A/B): the down GEMM of T weights on the ring kernel's 2 m16 tiles a warp, as before
 * session 65 (the default 1: see DEC_OUTS) */
static bool dec_down_mt2() {
    const char *s = getenv("JAMBA_EXT_MOE_DEC_MT");
    return s && !strcmp(s, "2");
}

/* The ring kernels' grid, from the token count T = slots / TOPK (known on the host; no sync); up to 4 tokens
 * experts_launch runs moe_gemv.cu's kernels instead unless JAMBA_EXT_MOE_GEMV=0.
 * (A one-token variant of the ring kernel over a one-wave persistent grid, moe_decode_persist_kernel, ran 1 token
 * from session 3 until moe_gemv.cu's kernels beat it, 167.8 vs 196.4 us, moe_gemv_ab_ea608ec.log; removed, in git
 * history at 4c66ce5.)
 * moe_decode_kernel with NT (n-tiles of 8 tokens per pass) from T, which bounds an expert's tokens
 * under top-k routing (distinct ids per token); more tokens on one expert only cost extra passes. Where the
 * NT = 1 ring does not fit (DEC_SMEM(1) = 100 KB > 99 KB on sm_86 / sm_89: the sm_80 code runs there), up to
 * 8 tokens run the NT = 2 variant (96 KB, one n-tile idle). F8: e4m3 weights (96 KB at every NT). */
template <typename T, bool F8 = false>
static jamba_status decode_launch(const moe_gemm_args &a, int64_t slots, cudaStream_t stream) {
    const int64_t tokens = slots / a.topk;
    int optin = 0;
    JAMBA_TRY(decode_smem_optin(&optin));
    int nt = tokens <= 8 && optin >= DEC_SMEM(1, F8, DEC_MT) ? 1 : tokens <= 16 ? 2 : 4;
    if (F8) {
        /* by the average slots per expert: an expert with more takes more passes, but fewer n-tiles leave room for
         * more ring steps (8 / 6 / 4 at NT 1 / 2 / 4), which the fp8 weights' smaller pieces need to keep enough
         * bytes in flight. Jamba-v0.1 sizes, bf16 x, us at NT 1 / 2 / 4 (fp8_ring_nt_475caf7.log): 16 tokens (2 slots
         * per expert) 687 / 766 / 934, 32 (4) 792 / 893 / 1099, 48 (6) 977 / 932 / 1124, 96 (12) 1502 / 1090 / 1210,
         * 128 (16) 1780 / 1317 / 1259, 256 (32) 3306 / 2391 / 1977 */
        const int64_t avg = slots / a.E;
        nt = avg <= 4 && optin >= DEC_SMEM(1, F8, DEC_MT) ? 1 : avg <= 12 ? 2 : 4;
        /* EXPERIMENT (docs/SWITCHES.md): the n-tiles per pass forced */
        const char *s = getenv("JAMBA_EXT_FP8_RING_NT");
        const int v = s ? atoi(s) : 0;
        if (v == 2 || v == 4 || (v == 1 && optin >= DEC_SMEM(1, F8, DEC_MT))) nt = v;
    }
    if constexpr (F8) {
        if (nt == 4 && dec_f8_mt4(4)) { /* 4 m16 tiles a warp (dec_f8_mt4) at NT 4 and 2 */
            if (a.gate_up) return decode_launch_nt<T, true, 4, true, 4>(a, slots, stream);
            return decode_launch_nt<T, false, 4, true, 4>(a, slots, stream);
        }
        if (nt == 2 && dec_f8_mt4(2)) {
            if (a.gate_up) return decode_launch_nt<T, true, 2, true, 4>(a, slots, stream);
            return decode_launch_nt<T, false, 2, true, 4>(a, slots, stream);
        }
    }
    if constexpr (!F8) {
        if (!a.gate_up && !dec_down_mt2()) { /* down on one m16 tile a warp (DEC_OUTS) */
            if (nt == 1) return decode_launch_nt<T, false, 1, false, 1>(a, slots, stream);
            if (nt == 2) return decode_launch_nt<T, false, 2, false, 1>(a, slots, stream);
            return decode_launch_nt<T, false, 4, false, 1>(a, slots, stream);
        }
    }
    if (a.gate_up) {
        if (nt == 1) return decode_launch_nt<T, true, 1, F8>(a, slots, stream);
        if (nt == 2) return decode_launch_nt<T, true, 2, F8>(a, slots, stream);
        return decode_launch_nt<T, true, 4, F8>(a, slots, stream);
    }
    if (nt == 1) return decode_launch_nt<T, false, 1, F8>(a, slots, stream);
    if (nt == 2) return decode_launch_nt<T, false, 2, F8>(a, slots, stream);
    return decode_launch_nt<T, false, 4, F8>(a, slots, stream);
}

/* one GEMM (gate_up or down) with the chosen engine */
template <typename T>
static jamba_status gemm_launch(int impl, const moe_gemm_args &a, int64_t slots, cudaStream_t stream) {
    if (impl == JAMBA_MOE_IMPL_SIMT) {
        dim3 grid((unsigned)(jamba_ceil_div(slots, SIMT_TILE) + a.E), (unsigned)jamba_ceil_div(a.N, SIMT_TILE));
        jamba_kernel_launch(moe_simt_kernel<T>, grid, 256, 0, stream, a);
        JAMBA_LAUNCH_CHECK("moe_simt_kernel", stream);
        return JAMBA_OK;
    }
    if constexpr (sizeof(T) == 2) {
        if (impl == JAMBA_MOE_IMPL_GEMV) return decode_launch<T>(a, slots, stream);
        if (impl == JAMBA_MOE_IMPL_MMA64) return mma_launch<T, 64, 3, 128>(a, slots, stream);
        if (impl == JAMBA_MOE_IMPL_MMA256) return mma_launch<T, 32, 4, 256>(a, slots, stream);
        return mma_launch<T, 32, 4, 128>(a, slots, stream);
    }
    return jamba_set_error(JAMBA_ERR_UNSUPPORTED, "jamba.moe_experts: tensor-core paths need bf16/f16");
}

/* out (T, H) = the weighted sum of each token's slot rows of slot_out (T*K, H) (moe_combine_kernel) */
template <typename T>
static jamba_status combine_rows(const jamba_tensor &out, const jamba_tensor &slot_out, const jamba_tensor &ids, int E,
                                 int device, cudaStream_t stream) {
    const int64_t T_ = out.shape[0], H = out.shape[1];
    const int K = (int)ids.shape[1];
    const int V = 16 / (int)sizeof(T);
    const int vec = (H % V == 0) && jamba_aligned16(out.data) && jamba_aligned16(slot_out.data);
    const int64_t work = T_ * (vec ? H / V : H);
    int64_t blocks = jamba_ceil_div(work, 256);
    const int64_t cap = (int64_t)jamba_cuda_sm_count(device) * 16; /* grid-stride beyond 16 blocks per SM */
    blocks = blocks < cap ? blocks : cap;
    if (blocks < 1) return JAMBA_OK;
    jamba_kernel_launch(moe_combine_kernel<T>, (unsigned)blocks, 256, 0, stream, (T *)out.data,
        (const T *)slot_out.data, (const int32_t *)ids.data, T_, H, K, E, vec);
    JAMBA_LAUNCH_CHECK("moe_combine_kernel", stream);
    return JAMBA_OK;
}
template <typename T>
static jamba_status combine_launch(const jamba_moe_experts_params *p, int device, cudaStream_t stream) {
    return combine_rows<T>(p->out, p->slot_out, p->expert_ids, (int)p->w_gate_up.shape[0], device, stream);
}

/* impl auto (measured on an H200, Jamba-v0.1 sizes, bf16; benchmarks/results/bench_moe*.json):
 *   Hopper (wgmma available): the weight-streaming decode kernels (moe_gemv.cu up to 4 tokens, then
 *     moe_decode_kernel, see decode_launch) while the average expert sees at most 1 slot (T <= 8 at E 16, top-2),
 *     the wgmma engine above (with 64 x 512 tail tiles up to 16 slots per expert, and from 176 to 303 slots per
 *     expert in bf16 its swap-AB kernel: see moe_wgmma.cu). Session 7
 *     sweep (bench_moe_tiny_3b676ba.json, bench_moe_small_c8ecf91.json), us, decode kernel vs wgmma with
 *     tail tiles: 4 tokens 557 vs 596, 8: 736 vs 736, 16: 1429 vs 1356, 32: 1383 vs 1296, 64: 1458 vs 1368,
 *     96: 1469 vs 1383, 128: 1502 vs 1387 (the weight floor: 1318 us from 16 tokens on);
 *   elsewhere: the decode kernel while the average expert sees at most 16 slots (T <= 128), then mma64
 *     (faster than mma and mma256 at every measured size; at 64 tokens 1.78 ms vs 1.51 for the decode kernel,
 *     bench_moe_2bc5d07.json).
 * jamba_ext/ops.py may route very large bf16 calls to torch._grouped_mm before reaching here
 * (ops.MOE_GROUPED_MM_MIN_SLOTS), with jamba_silu_mul / jamba_moe_combine (moe_glue.cu) around it. */
#define MOE_GEMV_MAX_SLOTS_PER_EXPERT 16
#define MOE_GEMV_MAX_SLOTS_PER_EXPERT_SM90 1

template <typename T>
static jamba_status experts_launch(const jamba_moe_experts_params *p, int device, cudaStream_t stream) {
    const int64_t T_ = p->x.shape[0], H = p->x.shape[1], K = p->expert_ids.shape[1];
    const int64_t E = p->w_gate_up.shape[0], F = p->w_down.shape[2], slots = T_ * K;
    int impl = p->impl;
    if (F > 0) {
        const bool tc_ok = sizeof(T) == 2 && H % 8 == 0 && F % 8 == 0 && jamba_aligned16(p->x.data) &&
                           jamba_aligned16(p->w_gate_up.data) && jamba_aligned16(p->w_down.data) &&
                           jamba_aligned16(p->act.data) && jamba_aligned16(p->slot_out.data);
        if (impl == JAMBA_MOE_IMPL_AUTO) {
            const bool hopper = moe_wgmma_available(device);
            const int64_t gemv_max = (hopper ? MOE_GEMV_MAX_SLOTS_PER_EXPERT_SM90 : MOE_GEMV_MAX_SLOTS_PER_EXPERT) * E;
            impl = !tc_ok ? JAMBA_MOE_IMPL_SIMT
                   : slots <= gemv_max ? JAMBA_MOE_IMPL_GEMV
                   : hopper ? JAMBA_MOE_IMPL_WGMMA
                            : JAMBA_MOE_IMPL_MMA64;
        }
        if (impl != JAMBA_MOE_IMPL_SIMT && !tc_ok)
            return jamba_set_error(JAMBA_ERR_UNSUPPORTED, "jamba.moe_experts: impl %d (tensor cores) needs bf16/f16 "
                                   "tensors, H and F multiples of 8 and 16-byte aligned data; got %s, H %lld, F %lld "
                                   "(use impl simt or auto)", impl, jamba_dtype_name(p->x.dtype), (long long)H,
                                   (long long)F);
        if (jamba_ceil_div(F, 16) > 65535 || jamba_ceil_div(H, SIMT_TILE) > 65535 || jamba_ceil_div(F, SIMT_TILE) > 65535)
            return jamba_set_error(JAMBA_ERR_ARG, "jamba.moe_experts: H and F must be below 1048576, got %lld, %lld",
                                   (long long)H, (long long)F);
        moe_gemm_args g;
        memset(&g, 0, sizeof g);
        g.offsets = (const int32_t *)p->expert_offsets.data;
        g.sorted = (const int32_t *)p->sorted_slots.data;
        g.weights = (const float *)p->weights.data;
        g.E = (int)E;
        g.topk = (int)K;
        if (impl == JAMBA_MOE_IMPL_WGMMA) {
            /* x gathered into sorted order in slot_out (free until the down GEMM writes it), then both GEMMs
             * with TMA-loaded tiles (moe_wgmma.cu) */
            const int dt = std::is_same<T, __half>::value ? JAMBA_F16 : JAMBA_BF16;
            int32_t *sched = (int32_t *)p->sched.data; /* tile counters (persistent kernel), zeroed by the gather */
            JAMBA_TRY(moe_gather_rows(dt, p->slot_out.data, p->x.data, g.sorted, (int)K, slots, H, sched, stream));
            g.A = p->slot_out.data, g.W = p->w_gate_up.data, g.C = p->act.data;
            g.Kd = H, g.N = F, g.w_rows = 2 * F, g.gate_up = 1, g.sched = sched;
            JAMBA_TRY(moe_wgmma_gemm(dt, g, slots, device, stream));
            g.A = p->act.data, g.W = p->w_down.data, g.C = p->slot_out.data;
            g.Kd = F, g.N = H, g.w_rows = H, g.gate_up = 0, g.sched = sched ? sched + 1 : NULL;
            JAMBA_TRY(moe_wgmma_gemm(dt, g, slots, device, stream));
            return combine_launch<T>(p, device, stream);
        }
        if (sizeof(T) == 2 && impl == JAMBA_MOE_IMPL_GEMV) { /* few tokens: moe_gemv.cu (both GEMMs, the combine) */
            int ran = 0;
            JAMBA_TRY(moe_gemv_decode(std::is_same<T, __half>::value ? JAMBA_F16 : JAMBA_BF16, p, stream, &ran));
            if (ran) return JAMBA_OK;
        }
        /* 1. act[p] = silu(gate x) * up x, rows in sorted order */
        g.A = p->x.data;
        g.W = p->w_gate_up.data;
        g.C = p->act.data;
        g.Kd = H;
        g.N = F;
        g.w_rows = 2 * F;
        g.gate_up = 1;
        JAMBA_TRY(gemm_launch<T>(impl, g, slots, stream));
        /* 2. slot_out[slot] = round(down act) * round(w) */
        g.A = p->act.data;
        g.W = p->w_down.data;
        g.C = p->slot_out.data;
        g.Kd = F;
        g.N = H;
        g.w_rows = H;
        g.gate_up = 0;
        JAMBA_TRY(gemm_launch<T>(impl, g, slots, stream));
    } else {
        /* F == 0: every expert output is zero */
        JAMBA_CUDA_CHECK(cudaMemsetAsync(p->slot_out.data, 0, (size_t)(slots * H * sizeof(T)), stream));
    }
    /* 3. out[t] = sum over the token's slots, fixed order */
    return combine_launch<T>(p, device, stream);
}

extern "C" jamba_status jamba_moe_experts_cuda(const jamba_moe_experts_params *p, jamba_launch launch) {
    JAMBA_TRY(jamba_moe_experts_check(p));
    if (p->x.shape[0] == 0 || p->x.shape[1] == 0) return JAMBA_OK;
    JAMBA_DEVICE_GUARD(launch);
    cudaStream_t stream = (cudaStream_t)launch.stream;
    jamba_status s = JAMBA_ERR_DTYPE;
    JAMBA_DISPATCH_FLOAT(p->x.dtype, T, s = experts_launch<T>(p, launch.device, stream));
    return s;
}

/* moe_experts_fp8 given the permutation (csrc/jamba.h JAMBA_FP8_API; moe_gemv.cu's entry point calls this): the ring
 * kernels on the e4m3 weights (F8: each W row read once per pass of up to NT*8 of its expert's tokens), or from
 * FP8_WGMMA_MIN_SLOTS_PER_EXPERT slots per expert on Hopper the wgmma kernel on them (moe_wgmma.cu,
 * moe_wgmma_f8ws_kernel: each W row read once per 128 of its expert's rows, converted in shared memory), gate_up into
 * act (sorted order), down into slot_out (slot order), then the combine, as moe_experts' engines. Checked by
 * the caller: bf16 / f16, H and F multiples of 16, 16-byte aligned data, the permutation present. */
/* from 28 slots per expert on average (224 tokens at top-2 of 16 experts). Jamba-v0.1 sizes, bf16 x, H200, us, ring /
 * wgmma kernel in the same runs (fp8_wgmma_cd4ca89.log, fp8_wgmma_66e7baa.log): 64 tokens 964 / 1399, 128: 1267 / 1367,
 * 1282 / 1383, 256: 1894 / 1391, 1925 / 1408, 512: 3495 / 1422 (crossover ~150 tokens: 20 until session 65). With the
 * ring's 4 m16 tiles a warp at NT 4 (dec_f8_mt4; s65_f8cross_0799188.log, graph-timed in turns): 96 tokens 1099 /
 * 1445, 128: 1014 / 1465, 160: 1139 / 1491, 192: 1212 / 1505, 256: 1629 / 1528, 320: 2069 / 1578 (crossover ~235) */
#define FP8_WGMMA_MIN_SLOTS_PER_EXPERT 28
/* the GEMM arguments both fp8 paths share: the permutation, the routing weights, E and TOPK (the rest zero) */
static moe_gemm_args fp8_perm_args(const jamba_moe_experts_fp8_params *p) {
    moe_gemm_args g;
    memset(&g, 0, sizeof g);
    g.offsets = (const int32_t *)p->expert_offsets.data;
    g.sorted = (const int32_t *)p->sorted_slots.data;
    g.weights = (const float *)p->weights.data;
    g.E = (int)p->w_down.shape[0], g.topk = (int)p->expert_ids.shape[1];
    return g;
}
template <typename T>
static jamba_status fp8_ring_launch(const jamba_moe_experts_fp8_params *p, int device, cudaStream_t stream) {
    const int64_t H = p->x.shape[1], K = p->expert_ids.shape[1], E = p->w_down.shape[0], F = p->w_down.shape[2];
    const int64_t slots = p->x.shape[0] * K;
    moe_gemm_args g = fp8_perm_args(p);
    const int dt = std::is_same<T, __half>::value ? JAMBA_F16 : JAMBA_BF16;
    /* the wgmma kernel from FP8_WGMMA_MIN_SLOTS_PER_EXPERT slots per expert on average, on Hopper; EXPERIMENT
     * (docs/SWITCHES.md): JAMBA_EXT_FP8_WGMMA=0 / 1 forces it off / on (on: where it can run) */
    bool wg = slots >= (int64_t)FP8_WGMMA_MIN_SLOTS_PER_EXPERT * E;
    const char *force = getenv("JAMBA_EXT_FP8_WGMMA");
    if (force != NULL && (force[0] == '0' || force[0] == '1')) wg = force[0] == '1';
    wg = wg && moe_wgmma_available(device) && moe_wgmma_coords_fit(E, 2 * F, slots) &&
         moe_wgmma_coords_fit(E, H, slots);
    if (wg) { /* x gathered into sorted order in slot_out (free until the down GEMM writes it) */
        JAMBA_TRY(moe_gather_rows(dt, p->slot_out.data, p->x.data, g.sorted, (int)K, slots, H, NULL, stream));
        g.A = p->slot_out.data;
    } else {
        g.A = p->x.data;
    }
    g.W = p->w_gate_up.data, g.C = p->act.data, g.wscale = (const float *)p->s_gate_up.data;
    g.Kd = H, g.N = F, g.w_rows = 2 * F, g.gate_up = 1;
    if (wg) JAMBA_TRY(moe_wgmma_gemm_f8(dt, g, slots, device, stream));
    else JAMBA_TRY((decode_launch<T, true>(g, slots, stream)));
    g.A = p->act.data, g.W = p->w_down.data, g.C = p->slot_out.data, g.wscale = (const float *)p->s_down.data;
    g.Kd = F, g.N = H, g.w_rows = H, g.gate_up = 0;
    if (wg) JAMBA_TRY(moe_wgmma_gemm_f8(dt, g, slots, device, stream));
    else JAMBA_TRY((decode_launch<T, true>(g, slots, stream)));
    return combine_rows<T>(p->out, p->slot_out, p->expert_ids, (int)E, device, stream);
}

/* moe_experts_fp8 with fp8 activations (W8A8; p->act8 given, csrc/jamba.h): x quantized per row into sorted order
 * (slot_out's first slots * H bytes, free until the down GEMM writes it; x_scale), the gate_up GEMM on the e4m3
 * tensor cores into act (T), act quantized per row (act8, act_scale), the down GEMM into slot_out, the combine.
 * Both GEMMs are the bf16 persistent kernel on e4m3 operands (moe_wgmma_gemm_q8; Hopper only). */
static jamba_status fp8_w8a8_launch(const jamba_moe_experts_fp8_params *p, int device, cudaStream_t stream) {
    const int64_t H = p->x.shape[1], K = p->expert_ids.shape[1], E = p->w_down.shape[0], F = p->w_down.shape[2];
    const int64_t slots = p->x.shape[0] * K;
    const int dt = p->x.dtype;
    if (!moe_wgmma_available(device))
        return jamba_set_error(JAMBA_ERR_UNSUPPORTED, "jamba.moe_experts_fp8: fp8 activations (act8) need a Hopper GPU "
                               "(sm_90) and a build with sm_90a code");
    int32_t *sched = (int32_t *)p->sched.data;
    uint8_t *x8 = (uint8_t *)p->slot_out.data;
    moe_gemm_args g = fp8_perm_args(p);
    JAMBA_TRY(moe_quant_rows_fp8(dt, x8, (float *)p->x_scale.data, p->x.data, g.sorted, (int)K, slots, H, sched,
                                 stream));
    g.A = x8, g.ascale = (const float *)p->x_scale.data;
    g.W = p->w_gate_up.data, g.C = p->act.data, g.wscale = (const float *)p->s_gate_up.data;
    g.Kd = H, g.N = F, g.w_rows = 2 * F, g.gate_up = 1, g.sched = sched;
    JAMBA_TRY(moe_wgmma_gemm_q8(dt, g, slots, device, stream));
    JAMBA_TRY(moe_quant_rows_fp8(dt, (uint8_t *)p->act8.data, (float *)p->act_scale.data, p->act.data, NULL, 1, slots,
                                 F, NULL, stream));
    g.A = p->act8.data, g.ascale = (const float *)p->act_scale.data;
    g.W = p->w_down.data, g.C = p->slot_out.data, g.wscale = (const float *)p->s_down.data;
    g.Kd = F, g.N = H, g.w_rows = H, g.gate_up = 0, g.sched = sched + 1;
    JAMBA_TRY(moe_wgmma_gemm_q8(dt, g, slots, device, stream));
    if (dt == JAMBA_F16) return combine_rows<__half>(p->out, p->slot_out, p->expert_ids, (int)E, device, stream);
    return combine_rows<__nv_bfloat16>(p->out, p->slot_out, p->expert_ids, (int)E, device, stream);
}

jamba_status moe_fp8_ring(const jamba_moe_experts_fp8_params *p, int device, cudaStream_t stream) {
    if (p->act8.data != NULL && (p->x.dtype == JAMBA_BF16 || p->x.dtype == JAMBA_F16))
        return fp8_w8a8_launch(p, device, stream);
    if (p->x.dtype == JAMBA_BF16) return fp8_ring_launch<__nv_bfloat16>(p, device, stream);
    if (p->x.dtype == JAMBA_F16) return fp8_ring_launch<__half>(p, device, stream);
    return jamba_set_error(JAMBA_ERR_UNSUPPORTED, "jamba.moe_experts_fp8: the ring kernels take bf16 / f16 x");
}
