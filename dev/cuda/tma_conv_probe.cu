/* tma_conv_probe.cu -- can 1-d bulk copies (TMA, cp.async.bulk) move causal_conv1d's bytes faster than
 * per-thread loads and stores? Standalone (no torch): nvcc -O3 -std=c++17 -arch=sm_90a dev/cuda/tma_conv_probe.cu
 * -o /tmp/tma_conv_probe && /tmp/tma_conv_probe. Session 47 (issue 3: the conv forward at 1x2048 runs at ~83% of
 * copy bandwidth against a 90% target; the best copy kernels measured so far, torch's and Triton's, reach ~91%).
 *
 * Shapes: x, out (rows, L) bf16 row-major (rows = batch * channels, L contiguous), w (rows % D, 4) fp32, bias fp32;
 * L * 2 bytes a multiple of 16. Variants, each timed per call inside a CUDA graph of NCALL back-to-back launches:
 *   memcpy      cudaMemcpyAsync device to device of the bytes of x
 *   lsu_vV      one pass, a thread copies V 16-byte vectors (loads first, then stores)
 *   bulk_cC_sS  persistent (2 CTAs per SM): thread 0 streams chunks of C KB through S shared-memory stages,
 *               cp.async.bulk global->shared (mbarrier complete_tx) then shared->global (bulk groups)
 *   conv_cC_sS  the same ring, chunks of whole rows; 256 threads compute silu(bias + sum_j w_j x[t-3+j]) (zero
 *               history) from the input stage into one of two output buffers, then thread 0 bulk-stores it
 *   conv_ref    the conv by per-thread loads (one thread = 8 outputs, the 3-step halo by a second load): the check
 * Every conv variant's output is compared with a host fp32 conv (max error printed).
 */
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "ck.cuh"

static const int NCALL = 20;

__device__ __forceinline__ uint32_t smem_u32(const void *p) { return (uint32_t)__cvta_generic_to_shared(p); }

__device__ __forceinline__ void mbar_init(uint64_t *b, int n) {
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(smem_u32(b)), "r"(n));
}
__device__ __forceinline__ void mbar_expect(uint64_t *b, uint32_t bytes) {
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(smem_u32(b)), "r"(bytes) : "memory");
}
__device__ __forceinline__ void mbar_wait(uint64_t *b, uint32_t parity) {
    asm volatile(
        "{\n .reg .pred p;\n W: mbarrier.try_wait.parity.shared::cta.b64 p, [%0], %1;\n @!p bra W;\n}\n" ::"r"(
            smem_u32(b)),
        "r"(parity)
        : "memory");
}
__device__ __forceinline__ void bulk_load(void *dst, const void *src, uint32_t bytes, uint64_t *b) {
    asm volatile(
        "cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];" ::"r"(smem_u32(dst)),
        "l"(src), "r"(bytes), "r"(smem_u32(b))
        : "memory");
}
__device__ __forceinline__ void bulk_store(void *dst, const void *src, uint32_t bytes) {
    asm volatile("cp.async.bulk.global.shared::cta.bulk_group [%0], [%1], %2;" ::"l"(dst), "r"(smem_u32(src)),
                 "r"(bytes)
                 : "memory");
    asm volatile("cp.async.bulk.commit_group;" ::: "memory");
}
template <int N>
__device__ __forceinline__ void bulk_wait_read() {
    asm volatile("cp.async.bulk.wait_group.read %0;" ::"n"(N) : "memory");
}
__device__ __forceinline__ void bulk_wait_all() { asm volatile("cp.async.bulk.wait_group 0;" ::: "memory"); }
__device__ __forceinline__ void fence_async_smem() { asm volatile("fence.proxy.async.shared::cta;" ::: "memory"); }

/* ---- per-thread copy: V 16-byte vectors a thread, loads first ---- */
template <int V>
__global__ void lsu_copy(const uint4 *__restrict__ x, uint4 *__restrict__ y, int64_t nvec) {
    const int64_t base = ((int64_t)blockIdx.x * blockDim.x) * V + threadIdx.x;
    uint4 r[V];
#pragma unroll
    for (int v = 0; v < V; v++) {
        const int64_t i = base + (int64_t)v * blockDim.x;
        if (i < nvec) r[v] = __ldcs(x + i);
    }
#pragma unroll
    for (int v = 0; v < V; v++) {
        const int64_t i = base + (int64_t)v * blockDim.x;
        if (i < nvec) __stcs(y + i, r[v]);
    }
}

/* ---- bulk copy ring: chunks of cb bytes (the last may be short), S stages, thread 0 only ---- */
template <int S>
__global__ void bulk_copy(const char *__restrict__ x, char *__restrict__ y, int64_t nbytes, int cb) {
    extern __shared__ __align__(128) char sm[];
    uint64_t *full = (uint64_t *)(sm + (size_t)S * cb);
    if (threadIdx.x != 0) return;
    for (int s = 0; s < S; s++) mbar_init(&full[s], 1);
    asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
    const int64_t nchunk = (nbytes + cb - 1) / cb;
    auto bytes_of = [&](int64_t c) { return (uint32_t)(nbytes - c * cb < cb ? nbytes - c * cb : cb); };
    int64_t k = 0;
    for (int s = 0; s < S; s++) {
        const int64_t c = blockIdx.x + (int64_t)s * gridDim.x;
        if (c >= nchunk) break;
        mbar_expect(&full[s], bytes_of(c));
        bulk_load(sm + (size_t)s * cb, x + c * cb, bytes_of(c), &full[s]);
    }
    for (;; k++) {
        const int64_t c = blockIdx.x + k * gridDim.x;
        if (c >= nchunk) break;
        const int s = (int)(k % S);
        mbar_wait(&full[s], (uint32_t)((k / S) & 1));
        bulk_store(y + c * cb, sm + (size_t)s * cb, bytes_of(c));
        /* refill the stage of chunk k - 1 once its store has read it */
        if (k >= 1) {
            const int64_t cn = blockIdx.x + (k - 1 + S) * gridDim.x;
            if (cn < nchunk) {
                bulk_wait_read<1>();
                const int sp = (int)((k - 1) % S);
                mbar_expect(&full[sp], bytes_of(cn));
                bulk_load(sm + (size_t)sp * cb, x + cn * cb, bytes_of(cn), &full[sp]);
            }
        }
    }
    bulk_wait_all();
}

/* ---- the conv through the bulk ring: chunks of R whole rows of L (bf16), S input stages, 2 output buffers ---- */
__device__ __forceinline__ float silu_fast(float v) { return __fdividef(v, 1.f + exp2f(-v * 1.4426950408889634f)); }

/* 8 outputs (one 16-byte bf16 vector cur) of silu(b + sum_j wt_j h[t - 3 + j]); the 3 inputs before them are the high
 * half of prev_z and both halves of prev_w (the previous vector's last two words; zeros at a row's start) */
template <bool SILU = true>
__device__ __forceinline__ uint4 conv8(uint4 cur, uint32_t prev_z, uint32_t prev_w, float4 wt, float b) {
    float h[11];
    h[0] = __uint_as_float(prev_z & 0xffff0000u);
    h[1] = __uint_as_float(prev_w << 16);
    h[2] = __uint_as_float(prev_w & 0xffff0000u);
    const uint32_t cw[4] = {cur.x, cur.y, cur.z, cur.w};
#pragma unroll
    for (int j = 0; j < 4; j++) {
        h[3 + 2 * j] = __uint_as_float(cw[j] << 16);
        h[4 + 2 * j] = __uint_as_float(cw[j] & 0xffff0000u);
    }
    uint32_t ow[4];
#pragma unroll
    for (int j = 0; j < 4; j++) {
        float a0 = b + wt.x * h[2 * j] + wt.y * h[2 * j + 1] + wt.z * h[2 * j + 2] + wt.w * h[2 * j + 3];
        float a1 = b + wt.x * h[2 * j + 1] + wt.y * h[2 * j + 2] + wt.z * h[2 * j + 3] + wt.w * h[2 * j + 4];
        __nv_bfloat162 pr = SILU ? __floats2bfloat162_rn(silu_fast(a0), silu_fast(a1)) : __floats2bfloat162_rn(a0, a1);
        ow[j] = *(uint32_t *)&pr;
    }
    return make_uint4(ow[0], ow[1], ow[2], ow[3]);
}

template <int S>
__global__ void __launch_bounds__(256) bulk_conv(const __nv_bfloat16 *__restrict__ x, __nv_bfloat16 *__restrict__ y,
                                                 const float *__restrict__ w, const float *__restrict__ bias,
                                                 int64_t rows, int64_t L, int D, int R) {
    extern __shared__ __align__(128) char sm[];
    const int cb = (int)(R * L * 2);
    char *in = sm, *outb = sm + (size_t)S * cb;
    uint64_t *full = (uint64_t *)(outb + 2 * (size_t)cb);
    const int64_t nchunk = (rows + R - 1) / R;
    auto bytes_of = [&](int64_t c) { return (uint32_t)((rows - c * R < R ? rows - c * R : R) * L * 2); };
    if (threadIdx.x == 0) {
        for (int s = 0; s < S; s++) mbar_init(&full[s], 1);
        asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
        for (int s = 0; s < S; s++) {
            const int64_t c = blockIdx.x + (int64_t)s * gridDim.x;
            if (c >= nchunk) break;
            mbar_expect(&full[s], bytes_of(c));
            bulk_load(in + (size_t)s * cb, x + c * R * L, bytes_of(c), &full[s]);
        }
    }
    __syncthreads();
    const int vpr = (int)(L / 8); /* 16-byte vectors per row */
    for (int64_t k = 0;; k++) {
        const int64_t c = blockIdx.x + k * gridDim.x;
        if (c >= nchunk) break;
        const int s = (int)(k % S), o = (int)(k & 1);
        if (threadIdx.x == 0) bulk_wait_read<1>(); /* the store of chunk k - 2 (same output buffer) has read it */
        __syncthreads();
        mbar_wait(&full[s], (uint32_t)((k / S) & 1));
        const int nr = (int)(rows - c * R < R ? rows - c * R : R);
        const uint4 *src = (const uint4 *)(in + (size_t)s * cb);
        uint4 *dst = (uint4 *)(outb + (size_t)o * cb);
        for (int i = threadIdx.x; i < nr * vpr; i += blockDim.x) {
            const int r = i / vpr, v = i - r * vpr;
            const int ch = (int)((c * R + r) % D);
            const float4 wt = *(const float4 *)(w + 4 * (size_t)ch);
            const float b = bias[ch];
            const uint4 cur = src[i];
            uint32_t prevw = 0, prevz = 0;
            if (v > 0) {
                const uint4 p = src[i - 1];
                prevz = p.z, prevw = p.w;
            }
            dst[i] = conv8(cur, prevz, prevw, wt, b);
        }
        fence_async_smem();
        __syncthreads(); /* input stage s consumed, output buffer o written */
        if (threadIdx.x == 0) {
            bulk_store(y + c * R * L, outb + (size_t)o * cb, bytes_of(c));
            const int64_t cn = blockIdx.x + (k + S) * gridDim.x;
            if (cn < nchunk) {
                mbar_expect(&full[s], bytes_of(cn));
                bulk_load(in + (size_t)s * cb, x + cn * R * L, bytes_of(cn), &full[s]);
            }
        }
    }
    if (threadIdx.x == 0) bulk_wait_all();
}

/* ---- the conv by per-thread loads: one thread = one 16-byte output vector; SHFL: the halo from lane - 1 by a shuffle
 * (lane 0 loads it), else every thread loads the previous vector; SILU 0: identity (what SiLU costs) ---- */
template <bool SHFL, bool SILU>
__global__ void lsu_conv(const __nv_bfloat16 *__restrict__ x, __nv_bfloat16 *__restrict__ y,
                         const float *__restrict__ w, const float *__restrict__ bias, int64_t rows, int64_t L, int D) {
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x, vpr = L / 8;
    const bool live = i < rows * vpr;
    const int64_t r = live ? i / vpr : 0, v = live ? i - r * vpr : 0;
    const int ch = (int)(r % D), lane = threadIdx.x & 31;
    uint4 cur = make_uint4(0, 0, 0, 0), p = make_uint4(0, 0, 0, 0);
    if (live) cur = __ldcs((const uint4 *)x + i);
    if (live && v > 0 && (!SHFL || lane == 0)) p = __ldg((const uint4 *)x + i - 1);
    const float4 wt = live ? *(const float4 *)(w + 4 * (size_t)ch) : make_float4(0, 0, 0, 0);
    const float b = live ? bias[ch] : 0.f;
    if (SHFL) {
        const uint32_t z = __shfl_up_sync(0xffffffffu, cur.z, 1), ww = __shfl_up_sync(0xffffffffu, cur.w, 1);
        if (lane > 0) p.z = v > 0 ? z : 0u, p.w = v > 0 ? ww : 0u;
    }
    if (live) __stcs((uint4 *)y + i, conv8<SILU>(cur, p.z, p.w, wt, b));
}

/* ---- timing: one CUDA graph of NCALL launches, median of 7 replays, per call ---- */
template <typename F>
static float time_graph(cudaStream_t st, F launch) {
    launch(); /* errors surface here, outside capture */
    CK(cudaGetLastError());
    CK(cudaStreamSynchronize(st));
    cudaGraph_t g;
    cudaGraphExec_t ge;
    CK(cudaStreamBeginCapture(st, cudaStreamCaptureModeGlobal));
    for (int i = 0; i < NCALL; i++) launch();
    CK(cudaStreamEndCapture(st, &g));
    CK(cudaGraphInstantiate(&ge, g, 0));
    cudaEvent_t a, b;
    CK(cudaEventCreate(&a));
    CK(cudaEventCreate(&b));
    std::vector<float> t;
    for (int rep = 0; rep < 10; rep++) {
        CK(cudaEventRecord(a, st));
        CK(cudaGraphLaunch(ge, st));
        CK(cudaEventRecord(b, st));
        CK(cudaEventSynchronize(b));
        float ms;
        CK(cudaEventElapsedTime(&ms, a, b));
        if (rep >= 3) t.push_back(ms * 1000.f / NCALL);
    }
    std::sort(t.begin(), t.end());
    CK(cudaGraphExecDestroy(ge));
    CK(cudaGraphDestroy(g));
    return t[t.size() / 2];
}

static float bf2f(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

int main(int argc, char **argv) {
    int dev = 0, nsm;
    CK(cudaSetDevice(dev));
    CK(cudaDeviceGetAttribute(&nsm, cudaDevAttrMultiProcessorCount, dev));
    cudaStream_t st;
    CK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
    const int D = 8192;
    const int shapes[][2] = {{1, 2048}, {1, 8192}, {8, 2048}, {1, 32768}};
    for (auto &shp : shapes) {
        const int64_t B = shp[0], L = shp[1], rows = B * D, n = rows * L, nbytes = n * 2;
        const double floor_us = 2.0 * nbytes / 4256e9 * 1e6; /* issue 3's copy bandwidth */
        printf("=== %lldx%lld (rows %lld, L %lld): %.1f MB read + written; 4256 GB/s floor %.2f us, 90%%: %.2f us\n",
               (long long)B, (long long)L, (long long)rows, (long long)L, 2.0 * nbytes / 1e6, floor_us, floor_us / 0.9);
        __nv_bfloat16 *x, *y;
        float *w, *bias;
        CK(cudaMalloc(&x, nbytes));
        CK(cudaMalloc(&y, nbytes));
        CK(cudaMalloc(&w, D * 16));
        CK(cudaMalloc(&bias, D * 4));
        std::vector<uint16_t> hx(n);
        std::vector<float> hw(D * 4), hb(D);
        uint32_t seed = 12345;
        auto rnd = [&]() { seed = seed * 1664525u + 1013904223u; return ((seed >> 8) & 0xffff) / 32768.f - 1.f; };
        for (int64_t i = 0; i < n; i++) {
            float f = 2.f * rnd();
            uint32_t u;
            memcpy(&u, &f, 4);
            hx[i] = (uint16_t)((u + 0x8000u) >> 16);
        }
        for (auto &v : hw) v = 0.5f * rnd();
        for (auto &v : hb) v = 0.2f * rnd();
        CK(cudaMemcpy(x, hx.data(), nbytes, cudaMemcpyHostToDevice));
        CK(cudaMemcpy(w, hw.data(), D * 16, cudaMemcpyHostToDevice));
        CK(cudaMemcpy(bias, hb.data(), D * 4, cudaMemcpyHostToDevice));
        auto report = [&](const char *name, float us) {
            printf("  %-16s %8.2f us  %5.1f%% of the 4256 GB/s floor\n", name, us, 100.0 * floor_us / us);
        };
        auto check_conv = [&](const char *name) {
            std::vector<uint16_t> hy(n);
            CK(cudaMemcpy(hy.data(), y, nbytes, cudaMemcpyDeviceToHost));
            double worst = 0;
            for (int64_t r = 0; r < rows; r += 97)
                for (int64_t t = 0; t < L; t++) {
                    const int ch = (int)(r % D);
                    double a = hb[ch];
                    for (int j = 0; j < 4; j++) {
                        const int64_t tt = t - 3 + j;
                        if (tt >= 0) a += hw[ch * 4 + j] * bf2f(hx[r * L + tt]);
                    }
                    a = a / (1 + exp(-a));
                    worst = std::max(worst, fabs(a - bf2f(hy[r * L + t])) / (1e-2 + 1e-2 * fabs(a)));
                }
            printf("  %-16s check: worst error / (1e-2 + 1e-2 |ref|) = %.3f %s\n", name, worst,
                   worst < 1 ? "ok" : "FAIL");
            CK(cudaMemset(y, 0, nbytes));
        };
        report("memcpy", time_graph(st, [&] { CK(cudaMemcpyAsync(y, x, nbytes, cudaMemcpyDeviceToDevice, st)); }));
        const int64_t nvec = nbytes / 16;
        report("lsu_v1", time_graph(st, [&] {
                   lsu_copy<1><<<(unsigned)((nvec + 255) / 256), 256, 0, st>>>((const uint4 *)x, (uint4 *)y, nvec);
               }));
        report("lsu_v2", time_graph(st, [&] {
                   lsu_copy<2><<<(unsigned)((nvec + 511) / 512), 256, 0, st>>>((const uint4 *)x, (uint4 *)y, nvec);
               }));
        report("lsu_v4", time_graph(st, [&] {
                   lsu_copy<4><<<(unsigned)((nvec + 1023) / 1024), 256, 0, st>>>((const uint4 *)x, (uint4 *)y, nvec);
               }));
        for (int ckb : {8, 16, 32}) {
            for (int S : {2, 4}) {
                const int cb = ckb * 1024;
                const size_t smem = (size_t)S * cb + 64;
                if (smem > 110 * 1024) continue;
                char name[32];
                snprintf(name, sizeof name, "bulk_c%d_s%d", ckb, S);
                auto fn = S == 2 ? bulk_copy<2> : bulk_copy<4>;
                CK(cudaFuncSetAttribute(fn, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
                int per_sm = 0;
                CK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, fn, 32, smem));
                const int grid = std::max(1, std::min(per_sm, 8)) * nsm;
                report(name, time_graph(st, [&] {
                           fn<<<grid, 32, smem, st>>>((const char *)x, (char *)y, nbytes, cb);
                       }));
            }
        }
        {
            const int64_t tot = rows * (L / 8);
            report("conv_ref", time_graph(st, [&] {
                       lsu_conv<false, true><<<(unsigned)((tot + 255) / 256), 256, 0, st>>>(x, y, w, bias, rows, L, D);
                   }));
            check_conv("conv_ref");
            report("conv_shfl", time_graph(st, [&] {
                       lsu_conv<true, true><<<(unsigned)((tot + 255) / 256), 256, 0, st>>>(x, y, w, bias, rows, L, D);
                   }));
            check_conv("conv_shfl");
            report("conv_shfl_nosilu", time_graph(st, [&] {
                       lsu_conv<true, false><<<(unsigned)((tot + 255) / 256), 256, 0, st>>>(x, y, w, bias, rows, L, D);
                   }));
            for (int bs : {128, 512}) {
                char name[32];
                snprintf(name, sizeof name, "conv_shfl_b%d", bs);
                report(name, time_graph(st, [&] {
                           lsu_conv<true, true>
                               <<<(unsigned)((tot + bs - 1) / bs), bs, 0, st>>>(x, y, w, bias, rows, L, D);
                       }));
                check_conv(name);
            }
        }
        for (int ckb : {8, 16, 32}) {
            for (int S : {2, 3, 4}) {
                const int R = std::max<int64_t>(1, ckb * 1024 / (L * 2));
                const int cb = (int)(R * L * 2);
                const size_t smem = (size_t)(S + 2) * cb + 64;
                if (smem > 113 * 1024 || (int64_t)R * L * 2 != ckb * 1024) continue;
                char name[32];
                snprintf(name, sizeof name, "conv_c%d_s%d", ckb, S);
                auto fn = S == 2 ? bulk_conv<2> : S == 3 ? bulk_conv<3> : bulk_conv<4>;
                CK(cudaFuncSetAttribute(fn, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
                int per_sm = 0;
                CK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, fn, 256, smem));
                const int grid = std::max(1, per_sm) * nsm;
                report(name, time_graph(st, [&] { fn<<<grid, 256, smem, st>>>(x, y, w, bias, rows, L, D, R); }));
                check_conv(name);
            }
        }
        CK(cudaFree(x));
        CK(cudaFree(y));
        CK(cudaFree(w));
        CK(cudaFree(bias));
    }
    return 0;
}
