/* moe_wgmma.cu -- the prefill expert GEMMs of jamba.moe_experts on Hopper tensor cores (wgmma fed by TMA).
 * jamba-build: sm90a   (setup.py compiles this file for compute_90a; the sm_80 build gets empty kernels
 *                       and moe_wgmma_available says no)
 *
 * Exports (C++, inside the library; moe.cuh): moe_gather_rows and moe_wgmma_gemm, which
 * jamba_moe_experts_cuda (csrc/cuda/moe.cu) runs for impl wgmma: x gathered into sorted order, then the gate_up
 * GEMM (act = SiLU(gate)*up in sorted row order) and the down GEMM (round(y) * round(w) to slot order).
 *
 * moe_gather_rows_kernel: xs[p, :] = x[sorted[p] / topk, :] for p < slots (x (T, H), xs (slots, H), both
 *   contiguous, H % 8 == 0, 16-byte aligned), one warp per row, 16-byte vectors: TMA cannot gather rows.
 * moe_wgmma_kernel: block = 128 sorted rows x 256 W rows, 64-deep k tiles, 256 threads = 2 warpgroups, each a
 *   wgmma.m64n256k16 chain over its 64 rows (fp32 accumulators, 128 per thread). Tiles arrive by TMA
 *   (cp.async.bulk.tensor 2-d, 128-byte swizzle, the K-major layout wg_desc describes: 8-row x 128-byte atoms,
 *   16-byte chunk c of row r at chunk c ^ (r & 7), atoms 1024 B apart) into a 4-stage ring (48 KB a stage)
 *   guarded by mbarriers: full[s] (one arrival carrying the stage's 48 KB of transactions) and empty[s] (one
 *   arrival per warp once its wgmma group reading the stage has finished). Thread 0 refills the stage of k tile
 *   kt - 1 with tile kt + 3 as soon as all 8 warps released it; one wgmma group stays in flight.
 *   A: (slots, Kd) rows in sorted order (gate_up: the gathered x; down: act); W: (E * w_rows, Kd) as two boxes
 *   of 128 rows (gate_up: the gate rows of 128 outputs and their up rows, so accumulator columns j and j + 128
 *   of a thread belong to one output and SiLU(gate)*up is formed in registers; down: 256 consecutive rows).
 *   Rows of a box past the expert (or past N) feed only outputs that the epilogue skips; boxes past a tensor's
 *   end are zero-filled. Grouped block order (moe_grouped_tile), non-persistent.
 * Requires Kd % 8 == 0, N % 8 == 0 and 16-byte aligned A, W (checked by the launcher in moe.cu); rows of the
 * TMA maps below 2^31.
 * Tile modes by size (wgmma_launch): up to MOE_WGMMA_TAIL_MAX_SLOTS_PER_EXPERT slots per expert on average
 * (few rows per expert: decode batches), each expert's last partial tile of <= 64 rows runs as a 64 x 512 tile
 * in a second launch (WT_FULL + WT_TAIL, below); above, every tile is 128 x 256 (WT_ALL).
 */
#include "moe.cuh"
#include "wgmma_ops.cuh"

#include <stdlib.h>
#include <string.h>
#include <cuda.h> /* CUtensorMap and its enums (types only: the encoder comes from the runtime's driver entry point) */

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900 && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define MOE_HAS_WGMMA 1
#else
#define MOE_HAS_WGMMA 0
#endif

#define WG_BM 128
#define WG_BN 256
#define WG_BK 64
#define WG_STAGES 4
#define WG_THREADS 256
#define WG_GROUP_M 8
#define WG_STAGE_ELEMS ((WG_BM + WG_BN) * WG_BK)

/* wgmma matrix descriptor of a K-major, 128-byte-swizzled tile at shared address saddr (1024-aligned):
 * start address >> 4 (bits 0-13), leading byte offset 1 (unused for swizzled K-major, bits 16-29),
 * stride byte offset 1024 >> 4 between 8-row atoms (bits 32-45), swizzle mode 1 = 128 B (bits 62-63).
 * Advancing k by 16 elements (32 bytes) inside the atom adds 2 to the start address field. */
__device__ __forceinline__ uint64_t wg_desc(uint32_t saddr) {
    return (uint64_t)((saddr & 0x3FFFF) >> 4) | ((uint64_t)1 << 16) | ((uint64_t)(1024 >> 4) << 32) |
           ((uint64_t)1 << 62);
}


/* Epilogue: the accumulators of warpgroup wgi (rows wgi*64.. of the block's 128) to C.
 * Accumulator i = 4*j + q of a thread: row (warp%4)*16 + lane/4 + (q>>1)*8 of its warpgroup's 64, column
 * 8*j + (lane%4)*2 + (q&1) of the 256. gate_up: act = SiLU(gate)*up with the fast exp / division
 * (moe_act_fast; measured 4-5% faster than expf / IEEE division at 2048-4096 tokens), columns j and j + 128 of one output,
 * rows in sorted order; down: round(y) * round(w) to the slot's row. */
template <typename T>
__device__ __forceinline__ void wg_epilogue(const moe_gemm_args &a, const float (&acc)[128], int64_t row0,
                                            int64_t row_end, int64_t n0, int wgi, int warp, int lane) {
    const int g = lane >> 2, tq = lane & 3;
    T *C = reinterpret_cast<T *>(a.C);
#pragma unroll
    for (int h = 0; h < 2; h++) {
        const int64_t p = row0 + wgi * 64 + (warp & 3) * 16 + g + h * 8;
        if (p >= row_end) continue;
        if (a.gate_up) {
#pragma unroll
            for (int j = 0; j < 16; j++) {
                const int64_t f = n0 + j * 8 + tq * 2;
                if (f >= a.N) continue;
                store2<T>(C + p * a.N + f, moe_act_fast<T>(acc[4 * j + 2 * h], acc[4 * (j + 16) + 2 * h]),
                          moe_act_fast<T>(acc[4 * j + 2 * h + 1], acc[4 * (j + 16) + 2 * h + 1]));
            }
        } else {
            const int64_t slot = a.sorted[p];
            const float w = a.weights[slot];
#pragma unroll
            for (int j = 0; j < 32; j++) {
                const int64_t col = n0 + j * 8 + tq * 2;
                if (col >= a.N) continue;
                store2<T>(C + slot * a.N + col, moe_scaled<T>(acc[4 * j + 2 * h], w),
                          moe_scaled<T>(acc[4 * j + 2 * h + 1], w));
            }
        }
    }
}

/* Tile modes (template parameter MODE of the kernel and its helpers):
 *   WT_ALL  128 A rows x 256 W rows over every row of every expert, 4 stages of 48 KB (the measured default);
 *   WT_FULL the same, except that an expert's last partial tile of <= 64 rows is left to WT_TAIL;
 *   WT_TAIL those tails: 64 A rows x 512 W rows, 3 stages of 72 KB; both warpgroups multiply the same 64 A rows,
 *           warpgroup wgi by W rows 256 wgi .. +255 (gate_up: the gate and up rows of outputs n0 + 128 wgi ..
 *           +127; down: 256 consecutive rows), so a tail keeps both warpgroups on useful rows.
 * Every output is computed at the same place of the same wgmma instruction in both tilings: the same bits
 * (test_moe_wgmma_tiles). Measured (H200, Jamba-v0.1, bf16, whole op; gpu_round_be9478c.log,
 * bench_moe_tiny_3b676ba.json, bench_moe_small_c8ecf91.json), ms, WT_ALL vs WT_FULL + WT_TAIL: 16 tokens
 * 1.70 vs 1.36, 32: 1.49 vs 1.30, 64: 1.38-1.50 vs 1.37, 128: 1.384 vs 1.388, 512: 1.462 vs 1.471, 1024: 2.05 vs
 * 2.44, 2048: 2.81 vs 2.96, 16384: 17.7 vs 20.2. With few rows per expert the tails are the whole work and a
 * 64-row tile reads the expert's W slice once per 64 rows instead of once per 128 rows half idle; with many,
 * the second launch streams every expert's weights through L2 again (5.6 GB at these sizes, ~1.3 ms at the
 * copy bandwidth), which the session-6 tile-count model (predicting a gain at 2048-4096 tokens) left out.
 * Env JAMBA_EXT_WGMMA_TILES=all|tail (read per call) forces one tiling (tests, benchmarks). */
#define MOE_WGMMA_TAIL_MAX_SLOTS_PER_EXPERT 16
#define WT_ALL 0
#define WT_FULL 1
#define WT_TAIL 2
#define WT_SWAP 3 /* moe_wgmma_swap_kernel (below): 128 W rows x up to 256 A rows, W as the wgmma's M side */
template <int MODE> struct wt_cfg {
    static constexpr int BM = MODE == WT_TAIL ? 64 : MODE == WT_SWAP ? 256 : WG_BM; /* A rows of a tile */
    static constexpr int WR = MODE == WT_TAIL ? 2 * WG_BN : MODE == WT_SWAP ? 128 : WG_BN; /* W rows of a tile */
    static constexpr int STAGES = MODE == WT_TAIL ? 3 : WG_STAGES;
    static constexpr int STAGE_BYTES = (BM + WR) * WG_BK * 2;
    static constexpr int SMEM = STAGE_BYTES * STAGES + 1024 + 2 * STAGES * 8; /* + alignment room, barriers */
};

template <typename T>
__global__ void __launch_bounds__(256) moe_gather_rows_kernel(T *xs, const T *x, const int32_t *sorted, int topk,
                                                               int64_t slots, int64_t H) {
    jamba_pdl_begin();
    const int64_t p = (int64_t)blockIdx.x * 8 + (threadIdx.x >> 5);
    if (p >= slots) return;
    const uint4 *src = reinterpret_cast<const uint4 *>(x + (int64_t)(sorted[p] / topk) * H);
    uint4 *dst = reinterpret_cast<uint4 *>(xs + p * H);
    for (int64_t v = threadIdx.x & 31; v < H / 8; v += 32) dst[v] = src[v];
}

__device__ __forceinline__ void mbar_init(uint32_t bar, uint32_t count) {
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count) : "memory");
}
__device__ __forceinline__ void mbar_arrive(uint32_t bar) {
    asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(bar) : "memory");
}
__device__ __forceinline__ void mbar_expect_tx(uint32_t bar, uint32_t bytes) {
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar), "r"(bytes) : "memory");
}
/* wait until the phase with parity `parity` of the barrier has completed */
__device__ __forceinline__ void mbar_wait(uint32_t bar, uint32_t parity) {
    uint32_t done = 0;
    while (!done)
        asm volatile("{\n.reg .pred p;\nmbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\nselp.u32 %0, 1, 0, p;\n}\n"
                     : "=r"(done) : "r"(bar), "r"(parity) : "memory");
}
/* 2-d TMA load of the box at (c0 = k, c1 = row) into dst, completing on bar */
__device__ __forceinline__ void tma_load_2d(uint32_t dst, const CUtensorMap *map, int c0, int c1, uint32_t bar) {
    asm volatile("cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3}], [%4];\n"
                 ::"r"(dst), "l"(reinterpret_cast<uint64_t>(map)), "r"(c0), "r"(c1), "r"(bar) : "memory");
}

/* TMA loads of k tile kt of an output tile (A rows from arow, W rows from wrow) into the stage at sa,
 * completing on full-barrier fb (which expects the stage's bytes): A BM x 64, then per 256 W rows q two 128-row
 * boxes (gate_up: the gate rows of outputs 128 q .. +127 and their up rows, N rows further; down: 256
 * consecutive rows) */
template <int MODE>
__device__ __forceinline__ void wt_issue(const moe_gemm_args &a, const CUtensorMap *tmA, const CUtensorMap *tmW,
                                         uint32_t sa, uint32_t fb, int kt, int arow, int wrow) {
    using C = wt_cfg<MODE>;
    const uint32_t sb = sa + C::BM * WG_BK * 2;
    mbar_expect_tx(fb, C::STAGE_BYTES);
    tma_load_2d(sa, tmA, kt * WG_BK, arow, fb);
#pragma unroll
    for (int q = 0; q < C::WR / WG_BN; q++) {
        const uint32_t sq = sb + (uint32_t)(q * WG_BN * WG_BK * 2);
        const int w0 = wrow + (a.gate_up ? q * (WG_BN / 2) : q * WG_BN);
        tma_load_2d(sq, tmW, kt * WG_BK, w0, fb);
        tma_load_2d(sq + (WG_BN / 2) * WG_BK * 2, tmW, kt * WG_BK, w0 + (a.gate_up ? (int)a.N : WG_BN / 2), fb);
    }
}

/* The ring's shared memory (1024-aligned stages, then full[WG_STAGES] and empty[WG_STAGES]) and its barriers:
 * full[s] completes on one arrival plus the stage's transactions, empty[s] on one arrival per warp. */
struct wt_ring {
    uint32_t base, full, empty;
};
template <int MODE> __device__ __forceinline__ wt_ring wt_ring_at(const unsigned char *smem) {
    wt_ring r;
    r.base = (smem_u32(smem) + 1023u) & ~1023u;
    r.full = r.base + wt_cfg<MODE>::STAGE_BYTES * wt_cfg<MODE>::STAGES;
    r.empty = r.full + wt_cfg<MODE>::STAGES * 8;
    return r;
}
template <int S> __device__ __forceinline__ void wt_ring_init(const wt_ring &r) { /* thread 0, then a sync */
    for (int st = 0; st < S; st++) {
        mbar_init(r.full + 8 * st, 1);
        mbar_init(r.empty + 8 * st, WG_THREADS / 32);
    }
    asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
}
/* The k loop of both kernels: thread 0 initialises the ring and fills its S stages; then for every k tile each
 * warp waits for the tile's stage, runs mma(stage address) (one wgmma group; afterwards at most that group is in
 * flight, so the previous k tile's group has finished) and releases the previous k tile's stage, which thread 0
 * refills with k tile kt - 1 + S once all 8 warps have released it. */
template <int S, typename Issue, typename Mma>
__device__ __forceinline__ void wt_kloop(const wt_ring &ring, uint32_t stage_bytes, int KT, int tid, int lane,
                                         Issue &&issue, Mma &&mma) {
    if (tid == 0) wt_ring_init<S>(ring);
    __syncthreads();
    if (tid == 0)
        for (int kt = 0; kt < S && kt < KT; kt++) issue(kt);
    for (int kt = 0; kt < KT; kt++) {
        const int st = kt % S;
        mbar_wait(ring.full + 8 * st, (uint32_t)((kt / S) & 1));
        __syncwarp(); /* the wgmma instructions are .sync.aligned: the warp converged */
        mma(ring.base + (uint32_t)st * stage_bytes);
        if (kt > 0) { /* release the stage of k tile kt - 1 */
            const int ps = (kt - 1) % S;
            __syncwarp();
            if (lane == 0) mbar_arrive(ring.empty + 8 * ps);
            if (tid == 0 && kt - 1 + S < KT) {
                mbar_wait(ring.empty + 8 * ps, (uint32_t)(((kt - 1) / S) & 1));
                issue(kt - 1 + S);
            }
            __syncwarp();
        }
    }
}
/* One k tile of warpgroup wgi from the stage at sa: the 4 wgmmas as one group, then wait until at most this
 * group is in flight (the previous one, and the stage it read, is done). A rows 64 wgi .. and all 256 W rows;
 * WT_TAIL: all 64 A rows and W rows 256 wgi .. */
template <typename T, int MODE>
__device__ __forceinline__ void wt_mma_ktile(float (&acc)[128], uint32_t sa, int wgi) {
    constexpr bool TAIL = MODE == WT_TAIL;
    const uint64_t da = wg_desc(sa + (TAIL ? 0u : (uint32_t)(wgi * 64 * WG_BK * 2)));
    const uint64_t db = wg_desc(sa + wt_cfg<MODE>::BM * WG_BK * 2 + (TAIL ? (uint32_t)(wgi * WG_BN * WG_BK * 2) : 0u));
#pragma unroll
    for (int i = 0; i < 128; i++) asm volatile("" : "+f"(acc[i])::"memory");
    asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
#pragma unroll
    for (int ks = 0; ks < WG_BK / 16; ks++) wgmma_m64k16<T, 256>(acc, da + 2 * ks, db + 2 * ks);
    asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
    asm volatile("wgmma.wait_group.sync.aligned 1;\n" ::: "memory");
#pragma unroll
    for (int i = 0; i < 128; i++) asm volatile("" : "+f"(acc[i])::"memory");
}

/* The tile (expert e, rows row0 .. row_end - 1 of which the tile covers BM from row0) of tile row mt in MODE;
 * false when mt names no tile (the grid has spare tile rows: their blocks exit) */
template <int MODE>
__device__ __forceinline__ bool wt_find_tile(const moe_gemm_args &a, int64_t mt, int *e_out, int64_t *row0,
                                             int64_t *row_end) {
    if constexpr (MODE == WT_ALL) {
        return moe_find_tile(a.offsets, a.E, mt, WG_BM, e_out, row0, row_end);
    } else if constexpr (MODE == WT_TAIL) { /* tile row mt = expert mt's tail of 1 .. 64 rows, if it has one */
        if (mt >= a.E) return false;
        const int64_t lo = a.offsets[mt], hi = a.offsets[mt + 1], rem = (hi - lo) % WG_BM;
        if (rem == 0 || rem > 64) return false;
        *e_out = (int)mt, *row0 = hi - rem, *row_end = hi;
        return true;
    } else { /* WT_FULL: 128-row tiles, a last partial one only if it has > 64 rows */
        for (int e = 0; e < a.E; e++) {
            const int64_t lo = a.offsets[e], hi = a.offsets[e + 1];
            const int64_t nt = (hi - lo) / WG_BM + ((hi - lo) % WG_BM > 64 ? 1 : 0);
            if (mt < nt) {
                *e_out = e, *row0 = lo + mt * WG_BM, *row_end = hi;
                return true;
            }
            mt -= nt;
        }
        return false;
    }
}

template <typename T, int MODE>
__global__ void __launch_bounds__(WG_THREADS, 1)
    moe_wgmma_kernel(const __grid_constant__ CUtensorMap tmA, const __grid_constant__ CUtensorMap tmW,
                     moe_gemm_args a, int64_t m_tiles, int64_t n_tiles) {
    jamba_pdl_begin();
#if MOE_HAS_WGMMA
    using C = wt_cfg<MODE>;
    constexpr int S = C::STAGES;
    extern __shared__ __align__(1024) unsigned char wg_smem_raw[];
    const wt_ring ring = wt_ring_at<MODE>(wg_smem_raw);
    const uint32_t base = ring.base, full = ring.full;
    int64_t mt, nt;
    moe_grouped_tile(blockIdx.x, m_tiles, n_tiles, WG_GROUP_M, &mt, &nt);
    int e;
    int64_t row0, row_end;
    if (!wt_find_tile<MODE>(a, mt, &e, &row0, &row_end)) return;
    const int64_t n0 = nt * (a.gate_up ? C::WR / 2 : C::WR);
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
    const int KT = (int)((a.Kd + WG_BK - 1) / WG_BK);
    const int wrow = (int)((int64_t)e * a.w_rows + n0); /* < 2^31: checked by the launcher */
    const int arow = (int)row0;
    /* WT_TAIL: both warpgroups hold the tile's 64 rows, warpgroup wgi the outputs of W rows 256 wgi ..; set here,
     * before the main loop (computed in the epilogue call, ptxas serialised the wgmmas: warning C7515) */
    [[maybe_unused]] const int64_t n_tail = n0 + (warp >> 2) * (a.gate_up ? WG_BN / 2 : WG_BN);

    auto issue = [&](int kt) { /* thread 0: tile kt into its stage */
        wt_issue<MODE>(a, &tmA, &tmW, base + (uint32_t)((kt % S) * C::STAGE_BYTES), full + 8 * (kt % S), kt, arow,
                       wrow);
    };
    float acc[128];
#pragma unroll
    for (int i = 0; i < 128; i++) acc[i] = 0.f;
    const int wgi = warp >> 2;
    wt_kloop<S>(ring, C::STAGE_BYTES, KT, tid, lane, issue, [&](uint32_t sa) { wt_mma_ktile<T, MODE>(acc, sa, wgi); });
    asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory");
#pragma unroll
    for (int i = 0; i < 128; i++) asm volatile("" : "+f"(acc[i])::"memory");
    if constexpr (MODE == WT_TAIL)
        wg_epilogue<T>(a, acc, row0, row_end, n_tail, 0, warp, lane);
    else
        wg_epilogue<T>(a, acc, row0, row_end, n0, wgi, warp, lane);
#endif
}

/* ---- swap-AB tiling (WT_SWAP) ------------------------------------------------------------------------------
 * moe_wgmma_swap_kernel<T>: the same two GEMMs with the operands' roles swapped, so that an expert's last rows
 * need not fill a 128-row tile: W rows are the wgmma's M side (64 per warpgroup) and the expert's A rows (tokens)
 * its N side. EXPERIMENT (env JAMBA_EXT_WGMMA_TILES=swap, read per call; written without a GPU).
 *   Chunks: expert e's c rows run as c / 256 chunks of 256 rows and one of c % 256 rows, which multiplies at the
 *     power-of-two width w >= its rows (8 .. 256): 270 rows = 256 + 14 (w 16), where the 128-row tiles take
 *     three tiles, the last holding 14 rows. Each chunk streams the W slice of its tile once (like an m-tile of
 *     moe_wgmma_kernel), so a short chunk saves tensor time and A traffic, not the W pass.
 *   Tile = (chunk, 128 W rows): gate_up: the gate rows of outputs o0 .. o0 + 63 and their up rows (N further),
 *     64 outputs; down: W rows o0 .. o0 + 127, 128 outputs. Per k step each warpgroup issues one m64nWk16 on
 *     acc[0 .. w/2 - 1] (one predicated instruction per width, so no branch: ptxas serialises the wgmmas of a
 *     function that issues them under branches, or on overlapping accumulator slices with different first
 *     registers; it still puts a warpgroup.arrive before each, C7519); accumulator group j covers rows 8j ..
 *   Stage (48 KB, 4 stages): W rows 0 .. 127 (two 64-row TMA boxes: gate_up the gate box, then the up box;
 *     down two consecutive boxes) at 0, then the chunk's first w rows (64-row boxes, or 8-row boxes below 64)
 *     at 16 KB, all K-major, 128-byte swizzle (wg_desc). Ring, barriers and refills: wt_kloop.
 *   Epilogue: the accumulators rounded to T into a [row][W row] staging buffer (WS_SO elements per row; the ring's
 *     memory, after every wgmma has finished), then 16-byte pieces of output rows: gate_up act[p0 + t, o0 ..] =
 *     SiLU(gate) * up from the staged gate and up values (moe_act_fast rounds both to T first, so staging them as
 *     T changes nothing); down slot_out[sorted[p0 + t], o0 ..] = round(y) * round(w) (moe_scaled).
 *   The summation inside a wgmma differs from the 128 x 256 tiles' (outputs sit at other places of other
 *   instructions), so the result can differ from theirs in the last bit; it is checked against the fp32
 *   reference (test_moe_wgmma_tiles). Grid: grouped order (moe_grouped_tile) over ceil(slots / 256) + E chunk
 *   rows x ceil(N / outputs per tile) tiles; blocks without a chunk exit. Shapes: A (slots, Kd) rows in sorted
 *   order, W (E * w_rows, Kd), C as moe_gemm_args says; Kd % 8 == 0, N % 8 == 0, 16-byte aligned A, W and C. */
#define WS_NT 256              /* A rows of a chunk at most */
#define WS_WR 128              /* W rows of a tile */
#define WS_SO (WS_WR + 8)      /* staging row stride in elements (272 bytes: 16-byte rows, no bank conflicts) */

/* chunk row mt -> expert e, first row p0, rows n (1 .. 256) and wgmma width w (the power of two >= n, >= 8) in
 * sorted order; false when mt names no chunk. Expert e's c rows: c / 256 chunks of 256, then one of c % 256 */
__device__ __forceinline__ bool ws_find_chunk(const moe_gemm_args &a, int64_t mt, int *e_out, int64_t *p0, int *n,
                                              int *w) {
    for (int e = 0; e < a.E; e++) {
        const int64_t lo = a.offsets[e], hi = a.offsets[e + 1];
        const int64_t nch = (hi - lo + WS_NT - 1) / WS_NT;
        if (mt < nch) {
            *e_out = e, *p0 = lo + mt * WS_NT;
            const int64_t left = hi - *p0;
            *n = (int)(left < WS_NT ? left : WS_NT);
            int ww = 8;
            while (ww < *n) ww *= 2;
            *w = ww;
            return true;
        }
        mt -= nch;
    }
    return false;
}

/* one k tile of warpgroup wgi: W rows 64 wgi .. (A side) times the chunk's first w rows (B side, w a power of two,
 * 8 .. 256), one wgmma group. One predicated instruction per width, all on acc[0 ..]: ptxas serialises the wgmmas
 * of a function that issues them under branches or on overlapping accumulator slices that start apart */
template <typename T>
__device__ __forceinline__ void ws_mma_ktile(float (&acc)[128], uint32_t sa, int wgi, int w) {
    const uint64_t da = wg_desc(sa + (uint32_t)(wgi * 64 * WG_BK * 2));
    const uint64_t db = wg_desc(sa + WS_WR * WG_BK * 2);
#pragma unroll
    for (int i = 0; i < 128; i++) asm volatile("" : "+f"(acc[i])::"memory");
    asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
#pragma unroll
    for (int ks = 0; ks < WG_BK / 16; ks++) {
        const uint64_t a_ = da + 2 * ks, b_ = db + 2 * ks;
        wgmma_m64k16<T, 256>(acc, a_, b_); /* every chunk at width 256: columns past w read stale rows, unused */
    }
    asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
    asm volatile("wgmma.wait_group.sync.aligned 1;\n" ::: "memory");
#pragma unroll
    for (int i = 0; i < 128; i++) asm volatile("" : "+f"(acc[i])::"memory");
}

template <typename T>
__global__ void __launch_bounds__(WG_THREADS, 1)
    moe_wgmma_swap_kernel(const __grid_constant__ CUtensorMap tmA, const __grid_constant__ CUtensorMap tmA8,
                          const __grid_constant__ CUtensorMap tmW, moe_gemm_args a, int64_t m_tiles, int64_t n_tiles) {
    jamba_pdl_begin();
#if MOE_HAS_WGMMA
    using C = wt_cfg<WT_SWAP>;
    extern __shared__ __align__(1024) unsigned char ws_smem_raw[];
    const wt_ring ring = wt_ring_at<WT_SWAP>(ws_smem_raw);
    int64_t mt, nt, p0;
    moe_grouped_tile(blockIdx.x, m_tiles, n_tiles, WG_GROUP_M, &mt, &nt);
    int e, n, w;
    if (!ws_find_chunk(a, mt, &e, &p0, &n, &w)) return;
    const int64_t o0 = nt * (a.gate_up ? WS_WR / 2 : WS_WR); /* first output of the tile */
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, wgi = warp >> 2;
    const int KT = (int)((a.Kd + WG_BK - 1) / WG_BK);
    const int wrow = (int)((int64_t)e * a.w_rows + o0), wrow2 = wrow + (a.gate_up ? (int)a.N : WS_WR / 2);
    const int arow = (int)p0;
    /* the chunk's rows: w / 64 boxes of 64 rows, or w / 8 boxes of 8 rows below 64 */
    const CUtensorMap *tm_rows = w >= 64 ? &tmA : &tmA8;
    const int box = w >= 64 ? 64 : 8;
    const uint32_t tx = (uint32_t)(WS_WR + w) * WG_BK * 2;
    auto issue = [&](int kt) { /* thread 0: k tile kt into its stage */
        const uint32_t sa = ring.base + (uint32_t)((kt % C::STAGES) * C::STAGE_BYTES), fb = ring.full + 8 * (kt % C::STAGES);
        mbar_expect_tx(fb, tx);
        tma_load_2d(sa, &tmW, kt * WG_BK, wrow, fb);
        tma_load_2d(sa + 64 * WG_BK * 2, &tmW, kt * WG_BK, wrow2, fb);
        for (int r = 0; r < w; r += box) tma_load_2d(sa + (WS_WR + r) * WG_BK * 2, tm_rows, kt * WG_BK, arow + r, fb);
    };
    float acc[128];
#pragma unroll
    for (int i = 0; i < 128; i++) acc[i] = 0.f;
    wt_kloop<C::STAGES>(ring, C::STAGE_BYTES, KT, tid, lane, issue,
                        [&](uint32_t sa) { ws_mma_ktile<T>(acc, sa, wgi, w); });
    asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory");
#pragma unroll
    for (int i = 0; i < 128; i++) asm volatile("" : "+f"(acc[i])::"memory");
    __syncthreads(); /* every wgmma has read its stages: the ring becomes the staging buffer */
    T *stg = reinterpret_cast<T *>(ws_smem_raw + (ring.base - smem_u32(ws_smem_raw)));
    {
        const int wr = wgi * 64 + (warp & 3) * 16 + (lane >> 2), tq = lane & 3;
#pragma unroll
        for (int j = 0; j < 32; j++) {
            if (8 * j >= w) break;
#pragma unroll
            for (int q = 0; q < 4; q++)
                stg[(8 * j + 2 * tq + (q & 1)) * WS_SO + wr + 8 * (q >> 1)] = jamba_st<T>(acc[4 * j + q]);
        }
    }
    __syncthreads();
    typedef jamba_w16<T> P;
    T *Cp = reinterpret_cast<T *>(a.C);
    if (a.gate_up) { /* row t: 64 outputs, 8 pieces of 8 */
        for (int i = tid; i < n * 8; i += WG_THREADS) {
            const int t = i >> 3, q = i & 7;
            const int64_t f = o0 + 8 * q;
            if (f >= a.N) continue;
            float gv[8], uv[8], o[8];
            P::ld(*reinterpret_cast<const uint4 *>(stg + t * WS_SO + 8 * q), gv);
            P::ld(*reinterpret_cast<const uint4 *>(stg + t * WS_SO + WS_WR / 2 + 8 * q), uv);
#pragma unroll
            for (int k = 0; k < 8; k++) o[k] = moe_act_fast<T>(gv[k], uv[k]);
            *reinterpret_cast<uint4 *>(Cp + (p0 + t) * a.N + f) = P::st(o);
        }
    } else { /* row t: 128 outputs, 16 pieces of 8, to the slot's row */
        for (int i = tid; i < n * 16; i += WG_THREADS) {
            const int t = i >> 4, q = i & 15;
            const int64_t f = o0 + 8 * q;
            if (f >= a.N) continue;
            const int64_t slot = a.sorted[p0 + t];
            const float w = a.weights[slot];
            float y[8];
            P::ld(*reinterpret_cast<const uint4 *>(stg + t * WS_SO + 8 * q), y);
#pragma unroll
            for (int k = 0; k < 8; k++) y[k] = moe_scaled<T>(y[k], w);
            *reinterpret_cast<uint4 *>(Cp + slot * a.N + f) = P::st(y);
        }
    }
#endif
}

typedef CUresult (*wt_encode_fn)(CUtensorMap *, CUtensorMapDataType, cuuint32_t, void *, const cuuint64_t *,
                                 const cuuint64_t *, const cuuint32_t *, const cuuint32_t *, CUtensorMapInterleave,
                                 CUtensorMapSwizzle, CUtensorMapL2promotion, CUtensorMapFloatOOBfill);

/* cuTensorMapEncodeTiled through the runtime (no link against libcuda), looked up once */
static wt_encode_fn wt_encoder(void) {
    static wt_encode_fn fn = NULL;
    static int tried = 0;
    if (!tried) {
        tried = 1;
        void *f = NULL;
        cudaDriverEntryPointQueryResult q;
#if CUDART_VERSION >= 12050
        const cudaError_t r = cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &f, 12000, cudaEnableDefault, &q);
#else /* CUDA 12.0 - 12.4 toolkits: the unversioned lookup (deprecated from 12.5 on) */
        const cudaError_t r = cudaGetDriverEntryPoint("cuTensorMapEncodeTiled", &f, cudaEnableDefault, &q);
#endif
        if (r == cudaSuccess && q == cudaDriverEntryPointSuccess)
            fn = (wt_encode_fn)f;
        else
            cudaGetLastError();
    }
    return fn;
}

int moe_wgmma_available(int dev) {
    static int avail[64]; /* 0 unknown, 1 usable, -1 not */
    int st = (dev >= 0 && dev < 64) ? avail[dev] : 0;
    if (st == 0) {
        int major = 0;
        cudaFuncAttributes fa;
        const bool ok = cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) == cudaSuccess &&
                        cudaFuncGetAttributes(&fa, moe_wgmma_kernel<__nv_bfloat16, WT_ALL>) == cudaSuccess;
        if (!ok) cudaGetLastError(); /* clear, the caller falls back to another engine */
        /* and the driver has the tensor-map encoder (TMA); else impl auto takes the mma.sync engine */
        st = (ok && major == 9 && fa.binaryVersion >= 90 && wt_encoder() != NULL) ? 1 : -1;
        if (dev >= 0 && dev < 64) avail[dev] = st;
    }
    return st > 0;
}

/* a (rows, cols) row-major 2-byte tensor, boxes of 64 columns x box_rows rows, 128-byte swizzle */
static jamba_status wt_map(CUtensorMap *m, int dtype, const void *ptr, int64_t rows, int64_t cols, int box_rows) {
    wt_encode_fn enc = wt_encoder();
    if (!enc) return jamba_set_error(JAMBA_ERR_UNSUPPORTED, "jamba.moe_experts: impl wgmma: cuTensorMapEncodeTiled "
                                     "is not available from this driver");
    const cuuint64_t dims[2] = {(cuuint64_t)cols, (cuuint64_t)rows}, strides[1] = {(cuuint64_t)cols * 2};
    const cuuint32_t box[2] = {WG_BK, (cuuint32_t)box_rows}, es[2] = {1, 1};
    const CUresult r = enc(m, dtype == JAMBA_F16 ? CU_TENSOR_MAP_DATA_TYPE_FLOAT16 : CU_TENSOR_MAP_DATA_TYPE_BFLOAT16,
                           2, const_cast<void *>(ptr), dims, strides, box, es, CU_TENSOR_MAP_INTERLEAVE_NONE,
                           CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
                           CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
    if (r != CUDA_SUCCESS)
        return jamba_set_error(JAMBA_ERR_CUDA, "jamba.moe_experts: cuTensorMapEncodeTiled failed (%d) for a (%lld, %lld) "
                               "tensor", (int)r, (long long)rows, (long long)cols);
    return JAMBA_OK;
}

/* one launch of moe_wgmma_kernel<T, MODE>: tile rows (m_tiles) enough for every tile of the mode */
template <typename T, int MODE>
static jamba_status wgmma_launch_mode(int dtype, const moe_gemm_args &a, int64_t slots, int dev,
                                      const CUtensorMap &tmW, cudaStream_t stream) {
    using C = wt_cfg<MODE>;
    static int smem_set[64]; /* dynamic shared-memory limit raised on this device */
    if (dev < 0 || dev >= 64 || !smem_set[dev]) {
        JAMBA_CUDA_CHECK(cudaFuncSetAttribute(moe_wgmma_kernel<T, MODE>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                              C::SMEM));
        if (dev >= 0 && dev < 64) smem_set[dev] = 1;
    }
    CUtensorMap tmA;
    JAMBA_TRY(wt_map(&tmA, dtype, a.A, slots, a.Kd, C::BM));
    /* tile rows: WT_ALL at most ceil(slots / 128) + E (one partial tile per expert); WT_TAIL one per expert;
     * WT_FULL at most slots / 65 too (each of its tiles holds > 64 rows of one expert): at decode sizes the
     * bound of WT_ALL left ~1900 blocks that only found no tile (33 us at 64 tokens, gpu_round_185aadc.log) */
    int64_t m_tiles = MODE == WT_TAIL ? a.E : jamba_ceil_div(slots, WG_BM) + a.E;
    if (MODE == WT_FULL && slots / 65 < m_tiles) m_tiles = slots / 65;
    if (m_tiles == 0) return JAMBA_OK;
    const int64_t n_tiles = jamba_ceil_div(a.N, a.gate_up ? C::WR / 2 : C::WR);
    jamba_kernel_launch(moe_wgmma_kernel<T, MODE>, (unsigned)(m_tiles * n_tiles), WG_THREADS, C::SMEM, stream, tmA,
        tmW, a, m_tiles, n_tiles);
    JAMBA_LAUNCH_CHECK("moe_wgmma_kernel", stream);
    return JAMBA_OK;
}

/* one launch of moe_wgmma_swap_kernel<T> (WT_SWAP) */
template <typename T>
static jamba_status wgmma_launch_swap(int dtype, const moe_gemm_args &a, int64_t slots, int dev, cudaStream_t stream) {
    using C = wt_cfg<WT_SWAP>;
    static int smem_set[64];
    if (dev < 0 || dev >= 64 || !smem_set[dev]) {
        JAMBA_CUDA_CHECK(cudaFuncSetAttribute(moe_wgmma_swap_kernel<T>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                              C::SMEM));
        if (dev >= 0 && dev < 64) smem_set[dev] = 1;
    }
    CUtensorMap tmA, tmA8, tmW;
    JAMBA_TRY(wt_map(&tmA, dtype, a.A, slots, a.Kd, 64));
    JAMBA_TRY(wt_map(&tmA8, dtype, a.A, slots, a.Kd, 8));
    JAMBA_TRY(wt_map(&tmW, dtype, a.W, (int64_t)a.E * a.w_rows, a.Kd, 64));
    const int64_t m_tiles = jamba_ceil_div(slots, WS_NT) + a.E; /* sum over experts of ceil(c / 256) at most */
    const int64_t n_tiles = jamba_ceil_div(a.N, a.gate_up ? WS_WR / 2 : WS_WR);
    jamba_kernel_launch(moe_wgmma_swap_kernel<T>, (unsigned)(m_tiles * n_tiles), WG_THREADS, C::SMEM, stream, tmA,
        tmA8, tmW, a, m_tiles, n_tiles);
    JAMBA_LAUNCH_CHECK("moe_wgmma_swap_kernel", stream);
    return JAMBA_OK;
}

template <typename T>
static jamba_status wgmma_launch(int dtype, const moe_gemm_args &a, int64_t slots, int dev, cudaStream_t stream) {
    if (!moe_wgmma_available(dev))
        return jamba_set_error(JAMBA_ERR_UNSUPPORTED, "jamba.moe_experts: impl wgmma needs a Hopper GPU (sm_90), "
                               "a build with sm_90a code (JAMBA_EXT_ARCHS containing 90) and a driver with "
                               "cuTensorMapEncodeTiled (CUDA 12+)");
    if ((int64_t)a.E * a.w_rows + 2 * WG_BN > INT32_MAX || slots + WS_NT > INT32_MAX)
        return jamba_set_error(JAMBA_ERR_ARG, "jamba.moe_experts: impl wgmma: E * rows of W and the token slots "
                               "must stay below 2^31 (TMA coordinates); use impl mma");
    CUtensorMap tmW;
    JAMBA_TRY(wt_map(&tmW, dtype, a.W, (int64_t)a.E * a.w_rows, a.Kd, WG_BN / 2));
    /* tile modes by size (see WT_TAIL): the tiles without the <= 64-row tails, then the tails as 64 x 512 tiles
     * (a second launch; disjoint outputs) while the average expert has at most 16 slots */
    const char *force = getenv("JAMBA_EXT_WGMMA_TILES");
    bool tails = slots <= (int64_t)MOE_WGMMA_TAIL_MAX_SLOTS_PER_EXPERT * a.E;
    if (force != NULL && !strcmp(force, "all")) tails = false;
    if (force != NULL && !strcmp(force, "tail")) tails = true;
    if (force != NULL && !strcmp(force, "swap")) return wgmma_launch_swap<T>(dtype, a, slots, dev, stream);
    if (tails) {
        JAMBA_TRY((wgmma_launch_mode<T, WT_FULL>(dtype, a, slots, dev, tmW, stream)));
        return wgmma_launch_mode<T, WT_TAIL>(dtype, a, slots, dev, tmW, stream);
    }
    return wgmma_launch_mode<T, WT_ALL>(dtype, a, slots, dev, tmW, stream);
}

jamba_status moe_gather_rows(int dtype, void *xs, const void *x, const int32_t *sorted, int topk, int64_t slots,
                             int64_t H, cudaStream_t stream) {
    if (slots == 0 || H == 0) return JAMBA_OK;
    if (dtype == JAMBA_BF16)
        jamba_kernel_launch(moe_gather_rows_kernel<__nv_bfloat16>, (unsigned)jamba_ceil_div(slots, 8), 256, 0, stream,
            (__nv_bfloat16 *)xs, (const __nv_bfloat16 *)x, sorted, topk, slots, H);
    else
        jamba_kernel_launch(moe_gather_rows_kernel<__half>, (unsigned)jamba_ceil_div(slots, 8), 256, 0, stream,
            (__half *)xs, (const __half *)x, sorted, topk, slots, H);
    JAMBA_LAUNCH_CHECK("moe_gather_rows_kernel", stream);
    return JAMBA_OK;
}

jamba_status moe_wgmma_gemm(int dtype, const moe_gemm_args &a, int64_t slots, int device, cudaStream_t stream) {
    if (slots == 0) return JAMBA_OK;
    if (dtype == JAMBA_BF16) return wgmma_launch<__nv_bfloat16>(dtype, a, slots, device, stream);
    if (dtype == JAMBA_F16) return wgmma_launch<__half>(dtype, a, slots, device, stream);
    return jamba_set_error(JAMBA_ERR_UNSUPPORTED, "jamba.moe_experts: impl wgmma needs bf16/f16");
}
