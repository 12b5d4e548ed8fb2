/* selective_scan.cu -- Mamba-1 selective scan forward and its one-step decode update, on CUDA.
 *
 * Exports: jamba_selective_scan_cuda, jamba_selective_state_update_cuda (checks: csrc/cpu/selective_scan.c).
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

struct scan_args {
    void *out;
    float *last;
    const void *u, *delta, *z, *Bm, *Cm;
    const float *A, *D, *dbias, *init;
    int64_t B, DI, L, N;
    int64_t su0, su1, sd0, sd1, sz0, sz1;   /* (batch, channel) strides; unit stride along L */
    int64_t sA0, sA1, sB0, sB1, sB2, sC0, sC1, sC2, sD, sdb, si0, si1;
    int bdt, cdt, softplus;
    int G, CH, TC, Npad; /* threads per channel, channels per block, time chunk, G*SPT */
    int bc_nfast;        /* B/C staged with n fastest (their stride along N is the smaller one) */
};

/* Stages a (TC, Npad) tile of B or C (fp32, zero outside [0, nt) x [0, N)) into s[t*Npad + n]. */
__device__ __forceinline__ void scan_stage_bc(float *s, const void *p, int dtype, int64_t base, int64_t sn,
                                              int64_t st, int64_t t0, int nt, const scan_args &a) {
    const int TC = a.TC, Npad = a.Npad;
    if (a.bc_nfast) {
        /* consecutive threads on consecutive n: coalesced when stride along N is 1; conflict-free stores */
#pragma unroll 4
        for (int e = threadIdx.x; e < TC * Npad; e += SCAN_THREADS) {
            const int t = e / Npad, n = e - t * Npad;
            s[e] = (t < nt && n < a.N) ? jamba_ld_any(p, dtype, base + n * sn + (t0 + t) * st) : 0.f;
        }
    } else {
        /* consecutive threads on consecutive t: coalesced when stride along L is 1; each thread gathers
         * 4 consecutive n and writes them as one 16-byte store */
        const int nq = Npad >> 2;
#pragma unroll 2
        for (int e = threadIdx.x; e < TC * nq; e += SCAN_THREADS) {
            const int q = e / TC, t = e - q * TC;
            float v[4];
#pragma unroll
            for (int i = 0; i < 4; i++) {
                const int n = q * 4 + i;
                v[i] = (t < nt && n < a.N) ? jamba_ld_any(p, dtype, base + n * sn + (t0 + t) * st) : 0.f;
            }
            *(float4 *)&s[t * Npad + q * 4] = make_float4(v[0], v[1], v[2], v[3]);
        }
    }
}

/* selective_scan_fwd_kernel
 *   u, delta, z (B, DI, L) T, unit stride along L; out (B, DI, L) T contiguous; A (DI, N) f32;
 *   B, C (B, N, L) f32|T any strides; D, delta_bias (DI,) f32; initial_state (B, DI, N) f32 (unit along N);
 *   last_state (B, DI, N) f32 contiguous.
 *   Block (SCAN_THREADS = CH*G): thread -> (local channel lc = tid / G, state group g = tid % G owning states
 *   g*SPT .. g*SPT+SPT-1). Virtual block vb -> (b = vb / nblk, channels c0 .. c0+CH-1), grid-stride loop.
 *   Shared memory: su, sdt (then y), sz as [CH][TC+1] (padded against bank conflicts), sB, sC as [TC][Npad]. */
template <typename T, int SPT>
__global__ void __launch_bounds__(SCAN_THREADS) selective_scan_fwd_kernel(scan_args a) {
    extern __shared__ float4 smem4[];
    float *smem = (float *)smem4;
    const int G = a.G, CH = a.CH, TC = a.TC, Npad = a.Npad, TP = TC + 1;
    const int arr = (CH * TP + 3) & ~3; /* keep sB/sC 16-byte aligned */
    float *su = smem, *sdt = smem + arr, *sz = smem + 2 * arr;
    float *sB = smem + 3 * arr, *sC = sB + TC * Npad;
    const int lc = threadIdx.x / G, g = threadIdx.x - lc * G;
    const int64_t nblk = (a.DI + CH - 1) / CH;
    const T *u = (const T *)a.u, *dl = (const T *)a.delta, *z = (const T *)a.z;
    T *out = (T *)a.out;

    for (int64_t vb = blockIdx.x; vb < a.B * nblk; vb += gridDim.x) {
        const int64_t b = vb / nblk, c0 = (vb - b * nblk) * CH, c = c0 + lc;
        const bool valid = c < a.DI;
        float A2[SPT], h[SPT];
#pragma unroll
        for (int i = 0; i < SPT; i++) {
            const int64_t n = (int64_t)g * SPT + i;
            const bool on = valid && n < a.N;
            A2[i] = on ? a.A[c * a.sA0 + n * a.sA1] * JAMBA_LOG2E : 0.f;
            h[i] = (on && a.init) ? a.init[b * a.si0 + c * a.si1 + n] : 0.f;
        }
        const float Dc = (valid && a.D) ? a.D[c * a.sD] : 0.f;

        for (int64_t t0 = 0; t0 < a.L; t0 += TC) {
            const int nt = (int)(a.L - t0 < TC ? a.L - t0 : TC);
            /* 1. stage u, dt, z of the CH channels (rows of nt contiguous steps) */
#pragma unroll 4
            for (int e = threadIdx.x; e < CH * TC; e += SCAN_THREADS) {
                const int l = e / TC, t = e - l * TC;
                const int64_t cc = c0 + l;
                float uu = 0.f, dd = 0.f, zz = 0.f;
                if (cc < a.DI && t < nt) {
                    uu = jamba_ld<T>(u[b * a.su0 + cc * a.su1 + t0 + t]);
                    dd = jamba_ld<T>(dl[b * a.sd0 + cc * a.sd1 + t0 + t]);
                    if (a.dbias) dd += a.dbias[cc * a.sdb];
                    if (a.softplus) dd = jamba_cu_softplus(dd);
                    if (z) zz = jamba_ld<T>(z[b * a.sz0 + cc * a.sz1 + t0 + t]);
                }
                su[l * TP + t] = uu;
                sdt[l * TP + t] = dd;
                sz[l * TP + t] = zz;
            }
            scan_stage_bc(sB, a.Bm, a.bdt, b * a.sB0, a.sB1, a.sB2, t0, nt, a);
            scan_stage_bc(sC, a.Cm, a.cdt, b * a.sC0, a.sC1, a.sC2, t0, nt, a);
            __syncthreads();

            /* 2. recurrence over the chunk; y (+ D*u) replaces dt in sdt. The write of sdt[lc][t] by g == 0
             * follows the shuffles, which need every lane of the group to have read dt[t] already. */
#pragma unroll 2
            for (int t = 0; t < nt; t++) {
                const float dt = sdt[lc * TP + t], uu = su[lc * TP + t];
                const float dtu = dt * uu;
                float Bv[SPT], Cv[SPT];
#pragma unroll
                for (int i = 0; i < SPT; i += 4) {
                    const float4 bq = *(const float4 *)&sB[t * Npad + g * SPT + i];
                    const float4 cq = *(const float4 *)&sC[t * Npad + g * SPT + i];
                    Bv[i] = bq.x, Bv[i + 1] = bq.y, Bv[i + 2] = bq.z, Bv[i + 3] = bq.w;
                    Cv[i] = cq.x, Cv[i + 1] = cq.y, Cv[i + 2] = cq.z, Cv[i + 3] = cq.w;
                }
                float y = 0.f;
#pragma unroll
                for (int i = 0; i < SPT; i++) {
                    const float dA = jamba_cu_exp2(dt * A2[i]);
                    h[i] = fmaf(dA, h[i], dtu * Bv[i]);
                    y = fmaf(h[i], Cv[i], y);
                }
                for (int o = G >> 1; o > 0; o >>= 1) y += __shfl_xor_sync(JAMBA_FULL_MASK, y, o);
                if (g == 0) sdt[lc * TP + t] = fmaf(Dc, uu, y);
            }
            __syncthreads();

            /* 3. gate and write the chunk (coalesced along t) */
#pragma unroll 4
            for (int e = threadIdx.x; e < CH * TC; e += SCAN_THREADS) {
                const int l = e / TC, t = e - l * TC;
                const int64_t cc = c0 + l;
                if (cc < a.DI && t < nt) {
                    float y = sdt[l * TP + t];
                    if (z) y *= jamba_cu_silu(sz[l * TP + t]);
                    out[(b * a.DI + cc) * a.L + t0 + t] = jamba_st<T>(y);
                }
            }
            __syncthreads(); /* the next chunk overwrites the tiles */
        }
        if (valid && a.last) {
#pragma unroll
            for (int i = 0; i < SPT; i++) {
                const int64_t n = (int64_t)g * SPT + i;
                if (n < a.N) a.last[(b * a.DI + c) * a.N + n] = h[i];
            }
        }
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
    return sizeof(float) * (3 * arr + 2 * (size_t)TC * Npad);
}

template <typename T, int SPT>
static jamba_status selective_scan_launch(scan_args a, cudaStream_t stream) {
    const size_t smem = scan_smem_bytes(a.CH, a.TC, a.Npad);
    const int64_t nvb = a.B * ((a.DI + a.CH - 1) / a.CH);
    const int64_t grid = nvb < JAMBA_MAX_GRID_X ? nvb : JAMBA_MAX_GRID_X;
    selective_scan_fwd_kernel<T, SPT><<<(unsigned)grid, SCAN_THREADS, smem, stream>>>(a);
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

    /* SPT: 16 states per thread when B*DI alone fills the GPU with two warps per scheduler; else 4
     * (more threads per channel). N > 128 with SPT 4 would need more than 32 threads per channel. */
    const int sms = jamba_cuda_sm_count(launch.device);
    const int64_t target = (int64_t)sms * 4 * 32 * 2;
    int spt = (N <= 128 && B * DI * pow2_at_least(jamba_ceil_div(N, 16)) < target) ? 4 : 16;
    const int spt_env = env_int("JAMBA_EXT_SCAN_SPT", 0);
    if (spt_env == 4 && N <= 128) spt = 4;
    if (spt_env == 16) spt = 16;
    a.G = pow2_at_least(jamba_ceil_div(N, spt));
    a.CH = SCAN_THREADS / a.G;
    a.Npad = a.G * spt;
    int tc = 64;
    const int tc_env = env_int("JAMBA_EXT_SCAN_CHUNK", 0);
    if (tc_env > 0) tc = tc_env > 256 ? 256 : tc_env;
    while (tc > 1 && scan_smem_bytes(a.CH, tc, a.Npad) > SCAN_SMEM_BUDGET) tc >>= 1;
    a.TC = tc;

    cudaStream_t stream = (cudaStream_t)launch.stream;
    jamba_status s = JAMBA_ERR_DTYPE;
    if (spt == 4) {
        JAMBA_DISPATCH_FLOAT(p->u.dtype, T, s = (selective_scan_launch<T, 4>(a, stream)));
    } else {
        JAMBA_DISPATCH_FLOAT(p->u.dtype, T, s = (selective_scan_launch<T, 16>(a, stream)));
    }
    return s;
}

/* ---- decode step ------------------------------------------------------------------------------------ */
struct ssu_args {
    void *out, *state;
    const void *x, *dt, *z, *Bm, *Cm;
    const float *A, *D, *dtb;
    int64_t B, DI, N;
    int64_t sx0, sdt0, sz0;          /* batch strides; unit stride along DI */
    int64_t ss0, ss1;                /* state strides (batch, channel); unit along N */
    int64_t sA0, sA1, sB0, sB1, sC0, sC1, sD, sdtb;
    int bdt, cdt, stdt, softplus, G, vec;
};

/* 4 consecutive state elements in the state's runtime dtype (f32|bf16|f16); i is 4-element aligned */
__device__ __forceinline__ void ssu_load4(const void *p, int dtype, int64_t i, float v[4]) {
    if (dtype == JAMBA_F32) {
        const float4 q = *(const float4 *)((const float *)p + i);
        v[0] = q.x, v[1] = q.y, v[2] = q.z, v[3] = q.w;
    } else {
        const uint2 q = *(const uint2 *)((const uint16_t *)p + i);
        const uint16_t *h = (const uint16_t *)&q;
#pragma unroll
        for (int k = 0; k < 4; k++)
            v[k] = dtype == JAMBA_BF16 ? __bfloat162float(__ushort_as_bfloat16(h[k]))
                                       : __half2float(__ushort_as_half(h[k]));
    }
}

/* selective_state_update_kernel
 *   state (B, DI, N) f32|bf16|f16 (runtime), unit stride along N, updated in place; x, dt, z (B, DI) T, unit
 *   stride along DI; out (B, DI) T contiguous; A (DI, N) f32; B, C (B, N) f32|T any strides;
 *   D, dt_bias (DI,) f32.
 *   G threads per (b, c) (G = pow2 >= N/4, <= 32), flat over grid.x; thread g owns the quads of 4 states
 *   q = g, g+G, ... (16-byte state loads when aligned); partial y summed with warp shuffles. */
template <typename T>
__global__ void __launch_bounds__(128) selective_state_update_kernel(ssu_args a) {
    const int64_t gid = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    const int G = a.G;
    const int64_t bc = gid / G;
    const int g = (int)(gid - bc * G);
    const bool valid = bc < a.B * a.DI;
    float y = 0.f, xu = 0.f;
    int64_t b = 0, c = 0;
    if (valid) {
        b = bc / a.DI, c = bc - b * a.DI;
        float d = jamba_ld<T>(((const T *)a.dt)[b * a.sdt0 + c]);
        if (a.dtb) d += a.dtb[c * a.sdtb];
        if (a.softplus) d = jamba_cu_softplus(d);
        xu = jamba_ld<T>(((const T *)a.x)[b * a.sx0 + c]);
        const float dxu = d * xu;
        const int64_t so = b * a.ss0 + c * a.ss1; /* state row (b, c) */
        for (int64_t n0 = (int64_t)g * 4; n0 < a.N; n0 += (int64_t)G * 4) {
            float hv[4];
            if (a.vec) {
                ssu_load4(a.state, a.stdt, so + n0, hv);
            } else {
#pragma unroll
                for (int k = 0; k < 4; k++) hv[k] = n0 + k < a.N ? jamba_ld_any(a.state, a.stdt, so + n0 + k) : 0.f;
            }
#pragma unroll
            for (int k = 0; k < 4; k++) {
                const int64_t n = n0 + k;
                if (n < a.N) {
                    const float A2 = a.A[c * a.sA0 + n * a.sA1] * JAMBA_LOG2E;
                    const float bn = jamba_ld_any(a.Bm, a.bdt, b * a.sB0 + n * a.sB1);
                    const float cn = jamba_ld_any(a.Cm, a.cdt, b * a.sC0 + n * a.sC1);
                    hv[k] = fmaf(jamba_cu_exp2(d * A2), hv[k], dxu * bn);
                    /* y uses the fp32 state, before it is rounded into the state's dtype (as mamba_ssm) */
                    y = fmaf(hv[k], cn, y);
                }
            }
            if (a.vec) {
                if (a.stdt == JAMBA_F32) {
                    *(float4 *)((float *)a.state + so + n0) = make_float4(hv[0], hv[1], hv[2], hv[3]);
                } else {
                    uint2 q;
                    uint16_t *hq = (uint16_t *)&q;
#pragma unroll
                    for (int k = 0; k < 4; k++)
                        hq[k] = a.stdt == JAMBA_BF16 ? __bfloat16_as_ushort(__float2bfloat16_rn(hv[k]))
                                                     : __half_as_ushort(__float2half_rn(hv[k]));
                    *(uint2 *)((uint16_t *)a.state + so + n0) = q;
                }
            } else {
#pragma unroll
                for (int k = 0; k < 4; k++) {
                    const int64_t n = n0 + k;
                    if (n >= a.N) break;
                    if (a.stdt == JAMBA_F32) ((float *)a.state)[so + n] = hv[k];
                    else if (a.stdt == JAMBA_BF16) ((__nv_bfloat16 *)a.state)[so + n] = __float2bfloat16_rn(hv[k]);
                    else ((__half *)a.state)[so + n] = __float2half_rn(hv[k]);
                }
            }
        }
    }
    for (int o = G >> 1; o > 0; o >>= 1) y += __shfl_xor_sync(JAMBA_FULL_MASK, y, o);
    if (valid && g == 0) {
        if (a.D) y = fmaf(a.D[c * a.sD], xu, y);
        if (a.z) y *= jamba_cu_silu(jamba_ld<T>(((const T *)a.z)[b * a.sz0 + c]));
        ((T *)a.out)[bc] = jamba_st<T>(y);
    }
}

template <typename T>
static jamba_status selective_state_update_launch(const ssu_args &a, cudaStream_t stream) {
    const int64_t blocks = jamba_ceil_div(a.B * a.DI * a.G, 128);
    if (blocks > JAMBA_MAX_GRID_X)
        return jamba_set_error(JAMBA_ERR_ARG, "jamba.selective_state_update: batch*d_inner too large (%lld)",
                               (long long)(a.B * a.DI));
    selective_state_update_kernel<T><<<(unsigned)blocks, 128, 0, stream>>>(a);
    JAMBA_LAUNCH_CHECK("jamba.selective_state_update: kernel launch", stream);
    return JAMBA_OK;
}

extern "C" jamba_status jamba_selective_state_update_cuda(const jamba_selective_state_update_params *p,
                                                          jamba_launch launch) {
    JAMBA_TRY(jamba_selective_state_update_check(p));
    const int64_t B = p->x.shape[0], DI = p->x.shape[1], N = p->A.shape[1];
    if (B == 0 || DI == 0) return JAMBA_OK;
    JAMBA_DEVICE_GUARD(launch);
    ssu_args a;
    memset(&a, 0, sizeof a);
    a.out = p->out.data, a.state = p->state.data;
    a.x = p->x.data, a.dt = p->dt.data, a.z = p->z.data, a.Bm = p->Bm.data, a.Cm = p->Cm.data;
    a.A = (const float *)p->A.data, a.D = (const float *)p->D.data, a.dtb = (const float *)p->dt_bias.data;
    a.B = B, a.DI = DI, a.N = N;
    a.sx0 = p->x.stride[0], a.sdt0 = p->dt.stride[0];
    if (a.z) a.sz0 = p->z.stride[0];
    a.ss0 = p->state.stride[0], a.ss1 = p->state.stride[1];
    a.sA0 = p->A.stride[0], a.sA1 = p->A.stride[1];
    a.sB0 = p->Bm.stride[0], a.sB1 = p->Bm.stride[1];
    a.sC0 = p->Cm.stride[0], a.sC1 = p->Cm.stride[1];
    if (a.D) a.sD = p->D.stride[0];
    if (a.dtb) a.sdtb = p->dt_bias.stride[0];
    a.bdt = (int)p->Bm.dtype, a.cdt = (int)p->Cm.dtype, a.stdt = (int)p->state.dtype;
    a.softplus = p->dt_softplus;
    a.G = pow2_at_least(jamba_ceil_div(N, 4));
    if (a.G > 32) a.G = 32;
    /* 16-byte (f32) / 8-byte (16-bit) state quads: base aligned, N and both outer strides multiples of 4 */
    const int64_t es = jamba_dtype_size(p->state.dtype);
    a.vec = N % 4 == 0 && ((uintptr_t)a.state % (uintptr_t)(4 * es)) == 0 && (a.ss0 % 4 == 0 || B <= 1) &&
            (a.ss1 % 4 == 0 || DI <= 1);
    cudaStream_t stream = (cudaStream_t)launch.stream;
    jamba_status s = JAMBA_ERR_DTYPE;
    JAMBA_DISPATCH_FLOAT(p->x.dtype, T, s = selective_state_update_launch<T>(a, stream));
    return s;
}
