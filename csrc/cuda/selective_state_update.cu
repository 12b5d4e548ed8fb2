/* selective_state_update.cu -- one decode step of the Mamba-1 selective scan, on CUDA (state in place).
 *
 * Exports: jamba_selective_state_update_cuda (checks: csrc/cpu/selective_scan.c).
 * Math per batch b and channel c, state h (N,) in the state's dtype (f32|bf16|f16), math in fp32:
 *   dt = dt[b,c] + dt_bias[c];  if softplus: dt = dt <= 20 ? log1p(exp(dt)) : dt
 *   h  = exp(dt * A[c,:]) * h + dt * B[b,:] * x[b,c];   y = sum_n h[n] * C[b,n] + D[c] * x[b,c]
 *   if z: y *= z * sigmoid(z);   out[b,c] = round(y);   state[b,c,:] = round(h)
 * Shapes and layouts: at each kernel below.
 * Two kernels: selective_state_update_f32n16_kernel, the fast path (fp32 state, N = 16, 16-byte aligned
 * state and A rows: Jamba / Mamba-1 decode), and selective_state_update_kernel, the general one (any state
 * dtype, N, strides: every call the fast path does not take).
 */
#include <string.h>

#include "common.cuh"

static int ssu_pow2_at_least(int64_t v) {
    int p = 1;
    while (p < v) p <<= 1;
    return p;
}

/* ---- decode step, general path ---------------------------------------------------------------------- */
struct ssu_args {
    void *out, *state;
    const void *x, *dt, *z, *Bm, *Cm;
    const float *A, *D, *dtb;
    int64_t B, DI, N;
    int64_t sx0, sdt0, sz0;          /* batch strides; unit stride along DI */
    int64_t ss0, ss1;                /* state strides (batch, channel); unit along N */
    int64_t sA0, sA1, sB0, sB1, sC0, sC1, sD, sdtb;
    int bdt, cdt, stdt, softplus, G, vec;
    unsigned ncb;                    /* fast path: channel blocks per batch group */
};

/* 4 consecutive state elements in the state's runtime dtype (f32|bf16|f16); i is 4-element aligned */
__device__ __forceinline__ void ssu_load4(const void *p, int dtype, int64_t i, float v[4]) {
    if (dtype == JAMBA_F32) {
        const float4 q = *(const float4 *)((const float *)p + i);
        v[0] = q.x, v[1] = q.y, v[2] = q.z, v[3] = q.w;
    } else {
        const uint2 q = *(const uint2 *)((const uint16_t *)p + i);
        const unsigned short h[4] = {(unsigned short)(q.x & 0xffffu), (unsigned short)(q.x >> 16),
                                     (unsigned short)(q.y & 0xffffu), (unsigned short)(q.y >> 16)};
#pragma unroll
        for (int k = 0; k < 4; k++)
            v[k] = dtype == JAMBA_BF16 ? __bfloat162float(__ushort_as_bfloat16(h[k]))
                                       : __half2float(__ushort_as_half(h[k]));
    }
}

/* 4 state elements (any alignment, n0 + k < N only) in the state's runtime dtype */
__device__ __forceinline__ void ssu_load4_scalar(const void *p, int dtype, int64_t i, int64_t nvalid, float v[4]) {
#pragma unroll
    for (int k = 0; k < 4; k++) v[k] = k < nvalid ? jamba_ld_any(p, dtype, i + k) : 0.f;
}
__device__ __forceinline__ void ssu_store4(void *p, int dtype, int64_t i, int64_t nvalid, bool vec,
                                           const float v[4]) {
    if (vec) {
        if (dtype == JAMBA_F32) {
            *(float4 *)((float *)p + i) = make_float4(v[0], v[1], v[2], v[3]);
        } else {
            unsigned hq[4];
#pragma unroll
            for (int k = 0; k < 4; k++)
                hq[k] = dtype == JAMBA_BF16 ? __bfloat16_as_ushort(__float2bfloat16_rn(v[k]))
                                            : __half_as_ushort(__float2half_rn(v[k]));
            uint2 q;
            q.x = hq[0] | (hq[1] << 16);
            q.y = hq[2] | (hq[3] << 16);
            *(uint2 *)((uint16_t *)p + i) = q;
        }
        return;
    }
#pragma unroll
    for (int k = 0; k < 4; k++) {
        if (k >= nvalid) break;
        if (dtype == JAMBA_F32) ((float *)p)[i + k] = v[k];
        else if (dtype == JAMBA_BF16) ((__nv_bfloat16 *)p)[i + k] = __float2bfloat16_rn(v[k]);
        else ((__half *)p)[i + k] = __float2half_rn(v[k]);
    }
}

#define SSU_QUADS 2 /* quads of 4 states per thread: N <= 256 = 32 threads x 2 quads x 4 */

/* selective_state_update_kernel
 *   state (B, DI, N) f32|bf16|f16 (runtime), unit stride along N, updated in place; x, dt, z (B, DI) T, unit
 *   stride along DI; out (B, DI) T contiguous; A (DI, N) f32; B, C (B, N) f32|T any strides;
 *   D, dt_bias (DI,) f32.
 *   G threads per (b, c) (G = pow2 >= N/4, <= 32), flat over grid.x; thread g owns the quads of 4 states
 *   q = g and g + G (16-byte state loads when aligned); partial y summed with warp shuffles. Every load
 *   (state, A, B, C, dt, x, z) is issued before the first arithmetic, so a thread waits for memory once. */
template <typename T>
__global__ void __launch_bounds__(128) selective_state_update_kernel(ssu_args a) {
    jamba_pdl_begin();
    const int64_t gid = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    const int G = a.G;
    const int64_t bc = gid / G;
    const int g = (int)(gid - bc * G);
    const bool valid = bc < a.B * a.DI;
    const int64_t b = valid ? bc / a.DI : 0, c = valid ? bc - b * a.DI : 0;
    const int64_t so = b * a.ss0 + c * a.ss1; /* state row (b, c) */
    float hv[SSU_QUADS][4], Av[SSU_QUADS][4], Bv[SSU_QUADS][4], Cv[SSU_QUADS][4];
    float draw = 0.f, xu = 0.f, zv = 0.f, Dc = 0.f, dtb = 0.f;
    if (valid) {
#pragma unroll
        for (int q = 0; q < SSU_QUADS; q++) {
            const int64_t n0 = ((int64_t)g + (int64_t)q * G) * 4, nv = a.N - n0;
            if (nv > 0) {
                if (a.vec) ssu_load4(a.state, a.stdt, so + n0, hv[q]);
                else ssu_load4_scalar(a.state, a.stdt, so + n0, nv, hv[q]);
#pragma unroll
                for (int k = 0; k < 4; k++) {
                    const bool on = k < nv;
                    Av[q][k] = on ? a.A[c * a.sA0 + (n0 + k) * a.sA1] : 0.f;
                    Bv[q][k] = on ? jamba_ld_any(a.Bm, a.bdt, b * a.sB0 + (n0 + k) * a.sB1) : 0.f;
                    Cv[q][k] = on ? jamba_ld_any(a.Cm, a.cdt, b * a.sC0 + (n0 + k) * a.sC1) : 0.f;
                }
            }
        }
        draw = jamba_ld<T>(((const T *)a.dt)[b * a.sdt0 + c]);
        xu = jamba_ld<T>(((const T *)a.x)[b * a.sx0 + c]);
        if (a.z) zv = jamba_ld<T>(((const T *)a.z)[b * a.sz0 + c]);
        if (a.D) Dc = a.D[c * a.sD];
        if (a.dtb) dtb = a.dtb[c * a.sdtb];
    }
    float y = 0.f;
    if (valid) {
        float d = draw + dtb;
        if (a.softplus) d = jamba_cu_softplus(d);
        const float dxu = d * xu, dl2 = d * JAMBA_LOG2E;
#pragma unroll
        for (int q = 0; q < SSU_QUADS; q++) {
            const int64_t n0 = ((int64_t)g + (int64_t)q * G) * 4, nv = a.N - n0;
            if (nv > 0) {
#pragma unroll
                for (int k = 0; k < 4; k++) {
                    /* masked lanes: A = B = C = 0 and h = 0 stay 0; y uses the fp32 state (as mamba_ssm) */
                    hv[q][k] = fmaf(jamba_cu_exp2(dl2 * Av[q][k]), hv[q][k], dxu * Bv[q][k]);
                    y = fmaf(hv[q][k], Cv[q][k], y);
                }
                ssu_store4(a.state, a.stdt, so + n0, nv, a.vec != 0, hv[q]);
            }
        }
    }
    for (int o = G >> 1; o > 0; o >>= 1) y += __shfl_xor_sync(JAMBA_FULL_MASK, y, o);
    if (valid && g == 0) {
        y = fmaf(Dc, xu, y);
        if (a.z) y *= jamba_cu_silu(zv);
        ((T *)a.out)[bc] = jamba_st<T>(y);
    }
}

template <typename T>
static jamba_status selective_state_update_launch(const ssu_args &a, cudaStream_t stream) {
    const int64_t blocks = jamba_ceil_div(a.B * a.DI * a.G, 128);
    if (blocks > JAMBA_MAX_GRID_X)
        return jamba_set_error(JAMBA_ERR_ARG, "jamba.selective_state_update: batch*d_inner too large (%lld)",
                               (long long)(a.B * a.DI));
    jamba_kernel_launch(selective_state_update_kernel<T>, (unsigned)blocks, 128, 0, stream, a);
    JAMBA_LAUNCH_CHECK("jamba.selective_state_update: kernel launch", stream);
    return JAMBA_OK;
}

/* ---- fast path: fp32 state, N = 16 ------------------------------------------------------------------ */
#define SSU_F_NQ 4                         /* quads of 4 states in a row of N = 16 */
#define SSU_F_CH 64                        /* channels per block */
#define SSU_F_THREADS (SSU_F_CH * SSU_F_NQ) /* 256 */

/* one 16-byte store (p 16-byte aligned). A plain float4 store is split into 4 scalar STG by nvcc 13 here. */
__device__ __forceinline__ void ssu_st_f4(float *p, float4 v) {
    asm volatile("st.global.v4.f32 [%0], {%1, %2, %3, %4};" ::"l"(p), "f"(v.x), "f"(v.y), "f"(v.z), "f"(v.w)
                 : "memory");
}

/* selective_state_update_f32n16_kernel
 *   state (B, DI, 16) f32, unit stride along N, base and both outer strides 16-byte aligned, in place;
 *   A (DI, 16) f32, unit stride along N, rows 16-byte aligned; x, dt, z (B, DI) T, unit stride along DI;
 *   out (B, DI) T contiguous; B, C (B, 16) f32|T, any strides; D, dt_bias (DI,) f32, any stride.
 *   Block = 64 channels x 4 batch rows; blockIdx.x = batch group * ncb + channel block. Thread (g, q),
 *   tid = 4g + q: channel c = 64 * cb + g, states n = 4q .. 4q+3 of the rows (b0 + j, c), j = 0..3, so a
 *   warp reads and writes 512 contiguous bytes per batch row (contiguous state) and A once per 4 rows.
 *   Every global load (4 state float4, A float4, dt/x/z, D, dt_bias) is issued before B and C of the 4
 *   rows are staged in shared memory (fp32, any dtype/stride) and before the first arithmetic.
 *   The per-row scalars are computed once, not 4 times: lane q of a channel's 4 lanes computes dt
 *   (softplus) for row b0 + q and broadcasts it; after the 4-lane sum of row j, lane j writes out[b0+j, c].
 *   Same fp32 operations, in the same order, as selective_state_update_kernel: results are bit-identical.
 *   5 resident blocks per SM asked of ptxas (48 registers, 40 warps; each thread loads its 64 state bytes,
 *   waits at the barrier, computes, stores and exits, so more resident blocks = more loads in flight): in the
 *   A/B round at eaa685c (benchmarks/results/gpu_round_eaa685c.log, H200) batch 256 took 73.6 us (90.9% of copy
 *   bandwidth) against 78.3 (85.4%) with 4 blocks per SM and 76.8 with 6 (40 registers, spills), batch 1..64
 *   within 0.4 us of 4 blocks per SM. */
#define SSU_F_MINB 5

template <typename T>
__global__ void __launch_bounds__(SSU_F_THREADS, SSU_F_MINB) selective_state_update_f32n16_kernel(ssu_args a) {
    jamba_pdl_begin();
    __shared__ float4 sbc[2][SSU_F_NQ][SSU_F_NQ]; /* [B | C][row j][quad]: 16 fp32 per row */
    const int tid = threadIdx.x, q = tid & (SSU_F_NQ - 1), lane = tid & 31;
    const unsigned cb = blockIdx.x % a.ncb, bg = blockIdx.x / a.ncb;
    const int64_t c = (int64_t)cb * SSU_F_CH + (tid >> 2), b0 = (int64_t)bg * SSU_F_NQ;
    const int64_t rem = a.B - b0;
    const int nb = rem < SSU_F_NQ ? (int)rem : SSU_F_NQ; /* rows of this batch group: 1..4 */
    const bool cv = c < a.DI;
    float *st = (float *)a.state + b0 * a.ss0 + c * a.ss1 + 4 * q; /* state[b0, c, 4q] */
    float4 h[SSU_F_NQ], Aq = make_float4(0.f, 0.f, 0.f, 0.f);
    float draw = 0.f, xu = 0.f, zv = 0.f, Dc = 0.f, dtb = 0.f;
#pragma unroll
    for (int j = 0; j < SSU_F_NQ; j++) h[j] = make_float4(0.f, 0.f, 0.f, 0.f);
    if (cv) {
        Aq = *(const float4 *)(a.A + c * a.sA0 + 4 * q); /* A[c, 4q] */
#pragma unroll
        for (int j = 0; j < SSU_F_NQ; j++)
            if (j < nb) h[j] = *(const float4 *)(st + j * a.ss0); /* state[b0 + j, c, 4q] */
        if (q < nb) { /* this lane's row b0 + q */
            const int64_t b = b0 + q;
            draw = jamba_ld<T>(((const T *)a.dt)[b * a.sdt0 + c]);
            xu = jamba_ld<T>(((const T *)a.x)[b * a.sx0 + c]);
            if (a.z) zv = jamba_ld<T>(((const T *)a.z)[b * a.sz0 + c]);
        }
        if (a.D) Dc = a.D[c * a.sD];
        if (a.dtb) dtb = a.dtb[c * a.sdtb];
    }
    if (tid < 2 * SSU_F_NQ * 16) { /* B (tid < 64) or C of row b0 + j, element n */
        const int isC = tid >> 6, j = (tid >> 4) & (SSU_F_NQ - 1), n = tid & 15;
        float v = 0.f;
        if (j < nb)
            v = isC ? jamba_ld_any(a.Cm, a.cdt, (b0 + j) * a.sC0 + n * a.sC1)
                    : jamba_ld_any(a.Bm, a.bdt, (b0 + j) * a.sB0 + n * a.sB1);
        ((float *)sbc)[tid] = v;
    }
    __syncthreads();
    float d = draw + dtb;
    if (a.softplus) d = jamba_cu_softplus(d);
    const float dxu_q = d * xu, dl2_q = d * JAMBA_LOG2E; /* of row b0 + q */
    const int g0 = lane & ~(SSU_F_NQ - 1);             /* first lane of this channel */
    float yq = 0.f;
#pragma unroll
    for (int j = 0; j < SSU_F_NQ; j++) {
        const float dxu = __shfl_sync(JAMBA_FULL_MASK, dxu_q, g0 + j);
        const float dl2 = __shfl_sync(JAMBA_FULL_MASK, dl2_q, g0 + j);
        const float4 Bq = sbc[0][j][q], Cq = sbc[1][j][q];
        float y = 0.f;
        /* rows j >= nb and channels >= DI: zeros in, nothing stored */
        h[j].x = fmaf(jamba_cu_exp2(dl2 * Aq.x), h[j].x, dxu * Bq.x);
        y = fmaf(h[j].x, Cq.x, y);
        h[j].y = fmaf(jamba_cu_exp2(dl2 * Aq.y), h[j].y, dxu * Bq.y);
        y = fmaf(h[j].y, Cq.y, y);
        h[j].z = fmaf(jamba_cu_exp2(dl2 * Aq.z), h[j].z, dxu * Bq.z);
        y = fmaf(h[j].z, Cq.z, y);
        h[j].w = fmaf(jamba_cu_exp2(dl2 * Aq.w), h[j].w, dxu * Bq.w);
        y = fmaf(h[j].w, Cq.w, y);
        y += __shfl_xor_sync(JAMBA_FULL_MASK, y, 2);
        y += __shfl_xor_sync(JAMBA_FULL_MASK, y, 1);
        if (j == q) yq = y;
    }
    if (cv) {
#pragma unroll
        for (int j = 0; j < SSU_F_NQ; j++)
            if (j < nb) ssu_st_f4(st + j * a.ss0, h[j]);
        if (q < nb) {
            float y = fmaf(Dc, xu, yq);
            if (a.z) y *= jamba_cu_silu(zv);
            ((T *)a.out)[(b0 + q) * a.DI + c] = jamba_st<T>(y); /* out[b0 + q, c] */
        }
    }
}

template <typename T>
static jamba_status selective_state_update_f32n16_launch(ssu_args a, cudaStream_t stream) {
    const int64_t ncb = jamba_ceil_div(a.DI, SSU_F_CH), blocks = ncb * jamba_ceil_div(a.B, SSU_F_NQ);
    if (blocks > JAMBA_MAX_GRID_X)
        return jamba_set_error(JAMBA_ERR_ARG, "jamba.selective_state_update: batch*d_inner too large (%lld)",
                               (long long)(a.B * a.DI));
    a.ncb = (unsigned)ncb;
    jamba_kernel_launch(selective_state_update_f32n16_kernel<T>, (unsigned)blocks, SSU_F_THREADS, 0, stream, a);
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
    a.G = ssu_pow2_at_least(jamba_ceil_div(N, 4));
    if (a.G > 32) a.G = 32;
    /* 16-byte (f32) / 8-byte (16-bit) state quads: base aligned, N and both outer strides multiples of 4 */
    const int64_t es = jamba_dtype_size(p->state.dtype);
    a.vec = N % 4 == 0 && ((uintptr_t)a.state % (uintptr_t)(4 * es)) == 0 && (a.ss0 % 4 == 0 || B <= 1) &&
            (a.ss1 % 4 == 0 || DI <= 1);
    /* fast path: f32 state, N = 16, 16-byte state quads (a.vec) and A rows with unit stride along N */
    const bool fast = p->state.dtype == JAMBA_F32 && N == 16 && a.vec && a.sA1 == 1 &&
                      ((uintptr_t)a.A % 16u) == 0 && (a.sA0 % 4 == 0 || DI <= 1);
    cudaStream_t stream = (cudaStream_t)launch.stream;
    jamba_status s = JAMBA_ERR_DTYPE;
    if (fast) {
        JAMBA_DISPATCH_FLOAT(p->x.dtype, T, s = selective_state_update_f32n16_launch<T>(a, stream));
    } else {
        JAMBA_DISPATCH_FLOAT(p->x.dtype, T, s = selective_state_update_launch<T>(a, stream));
    }
    return s;
}
