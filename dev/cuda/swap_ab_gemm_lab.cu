/* swap_ab_gemm_lab.cu -- session 54: a swap-AB grouped GEMM as the MoE's expert GEMMs would run it, a lab: is the
 * whole tile (TMA ring, A in registers, token chunks, transposed epilogue) as fast as its tensor pipe
 * (dev/cuda/swap_ab_lab.cu: n32 chunks with A in registers at the m64n256 tile's rate)?
 *
 *   nvcc -O3 -std=c++17 -gencode arch=compute_90a,code=sm_90a -Xptxas -v dev/cuda/swap_ab_gemm_lab.cu \
 *        -o /tmp/swap_gemm && /tmp/swap_gemm
 *
 * E = 16 experts; W (E, MW, K) bf16; X (S, K) bf16, the slots sorted by expert (expert e's rows off[e] ..
 * off[e + 1]). Three GEMMs, Jamba-v0.1's (hidden 4096, FFN F = 14336):
 *   plain    gate_up without its product: MW = 2F, K = 4096, out (S, 2F) = X W[e]^T
 *   silu     gate_up fused: W[e] rows [0, F) gate, [F, 2F) up; out (S, F) = SiLU(X Wg^T) * (X Wu^T)
 *   down     MW = 4096, K = F, out (S, 4096) = X W[e]^T (the op would then scale by the router weight)
 * One CTA a tile (e, a W row block, all of e's <= 320 slots), 384 threads: warpgroups 0-1 consume (setmaxnreg 232:
 * 160 accumulators at 10 chunks; A = 64 W rows each by ldmatrix.x4 into registers, B = the slots in NC = ceil(n /
 * 32) chunks of 32, wgmma m64n32k16, NC chosen by a switch at the tile's start), warpgroup 2 (setmaxnreg 40)
 * produces (TMA: two 64 x 64 W boxes and NC 32 x 64 slot boxes a k tile, 128-byte swizzle, a ring of STAGES stages of
 * 56 KB, full / empty mbarriers). The W block: plain / down, 128 consecutive rows; silu, the gate rows of 64 outputs
 * and their up rows, and ldmatrix gives each warp's 16 fragment rows as 8 gate rows and the same outputs' 8 up rows,
 * so a thread's accumulator rows r and r + 8 are one output's gate and up: SiLU(g) * u in the thread, 64 outputs a
 * tile. Epilogue: bf16, stored transposed into shared memory by stmatrix.x4.trans (a slot's outputs contiguous),
 * then 16-byte stores to out.
 * Checked at 2000 random (s, output) against float64 dot products: plain / down, the bf16 result within 1 ulp of the
 * exact value (fp32 sums in another order may round the other way at a tie's edge); silu, within 2 ulps of
 * SiLU(g) * u computed from the exact g and u. Timed as the median of 9 launches: useful TFLOP/s (2 S MW K).
 */
#include <cuda.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <vector>

#define E 16
#define F 14336
#define BK 64
#define NCMAX 10
#define STAGES 4
#define A_BYTES (128 * BK * 2)                      /* 16 KB: 128 W rows */
#define B_BYTES (NCMAX * 32 * BK * 2)               /* 40 KB: up to 320 slots */
#define STAGE_BYTES (A_BYTES + B_BYTES)
#define SMEM_BYTES (STAGES * STAGE_BYTES + 1024 + 64) /* (1024: alignment) */
#define OUT_PITCH 272                               /* bytes a slot row of the epilogue's 128 outputs (+16: banks) */
#define THREADS 384

#define CK(x) do { cudaError_t e_ = (x); if (e_ != cudaSuccess) { printf("%s: %s\n", #x, cudaGetErrorString(e_)); exit(1); } } while (0)

__device__ __forceinline__ uint64_t desc(uint32_t saddr) {
    return (uint64_t)((saddr & 0x3FFFF) >> 4) | ((uint64_t)1 << 16) | ((uint64_t)(1024 >> 4) << 32) |
           ((uint64_t)1 << 62);
}
__device__ __forceinline__ void fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
template <int N> __device__ __forceinline__ void wait() {
    asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}
template <int OFF, int NA>
__device__ __forceinline__ void mma_rs32(float (&d)[NA], const uint32_t (&a)[4], uint64_t db) {
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %21, 0;\n" "wgmma.mma_async.sync.aligned.m64n32k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15}, {%16, %17, %18, %19}, %20, p, 1, 1, 0;" "\n}\n"
                 : "+f"(d[OFF + 0]), "+f"(d[OFF + 1]), "+f"(d[OFF + 2]), "+f"(d[OFF + 3]), "+f"(d[OFF + 4]), "+f"(d[OFF + 5]), "+f"(d[OFF + 6]), "+f"(d[OFF + 7]), "+f"(d[OFF + 8]), "+f"(d[OFF + 9]), "+f"(d[OFF + 10]), "+f"(d[OFF + 11]), "+f"(d[OFF + 12]), "+f"(d[OFF + 13]), "+f"(d[OFF + 14]), "+f"(d[OFF + 15]) : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db), "r"(1));
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
__device__ __forceinline__ void mbar_wait(uint32_t bar, uint32_t parity) {
    uint32_t done = 0;
    while (!done)
        asm volatile("{\n.reg .pred p;\nmbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\nselp.u32 %0, 1, 0, p;\n}\n"
                     : "=r"(done) : "r"(bar), "r"(parity) : "memory");
}
__device__ __forceinline__ void tma_load_2d(uint32_t dst, const CUtensorMap *map, int c0, int c1, uint32_t bar) {
    asm volatile("cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3}], [%4];\n"
                 ::"r"(dst), "l"(reinterpret_cast<uint64_t>(map)), "r"(c0), "r"(c1), "r"(bar) : "memory");
}

/* A fragment (the warpgroup's 64 W rows, k16 step kk of the stage's 64 k) by ldmatrix.x4 from the two swizzled 64-row
 * boxes at sa (rows 0-63, then 64-127 at sa + 8192). Fragment row fr of warp q in warpgroup wg reads stage row
 * 64 wg + 16 q + fr; SILU: the gate row 32 wg + 8 q + fr (fr < 8) or the same output's up row 64 + 32 wg + 8 q + fr - 8. */
template <bool SILU> __device__ __forceinline__ void load_a(uint32_t (&a)[4], uint32_t sa, int kk) {
    const int lane = threadIdx.x & 31, warp = (threadIdx.x >> 5) & 3, wg = threadIdx.x >> 7, fr = lane & 15;
    const int r = SILU ? (fr < 8 ? 32 * wg + 8 * warp + fr : 64 + 32 * wg + 8 * warp + fr - 8) : 64 * wg + 16 * warp + fr;
    const int kc = kk * 2 + (lane >> 4);
    const uint32_t addr = sa + (r >> 3) * 1024 + (r & 7) * 128 + ((kc ^ (r & 7)) << 4);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(a[0]), "=r"(a[1]), "=r"(a[2]), "=r"(a[3]) : "r"(addr));
}
__device__ __forceinline__ uint32_t pack(float lo, float hi) {
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<uint32_t *>(&v);
}
/* the accumulators stay in registers, and no instruction that writes them moves inside a wgmma group (ptxas C7515) */
template <int NA> __device__ __forceinline__ void pin(float (&d)[NA]) {
#pragma unroll
    for (int i = 0; i < NA; i++) asm volatile("" : "+f"(d[i])::"memory");
}
__device__ __forceinline__ float silu(float g) { return g / (1.f + expf(-g)); }

extern __shared__ unsigned char smem_raw[];

/* the consumers' whole tile with NC chunks: mainloop, then the epilogue (all 256 consumer threads). out (S, ocols):
 * the tile's outputs are columns col0 .. col0 + 127 (SILU: 63) of rows row0 .. row0 + len - 1. */
template <int NC, bool SILU>
__device__ __forceinline__ void consume(uint32_t ring, uint32_t bars, unsigned char *ring_ptr, __nv_bfloat16 *out,
                                       int64_t row0, int len, int ocols, int col0, int KT) {
    constexpr int NA = NC * 16;
    const int wg = threadIdx.x >> 7;
    float d[NA];
#pragma unroll
    for (int i = 0; i < NA; i++) d[i] = 0.f;
    uint32_t a[2][4];
    int kt = 0;
    do {
        const int s = kt % STAGES;
        mbar_wait(bars + s * 8, (kt / STAGES) & 1);
        const uint32_t sa = ring + s * STAGE_BYTES, sb = sa + A_BYTES;
#pragma unroll
        for (int kk = 0; kk < 4; kk++) {
            load_a<SILU>(a[kk & 1], sa, kk);
            pin(d);
            fence();
#pragma unroll
            for (int c = 0; c < NC; c++) {
                const uint64_t db = desc(sb + c * 4096 + kk * 32);
                switch (c) {
                case 0: mma_rs32<0, NA>(d, a[kk & 1], db); break;
                case 1: mma_rs32<(1 < NC ? 16 : 0), NA>(d, a[kk & 1], db); break;
                case 2: mma_rs32<(2 < NC ? 32 : 0), NA>(d, a[kk & 1], db); break;
                case 3: mma_rs32<(3 < NC ? 48 : 0), NA>(d, a[kk & 1], db); break;
                case 4: mma_rs32<(4 < NC ? 64 : 0), NA>(d, a[kk & 1], db); break;
                case 5: mma_rs32<(5 < NC ? 80 : 0), NA>(d, a[kk & 1], db); break;
                case 6: mma_rs32<(6 < NC ? 96 : 0), NA>(d, a[kk & 1], db); break;
                case 7: mma_rs32<(7 < NC ? 112 : 0), NA>(d, a[kk & 1], db); break;
                case 8: mma_rs32<(8 < NC ? 128 : 0), NA>(d, a[kk & 1], db); break;
                case 9: mma_rs32<(9 < NC ? 144 : 0), NA>(d, a[kk & 1], db); break;
                }
            }
            commit();
            wait<1>();
            pin(d);
            /* the previous k16 group is done: at kk == 0 that was the previous stage's last, so it is free */
            if (kk == 0 && kt > 0 && (threadIdx.x & 127) == 0) mbar_arrive(bars + (STAGES + (kt - 1) % STAGES) * 8);
        }
    } while (++kt < KT);   /* (a do loop: with a for loop that may run no iteration ptxas serialises the wgmmas, C7515) */
    wait<0>();
    asm volatile("bar.sync 1, 256;\n" ::: "memory");   /* both warpgroups done reading the ring */
    /* transposed into shared memory: slot t's outputs at ring + t * pitch */
    constexpr int W_OUT = SILU ? 64 : 128, PITCH = W_OUT * 2 + 16;
    const int lane = threadIdx.x & 31, warp = (threadIdx.x >> 5) & 3, q = lane >> 3, i = lane & 7;
#pragma unroll
    for (int c = 0; c < NC; c++) {
        if (SILU) {             /* rows r / r + 8 are one output's gate / up: 8 outputs a warp, 4 token groups */
            const float *x = d + c * 16;
            uint32_t r[4];
#pragma unroll
            for (int j = 0; j < 4; j++)
                r[j] = pack(silu(x[4 * j]) * x[4 * j + 2], silu(x[4 * j + 1]) * x[4 * j + 3]);
            const int t = c * 32 + 8 * q + i;
            const uint32_t addr = ring + t * PITCH + (32 * wg + 8 * warp) * 2;
            asm volatile("stmatrix.sync.aligned.m8n8.x4.trans.shared.b16 [%0], {%1, %2, %3, %4};\n"
                         ::"r"(addr), "r"(r[0]), "r"(r[1]), "r"(r[2]), "r"(r[3]) : "memory");
        } else {
#pragma unroll
            for (int j = 0; j < 4; j += 2) {
                const float *x = d + c * 16 + 4 * j;
                const uint32_t r0 = pack(x[0], x[1]), r1 = pack(x[2], x[3]), r2 = pack(x[4], x[5]),
                               r3 = pack(x[6], x[7]);
                const int t = c * 32 + 8 * (j + (q >> 1)) + i;
                const uint32_t addr = ring + t * PITCH + (wg * 64 + warp * 16 + 8 * (q & 1)) * 2;
                asm volatile("stmatrix.sync.aligned.m8n8.x4.trans.shared.b16 [%0], {%1, %2, %3, %4};\n"
                             ::"r"(addr), "r"(r0), "r"(r1), "r"(r2), "r"(r3) : "memory");
            }
        }
    }
    asm volatile("bar.sync 1, 256;\n" ::: "memory");
    constexpr int VR = W_OUT / 8;                     /* 16-byte vectors a slot row */
    for (int v = threadIdx.x; v < len * VR; v += 256) {
        const int t = v / VR, col = v % VR;
        const uint4 val = *reinterpret_cast<const uint4 *>(ring_ptr + t * PITCH + col * 16);
        *reinterpret_cast<uint4 *>(out + (row0 + t) * (int64_t)ocols + col0 + col * 8) = val;
    }
}

/* grid (W row blocks: MW / 128, or F / 64 for SILU; E) */
template <bool SILU>
__global__ void __launch_bounds__(THREADS, 1)
    swap_gemm(const __grid_constant__ CUtensorMap tmW, const __grid_constant__ CUtensorMap tmX, const int *off,
              __nv_bfloat16 *out, int MW, int KD) {
    const int e = blockIdx.y, mb = blockIdx.x;
    const int row0 = off[e], len = off[e + 1] - off[e];
    if (len <= 0) return;
    const int NC = (len + 31) / 32;                   /* (len <= 320: the lab's routing) */
    const int KT = KD / BK;
    unsigned char *ring_ptr = (unsigned char *)(((uintptr_t)smem_raw + 1023) & ~(uintptr_t)1023);
    const uint32_t ring = (uint32_t)__cvta_generic_to_shared(ring_ptr);
    const uint32_t bars = ring + STAGES * STAGE_BYTES;   /* full[s] at bars + 8 s, empty[s] at bars + 8 (STAGES + s) */
    if (threadIdx.x == 0) {
        for (int s = 0; s < STAGES; s++) {
            mbar_init(bars + s * 8, 1);
            mbar_init(bars + (STAGES + s) * 8, 2);
        }
        asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
    }
    __syncthreads();
    if (threadIdx.x >= 256) {                         /* the producer warpgroup: thread 256 issues */
        asm volatile("setmaxnreg.dec.sync.aligned.u32 40;\n");
        if (threadIdx.x == 256) {
            const int rlo = SILU ? e * MW + mb * 64 : e * MW + mb * 128, rhi = SILU ? rlo + MW / 2 : rlo + 64;
            for (int kt = 0; kt < KT; kt++) {
                const int s = kt % STAGES;
                if (kt >= STAGES) mbar_wait(bars + (STAGES + s) * 8, ((kt / STAGES) - 1) & 1);
                const uint32_t sa = ring + s * STAGE_BYTES, sb = sa + A_BYTES, fb = bars + s * 8;
                mbar_expect_tx(fb, A_BYTES + NC * 4096);
                tma_load_2d(sa, &tmW, kt * BK, rlo, fb);
                tma_load_2d(sa + 8192, &tmW, kt * BK, rhi, fb);
                for (int c = 0; c < NC; c++) tma_load_2d(sb + c * 4096, &tmX, kt * BK, row0 + c * 32, fb);
            }
        }
        return;
    }
    asm volatile("setmaxnreg.inc.sync.aligned.u32 232;\n");
    const int ocols = SILU ? MW / 2 : MW, col0 = SILU ? mb * 64 : mb * 128;
#define SW_CASE(N) case N: consume<N, SILU>(ring, bars, ring_ptr, out, row0, len, ocols, col0, KT); break;
    switch (NC) {
    SW_CASE(1) SW_CASE(2) SW_CASE(3) SW_CASE(4) SW_CASE(5) SW_CASE(6) SW_CASE(7) SW_CASE(8) SW_CASE(9)
    default: consume<10, SILU>(ring, bars, ring_ptr, out, row0, len, ocols, col0, KT); break;
    }
#undef SW_CASE
}

/* ---- the persistent form: one CTA an SM, tiles handed out round-robin in expert-major order, the producer running
 * ahead across tiles (one ring counter g for both sides), each warpgroup's epilogue chunk by chunk through its own
 * 32-slot buffer outside the ring (so that the next tile's loads overlap it); PSTAGES stages */
#define PSTAGES 3
#define P_EPI_PITCH 144                               /* a slot row of a warpgroup's 64 outputs (+16: banks) */
#define P_SMEM (PSTAGES * STAGE_BYTES + 1024 + 64 + 2 * 32 * P_EPI_PITCH)

/* tile i -> expert e and W block mb (MB blocks an expert); false past the end */
__device__ __forceinline__ void p_tile(int i, int MB, const int *off, int &e, int &mb, int &row0, int &len) {
    e = i / MB;
    mb = i % MB;
    row0 = off[e];
    len = off[e + 1] - row0;
}

template <int NC, bool SILU>
__device__ __forceinline__ uint32_t p_consume(uint32_t ring, uint32_t bars, uint32_t epi, unsigned char *epi_ptr,
                                              __nv_bfloat16 *out, int64_t row0, int len, int ocols, int col0, int KT,
                                              uint32_t g) {
    constexpr int NA = NC * 16;
    const int wg = threadIdx.x >> 7;
    float d[NA];
#pragma unroll
    for (int i = 0; i < NA; i++) d[i] = 0.f;
    uint32_t a[2][4];
    int kt = 0;
    do {
        const uint32_t s = g % PSTAGES;
        mbar_wait(bars + s * 8, (g / PSTAGES) & 1);
        const uint32_t sa = ring + s * STAGE_BYTES, sb = sa + A_BYTES;
#pragma unroll
        for (int kk = 0; kk < 4; kk++) {
            load_a<SILU>(a[kk & 1], sa, kk);
            pin(d);
            fence();
#pragma unroll
            for (int c = 0; c < NC; c++) {
                const uint64_t db = desc(sb + c * 4096 + kk * 32);
                switch (c) {
                case 0: mma_rs32<0, NA>(d, a[kk & 1], db); break;
                case 1: mma_rs32<(1 < NC ? 16 : 0), NA>(d, a[kk & 1], db); break;
                case 2: mma_rs32<(2 < NC ? 32 : 0), NA>(d, a[kk & 1], db); break;
                case 3: mma_rs32<(3 < NC ? 48 : 0), NA>(d, a[kk & 1], db); break;
                case 4: mma_rs32<(4 < NC ? 64 : 0), NA>(d, a[kk & 1], db); break;
                case 5: mma_rs32<(5 < NC ? 80 : 0), NA>(d, a[kk & 1], db); break;
                case 6: mma_rs32<(6 < NC ? 96 : 0), NA>(d, a[kk & 1], db); break;
                case 7: mma_rs32<(7 < NC ? 112 : 0), NA>(d, a[kk & 1], db); break;
                case 8: mma_rs32<(8 < NC ? 128 : 0), NA>(d, a[kk & 1], db); break;
                case 9: mma_rs32<(9 < NC ? 144 : 0), NA>(d, a[kk & 1], db); break;
                }
            }
            commit();
            wait<1>();
            pin(d);
            if (kk == 0 && kt > 0 && (threadIdx.x & 127) == 0) mbar_arrive(bars + (PSTAGES + (g - 1) % PSTAGES) * 8);
        }
        g++;
    } while (++kt < KT);
    wait<0>();
    pin(d);
    if ((threadIdx.x & 127) == 0) mbar_arrive(bars + (PSTAGES + (g - 1) % PSTAGES) * 8);   /* the tile's last stage */
    /* epilogue, chunk by chunk: the warpgroup's outputs (64; SILU 32) of 32 slots into its buffer, transposed, then
     * 16-byte stores; named barrier 2 + wg (its 128 threads) around the buffer */
    constexpr int W_OUT = SILU ? 32 : 64, PITCH = SILU ? 80 : P_EPI_PITCH, VR = W_OUT / 8;
    const uint32_t eb = epi + wg * 32 * P_EPI_PITCH;
    unsigned char *ebp = epi_ptr + wg * 32 * P_EPI_PITCH;
    const int lane = threadIdx.x & 31, warp = (threadIdx.x >> 5) & 3, q = lane >> 3, i = lane & 7;
    const int tid = threadIdx.x & 127;
#pragma unroll
    for (int c = 0; c < NC; c++) {
        if (SILU) {
            const float *x = d + c * 16;
            uint32_t r[4];
#pragma unroll
            for (int j = 0; j < 4; j++)
                r[j] = pack(silu(x[4 * j]) * x[4 * j + 2], silu(x[4 * j + 1]) * x[4 * j + 3]);
            asm volatile("stmatrix.sync.aligned.m8n8.x4.trans.shared.b16 [%0], {%1, %2, %3, %4};\n"
                         ::"r"(eb + (8 * q + i) * PITCH + 8 * warp * 2), "r"(r[0]), "r"(r[1]), "r"(r[2]), "r"(r[3])
                         : "memory");
        } else {
#pragma unroll
            for (int j = 0; j < 4; j += 2) {
                const float *x = d + c * 16 + 4 * j;
                asm volatile("stmatrix.sync.aligned.m8n8.x4.trans.shared.b16 [%0], {%1, %2, %3, %4};\n"
                             ::"r"(eb + (8 * (j + (q >> 1)) + i) * PITCH + (warp * 16 + 8 * (q & 1)) * 2),
                             "r"(pack(x[0], x[1])), "r"(pack(x[2], x[3])), "r"(pack(x[4], x[5])), "r"(pack(x[6], x[7]))
                             : "memory");
            }
        }
        asm volatile("bar.sync %0, 128;\n" ::"r"(2 + wg) : "memory");
        for (int v = tid; v < 32 * VR; v += 128) {
            const int t = v / VR, col = v % VR;
            if (c * 32 + t < len)
                *reinterpret_cast<uint4 *>(out + (row0 + c * 32 + t) * (int64_t)ocols + col0 + wg * W_OUT + col * 8) =
                    *reinterpret_cast<const uint4 *>(ebp + t * PITCH + col * 16);
        }
        asm volatile("bar.sync %0, 128;\n" ::"r"(2 + wg) : "memory");
    }
    return g;
}

template <bool SILU>
__global__ void __launch_bounds__(THREADS, 1)
    swap_persist(const __grid_constant__ CUtensorMap tmW, const __grid_constant__ CUtensorMap tmX, const int *off,
                 __nv_bfloat16 *out, int MW, int KD) {
    const int KT = KD / BK, MB = SILU ? MW / 128 : MW / 128, ntiles = E * MB;   /* (SILU: MW / 2 / 64 outputs) */
    unsigned char *ring_ptr = (unsigned char *)(((uintptr_t)smem_raw + 1023) & ~(uintptr_t)1023);
    const uint32_t ring = (uint32_t)__cvta_generic_to_shared(ring_ptr);
    const uint32_t bars = ring + PSTAGES * STAGE_BYTES, epi = bars + 64;
    unsigned char *epi_ptr = ring_ptr + PSTAGES * STAGE_BYTES + 64;
    if (threadIdx.x == 0) {
        for (int s = 0; s < PSTAGES; s++) {
            mbar_init(bars + s * 8, 1);
            mbar_init(bars + (PSTAGES + s) * 8, 2);
        }
        asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
    }
    __syncthreads();
    if (threadIdx.x >= 256) {
        asm volatile("setmaxnreg.dec.sync.aligned.u32 40;\n");
        if (threadIdx.x == 256) {
            uint32_t g = 0;
            for (int it = blockIdx.x; it < ntiles; it += gridDim.x) {
                int e, mb, row0, len;
                p_tile(it, MB, off, e, mb, row0, len);
                if (len <= 0) continue;
                const int NC = (len + 31) / 32;
                const int rlo = SILU ? e * MW + mb * 64 : e * MW + mb * 128, rhi = SILU ? rlo + MW / 2 : rlo + 64;
                for (int kt = 0; kt < KT; kt++, g++) {
                    const uint32_t s = g % PSTAGES;
                    if (g >= PSTAGES) mbar_wait(bars + (PSTAGES + s) * 8, ((g / PSTAGES) - 1) & 1);
                    const uint32_t sa = ring + s * STAGE_BYTES, sb = sa + A_BYTES, fb = bars + s * 8;
                    mbar_expect_tx(fb, A_BYTES + NC * 4096);
                    tma_load_2d(sa, &tmW, kt * BK, rlo, fb);
                    tma_load_2d(sa + 8192, &tmW, kt * BK, rhi, fb);
                    for (int c = 0; c < NC; c++) tma_load_2d(sb + c * 4096, &tmX, kt * BK, row0 + c * 32, fb);
                }
            }
        }
        return;
    }
    asm volatile("setmaxnreg.inc.sync.aligned.u32 232;\n");
    const int ocols = SILU ? MW / 2 : MW;
    uint32_t g = 0;
    for (int it = blockIdx.x; it < ntiles; it += gridDim.x) {
        int e, mb, row0, len;
        p_tile(it, MB, off, e, mb, row0, len);
        if (len <= 0) continue;
        const int NC = (len + 31) / 32, col0 = SILU ? mb * 64 : mb * 128;
#define P_CASE(N) case N: g = p_consume<N, SILU>(ring, bars, epi, epi_ptr, out, row0, len, ocols, col0, KT, g); break;
        switch (NC) {
        P_CASE(1) P_CASE(2) P_CASE(3) P_CASE(4) P_CASE(5) P_CASE(6) P_CASE(7) P_CASE(8) P_CASE(9)
        default: g = p_consume<10, SILU>(ring, bars, epi, epi_ptr, out, row0, len, ocols, col0, KT, g); break;
        }
#undef P_CASE
    }
}

typedef CUresult (*encode_fn)(CUtensorMap *, CUtensorMapDataType, cuuint32_t, void *, const cuuint64_t *,
                              const cuuint64_t *, const cuuint32_t *, const cuuint32_t *, CUtensorMapInterleave,
                              CUtensorMapSwizzle, CUtensorMapL2promotion, CUtensorMapFloatOOBfill);
static void make_map(CUtensorMap *m, void *ptr, int64_t rows, int64_t cols, int box_rows) {
    static encode_fn enc = nullptr;
    if (!enc) {
        void *f = nullptr;
        cudaDriverEntryPointQueryResult q;
        CK(cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &f, 12000, cudaEnableDefault, &q));
        enc = (encode_fn)f;
    }
    const cuuint64_t dims[2] = {(cuuint64_t)cols, (cuuint64_t)rows}, strides[1] = {(cuuint64_t)cols * 2};
    const cuuint32_t box[2] = {BK, (cuuint32_t)box_rows}, es[2] = {1, 1};
    const CUresult r = enc(m, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 2, ptr, dims, strides, box, es,
                           CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
                           CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
    if (r != CUDA_SUCCESS) { printf("encode failed %d\n", (int)r); exit(1); }
}

/* deterministic values in [-0.5, 0.5) (a hash of the index) */
__global__ void fill(__nv_bfloat16 *p, size_t n, uint32_t seed) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        uint32_t h = (uint32_t)i * 2654435761u ^ seed;
        h ^= h >> 15;
        h *= 2246822519u;
        h ^= h >> 13;
        p[i] = __float2bfloat16((float)(h >> 8) / 16777216.f - 0.5f);
    }
}
/* the reference of sample j: (s, m) = (ss[j], ms[j]) of expert es[j], a float64 dot product */
__global__ void ref_dots(const __nv_bfloat16 *x, const __nv_bfloat16 *w, const int *ss, const int *ms, const int *es,
                         double *ref, int n, int MW, int KD) {
    const int j = blockIdx.x;
    if (j >= n) return;
    double acc = 0.0;
    for (int k = threadIdx.x; k < KD; k += 32)
        acc += (double)__bfloat162float(x[(size_t)ss[j] * KD + k]) *
               (double)__bfloat162float(w[((size_t)es[j] * MW + ms[j]) * KD + k]);
    for (int o = 16; o > 0; o >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, o);
    if (threadIdx.x == 0) ref[j] = acc;
}

template <typename L> static float median_ms(L launch, int reps = 9) {
    cudaEvent_t e0, e1;
    CK(cudaEventCreate(&e0));
    CK(cudaEventCreate(&e1));
    launch();
    std::vector<float> t;
    for (int i = 0; i < reps; i++) {
        CK(cudaEventRecord(e0));
        launch();
        CK(cudaEventRecord(e1));
        CK(cudaEventSynchronize(e1));
        float ms = 0.f;
        CK(cudaEventElapsedTime(&ms, e0, e1));
        t.push_back(ms);
    }
    std::sort(t.begin(), t.end());
    return t[reps / 2];
}

/* bf16 ordinal (monotone in the value) of a float rounded to nearest even, and of a stored bf16 */
static int32_t ord_bits(uint16_t h) { return (h & 0x8000) ? -(int32_t)(h & 0x7FFF) : (int32_t)h; }
static uint16_t to_bf16(double v) {
    const float f = (float)v;   /* (double -> float -> bf16: a double rounding, at most a tie's edge apart) */
    uint32_t u;
    memcpy(&u, &f, 4);
    return (uint16_t)((u + 0x7FFF + ((u >> 16) & 1)) >> 16);
}

int main() {
    const int S_MAX = E * 320, KMAX = F, MWMAX = 2 * F;
    __nv_bfloat16 *w, *x, *out;
    int *doff;
    CK(cudaMalloc(&w, (size_t)E * MWMAX * 4096 * 2));   /* (the largest W: E x 2F x 4096 = E x 4096 x 2F elements) */
    CK(cudaMalloc(&x, (size_t)S_MAX * KMAX * 2));
    CK(cudaMalloc(&out, (size_t)S_MAX * MWMAX * 2));
    CK(cudaMalloc(&doff, (E + 1) * sizeof(int)));
    fill<<<1024, 256>>>(w, (size_t)E * MWMAX * 4096, 1u);
    fill<<<1024, 256>>>(x, (size_t)S_MAX * KMAX, 2u);
    CK(cudaDeviceSynchronize());
    const int NS = 2000;
    int *dss, *dms, *des;
    double *dref;
    CK(cudaMalloc(&dss, 2 * NS * sizeof(int)));
    CK(cudaMalloc(&dms, 2 * NS * sizeof(int)));
    CK(cudaMalloc(&des, 2 * NS * sizeof(int)));
    CK(cudaMalloc(&dref, 2 * NS * sizeof(double)));
    CK(cudaFuncSetAttribute(swap_gemm<false>, cudaFuncAttributeMaxDynamicSharedMemorySize, SMEM_BYTES));
    CK(cudaFuncSetAttribute(swap_gemm<true>, cudaFuncAttributeMaxDynamicSharedMemorySize, SMEM_BYTES));
    CK(cudaFuncSetAttribute(swap_persist<false>, cudaFuncAttributeMaxDynamicSharedMemorySize, P_SMEM));
    CK(cudaFuncSetAttribute(swap_persist<true>, cudaFuncAttributeMaxDynamicSharedMemorySize, P_SMEM));
    int sms = 0;
    CK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0));
    struct shape { const char *name; int MW, KD; bool silu; };
    const shape shapes[3] = {{"plain gate_up (MW 28672, K 4096)", 2 * F, 4096, false},
                             {"silu gate_up (out 14336, K 4096)", 2 * F, 4096, true},
                             {"down (MW 4096, K 14336)", 4096, F, false}};
    const char *names[3] = {"uniform 256 slots an expert", "uniform 288", "routed 195-307 (bench_moe, 2048 tokens)"};
    for (const shape &sh : shapes) {
        CUtensorMap tmW, tmX;
        make_map(&tmW, w, (int64_t)E * sh.MW, sh.KD, 64);
        make_map(&tmX, x, S_MAX, sh.KD, 32);
        const int ocols = sh.silu ? sh.MW / 2 : sh.MW;
        for (int cs = 0; cs < 3; cs++) {
            std::vector<int> off(E + 1, 0);
            uint32_t s2 = 777u + cs;
            for (int e = 0; e < E; e++) {
                s2 = s2 * 1664525u + 1013904223u;
                off[e + 1] = off[e] + (cs == 0 ? 256 : cs == 1 ? 288 : 195 + (int)((s2 >> 8) % 113));
            }
            const int S = off[E];
            CK(cudaMemcpy(doff, off.data(), (E + 1) * sizeof(int), cudaMemcpyHostToDevice));
            CK(cudaMemset(out, 0, (size_t)S_MAX * MWMAX * 2));
            const dim3 grid(sh.silu ? F / 64 : sh.MW / 128, E);
            auto one = [&] {
                if (sh.silu) swap_gemm<true><<<grid, THREADS, SMEM_BYTES>>>(tmW, tmX, doff, out, sh.MW, sh.KD);
                else swap_gemm<false><<<grid, THREADS, SMEM_BYTES>>>(tmW, tmX, doff, out, sh.MW, sh.KD);
            };
            auto per = [&] {
                if (sh.silu) swap_persist<true><<<sms, THREADS, P_SMEM>>>(tmW, tmX, doff, out, sh.MW, sh.KD);
                else swap_persist<false><<<sms, THREADS, P_SMEM>>>(tmW, tmX, doff, out, sh.MW, sh.KD);
            };
            float ms = 1e30f, mp = 1e30f;   /* (the best of 3 medians each, in turns: the clock drifts over a run) */
            for (int r = 0; r < 3; r++) {
                ms = fminf(ms, median_ms(one, 5));
                mp = fminf(mp, median_ms(per, 5));
            }
            CK(cudaGetLastError());
            CK(cudaDeviceSynchronize());
            for (int pass = 0; pass < 2; pass++) {   /* check both kernels' outputs */
            CK(cudaMemset(out, 0, (size_t)S_MAX * MWMAX * 2));
            if (pass == 0) one(); else per();
            CK(cudaDeviceSynchronize());
            const double flop = 2.0 * S * sh.MW * sh.KD;
            /* check: NS random (slot, output): float64 dots (silu: the gate and the up row) */
            std::vector<int> hs(2 * NS), hm(2 * NS), he(2 * NS);
            uint32_t s3 = 99u + cs;
            for (int n = 0; n < NS; n++) {
                s3 = s3 * 1664525u + 1013904223u;
                hs[n] = hs[NS + n] = (int)((s3 >> 4) % S);
                s3 = s3 * 1664525u + 1013904223u;
                hm[n] = (int)((s3 >> 4) % ocols);
                hm[NS + n] = hm[n] + (sh.silu ? F : 0);
                int e = 0;
                while (off[e + 1] <= hs[n]) e++;
                he[n] = he[NS + n] = e;
            }
            CK(cudaMemcpy(dss, hs.data(), 2 * NS * sizeof(int), cudaMemcpyHostToDevice));
            CK(cudaMemcpy(dms, hm.data(), 2 * NS * sizeof(int), cudaMemcpyHostToDevice));
            CK(cudaMemcpy(des, he.data(), 2 * NS * sizeof(int), cudaMemcpyHostToDevice));
            ref_dots<<<2 * NS, 32>>>(x, w, dss, dms, des, dref, 2 * NS, sh.MW, sh.KD);
            std::vector<double> href(2 * NS);
            CK(cudaMemcpy(href.data(), dref, 2 * NS * sizeof(double), cudaMemcpyDeviceToHost));
            std::vector<uint16_t> ho((size_t)S * ocols);
            CK(cudaMemcpy(ho.data(), out, ho.size() * 2, cudaMemcpyDeviceToHost));
            int worst = 0, exact = 0;
            double worstabs = 0.0;
            const double scale = sqrt((double)sh.KD) / 12.0 * (sh.silu ? sqrt((double)sh.KD) / 12.0 : 1.0);
            for (int n = 0; n < NS; n++) {
                const double g = href[n], u = href[NS + n];
                const double want = sh.silu ? g / (1.0 + exp(-g)) * u : g;
                const uint16_t got = ho[(size_t)hs[n] * ocols + hm[n]];
                const int dif = abs(ord_bits(got) - ord_bits(to_bf16(want)));
                worst = dif > worst ? dif : worst;
                exact += dif == 0;
                uint32_t gu = (uint32_t)got << 16;
                float gf;
                memcpy(&gf, &gu, 4);
                /* beyond bf16's own rounding of the value (half an ulp, 2^-9 relative) */
                worstabs = fmax(worstabs, fmax(fabs(gf - want) - fabs(want) * 0x1p-8, 0.0) / scale);
            }
            const bool ok = exact >= NS * 95 / 100 && worstabs <= 2e-3;
            const float t = pass == 0 ? ms : mp;
            printf("%-34s %-40s %s S = %4d: %.3f ms, %6.1f TFLOP/s; %d / %d exact in bf16 (worst %d ulp, %.1e of "
                   "the dots' scale) %s\n", sh.name, names[cs], pass == 0 ? "tiles  " : "persist", S, t,
                   flop / (t * 1e-3) / 1e12, exact, NS, worst, worstabs, ok ? "ok" : "WRONG");
            }
        }
    }
    const cudaError_t err = cudaDeviceSynchronize();
    printf("%s\n", err == cudaSuccess ? "done" : cudaGetErrorString(err));
    return err == cudaSuccess ? 0 : 1;
}
