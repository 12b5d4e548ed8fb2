/* selective_scan.cu -- Mamba-1 selective scan forward, on CUDA.
 *
 * Exports: jamba_selective_scan_cuda (checks: csrc/cpu/selective_scan.c); the decode step is in
 * selective_state_update.cu.
 * Math, per batch b and channel c, state h (N,) in fp32 (same as csrc/cpu/selective_scan.c):
 *   dt = delta[t] + delta_bias[c];  if softplus: dt = dt <= 20 ? log1p(exp(dt)) : dt
 *   h  = exp(dt * A[c,:]) * h + dt * B[:,t] * u[t]
 *   y  = sum_n h[n] * C[n,t] + D[c] * u[t];   if z: y *= z[t] * sigmoid(z[t]);   out[t] = round(y)
 * exp(dt*A) is evaluated as ex2.approx(dt * (A*log2(e))) on the special-function unit (SFU), A
 * pre-scaled once per thread. The SFU rate (16 ex2/clk/SM) is the floor of this kernel at Jamba shapes:
 * B*DI*L*N exponentials, against ~1.3 bytes per (b, c, t) of memory traffic per state element.
 *
 * Three kernels:
 *   selective_scan_g4_kernel (the bf16 fast path: N = 16, d_inner % 32 == 0, L % 8 == 0, 16-byte aligned rows,
 *     B/C t-fast or n-fast): warp-specialised, 4 scan warps (4 lanes per channel, only the exponentials on the
 *     SFU) beside 4 converter warps (copies, softplus, B/C staged as bf16, gating and stores). Lab, 1x8192: 0.470
 *     ms against 0.529 for its one-role form (shipped until session 13: 0.558 ms at 604c79a).
 *   selective_scan_pc_kernel ("pipelined"): every other call with N <= 16 and L >= 1 (Mamba-1, Jamba:
 *     N = 16; f32 / f16, odd L, odd d_inner, unaligned views). cp.async ring of raw tiles, one barrier per
 *     32-step chunk. H200, bf16, DI 8192: 1x8192 in 0.6025 ms (old kernel 3.0 ms; mamba_ssm 1.475 ms; exp
 *     floor 0.26 ms). Its softplus is max(v, 0) + log1p(exp(-|v|)) with log1p as a polynomial (one
 *     exponential; see pc_softplus).
 *   selective_scan_fwd_kernel (the first design, kept as the general path): N > 16 and L == 0. G threads per
 *     channel (a power of two; G*SPT >= N states, SPT states per thread in registers, SPT = 4 or 16 is the
 *     one template tile parameter), CH = 128/G channels per block, all of one batch. Time runs in chunks of
 *     TC steps: the block stages u, dt (bias + softplus applied), z of its CH channels and the (TC, N) tiles
 *     of B and C in shared memory (coalesced global loads), then each thread walks the chunk with its
 *     states in registers, the G partial sums of y are combined with warp shuffles, and the block writes
 *     the chunk's outputs with coalesced stores. The state is carried across chunks in registers, so any L
 *     (1 .. 1M+) runs in one launch.
 * Benchmark knob: env JAMBA_EXT_SCAN_IMPL=old sends every call to the general kernel, =pc every call with
 * N <= 16 to the pipelined kernel (not the g4 kernel).
 */
#include "common.cuh"

#include <type_traits>

#define SCAN_THREADS 128
#define SCAN_SMEM_BUDGET (48 * 1024)
#define SCAN_TB 8  /* time steps per batch of y reductions (registers yp[SCAN_TB]) */
#define SCAN_EU 16 /* u/dt/z elements a thread prefetches per chunk (registers): TC <= SCAN_EU * G */

/* The operands of one call, shared by both kernels' argument structs (filled by scan_io_fill). */
struct scan_io {
    void *out;
    float *last;
    const void *u, *delta, *z, *Bm, *Cm;
    const float *A, *D, *dbias, *init;
    int64_t B, DI, L, N;
    int64_t su0, su1, sd0, sd1, sz0, sz1;   /* (batch, channel) strides; unit stride along L */
    int64_t sA0, sA1, sB0, sB1, sB2, sC0, sC1, sC2, sD, sdb, si0, si1;
    int bdt, cdt, softplus;
};

static void scan_io_fill(scan_io *a, const jamba_selective_scan_params *p) {
    a->out = p->out.data, a->last = (float *)p->last_state.data;
    a->u = p->u.data, a->delta = p->delta.data, a->z = p->z.data, a->Bm = p->Bm.data, a->Cm = p->Cm.data;
    a->A = (const float *)p->A.data, a->D = (const float *)p->D.data;
    a->dbias = (const float *)p->delta_bias.data, a->init = (const float *)p->initial_state.data;
    a->B = p->u.shape[0], a->DI = p->u.shape[1], a->L = p->u.shape[2], a->N = p->A.shape[1];
    a->su0 = p->u.stride[0], a->su1 = p->u.stride[1], a->sd0 = p->delta.stride[0], a->sd1 = p->delta.stride[1];
    if (a->z) a->sz0 = p->z.stride[0], a->sz1 = p->z.stride[1];
    a->sA0 = p->A.stride[0], a->sA1 = p->A.stride[1];
    a->sB0 = p->Bm.stride[0], a->sB1 = p->Bm.stride[1], a->sB2 = p->Bm.stride[2];
    a->sC0 = p->Cm.stride[0], a->sC1 = p->Cm.stride[1], a->sC2 = p->Cm.stride[2];
    if (a->D) a->sD = p->D.stride[0];
    if (a->dbias) a->sdb = p->delta_bias.stride[0];
    if (a->init) a->si0 = p->initial_state.stride[0], a->si1 = p->initial_state.stride[1];
    a->bdt = (int)p->Bm.dtype, a->cdt = (int)p->Cm.dtype;
    a->softplus = p->delta_softplus;
}

struct scan_args : scan_io {
    int G, CH, Npad;     /* threads per channel, channels per block (128 / G), G*SPT (powers of two) */
    int TC, tc_log2;     /* time chunk (a power of two) */
    int bc_nfast;        /* B/C staged with n fastest (their stride along N is the smaller one) */
};

/* raw 32-bit load of a runtime-dtype element (f32 bits, or the 16 bits of bf16/f16) and its conversion */
__device__ __forceinline__ uint32_t scan_ld_raw(const void *p, int dtype, int64_t i) {
    return dtype == JAMBA_F32 ? __float_as_uint(((const float *)p)[i]) : (uint32_t)((const uint16_t *)p)[i];
}
__device__ __forceinline__ float scan_raw_f(uint32_t r, int dtype) {
    if (dtype == JAMBA_F32) return __uint_as_float(r);
    if (dtype == JAMBA_BF16) return __uint_as_float(r << 16);
    return __half2float(__ushort_as_half((unsigned short)r));
}

/* The next chunk's inputs, held in registers while the current chunk is scanned: the global loads are
 * issued before the scan loop and consumed after it, so their latency hides behind the recurrence.
 * EBC: B/C floats per array and thread (TC * Npad <= EBC * SCAN_THREADS). */
template <typename T, int EBC> struct scan_regs {
    T u[SCAN_EU], d[SCAN_EU], z[SCAN_EU];
    uint32_t b[EBC], c[EBC];
};

/* Issues the loads of chunk [t0, t0 + nt) for batch b, channels c0 .. c0+CH-1.
 *   u/dt/z: element k of this thread is e = tid + k*128 of the (CH, TC) tile, l = e / TC, t = e % TC
 *   (consecutive threads on consecutive t: coalesced along L).
 *   B/C, n fastest: element e = tid + k*128 of the (TC, Npad) tile, t = e / Npad, n = e % Npad.
 *   B/C, t fastest: quad k is e = tid + k*128 of the (Npad/4, TC) quad grid: t = e % TC, n = 4*(e / TC) + i. */
template <typename T, int EBC>
__device__ __forceinline__ void scan_prefetch(scan_regs<T, EBC> &r, const scan_args &a, int64_t b, int64_t c0,
                                              int64_t t0, int nt) {
    const int TC = a.TC, lg = a.tc_log2, CH = a.CH;
    const T *u = (const T *)a.u, *dl = (const T *)a.delta, *z = (const T *)a.z;
#pragma unroll
    for (int k = 0; k < SCAN_EU; k++) {
        const int e = threadIdx.x + k * SCAN_THREADS, l = e >> lg, t = e & (TC - 1);
        const int64_t cc = c0 + l;
        if (l < CH && t < nt && cc < a.DI) {
            r.u[k] = u[b * a.su0 + cc * a.su1 + t0 + t];
            r.d[k] = dl[b * a.sd0 + cc * a.sd1 + t0 + t];
            if (z) r.z[k] = z[b * a.sz0 + cc * a.sz1 + t0 + t];
        }
    }
    const int64_t bB = b * a.sB0, bC = b * a.sC0;
    if (a.bc_nfast) {
#pragma unroll
        for (int k = 0; k < EBC; k++) {
            const int e = threadIdx.x + k * SCAN_THREADS, t = e / a.Npad, n = e & (a.Npad - 1);
            if (t < nt && n < a.N) {
                r.b[k] = scan_ld_raw(a.Bm, a.bdt, bB + n * a.sB1 + (t0 + t) * a.sB2);
                r.c[k] = scan_ld_raw(a.Cm, a.cdt, bC + n * a.sC1 + (t0 + t) * a.sC2);
            }
        }
    } else {
#pragma unroll
        for (int k = 0; k < EBC / 4; k++) {
            const int e = threadIdx.x + k * SCAN_THREADS, q = e >> lg, t = e & (TC - 1);
#pragma unroll
            for (int i = 0; i < 4; i++) {
                const int n = q * 4 + i;
                if (q < (a.Npad >> 2) && t < nt && n < a.N) {
                    r.b[k * 4 + i] = scan_ld_raw(a.Bm, a.bdt, bB + n * a.sB1 + (t0 + t) * a.sB2);
                    r.c[k * 4 + i] = scan_ld_raw(a.Cm, a.cdt, bC + n * a.sC1 + (t0 + t) * a.sC2);
                }
            }
        }
    }
}

/* Writes the prefetched chunk to shared memory in fp32 (dt with bias and softplus applied), zeros where
 * the tile is outside [0, nt) x channels < DI x states < N, so every lane computes on finite values. */
template <typename T, int EBC>
__device__ __forceinline__ void scan_stage(const scan_regs<T, EBC> &r, const scan_args &a, int64_t c0, int nt,
                                           float *su, float *sdt, float *sz, float *sB, float *sC,
                                           const float *sbias) {
    const int TC = a.TC, lg = a.tc_log2, CH = a.CH, TP = TC + 1;
#pragma unroll
    for (int k = 0; k < SCAN_EU; k++) {
        const int e = threadIdx.x + k * SCAN_THREADS, l = e >> lg, t = e & (TC - 1);
        if (l < CH) {
            const bool ok = t < nt && c0 + l < a.DI;
            float dd = 0.f;
            if (ok) {
                dd = jamba_ld<T>(r.d[k]) + sbias[l];
                if (a.softplus) dd = jamba_cu_softplus(dd);
            }
            su[l * TP + t] = ok ? jamba_ld<T>(r.u[k]) : 0.f;
            sdt[l * TP + t] = dd;
            sz[l * TP + t] = (ok && a.z) ? jamba_ld<T>(r.z[k]) : 0.f;
        }
    }
    if (a.bc_nfast) {
#pragma unroll
        for (int k = 0; k < EBC; k++) {
            const int e = threadIdx.x + k * SCAN_THREADS, t = e / a.Npad, n = e & (a.Npad - 1);
            if (t < TC) {
                const bool ok = t < nt && n < a.N;
                sB[e] = ok ? scan_raw_f(r.b[k], a.bdt) : 0.f;
                sC[e] = ok ? scan_raw_f(r.c[k], a.cdt) : 0.f;
            }
        }
    } else {
#pragma unroll
        for (int k = 0; k < EBC / 4; k++) {
            const int e = threadIdx.x + k * SCAN_THREADS, q = e >> lg, t = e & (TC - 1);
            if (q < (a.Npad >> 2)) {
                float vb[4], vc[4];
#pragma unroll
                for (int i = 0; i < 4; i++) {
                    const bool ok = t < nt && q * 4 + i < a.N;
                    vb[i] = ok ? scan_raw_f(r.b[k * 4 + i], a.bdt) : 0.f;
                    vc[i] = ok ? scan_raw_f(r.c[k * 4 + i], a.cdt) : 0.f;
                }
                *(float4 *)&sB[t * a.Npad + q * 4] = make_float4(vb[0], vb[1], vb[2], vb[3]);
                *(float4 *)&sC[t * a.Npad + q * 4] = make_float4(vc[0], vc[1], vc[2], vc[3]);
            }
        }
    }
}

/* One time step of one thread's SPT states: h = exp2(dt*A2)*h + dt*u*B; returns sum_i h[i]*C[i] (the
 * thread's part of y). ut: index of (channel, t) in su/sdt; bt: index of (t, first state) in sB/sC. */
template <int SPT>
__device__ __forceinline__ float scan_step(const float *sdt, const float *su, const float *sB, const float *sC,
                                          int ut, int bt, const float (&A2)[SPT], float (&h)[SPT]) {
    const float dt = sdt[ut], dtu = dt * su[ut];
    float y = 0.f;
    /* 16-byte loads; SPT is a multiple of 4. (An SPT 2 tile, twice the threads at batch 1, measured 1.6x
     * slower on the H200 at every Jamba shape: benchmarks/results/gpu_round2_3b497e2.log.) */
#pragma unroll
    for (int i = 0; i < SPT; i += 4) {
        const float4 bq = *(const float4 *)&sB[bt + i];
        const float4 cq = *(const float4 *)&sC[bt + i];
        const float Bv[4] = {bq.x, bq.y, bq.z, bq.w}, Cv[4] = {cq.x, cq.y, cq.z, cq.w};
#pragma unroll
        for (int j = 0; j < 4; j++) {
            const float dA = jamba_cu_exp2(dt * A2[i + j]);
            h[i + j] = fmaf(dA, h[i + j], dtu * Bv[j]);
            y = fmaf(h[i + j], Cv[j], y);
        }
    }
    return y;
}

/* selective_scan_fwd_kernel
 *   u, delta, z (B, DI, L) T, unit stride along L; out (B, DI, L) T contiguous; A (DI, N) f32;
 *   B, C (B, N, L) f32|T any strides; D, delta_bias (DI,) f32; initial_state (B, DI, N) f32 (unit along N);
 *   last_state (B, DI, N) f32 contiguous.
 *   Block (SCAN_THREADS = CH*G): thread -> (local channel lc = tid / G, state group g = tid % G owning states
 *   g*SPT .. g*SPT+SPT-1). Virtual block vb -> (b = vb / nblk, channels c0 .. c0+CH-1), grid-stride loop.
 *   Per chunk of TC steps: stage the prefetched registers to shared memory, issue the next chunk's loads,
 *   scan, write the outputs. Shared memory: su, sdt, sz, sy (y + D*u) as [CH][TC+1] (padded against bank
 *   conflicts), sB, sC as [TC][Npad], sbias [CH]. */
template <typename T, int SPT, int EBC>
__global__ void __launch_bounds__(SCAN_THREADS) selective_scan_fwd_kernel(scan_args a) {
    jamba_pdl_begin();
    extern __shared__ float4 smem4[];
    float *smem = (float *)smem4;
    const int G = a.G, CH = a.CH, TC = a.TC, Npad = a.Npad, TP = TC + 1;
    const int arr = (CH * TP + 3) & ~3; /* keep sB/sC 16-byte aligned */
    float *su = smem, *sdt = smem + arr, *sz = smem + 2 * arr, *sy = smem + 3 * arr;
    float *sB = smem + 4 * arr, *sC = sB + TC * Npad, *sbias = sC + TC * Npad;
    const int lc = threadIdx.x / G, g = threadIdx.x - lc * G;
    const int64_t nblk = (a.DI + CH - 1) / CH;
    const T *z = (const T *)a.z;
    T *out = (T *)a.out;
    scan_regs<T, EBC> r;

    for (int64_t vb = blockIdx.x; vb < a.B * nblk; vb += gridDim.x) {
        const int64_t b = vb / nblk, c0 = (vb - b * nblk) * CH, c = c0 + lc;
        const bool valid = c < a.DI;
        if (a.L > 0) scan_prefetch(r, a, b, c0, 0, (int)(a.L < TC ? a.L : TC));
        float A2[SPT], h[SPT];
#pragma unroll
        for (int i = 0; i < SPT; i++) {
            const int64_t n = (int64_t)g * SPT + i;
            const bool on = valid && n < a.N;
            A2[i] = on ? a.A[c * a.sA0 + n * a.sA1] * JAMBA_LOG2E : 0.f;
            h[i] = (on && a.init) ? a.init[b * a.si0 + c * a.si1 + n] : 0.f;
        }
        const float Dc = (valid && a.D) ? a.D[c * a.sD] : 0.f;
        for (int i = threadIdx.x; i < CH; i += SCAN_THREADS)
            sbias[i] = (a.dbias && c0 + i < a.DI) ? a.dbias[(c0 + i) * a.sdb] : 0.f;

        for (int64_t t0 = 0; t0 < a.L; t0 += TC) {
            const int nt = (int)(a.L - t0 < TC ? a.L - t0 : TC);
            __syncthreads(); /* the previous chunk's outputs are written; sbias is visible */
            scan_stage(r, a, c0, nt, su, sdt, sz, sB, sC, sbias);
            __syncthreads();
            if (t0 + TC < a.L) {
                const int64_t rem = a.L - t0 - TC;
                scan_prefetch(r, a, b, c0, t0 + TC, (int)(rem < TC ? rem : TC));
            }

            /* recurrence over the chunk, SCAN_TB steps at a time: the partial sums of y stay in registers
             * and are reduced across the G threads of the channel once per SCAN_TB steps, so no shared
             * memory store sits between the steps (it would order every later shared load after it) and
             * the shuffles leave the h chain. The group's g == 0 thread writes y + D*u to sy. */
            int t = 0;
            for (; t + SCAN_TB <= nt; t += SCAN_TB) {
                float yp[SCAN_TB];
#pragma unroll
                for (int k = 0; k < SCAN_TB; k++) yp[k] = scan_step<SPT>(sdt, su, sB, sC, lc * TP + t + k,
                                                                         (t + k) * Npad + g * SPT, A2, h);
#pragma unroll
                for (int k = 0; k < SCAN_TB; k++)
                    for (int o = G >> 1; o > 0; o >>= 1) yp[k] += __shfl_xor_sync(JAMBA_FULL_MASK, yp[k], o);
                if (g == 0) {
#pragma unroll
                    for (int k = 0; k < SCAN_TB; k++)
                        sy[lc * TP + t + k] = fmaf(Dc, su[lc * TP + t + k], yp[k]);
                }
            }
            for (; t < nt; t++) {
                float y = scan_step<SPT>(sdt, su, sB, sC, lc * TP + t, t * Npad + g * SPT, A2, h);
                for (int o = G >> 1; o > 0; o >>= 1) y += __shfl_xor_sync(JAMBA_FULL_MASK, y, o);
                if (g == 0) sy[lc * TP + t] = fmaf(Dc, su[lc * TP + t], y);
            }
            __syncthreads();

            /* gate and write the chunk (coalesced along t) */
#pragma unroll 4
            for (int e = threadIdx.x; e < CH * TC; e += SCAN_THREADS) {
                const int l = e >> a.tc_log2, t = e & (TC - 1);
                const int64_t cc = c0 + l;
                if (cc < a.DI && t < nt) {
                    float y = sy[l * TP + t];
                    if (z) y *= jamba_cu_silu(sz[l * TP + t]);
                    out[(b * a.DI + cc) * a.L + t0 + t] = jamba_st<T>(y);
                }
            }
        }
        if (valid && a.last) {
#pragma unroll
            for (int i = 0; i < SPT; i++) {
                const int64_t n = (int64_t)g * SPT + i;
                if (n < a.N) a.last[(b * a.DI + c) * a.N + n] = h[i];
            }
        }
        __syncthreads(); /* sbias of the next virtual block */
    }
}

/* ==== pipelined fast path (N <= 16) ===================================================================
 * selective_scan_pc_kernel<T, TC>
 *   u, delta, z (B, DI, L) T, unit stride along L; out (B, DI, L) T contiguous; A (DI, N) f32, N <= 16;
 *   B, C (B, N, L) f32|T with unit stride along L ("t-fast") or along N ("n-fast", the model's transposed
 *   (B, L, N) view) or any strides (scalar loads); D, delta_bias (DI,) f32; initial_state (B, DI, N) f32,
 *   unit along N; last_state (B, DI, N) f32 contiguous.
 *   Block: 128 threads = 4 warps, CH = 128 / G = 16 channels of one batch row; virtual block vb -> (b, c0), a
 *   grid-stride loop over B * ceil(DI / CH). Lane: g = lane % G owns states SPT*g .. SPT*g+SPT-1 (G = PC_G = 8
 *   lanes per channel, SPT = 16/G = 2 states per lane; padded to 16 with A = B = C = 0, which keeps h = 0
 *   there) of channel l = warp * (32/G) + lane / G. (G = 4, 4 states per lane with half the warps, measured
 *   slower at every benchmark shape on the H200 at 6c4ae22: 1x8192 0.72 vs 0.65 ms, 8x2048 1.42 vs 1.26 ms.)
 *   Time runs in chunks of TC steps through two shared-memory structures:
 *     raw ring (PC_NSTG stages): the chunk's inputs as stored in global memory (u, delta, z tiles [CH][TC] in
 *       T; B, C as [16][TC] (t-fast / scalar) or [TC][16] (n-fast) in their dtype), filled with 16-byte
 *       cp.async when rows are 16-byte aligned and the piece lies inside [0, L), else element by element;
 *     fp32 sets (two): dt (bias + softplus applied; softplus(v) = max(v, 0) + log1p(exp(-|v|)), one ex2 and
 *       a degree-8 polynomial for log1p, relative error < 5e-7 in fp32: pc_softplus), dt*u, D*u, silu(z) as
 *       [CH][TC+4]; B and C as [TC][PC_BCP]: row t holds, for each lane index g, B of states SPT*g ..
 *       SPT*g+SPT-1 then C of the same states (one 16-byte load per lane and step; 4 floats of row padding
 *       spread the converter's stores over the banks); zeros outside [0, L) and beyond DI, so the padded
 *       steps leave h unchanged (exp(0) = 1, dt*u = 0).
 *   Fast path (host flag a.fast: u/delta/z rows and B/C pieces 16-byte aligned, B/C rows along t or n in u's
 *   dtype, N = 16): full chunks are copied from per-thread source pointers set once per virtual block, and
 *   converted without range checks when all CH channels exist (B/C through per-thread offsets set once per
 *   kernel: pc_plan_bcmap); the last partial chunk, blocks reaching past DI and calls with a.fast = 0 take the
 *   general loader / converter.
 *   Iteration k: wait for chunk k+1's copies, ONE __syncthreads, issue chunk k+NSTG's copies, convert chunk
 *   k+1 (raw -> fp32 set (k+1)&1), scan chunk k from set k&1. Warps of a block drift between conversion
 *   (memory/ALU) and scan (SFU) inside that interval, which overlaps the two.
 *   Scan of 8 steps: the 8*SPT exponentials (dt*A2 then ex2), then the h / y FMA chain, the partial y of
 *   each step kept in registers; after the chunk's TC = 32 steps the G lanes of a channel reduce-scatter the
 *   32 partial sums with shuffles (pc_reduce_all) so lane g ends with steps 4g .. 4g+3, gates them and stores
 *   them with one vector store (a.vec_out: L % 4 == 0 and out aligned; else element by element). (Through a
 *   per-warp shared buffer instead: slower, 0.71 vs 0.65 ms at 1x8192, 6c4ae22.)
 *   Why this form: an A/B round on the H200 (bf16, DI 8192, benchmarks/results/gpu_round_eaa685c.log) measured
 *   1x2048 / 1x8192 / 1x32768 / 8x2048 in 0.1599 / 0.6161 / 2.442 / 1.206 ms (40.8 / 42.4 / 42.8 / 43.3 % of
 *   the exp floor) against 0.1689 / 0.6518 / 2.581 / 1.263 ms for the previous kernel (per-8-step reduce and
 *   scalar store, exp + lg2 softplus, B/C converter offsets per chunk); SASS 12.89 vs 14.12 instructions per
 *   state step.
 *   Hazards: a raw stage is refilled one barrier after its conversion; fp32 set p is rewritten one barrier
 *   after the scan that read it. */
#define PC_THREADS 128
#define PC_NS 16
#define PC_NSTG 3
#define PC_G 8                 /* lanes per channel */
#define PC_BCP (2 * PC_NS + 4) /* fp32 B/C row pitch (floats) */

struct pc_args : scan_io {
    int bsz, csz;            /* element size of B / C (2 or 4) */
    int bmode, cmode;        /* 0: t-fast (unit stride along L), 1: n-fast (unit along N), 2: scalar */
    int vec_u, vec_b, vec_c; /* 16-byte cp.async allowed for u/delta/z rows, B rows, C rows */
    int fast;                /* fast loader / converter for full chunks (see the kernel comment) */
    int vec_out;             /* out rows allow 4-element vector stores (L % 4 == 0, out aligned) */
    int off32;               /* a thread's byte offsets inside a virtual block's rows fit in 31 bits (steady loop) */
    int64_t bc_step[2];      /* steady loop: bytes from chunk k to k+1 of B, C (u's dtype) */
    int bc_gfast;            /* fast B/C converter: items (t, g) walk g fastest (both B and C n-fast) */
    int bc_dt[2], bc_dn[2];  /* B, C raw tiles: bytes per step t and per state n */
    int bc_dj[2], bc_sj;     /* bytes from a thread's B/C item 0 to item 1: in the raw tiles, in the fp32 rows */
};

template <typename T, int TC, int CH> struct pc_cfg {
    static constexpr int TP = TC + 4;                                    /* fp32 row pitch (16-byte rows) */
    static constexpr int RAW_U = CH * TC * (int)sizeof(T);               /* bytes of one u/delta/z tile */
    static constexpr int RAW_BC = PC_NS * TC * 4;                        /* bytes of one B/C tile (<= 4 B) */
    static constexpr int STAGE = 3 * RAW_U + 2 * RAW_BC;                 /* multiple of 16 */
    static constexpr int SET = 4 * CH * TP + TC * PC_BCP;                /* floats */
    static constexpr size_t SMEM = (size_t)PC_NSTG * STAGE + 2 * (size_t)SET * 4 + 2 * CH * 4;
    /* u/delta/z 16-byte pieces: VE elements, PR per row, PPA per tile, NPT per thread */
    static constexpr int VE = 16 / (int)sizeof(T), PR = TC / VE, PPA = CH * PR;
    static constexpr int NPT = (PPA + PC_THREADS - 1) / PC_THREADS;
    static_assert(TC == 16 || TC == 32, "TC 16 or 32 (one B/C piece per thread)");
};

__device__ __forceinline__ uint32_t pc_smem_u32(const void *p) { return (uint32_t)__cvta_generic_to_shared(p); }
__device__ __forceinline__ void pc_cp16(void *dst, const void *src) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(pc_smem_u32(dst)), "l"(src) : "memory");
}
__device__ __forceinline__ void pc_commit() { asm volatile("cp.async.commit_group;" ::: "memory"); }
template <int NPEND> __device__ __forceinline__ void pc_wait() {
    asm volatile("cp.async.wait_group %0;" ::"n"(NPEND) : "memory");
}
/* One thread's piece of a B or C tile: up to 16 bytes of consecutive elements, fixed for a virtual block.
 * Rows along t (mode 0): the piece holds steps t .. t+ve-1 of one state; rows along n (mode 1): states
 * n0 .. n0+nlim-1 of step t. src points at chunk 0; chunk k adds k * step bytes. */
struct pc_piece {
    const unsigned char *src;
    int64_t step;
    int dst, t, nlim, on;
};

__device__ __forceinline__ pc_piece pc_plan_bc(const pc_args &a, int m, int64_t b, int TC) {
    pc_piece pc;
    pc.on = 0, pc.src = nullptr, pc.step = 0, pc.dst = 0, pc.t = 0, pc.nlim = 0;
    const int esz = m ? a.csz : a.bsz, mode = m ? a.cmode : a.bmode, ve = 16 / esz;
    const int64_t sb0 = m ? a.sC0 : a.sB0, sn = m ? a.sC1 : a.sB1, stt = m ? a.sC2 : a.sB2;
    const unsigned char *base = (const unsigned char *)(m ? a.Cm : a.Bm) + b * sb0 * esz;
    const int p = threadIdx.x;
    if (mode == 0) { /* [n][TC]: TC / ve pieces per state row */
        const int pr = TC / ve, n = p / pr, tp = (p - n * pr) * ve;
        if (n < a.N) {
            pc.on = 1, pc.src = base + (n * sn + tp) * esz, pc.step = (int64_t)TC * esz;
            pc.dst = (n * TC + tp) * esz, pc.t = tp, pc.nlim = ve;
        }
    } else if (mode == 1) { /* [TC][16]: ceil(N * esz / 16) pieces per step */
        const int pn = (a.N * esz + 15) / 16, t = p / pn, n0 = (p - t * pn) * ve;
        if (t < TC) {
            pc.on = 1, pc.src = base + (t * stt + n0) * esz, pc.step = (int64_t)TC * stt * esz;
            pc.dst = (t * PC_NS + n0) * esz, pc.t = t, pc.nlim = a.N - n0 < ve ? a.N - n0 : ve;
        }
    }
    return pc;
}

/* The fast loader's u/delta/z pieces of this thread (piece p = threadIdx.x + j * 128), set per virtual block */
template <int NPT> struct pc_uplan {
    const unsigned char *src[NPT][3]; /* chunk 0 of (u, delta, z); chunk k adds k * TC * sizeof(T) */
    int dst[NPT];                     /* byte offset in a raw u tile */
    bool on[NPT];
};
template <typename T, int TC, int CH>
__device__ __forceinline__ pc_uplan<pc_cfg<T, TC, CH>::NPT> pc_plan_u(const pc_args &a, int64_t b, int64_t c0) {
    using K = pc_cfg<T, TC, CH>;
    pc_uplan<K::NPT> pl;
#pragma unroll
    for (int j = 0; j < K::NPT; j++) {
        const int p = threadIdx.x + j * PC_THREADS, l = p / K::PR, tp = (p % K::PR) * K::VE;
        pl.on[j] = p < K::PPA && c0 + l < a.DI;
        pl.dst[j] = (l * TC + tp) * (int)sizeof(T);
        const int64_t cc = pl.on[j] ? c0 + l : 0;
        pl.src[j][0] = (const unsigned char *)((const T *)a.u + b * a.su0 + cc * a.su1 + tp);
        pl.src[j][1] = (const unsigned char *)((const T *)a.delta + b * a.sd0 + cc * a.sd1 + tp);
        pl.src[j][2] = a.z ? (const unsigned char *)((const T *)a.z + b * a.sz0 + cc * a.sz1 + tp) : nullptr;
    }
    return pl;
}

/* The steady loop's copies (a.fast && a.off32, full chunks, NPT == 1): per thread, 32-bit byte offsets from
 * block-uniform row bases (chunk k adds k * TC elements, or k * bc_step bytes for B/C), set once per virtual
 * block, so a chunk's addresses cost one 64-bit add each and no per-thread 64-bit state stays live. */
struct pc_plan32 {
    int uo, dof, zo, udst; /* u / delta / z: byte offsets from the block's row bases; raw-tile offset */
    int bo[2], bdst[2];    /* B, C piece: byte offset from the batch row base; raw-tile offset */
    bool uon, bon[2];
};
template <typename T, int TC, int CH> __device__ __forceinline__ pc_plan32 pc_plan_32(const pc_args &a) {
    using K = pc_cfg<T, TC, CH>;
    static_assert(K::NPT == 1, "one u/delta/z piece per thread");
    pc_plan32 q;
    const int p = threadIdx.x, l = p / K::PR, tp = (p % K::PR) * K::VE, es = (int)sizeof(T);
    q.uon = p < K::PPA;
    q.udst = (l * TC + tp) * es;
    q.uo = (int)(l * a.su1 + tp) * es, q.dof = (int)(l * a.sd1 + tp) * es, q.zo = (int)(l * a.sz1 + tp) * es;
#pragma unroll
    for (int m = 0; m < 2; m++) {
        const int mode = m ? a.cmode : a.bmode, ve = 16 / es; /* B/C in u's dtype (a.fast) */
        const int64_t sn = m ? a.sC1 : a.sB1, stt = m ? a.sC2 : a.sB2;
        q.bon[m] = false, q.bo[m] = 0, q.bdst[m] = 0;
        if (mode == 0) { /* [n][TC]: TC / ve pieces per state row */
            const int pr = TC / ve, n = p / pr, t = (p - n * pr) * ve;
            if (n < a.N) q.bon[m] = true, q.bo[m] = (int)(n * sn + t) * es, q.bdst[m] = (n * TC + t) * es;
        } else { /* [TC][16]: 16 * es / 16 pieces per step */
            const int pn = PC_NS * es / 16, t = p / pn, n0 = (p - t * pn) * ve;
            if (t < TC) q.bon[m] = true, q.bo[m] = (int)(t * stt + n0) * es, q.bdst[m] = (t * PC_NS + n0) * es;
        }
    }
    return q;
}

/* Fast loader: chunk k (all TC steps inside [0, L)) into raw stage `st`, 16-byte copies only. */
template <typename T, int TC, int CH>
__device__ __forceinline__ void pc_load_fast(const pc_args &a, unsigned char *st, int64_t k,
                                             const pc_uplan<pc_cfg<T, TC, CH>::NPT> &pl, const pc_piece (&bc)[2]) {
    using K = pc_cfg<T, TC, CH>;
    const int64_t kb = k * TC * (int64_t)sizeof(T);
#pragma unroll
    for (int j = 0; j < K::NPT; j++) {
        if (!pl.on[j]) continue;
        pc_cp16(st + pl.dst[j], pl.src[j][0] + kb);
        pc_cp16(st + K::RAW_U + pl.dst[j], pl.src[j][1] + kb);
        if (a.z) pc_cp16(st + 2 * K::RAW_U + pl.dst[j], pl.src[j][2] + kb);
    }
#pragma unroll
    for (int m = 0; m < 2; m++)
        if (bc[m].on) pc_cp16(st + 3 * K::RAW_U + m * K::RAW_BC + bc[m].dst, bc[m].src + k * bc[m].step);
}

__device__ __forceinline__ void pc_cp_elems(unsigned char *dst, const unsigned char *src, int cnt, int esz) {
    for (int e = 0; e < cnt; e++) {
        if (esz == 4) ((uint32_t *)dst)[e] = ((const uint32_t *)src)[e];
        else ((uint16_t *)dst)[e] = ((const uint16_t *)src)[e];
    }
}

/* General loader: chunk k = [t0, t0+nt) of (b, c0 .. c0+CH-1) into raw stage `st`. */
template <typename T, int TC, int CH>
__device__ __forceinline__ void pc_load(const pc_args &a, unsigned char *st, int64_t b, int64_t c0, int64_t k,
                                        int nt, const pc_piece (&bc)[2]) {
    using K = pc_cfg<T, TC, CH>;
    constexpr int VE = K::VE, PR = K::PR, PPA = K::PPA, NPT = K::NPT;
    const int64_t t0 = k * TC;
#pragma unroll
    for (int arr = 0; arr < 3; arr++) {
        const T *srcb = arr == 0 ? (const T *)a.u : arr == 1 ? (const T *)a.delta : (const T *)a.z;
        if (srcb == nullptr) continue;
        const int64_t s0 = arr == 0 ? a.su0 : arr == 1 ? a.sd0 : a.sz0, s1 = arr == 0 ? a.su1 : arr == 1 ? a.sd1 : a.sz1;
#pragma unroll
        for (int j = 0; j < NPT; j++) {
            const int p = threadIdx.x + j * PC_THREADS, l = p / PR, tp = (p % PR) * VE;
            if ((PPA % PC_THREADS != 0 && p >= PPA) || c0 + l >= a.DI) continue;
            const T *src = srcb + b * s0 + (c0 + l) * s1 + t0 + tp;
            T *dst = (T *)(st + arr * K::RAW_U) + l * TC + tp;
            if (a.vec_u && tp + VE <= nt) {
                pc_cp16(dst, src);
            } else {
#pragma unroll
                for (int e = 0; e < VE; e++)
                    if (tp + e < nt) dst[e] = src[e];
            }
        }
    }
#pragma unroll
    for (int m = 0; m < 2; m++) {
        unsigned char *dst0 = st + 3 * K::RAW_U + m * K::RAW_BC;
        const int mode = m ? a.cmode : a.bmode, esz = m ? a.csz : a.bsz;
        if (mode == 2) { /* any strides: [n][TC], element by element */
            const unsigned char *base = (const unsigned char *)(m ? a.Cm : a.Bm);
            const int64_t sb0 = m ? a.sC0 : a.sB0, sn = m ? a.sC1 : a.sB1, stt = m ? a.sC2 : a.sB2;
            for (int p = threadIdx.x; p < a.N * nt; p += PC_THREADS) {
                const int n = p / nt, t = p - n * nt;
                pc_cp_elems(dst0 + (n * TC + t) * esz, base + (b * sb0 + n * sn + (t0 + t) * stt) * esz, 1, esz);
            }
            continue;
        }
        const pc_piece &pc = bc[m];
        if (!pc.on) continue;
        const unsigned char *src = pc.src + k * pc.step;
        const int ve = 16 / esz;
        int cnt;
        if (mode == 0) cnt = nt - pc.t < ve ? nt - pc.t : ve;
        else cnt = pc.t < nt ? pc.nlim : 0;
        if (cnt <= 0) continue;
        if ((m ? a.vec_c : a.vec_b) && cnt == ve) pc_cp16(dst0 + pc.dst, src);
        else pc_cp_elems(dst0 + pc.dst, src, cnt, esz);
    }
}

/* Column of state n of B (m = 0) or C (m = 1) in a fp32 B/C row (see the kernel comment) */
template <int SPT> __device__ __forceinline__ int pc_bcpos(int n, int m) {
    return (n / SPT) * 2 * SPT + m * SPT + n % SPT;
}
/* General: B or C raw tile ([16][TC] or, n-fast, [TC][16], element type E) -> its columns of the fp32 B/C
 * rows; zeros outside nt x N */
template <typename E, int TC, int SPT>
__device__ __forceinline__ void pc_convert_bc_t(const E *r, float *dst, int m, bool nfast, int nt, int N) {
#pragma unroll
    for (int j = 0; j < TC * PC_NS / PC_THREADS; j++) {
        const int e = threadIdx.x + j * PC_THREADS, t = e >> 4, n = e & 15;
        const float v = jamba_ld<E>(r[nfast ? e : n * TC + t]);
        dst[t * PC_BCP + pc_bcpos<SPT>(n, m)] = (t < nt && n < N) ? v : 0.f;
    }
}
template <int TC, int SPT>
__device__ __forceinline__ void pc_convert_bc(const unsigned char *r, float *dst, int m, bool nfast, int dt, int nt,
                                              int N) {
    if (dt == JAMBA_F32) pc_convert_bc_t<float, TC, SPT>((const float *)r, dst, m, nfast, nt, N);
    else if (dt == JAMBA_BF16) pc_convert_bc_t<__nv_bfloat16, TC, SPT>((const __nv_bfloat16 *)r, dst, m, nfast, nt, N);
    else pc_convert_bc_t<__half, TC, SPT>((const __half *)r, dst, m, nfast, nt, N);
}
/* Fast B/C converter (full chunks, N = 16, B/C in u's dtype): a thread's items (step t, lane index g) walk t
 * fastest for t-fast tiles, g fastest when both tiles are n-fast (bank-friendly loads either way). Its byte
 * offsets of item 0 (in the raw B and C tiles, in the fp32 rows) are set once per kernel; the layout-dependent
 * strides between a thread's items are uniform (pc_args: bc_dt, bc_dn, bc_dj, bc_sj). */
struct pc_bcmap {
    int lb, lc, st;
};
template <int TC, int G> __device__ __forceinline__ pc_bcmap pc_plan_bcmap(const pc_args &a) {
    constexpr int SPT = PC_NS / G;
    const int e = threadIdx.x, t = a.bc_gfast ? e / G : e % TC, g = a.bc_gfast ? e % G : e / TC;
    pc_bcmap m;
    m.lb = t * a.bc_dt[0] + SPT * g * a.bc_dn[0];
    m.lc = t * a.bc_dt[1] + SPT * g * a.bc_dn[1];
    m.st = (t * PC_BCP + g * 2 * SPT) * 4;
    return m;
}
/* A full chunk of B and C -> fp32 B/C rows with the item mapping of pc_plan_bcmap and no per-chunk index
 * math: per item, B and C of states SPT*g .. +SPT-1 at step t, one 16-byte store */
template <typename E, int TC, int G>
__device__ __forceinline__ void pc_convert_bc_map(const pc_args &a, const unsigned char *rB,
                                                  const unsigned char *rC, float *sBC, const pc_bcmap &m) {
    constexpr int SPT = PC_NS / G;
    static_assert(SPT == 2 && (TC * G) % PC_THREADS == 0, "one 16-byte store per item");
    const unsigned char *pb = rB + m.lb, *pc = rC + m.lc;
    unsigned char *d = (unsigned char *)sBC + m.st;
#pragma unroll
    for (int j = 0; j < TC * G / PC_THREADS; j++) {
        const float b0 = jamba_ld<E>(*(const E *)pb), b1 = jamba_ld<E>(*(const E *)(pb + a.bc_dn[0]));
        const float q0 = jamba_ld<E>(*(const E *)pc), q1 = jamba_ld<E>(*(const E *)(pc + a.bc_dn[1]));
        *(float4 *)d = make_float4(b0, b1, q0, q1);
        pb += a.bc_dj[0], pc += a.bc_dj[1], d += a.bc_sj;
    }
}

/* 4 consecutive elements of a raw u/delta/z row (8- or 16-byte aligned) */
template <typename T> __device__ __forceinline__ void pc_ld4(const T *p, float v[4]) {
    if constexpr (sizeof(T) == 4) {
        const float4 q = *(const float4 *)p;
        v[0] = q.x, v[1] = q.y, v[2] = q.z, v[3] = q.w;
    } else {
        const uint2 q = *(const uint2 *)p;
        const T *h = (const T *)&q;
#pragma unroll
        for (int i = 0; i < 4; i++) v[i] = jamba_ld<T>(h[i]);
    }
}

/* silu(z) = z * sigmoid(z) with the SFU reciprocal (z -> -inf: 1 + e = inf, result 0) */
__device__ __forceinline__ float pc_silu(float z) {
    return __fdividef(z, 1.f + jamba_cu_exp2(-z * JAMBA_LOG2E));
}
/* softplus (torch threshold 20) = max(v, 0) + log1p(e), e = 2^(-|v| log2 e) in (0, 1] on the SFU, log1p(e) =
 * e * P(e) with P a degree-8 fit of log1p(x)/x on [0, 1] (fit error 8e-8). Relative error (CPU emulation of
 * the fp32 FMA chain over v in [-40, 40]): 2.0e-7 with an exact e, < 4.4e-7 with e off by 2 ulp (ex2.approx;
 * for v < 0 the result is ~e, so e's error passes through). The earlier form, exp plus lg2.approx or a series
 * selected by a compare, used two SFU ops for < 1e-6. One SFU op, no compare / select: v > 20 gives
 * v + (< 2.1e-9), which rounds to v as torch's threshold does; v = -inf gives 0, NaN stays NaN.
 * SHORT (the g4 converters, session 15): P of degree 6 (reweighted least squares for relative error; log1p's
 * relative error 1.4e-6 in fp32; bf16 inputs carry 3.9e-3), 2 FFMA fewer: 1% of the g4 kernel's time. */
template <int N> __device__ __forceinline__ float pc_horner(float x, const float (&c)[N]) { /* c: highest first */
    float q = c[0];
#pragma unroll
    for (int i = 1; i < N; i++) q = fmaf(x, q, c[i]);
    return q;
}
template <bool SHORT = false> __device__ __forceinline__ float pc_softplus(float v) {
    const float e = jamba_cu_exp2(fabsf(v) * -JAMBA_LOG2E);
    const float q = SHORT ? pc_horner(e, {0.014135826379f, -0.066382117569f, 0.149195984006f, -0.235020130873f,
                                          0.331088721752f, -0.499868929386f, 0.999998688698f})
                          : pc_horner(e, {0.005232701078f, -0.029505278916f, 0.078226044774f, -0.136632576585f,
                                          0.191060140729f, -0.248429849744f, 0.333190977573f, -0.499994933605f,
                                          0.999999940395f});
    return fmaf(e, q, fmaxf(v, 0.f));
}

/* raw stage -> fp32 set (see the kernel comment). FULL: all TC steps and CH channels exist and B/C take the
 * fast converter (a.fast); else zeros outside [0, nt) x channels < DI x states < N.
 * u/delta/z: a thread converts 4 consecutive steps of one channel per item (8 * TC items). */
template <typename T, int TC, int CH, int G, bool FULL>
__device__ __forceinline__ void pc_convert(const pc_args &a, const unsigned char *st, float *set, int64_t c0,
                                           int nt, const float *sbias, const float *sD, const pc_bcmap &bm) {
    using K = pc_cfg<T, TC, CH>;
    constexpr int TP = K::TP, SPT = PC_NS / G;
    float *sdt = set, *sdtu = set + CH * TP, *sdu = sdtu + CH * TP, *sgz = sdu + CH * TP;
    float *sBC = sgz + CH * TP;
    const T *ru = (const T *)st, *rd = (const T *)(st + K::RAW_U), *rz = (const T *)(st + 2 * K::RAW_U);
#pragma unroll
    for (int j = 0; j < CH * TC / 4 / PC_THREADS; j++) {
        const int e = threadIdx.x + j * PC_THREADS, l = e / (TC / 4), tq = (e % (TC / 4)) * 4;
        const bool cok = FULL || c0 + l < a.DI;
        float uu[4], dd[4], zz[4], dt[4], dtu[4], du[4], gz[4];
        pc_ld4<T>(ru + l * TC + tq, uu);
        pc_ld4<T>(rd + l * TC + tq, dd);
        if (a.z) pc_ld4<T>(rz + l * TC + tq, zz);
        const float bias = sbias[l], Dc = sD[l];
#pragma unroll
        for (int i = 0; i < 4; i++) {
            const bool ok = FULL || (cok && tq + i < nt);
            const float u = ok ? uu[i] : 0.f;
            float d = dd[i] + bias;
            if (a.softplus) d = pc_softplus(d);
            d = ok ? d : 0.f;
            dt[i] = d, dtu[i] = d * u, du[i] = Dc * u;
            gz[i] = (a.z && ok) ? pc_silu(zz[i]) : 1.f;
        }
        const int o = l * TP + tq;
        *(float4 *)(sdt + o) = make_float4(dt[0], dt[1], dt[2], dt[3]);
        *(float4 *)(sdtu + o) = make_float4(dtu[0], dtu[1], dtu[2], dtu[3]);
        *(float4 *)(sdu + o) = make_float4(du[0], du[1], du[2], du[3]);
        *(float4 *)(sgz + o) = make_float4(gz[0], gz[1], gz[2], gz[3]);
    }
    const unsigned char *rB = st + 3 * K::RAW_U, *rC = rB + K::RAW_BC;
    if constexpr (FULL) {
        pc_convert_bc_map<T, TC, G>(a, rB, rC, sBC, bm);
    } else {
        pc_convert_bc<TC, SPT>(rB, sBC, 0, a.bmode == 1, a.bdt, nt, a.N);
        pc_convert_bc<TC, SPT>(rC, sBC, 1, a.cmode == 1, a.cdt, nt, a.N);
    }
}

/* dt and dt*u of 8 consecutive steps (16-byte aligned rows of the fp32 set) */
__device__ __forceinline__ void pc_ld8(const float *sdt, const float *sdtu, float dv[8], float dtu[8]) {
    const float4 d0 = *(const float4 *)sdt, d1 = *(const float4 *)(sdt + 4);
    const float4 w0 = *(const float4 *)sdtu, w1 = *(const float4 *)(sdtu + 4);
    dv[0] = d0.x, dv[1] = d0.y, dv[2] = d0.z, dv[3] = d0.w, dv[4] = d1.x, dv[5] = d1.y, dv[6] = d1.z, dv[7] = d1.w;
    dtu[0] = w0.x, dtu[1] = w0.y, dtu[2] = w0.z, dtu[3] = w0.w, dtu[4] = w1.x, dtu[5] = w1.y, dtu[6] = w1.z,
    dtu[7] = w1.w;
}
/* exp2(dt * A2) of 8 steps x this lane's SPT states, and dt*u of the 8 steps */
template <int SPT>
__device__ __forceinline__ void pc_exps8(const float *sdt, const float *sdtu, const float (&A2)[SPT],
                                         float (&dA)[8][SPT], float (&dtu)[8]) {
    float dv[8];
    pc_ld8(sdt, sdtu, dv, dtu);
#pragma unroll
    for (int m = 0; m < 8; m++)
#pragma unroll
        for (int i = 0; i < SPT; i++) dA[m][i] = jamba_cu_exp2(dv[m] * A2[i]);
}

/* The scan of one TC-step chunk for this lane's SPT states (h in / out) from the fp32 dt / dt*u rows sdt / sdtu:
 * the exponentials of 8-step block j+1 are written next to block j's FMA steps (ptxas still groups them; an
 * interleaving forced by a false dependency measured no faster on the H200); bc(s, bv, cv) loads step s's B and
 * C values of the lane's states; the partial y of each step goes to yc. */
template <int SPT, int TC, typename BC>
__device__ __forceinline__ void pc_scan_steps(const float *sdt, const float *sdtu, const float (&A2)[SPT],
                                              float (&h)[SPT], float (&yc)[TC], const BC &bc) {
    float dA[8][SPT], dtu[8];
    pc_exps8<SPT>(sdt, sdtu, A2, dA, dtu);
#pragma unroll
    for (int t = 0; t < TC; t += 8) {
        float dAn[8][SPT], dtun[8], dvn[8];
        if (t + 8 < TC) pc_ld8(sdt + t + 8, sdtu + t + 8, dvn, dtun);
#pragma unroll
        for (int m = 0; m < 8; m++) {
            if (t + 8 < TC) {
#pragma unroll
                for (int i = 0; i < SPT; i++) dAn[m][i] = jamba_cu_exp2(dvn[m] * A2[i]);
            }
            float bv[SPT], cv[SPT];
            bc(t + m, bv, cv);
            float y = 0.f;
#pragma unroll
            for (int i = 0; i < SPT; i++) {
                h[i] = fmaf(dA[m][i], h[i], dtu[m] * bv[i]);
                y = fmaf(h[i], cv[i], y);
            }
            yc[t + m] = y;
        }
        if (t + 8 < TC) {
#pragma unroll
            for (int m = 0; m < 8; m++) {
                dtu[m] = dtun[m];
#pragma unroll
                for (int i = 0; i < SPT; i++) dA[m][i] = dAn[m][i];
            }
        }
    }
}

/* The G partial sums of all NS steps of a chunk -> lane g's NS/G consecutive steps (NS/G)*g .. in
 * y[0 .. NS/G-1]: shuffle reduce-scatter, halving the steps per level (lane bit G/2 first), so that each lane
 * ends with a run of steps it gates and stores as one vector. One level per call (W, O compile-time: a loop
 * over the levels was left rolled by nvcc, y in local memory). */
template <int W, int O, int NS> __device__ __forceinline__ void pc_reduce_lv(float (&y)[NS], int g) {
    const bool hi = (g & O) != 0;
#pragma unroll
    for (int i = 0; i < W; i++) {
        const float send = hi ? y[i] : y[i + W], keep = hi ? y[i + W] : y[i];
        y[i] = keep + __shfl_xor_sync(JAMBA_FULL_MASK, send, O);
    }
}
template <int G, int NS> __device__ __forceinline__ void pc_reduce_all(float (&y)[NS], int g) {
    static_assert(G == 8, "three levels");
    pc_reduce_lv<NS / 2, 4>(y, g);
    pc_reduce_lv<NS / 4, 2>(y, g);
    pc_reduce_lv<NS / 8, 1>(y, g);
}
/* 4 consecutive outputs as one 8-byte (16-bit T) or 16-byte (f32) store */
template <typename T> __device__ __forceinline__ void pc_st4(T *p, const float (&v)[4]) {
    if constexpr (sizeof(T) == 4) {
        *(float4 *)p = make_float4(v[0], v[1], v[2], v[3]);
    } else if constexpr (std::is_same<T, __nv_bfloat16>::value) {
        *(uint2 *)p = make_uint2(jamba_bf16x2_st(v[0], v[1]), jamba_bf16x2_st(v[2], v[3]));
    } else {
        *(uint2 *)p = make_uint2(jamba_f16x2_st(v[0], v[1]), jamba_f16x2_st(v[2], v[3]));
    }
}

template <typename T, int TC>
__global__ void __launch_bounds__(PC_THREADS, 4) selective_scan_pc_kernel(pc_args a) {
    jamba_pdl_begin();
    constexpr int G = PC_G, CH = PC_THREADS / G, SPT = PC_NS / G; /* channels per block, states per lane */
    static_assert(SPT == 2, "one 16-byte B/C load per lane and step");
    using K = pc_cfg<T, TC, CH>;
    constexpr int TP = K::TP;
    extern __shared__ float4 pc_smem4[];
    unsigned char *raw = (unsigned char *)pc_smem4;
    float *sets = (float *)(raw + PC_NSTG * K::STAGE);
    float *sbias = sets + 2 * K::SET, *sD = sbias + CH;
    const int lane = threadIdx.x & 31, g = lane % G, l = (threadIdx.x >> 5) * (32 / G) + lane / G;
    const int64_t nblk = (a.DI + CH - 1) / CH, nchunks = (a.L + TC - 1) / TC;
    T *out = (T *)a.out;
    const pc_bcmap bm = pc_plan_bcmap<TC, G>(a);

    for (int64_t vb = blockIdx.x; vb < a.B * nblk; vb += gridDim.x) {
        const int64_t b = vb / nblk, c0 = (vb - b * nblk) * CH, c = c0 + l;
        const bool cvalid = c < a.DI, allch = c0 + CH <= a.DI;
        __syncthreads(); /* the previous virtual block is done with sbias / sD / raw / sets */
        for (int i = threadIdx.x; i < CH; i += PC_THREADS) {
            const bool ok = c0 + i < a.DI;
            sbias[i] = (ok && a.dbias) ? a.dbias[(c0 + i) * a.sdb] : 0.f;
            sD[i] = (ok && a.D) ? a.D[(c0 + i) * a.sD] : 0.f;
        }
        float A2[SPT], h[SPT];
#pragma unroll
        for (int i = 0; i < SPT; i++) {
            const int n = SPT * g + i;
            const bool on = cvalid && n < a.N;
            A2[i] = on ? a.A[c * a.sA0 + n * a.sA1] * JAMBA_LOG2E : 0.f;
            h[i] = (on && a.init) ? a.init[b * a.si0 + c * a.si1 + n] : 0.f;
        }
        const pc_piece bc[2] = {pc_plan_bc(a, 0, b, TC), pc_plan_bc(a, 1, b, TC)};
        const auto upl = pc_plan_u<T, TC, CH>(a, b, c0);
        /* 32-bit chunk index (L < 2^31 * TC), steps of chunk k = TC except the last (ntl), output row pointer
         * set once per virtual block */
        const int nck = (int)nchunks;
        const int ntl = (int)(a.L - (int64_t)(nchunks - 1) * TC);
        auto steps = [&](int kk) -> int { return kk + 1 < nck ? TC : ntl; };
        T *const obase = out + (b * a.DI + c) * a.L + 4 * g;
        auto load = [&](unsigned char *st, int kk) {
            const int nt = steps(kk);
            if (a.fast && nt == TC) pc_load_fast<T, TC, CH>(a, st, kk, upl, bc);
            else pc_load<T, TC, CH>(a, st, b, c0, kk, nt, bc);
        };
        auto convert = [&](const unsigned char *st, float *set, int kk) {
            const int nt = steps(kk);
            if (a.fast && allch && nt == TC) pc_convert<T, TC, CH, G, true>(a, st, set, c0, nt, sbias, sD, bm);
            else pc_convert<T, TC, CH, G, false>(a, st, set, c0, nt, sbias, sD, bm);
        };
        /* prologue: chunks 0 .. NSTG-1 in flight, chunk 0 converted */
#pragma unroll
        for (int s = 0; s < PC_NSTG; s++) {
            if (s < nchunks) load(raw + s * K::STAGE, s);
            pc_commit();
        }
        pc_wait<PC_NSTG - 1>();
        __syncthreads(); /* chunk 0's copies and sbias / sD visible */
        if (nchunks > 0) convert(raw, sets, 0);

        int ls = 0, cs = 1 % PC_NSTG; /* raw stages of chunk k + NSTG (= k % NSTG) and of chunk k + 1 */
        /* scan of chunk k from fp32 set k&1, then its nst outputs (0 .. TC) of this lane stored from op */
        auto scan_chunk = [&](int k, int nst, T *const op, const bool vec) {
            const float *set = sets + (k & 1) * K::SET;
            const float *sdt = set, *sdtu = set + CH * TP, *sdu = sdtu + CH * TP, *sgz = sdu + CH * TP;
            const float *sBC = sgz + CH * TP + g * 2 * SPT;
            float yc[TC];
            const float *const sdl = sdt + l * TP, *const sdul = sdtu + l * TP;
            pc_scan_steps<SPT, TC>(sdl, sdul, A2, h, yc, [sBC](int st, float(&bv)[SPT], float(&cv)[SPT]) {
                const float4 q = *(const float4 *)(sBC + st * PC_BCP);
                bv[0] = q.x, bv[1] = q.y, cv[0] = q.z, cv[1] = q.w;
            });
            static_assert(TC / G == 4, "4 outputs per lane and chunk");
            pc_reduce_all<G, TC>(yc, g);
            const int tt = 4 * g;
            if (tt < nst) {
                const float4 du = *(const float4 *)(sdu + l * TP + tt), gz = *(const float4 *)(sgz + l * TP + tt);
                const float v[4] = {(yc[0] + du.x) * gz.x, (yc[1] + du.y) * gz.y, (yc[2] + du.z) * gz.z,
                                    (yc[3] + du.w) * gz.w};
                if (vec && tt + 4 <= nst) {
                    pc_st4<T>(op, v);
                } else {
#pragma unroll
                    for (int i = 0; i < 4; i++)
                        if (tt + i < nst) op[i] = jamba_st<T>(v[i]);
                }
            }
        };
        int k = 0;
        /* Steady loop: chunks k, k+1 and k+NSTG all full, every channel present, fast layouts (a.fast,
         * a.off32, a.vec_out): no dispatch, addresses from 32-bit per-thread offsets and block-uniform bases,
         * B/C sources advanced by one chunk per iteration. The general loop below recomputes 64-bit addresses
         * every chunk under the 128-register budget: ~839 bf16 SASS instructions per thread and chunk there,
         * 769 here. Measured (H200, bf16, DI 8192, A/B in one binary, 1fb09d3, scan_ab_1fb09d3.log): 2.4-2.7%
         * faster at every benchmark shape (1x8192 0.6025 vs 0.6185 ms), bit-identical output. */
        const int nfull = ntl == TC ? nck : nck - 1;
        if (a.fast && a.off32 && a.vec_out && allch && PC_NSTG < nfull) {
            const pc_plan32 q = pc_plan_32<T, TC, CH>(a);
            const unsigned char *const ub = (const unsigned char *)((const T *)a.u + b * a.su0 + c0 * a.su1);
            const unsigned char *const db = (const unsigned char *)((const T *)a.delta + b * a.sd0 + c0 * a.sd1);
            const unsigned char *const zb =
                a.z ? (const unsigned char *)((const T *)a.z + b * a.sz0 + c0 * a.sz1) : nullptr;
            /* B / C pieces of chunk k + NSTG (advanced by one chunk per iteration) */
            const unsigned char *bsrc = (const unsigned char *)((const T *)a.Bm + b * a.sB0) + q.bo[0] +
                                        PC_NSTG * a.bc_step[0];
            const unsigned char *csrc = (const unsigned char *)((const T *)a.Cm + b * a.sC0) + q.bo[1] +
                                        PC_NSTG * a.bc_step[1];
            T *const ob = out + (b * a.DI + c0) * a.L;
            const int oo = l * (int)a.L + 4 * g;
            for (; k + PC_NSTG < nfull; k++) {
                pc_wait<PC_NSTG - 2>();
                __syncthreads();
                {
                    unsigned char *st = raw + ls * K::STAGE;
                    const int64_t kn = k + PC_NSTG, kb = kn * (TC * (int64_t)sizeof(T));
                    if (q.uon) {
                        pc_cp16(st + q.udst, ub + kb + q.uo);
                        pc_cp16(st + K::RAW_U + q.udst, db + kb + q.dof);
                        if (zb) pc_cp16(st + 2 * K::RAW_U + q.udst, zb + kb + q.zo);
                    }
                    if (q.bon[0]) pc_cp16(st + 3 * K::RAW_U + q.bdst[0], bsrc);
                    if (q.bon[1]) pc_cp16(st + 3 * K::RAW_U + K::RAW_BC + q.bdst[1], csrc);
                    bsrc += a.bc_step[0], csrc += a.bc_step[1];
                }
                pc_commit();
                pc_convert<T, TC, CH, G, true>(a, raw + cs * K::STAGE, sets + ((k + 1) & 1) * K::SET, c0, TC, sbias,
                                               sD, bm);
                ls = ls + 1 == PC_NSTG ? 0 : ls + 1;
                cs = cs + 1 == PC_NSTG ? 0 : cs + 1;
                scan_chunk(k, TC, ob + (int64_t)k * TC + oo, true);
            }
        }
        for (; k < nck; k++) {
            pc_wait<PC_NSTG - 2>();
            __syncthreads();
            if (k + PC_NSTG < nck) load(raw + ls * K::STAGE, k + PC_NSTG);
            pc_commit();
            if (k + 1 < nck) convert(raw + cs * K::STAGE, sets + ((k + 1) & 1) * K::SET, k + 1);
            ls = ls + 1 == PC_NSTG ? 0 : ls + 1;
            cs = cs + 1 == PC_NSTG ? 0 : cs + 1;
            scan_chunk(k, cvalid ? steps(k) : 0, obase + (int64_t)k * TC, a.vec_out != 0);
        }
        pc_wait<0>(); /* no copy in flight into the next virtual block's buffers */
        if (cvalid && a.last) {
#pragma unroll
            for (int i = 0; i < SPT; i++)
                if (SPT * g + i < a.N) a.last[(b * a.DI + c) * a.N + SPT * g + i] = h[i];
        }
    }
}

template <typename T> static jamba_status pc_launch(const pc_args &a, cudaStream_t stream) {
    constexpr int TC = 32, CH = PC_THREADS / PC_G;
    using K = pc_cfg<T, TC, CH>;
    const int64_t nvb = a.B * ((a.DI + CH - 1) / CH);
    const int64_t grid = nvb < JAMBA_MAX_GRID_X ? nvb : JAMBA_MAX_GRID_X;
    JAMBA_CUDA_CHECK(cudaFuncSetAttribute(selective_scan_pc_kernel<T, TC>,
                                          cudaFuncAttributeMaxDynamicSharedMemorySize, (int)K::SMEM));
    jamba_kernel_launch(selective_scan_pc_kernel<T, TC>, (unsigned)grid, PC_THREADS, K::SMEM, stream, a);
    JAMBA_LAUNCH_CHECK("jamba.selective_scan: kernel launch (pipelined)", stream);
    return JAMBA_OK;
}

static bool pc_aligned(const void *p, int64_t s0, int64_t s1, int64_t n0, int64_t n1, int esz) {
    const int64_t ve = 16 / esz;
    return ((uintptr_t)p % 16) == 0 && (s0 % ve == 0 || n0 <= 1) && (s1 % ve == 0 || n1 <= 1);
}

/* ---- selective_scan_g4_kernel: the bf16 fast path (warp-specialised: 4 scan warps + 4 converter warps) -------
 * Shapes / layouts: u, delta, z bf16 (B, DI, L), unit stride along L, 16-byte aligned (batch, channel) rows;
 * B, C bf16 (B, 16, L) with rows along t (t-fast) or 16 contiguous states per step (n-fast, as sliced from the
 * model's x_proj output), 16-byte aligned; A (DI, 16), D, delta_bias (DI,), initial_state (B, DI, 16) fp32;
 * out bf16 (B, DI, L) contiguous, last_state fp32 (B, DI, 16). DI % 32 == 0, L % 8 == 0, delta_softplus (a run-time
 * softplus flag made the 8 softplus chains of a lane run one after another behind branches); any other call
 * takes selective_scan_pc_kernel.
 * Block = 256 threads for 32 channels (G4_CH) of one batch row, in two roles; time in 32-step chunks.
 *   Scan warps (threads 0..127): 4 lanes per channel (g = lane % 4), 4 states per lane (n = 4g .. 4g+3). Per chunk
 *   k: one __syncthreads, then per step SPT x (dt*A2, ex2, dt*u*B, h FMA, y FMA) from the converted set k & 1 (the
 *   exponentials of the next 8 steps issued with the current 8 steps' FMA chains, pc_scan_steps), the 4 partial
 *   sums of each step reduce-scattered over two shuffle levels (lane g: steps 8g .. 8g+7) into the y tile
 *   ybuf[k & 1] (32 channels x G4_TP floats). Their only SFU work is the 128 exponentials per lane and chunk.
 *   Converter warps (threads 128..255, c = 0..127, lane g = c % 4 of channel c / 4): the copies of chunk k+3 into a
 *   3-stage cp.async ring of raw tiles (u, delta, z: 32 rows x 64 bytes; B, C: 1 KB each, [n][t] or [t][n]); then
 *   chunk k-1's outputs (below); then (after their copies land and a __syncwarp: each warp converts only what its
 *   lanes copied) chunk k+1's conversion: dt = softplus(delta + bias)
 *   and dt*u of steps 8g .. 8g+7 into fp32 rows (pitch G4_TP = 36 floats: 16-byte aligned, the 8 rows a warp reads
 *   at once in distinct banks), B and C into bf16 pieces [t][g][B(4) C(4)] (16 bytes: one load per scan lane and
 *   step), the raw u / z words of those steps kept in registers (two sets by chunk parity) until the outputs of the
 *   chunk: (y + D u) silu(z) from ybuf[k & 1], one 16-byte store. Steps past L in the last chunk: dt = dt*u = 0 and
 *   B = C = 0 (h unchanged; a branch taken in the last chunk only), their outputs not stored. Session 14
 *   (scan_lean_ab_e25f711.log, ms at 1x2048 / 1x8192 / 1x32768 / 8x2048, B/C t-fast, then n-fast): the converter
 *   loop without per-step masks and register rotation, and with the 16-byte store forced (~286 instead of 358 SASS
 *   instructions per chunk), 0.121 / 0.466 / 1.845 / 0.873, n-fast 0.118 / 0.454 / 1.799 / 0.888, against 0.124 /
 *   0.478 / 1.891 / 0.899, n-fast 0.123 / 0.472 / 1.869 / 0.922. Session 15: chunks 1 .. nck-5 through a loop body
 *   without bound checks (scan_bcf_fl_ab_86c5c38.log: 1x8192 n-fast 0.454 -> 0.451) and the degree-6 softplus
 *   (scan_sp6_8b48241.log): 0.117 / 0.447 / 1.765 / 0.880, n-fast 0.117 / 0.446 / 1.764 / 0.879.
 * Why two roles (dev/cuda/scan_ilp_lab.cu, H200, bf16, DI 8192; benchmarks/results/scan_ws*_lab*.log, ms at 1x2048 /
 *   1x8192 / 1x32768 / 8x2048): with every warp doing all of it (the lab's G4h, this kernel's previous form) a warp's
 *   chunk is an SFU-bound scan followed by a long SFU-idle stretch (conversion, gating, stores), and the two warps of
 *   a scheduler run in step: the SFU sat ~60% busy whatever the instruction count (ncu_scan_lab_38d2470.log: 1319 or
 *   1050 instructions per warp and chunk, the same 61%). Split into roles: 0.125 / 0.470 / 1.850 / 0.921 against
 *   0.138 / 0.529 / 2.075 / 0.910 in the same run. Earlier steps (session 12): B/C staged as bf16 pieces instead of
 *   fp32 (the pipelined kernel's B/C loads alone kept shared memory as busy as the SFU), 4 lanes per channel
 *   instead of 8 (two shuffle levels).
 * Hazards: a raw stage is refilled one barrier after its conversion; fp32 set p is rewritten one barrier after the
 * scan that read it; ybuf[p] is rewritten one barrier after the outputs that read it. */
#define G4_CH 32 /* channels per block */
#define G4_TC 32 /* steps per chunk */
#define G4_TP 36 /* fp32 row pitch (floats) */
#define G4_SCAN_THREADS 128
#define G4_THREADS 256
#define G4_RAW_U (G4_CH * G4_TC * 2)
#define G4_RAW_BC (PC_NS * G4_TC * 2)
#define G4_STAGE (3 * G4_RAW_U + 2 * G4_RAW_BC)
#define G4_YB (G4_CH * G4_TP) /* floats: one y tile */
#define G4_SET (2 * G4_CH * G4_TP + G4_TC * PC_NS) /* floats of one converted set: dt rows, dt*u rows, B/C records */
/* bytes of shared memory: raw stages, two converted sets, two y tiles */
#define G4_SMEM (PC_NSTG * G4_STAGE + 2 * G4_SET * 4 + 2 * G4_YB * 4)

/* one bf16 half of a 32-bit word as fp32 (scalar form of jamba_bf16x2_ld; with it the g4 SASS reorders) */
__device__ __forceinline__ float g4_lo(uint32_t w) { return __uint_as_float(w << 16); }
__device__ __forceinline__ float g4_hi(uint32_t w) { return __uint_as_float(w & 0xffff0000u); }

/* Z: z given (the gate); NF: B and C n-fast (else both t-fast). Session 15 measured, and dropped: B/C staged as fp32
 * (no unpacking in the scan lanes; 8% slower), the y partial sums through shared memory instead of shuffles (all 4:
 * 168 registers, one block per SM, 30% slower; the second shuffle level only: 1% slower). */
template <bool Z, bool NF>
__global__ void __launch_bounds__(G4_THREADS) selective_scan_g4_kernel(scan_io a) {
    jamba_pdl_begin();
    constexpr int G = 4, SPT = PC_NS / G, CH = G4_CH, TC = G4_TC, SO = TC / G;
    extern __shared__ float4 g4_smem4[];
    unsigned char *raw = (unsigned char *)g4_smem4;
    float *sets = (float *)(raw + PC_NSTG * G4_STAGE);
    constexpr int SETF = G4_SET;
    float *ybuf = sets + 2 * SETF;
    const int64_t nblk = a.DI / CH, b = blockIdx.x / nblk, c0 = (blockIdx.x - b * nblk) * CH;
    const int nck = (int)((a.L + TC - 1) / TC), ntl = (int)(a.L - (int64_t)(nck - 1) * TC);
    auto steps = [&](int kk) { return kk + 1 < nck ? TC : ntl; }; /* a multiple of 8 */
    typedef __nv_bfloat16 T;

    if (threadIdx.x < G4_SCAN_THREADS) { /* ---- scan warps ---- */
        const int tid = threadIdx.x, g = tid % G, l = tid / G;
        const int64_t c = c0 + l;
        float A2[SPT], h[SPT];
#pragma unroll
        for (int i = 0; i < SPT; i++) {
            const int n = SPT * g + i;
            A2[i] = a.A[c * a.sA0 + n * a.sA1] * JAMBA_LOG2E;
            h[i] = a.init ? a.init[b * a.si0 + c * a.si1 + n] : 0.f;
        }
        for (int k = 0; k < nck; k++) {
            __syncthreads(); /* set k & 1 converted; ybuf[k & 1] read */
            const float *set = sets + (k & 1) * SETF;
            const float *sdt = set + l * G4_TP, *sdtu = sdt + CH * G4_TP;
            const unsigned char *sbp = (const unsigned char *)(set + 2 * CH * G4_TP) + g * 4 * SPT;
            float yc[TC];
            pc_scan_steps<SPT, TC>(sdt, sdtu, A2, h, yc, [sbp](int st, float(&bv)[SPT], float(&cv)[SPT]) {
                const uint4 wq = *(const uint4 *)(sbp + st * 64);
                bv[0] = g4_lo(wq.x), bv[1] = g4_hi(wq.x), bv[2] = g4_lo(wq.y), bv[3] = g4_hi(wq.y);
                cv[0] = g4_lo(wq.z), cv[1] = g4_hi(wq.z), cv[2] = g4_lo(wq.w), cv[3] = g4_hi(wq.w);
            });
            pc_reduce_lv<TC / 2, 2>(yc, g);
            pc_reduce_lv<TC / 4, 1>(yc, g);
            float *yr = ybuf + (k & 1) * G4_YB + l * G4_TP + SO * g;
            ((float4 *)yr)[0] = make_float4(yc[0], yc[1], yc[2], yc[3]);
            ((float4 *)yr)[1] = make_float4(yc[4], yc[5], yc[6], yc[7]);
        }
        __syncthreads(); /* the converters' last outputs read ybuf after it */
        if (a.last) {
#pragma unroll
            for (int i = 0; i < SPT; i++) a.last[(b * a.DI + c) * PC_NS + SPT * g + i] = h[i];
        }
        return;
    }

    /* ---- converter warps ---- */
    const int tid = threadIdx.x - G4_SCAN_THREADS, g = tid % G, l = tid / G;
    const int64_t c = c0 + l;
    const float bias = a.dbias ? a.dbias[c * a.sdb] : 0.f, Dc = a.D ? a.D[c * a.sD] : 0.f;
    T *const orow = (T *)a.out + (b * a.DI + c) * a.L + SO * g;
    /* this thread's copy pieces: u / delta / z row tid / 4, steps 8 (tid % 4) ..; B or C piece tid */
    const int ur = tid >> 2, uq = tid & 3, mb = tid >> 6;
    const T *const su = (const T *)a.u + b * a.su0 + (c0 + ur) * a.su1 + 8 * uq;
    const T *const sd = (const T *)a.delta + b * a.sd0 + (c0 + ur) * a.sd1 + 8 * uq;
    const T *const sz = Z ? (const T *)a.z + b * a.sz0 + (c0 + ur) * a.sz1 + 8 * uq : nullptr;
    const T *sbc;
    int bdst, bt;   /* raw-tile offset, first step of the piece */
    int64_t bstep; /* elements per chunk */
    {
        const T *base = mb ? (const T *)a.Cm + b * a.sC0 : (const T *)a.Bm + b * a.sB0;
        const int64_t sn = mb ? a.sC1 : a.sB1, stt = mb ? a.sC2 : a.sB2;
        if (NF) { /* [t][16]: step (tid >> 1) & 31, states 8 (tid & 1) .. */
            bt = (tid >> 1) & 31;
            sbc = base + bt * stt + 8 * (tid & 1), bdst = bt * 32 + 16 * (tid & 1), bstep = TC * stt;
        } else { /* [n][TC]: state (tid >> 2) & 15, steps 8 (tid & 3) .. */
            bt = 8 * (tid & 3);
            sbc = base + ((tid >> 2) & 15) * sn + bt, bdst = ((tid >> 2) & 15) * 64 + 2 * bt, bstep = TC;
        }
    }
    /* chunk kk's copies (nt: its steps) */
    auto load = [&](int kk, int nt) {
        unsigned char *st = raw + (kk % PC_NSTG) * G4_STAGE;
        const int64_t t0 = (int64_t)kk * TC;
        if (8 * uq < nt) {
            pc_cp16(st + ur * 64 + uq * 16, su + t0);
            pc_cp16(st + G4_RAW_U + ur * 64 + uq * 16, sd + t0);
            if (Z) pc_cp16(st + 2 * G4_RAW_U + ur * 64 + uq * 16, sz + t0);
        }
        if (bt < nt) pc_cp16(st + 3 * G4_RAW_U + mb * G4_RAW_BC + bdst, sbc + kk * bstep);
    };
    /* chunk kk's raw stage -> fp32 set kk & 1 and bf16 B/C pieces; this lane's raw u / z words into ru / rz.
     * Steps >= nt: dt = dt*u = 0, B = C = 0. */
    auto convert = [&](int kk, int nt, uint32_t(&ru)[SO / 2], uint32_t(&rz)[SO / 2]) {
        const unsigned char *st = raw + (kk % PC_NSTG) * G4_STAGE;
        float *set = sets + (kk & 1) * SETF;
        const int off = l * 64 + g * 16;
        const uint4 qu = *(const uint4 *)(st + off), qd = *(const uint4 *)(st + G4_RAW_U + off);
        ru[0] = qu.x, ru[1] = qu.y, ru[2] = qu.z, ru[3] = qu.w;
        if (Z) {
            const uint4 qz = *(const uint4 *)(st + 2 * G4_RAW_U + off);
            rz[0] = qz.x, rz[1] = qz.y, rz[2] = qz.z, rz[3] = qz.w;
        }
        const uint32_t rd[4] = {qd.x, qd.y, qd.z, qd.w};
        float dv[SO], duv[SO];
#pragma unroll
        for (int j = 0; j < SO; j++) {
            const float v = (j & 1 ? g4_hi(rd[j / 2]) : g4_lo(rd[j / 2])) + bias;
            const float d = pc_softplus<true>(v); /* delta_softplus (the host takes no other call) */
            dv[j] = d, duv[j] = d * (j & 1 ? g4_hi(ru[j / 2]) : g4_lo(ru[j / 2]));
        }
        if (nt < TC) { /* the last chunk only (a block-uniform branch, not a mask per step) */
#pragma unroll
            for (int j = 0; j < SO; j++)
                if (SO * g + j >= nt) dv[j] = 0.f, duv[j] = 0.f;
        }
        float *pd = set + l * G4_TP + SO * g, *pu = pd + CH * G4_TP;
        ((float4 *)pd)[0] = make_float4(dv[0], dv[1], dv[2], dv[3]);
        ((float4 *)pd)[1] = make_float4(dv[4], dv[5], dv[6], dv[7]);
        ((float4 *)pu)[0] = make_float4(duv[0], duv[1], duv[2], duv[3]);
        ((float4 *)pu)[1] = make_float4(duv[4], duv[5], duv[6], duv[7]);
        /* B / C pieces: thread = (B or C, state pair np, steps 4q .. 4q+3), one word (states 2np, 2np+1) per step;
         * each warp converts what its own lanes copied (t-fast: rows 8w' .. 8w'+7, n-fast: steps 16w' .. 16w'+15
         * of its B or C tile, w' = warp % 2), so a __syncwarp after the copies land is the only barrier needed */
        const int np = NF ? (tid >> 2) & 7 : (tid >> 3) & 7, q = NF ? (tid & 3) + 4 * ((tid >> 5) & 1) : tid & 7;
        const int n = 2 * np;
        const unsigned char *rb = st + 3 * G4_RAW_U + mb * G4_RAW_BC;
        unsigned char *pc = (unsigned char *)(set + 2 * CH * G4_TP) + (n / SPT) * 4 * SPT + (mb * SPT + n % SPT) * 2;
        uint32_t w[4];
        if (NF) { /* raw [t][16]: the pair is one word per step */
#pragma unroll
            for (int j = 0; j < 4; j++) w[j] = *(const uint32_t *)(rb + (4 * q + j) * 32 + 2 * n);
        } else { /* raw [n][TC]: 4 steps of states n and n+1 */
            const uint2 r0 = *(const uint2 *)(rb + n * 64 + q * 8), r1 = *(const uint2 *)(rb + (n + 1) * 64 + q * 8);
            w[0] = (r0.x & 0xffffu) | (r1.x << 16), w[1] = (r0.x >> 16) | (r1.x & 0xffff0000u);
            w[2] = (r0.y & 0xffffu) | (r1.y << 16), w[3] = (r0.y >> 16) | (r1.y & 0xffff0000u);
        }
        if (nt < TC) {
#pragma unroll
            for (int j = 0; j < 4; j++)
                if (4 * q + j >= nt) w[j] = 0u;
        }
#pragma unroll
        for (int j = 0; j < 4; j++) *(uint32_t *)(pc + (4 * q + j) * 64) = w[j];
    };
    /* chunk kk's outputs of this lane (steps 8g .. 8g+7 of channel l) from ybuf[kk & 1] and its raw u / z words */
    auto gate = [&](int kk, const uint32_t(&ru)[SO / 2], const uint32_t(&rz)[SO / 2], bool check = true) {
        if (check && SO * g >= steps(kk)) return;
        const float *yr = ybuf + (kk & 1) * G4_YB + l * G4_TP + SO * g;
        const float4 y0 = ((const float4 *)yr)[0], y1 = ((const float4 *)yr)[1];
        const float yc[SO] = {y0.x, y0.y, y0.z, y0.w, y1.x, y1.y, y1.z, y1.w};
        uint32_t o[SO / 2];
#pragma unroll
        for (int j = 0; j < SO; j += 2) {
            const uint32_t wu = ru[j / 2];
            float v0 = yc[j] + Dc * g4_lo(wu), v1 = yc[j + 1] + Dc * g4_hi(wu);
            if (Z) v0 *= pc_silu(g4_lo(rz[j / 2])), v1 *= pc_silu(g4_hi(rz[j / 2]));
            o[j / 2] = jamba_bf16x2_st(v0, v1);
        }
        /* one 16-byte store (written as a uint4 store, the compiler split it into four 4-byte stores) */
        asm volatile("st.global.v4.b32 [%0], {%1, %2, %3, %4};" ::"l"(orow + (int64_t)kk * TC), "r"(o[0]), "r"(o[1]),
                     "r"(o[2]), "r"(o[3]));
    };

#pragma unroll
    for (int s = 0; s < PC_NSTG; s++) {
        if (s < nck) load(s, steps(s));
        pc_commit();
    }
    pc_wait<PC_NSTG - 1>();
    __syncwarp(); /* the lanes' copies of chunk 0, visible across the warp (convert reads only its warp's) */
    /* Raw u / z words: set X holds chunk k-1's at body(k, X) (even chunks in S0, odd in S1); the gating of chunk
     * k-1 comes before the conversion of chunk k+1, which then refills X (two sets by chunk parity, the loop
     * unrolled by 2; three sets rotated by register moves cost 16 instructions per chunk) */
    uint32_t u0[SO / 2], z0[SO / 2], u1[SO / 2], z1[SO / 2];
    auto body = [&](int k, uint32_t(&ux)[SO / 2], uint32_t(&zx)[SO / 2]) {
        __syncthreads(); /* set k & 1 complete; ybuf[(k - 1) & 1] written; stage k % NSTG free */
        if (k + PC_NSTG < nck) load(k + PC_NSTG, steps(k + PC_NSTG));
        pc_commit();
        if (k > 0) gate(k - 1, ux, zx);
        if (k + 1 < nck) {
            pc_wait<PC_NSTG - 1>(); /* this thread's copies of chunk k+1 */
            __syncwarp();
            convert(k + 1, steps(k + 1), ux, zx);
        }
    };
    convert(0, steps(0), u0, z0);
    int k = 0;
    /* chunks 1 .. nck-5: copies, conversion and outputs all full, no bound checks (session 15: 0.7% at 1x8192) */
    auto body_full = [&](int k, uint32_t(&ux)[SO / 2], uint32_t(&zx)[SO / 2]) {
        __syncthreads();
        load(k + PC_NSTG, TC);
        pc_commit();
        gate(k - 1, ux, zx, false);
        pc_wait<PC_NSTG - 1>();
        __syncwarp();
        convert(k + 1, TC, ux, zx);
    };
    if (nck >= 7) {
        body(0, u1, z1);
        for (k = 1; k + 1 <= nck - 5; k += 2) {
            body_full(k, u0, z0);
            body_full(k + 1, u1, z1);
        }
    }
    if (k & 1) { /* after the full-chunk loop: k odd, the checked body for the rest (the sets' parity holds) */
        for (; k < nck; k += 2) {
            body(k, u0, z0);
            if (k + 1 < nck) body(k + 1, u1, z1);
        }
    } else {
        for (; k < nck; k += 2) {
            body(k, u1, z1);
            if (k + 1 < nck) body(k + 1, u0, z0);
        }
    }
    __syncthreads(); /* the scan warps' last y tile */
    if ((nck - 1) & 1) gate(nck - 1, u1, z1);
    else gate(nck - 1, u0, z0);
}

/* The g4 fast path when its layouts hold (see the kernel comment) and JAMBA_EXT_SCAN_IMPL is not "pc" / "old";
 * returns 0 if not taken. */
static int selective_scan_try_g4(const jamba_selective_scan_params *p, cudaStream_t stream, jamba_status *st) {
    const int64_t B = p->u.shape[0], DI = p->u.shape[1], L = p->u.shape[2], N = p->A.shape[1];
    const char *impl = getenv("JAMBA_EXT_SCAN_IMPL");
    if (impl && (!strcmp(impl, "old") || !strcmp(impl, "pc"))) return 0;
    const jamba_dtype bf = JAMBA_BF16;
    if (N != PC_NS || L == 0 || L % 8 || DI % G4_CH || !p->delta_softplus || p->u.dtype != bf || p->delta.dtype != bf ||
        (p->z.data && p->z.dtype != bf) || p->Bm.dtype != bf || p->Cm.dtype != bf ||
        B * (DI / G4_CH) > JAMBA_MAX_GRID_X)
        return 0;
    scan_io a;
    memset(&a, 0, sizeof a);
    scan_io_fill(&a, p);
    bool ok = pc_aligned(a.u, a.su0, a.su1, B, DI, 2) && pc_aligned(a.delta, a.sd0, a.sd1, B, DI, 2) &&
              (!a.z || pc_aligned(a.z, a.sz0, a.sz1, B, DI, 2));
    int nf[2];
    for (int m = 0; m < 2; m++) { /* B and C both t-fast or both n-fast */
        const jamba_tensor &t = m ? p->Cm : p->Bm;
        if (t.stride[2] == 1) nf[m] = 0, ok = ok && pc_aligned(t.data, t.stride[0], t.stride[1], B, N, 2);
        else if (t.stride[1] == 1) nf[m] = 1, ok = ok && pc_aligned(t.data, t.stride[0], t.stride[2], B, L, 2);
        else nf[m] = -1, ok = false;
    }
    if (!ok || nf[0] != nf[1]) return 0;
    void (*const ks[4])(scan_io) = {selective_scan_g4_kernel<false, false>, selective_scan_g4_kernel<false, true>,
                                    selective_scan_g4_kernel<true, false>, selective_scan_g4_kernel<true, true>};
    void (*k)(scan_io) = ks[(a.z ? 2 : 0) + (nf[0] ? 1 : 0)];
    const int smem = G4_SMEM;
    JAMBA_CUDA_CHECK(cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
    jamba_kernel_launch(k, (unsigned)(B * (DI / G4_CH)), G4_THREADS, smem, stream, a);
    JAMBA_LAUNCH_CHECK("jamba.selective_scan: kernel launch (g4)", stream);
    *st = JAMBA_OK;
    return 1;
}

/* The fast path when it applies (N <= 16, not disabled by JAMBA_EXT_SCAN_IMPL=old); returns 0 if not taken. */
static int selective_scan_try_pc(const jamba_selective_scan_params *p, cudaStream_t stream, jamba_status *st) {
    const int64_t B = p->u.shape[0], DI = p->u.shape[1], L = p->u.shape[2], N = p->A.shape[1];
    const char *impl = getenv("JAMBA_EXT_SCAN_IMPL");
    if ((impl && !strcmp(impl, "old")) || N > PC_NS || L == 0) return 0;
    pc_args a;
    memset(&a, 0, sizeof a);
    scan_io_fill(&a, p);
    a.bsz = (int)jamba_dtype_size(p->Bm.dtype), a.csz = (int)jamba_dtype_size(p->Cm.dtype);
    const int esz = (int)jamba_dtype_size(p->u.dtype);
    a.vec_u = pc_aligned(a.u, a.su0, a.su1, B, DI, esz) && pc_aligned(a.delta, a.sd0, a.sd1, B, DI, esz) &&
              (!a.z || pc_aligned(a.z, a.sz0, a.sz1, B, DI, esz));
    for (int m = 0; m < 2; m++) {
        const jamba_tensor &t = m ? p->Cm : p->Bm;
        const int sz = m ? a.csz : a.bsz;
        int mode = 2, vec = 0;
        if (t.stride[2] == 1 || L == 1) {
            mode = 0; /* rows along t: 16-byte pieces need aligned (b, n) row starts */
            vec = pc_aligned(t.data, t.stride[0], t.stride[1], B, N, sz);
        } else if (t.stride[1] == 1 || N == 1) {
            mode = 1; /* rows along n: aligned (b, t) row starts and whole 16-byte pieces */
            vec = pc_aligned(t.data, t.stride[0], t.stride[2], B, L, sz);
        }
        if (m) a.cmode = mode, a.vec_c = vec;
        else a.bmode = mode, a.vec_b = vec;
    }
    /* fast loader / converter for full chunks: every piece a 16-byte copy, B/C in u's dtype with N = 16 (H200,
     * 6c4ae22, bf16, DI 8192: 1x8192 0.65 ms against 0.88 ms through the general loader / converter) */
    a.fast = a.vec_u && N == PC_NS && a.bmode != 2 && a.cmode != 2 && a.vec_b && a.vec_c &&
             p->Bm.dtype == p->u.dtype && p->Cm.dtype == p->u.dtype;
    /* the steady loop's 32-bit per-thread offsets (pc_plan_32): every byte offset inside a virtual block's rows
     * (CH channels, one chunk, one batch row of B/C) below 2^31, strides not negative */
    {
        const int64_t TC = 32, CH = PC_THREADS / PC_G, lim = ((int64_t)1 << 31) - 1;
        bool ok = L < lim && (CH - 1) * L + TC < lim;
        const int64_t s1[3] = {a.su1, a.sd1, a.z ? a.sz1 : 0};
        for (int i = 0; i < 3; i++) ok = ok && s1[i] >= 0 && ((CH - 1) * s1[i] + TC) * esz < lim;
        for (int m = 0; m < 2; m++) {
            const int64_t sn = m ? a.sC1 : a.sB1, stt = m ? a.sC2 : a.sB2;
            ok = ok && sn >= 0 && stt >= 0 && ((PC_NS - 1) * sn + (TC - 1) * stt + PC_NS + TC) * esz < lim;
        }
        a.off32 = ok;
        a.bc_step[0] = (a.bmode == 1 ? TC * a.sB2 : TC) * esz, a.bc_step[1] = (a.cmode == 1 ? TC * a.sC2 : TC) * esz;
    }
    /* vector stores of out; the fast B/C converter's strides (TC = 32, G = PC_G; see pc_plan_bcmap) */
    a.vec_out = L % 4 == 0 && (uintptr_t)p->out.data % (4 * esz) == 0;
    {
        const int TC = 32, G = PC_G, SPT = PC_NS / PC_G;
        a.bc_gfast = a.bmode == 1 && a.cmode == 1;
        const int djt = a.bc_gfast ? PC_THREADS / G : 0, djg = a.bc_gfast ? 0 : PC_THREADS / TC; /* item 1 - item 0 */
        for (int m = 0; m < 2; m++) {
            const int nf = (m ? a.cmode : a.bmode) == 1;
            a.bc_dt[m] = (nf ? PC_NS : 1) * esz, a.bc_dn[m] = (nf ? 1 : TC) * esz;
            a.bc_dj[m] = djt * a.bc_dt[m] + djg * SPT * a.bc_dn[m];
        }
        a.bc_sj = (djt * PC_BCP + djg * 2 * SPT) * 4;
    }
    jamba_status s = JAMBA_ERR_DTYPE;
    JAMBA_DISPATCH_FLOAT(p->u.dtype, T, s = (pc_launch<T>(a, stream)));
    *st = s;
    return 1;
}

static int pow2_at_least(int64_t v) {
    int p = 1;
    while (p < v) p <<= 1;
    return p;
}

static size_t scan_smem_bytes(int CH, int TC, int Npad) {
    const size_t arr = ((size_t)CH * (TC + 1) + 3) & ~(size_t)3;
    return sizeof(float) * (4 * arr + 2 * (size_t)TC * Npad + CH);
}

/* B/C floats per array and thread held in registers: 16 for SPT 4, 8 for SPT 16 (whose thread already
 * holds 64 registers of state, A, B and C). */
#define SCAN_EBC(spt) ((spt) == 4 ? 16 : 8)

template <typename T, int SPT>
static jamba_status selective_scan_launch(scan_args a, cudaStream_t stream) {
    const size_t smem = scan_smem_bytes(a.CH, a.TC, a.Npad);
    const int64_t nvb = a.B * ((a.DI + a.CH - 1) / a.CH);
    const int64_t grid = nvb < JAMBA_MAX_GRID_X ? nvb : JAMBA_MAX_GRID_X;
    jamba_kernel_launch(selective_scan_fwd_kernel<T, SPT, SCAN_EBC(SPT)>, (unsigned)grid, SCAN_THREADS, smem, stream,
        a);
    JAMBA_LAUNCH_CHECK("jamba.selective_scan: kernel launch", stream);
    return JAMBA_OK;
}

extern "C" jamba_status jamba_selective_scan_cuda(const jamba_selective_scan_params *p, jamba_launch launch) {
    JAMBA_TRY(jamba_selective_scan_check(p));
    const int64_t B = p->u.shape[0], DI = p->u.shape[1], N = p->A.shape[1];
    if (B == 0 || DI == 0) return JAMBA_OK; /* L == 0 still writes last_state (initial_state or zeros) */
    JAMBA_DEVICE_GUARD(launch);
    {
        jamba_status st = JAMBA_OK;
        if (selective_scan_try_g4(p, (cudaStream_t)launch.stream, &st)) return st;
        if (selective_scan_try_pc(p, (cudaStream_t)launch.stream, &st)) return st;
    }
    scan_args a;
    memset(&a, 0, sizeof a);
    scan_io_fill(&a, p);
    {
        /* B and C share one staging order: n fastest when B's stride along N is the smaller one */
        const int64_t sn = p->Bm.stride[1] < 0 ? -p->Bm.stride[1] : p->Bm.stride[1];
        const int64_t sl = p->Bm.stride[2] < 0 ? -p->Bm.stride[2] : p->Bm.stride[2];
        a.bc_nfast = N > 1 && sn < sl;
    }

    /* SPT 16 (one thread per channel at N <= 16) only when B*DI alone gives every SM ~8 blocks of 128
     * threads, or when N > 128 (SPT 4 would need more than 32 threads per channel); else SPT 4 (G = 4
     * threads per channel at N = 16), which fills the GPU at batch 1 (measured on H200: 1x2048 prefill
     * 1.04 ms with SPT 4 against 2.66 ms with SPT 16, before the register prefetch). */
    const int sms = jamba_cuda_sm_count(launch.device);
    const int64_t many = (int64_t)sms * 8 * SCAN_THREADS;
    int spt = (N > 128 || B * DI * pow2_at_least(jamba_ceil_div(N, 16)) >= many) ? 16 : 4;
    a.G = pow2_at_least(jamba_ceil_div(N, spt));
    a.CH = SCAN_THREADS / a.G;
    a.Npad = a.G * spt;
    /* TC: a power of two with CH*TC <= SCAN_EU*128 (u/dt/z registers), TC*Npad <= EBC*128 (B/C registers)
     * and the shared memory within 48 KB (no opt-in attribute needed) */
    int tc = 64;
    while (tc > 1 && ((int64_t)a.CH * tc > (int64_t)SCAN_EU * SCAN_THREADS ||
                      (int64_t)tc * a.Npad > (int64_t)SCAN_EBC(spt) * SCAN_THREADS ||
                      scan_smem_bytes(a.CH, tc, a.Npad) > SCAN_SMEM_BUDGET))
        tc >>= 1;
    a.TC = tc;
    a.tc_log2 = 0;
    while ((1 << a.tc_log2) < tc) a.tc_log2++;

    cudaStream_t stream = (cudaStream_t)launch.stream;
    jamba_status s = JAMBA_ERR_DTYPE;
    if (spt == 4) {
        JAMBA_DISPATCH_FLOAT(p->u.dtype, T, s = (selective_scan_launch<T, 4>(a, stream)));
    } else {
        JAMBA_DISPATCH_FLOAT(p->u.dtype, T, s = (selective_scan_launch<T, 16>(a, stream)));
    }
    return s;
}
