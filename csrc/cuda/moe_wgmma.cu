/* moe_wgmma.cu -- the prefill expert GEMMs of jamba.moe_experts on Hopper tensor cores (wgmma fed by TMA).
 * jamba-build: sm90a   (setup.py compiles this file for compute_90a; the sm_80 build gets empty kernels
 *                       and moe_wgmma_available says no)
 *
 * Exports (C++, inside the library; moe.cuh): moe_gather_rows and moe_wgmma_gemm, which
 * jamba_moe_experts_cuda (csrc/cuda/moe.cu) runs for impl wgmma: x gathered into sorted order, then the gate_up
 * GEMM (act = SiLU(gate)*up in sorted row order) and the down GEMM (round(y) * round(w) to slot order).
 *
 * moe_wgmma_gemm_f8 runs the same GEMMs on e4m3 weight bytes for moe_experts_fp8 (moe.cu's fp8 entry, from 20 slots
 * per expert on Hopper): moe_wgmma_f8ws_kernel, below.
 * moe_wgmma_gemm_q8 runs them with both operands e4m3 (moe_experts_fp8 with fp8 activations, W8A8): the persistent
 * kernel's Q8 instances (e4m3 wgmma, the A and W row scales on the fp32 sums; see wgmma_launch_persist).
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
 *   A: (slots, Kd) rows in sorted order (gate_up: the gathered x; down: act); W: (E * w_rows, Kd) in two 16 KB
 *   boxes a stage (gate_up: per 64 outputs one 3-d box, their 64 gate rows then their 64 up rows, so accumulator
 *   columns j and j + 64 of a thread belong to one output and SiLU(gate)*up is formed in registers; down: 128
 *   consecutive rows per box).
 *   Rows of a box past the expert (or past N) feed only outputs that the epilogue skips; boxes past a tensor's
 *   end are zero-filled. Block order: expert-major (wt_expert_tile) for WT_ALL, grouped (moe_grouped_tile) for the
 *   tail modes; non-persistent.
 * moe_wgmma_persist_kernel: the WT_ALL tiles of moe_wgmma_kernel (same bits), persistent, with a producer warp
 *   (Q8 = true: A (slots, Kd) and W e4m3 bytes, seen as Kd / 2 byte pairs, a.ascale (slots,) and a.wscale (E, w_rows)
 *   their row scales; C as for bf16)
 *   and tiles handed out through a counter in the op's workspace (see the kernel); the default for WT_ALL when
 *   the caller passes that workspace (jamba_moe_experts_params.sched) and env JAMBA_EXT_WGMMA_PERSIST is not 0.
 *   From 384 slots per expert it runs an expert's last <= 64 rows as a 64 x 256 half tile (wp_tile; same bits);
 *   from 128 to 192 slots per expert it merges them into the expert's previous tile instead (wp_tile with NA = 192,
 *   in an instance with 384 threads, setmaxnreg and 56 KB stages; same bits).
 *   In gate_up, two epilogue warps finish half of each tile's outputs from shared memory while the consumers run
 *   the next tile (wp_epi; same bits; env JAMBA_EXT_MOE_EPI=0: without them).
 * Requires Kd % 8 == 0, N % 8 == 0 and 16-byte aligned A, W (checked by the launcher in moe.cu); rows of the
 * TMA maps below 2^31.
 * Tile modes by size (wgmma_launch): up to MOE_WGMMA_TAIL_MAX_SLOTS_PER_EXPERT slots per expert on average
 * (few rows per expert: decode batches), each expert's last partial tile of <= 64 rows runs as a 64 x 512 tile
 * in a second launch (WT_FULL + WT_TAIL, below); above, every tile is 128 x 256 (WT_ALL, persistent by default);
 * from MOE_SWAP_MIN to below MOE_SWAP_MAX_SLOTS_PER_EXPERT (176-303 on average: 1408-2431 tokens at E 16, top-2;
 * bf16) both GEMMs run on moe_swap_kernel instead (session 54: W rows on the wgmma's M side, an expert's rows on N in
 * chunks of 32; see its comment and moe_swap_on), and from 368 to 607 (2944-4863 tokens) the down GEMM (session 67).
 */
#include "moe.cuh"
#include "gemv.cuh" /* jamba_e4m3x2_to16 (the fp8 kernel) */

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
#define WG_WBOX 64 /* outputs per gate_up W box (their gate and up rows); a down W box holds 2 * WG_WBOX rows */

/* wgmma matrix descriptor of a K-major, 128-byte-swizzled tile at shared address saddr (1024-aligned):
 * start address >> 4 (bits 0-13), leading byte offset 1 (unused for swizzled K-major, bits 16-29),
 * stride byte offset 1024 >> 4 between 8-row atoms (bits 32-45), swizzle mode 1 = 128 B (bits 62-63).
 * Advancing k by 16 elements (32 bytes) inside the atom adds 2 to the start address field. */
__device__ __forceinline__ uint64_t wg_desc(uint32_t saddr) {
    return (uint64_t)((saddr & 0x3FFFF) >> 4) | ((uint64_t)1 << 16) | ((uint64_t)(1024 >> 4) << 32) |
           ((uint64_t)1 << 62);
}

/* wgmma_k16<T>(acc, da, db): one wgmma.m64nNk16 with fp32 accumulators, A and B K-major from shared memory;
 * N = 256 with float[128] accumulators (a warpgroup's 64 x 256 block), N = 128 with float[64] (the half tiles of
 * the persistent kernel). */
template <typename T> __device__ __forceinline__ void wgmma_k16(float (&d)[128], uint64_t da, uint64_t db);
template <typename T> __device__ __forceinline__ void wgmma_k16(float (&d)[64], uint64_t da, uint64_t db);
#if MOE_HAS_WGMMA
#define WG_K16_N256(TY) "{\n.reg .pred p;\nsetp.ne.b32 p, %130, 0;\n" "wgmma.mma_async.sync.aligned.m64n256k16.f32." TY "." TY " {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63, %64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79, %80, %81, %82, %83, %84, %85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95, %96, %97, %98, %99, %100, %101, %102, %103, %104, %105, %106, %107, %108, %109, %110, %111, %112, %113, %114, %115, %116, %117, %118, %119, %120, %121, %122, %123, %124, %125, %126, %127}, %128, %129, p, 1, 1, 0, 0;\n}\n"
#define WG_K16_N128(TY) "{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n" "wgmma.mma_async.sync.aligned.m64n128k16.f32." TY "." TY " {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, %64, %65, p, 1, 1, 0, 0;\n}\n"
#define WG_ACC128 "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63]), "+f"(d[64]), "+f"(d[65]), "+f"(d[66]), "+f"(d[67]), "+f"(d[68]), "+f"(d[69]), "+f"(d[70]), "+f"(d[71]), "+f"(d[72]), "+f"(d[73]), "+f"(d[74]), "+f"(d[75]), "+f"(d[76]), "+f"(d[77]), "+f"(d[78]), "+f"(d[79]), "+f"(d[80]), "+f"(d[81]), "+f"(d[82]), "+f"(d[83]), "+f"(d[84]), "+f"(d[85]), "+f"(d[86]), "+f"(d[87]), "+f"(d[88]), "+f"(d[89]), "+f"(d[90]), "+f"(d[91]), "+f"(d[92]), "+f"(d[93]), "+f"(d[94]), "+f"(d[95]), "+f"(d[96]), "+f"(d[97]), "+f"(d[98]), "+f"(d[99]), "+f"(d[100]), "+f"(d[101]), "+f"(d[102]), "+f"(d[103]), "+f"(d[104]), "+f"(d[105]), "+f"(d[106]), "+f"(d[107]), "+f"(d[108]), "+f"(d[109]), "+f"(d[110]), "+f"(d[111]), "+f"(d[112]), "+f"(d[113]), "+f"(d[114]), "+f"(d[115]), "+f"(d[116]), "+f"(d[117]), "+f"(d[118]), "+f"(d[119]), "+f"(d[120]), "+f"(d[121]), "+f"(d[122]), "+f"(d[123]), "+f"(d[124]), "+f"(d[125]), "+f"(d[126]), "+f"(d[127])
#define WG_ACC64 "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
#define WG_DEF_K16(TT, TY)                                                                                        \
    template <> __device__ __forceinline__ void wgmma_k16<TT>(float (&d)[128], uint64_t da, uint64_t db) {        \
        asm volatile(WG_K16_N256(TY) : WG_ACC128 : "l"(da), "l"(db), "r"(1));                                    \
    }                                                                                                            \
    template <> __device__ __forceinline__ void wgmma_k16<TT>(float (&d)[64], uint64_t da, uint64_t db) {         \
        asm volatile(WG_K16_N128(TY) : WG_ACC64 : "l"(da), "l"(db), "r"(1));                                     \
    }
WG_DEF_K16(__nv_bfloat16, "bf16")
WG_DEF_K16(__half, "f16")
#endif
/* The operand tag of the W8A8 GEMM (moe_wgmma_gemm_q8): A and W e4m3 bytes. Its "k16" step is one
 * wgmma.m64nNk32.f32.e4m3.e4m3: 32 bytes of k, the same bytes and descriptor step as a bf16 k16 step, so the ring,
 * the TMA boxes (128 bytes of k a row) and the descriptors of the bf16 kernel carry over unchanged; the fp8 forms
 * take no transpose immediates (K-major operands only). */
struct moe_e4m3_op {};
#if MOE_HAS_WGMMA
template <> __device__ __forceinline__ void wgmma_k16<moe_e4m3_op>(float (&d)[128], uint64_t da, uint64_t db) {
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %130, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n256k32.f32.e4m3.e4m3 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63, %64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79, %80, %81, %82, %83, %84, %85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95, %96, %97, %98, %99, %100, %101, %102, %103, %104, %105, %106, %107, %108, %109, %110, %111, %112, %113, %114, %115, %116, %117, %118, %119, %120, %121, %122, %123, %124, %125, %126, %127}, %128, %129, p, 1, 1;\n}\n"
                 : WG_ACC128 : "l"(da), "l"(db), "r"(1));
}
template <> __device__ __forceinline__ void wgmma_k16<moe_e4m3_op>(float (&d)[64], uint64_t da, uint64_t db) {
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n128k32.f32.e4m3.e4m3 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, %64, %65, p, 1, 1;\n}\n"
                 : WG_ACC64 : "l"(da), "l"(db), "r"(1));
}
#endif

/* Epilogue: a warpgroup's accumulators (NJ * 8 columns: W rows cb .. cb + 8 NJ - 1 of the tile's W stage, cb a
 * multiple of 128; rows prow .. prow + 63 in sorted order) to C.
 * Accumulator i = 4*j + q of a thread: row prow + (warp%4)*16 + lane/4 + (q>>1)*8, column 8*j + (lane%4)*2 + (q&1).
 * W stage layout (wt_issue): gate_up, per 64 outputs p, the gate rows of outputs n0 + 64p .. +63 then their up
 * rows, so the gate column of output n0 + cb/2 + 64(j/16) + 8(j%8) + .. sits in accumulator block j (j%16 < 8)
 * and its up column in block j + 8, in the same thread: act = SiLU(gate)*up with the fast exp
 * / division (moe_act_fast; measured 4-5% faster than expf / IEEE division at 2048-4096 tokens), rows in sorted
 * order; down: column n0 + cb + 8j + .., round(y) * round(w) to the slot's row. SC (fp8 weights:
 * moe_wgmma_f8ws_kernel, and the persistent kernel's W8A8 instances): sc = the expert's W row scales, multiplied into
 * the fp32 sums first. */
template <typename T, int NJ, bool SC = false>
__device__ __forceinline__ void wg_epilogue(const moe_gemm_args &a, const float (&acc)[4 * NJ], int64_t prow,
                                            int64_t row_end, int64_t n0, int cb, int warp, int lane,
                                            const float *sc = nullptr) {
    const int g = lane >> 2, tq = lane & 3;
    T *C = reinterpret_cast<T *>(a.C);
#pragma unroll
    for (int h = 0; h < 2; h++) {
        const int64_t p = prow + (warp & 3) * 16 + g + h * 8;
        if (p >= row_end) continue;
        if (a.gate_up) {
#pragma unroll
            for (int j = 0; j < NJ; j++) {
                if (j & 8) continue; /* up columns: read with their gate columns */
                const int64_t f = n0 + cb / 2 + 64 * (j >> 4) + 8 * (j & 7) + tq * 2;
                if (f >= a.N) continue;
                float g0 = acc[4 * j + 2 * h], g1 = acc[4 * j + 2 * h + 1];
                float u0 = acc[4 * (j + 8) + 2 * h], u1 = acc[4 * (j + 8) + 2 * h + 1];
                if constexpr (SC) { /* SC (fp8 weights): the W rows' scales (gate rows f, up rows N + f) on the sums */
                    g0 *= sc[f], g1 *= sc[f + 1], u0 *= sc[a.N + f], u1 *= sc[a.N + f + 1];
                }
                *reinterpret_cast<uint32_t *>(C + p * a.N + f) =
                    a.epi_f2f ? moe_pack2<T>(moe_act_fast<T>(g0, u0), moe_act_fast<T>(g1, u1))
                              : moe_act_fast2<T>(g0, g1, u0, u1);
            }
        } else {
            const int64_t slot = a.sorted[p];
            const float w = jamba_round<T>(a.weights[slot]); /* (moe_scaled rounds it again: the same value) */
#pragma unroll
            for (int j = 0; j < NJ; j++) {
                const int64_t col = n0 + cb + j * 8 + tq * 2;
                if (col >= a.N) continue;
                float y0 = acc[4 * j + 2 * h], y1 = acc[4 * j + 2 * h + 1];
                if constexpr (SC) y0 *= sc[col], y1 *= sc[col + 1];
                *reinterpret_cast<uint32_t *>(C + slot * a.N + col) =
                    a.epi_f2f ? moe_pack2<T>(moe_scaled<T>(y0, w), moe_scaled<T>(y1, w)) : moe_scaled2<T>(y0, y1, w, w);
            }
        }
    }
}

/* W8A8 (moe_wgmma_gemm_q8): a warpgroup's fp32 sums of e4m3 products times the scale of their A row (a.ascale, per
 * sorted row; rows as wg_epilogue, from prow; rows past row_end get 0, their outputs are skipped), in place; the W row
 * scales follow in the epilogues (SC), where each sum is used once (all 64 of a thread's W scales loaded here, with
 * the 128 sums live, spilled at the kernel's 168 registers). */
template <int NA>
__device__ __forceinline__ void wq_row_scale(const moe_gemm_args &a, float (&acc)[NA], int64_t prow, int64_t row_end,
                                             int warp, int lane) {
    float rs[2];
#pragma unroll
    for (int h = 0; h < 2; h++) {
        const int64_t p = prow + (warp & 3) * 16 + (lane >> 2) + h * 8;
        rs[h] = p < row_end ? a.ascale[p] : 0.f;
    }
#pragma unroll
    for (int i = 0; i < NA; i++) acc[i] *= rs[(i >> 1) & 1];
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
#define WT_MG 3 /* the ring of the persistent kernel with merged tiles: WT_ALL's stage + 64 tail A rows */
template <int MODE> struct wt_cfg {
    static constexpr int BM = MODE == WT_TAIL ? 64 : WG_BM;         /* A rows of a tile */
    static constexpr int WR = MODE == WT_TAIL ? 2 * WG_BN : WG_BN;  /* W rows of a tile */
    static constexpr int STAGES = MODE == WT_TAIL ? 3 : WG_STAGES;
    static constexpr int STAGE_BYTES = (BM + WR + (MODE == WT_MG ? 64 : 0)) * WG_BK * 2;
    static constexpr int SMEM = STAGE_BYTES * STAGES + 1024 + 2 * STAGES * 8; /* + alignment room, barriers */
};

template <typename T>
__global__ void __launch_bounds__(256) moe_gather_rows_kernel(T *xs, const T *x, const int32_t *sorted, int topk,
                                                               int64_t slots, int64_t H, int32_t *sched) {
    jamba_pdl_begin();
    if (sched != NULL && blockIdx.x == 0 && threadIdx.x < 2) sched[threadIdx.x] = 0; /* the GEMMs' tile counters */
    const int64_t p = (int64_t)blockIdx.x * 8 + (threadIdx.x >> 5);
    if (p >= slots) return;
    const uint4 *src = reinterpret_cast<const uint4 *>(x + (int64_t)(sorted[p] / topk) * H);
    uint4 *dst = reinterpret_cast<uint4 *>(xs + p * H);
    const int64_t nv = H / 8;
    int64_t v = threadIdx.x & 31;
    for (; v + 96 < nv; v += 128) { /* four loads in flight per lane (one at a time: 34 us for 67 MB at 4096 tokens) */
        const uint4 a0 = src[v], a1 = src[v + 32], a2 = src[v + 64], a3 = src[v + 96];
        dst[v] = a0, dst[v + 32] = a1, dst[v + 64] = a2, dst[v + 96] = a3;
    }
    for (; v < nv; v += 32) dst[v] = src[v];
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
/* 3-d TMA load of the box at (c0 = k, c1 = row, 0) into dst (the W map of gate_up: see wt_map) */
__device__ __forceinline__ void tma_load_3d(uint32_t dst, const CUtensorMap *map, int c0, int c1, uint32_t bar) {
    asm volatile("cp.async.bulk.tensor.3d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3, %4}], [%5];\n"
                 ::"r"(dst), "l"(reinterpret_cast<uint64_t>(map)), "r"(c0), "r"(c1), "r"(0), "r"(bar) : "memory");
}

/* TMA loads of k tile kt of an output tile (A rows from arow, W rows from wrow) into the stage at sa,
 * completing on full-barrier fb (which expects the bytes): A BM x 64 (half: a half tile of the persistent
 * kernel, 64 rows through a tmA with 64-row boxes; the stage's A rows 64 .. 127 are not written), then the W
 * rows in 16 KB boxes: gate_up, a 3-d box per 64 outputs (wt_map with pair = F): their 64 gate rows, then their
 * 64 up rows, so that a gate row and its up row sit 64 columns apart in any 128-column half of the stage
 * (wg_epilogue; the half tiles need it); down, 128 consecutive rows per box. */
template <int MODE>
__device__ __forceinline__ void wt_issue(const moe_gemm_args &a, const CUtensorMap *tmA, const CUtensorMap *tmW,
                                         uint32_t sa, uint32_t fb, int kt, int arow, int wrow, bool half = false,
                                         const CUtensorMap *tmT = nullptr, int trow = 0) {
    using C = wt_cfg<MODE>;
    const uint32_t sb = sa + C::BM * WG_BK * 2;
    mbar_expect_tx(fb, (C::BM + C::WR) * WG_BK * 2 - (half ? 64 * WG_BK * 2 : 0) + (tmT ? 64 * WG_BK * 2 : 0));
    tma_load_2d(sa, tmA, kt * WG_BK, arow, fb);
    if (tmT) tma_load_2d(sb + C::WR * WG_BK * 2, tmT, kt * WG_BK, trow, fb); /* WT_MG: a merged tile's 64 tail rows */
#pragma unroll
    for (int bi = 0; bi < C::WR / (2 * WG_WBOX); bi++) {
        const uint32_t dst = sb + (uint32_t)(bi * 2 * WG_WBOX * WG_BK * 2);
        if (a.gate_up) tma_load_3d(dst, tmW, kt * WG_BK, wrow + WG_WBOX * bi, fb);
        else tma_load_2d(dst, tmW, kt * WG_BK, wrow + 2 * WG_WBOX * bi, fb);
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
template <int MODE> __device__ __forceinline__ void wt_ring_init(const wt_ring &r) { /* thread 0, then a sync */
    for (int st = 0; st < wt_cfg<MODE>::STAGES; st++) {
        mbar_init(r.full + 8 * st, 1);
        mbar_init(r.empty + 8 * st, WG_THREADS / 32);
    }
    asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
}
/* A wgmma accumulator chain of a k tile: acc (float[128]: N = 256; float[64]: N = 128) += A (64 rows at shared
 * address sa) times W (N rows at sb) */
template <int NA> struct wg_chain {
    float (&acc)[NA];
    uint32_t sa, sb;
};
template <int NA> __device__ __forceinline__ void wg_pin(float (&acc)[NA]) { /* the accumulators stay in registers */
#pragma unroll
    for (int i = 0; i < NA; i++) asm volatile("" : "+f"(acc[i])::"memory");
}
/* One k tile of a warpgroup: per chain (one, or two in a merged tile: wp_tile) the 4 wgmmas (k16 steps), all as
 * one group, then wait until at most this group is in flight (the previous one, and the stage it read, is done). */
template <typename T, int... NA> __device__ __forceinline__ void wg_ktile(wg_chain<NA>... c) {
    (wg_pin(c.acc), ...);
    asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
    auto issue = [](auto &ch) {
        const uint64_t da = wg_desc(ch.sa), db = wg_desc(ch.sb);
#pragma unroll
        for (int ks = 0; ks < WG_BK / 16; ks++) wgmma_k16<T>(ch.acc, da + 2 * ks, db + 2 * ks);
    };
    (issue(c), ...);
    asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
    asm volatile("wgmma.wait_group.sync.aligned 1;\n" ::: "memory");
    (wg_pin(c.acc), ...);
}
/* One k tile of warpgroup wgi from the stage at sa in mode MODE: A rows 64 wgi .. and all 256 W rows; WT_TAIL:
 * all 64 A rows and W rows 256 wgi .. */
template <typename T, int MODE>
__device__ __forceinline__ void wt_mma_ktile(float (&acc)[128], uint32_t sa, int wgi) {
    constexpr bool TAIL = MODE == WT_TAIL;
    wg_ktile<T>(wg_chain<128>{acc, sa + (TAIL ? 0u : (uint32_t)(wgi * 64 * WG_BK * 2)),
                              sa + wt_cfg<MODE>::BM * WG_BK * 2 + (TAIL ? (uint32_t)(wgi * WG_BN * WG_BK * 2) : 0u)});
}

/* WT_ALL block order: block pid -> expert e, whose ceil(c / 128) m-tiles x n_tiles blocks are consecutive,
 * n-tile-major: all m-tiles of one expert visit an n-tile (one W slab) together, and no group of concurrently
 * running blocks splits an expert's m-tiles. Measured against the grouped order (8 m-tiles per group, groups cut
 * across experts; moe_order_938b141.log, same bits, timed in turns, ms): 512 tokens 1.419 vs 1.450, 1024: 1.965
 * vs 2.019, 2048: 2.866 vs 2.885, 4096: 5.176 vs 5.172, 8192: 9.694 vs 9.724, 16384: 19.00 vs 19.29. False past
 * the last tile. */
struct wt_cursor { /* expert e's tiles start at block pid `first`; moves only forward */
    int e;
    int64_t first;
};
template <bool MG = false>
__device__ __forceinline__ bool wt_cursor_find(const moe_gemm_args &a, wt_cursor &c, int64_t pid, int64_t n_tiles,
                                               int *e_out, int64_t *row0, int64_t *row_end, int64_t *nt) {
    for (; c.e < a.E; c.e++) {
        const int64_t lo = a.offsets[c.e], hi = a.offsets[c.e + 1];
        int64_t mte = (hi - lo + WG_BM - 1) / WG_BM;
        /* MG: a last partial tile of <= 64 rows joins the tile before it (rows row0 .. row0 + 128 + 64) */
        if (MG && hi - lo > WG_BM && (hi - lo) % WG_BM != 0 && (hi - lo) % WG_BM <= 64) mte--;
        const int64_t nb = mte * n_tiles, q = pid - c.first;
        if (q < nb) {
            *e_out = c.e, *row0 = lo + (q % mte) * WG_BM, *row_end = hi, *nt = q / mte;
            return true;
        }
        c.first += nb;
    }
    return false;
}
__device__ __forceinline__ bool wt_expert_tile(const moe_gemm_args &a, int64_t pid, int64_t n_tiles, int *e_out,
                                               int64_t *row0, int64_t *row_end, int64_t *nt) {
    wt_cursor c = {0, 0};
    return wt_cursor_find(a, c, pid, n_tiles, e_out, row0, row_end, nt);
}

/* The tile (expert e, rows row0 .. row_end - 1 of which the tile covers BM from row0) of tile row mt in WT_FULL /
 * WT_TAIL (WT_ALL: wt_expert_tile);
 * false when mt names no tile (the grid has spare tile rows: their blocks exit) */
template <int MODE>
__device__ __forceinline__ bool wt_find_tile(const moe_gemm_args &a, int64_t mt, int *e_out, int64_t *row0,
                                             int64_t *row_end) {
    if constexpr (MODE == WT_TAIL) { /* tile row mt = expert mt's tail of 1 .. 64 rows, if it has one */
        if (mt >= a.E) return false;
        const int64_t lo = a.offsets[mt], hi = a.offsets[mt + 1], rem = (hi - lo) % WG_BM;
        if (rem == 0 || rem > 64) return false;
        *e_out = (int)mt, *row0 = hi - rem, *row_end = hi;
        return true;
    } else { /* WT_FULL: 128-row tiles, a last partial one only if it has > 64 rows */
        return moe_find_tile(a.offsets, a.E, mt, WG_BM, 64, e_out, row0, row_end);
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
    const uint32_t base = ring.base, full = ring.full, empty = ring.empty;
    int64_t mt, nt;
    int e;
    int64_t row0, row_end;
    if constexpr (MODE == WT_ALL) {
        if (!wt_expert_tile(a, blockIdx.x, n_tiles, &e, &row0, &row_end, &nt)) return;
    } else {
        moe_grouped_tile(blockIdx.x, m_tiles, n_tiles, WG_GROUP_M, &mt, &nt);
        if (!wt_find_tile<MODE>(a, mt, &e, &row0, &row_end)) return;
    }
    const int64_t n0 = nt * (a.gate_up ? C::WR / 2 : C::WR);
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
    const int KT = (int)((a.Kd + WG_BK - 1) / WG_BK);
    const int wrow = (int)((int64_t)e * a.w_rows + n0); /* < 2^31: checked by the launcher */
    const int arow = (int)row0;
    /* WT_TAIL: both warpgroups hold the tile's 64 rows, warpgroup wgi the outputs of W rows 256 wgi ..; set here,
     * before the main loop (computed in the epilogue call, ptxas serialised the wgmmas: warning C7515) */
    [[maybe_unused]] const int cb_tail = (warp >> 2) * WG_BN;

    auto issue = [&](int kt) { /* thread 0: tile kt into its stage */
        wt_issue<MODE>(a, &tmA, &tmW, base + (uint32_t)((kt % S) * C::STAGE_BYTES), full + 8 * (kt % S), kt, arow,
                       wrow);
    };
    if (tid == 0) wt_ring_init<MODE>(ring);
    __syncthreads();
    if (tid == 0)
        for (int kt = 0; kt < S && kt < KT; kt++) issue(kt);

    float acc[128];
#pragma unroll
    for (int i = 0; i < 128; i++) acc[i] = 0.f;
    const int wgi = warp >> 2;
    /* stage release after k tile kt's wgmma group kt - 1 finished */
    auto release = [&](int kt) {
        if (kt > 0) {
            const int ps = (kt - 1) % S;
            __syncwarp();
            if (lane == 0) mbar_arrive(empty + 8 * ps);
            if (tid == 0 && kt - 1 + S < KT) {
                mbar_wait(empty + 8 * ps, (uint32_t)(((kt - 1) / S) & 1));
                issue(kt - 1 + S);
            }
            __syncwarp();
        }
    };
    for (int kt = 0; kt < KT; kt++) {
        const int st = kt % S;
        mbar_wait(full + 8 * st, (uint32_t)((kt / S) & 1));
        __syncwarp(); /* the wgmma instructions below are .sync.aligned: the warp converged */
        wt_mma_ktile<T, MODE>(acc, base + (uint32_t)(st * C::STAGE_BYTES), wgi); /* group kt - 1 has finished */
        release(kt);
    }
    asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory");
#pragma unroll
    for (int i = 0; i < 128; i++) asm volatile("" : "+f"(acc[i])::"memory");
    if constexpr (MODE == WT_TAIL)
        wg_epilogue<T, 32>(a, acc, row0, row_end, n0, cb_tail, warp, lane);
    else
        wg_epilogue<T, 32>(a, acc, row0 + wgi * 64, row_end, n0, 0, warp, lane);
#endif
}

/* moe_wgmma_persist_kernel<T> (the WT_ALL default when the op passes its sched workspace; env
 * JAMBA_EXT_WGMMA_PERSIST=0 runs moe_wgmma_kernel<T, WT_ALL> instead): the same tiles, order, wgmma chains and
 * epilogue as moe_wgmma_kernel<T, WT_ALL> (so the same bits), made persistent with a producer warp (and, by size,
 * an expert's last <= 64 rows as a half tile: wp_tile, a.half_tiles; same bits too). Measured in
 * turns against it (gpu_round_516869e.log, H200, Jamba-v0.1, whole op, ms): 512 / 1024 / 2048 / 4096 tokens
 * 1.395 / 1.932 / 2.627 / 4.468 vs 1.412 / 1.950 / 2.643 / 4.537; 16384 tokens 18.30 vs 18.64
 * (moe_persist_5ef0e64.log). Grid = min(SMs, tile bound). 352 threads (288 with EO = false, 384 with MG): warps 0-7
 * the two consumer warpgroups, warp 8 (lane 0) the producer, warps 9-10 the epilogue warps (wp_epi; gate_up only,
 * they exit in down). The producer keeps the 4-stage ring full across tile boundaries: while the consumers run a
 * tile's epilogue the next tile's first stages are already landing (the non-persistent kernel starts every tile
 * with an empty ring, and its thread 0 doubles as producer, waiting for all 8 warps before each refill).
 * Tiles are handed out dynamically, in expert-major order: CTA b starts with tile b, then takes tile
 * grid + atomicAdd(a.sched, 1) (a counter in the op's workspace, zeroed by moe_gather_rows_kernel) when it starts
 * loading the next one, so consecutive tiles (an expert's m-tiles on one W slab) start at about the same time, as
 * the non-persistent launch's block dispatch does. A static assignment (tiles b, b + grid, ...; ba28626,
 * moe_persist_ba28626.log) lost 9-11% at 1024-2048 tokens: CTAs drift apart over ~35 tiles and an expert's
 * m-tiles then stream its W slab at different times (L2 misses).
 * The producer writes the tile id (-1: none left) into slot[s] of the stage s that receives the tile's first k
 * tile before loading it; each consumer warp's lane 0 reads it after full[s] completed (the arrive releases the
 * write) and passes it on by a shuffle: lane 0 is the thread whose empty[s] arrival orders the read before the
 * producer's next write (racecheck reported the other lanes' reads).
 * Ring: load q goes to stage q % 4; before load q >= 4 the producer waits for phase q / 4 - 1 of empty[s] (one
 * arrival per consumer warp after the wgmma group reading the stage finished). */
/* One output tile of the persistent kernel's consumers, k tiles it .. it + KT - 1 of the ring: NA = 128, a full
 * tile (warpgroup wgi: A rows 64 wgi .. +63 times all 256 W rows, m64n256 chains); NA = 64, a half tile (an
 * expert's last <= 64 rows: both warpgroups on A rows 0 .. 63, warpgroup wgi on W rows 128 wgi .. +127, m64n128
 * chains), half the tensor-core time of a full tile for 40 of its 48 KB of loads. Same bits as a full tile
 * (test_moe_wgmma_tiles). Measured on the H200 (Jamba-v0.1, bf16, whole op, three alternating processes against
 * the build without them, ab_half_5b40e6e.log; that machine ran ~10% slower than the one of gpu_round_516869e),
 * ms, half tiles vs none: 4096 tokens 4.71-4.79 vs 4.86-4.95, 2048: 2.93-2.97 vs 2.86-2.96, 1024: 1.69-1.71 vs
 * 1.66 (at <= 1024 tokens the weights' bandwidth binds and a half tile, done early, lets its CTA run ahead of
 * the expert's other m-tiles, which then miss the W slab in L2). So they run from
 * MOE_WGMMA_HALF_MIN_SLOTS_PER_EXPERT slots per expert on average (3 tile rows). */
#define MOE_WGMMA_HALF_MIN_SLOTS_PER_EXPERT 384
/* In the down GEMM only from 1024 slots per expert (8192 tokens at Jamba-v0.1's top-2 of 16): down's half tile runs
 * ahead of its expert's other m-tiles through 224 k tiles (gate_up: 64), and they may then miss the W slab in L2
 * (session 60, Nsight Compute at 4096 tokens: without down's half tiles its DRAM throughput fell from 45 to 30% of
 * peak). bench_moe, whole op, us, half tiles in both GEMMs / in gate_up only, four runs on two machines
 * (s60_halfg_d45668e.log, s66_halfg_cd9b6bf.log): 3072 tokens 3768 / 3688, 3770 / 3714, 3852 / 3745, 3774 / 3744;
 * 3584 4350 / 4299, 4385 / 4296; 4096 4781 / 4764, 4770 / 4773, 4925 / 4919, 4799 / 4864; 5120 6145 / 6022, 5991 /
 * 5888; 6144 7019 / 6863, 6924 / 6869, 7067 / 7068, 6999 / 7055; 8192 9184 / 9196, 8937 / 9289; 16384 17794 / 18195,
 * 18148 / 18287. */
#define MOE_WGMMA_HALF_DOWN_MIN_SLOTS_PER_EXPERT 1024
/* the tile rows row0 .. row_end - 1 run as a half tile (the producer and the consumers must agree) */
__device__ __forceinline__ bool wp_is_half(const moe_gemm_args &a, int64_t row0, int64_t row_end) {
    return a.half_tiles && row_end - row0 <= 64;
}
#define WP_EO_WARPS 2 /* epilogue warps of the EO kernel (warps 9, 10) */
/* Epilogue warps (wp_tile / moe_wgmma_persist_kernel with EO = true, the default; env JAMBA_EXT_MOE_EPI=0 runs
 * EO = false): in gate_up, the outputs of each tile's second W box (n0 + 64 .. n0 + 127) leave the consumers as
 * their rounded (gate, up) pairs (one packed 32-bit word per output, T bits: gate low, up high) in a 32 KB staging
 * buffer after the ring, and two epilogue warps form SiLU(gate)*up from them and store them while the consumers
 * run the next tile's wgmmas; the consumers finish the first box themselves. Same values (moe_act_fast rounds gate
 * and up to T first; test_moe_wgmma_tiles). Why: the gate_up epilogue (SiLU and the roundings of 128 x 128
 * outputs) kept the tensor pipe idle for ~10% of the consumers' time, both warpgroups at once (Nsight Compute,
 * ncu_moe_src_*_96585ab.*). Measured in turns against EO = false (H200, Jamba-v0.1, bf16, whole op, ms, three
 * calls, two runs each: moe_epiw_55c24d9.log, moe_epiw2_29dfb3c.log, moe_epiw3_e9e04b4.log): 4096 tokens
 * 4.835 / 4.888, 4.779 / 4.887, 4.844 / 4.972, 4.846 / 5.049, 4.788 / 4.884, 4.724 / 4.806; 16384: 18.08 / 18.31,
 * 18.18 / 17.95, 18.17 / 18.75, 18.30 / 18.58, 17.79 / 18.12, 17.74 / 18.14; 2048: 2.666 / 2.641, 2.686 / 2.676,
 * 2.739 / 2.794, 2.731 / 2.822, 2.631 / 2.667, 2.643 / 2.680. Handing both boxes over lost 1-5% in both forms
 * tried (a 64 KB staging buffer with a 3-stage ring; the first box in the ring stage of the tile's last k tile,
 * released by the epilogue warps once read: the ring was a stage short while they drained it); deferring the
 * consumers' own box-0 epilogue into the next tile's first k tiles (pairs kept in registers, 384 threads with
 * setmaxnreg; 9a5983c, moe_defer*_9a5983c.log) was within +-1% over five runs.
 * Staged box: [128 tile rows][32 8-byte chunks] (chunk c = the box's outputs 2c, 2c + 1), chunk c of row r stored
 * at c ^ 4 (r & 3) (the consumers' 8-byte stores and the epilogue warps' 16-byte loads without bank conflicts);
 * meta = {row0, row_end, n0, rows} of the staged tile (row_end < 0: no more tiles). Barriers: sfull (one arrival
 * per consumer thread after its writes), sempty (one per epilogue-warp thread after its reads). */
struct wp_epi {
    uint32_t stage, sfull, sempty;
    volatile int64_t *meta;
};
/* accumulator blocks JB .. JB + 15 (one W box: gate blocks JB .. JB + 7, up blocks JB + 8 ..) of the warpgroup's
 * 64 rows as a staged box at dst, rows rbase + .. */
template <typename T, int NA, int JB, bool SC = false>
__device__ __forceinline__ void wp_put_box(uint32_t dst, const float (&acc)[NA], int rbase, int warp, int lane,
                                           const float *sc = nullptr, int64_t f0 = 0, int64_t N = 0) {
    const int g = lane >> 2, tq = lane & 3;
#pragma unroll
    for (int h = 0; h < 2; h++) {
        const int r = rbase + (warp & 3) * 16 + g + h * 8;
#pragma unroll
        for (int jj = 0; jj < 8; jj++) {
            const int j = JB + jj;
            float s[4] = {1.f, 1.f, 1.f, 1.f}; /* SC (W8A8): the W row scales of gate f, f + 1 and up f, f + 1 */
            if constexpr (SC) {
                const int64_t f = f0 + 8 * jj + 2 * tq; /* outputs past N: any finite value (their stores are skipped) */
                if (f < N) s[0] = sc[f], s[1] = sc[f + 1], s[2] = sc[N + f], s[3] = sc[N + f + 1];
            }
            const uint32_t w0 = moe_pack2<T>(acc[4 * j + 2 * h] * s[0], acc[4 * (j + 8) + 2 * h] * s[2]);
            const uint32_t w1 = moe_pack2<T>(acc[4 * j + 2 * h + 1] * s[1], acc[4 * (j + 8) + 2 * h + 1] * s[3]);
            const uint32_t c = (uint32_t)((4 * jj + tq) ^ ((r & 3) << 2));
            asm volatile("st.shared.v2.b32 [%0], {%1, %2};\n" ::"r"(dst + (uint32_t)r * 256u + c * 8u), "r"(w0),
                         "r"(w1) : "memory");
        }
    }
}
/* the consumers' hand-over of a staged tile (after their box writes): meta (thread 0), then one sfull arrival each */
__device__ __forceinline__ void wp_post(const wp_epi &ep, uint32_t &eu, int warp, int lane, int64_t row0,
                                        int64_t row_end, int64_t n0, int rows) {
    if (warp == 0 && lane == 0) ep.meta[0] = row0, ep.meta[1] = row_end, ep.meta[2] = n0, ep.meta[3] = rows;
    mbar_arrive(ep.sfull);
    eu++;
}
/* the epilogue warps' side of one staged box at src: act rows r0 + .. (< rend), outputs f0 .. f0 + 63 (< N) */
template <typename T>
__device__ __forceinline__ void wp_drain_box(const moe_gemm_args &a, uint32_t src, int64_t r0, int64_t rend,
                                             int64_t f0, int rows, int et) {
    typedef jamba_w16<T> P;
    T *Cp = reinterpret_cast<T *>(a.C);
#pragma unroll 4
    for (int i = et; i < rows * 16; i += 32 * WP_EO_WARPS) { /* 16-byte piece pc of row r: outputs 4 pc .. */
        const int r = i >> 4, pc = i & 15;
        const int64_t p = r0 + r, f = f0 + 4 * pc;
        if (p >= rend || f >= a.N) continue;
        uint32_t w[4];
        const uint32_t c = (uint32_t)((2 * pc) ^ ((r & 3) << 2));
        asm volatile("ld.shared.v4.b32 {%0, %1, %2, %3}, [%4];\n" : "=r"(w[0]), "=r"(w[1]), "=r"(w[2]), "=r"(w[3])
                     : "r"(src + (uint32_t)r * 256u + c * 8u) : "memory");
        uint32_t o[2]; /* (gate, up) pairs of outputs f + 2 q2, f + 2 q2 + 1 */
#pragma unroll
        for (int q2 = 0; q2 < 2; q2++) {
            const float g0 = P::f1(w[2 * q2] & 0xffffu), u0 = P::f1(w[2 * q2] >> 16);
            const float g1 = P::f1(w[2 * q2 + 1] & 0xffffu), u1 = P::f1(w[2 * q2 + 1] >> 16);
            o[q2] = a.epi_f2f ? moe_pack2<T>(moe_act_fast<T>(g0, u0), moe_act_fast<T>(g1, u1))
                              : moe_act_fast2<T>(g0, g1, u0, u1);
        }
        *reinterpret_cast<uint2 *>(Cp + p * a.N + f) = make_uint2(o[0], o[1]);
    }
}
template <typename T, int NA, bool EO, int MODE = WT_ALL, bool Q8 = false>
__device__ __forceinline__ void wp_tile(const moe_gemm_args &a, const wt_ring &ring, uint32_t &it, int KT, int wgi,
                                        int warp, int lane, int64_t row0, int64_t row_end, int64_t n0,
                                        const wp_epi &ep, uint32_t &eu, int e = 0) {
    using OP = typename std::conditional<Q8, moe_e4m3_op, T>::type; /* the wgmma operands (Q8: e4m3 bytes) */
    using C = wt_cfg<MODE>; /* the ring's stage stride (WT_MG: the merged tiles' kernel) */
    constexpr int S = C::STAGES;
    constexpr bool MGT = NA == 192, FULL = NA != 64; /* NA = 192: a merged tile (MODE WT_MG; see below) */
    constexpr int N1 = MGT ? 128 : NA;               /* acc: the full (or half) tile's chain, acc2: the tail rows' */
    const uint32_t oa = FULL ? (uint32_t)(wgi * 64 * WG_BK * 2) : 0u;
    const uint32_t ob = WG_BM * WG_BK * 2 + (FULL ? 0u : (uint32_t)(wgi * (WG_BN / 2) * WG_BK * 2));
    [[maybe_unused]] const uint32_t ot = (WG_BM + WG_BN) * WG_BK * 2,
                                    oh = WG_BM * WG_BK * 2 + (uint32_t)(wgi * (WG_BN / 2) * WG_BK * 2);
    auto release = [&](uint32_t q) {
        __syncwarp();
        if (lane == 0) mbar_arrive(ring.empty + 8 * (q % S));
    };
    float acc[N1];
    [[maybe_unused]] float acc2[MGT ? 64 : 1];
#pragma unroll
    for (int i = 0; i < N1; i++) acc[i] = 0.f;
    if constexpr (MGT) {
#pragma unroll
        for (int i = 0; i < 64; i++) acc2[i] = 0.f;
    }
    for (int kt = 0; kt < KT; kt++, it++) {
        const uint32_t st = it % S, sa = ring.base + st * C::STAGE_BYTES;
        mbar_wait(ring.full + 8 * st, (it / S) & 1);
        __syncwarp(); /* the wgmma instructions are .sync.aligned: the warp converged */
        if constexpr (MGT) /* group it - 1 has finished */
            wg_ktile<OP>(wg_chain<128>{acc, sa + oa, sa + ob}, wg_chain<64>{acc2, sa + ot, sa + oh});
        else
            wg_ktile<OP>(wg_chain<NA>{acc, sa + oa, sa + ob});
        if (kt > 0) release(it - 1);
    }
    asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory");
    wg_pin(acc);
    if constexpr (MGT) wg_pin(acc2);
    release(it - 1); /* the tile's last stage: the producer refills it during the epilogue */
    [[maybe_unused]] const float *sc = nullptr; /* Q8: the expert's W row scales, for the epilogues (SC = Q8) */
    if constexpr (Q8) { /* the A row scales on the sums here */
        static_assert(!MGT, "no merged tiles in the W8A8 kernel");
        wq_row_scale<NA>(a, acc, row0 + (FULL ? wgi * 64 : 0), row_end, warp, lane);
        sc = a.wscale + (int64_t)e * a.w_rows;
    }
    if constexpr (MGT) {
        wg_epilogue<T, 32>(a, acc, row0 + wgi * 64, row_end, n0, 0, warp, lane);
        wg_epilogue<T, 16>(a, acc2, row0 + WG_BM, row_end, n0, wgi * (WG_BN / 2), warp, lane);
    } else if (EO && a.gate_up) { /* box 1 to the epilogue warps (half tile: warpgroup 1's outputs), box 0 here */
        if (eu > 0) mbar_wait(ep.sempty, (eu - 1) & 1); /* the epilogue warps have read the previous staged tile */
        if (FULL) wp_put_box<T, NA, 16, Q8>(ep.stage, acc, wgi * 64, warp, lane, sc, n0 + WG_WBOX, a.N);
        else if (wgi == 1) wp_put_box<T, NA, 0, Q8>(ep.stage, acc, 0, warp, lane, sc, n0 + WG_WBOX, a.N);
        wp_post(ep, eu, warp, lane, row0, row_end, n0, FULL ? WG_BM : 64);
        if (FULL || wgi == 0)
            wg_epilogue<T, 16, Q8>(a, reinterpret_cast<const float(&)[64]>(acc), row0 + (FULL ? wgi * 64 : 0), row_end,
                                   n0, 0, warp, lane, sc);
    } else {
        wg_epilogue<T, NA / 4, Q8>(a, acc, row0 + (FULL ? wgi * 64 : 0), row_end, n0, FULL ? 0 : wgi * (WG_BN / 2),
                                   warp, lane, sc);
    }
}

/* Merged tiles (the persistent kernel with MG = true, by size: MOE_WGMMA_MERGE_MIN_SLOTS_PER_EXPERT; env
 * JAMBA_EXT_MOE_MERGE=0 / 1 forces them off / on): an expert's last <= 64 rows join its previous full tile, one
 * tile of 128 + r rows (r <= 64) on one W slab instead of a full tile plus a tile of r rows (which reads the same
 * W stage into shared memory a second time, and as a 128-row tile leaves 128 - r rows idle, as a half tile is
 * bound by shared-memory traffic: see wp_tile). Stage (WT_MG): A rows row0 .. +127
 * (16 KB), W (32 KB), then the 64 tail A rows row0 + 128 .. (8 KB; rows past the expert feed skipped outputs).
 * Warpgroup wgi: its 64 rows times all 256 W rows (m64n256, acc, as a full tile) and the 64 tail rows times W rows
 * 128 wgi .. +127 (m64n128, acc2, as a half tile), one wgmma group per k tile: every output at the same place of the
 * same wgmma instruction as in the other tilings, so the same bits (test_moe_wgmma_tiles). 192 accumulators per
 * consumer thread: the kernel runs a third warpgroup (the producer warp, 3 idle warps) that gives its registers to
 * the consumers (setmaxnreg: 2 x 128 x 232 + 128 x 40 = 384 x 168), and has no epilogue warps (no room for their
 * 32 KB staging next to 4 stages of 56 KB; staged in the four 8 KB tail-row slots instead, which full tiles leave
 * empty, they were 0-1.5% slower at 1024-3072 tokens: 8c0becb, moe_mg_eo_8c0becb.log). */
/* MG: the tile at row0 is a merged one (row_end is the expert's end: the rows left from row0 are one full tile plus
 * 1 .. 64, which wt_cursor_find<true> makes the expert's last tile) */
__device__ __forceinline__ bool wp_is_merged(int64_t row0, int64_t row_end) {
    return row_end - row0 > WG_BM && row_end - row0 <= WG_BM + 64;
}
/* Merged tiles by size: from 128 to 192 slots per expert on average (1024-1535 tokens of Jamba-v0.1: there a
 * typical expert has 129-192 rows, one merged tile and one pass over its weights instead of two; the weights'
 * bandwidth binds at these sizes). Measured in turns against the default kernel (H200, Jamba-v0.1, bf16, whole op,
 * two runs each on two machines, moe_merge_f839d54.log, moe_merge2_f5bcb33.log; ms, merged / default): 1024 tokens
 * 1.530 / 1.673, 1.534 / 1.675, 1.658 / 2.037, 1.664 / 2.042; 2048: 2.822 / 2.904, 2.787 / 2.893, 2.807 / 2.760,
 * 2.802 / 2.758 (no clear gain: the epilogue warps the merged kernel lacks are worth about as much); 512: 1.424 /
 * 1.410 (both runs), 768: 1.452 / 1.439, 1.449 / 1.438, 3072: 3.834 / 3.824, 3.989 / 3.851, 4096: 4.917 / 4.861,
 * 4.896 / 4.829. Between them (moe_merge_range_f41e06e.log, two runs, merged / not): 1280 tokens 1.665 / 2.186,
 * 1.657 / 2.180; 1536: 2.180 / 2.201, 2.166 / 2.193; 1792: 2.285 / 2.235, 2.340 / 2.258: so up to 192. */
#define MOE_WGMMA_MERGE_MIN_SLOTS_PER_EXPERT 128
#define MOE_WGMMA_MERGE_MAX_SLOTS_PER_EXPERT 192
#define WP_MG_REGS_LOW 40   /* setmaxnreg of the merged kernel's third warpgroup (producer) */
#define WP_MG_REGS_HIGH 232 /* and of its consumers */

#define WP_THREADS (WG_THREADS + 32)
#define WP_SMEM (wt_cfg<WT_ALL>::SMEM + 8 * WG_STAGES)
#define WP_EO_THREADS (WP_THREADS + 32 * WP_EO_WARPS)
/* EO kernel: the staging from ring.base + WP_EO_STAGE_OFF (the ring's barriers and slots below it), then meta */
#define WP_EO_STAGE_OFF (WG_STAGES * wt_cfg<WT_ALL>::STAGE_BYTES + 128)
#define WP_EO_SMEM (WP_EO_STAGE_OFF + WG_BM * 256 + 64 + 1024) /* + alignment room */
#define WP_MG_THREADS (WG_THREADS + 128) /* MG kernel: a whole third warpgroup (setmaxnreg works per warpgroup) */
#define WP_MG_SMEM (wt_cfg<WT_MG>::SMEM + 8 * WG_STAGES)
template <typename T, bool EO, bool MG = false, bool Q8 = false>
__global__ void __launch_bounds__(MG ? WP_MG_THREADS : EO ? WP_EO_THREADS : WP_THREADS, 1)
    moe_wgmma_persist_kernel(const __grid_constant__ CUtensorMap tmA, const __grid_constant__ CUtensorMap tmA64,
                             const __grid_constant__ CUtensorMap tmW, moe_gemm_args a, int64_t n_tiles) {
    jamba_pdl_begin();
#if MOE_HAS_WGMMA
    static_assert(!(EO && MG), "the merged tiles' kernel has no epilogue warps");
    static_assert(!(Q8 && MG), "the W8A8 kernel has no merged tiles");
    constexpr int RM = MG ? WT_MG : WT_ALL; /* the ring's layout */
    using C = wt_cfg<RM>;
    constexpr int S = C::STAGES;
    extern __shared__ __align__(1024) unsigned char wg_smem_raw[];
    const wt_ring ring = wt_ring_at<RM>(wg_smem_raw);
    volatile int *slot = reinterpret_cast<volatile int *>(wg_smem_raw + (ring.empty + 8 * S - smem_u32(wg_smem_raw)));
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
    const int KT = (int)((a.Kd + WG_BK - 1) / WG_BK);
    const int64_t wn = a.gate_up ? WG_BN / 2 : WG_BN; /* outputs per n-tile */
    wp_epi ep = {0u, 0u, 0u, nullptr};
    uint32_t eu = 0; /* staged tiles so far (consumers) / drained (epilogue warps) */
    if constexpr (EO) {
        ep.stage = ring.base + WP_EO_STAGE_OFF;
        ep.sfull = ring.empty + 8 * S + 4 * S + 4 * (S & 1); /* after the slots, 8-byte aligned */
        ep.sempty = ep.sfull + 8;
        ep.meta = reinterpret_cast<volatile int64_t *>(wg_smem_raw + (ep.stage + WG_BM * 256 - smem_u32(wg_smem_raw)));
        static_assert(3 * 8 * WG_STAGES + 16 <= 128, "barriers, slots and the staging barriers below the staging");
    }
    if (tid == 0) {
        wt_ring_init<RM>(ring);
        if constexpr (EO) {
            mbar_init(ep.sfull, WG_THREADS);
            mbar_init(ep.sempty, 32 * WP_EO_WARPS);
            asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
        }
    }
    __syncthreads();
    if constexpr (EO) {
        if (warp > WG_THREADS / 32) { /* epilogue warps: SiLU(gate)*up of the staged boxes */
            if (!a.gate_up) return;
            const int et = (warp - WG_THREADS / 32 - 1) * 32 + lane;
            for (;; eu++) {
                mbar_wait(ep.sfull, eu & 1);
                const int64_t r0 = ep.meta[0], rend = ep.meta[1], n0 = ep.meta[2];
                const int rows = (int)ep.meta[3];
                if (rend < 0) break;
                wp_drain_box<T>(a, ep.stage, r0, rend, n0 + WG_WBOX, rows, et);
                mbar_arrive(ep.sempty);
            }
            return;
        }
    }
    wt_cursor cur = {0, 0};
    int e;
    int64_t row0, row_end, nt;
    if (MG ? warp >= WG_THREADS / 32 : warp == WG_THREADS / 32) { /* producer (MG: and 3 idle warps) */
        if constexpr (MG) { /* registers to the consumers; in a branch every path leaves by return, else ptxas
                             * ignores setmaxnreg (C7507) */
            asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(WP_MG_REGS_LOW));
            if (warp > WG_THREADS / 32) return;
        }
        if (lane != 0) return;
        uint32_t q = 0;
        for (int64_t pid = blockIdx.x;;) {
            const bool found = wt_cursor_find<MG>(a, cur, pid, n_tiles, &e, &row0, &row_end, &nt);
            const int64_t next = found ? gridDim.x + (int64_t)atomicAdd(a.sched, 1) : -1;
            const uint32_t s0 = q % S;
            if (q >= (uint32_t)S) mbar_wait(ring.empty + 8 * s0, (q / S - 1) & 1);
            slot[s0] = found ? (int)pid : -1;
            if (!found) {
                mbar_arrive(ring.full + 8 * s0); /* no bytes: the consumers read -1 and stop */
                break;
            }
            const int wrow = (int)((int64_t)e * a.w_rows + nt * wn);
            const bool half = !MG && wp_is_half(a, row0, row_end);
            const bool merged = MG && wp_is_merged(row0, row_end);
            for (int kt = 0; kt < KT; kt++, q++) {
                const uint32_t st = q % S;
                if (kt > 0 && q >= (uint32_t)S) mbar_wait(ring.empty + 8 * st, (q / S - 1) & 1);
                wt_issue<RM>(a, half ? &tmA64 : &tmA, &tmW, ring.base + st * C::STAGE_BYTES, ring.full + 8 * st, kt,
                             (int)row0, wrow, half, merged ? &tmA64 : nullptr, (int)row0 + WG_BM);
            }
            pid = next;
        }
        return;
    }
    if constexpr (MG) asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(WP_MG_REGS_HIGH));
    const int wgi = warp >> 2;
    uint32_t it = 0; /* k tiles consumed so far */
    for (;;) {
        mbar_wait(ring.full + 8 * (it % S), (it / S) & 1);
        /* read by lane 0, the warp's releasing thread (racecheck: other lanes' reads before its arrival were
         * reported as hazards against the producer's next write) */
        const int pid = __shfl_sync(0xffffffffu, lane == 0 ? slot[it % S] : 0, 0);
        if (pid < 0 || !wt_cursor_find<MG>(a, cur, pid, n_tiles, &e, &row0, &row_end, &nt)) break;
        if constexpr (MG) {
            if (wp_is_merged(row0, row_end)) {
                wp_tile<T, 192, false, RM>(a, ring, it, KT, wgi, warp, lane, row0, row_end, nt * wn, ep, eu);
                continue;
            }
        }
        if (!MG && wp_is_half(a, row0, row_end))
            wp_tile<T, 64, EO, RM, Q8>(a, ring, it, KT, wgi, warp, lane, row0, row_end, nt * wn, ep, eu, e);
        else
            wp_tile<T, 128, EO, RM, Q8>(a, ring, it, KT, wgi, warp, lane, row0, row_end, nt * wn, ep, eu, e);
    }
    if constexpr (EO) { /* no more tiles: tell the epilogue warps */
        if (a.gate_up) {
            if (eu > 0) mbar_wait(ep.sempty, (eu - 1) & 1);
            wp_post(ep, eu, warp, lane, 0, -1, 0, 0);
        }
    }
#endif
}

/* ---- the fp8 GEMM: moe_wgmma_f8ws_kernel<T> (moe_wgmma_gemm_f8, for moe_experts_fp8 from 20 slots per expert on
 * Hopper) ----
 * The WT_ALL tiles of moe_wgmma_kernel (128 sorted rows x 256 W rows, 64-deep k tiles, expert-major order,
 * non-persistent) on e4m3 weight bytes. Shapes as moe_wgmma_kernel; W (E * w_rows, Kd) holds e4m3 bytes, a.wscale
 * (E, w_rows) f32 one scale per W row. Per k tile, TMA brings A (128 x 64 T, 128-byte swizzle: 16 KB) and the W
 * tile's bytes (256 rows x 64 e4m3, no swizzle, row R of the tile at R * 64, rows in wt_issue's order: 16 KB) into a
 * 4-stage ring of 32 KB stages (wf_issue). Converter warps turn the bytes into T (exact for every e4m3 value:
 * jamba_e4m3x2_to16) in one of three 32 KB W buffers laid out as TMA's 128-byte swizzle lays out a T tile (row R at
 * R * 128, its 16-byte chunk c at c ^ (R & 7)), which the consumers' wgmmas read. The epilogue multiplies each fp32
 * sum by its W row's scale (wg_epilogue SC; the semantics of the ring kernels and the GEMVs: sum_k e4m3(w[n, k]) x[k],
 * times scale[n]). Each W byte is read once per m-tile of its expert (half the bytes of bf16 weights).
 * History (H200, Jamba-v0.1 sizes, bf16 x, whole op, us; in git history): the first form (cd4ca89,
 * moe_wgmma_f8_kernel, 256 threads) had both consumer warpgroups convert k tile kt + 1 between their wgmma groups, then
 * fence.proxy.async and a block barrier: 128 / 256 / 512 / 1024 / 2048 tokens 1367 / 1391 / 1422 / 2267 / 3473 against
 * 1341 / 1369 / 1386 / 1589 / 2551 for the bf16 op and 3683 / 3713 / 3733 / 3948 / 4911 for the dequantizing path it
 * replaced (fp8_wgmma_cd4ca89.log), its tiles at ~2/3 of bf16's rate. Not for shared-memory bandwidth (~160 KB a k
 * tile against 128 KB for bf16): Nsight Compute at 2048 tokens (ncu_moe_*_f8_cdaf5fb_*) put shared memory at 58% and
 * the tensor pipe at 53%, the stalls at the barrier after the conversion (10%), the proxy fence (5%) and the
 * conversion's dependent chains. Tried and dropped: the W bytes loaded into registers by the converting threads two
 * k tiles ahead instead of by TMA (66e7baa): 1784 / 4184 against 1444 / 3699 at 512 / 2048 tokens, with an L2
 * prefetch by TMA (caef73b) 1712 / 4206 against 1441 / 3958; converting before the wait for the previous group
 * (d427909): 1570 / 4026 against 1432 / 3624 (fp8_wgmma_66e7baa.log, fp8_wgmma_pf_caef73b.log,
 * fp8_wgmma_early_d427909.log). Converter warps (below) then gained 6-7% at 2048-4096 tokens in two runs. */
#define WF_STAGES 4
#define WF_A_BYTES (WG_BM * WG_BK * 2)                 /* A of a stage: 16 KB */
#define WF_STAGE_BYTES (WF_A_BYTES + WG_BN * WG_BK)     /* + the W bytes: 32 KB */
#define WF_WB_BYTES (WG_BN * WG_BK * 2)                 /* one converted W tile: 32 KB */

/* thread 0: k tile kt into stage kt % WF_STAGES of the ring at base (A, then the W bytes in two 8 KB boxes),
 * completing on full[kt % WF_STAGES] */
__device__ __forceinline__ void wf_issue(const moe_gemm_args &a, const CUtensorMap *tmA, const CUtensorMap *tmW,
                                         uint32_t base, uint32_t full, int kt, int arow, int wrow) {
    const uint32_t sa = base + (uint32_t)((kt % WF_STAGES) * WF_STAGE_BYTES), fb = full + 8 * (kt % WF_STAGES);
    mbar_expect_tx(fb, WF_STAGE_BYTES);
    tma_load_2d(sa, tmA, kt * WG_BK, arow, fb);
#pragma unroll
    for (int bi = 0; bi < 2; bi++) {
        const uint32_t dst = sa + WF_A_BYTES + (uint32_t)(bi * 2 * WG_WBOX * WG_BK);
        if (a.gate_up) tma_load_3d(dst, tmW, kt * WG_BK, wrow + WG_WBOX * bi, fb);
        else tma_load_2d(dst, tmW, kt * WG_BK, wrow + 2 * WG_WBOX * bi, fb);
    }
}

/* moe_wgmma_f8ws_kernel<T>: 384 threads (154 registers). The consumers (warps 0-7, two warpgroups of 64 A rows each)
 * only wait and issue wgmmas; a third warpgroup of converters (warps 8-11, thread tid - 256 = c: pieces c + 128 i of
 * 8 bytes, i < 16) converts up to 3 k tiles ahead through its own barriers:
 *   full[s]   TMA landed (1 arrival + bytes; consumers read A, converters the W bytes)
 *   empty[s]  12 arrivals: 8 consumer warps (group kt finished) and 4 converter warps (bytes converted)
 *   cfull[b]  W buffer b written (128 arrivals: each converter thread after its fence for the async proxy)
 *   cempty[b] W buffer b free again (8 consumer-warp arrivals after the group reading it finished)
 * Thread 0 (a consumer) refills the ring once empty[s] completed. Measured against the first form in turns
 * (fp8_ws_9c59c82.log, fp8_ws_a843d72.log): 128 / 256 / 512 / 2048 / 4096 tokens 1373 / 1428 / 1491 / 3728 / 6975
 * against 1372 / 1418 / 1508 / 3960 / 7422, and 512 / 2048 tokens 1408 / 3639 against 1402 / 3931; the tiles still run
 * at ~2/3 of bf16's rate (not profiled since). */
#define WS_THREADS 384
#define WS_NB 3 /* W buffers */
template <typename T> __device__ __forceinline__ void ws_convert(uint32_t w8, uint32_t wb, int c) {
    const uint32_t src = w8 + (uint32_t)c * 8;
    const uint32_t dst = wb + (uint32_t)(c >> 3) * 128 + (uint32_t)(((c & 7) ^ ((c >> 3) & 7)) << 4);
#pragma unroll
    for (int h = 0; h < 2; h++) { /* two halves of 8 pieces: all loads of a half, then its conversions and stores */
        uint32_t v[8][2];
#pragma unroll
        for (int i = 0; i < 8; i++)
            asm volatile("ld.shared.v2.u32 {%0, %1}, [%2];\n"
                         : "=r"(v[i][0]), "=r"(v[i][1]) : "r"(src + (uint32_t)((h * 8 + i) * 1024)));
#pragma unroll
        for (int i = 0; i < 8; i++)
            asm volatile("st.shared.v4.u32 [%0], {%1, %2, %3, %4};\n" ::"r"(dst + (uint32_t)((h * 8 + i) * 2048)),
                         "r"(jamba_e4m3x2_to16<T>(v[i][0])), "r"(jamba_e4m3x2_to16<T>(v[i][0] >> 16)),
                         "r"(jamba_e4m3x2_to16<T>(v[i][1])), "r"(jamba_e4m3x2_to16<T>(v[i][1] >> 16))
                         : "memory");
    }
}

template <typename T>
__global__ void __launch_bounds__(WS_THREADS, 1)
    moe_wgmma_f8ws_kernel(const __grid_constant__ CUtensorMap tmA, const __grid_constant__ CUtensorMap tmW,
                          moe_gemm_args a, int64_t n_tiles) {
    jamba_pdl_begin();
#if MOE_HAS_WGMMA
    constexpr int S = WF_STAGES, NB = WS_NB;
    extern __shared__ __align__(1024) unsigned char wg_smem_raw[];
    const uint32_t base = (smem_u32(wg_smem_raw) + 1023u) & ~1023u; /* stages, then the W buffers, then barriers */
    const uint32_t wbuf = base + S * WF_STAGE_BYTES;
    const uint32_t full = wbuf + NB * WF_WB_BYTES, empty = full + S * 8, cfull = empty + S * 8, cempty = cfull + NB * 8;
    int e;
    int64_t row0, row_end, nt;
    if (!wt_expert_tile(a, blockIdx.x, n_tiles, &e, &row0, &row_end, &nt)) return;
    const int64_t n0 = nt * (a.gate_up ? WG_BN / 2 : WG_BN);
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, wgi = warp >> 2;
    const int KT = (int)((a.Kd + WG_BK - 1) / WG_BK);
    const int wrow = (int)((int64_t)e * a.w_rows + n0); /* < 2^31: checked by the launcher */
    const int arow = (int)row0;
    if (tid == 0) {
        for (int st = 0; st < S; st++) {
            mbar_init(full + 8 * st, 1);
            mbar_init(empty + 8 * st, 12);
        }
        for (int b = 0; b < NB; b++) {
            mbar_init(cfull + 8 * b, 128);
            mbar_init(cempty + 8 * b, 8);
        }
        asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
    }
    __syncthreads();
    if (wgi == 2) { /* converters */
        for (int kt = 0; kt < KT; kt++) {
            const int st = kt % S, b = kt % NB;
            mbar_wait(full + 8 * st, (uint32_t)((kt / S) & 1));
            if (kt >= NB) mbar_wait(cempty + 8 * b, (uint32_t)((kt / NB - 1) & 1));
            ws_convert<T>(base + (uint32_t)(st * WF_STAGE_BYTES) + WF_A_BYTES, wbuf + (uint32_t)(b * WF_WB_BYTES),
                          tid - 256);
            asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
            mbar_arrive(cfull + 8 * b); /* every converter thread, after its own fence */
            __syncwarp();
            if (lane == 0) mbar_arrive(empty + 8 * st);
        }
        return;
    }
    if (tid == 0)
        for (int kt = 0; kt < S && kt < KT; kt++) wf_issue(a, &tmA, &tmW, base, full, kt, arow, wrow);
    float acc[128];
#pragma unroll
    for (int i = 0; i < 128; i++) acc[i] = 0.f;
    for (int kt = 0; kt < KT; kt++) {
        const int st = kt % S, b = kt % NB;
        mbar_wait(full + 8 * st, (uint32_t)((kt / S) & 1));
        mbar_wait(cfull + 8 * b, (uint32_t)((kt / NB) & 1));
        __syncwarp(); /* the wgmma instructions are .sync.aligned: the warp converged */
        wg_ktile<T>(wg_chain<128>{acc, base + (uint32_t)(st * WF_STAGE_BYTES + wgi * 64 * WG_BK * 2),
                                  wbuf + (uint32_t)(b * WF_WB_BYTES)}); /* returns once group kt - 1 finished */
        if (kt > 0) { /* group kt - 1 has finished: its stage's A and its W buffer are free */
            const int ps = (kt - 1) % S;
            __syncwarp();
            if (lane == 0) {
                mbar_arrive(empty + 8 * ps);
                mbar_arrive(cempty + 8 * ((kt - 1) % NB));
            }
            if (tid == 0 && kt - 1 + S < KT) {
                mbar_wait(empty + 8 * ps, (uint32_t)(((kt - 1) / S) & 1));
                wf_issue(a, &tmA, &tmW, base, full, kt - 1 + S, arow, wrow);
            }
            __syncwarp();
        }
    }
    asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory");
#pragma unroll
    for (int i = 0; i < 128; i++) asm volatile("" : "+f"(acc[i])::"memory");
    wg_epilogue<T, 32, true>(a, acc, row0 + wgi * 64, row_end, n0, 0, warp, lane, a.wscale + (int64_t)e * a.w_rows);
#endif
}
#define WS_SMEM (WF_STAGES * WF_STAGE_BYTES + WS_NB * WF_WB_BYTES + 1024 + 2 * (WF_STAGES + WS_NB) * 8)

/* ---- the swap-AB engine (session 54; env JAMBA_EXT_MOE_SWAP, see moe_swap_on) ------------------------------------
 * moe_swap_kernel<T, GATE_UP>: the same GEMMs with the roles swapped: W rows on the wgmma's M side, an expert's sorted
 *   rows (its slots) on N, so that an expert's rows are padded to 32, not to 128 (the 128 x 256 tiles' idle rows).
 *   grid (W blocks, chunks); block (x, y): W block x -- gate_up: outputs 64 x .. 64 x + 63 (their gate rows, then
 *   their up rows: the 3-d pair box of tmW), down: W rows 128 x .. 128 x + 127 -- times chunk y of the experts'
 *   rows: expert e's n rows split into ceil(n / SW_MAX_ROWS) near-equal chunks, chunks numbered expert by expert
 *   (blocks past the last chunk return). 384 threads: warpgroups 0-1 consume (setmaxnreg 232; 64 W rows each, A = W
 *   by ldmatrix.x4 into registers, B = the chunk's rows in NC = ceil(rows / 32) chunks of 32 from shared memory,
 *   a k16 step one wgmma m64n(32 NC)k16, or m64n256k16 and m64n(32 NC - 256)k16 past 8 chunks (sw_mma_w; one
 *   m64n32k16 a chunk until session 59), NC by a switch at the tile's start: every case its own k loop, which ptxas
 *   keeps pipelined);
 *   warpgroup 2 produces (setmaxnreg 40; thread 256 issues TMA: the 16 KB W box and the NC chunks' rows a 64-deep k
 *   tile, 128-byte swizzle, a ring of SW_STAGES stages of 56 KB with full / empty mbarriers). The chunks' rows come
 *   in boxes of 128 rows (4 chunks) while 4 or more are left, then 64, then 32: at most 3 A loads a stage (session
 *   62; a 32-row load a chunk before: gate_up 1-17% and down 11-27% slower by kernel time, 256 rows an expert,
 *   s62_mc_fed32ef.log / s62_abox_e0d25fa.log; JAMBA_EXT_MOE_SWAP_ABOX=32 / 64 for the A/B).
 *   gate_up: each warp's 16 fragment rows are 8 gate rows and the same outputs' 8 up rows (ldmatrix's row choice),
 *   so a thread's accumulator rows r and r + 8 are one output's gate and up: act = moe_act_fast(g, u) in the thread.
 *   down: round(y) * round(w of the slot) (moe_scaled), to the slot's row; both with two roundings a conversion
 *   (moe_act_fast2 / moe_scaled2). Epilogue: the values as T, transposed
 *   into the ring's shared memory by stmatrix.x4.trans (a row's outputs contiguous), then 16-byte stores.
 *   Rows of a box past the chunk, W rows past the expert or N, k past Kd: as moe_wgmma_kernel's (zero-filled or
 *   masked). ptxas: no spills (session 56; the f16 gate_up instance spilled 124 bytes before). Labs
 *   (dev/cuda/swap_ab_lab.cu; the whole GEMM's, swap_ab_gemm_lab.cu, in git history at 5fb0249) and measurements:
 *   docs/PERF_NOTES.md (MoE prefill, sessions 54-56). */
#define SW_MAX_ROWS 320                                  /* rows of a chunk: NC <= 10, 160 accumulators a thread */
#define SW_STAGES 4
#define SW_A_BYTES (128 * WG_BK * 2)                     /* the W box: 128 rows */
#define SW_STAGE_BYTES (SW_A_BYTES + SW_MAX_ROWS * WG_BK * 2)
#define SW_EPI_OFF (SW_STAGES * SW_STAGE_BYTES + 2 * SW_STAGES * 8) /* from the ring: down's preloaded rows (int32), */
#define SW_EPI_BYTES (SW_MAX_ROWS * 6)                                /* then their router weights (T bits, u16) */
#define SW_SMEM (SW_STAGES * SW_STAGE_BYTES + 1024 + 2 * SW_STAGES * 8 + SW_EPI_BYTES)
static_assert(SW_SMEM <= 232448, "moe_swap_kernel: more shared memory than sm_90 gives a block (227 KB)");
#define SW_THREADS 384
static_assert(SW_MAX_ROWS * (128 * 2 + 16) <= SW_STAGES * SW_STAGE_BYTES, "moe_swap: the epilogue fits the ring");

template <typename T, int OFF, int N, int NA>
__device__ __forceinline__ void sw_mma_w(float (&d)[NA], const uint32_t (&a)[4], uint64_t db);
#if MOE_HAS_WGMMA
/* sw_mma_w<T, OFF, N>: one wgmma m64nNk16 (N = 32 .. 256 in steps of 32; session 59) for N / 32 of a tile's 32-row
 * chunks, d[OFF ..] += A (registers) x the N token rows at descriptor db: the chunks' 8-row token groups are 1024
 * bytes apart in the stage, as one N-row operand's are, and a thread's N / 2 accumulators are the chunks' 16 each in
 * chunk order (n8 block j of the instruction is block j % 4 of chunk j / 4). The same bits as one m64n32k16 a chunk
 * (tested at f77ce11 against that form, the default then), faster: on random operands at the power limit the lab's RS
 * loop ran n256 856 against n32 x 8 831 TFLOP/s (s59_rsrand_98ccdb6.log), the op's down kernel 8-9% and gate_up 3%
 * (s59_wide_f77ce11.log). SW_W is an if-else statement (used inside braces). */
#define SW_W(SHAPE, REGS, AREGS, DREG, PREG, ...)                                                                      \
    if (std::is_same<T, __half>::value)                                                                              \
        asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, " PREG ", 0;\nwgmma.mma_async.sync.aligned." SHAPE          \
                     ".f32.f16.f16 {" REGS "}, {" AREGS "}, " DREG ", p, 1, 1, 0;\n}\n"                              \
                     : __VA_ARGS__ : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db), "r"(1));                 \
    else                                                                                                             \
        asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, " PREG ", 0;\nwgmma.mma_async.sync.aligned." SHAPE          \
                     ".f32.bf16.bf16 {" REGS "}, {" AREGS "}, " DREG ", p, 1, 1, 0;\n}\n"                            \
                     : __VA_ARGS__ : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db), "r"(1))
/* operand lists of sw_mma_w: accumulator registers %0 .. in groups of 16, and 16 accumulators from d[OFF + o] */
#define SW_RG0 "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15"
#define SW_RG1 ", %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31"
#define SW_RG2 ", %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47"
#define SW_RG3 ", %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63"
#define SW_RG4 ", %64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79"
#define SW_RG5 ", %80, %81, %82, %83, %84, %85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95"
#define SW_RG6 ", %96, %97, %98, %99, %100, %101, %102, %103, %104, %105, %106, %107, %108, %109, %110, %111"
#define SW_RG7 ", %112, %113, %114, %115, %116, %117, %118, %119, %120, %121, %122, %123, %124, %125, %126, %127"
#define SW_ACC(o) "+f"(d[OFF + (o) + 0]), "+f"(d[OFF + (o) + 1]), "+f"(d[OFF + (o) + 2]), "+f"(d[OFF + (o) + 3]), \
    "+f"(d[OFF + (o) + 4]), "+f"(d[OFF + (o) + 5]), "+f"(d[OFF + (o) + 6]), "+f"(d[OFF + (o) + 7]), \
    "+f"(d[OFF + (o) + 8]), "+f"(d[OFF + (o) + 9]), "+f"(d[OFF + (o) + 10]), "+f"(d[OFF + (o) + 11]), \
    "+f"(d[OFF + (o) + 12]), "+f"(d[OFF + (o) + 13]), "+f"(d[OFF + (o) + 14]), "+f"(d[OFF + (o) + 15])
template <typename T, int OFF, int N, int NA>
__device__ __forceinline__ void sw_mma_w(float (&d)[NA], const uint32_t (&a)[4], uint64_t db) {
    static_assert(N % 32 == 0 && N >= 32 && N <= 256 && OFF + N / 2 <= NA, "sw_mma_w: N 32 .. 256, inside d");
    if constexpr (N == 32) {
        SW_W("m64n32k16", SW_RG0, "%16, %17, %18, %19", "%20", "%21", SW_ACC(0));
    } else if constexpr (N == 64) {
        SW_W("m64n64k16", SW_RG0 SW_RG1, "%32, %33, %34, %35", "%36", "%37", SW_ACC(0), SW_ACC(16));
    } else if constexpr (N == 96) {
        SW_W("m64n96k16", SW_RG0 SW_RG1 SW_RG2, "%48, %49, %50, %51", "%52", "%53", SW_ACC(0), SW_ACC(16), SW_ACC(32));
    } else if constexpr (N == 128) {
        SW_W("m64n128k16", SW_RG0 SW_RG1 SW_RG2 SW_RG3, "%64, %65, %66, %67", "%68", "%69",
             SW_ACC(0), SW_ACC(16), SW_ACC(32), SW_ACC(48));
    } else if constexpr (N == 160) {
        SW_W("m64n160k16", SW_RG0 SW_RG1 SW_RG2 SW_RG3 SW_RG4, "%80, %81, %82, %83", "%84", "%85",
             SW_ACC(0), SW_ACC(16), SW_ACC(32), SW_ACC(48), SW_ACC(64));
    } else if constexpr (N == 192) {
        SW_W("m64n192k16", SW_RG0 SW_RG1 SW_RG2 SW_RG3 SW_RG4 SW_RG5, "%96, %97, %98, %99", "%100", "%101",
             SW_ACC(0), SW_ACC(16), SW_ACC(32), SW_ACC(48), SW_ACC(64), SW_ACC(80));
    } else if constexpr (N == 224) {
        SW_W("m64n224k16", SW_RG0 SW_RG1 SW_RG2 SW_RG3 SW_RG4 SW_RG5 SW_RG6, "%112, %113, %114, %115", "%116", "%117",
             SW_ACC(0), SW_ACC(16), SW_ACC(32), SW_ACC(48), SW_ACC(64), SW_ACC(80), SW_ACC(96));
    } else if constexpr (N == 256) {
        SW_W("m64n256k16", SW_RG0 SW_RG1 SW_RG2 SW_RG3 SW_RG4 SW_RG5 SW_RG6 SW_RG7,
             "%128, %129, %130, %131", "%132", "%133",
             SW_ACC(0), SW_ACC(16), SW_ACC(32), SW_ACC(48), SW_ACC(64), SW_ACC(80), SW_ACC(96), SW_ACC(112));
    }
}
#undef SW_W
#undef SW_ACC
#undef SW_RG0
#undef SW_RG1
#undef SW_RG2
#undef SW_RG3
#undef SW_RG4
#undef SW_RG5
#undef SW_RG6
#undef SW_RG7
#endif

/* A fragment of warpgroup wg (k16 step kk of the stage's W box at sa, 128-byte swizzle): fragment row fr of warp q
 * reads box row 64 wg + 16 q + fr; GATE_UP: the gate row 32 wg + 8 q + fr (fr < 8) or the same output's up row
 * 64 + 32 wg + 8 q + fr - 8 */
template <bool GATE_UP> __device__ __forceinline__ void sw_load_a(uint32_t (&a)[4], uint32_t sa, int kk) {
    const int lane = threadIdx.x & 31, warp = (threadIdx.x >> 5) & 3, wg = threadIdx.x >> 7, fr = lane & 15;
    const int r = GATE_UP ? (fr < 8 ? 32 * wg + 8 * warp + fr : 64 + 32 * wg + 8 * warp + fr - 8)
                          : 64 * wg + 16 * warp + fr;
    const int kc = kk * 2 + (lane >> 4);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(a[0]), "=r"(a[1]), "=r"(a[2]), "=r"(a[3])
                 : "r"(sa + (r >> 3) * 1024 + (r & 7) * 128 + ((kc ^ (r & 7)) << 4)));
}

/* block y -> expert e and the chunk's sorted rows [row0, row0 + len); false past the last chunk. Every lane of the
 * calling warp must call it (the kernel's start: all its threads). Warp-parallel (session 57; before it a serial scan,
 * a dependent load and a 64-bit division an expert): lane i reads expert e0 + i's offsets, a prefix sum of the
 * experts' chunk counts over the warp (shuffles) and a ballot find y's expert, one load's latency a 32 experts.
 * dev/sw_chunk_emu.py checks the index arithmetic against the serial scan's. */
__device__ __forceinline__ bool sw_chunk(const moe_gemm_args &a, int64_t y, int *e_out, int64_t *row0, int *len) {
    const int lane = threadIdx.x & 31;
    int64_t first = 0;   /* chunks of the experts before e0 */
    for (int e0 = 0; e0 < a.E; e0 += 32) {
        const int e = e0 + lane;
        int o = 0, n = 0;   /* (slots < 2^31 - 128: moe_wgmma_coords_fit) */
        if (e < a.E) {
            o = a.offsets[e];
            n = a.offsets[e + 1] - o;
        }
        const int nch = (n + SW_MAX_ROWS - 1) / SW_MAX_ROWS;
        int incl = nch;   /* chunks of experts e0 .. e */
#pragma unroll
        for (int d = 1; d < 32; d <<= 1) {
            const int t = __shfl_up_sync(0xffffffffu, incl, d);
            if (lane >= d) incl += t;
        }
        const unsigned hit = __ballot_sync(0xffffffffu, e < a.E && y < first + incl);
        if (hit) {   /* the first such lane: y >= first + its exclusive sum, so its nch >= 1 */
            const int src = __ffs(hit) - 1;
            const int so = __shfl_sync(0xffffffffu, o, src), sn = __shfl_sync(0xffffffffu, n, src);
            const int snch = __shfl_sync(0xffffffffu, nch, src), sincl = __shfl_sync(0xffffffffu, incl, src);
            const int j = (int)(y - (first + sincl - snch)), csz = (sn + snch - 1) / snch, start = j * csz;
            *e_out = e0 + src;
            *row0 = (int64_t)so + start;
            *len = sn - start < csz ? sn - start : csz;
            return true;
        }
        first += __shfl_sync(0xffffffffu, incl, 31);
    }
    return false;
}

/* the consumers' tile with NC 32-row chunks (all 256 consumer threads): the k loop (a do loop: ptxas serialises the
 * wgmmas of a loop that may run no iteration, C7515; a k16 step's NC chunks as one m64n(32 NC)k16, or m64n256k16
 * and m64n(32 NC - 256)k16 past 8 chunks: sw_mma_w), then the epilogue through the ring */
template <typename T, bool GATE_UP, int NC>
__device__ __forceinline__ void sw_consume(const moe_gemm_args &a, uint32_t ring, unsigned char *ring_ptr,
                                           uint32_t full, uint32_t empty, int64_t row0, int len, int64_t col0,
                                           int KT) {
    constexpr int NA = NC * 16;
    const int wg = threadIdx.x >> 7;
    float d[NA];
#pragma unroll
    for (int i = 0; i < NA; i++) d[i] = 0.f;
    uint32_t ar[2][4];
    int kt = 0;
    do {
        const int s = kt % SW_STAGES;
        mbar_wait(full + 8 * s, (kt / SW_STAGES) & 1);
        const uint32_t sa = ring + s * SW_STAGE_BYTES, sb = sa + SW_A_BYTES;
#pragma unroll
        for (int kk = 0; kk < 4; kk++) {
            sw_load_a<GATE_UP>(ar[kk & 1], sa, kk);
            wg_pin(d);
            asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
            constexpr int N0 = NC < 8 ? NC * 32 : 256, N1 = NC > 8 ? NC * 32 - 256 : 32;   /* (N1: past 8 chunks) */
            sw_mma_w<T, 0, N0, NA>(d, ar[kk & 1], wg_desc(sb) + 2 * kk);
            if constexpr (NC > 8) sw_mma_w<T, 128, N1, NA>(d, ar[kk & 1], wg_desc(sb + 256 * 128) + 2 * kk);
            asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
            asm volatile("wgmma.wait_group.sync.aligned 1;\n" ::: "memory");
            wg_pin(d);
            /* the group before is done: at kk == 0 the previous stage's last, so that stage is free */
            if (kk == 0 && kt > 0 && (threadIdx.x & 127) == 0) mbar_arrive(empty + 8 * ((kt - 1) % SW_STAGES));
        }
    } while (++kt < KT);
    asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory");
    wg_pin(d);
    asm volatile("bar.sync 1, 256;\n" ::: "memory");   /* both warpgroups done with the ring: the epilogue's now */
    /* down: the producer's warp 9 has written this chunk's rows and weights */
    if (!GATE_UP) asm volatile("bar.sync 2, 288;\n" ::: "memory");
    const int *pre_rows = reinterpret_cast<const int *>(ring_ptr + SW_EPI_OFF);
    const uint32_t *pre_w2 = reinterpret_cast<const uint32_t *>(ring_ptr + SW_EPI_OFF + SW_MAX_ROWS * 4);
    /* row t of the chunk: its outputs (gate_up 64, down 128) at ring + t * PITCH, as T */
    constexpr int W_OUT = GATE_UP ? 64 : 128, PITCH = W_OUT * 2 + 16;
    const int lane = threadIdx.x & 31, warp = (threadIdx.x >> 5) & 3, q = lane >> 3, i = lane & 7;
#pragma unroll
    for (int c = 0; c < NC; c++) {
        const float *x = d + c * 16;
        if (GATE_UP) {          /* rows r / r + 8: one output's gate / up; 8 outputs a warp, 4 groups of 8 rows */
            uint32_t r[4];
            if (a.epi_f2f) {
#pragma unroll
                for (int j = 0; j < 4; j++)
                    r[j] = moe_pack2<T>(moe_act_fast<T>(x[4 * j], x[4 * j + 2]),
                                      moe_act_fast<T>(x[4 * j + 1], x[4 * j + 3]));
            } else {
#pragma unroll
                for (int j = 0; j < 4; j++) r[j] = moe_act_fast2<T>(x[4 * j], x[4 * j + 1], x[4 * j + 2], x[4 * j + 3]);
            }
            asm volatile("stmatrix.sync.aligned.m8n8.x4.trans.shared.b16 [%0], {%1, %2, %3, %4};\n"
                         ::"r"(ring + (c * 32 + 8 * q + i) * PITCH + (32 * wg + 8 * warp) * 2), "r"(r[0]), "r"(r[1]),
                         "r"(r[2]), "r"(r[3]) : "memory");
        } else {                /* round(y) * round(w): the weight of the row's slot, for the thread's two rows */
            float w[8];   /* rows t, t + 1 (t even): one 32-bit pair of rounded weights, 0 past len */
#pragma unroll
            for (int j = 0; j < 4; j++)
                moe_unpack2<T>(pre_w2[(c * 32 + 8 * j + 2 * (lane & 3)) >> 1], w[2 * j], w[2 * j + 1]);
            const bool f2f = a.epi_f2f;
#pragma unroll
            for (int j = 0; j < 4; j++)   /* round(w) once (moe_scaled rounds it again: the same value) */
                moe_unpack2<T>(moe_pack2<T>(w[2 * j], w[2 * j + 1]), w[2 * j], w[2 * j + 1]);
#define SW_SC(k, m) (f2f ? moe_pack2<T>(moe_scaled<T>(x[k], w[m]), moe_scaled<T>(x[(k) + 1], w[(m) + 1])) \
                         : moe_scaled2<T>(x[k], x[(k) + 1], w[m], w[(m) + 1]))
#pragma unroll
            for (int j = 0; j < 4; j += 2)
                asm volatile("stmatrix.sync.aligned.m8n8.x4.trans.shared.b16 [%0], {%1, %2, %3, %4};\n"
                             ::"r"(ring + (c * 32 + 8 * (j + (q >> 1)) + i) * PITCH + (64 * wg + 16 * warp +
                                                                                        8 * (q & 1)) * 2),
                             "r"(SW_SC(4 * j, 2 * j)), "r"(SW_SC(4 * j + 2, 2 * j)), "r"(SW_SC(4 * j + 4, 2 * j + 2)),
                             "r"(SW_SC(4 * j + 6, 2 * j + 2))
                             : "memory");
#undef SW_SC
        }
    }
    asm volatile("bar.sync 1, 256;\n" ::: "memory");
    /* 16-byte stores: gate_up to act row row0 + t (sorted order), down to slot_out row sorted[row0 + t] */
    constexpr int VR = W_OUT / 8;
    T *C = static_cast<T *>(a.C);
    for (int v = threadIdx.x; v < len * VR; v += 256) {
        const int t = v / VR, col = v % VR;
        const int64_t n = col0 + col * 8;
        if (n >= a.N) continue;
        const int64_t row = GATE_UP ? row0 + t : (int64_t)pre_rows[t];
        *reinterpret_cast<uint4 *>(C + row * a.N + n) =
            *reinterpret_cast<const uint4 *>(ring_ptr + t * PITCH + col * 16);
    }
}

template <typename T, bool GATE_UP>
__global__ void __launch_bounds__(SW_THREADS, 1)
    moe_swap_kernel(const __grid_constant__ CUtensorMap tmA, const __grid_constant__ CUtensorMap tmA64,
                    const __grid_constant__ CUtensorMap tmA128, const __grid_constant__ CUtensorMap tmW,
                    moe_gemm_args a, int abox) {
    jamba_pdl_begin();
#if MOE_HAS_WGMMA
    int e, len;
    int64_t row0;
    if (!sw_chunk(a, blockIdx.y, &e, &row0, &len) || len <= 0) return;
    const int NC = (len + 31) / 32, KT = (int)((a.Kd + WG_BK - 1) / WG_BK);
    extern __shared__ unsigned char sw_smem[];
    const uint32_t ring = (smem_u32(sw_smem) + 1023u) & ~1023u;
    unsigned char *ring_ptr = sw_smem + (ring - smem_u32(sw_smem));
    const uint32_t full = ring + SW_STAGES * SW_STAGE_BYTES, empty = full + 8 * SW_STAGES;
    if (threadIdx.x == 0) {
        for (int st = 0; st < SW_STAGES; st++) {
            mbar_init(full + 8 * st, 1);
            mbar_init(empty + 8 * st, 2);      /* (one arrival a consumer warpgroup) */
        }
        asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
    }
    __syncthreads();
    if (threadIdx.x >= 256) {                  /* the producer warpgroup; thread 256 issues */
        asm volatile("setmaxnreg.dec.sync.aligned.u32 40;\n");
        if (!GATE_UP && (threadIdx.x >> 5) == 9) {   /* warp 9: the chunk's rows and weights for down's epilogue */
            int *rows = reinterpret_cast<int *>(ring_ptr + SW_EPI_OFF);
            uint16_t *w16 = reinterpret_cast<uint16_t *>(ring_ptr + SW_EPI_OFF + SW_MAX_ROWS * 4);
            for (int t = threadIdx.x & 31; t < NC * 32; t += 32) {
                int r = 0;
                float wv = 0.f;
                if (t < len) {
                    r = a.sorted[row0 + t];
                    wv = a.weights[r];
                }
                rows[t] = r;
                w16[t] = (uint16_t)(moe_pack2<T>(wv, 0.f) & 0xffffu);   /* round(w) as T, the lower half */
            }
            asm volatile("bar.arrive 2, 288;\n" ::: "memory");
        }
        if (threadIdx.x == 256) {
            const int wrow = GATE_UP ? (int)(e * a.w_rows + 64 * (int64_t)blockIdx.x)
                                     : (int)(e * a.w_rows + 128 * (int64_t)blockIdx.x);
            for (int kt = 0; kt < KT; kt++) {
                const int s = kt % SW_STAGES;
                if (kt >= SW_STAGES) mbar_wait(empty + 8 * s, ((kt / SW_STAGES) - 1) & 1);
                const uint32_t sa = ring + s * SW_STAGE_BYTES, fb = full + 8 * s;
                mbar_expect_tx(fb, SW_A_BYTES + NC * 32 * WG_BK * 2);
                if (GATE_UP) tma_load_3d(sa, &tmW, kt * WG_BK, wrow, fb);
                else tma_load_2d(sa, &tmW, kt * WG_BK, wrow, fb);
                /* the NC chunks in boxes of up to abox chunks (4: 128 rows, 2: 64, else 32), the largest first */
                for (int c = 0; c < NC;) {
                    const int left = NC - c, g = (abox >= 4 && left >= 4) ? 4 : (abox >= 2 && left >= 2) ? 2 : 1;
                    const CUtensorMap *m = g == 4 ? &tmA128 : g == 2 ? &tmA64 : &tmA;
                    tma_load_2d(sa + SW_A_BYTES + c * 32 * 128, m, kt * WG_BK, (int)(row0 + 32 * c), fb);
                    c += g;
                }
            }
        }
        return;
    }
    asm volatile("setmaxnreg.inc.sync.aligned.u32 232;\n");
    const int64_t col0 = GATE_UP ? 64 * (int64_t)blockIdx.x : 128 * (int64_t)blockIdx.x;
#define SW_CASE(N)                                                                                                  \
    case N: sw_consume<T, GATE_UP, N>(a, ring, ring_ptr, full, empty, row0, len, col0, KT); break;
    switch (NC) {
        SW_CASE(1) SW_CASE(2) SW_CASE(3) SW_CASE(4) SW_CASE(5) SW_CASE(6) SW_CASE(7) SW_CASE(8) SW_CASE(9)
    default: sw_consume<T, GATE_UP, 10>(a, ring, ring_ptr, full, empty, row0, len, col0, KT); break;
    }
#undef SW_CASE
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

int moe_wgmma_coords_fit(int64_t E, int64_t w_rows, int64_t slots) {
    return E * w_rows + 2 * WG_BN <= INT32_MAX && slots + WG_BM <= INT32_MAX;
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
        /* ptxVersion too: a PTX build for an older architecture (JAMBA_EXT_PTX) compiles these kernels empty, and the
         * driver's compilation of that PTX for this GPU still reports binaryVersion 90 */
        st = (ok && major == 9 && fa.binaryVersion >= 90 && fa.ptxVersion >= 90 && wt_encoder() != NULL) ? 1 : -1;
        if (dev >= 0 && dev < 64) avail[dev] = st;
    }
    return st > 0;
}

/* a (rows, cols) row-major 2-byte tensor, boxes of 64 columns x box_rows rows, 128-byte swizzle; pair > 0: a 3-d
 * view (cols, rows, 2) whose third coordinate adds pair rows, so that one box brings box_rows rows and the
 * box_rows rows pair further (gate_up: gate rows and their up rows; rows = E * 2F - F keeps row + pair inside the
 * tensor, and the gate rows of the last expert's outputs >= F, which only feed skipped outputs, read as zeros).
 * bytes: a tensor of 1-byte elements (e4m3 weights), not swizzled (a box row of 64 bytes at 64-byte steps). */
static jamba_status wt_map(CUtensorMap *m, int dtype, const void *ptr, int64_t rows, int64_t cols, int box_rows,
                           int64_t pair = 0, bool bytes = false) {
    wt_encode_fn enc = wt_encoder();
    if (!enc) return jamba_set_error(JAMBA_ERR_UNSUPPORTED, "jamba.moe_experts: impl wgmma: cuTensorMapEncodeTiled "
                                     "is not available from this driver");
    const int eb = bytes ? 1 : 2;
    const cuuint64_t dims[3] = {(cuuint64_t)cols, (cuuint64_t)rows, 2};
    const cuuint64_t strides[2] = {(cuuint64_t)cols * eb, (cuuint64_t)(pair * cols * eb)};
    const cuuint32_t box[3] = {WG_BK, (cuuint32_t)box_rows, 2}, es[3] = {1, 1, 1};
    const CUtensorMapDataType dt = bytes ? CU_TENSOR_MAP_DATA_TYPE_UINT8
                                   : dtype == JAMBA_F16 ? CU_TENSOR_MAP_DATA_TYPE_FLOAT16
                                   : dtype == JAMBA_U8  ? CU_TENSOR_MAP_DATA_TYPE_UINT16 /* byte pairs (W8A8) */
                                                        : CU_TENSOR_MAP_DATA_TYPE_BFLOAT16;
    const CUresult r = enc(m, dt, pair > 0 ? 3 : 2, const_cast<void *>(ptr), dims, strides, box, es,
                           CU_TENSOR_MAP_INTERLEAVE_NONE, bytes ? CU_TENSOR_MAP_SWIZZLE_NONE : CU_TENSOR_MAP_SWIZZLE_128B,
                           CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
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

/* one launch of moe_wgmma_persist_kernel<T, ..., Q8>: a CTA per SM, or fewer when the tile bound is smaller.
 * Q8 (moe_wgmma_gemm_q8): A and W hold e4m3 bytes, seen by the tensor maps and the kernel as 2-byte elements (a.Kd
 * of them a row: the caller's Kd / 2), so that a k tile is the bf16 kernel's 128 bytes; no merged tiles. */
template <typename T, bool Q8 = false>
static jamba_status wgmma_launch_persist(int dtype, const moe_gemm_args &a, int64_t slots, int dev,
                                         const CUtensorMap &tmW, cudaStream_t stream) {
    using C = wt_cfg<WT_ALL>;
    static int sms[64]; /* SM count (0: not read yet); the dynamic shared-memory limit raised with it */
    int nsm = dev >= 0 && dev < 64 ? sms[dev] : 0;
    if (nsm == 0) {
        JAMBA_CUDA_CHECK(cudaFuncSetAttribute(moe_wgmma_persist_kernel<T, false, false, Q8>,
                                              cudaFuncAttributeMaxDynamicSharedMemorySize, WP_SMEM));
        JAMBA_CUDA_CHECK(cudaFuncSetAttribute(moe_wgmma_persist_kernel<T, true, false, Q8>,
                                              cudaFuncAttributeMaxDynamicSharedMemorySize, WP_EO_SMEM));
        if (!Q8)
            JAMBA_CUDA_CHECK(cudaFuncSetAttribute(moe_wgmma_persist_kernel<T, false, true>,
                                                  cudaFuncAttributeMaxDynamicSharedMemorySize, WP_MG_SMEM));
        JAMBA_CUDA_CHECK(cudaDeviceGetAttribute(&nsm, cudaDevAttrMultiProcessorCount, dev));
        if (dev >= 0 && dev < 64) sms[dev] = nsm;
    }
    const int mdt = Q8 ? JAMBA_U8 : dtype; /* the maps' element type (Q8: byte pairs) */
    CUtensorMap tmA, tmA64; /* A in 128-row boxes (full tiles) and in 64-row boxes (half tiles) */
    JAMBA_TRY(wt_map(&tmA, mdt, a.A, slots, a.Kd, C::BM));
    JAMBA_TRY(wt_map(&tmA64, mdt, a.A, slots, a.Kd, 64));
    const int64_t n_tiles = jamba_ceil_div(a.N, a.gate_up ? WG_BN / 2 : WG_BN);
    const int64_t bound = (jamba_ceil_div(slots, WG_BM) + a.E) * n_tiles; /* tiles of the expert-major order */
    const int64_t grid = bound < nsm ? bound : nsm;
    moe_gemm_args ap = a; /* half tiles by size (see wp_tile); env JAMBA_EXT_WGMMA_HALF=0 / 1 forces them off / on */
    const char *half = getenv("JAMBA_EXT_WGMMA_HALF");
    /* Q8 (W8A8): at every size; against the bf16 rule (from 384 slots per expert), Jamba-v0.1, whole op, us, on / off
     * (w8a8_ab_79b13cf.log): 64 tokens 756 / 870, 256: 792 / 870, 1024: 1115 / 1160, 2048: 1741 / 1782, 4096: 3217 /
     * 3496, 16384: 11797 / 11642 (the default, on, read 11597 in the same run: noise) */
    /* down: from MOE_WGMMA_HALF_DOWN_MIN_SLOTS_PER_EXPERT; env "b": in both GEMMs from 384 (the rule before session
     * 66), "g": in gate_up only (A/B), "G": gate_up's at every size, down's by its rule (A/B, session 67) */
    const bool both = half != NULL && half[0] == 'b', gonly = half != NULL && half[0] == 'g';
    const bool gforce = half != NULL && half[0] == 'G' && a.gate_up;
    ap.half_tiles = Q8 || gforce || slots >= (int64_t)MOE_WGMMA_HALF_MIN_SLOTS_PER_EXPERT * a.E;
    if (!Q8 && !a.gate_up && !both && (gonly || slots < (int64_t)MOE_WGMMA_HALF_DOWN_MIN_SLOTS_PER_EXPERT * a.E))
        ap.half_tiles = false;
    if (half != NULL && (half[0] == '0' || half[0] == '1')) ap.half_tiles = half[0] == '1';
    /* merged tiles (wp_tile, NA = 192; the MG kernel has no half tiles and no epilogue warps) by size, see
     * MOE_WGMMA_MERGE_MIN_SLOTS_PER_EXPERT; env JAMBA_EXT_MOE_MERGE=0 / 1 forces them off / on */
    const char *merge = getenv("JAMBA_EXT_MOE_MERGE");
    bool mg = slots >= (int64_t)MOE_WGMMA_MERGE_MIN_SLOTS_PER_EXPERT * a.E &&
              slots < (int64_t)MOE_WGMMA_MERGE_MAX_SLOTS_PER_EXPERT * a.E;
    if (merge != NULL && (merge[0] == '0' || merge[0] == '1')) mg = merge[0] == '1';
    const char *epi = getenv("JAMBA_EXT_MOE_EPI"); /* "0": no epilogue warps (A/B; wp_epi) */
    if (mg && !Q8)
        jamba_kernel_launch(moe_wgmma_persist_kernel<T, false, true>, (unsigned)grid, WP_MG_THREADS, WP_MG_SMEM, stream,
            tmA, tmA64, tmW, ap, n_tiles);
    else if (epi != NULL && epi[0] == '0')
        jamba_kernel_launch(moe_wgmma_persist_kernel<T, false, false, Q8>, (unsigned)grid, WP_THREADS, WP_SMEM, stream,
            tmA, tmA64, tmW, ap, n_tiles);
    else
        jamba_kernel_launch(moe_wgmma_persist_kernel<T, true, false, Q8>, (unsigned)grid, WP_EO_THREADS, WP_EO_SMEM,
            stream, tmA, tmA64, tmW, ap, n_tiles);
    JAMBA_LAUNCH_CHECK("moe_wgmma_persist_kernel", stream);
    return JAMBA_OK;
}

/* The swap-AB engine (moe_swap_kernel) for this GEMM? Env JAMBA_EXT_MOE_SWAP, read at each call: "1" yes, "0" no; unset
 * (or any other value): from MOE_SWAP_MIN_SLOTS_PER_EXPERT to below MOE_SWAP_MAX_SLOTS_PER_EXPERT slots per expert on
 * average, and in down also from MOE_SWAP_DOWN_MIN_SLOTS_PER_EXPERT to below MOE_SWAP_DOWN_MAX_SLOTS_PER_EXPERT; "g" /
 * "d" in gate_up / down only. Never where its chunk grid would pass 65535 rows. Measured on H200s (whole op,
 * Jamba-v0.1, bf16, bench_moe's routing, in turns; swap / the 128 x 256 tiles, median us; s54_swap_3fd9460.log, then
 * s54_swaprule_6f4cb27.log on a slower machine): 512 tokens (32 slots an expert) 1467 / 1387; 1024 (128) 1641 / 1584,
 * 1644 / 1554; 1280 (160) 1850 / 1741; 1536 (192) 1953 / 2152, 2087 / 2273; 2048 (256) 2349 / 2563 (77.1% / 70.6% of
 * the matmul rate), 2489 / 2687; 2304 (288) 3115 / 3360; 2560 (320: some experts in two chunks, two W passes) 3652 /
 * 3369; 3072 (384) 4102 / 3677; 4096 5086 / 4822; 8192 10455 / 9362. It wins where an expert's rows fit one chunk and
 * the 128-row tiles would leave many idle: 192-288 slots an expert. f16 too since session 56 (its gate_up instance
 * spilled before): swap / tiles in turns (s56_f16_19e9b7b.log, dev/moe_epi_ab.py swapf16), 1280 tokens 2082 / 1843,
 * 1536 2284 / 2399, 2048 2828 / 2889, 2304 3224 / 3533, 2560 3840 / 3640 us: the same bounds. */
#define MOE_SWAP_MIN_SLOTS_PER_EXPERT 176
#define MOE_SWAP_MAX_SLOTS_PER_EXPERT 304
/* The down GEMM also from MOE_SWAP_DOWN_MIN to below MOE_SWAP_DOWN_MAX_SLOTS_PER_EXPERT (368-607 on average: 2944-4863
 * tokens at E 16, top-2; session 67), gate_up there on the 128 x 256 tiles. There down's tiles have no half tiles
 * (MOE_WGMMA_HALF_DOWN_MIN_SLOTS_PER_EXPERT), so an expert's last tile runs mostly idle rows, while the swap engine
 * pads an expert's rows to 32 at the price of a second W pass (two chunks). bench_moe, whole op, in turns, one H200
 * (the same-work dense mm at 85% of the 8192^3 rate), us, tiles in both GEMMs / the swap engine in down
 * (s67_swapmix_ddeffef.log, s67_swapd_a50598c.log; six runs at 3072-4096 and 5120, four at 2816 and 4608, two at
 * 2560), medians: 2560 tokens 3176 / 3189, 2816 3117 / 3186, 3072 3666 / 3571, 3584 4246 / 4200, 4096 4831 / 4742,
 * 4608 5317 / 5194, 5120 5806 / 5824; gate_up on the swap engine lost 1-5% at every size from 3072. */
#define MOE_SWAP_DOWN_MIN_SLOTS_PER_EXPERT 368
#define MOE_SWAP_DOWN_MAX_SLOTS_PER_EXPERT 608
static bool moe_swap_on(const moe_gemm_args &a, int64_t slots) {
    if (a.E + jamba_ceil_div(slots, SW_MAX_ROWS) > 65535) return false;
    const char *env = getenv("JAMBA_EXT_MOE_SWAP");
    if (env != NULL && (env[0] == '0' || env[0] == '1') && env[1] == '\0') return env[0] == '1';
    /* A/B (session 67): "g" / "d" the swap engine in gate_up / in down only, the 128 x 256 tiles in the other */
    if (env != NULL && (env[0] == 'g' || env[0] == 'd') && env[1] == '\0') return (env[0] == 'g') == (a.gate_up != 0);
    if (!a.gate_up && slots >= (int64_t)MOE_SWAP_DOWN_MIN_SLOTS_PER_EXPERT * a.E &&
        slots < (int64_t)MOE_SWAP_DOWN_MAX_SLOTS_PER_EXPERT * a.E)
        return true;
    return slots >= (int64_t)MOE_SWAP_MIN_SLOTS_PER_EXPERT * a.E &&
           slots < (int64_t)MOE_SWAP_MAX_SLOTS_PER_EXPERT * a.E;
}

/* one launch of moe_swap_kernel: grid (W blocks, the chunk bound E + ceil(slots / SW_MAX_ROWS)) */
template <typename T>
static jamba_status swap_launch(int dtype, const moe_gemm_args &a, int64_t slots, int dev, const CUtensorMap &tmW,
                                cudaStream_t stream) {
    static int smem_set[64]; /* dynamic shared-memory limit raised on this device */
    if (dev < 0 || dev >= 64 || !smem_set[dev]) {
        JAMBA_CUDA_CHECK(cudaFuncSetAttribute(moe_swap_kernel<T, true>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                              SW_SMEM));
        JAMBA_CUDA_CHECK(cudaFuncSetAttribute(moe_swap_kernel<T, false>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                              SW_SMEM));
        if (dev >= 0 && dev < 64) smem_set[dev] = 1;
    }
    /* the largest A box in chunks (env JAMBA_EXT_MOE_SWAP_ABOX=32|64 for the A/B: rows a load; default 128) */
    const char *ab_env = getenv("JAMBA_EXT_MOE_SWAP_ABOX");
    const int abox = ab_env == NULL ? 4 : !strcmp(ab_env, "32") ? 1 : !strcmp(ab_env, "64") ? 2 : 4;
    CUtensorMap tmA, tmA64, tmA128;   /* token rows in boxes of 32, 64, 128 (the maps a kernel does not use: copies) */
    JAMBA_TRY(wt_map(&tmA, dtype, a.A, slots, a.Kd, 32));
    tmA64 = tmA128 = tmA;
    if (abox >= 2) JAMBA_TRY(wt_map(&tmA64, dtype, a.A, slots, a.Kd, 64));
    if (abox >= 4) JAMBA_TRY(wt_map(&tmA128, dtype, a.A, slots, a.Kd, 128));
    const dim3 grid((unsigned)jamba_ceil_div(a.N, a.gate_up ? 64 : 128),
                    (unsigned)(a.E + jamba_ceil_div(slots, SW_MAX_ROWS)));
    jamba_kernel_launch(a.gate_up ? moe_swap_kernel<T, true> : moe_swap_kernel<T, false>, grid, SW_THREADS, SW_SMEM,
                        stream, tmA, tmA64, tmA128, tmW, a, abox);
    JAMBA_LAUNCH_CHECK("moe_swap_kernel", stream);
    return JAMBA_OK;
}

template <typename T>
static jamba_status wgmma_launch(int dtype, const moe_gemm_args &a, int64_t slots, int dev, cudaStream_t stream) {
    if (!moe_wgmma_available(dev))
        return jamba_set_error(JAMBA_ERR_UNSUPPORTED, "jamba.moe_experts: impl wgmma needs a Hopper GPU (sm_90), "
                               "a build with sm_90a code (JAMBA_EXT_ARCHS containing 90) and a driver with "
                               "cuTensorMapEncodeTiled (CUDA 12+)");
    if (!moe_wgmma_coords_fit(a.E, a.w_rows, slots))
        return jamba_set_error(JAMBA_ERR_ARG, "jamba.moe_experts: impl wgmma: E * rows of W and the token slots "
                               "must stay below 2^31 (TMA coordinates); use impl mma");
    CUtensorMap tmW;
    if (a.gate_up) JAMBA_TRY(wt_map(&tmW, dtype, a.W, (int64_t)a.E * a.w_rows - a.N, a.Kd, WG_WBOX, a.N));
    else JAMBA_TRY(wt_map(&tmW, dtype, a.W, (int64_t)a.E * a.w_rows, a.Kd, 2 * WG_WBOX));
    if (moe_swap_on(a, slots))
        return swap_launch<T>(dtype, a, slots, dev, tmW, stream);
    /* tile modes by size (see WT_TAIL): the tiles without the <= 64-row tails, then the tails as 64 x 512 tiles
     * (a second launch; disjoint outputs) while the average expert has at most 16 slots */
    const char *force = getenv("JAMBA_EXT_WGMMA_TILES");
    bool tails = slots <= (int64_t)MOE_WGMMA_TAIL_MAX_SLOTS_PER_EXPERT * a.E;
    if (force != NULL && !strcmp(force, "all")) tails = false;
    if (force != NULL && !strcmp(force, "tail")) tails = true;
    if (tails) {
        JAMBA_TRY((wgmma_launch_mode<T, WT_FULL>(dtype, a, slots, dev, tmW, stream)));
        return wgmma_launch_mode<T, WT_TAIL>(dtype, a, slots, dev, tmW, stream);
    }
    const char *persist = getenv("JAMBA_EXT_WGMMA_PERSIST"); /* "0": the non-persistent kernel (A/B) */
    if (a.sched != NULL && a.Kd > 0 && !(persist != NULL && persist[0] == '0'))
        return wgmma_launch_persist<T>(dtype, a, slots, dev, tmW, stream);
    return wgmma_launch_mode<T, WT_ALL>(dtype, a, slots, dev, tmW, stream);
}

/* moe_wgmma_f8ws_kernel over every tile of the expert-major order (tile bound ceil(slots / 128) + E rows) */
template <typename T>
static jamba_status wgmma_f8_launch(int dtype, const moe_gemm_args &a, int64_t slots, int dev, cudaStream_t stream) {
    static int smem_set[64]; /* dynamic shared-memory limit raised on this device */
    if (dev < 0 || dev >= 64 || !smem_set[dev]) {
        JAMBA_CUDA_CHECK(cudaFuncSetAttribute(moe_wgmma_f8ws_kernel<T>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                              WS_SMEM));
        if (dev >= 0 && dev < 64) smem_set[dev] = 1;
    }
    CUtensorMap tmA, tmW;
    JAMBA_TRY(wt_map(&tmA, dtype, a.A, slots, a.Kd, WG_BM));
    if (a.gate_up) JAMBA_TRY(wt_map(&tmW, dtype, a.W, (int64_t)a.E * a.w_rows - a.N, a.Kd, WG_WBOX, a.N, true));
    else JAMBA_TRY(wt_map(&tmW, dtype, a.W, (int64_t)a.E * a.w_rows, a.Kd, 2 * WG_WBOX, 0, true));
    const int64_t n_tiles = jamba_ceil_div(a.N, a.gate_up ? WG_BN / 2 : WG_BN);
    const int64_t blocks = (jamba_ceil_div(slots, WG_BM) + a.E) * n_tiles;
    jamba_kernel_launch(moe_wgmma_f8ws_kernel<T>, (unsigned)blocks, WS_THREADS, WS_SMEM, stream, tmA, tmW, a, n_tiles);
    JAMBA_LAUNCH_CHECK("moe_wgmma_f8ws_kernel", stream);
    return JAMBA_OK;
}

jamba_status moe_wgmma_gemm_f8(int dtype, const moe_gemm_args &a, int64_t slots, int device, cudaStream_t stream) {
    if (slots == 0) return JAMBA_OK;
    if (!moe_wgmma_available(device))
        return jamba_set_error(JAMBA_ERR_UNSUPPORTED, "jamba.moe_experts_fp8: the wgmma kernel needs a Hopper GPU "
                               "(sm_90) and a build with sm_90a code");
    if (!moe_wgmma_coords_fit(a.E, a.w_rows, slots) || a.Kd % 16 != 0)
        return jamba_set_error(JAMBA_ERR_ARG, "jamba.moe_experts_fp8: the wgmma kernel needs E * rows of W and the "
                               "token slots below 2^31 and K a multiple of 16");
    if (dtype == JAMBA_BF16) return wgmma_f8_launch<__nv_bfloat16>(dtype, a, slots, device, stream);
    if (dtype == JAMBA_F16) return wgmma_f8_launch<__half>(dtype, a, slots, device, stream);
    return jamba_set_error(JAMBA_ERR_UNSUPPORTED, "jamba.moe_experts_fp8: the wgmma kernel takes bf16 / f16 x");
}

jamba_status moe_wgmma_gemm_q8(int dtype, const moe_gemm_args &a, int64_t slots, int device, cudaStream_t stream) {
    if (slots == 0) return JAMBA_OK;
    if (!moe_wgmma_available(device))
        return jamba_set_error(JAMBA_ERR_UNSUPPORTED, "jamba.moe_experts_fp8: fp8 activations (act_fp8) need a Hopper "
                               "GPU (sm_90) and a build with sm_90a code");
    if (!moe_wgmma_coords_fit(a.E, a.w_rows, slots) || a.Kd % 16 != 0 || a.Kd == 0 || a.sched == NULL ||
        a.ascale == NULL || a.wscale == NULL)
        return jamba_set_error(JAMBA_ERR_ARG, "jamba.moe_experts_fp8: the W8A8 kernel needs E * rows of W and the "
                               "token slots below 2^31, K a positive multiple of 16, the scales and the tile counter");
    moe_gemm_args ap = a;
    ap.Kd = a.Kd / 2; /* byte pairs: see wgmma_launch_persist */
    CUtensorMap tmW;
    if (a.gate_up) JAMBA_TRY(wt_map(&tmW, JAMBA_U8, a.W, (int64_t)a.E * a.w_rows - a.N, ap.Kd, WG_WBOX, a.N));
    else JAMBA_TRY(wt_map(&tmW, JAMBA_U8, a.W, (int64_t)a.E * a.w_rows, ap.Kd, 2 * WG_WBOX));
    if (dtype == JAMBA_BF16) return wgmma_launch_persist<__nv_bfloat16, true>(dtype, ap, slots, device, tmW, stream);
    if (dtype == JAMBA_F16) return wgmma_launch_persist<__half, true>(dtype, ap, slots, device, tmW, stream);
    return jamba_set_error(JAMBA_ERR_UNSUPPORTED, "jamba.moe_experts_fp8: the W8A8 kernel writes bf16 / f16");
}

jamba_status moe_gather_rows(int dtype, void *xs, const void *x, const int32_t *sorted, int topk, int64_t slots,
                             int64_t H, int32_t *sched, cudaStream_t stream) {
    if (slots == 0 || H == 0) return JAMBA_OK;
    if (dtype == JAMBA_BF16)
        jamba_kernel_launch(moe_gather_rows_kernel<__nv_bfloat16>, (unsigned)jamba_ceil_div(slots, 8), 256, 0, stream,
            (__nv_bfloat16 *)xs, (const __nv_bfloat16 *)x, sorted, topk, slots, H, sched);
    else
        jamba_kernel_launch(moe_gather_rows_kernel<__half>, (unsigned)jamba_ceil_div(slots, 8), 256, 0, stream,
            (__half *)xs, (const __half *)x, sorted, topk, slots, H, sched);
    JAMBA_LAUNCH_CHECK("moe_gather_rows_kernel", stream);
    return JAMBA_OK;
}

jamba_status moe_wgmma_gemm(int dtype, const moe_gemm_args &a, int64_t slots, int device, cudaStream_t stream) {
    if (slots == 0) return JAMBA_OK;
    moe_gemm_args ae = a;
    const char *epi = getenv("JAMBA_EXT_MOE_EPI_F2F"); /* "1": a conversion a value in the epilogues (A/B) */
    ae.epi_f2f = epi != NULL && epi[0] == '1';
    if (dtype == JAMBA_BF16) return wgmma_launch<__nv_bfloat16>(dtype, ae, slots, device, stream);
    if (dtype == JAMBA_F16) return wgmma_launch<__half>(dtype, ae, slots, device, stream);
    return jamba_set_error(JAMBA_ERR_UNSUPPORTED, "jamba.moe_experts: impl wgmma needs bf16/f16");
}
