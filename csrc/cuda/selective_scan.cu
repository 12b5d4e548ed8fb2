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
 * Work split of the scan: G threads per channel (a power of two; G*SPT >= N states, SPT states per
 * thread in registers, SPT = 4 or 16 is the one template tile parameter), CH = 128/G channels per block,
 * all of one batch. Time runs in chunks of TC steps: the block stages u, dt (bias + softplus applied), z
 * of its CH channels and the (TC, N) tiles of B and C in shared memory (coalesced global loads), then
 * each thread walks the chunk with its states in registers, the G partial sums of y are combined with
 * warp shuffles, and the block writes the chunk's outputs with coalesced stores. The state is carried
 * across chunks in registers, so any L (1 .. 1M+) runs in one launch. SPT = 4 (G = 4 at N = 16) is used
 * when B*DI is too small for one thread per channel to fill the GPU (Jamba prefill at batch 1).
 *
 * Tuning knobs (benchmarks only): env JAMBA_EXT_SCAN_SPT = 4|16 and JAMBA_EXT_SCAN_CHUNK = TC override
 * the launcher's choice (TC is still capped by the 48 KB shared-memory budget).
 */
#include "common.cuh"

#define SCAN_THREADS 128
#define SCAN_SMEM_BUDGET (48 * 1024)
#define SCAN_TB 8  /* time steps per batch of y reductions (registers yp[SCAN_TB]) */
#define SCAN_EU 16 /* u/dt/z elements a thread prefetches per chunk (registers): TC <= SCAN_EU * G */

struct scan_args {
    void *out;
    float *last;
    const void *u, *delta, *z, *Bm, *Cm;
    const float *A, *D, *dbias, *init;
    int64_t B, DI, L, N;
    int64_t su0, su1, sd0, sd1, sz0, sz1;   /* (batch, channel) strides; unit stride along L */
    int64_t sA0, sA1, sB0, sB1, sB2, sC0, sC1, sC2, sD, sdb, si0, si1;
    int bdt, cdt, softplus;
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

static int pow2_at_least(int64_t v) {
    int p = 1;
    while (p < v) p <<= 1;
    return p;
}

static int env_int(const char *name, int dflt) {
    const char *s = getenv(name);
    return (s && s[0]) ? atoi(s) : dflt;
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
    selective_scan_fwd_kernel<T, SPT, SCAN_EBC(SPT)><<<(unsigned)grid, SCAN_THREADS, smem, stream>>>(a);
    JAMBA_LAUNCH_CHECK("jamba.selective_scan: kernel launch", stream);
    return JAMBA_OK;
}

extern "C" jamba_status jamba_selective_scan_cuda(const jamba_selective_scan_params *p, jamba_launch launch) {
    JAMBA_TRY(jamba_selective_scan_check(p));
    const int64_t B = p->u.shape[0], DI = p->u.shape[1], L = p->u.shape[2], N = p->A.shape[1];
    if (B == 0 || DI == 0) return JAMBA_OK; /* L == 0 still writes last_state (initial_state or zeros) */
    JAMBA_DEVICE_GUARD(launch);
    scan_args a;
    memset(&a, 0, sizeof a);
    a.out = p->out.data;
    a.last = (float *)p->last_state.data;
    a.u = p->u.data, a.delta = p->delta.data, a.z = p->z.data, a.Bm = p->Bm.data, a.Cm = p->Cm.data;
    a.A = (const float *)p->A.data, a.D = (const float *)p->D.data;
    a.dbias = (const float *)p->delta_bias.data, a.init = (const float *)p->initial_state.data;
    a.B = B, a.DI = DI, a.L = L, a.N = N;
    a.su0 = p->u.stride[0], a.su1 = p->u.stride[1];
    a.sd0 = p->delta.stride[0], a.sd1 = p->delta.stride[1];
    if (a.z) a.sz0 = p->z.stride[0], a.sz1 = p->z.stride[1];
    a.sA0 = p->A.stride[0], a.sA1 = p->A.stride[1];
    a.sB0 = p->Bm.stride[0], a.sB1 = p->Bm.stride[1], a.sB2 = p->Bm.stride[2];
    a.sC0 = p->Cm.stride[0], a.sC1 = p->Cm.stride[1], a.sC2 = p->Cm.stride[2];
    if (a.D) a.sD = p->D.stride[0];
    if (a.dbias) a.sdb = p->delta_bias.stride[0];
    if (a.init) a.si0 = p->initial_state.stride[0], a.si1 = p->initial_state.stride[1];
    a.bdt = (int)p->Bm.dtype, a.cdt = (int)p->Cm.dtype;
    a.softplus = p->delta_softplus;
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
    const int spt_env = env_int("JAMBA_EXT_SCAN_SPT", 0);
    if (spt_env == 4 && N <= 128) spt = 4;
    if (spt_env == 16) spt = 16;
    a.G = pow2_at_least(jamba_ceil_div(N, spt));
    a.CH = SCAN_THREADS / a.G;
    a.Npad = a.G * spt;
    /* TC: a power of two with CH*TC <= SCAN_EU*128 (u/dt/z registers), TC*Npad <= EBC*128 (B/C registers)
     * and the shared memory within 48 KB (no opt-in attribute needed) */
    int tc = 64;
    const int tc_env = env_int("JAMBA_EXT_SCAN_CHUNK", 0);
    if (tc_env > 0) tc = pow2_at_least(tc_env);
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
