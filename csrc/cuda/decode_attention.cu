/* decode_attention.cu -- softmax attention of a few query rows per KV head over a KV cache (decode steps), on CUDA.
 *
 * Exports: jamba_decode_attention_cuda (checks: csrc/cpu/decode_attention.c). Math as the CPU op (fp32; scores in
 * log2 units, exponentials by ex2.approx), split over the keys ("flash decoding"), so the summation order differs.
 *
 * Kernels (shapes and layouts at each):
 *   attn_split_kernel<T, EPL, RM>: grid (P splits, B * HKV), 4 warps. q, k, v (B, HKV, ., D) with unit stride along D,
 *     rows 16-byte aligned (ops.py copies other layouts), D = 32 * EPL (EPL 2, 4, 8: D 64, 128, 256), R <= RM (4 or
 *     8) query rows. Split p takes keys [p C, (p + 1) C), C = ceil(S / P); warp w of it every 4th key from w, 4 keys'
 *     K and V rows loaded before the first is used; lane l holds elements [l EPL, (l + 1) EPL) of each row. Per key
 *     and row: the score by a shuffle butterfly, then the online softmax update (running max m, sum l, output o).
 *     The 4 warps' (m, l, o) are merged in warp order through shared memory and written to the workspace:
 *     part_ml (B * HKV, P, R, 2) = (m, l), part_o (B * HKV, P, R, D) = o, unnormalised, both f32 contiguous.
 *   attn_combine_kernel<T>: one block of D threads per (b, h, r): M = max_p m_p, out = sum_p 2^(m_p - M) o_p /
 *     sum_p 2^(m_p - M) l_p over the splits in order (0 where no key takes part).
 * Why: SDPA (torch 2.11, H200) runs one query token against the KV cache in a kernel parallel over (batch, heads,
 * query blocks) only: 8 blocks for Jamba's 8 KV heads at batch 1, ~190 us per attention layer against a 4.5K-key
 * cache whose K and V are 19 MB (4.4 us at copy bandwidth); dev/gemv_decode_ab.py's kernel totals,
 * benchmarks/results/gemv_decode_ab_2bc8e58.log.
 */
#include <string.h>

#include <type_traits>

#include "common.cuh"

#define ATTN_WARPS 4
#define ATTN_U 4 /* keys per warp per batch of loads */

struct attn_args {
    void *out;
    const void *q, *k, *v;
    const unsigned char *mask;
    float *part_ml, *part_o;
    int64_t B, H, R, S, P, D;
    int64_t sq0, sq1, sq2, sk0, sk1, sk2, sv0, sv1, sv2, so0, so1, so2, sm0, sm1; /* strides (elements) */
    float scale_log2; /* scale * log2(e): scores in log2 units */
};

/* EPL consecutive elements of T as floats (EPL * sizeof(T) = 4, 8, 16 or 32 bytes, aligned to min(16, that)) */
template <typename T, int EPL> struct attn_lane {
    static constexpr int W = EPL * (int)sizeof(T) / 4; /* 32-bit words */
    uint32_t w[W];
    __device__ __forceinline__ void load(const T *p) {
        if constexpr (W == 1) {
            w[0] = *(const uint32_t *)p;
        } else if constexpr (W == 2) {
            const uint2 u = *(const uint2 *)p;
            w[0] = u.x, w[1] = u.y;
        } else {
#pragma unroll
            for (int i = 0; i < W / 4; i++) {
                const uint4 u = *((const uint4 *)p + i);
                w[4 * i] = u.x, w[4 * i + 1] = u.y, w[4 * i + 2] = u.z, w[4 * i + 3] = u.w;
            }
        }
    }
    __device__ __forceinline__ void to_float(float *f) const {
#pragma unroll
        for (int i = 0; i < W; i++) {
            if constexpr (std::is_same<T, float>::value)
                f[i] = __uint_as_float(w[i]);
            else if constexpr (std::is_same<T, __nv_bfloat16>::value)
                jamba_bf16x2_ld(w[i], f + 2 * i);
            else
                jamba_f16x2_ld(w[i], f + 2 * i);
        }
    }
};

template <typename T, int EPL, int RM>
__global__ void __launch_bounds__(ATTN_WARPS * 32) attn_split_kernel(attn_args a) {
    jamba_pdl_begin();
    constexpr int D = 32 * EPL;
    __shared__ float sh_ml[ATTN_WARPS][RM][2];
    __shared__ float sh_o[ATTN_WARPS][RM][D];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int64_t bh = blockIdx.y, b = bh / a.H, h = bh % a.H, p = blockIdx.x;
    const int R = (int)a.R;
    const int64_t C = (a.S + a.P - 1) / a.P, j0 = p * C, j1 = min(a.S, j0 + C);
    const T *qb = (const T *)a.q + b * a.sq0 + h * a.sq1 + lane * EPL;
    const T *kb = (const T *)a.k + b * a.sk0 + h * a.sk1 + lane * EPL;
    const T *vb = (const T *)a.v + b * a.sv0 + h * a.sv1 + lane * EPL;
    const unsigned char *mb = a.mask ? a.mask + b * a.sm0 : nullptr;

    float q[RM][EPL], o[RM][EPL], m[RM], l[RM];
#pragma unroll
    for (int r = 0; r < RM; r++) {
        m[r] = -INFINITY, l[r] = 0.f;
#pragma unroll
        for (int e = 0; e < EPL; e++) q[r][e] = 0.f, o[r][e] = 0.f;
        if (r < R) {
            attn_lane<T, EPL> t;
            t.load(qb + r * a.sq2);
            t.to_float(q[r]);
#pragma unroll
            for (int e = 0; e < EPL; e++) q[r][e] *= a.scale_log2;
        }
    }
    for (int64_t jb = j0 + warp; jb < j1; jb += (int64_t)ATTN_WARPS * ATTN_U) {
        attn_lane<T, EPL> kt[ATTN_U], vt[ATTN_U];
        bool ok[ATTN_U];
#pragma unroll
        for (int u = 0; u < ATTN_U; u++) {
            const int64_t j = jb + (int64_t)u * ATTN_WARPS;
            ok[u] = j < j1 && (mb == nullptr || mb[j * a.sm1]);
            if (ok[u]) {
                kt[u].load(kb + j * a.sk2);
                vt[u].load(vb + j * a.sv2);
            }
        }
#pragma unroll
        for (int u = 0; u < ATTN_U; u++) {
            if (!ok[u]) continue; /* uniform over the warp */
            float kf[EPL], vf[EPL];
            kt[u].to_float(kf);
            vt[u].to_float(vf);
#pragma unroll
            for (int r = 0; r < RM; r++) {
                if (r >= R) break;
                float s = 0.f;
#pragma unroll
                for (int e = 0; e < EPL; e++) s = fmaf(q[r][e], kf[e], s);
                s = jamba_warp_sum(s);
                const float mn = fmaxf(m[r], s), c = jamba_cu_exp2(m[r] - mn), w = jamba_cu_exp2(s - mn);
                l[r] = l[r] * c + w;
#pragma unroll
                for (int e = 0; e < EPL; e++) o[r][e] = fmaf(o[r][e], c, w * vf[e]);
                m[r] = mn;
            }
        }
    }
#pragma unroll
    for (int r = 0; r < RM; r++) {
        if (r >= R) break;
        if (lane == 0) sh_ml[warp][r][0] = m[r], sh_ml[warp][r][1] = l[r];
#pragma unroll
        for (int e = 0; e < EPL; e++) sh_o[warp][r][lane * EPL + e] = o[r][e];
    }
    __syncthreads();
    /* merge the warps in order: thread t handles element t % D of rows t / D, t / D + 128 / D, ... */
    const int64_t base = (bh * a.P + p) * a.R;
    for (int i = threadIdx.x; i < R * D; i += ATTN_WARPS * 32) {
        const int r = i / D, d = i % D;
        float M = -INFINITY;
#pragma unroll
        for (int w = 0; w < ATTN_WARPS; w++) M = fmaxf(M, sh_ml[w][r][0]);
        float L = 0.f, O = 0.f;
        if (M > -INFINITY) {
#pragma unroll
            for (int w = 0; w < ATTN_WARPS; w++) {
                const float c = jamba_cu_exp2(sh_ml[w][r][0] - M);
                L = fmaf(sh_ml[w][r][1], c, L);
                O = fmaf(sh_o[w][r][d], c, O);
            }
        }
        a.part_o[(base + r) * D + d] = O;
        if (d == 0) a.part_ml[(base + r) * 2] = M, a.part_ml[(base + r) * 2 + 1] = L;
    }
}

template <typename T>
__global__ void attn_combine_kernel(attn_args a) {
    jamba_pdl_begin();
    const int64_t row = blockIdx.x, r = row % a.R, bh = row / a.R, b = bh / a.H, h = bh % a.H;
    const int d = threadIdx.x;
    const float *ml = a.part_ml + bh * a.P * a.R * 2;
    const float *po = a.part_o + bh * a.P * a.R * a.D;
    float M = -INFINITY;
    for (int64_t p = 0; p < a.P; p++) M = fmaxf(M, ml[(p * a.R + r) * 2]);
    float L = 0.f, O = 0.f;
    if (M > -INFINITY) {
        for (int64_t p = 0; p < a.P; p++) {
            const float c = jamba_cu_exp2(ml[(p * a.R + r) * 2] - M);
            L = fmaf(ml[(p * a.R + r) * 2 + 1], c, L);
            O = fmaf(po[(p * a.R + r) * a.D + d], c, O);
        }
    }
    ((T *)a.out)[b * a.so0 + h * a.so1 + r * a.so2 + d] = jamba_st<T>(L > 0.f ? O / L : 0.f);
}

template <typename T, int EPL, int RM>
static void attn_launch_split(const attn_args &a, cudaStream_t stream) {
    jamba_kernel_launch(attn_split_kernel<T, EPL, RM>, dim3((unsigned)a.P, (unsigned)(a.B * a.H)),
                        dim3(ATTN_WARPS * 32), 0, stream, a);
}

template <typename T>
static jamba_status attn_launch(const attn_args &a, cudaStream_t stream) {
    const int rm8 = a.R > 4;
    switch (a.D) {
    case 64: rm8 ? attn_launch_split<T, 2, 8>(a, stream) : attn_launch_split<T, 2, 4>(a, stream); break;
    case 128: rm8 ? attn_launch_split<T, 4, 8>(a, stream) : attn_launch_split<T, 4, 4>(a, stream); break;
    default: rm8 ? attn_launch_split<T, 8, 8>(a, stream) : attn_launch_split<T, 8, 4>(a, stream); break;
    }
    JAMBA_LAUNCH_CHECK("jamba.decode_attention (attn_split_kernel)", stream);
    jamba_kernel_launch(attn_combine_kernel<T>, dim3((unsigned)(a.B * a.H * a.R)), dim3((unsigned)a.D), 0, stream, a);
    JAMBA_LAUNCH_CHECK("jamba.decode_attention (attn_combine_kernel)", stream);
    return JAMBA_OK;
}

static bool attn_rows_aligned(const jamba_tensor *t, int64_t es) {
    const int64_t need = 16;
    if (((uintptr_t)t->data) % need) return false;
    for (int i = 0; i < t->ndim - 1; i++)
        if ((t->stride[i] * es) % need && t->shape[i] > 1) return false;
    return true;
}

extern "C" jamba_status jamba_decode_attention_cuda(const jamba_decode_attention_params *p, jamba_launch launch) {
    static const char *op = "jamba.decode_attention";
    JAMBA_TRY(jamba_decode_attention_check(p));
    const int64_t B = p->q.shape[0], H = p->q.shape[1], R = p->q.shape[2], D = p->q.shape[3], S = p->k.shape[2];
    if (B == 0 || H == 0 || R == 0 || D == 0) return JAMBA_OK;
    if (!(D == 64 || D == 128 || D == 256) || R > 8)
        return jamba_set_error(JAMBA_ERR_UNSUPPORTED, "%s: the CUDA kernel takes head_dim 64, 128 or 256 and at most 8 "
                               "query rows per KV head, got head_dim %lld and %lld rows", op, (long long)D, (long long)R);
    const int64_t es = jamba_dtype_size(p->q.dtype);
    if (!attn_rows_aligned(&p->q, es) || !attn_rows_aligned(&p->k, es) || !attn_rows_aligned(&p->v, es))
        return jamba_set_error(JAMBA_ERR_UNSUPPORTED, "%s: q, k and v rows must start at 16-byte boundaries on CUDA", op);
    JAMBA_TRY(jamba_check_tensor(op, "part_ml", &p->part_ml, 4, JAMBA_MASK(JAMBA_F32), 0));
    const int64_t P = p->part_ml.shape[1];
    const int64_t mlsh[4] = {B * H, P, R, 2}, osh[4] = {B * H, P, R, D};
    JAMBA_TRY(jamba_check_shape(op, "part_ml", &p->part_ml, mlsh));
    JAMBA_TRY(jamba_check_contiguous(op, "part_ml", &p->part_ml));
    JAMBA_TRY(jamba_check_tensor(op, "part_o", &p->part_o, 4, JAMBA_MASK(JAMBA_F32), 0));
    JAMBA_TRY(jamba_check_shape(op, "part_o", &p->part_o, osh));
    JAMBA_TRY(jamba_check_contiguous(op, "part_o", &p->part_o));
    if (P < 1 || P > 65535 || B * H > 65535 || B * H * R > JAMBA_MAX_GRID_X)
        return jamba_set_error(JAMBA_ERR_ARG, "%s: %lld splits for %lld (batch, head) pairs: out of the grid's range", op,
                               (long long)P, (long long)(B * H));
    JAMBA_DEVICE_GUARD(launch);
    attn_args a;
    memset(&a, 0, sizeof a);
    a.out = p->out.data, a.q = p->q.data, a.k = p->k.data, a.v = p->v.data;
    a.mask = (const unsigned char *)p->key_mask.data;
    a.part_ml = (float *)p->part_ml.data, a.part_o = (float *)p->part_o.data;
    a.B = B, a.H = H, a.R = R, a.S = S, a.P = P, a.D = D;
    a.sq0 = p->q.stride[0], a.sq1 = p->q.stride[1], a.sq2 = p->q.stride[2];
    a.sk0 = p->k.stride[0], a.sk1 = p->k.stride[1], a.sk2 = p->k.stride[2];
    a.sv0 = p->v.stride[0], a.sv1 = p->v.stride[1], a.sv2 = p->v.stride[2];
    a.so0 = p->out.stride[0], a.so1 = p->out.stride[1], a.so2 = p->out.stride[2];
    if (p->key_mask.data) a.sm0 = p->key_mask.stride[0], a.sm1 = p->key_mask.stride[1];
    a.scale_log2 = (float)(p->scale * 1.4426950408889634);
    cudaStream_t stream = (cudaStream_t)launch.stream;
    jamba_status s = JAMBA_ERR_DTYPE;
    JAMBA_DISPATCH_FLOAT(p->q.dtype, T, s = attn_launch<T>(a, stream));
    return s;
}
