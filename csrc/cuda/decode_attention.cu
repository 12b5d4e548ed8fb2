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
 *   attn_mma_kernel<T, D>: bf16 / f16 at D 64 / 128 (the default there; env JAMBA_EXT_ATTN_MMA=0 runs
 *     attn_split_kernel instead): the same split and workspace, q k^T and p v on tensor cores (mma.sync with the
 *     query rows as M, k-permuted 16-byte loads, movmatrix for v). Layout at the kernel.
 *   attn_combine_kernel<T>: one block of D threads per (b, h, r): M = max_p m_p, out = sum_p 2^(m_p - M) o_p /
 *     sum_p 2^(m_p - M) l_p over the splits in order (0 where no key takes part).
 * NaN (as the CPU op and jamba_ext/reference.py): every running max is NaN-propagating (jamba_max_nan: max.NaN, the
 *   same cost as fmaxf, which would skip a NaN score), so a NaN score (a NaN in q or in an attended K row) makes m,
 *   then every rescale factor 2^(m - m'), l and o NaN through the warp merge and the split combine; a NaN in an
 *   attended V row reaches its column through p v. The "no key" guards test m == -inf (a NaN passes them) and l == 0.
 *   A masked key's K and V rows are never loaded.
 * Why: SDPA (torch 2.11, H200) runs one query token against the KV cache in a kernel parallel over (batch, heads,
 * query blocks) only: 8 blocks for Jamba's 8 KV heads at batch 1, ~190 us per attention layer against a 4.5K-key
 * cache whose K and V are 19 MB (4.4 us at copy bandwidth); dev/gemv_decode_ab.py's kernel totals,
 * benchmarks/results/gemv_decode_ab_2bc8e58.log.
 */
#include <stdlib.h>
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

/* The ATTN_WARPS warps' (m, l, o) of rows r < R, left in shared memory, merged in warp order into the workspace
 * (part_ml, part_o of split p); thread t handles element t % D of rows t / D, t / D + 128 / D, ... Call after a
 * barrier. */
template <int RM, int D>
__device__ __forceinline__ void attn_merge_warps(const attn_args &a, const float (&sh_ml)[ATTN_WARPS][RM][2],
                                                 const float (&sh_o)[ATTN_WARPS][RM][D], int64_t bh, int64_t p) {
    const int R = (int)a.R;
    const int64_t base = (bh * a.P + p) * a.R;
    for (int i = threadIdx.x; i < R * D; i += ATTN_WARPS * 32) {
        const int r = i / D, d = i % D;
        float M = -INFINITY;
#pragma unroll
        for (int w = 0; w < ATTN_WARPS; w++) M = jamba_max_nan(M, sh_ml[w][r][0]);
        float L = 0.f, O = 0.f;
        if (M != -INFINITY) { /* (NaN M passes: a NaN row) */
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
                const float mn = jamba_max_nan(m[r], s), c = jamba_cu_exp2(m[r] - mn), w = jamba_cu_exp2(s - mn);
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
    attn_merge_warps<RM, D>(a, sh_ml, sh_o, bh, p);
}

/* ---- tensor-core form (bf16 / f16, D 64 or 128) ----------------------------------------------------------- */
/* mma.sync with A rows 8..15 zero, outputs of rows 0..7 only (g = lane / 4, tq = lane % 4; pairs packed low element
 * first): attn_mma16: d0, d1 += A[g][k] B[k][2tq, 2tq + 1] over k < 16 (m16n8k16: a0 = A[g][2tq, 2tq + 1],
 * a2 = A[g][2tq + 8, 2tq + 9], b0 = B[2tq, 2tq + 1][g], b1 = B[2tq + 8, 2tq + 9][g]); attn_mma8: the same over
 * k < 8 (m16n8k8: a0, b0) */
template <typename T>
__device__ __forceinline__ void attn_mma16(float &d0, float &d1, uint32_t a0, uint32_t a2, uint32_t b0, uint32_t b1) {
    float j0, j1;
    if constexpr (std::is_same<T, __nv_bfloat16>::value)
        asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
            "{%0, %1, %10, %10};\n"
            : "+f"(d0), "+f"(d1), "=f"(j0), "=f"(j1)
            : "r"(a0), "r"(0u), "r"(a2), "r"(0u), "r"(b0), "r"(b1), "f"(0.f));
    else
        asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
            "{%0, %1, %10, %10};\n"
            : "+f"(d0), "+f"(d1), "=f"(j0), "=f"(j1)
            : "r"(a0), "r"(0u), "r"(a2), "r"(0u), "r"(b0), "r"(b1), "f"(0.f));
}
template <typename T>
__device__ __forceinline__ void attn_mma8(float &d0, float &d1, uint32_t a0, uint32_t b0) {
    float j0, j1;
    if constexpr (std::is_same<T, __nv_bfloat16>::value)
        asm("mma.sync.aligned.m16n8k8.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5}, {%6}, {%0, %1, %7, %7};\n"
            : "+f"(d0), "+f"(d1), "=f"(j0), "=f"(j1)
            : "r"(a0), "r"(0u), "r"(b0), "f"(0.f));
    else
        asm("mma.sync.aligned.m16n8k8.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5}, {%6}, {%0, %1, %7, %7};\n"
            : "+f"(d0), "+f"(d1), "=f"(j0), "=f"(j1)
            : "r"(a0), "r"(0u), "r"(b0), "f"(0.f));
}
/* the transpose of the 8 x 8 16-bit matrix whose row lane / 4, columns 2 (lane % 4) + {0, 1} this lane holds */
__device__ __forceinline__ uint32_t attn_trans8(uint32_t x) {
    uint32_t y;
    asm("movmatrix.sync.aligned.m8n8.trans.b16 %0, %1;\n" : "=r"(y) : "r"(x));
    return y;
}
template <typename T> __device__ __forceinline__ uint32_t attn_pack2(float a, float b) {
    if constexpr (std::is_same<T, __nv_bfloat16>::value) return jamba_bf16x2_st(a, b);
    else return jamba_f16x2_st(a, b);
}
__device__ __forceinline__ uint32_t attn_word(const uint4 &v, int w) {
    return w == 0 ? v.x : w == 1 ? v.y : w == 2 ? v.z : v.w;
}

/* attn_mma_kernel<T, D>: the same split, workspace and warp merge as attn_split_kernel (grid (P, B * HKV), 4
 * warps, R <= 8 rows, same layouts and alignment), the products on tensor cores. Warp w takes the tiles of 8 keys
 * w, w + 4, ... of its split. Lane l (g = l / 4, tq = l % 4) loads the 16-byte chunks tq, tq + 4, ... (NCH = D / 32
 * of them) of key row g of the tile, K and V, and of query row g (zeros for g >= R). Since a dot product may sum
 * its terms in any order, word 2h (2h + 1) of chunk tq + 4i serves as the k = 2tq, 2tq + 1 (2tq + 8, 2tq + 9) pair
 * of k-step 2i + h for q (A) and k (B) alike: S = q k^T by D / 16 m16n8k16 mma, query rows as M (rows 8-15 zero),
 * keys as N, with no shuffle. The C fragment of S (row g, keys 2tq, 2tq + 1) is the A fragment of P v (m16n8k8,
 * keys as K) once exponentiated (online softmax per row: the row max by two shuffles within the lane quad, l
 * summed per lane and over the quad at the end) and rounded to T. For B = v the pairs must run along keys: each
 * word of the loaded v chunks is one lane's part of an 8 x 8 block (keys x 4 column pairs), transposed by
 * movmatrix; block (i, w) becomes the n-tile whose column n is element (n / 2 + 4i) * 8 + 2w + n % 2, so after
 * the D / 8 mma of a tile lane (g, tq) holds elements (tq + 4i) * 8 + 0..7 of output row g: chunk tq + 4i, as it
 * loaded it. Keys past the split or masked out: no loads (zeros), score -inf. Registers: 158 at D 128 with 8-key
 * tiles, so 3 blocks of 128 threads per SM (ops.ATTN_SPLITS_PER_SM = 3: one wave); 16-key tiles took ~170 (2
 * blocks), and capped at 128 for 4 blocks either form spilled. */
template <typename T, int D>
__global__ void __launch_bounds__(ATTN_WARPS * 32, 3) attn_mma_kernel(attn_args a) {
    jamba_pdl_begin();
    constexpr int NCH = D / 32, RM = 8;
    __shared__ float sh_ml[ATTN_WARPS][RM][2];
    __shared__ float sh_o[ATTN_WARPS][RM][D];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, tq = lane & 3;
    const int64_t bh = blockIdx.y, b = bh / a.H, h = bh % a.H, p = blockIdx.x;
    const int R = (int)a.R;
    const int64_t C = (a.S + a.P - 1) / a.P, j0 = p * C, j1 = min(a.S, j0 + C);
    const T *kb = (const T *)a.k + b * a.sk0 + h * a.sk1 + tq * 8;
    const T *vb = (const T *)a.v + b * a.sv0 + h * a.sv1 + tq * 8;
    const unsigned char *mb = a.mask ? a.mask + b * a.sm0 : nullptr;

    uint4 qv[NCH];
#pragma unroll
    for (int i = 0; i < NCH; i++)
        qv[i] = g < R ? *(const uint4 *)((const T *)a.q + b * a.sq0 + h * a.sq1 + g * a.sq2 + tq * 8 + i * 32)
                      : make_uint4(0u, 0u, 0u, 0u);
    float o[NCH][4][2];
#pragma unroll
    for (int i = 0; i < NCH; i++)
#pragma unroll
        for (int w = 0; w < 4; w++) o[i][w][0] = o[i][w][1] = 0.f;
    float m = -INFINITY, l = 0.f;
    const int64_t ntiles = (j1 - j0 + 7) / 8;
#pragma unroll 1
    for (int64_t t = warp; t < ntiles; t += ATTN_WARPS) {
        const int64_t base = j0 + t * 8, jr = base + g;
        const bool ok = jr < j1 && (mb == nullptr || mb[jr * a.sm1]);
        uint4 kt[NCH], vt[NCH];
#pragma unroll
        for (int i = 0; i < NCH; i++) {
            kt[i] = ok ? *(const uint4 *)(kb + jr * a.sk2 + i * 32) : make_uint4(0u, 0u, 0u, 0u);
            vt[i] = ok ? *(const uint4 *)(vb + jr * a.sv2 + i * 32) : make_uint4(0u, 0u, 0u, 0u);
        }
        float sc[2] = {0.f, 0.f}; /* keys base + 2 tq + e */
#pragma unroll
        for (int i = 0; i < NCH; i++)
#pragma unroll
            for (int h2 = 0; h2 < 2; h2++)
                attn_mma16<T>(sc[0], sc[1], attn_word(qv[i], 2 * h2), attn_word(qv[i], 2 * h2 + 1),
                              attn_word(kt[i], 2 * h2), attn_word(kt[i], 2 * h2 + 1));
        float mt = -INFINITY;
#pragma unroll
        for (int e = 0; e < 2; e++) {
            const int64_t j = base + 2 * tq + e;
            const bool okc = j < j1 && (mb == nullptr || mb[j * a.sm1]);
            sc[e] = okc ? sc[e] * a.scale_log2 : -INFINITY;
            mt = jamba_max_nan(mt, sc[e]);
        }
        mt = jamba_max_nan(mt, __shfl_xor_sync(JAMBA_FULL_MASK, mt, 1));
        mt = jamba_max_nan(mt, __shfl_xor_sync(JAMBA_FULL_MASK, mt, 2));
        const float mn = jamba_max_nan(m, mt), mu = mn == -INFINITY ? 0.f : mn, c = jamba_cu_exp2(m - mu);
        const float p0 = jamba_cu_exp2(sc[0] - mu), p1 = jamba_cu_exp2(sc[1] - mu);
        l = l * c + (p0 + p1);
        m = mn;
        const uint32_t pa = attn_pack2<T>(p0, p1);
#pragma unroll
        for (int i = 0; i < NCH; i++)
#pragma unroll
            for (int w = 0; w < 4; w++) {
                o[i][w][0] *= c, o[i][w][1] *= c;
                attn_mma8<T>(o[i][w][0], o[i][w][1], pa, attn_trans8(attn_word(vt[i], w)));
            }
    }
    l += __shfl_xor_sync(JAMBA_FULL_MASK, l, 1);
    l += __shfl_xor_sync(JAMBA_FULL_MASK, l, 2);
    if (g < R) {
        if (tq == 0) sh_ml[warp][g][0] = m, sh_ml[warp][g][1] = l;
#pragma unroll
        for (int i = 0; i < NCH; i++)
#pragma unroll
            for (int w = 0; w < 4; w++)
#pragma unroll
                for (int e = 0; e < 2; e++) sh_o[warp][g][(tq + 4 * i) * 8 + 2 * w + e] = o[i][w][e];
    }
    __syncthreads();
    attn_merge_warps<RM, D>(a, sh_ml, sh_o, bh, p);
}

template <typename T>
__global__ void attn_combine_kernel(attn_args a) {
    jamba_pdl_begin();
    const int64_t row = blockIdx.x, r = row % a.R, bh = row / a.R, b = bh / a.H, h = bh % a.H;
    const int d = threadIdx.x;
    const float *ml = a.part_ml + bh * a.P * a.R * 2;
    const float *po = a.part_o + bh * a.P * a.R * a.D;
    float M = -INFINITY;
    for (int64_t p = 0; p < a.P; p++) M = jamba_max_nan(M, ml[(p * a.R + r) * 2]);
    float L = 0.f, O = 0.f;
    if (M != -INFINITY) { /* (NaN M passes: a NaN row) */
        for (int64_t p = 0; p < a.P; p++) {
            const float c = jamba_cu_exp2(ml[(p * a.R + r) * 2] - M);
            L = fmaf(ml[(p * a.R + r) * 2 + 1], c, L);
            O = fmaf(po[(p * a.R + r) * a.D + d], c, O);
        }
    }
    ((T *)a.out)[b * a.so0 + h * a.so1 + r * a.so2 + d] = jamba_st<T>(L == 0.f ? 0.f : O / L); /* (L NaN: NaN) */
}

template <typename T, int EPL, int RM>
static void attn_launch_split(const attn_args &a, cudaStream_t stream) {
    jamba_kernel_launch(attn_split_kernel<T, EPL, RM>, dim3((unsigned)a.P, (unsigned)(a.B * a.H)),
                        dim3(ATTN_WARPS * 32), 0, stream, a);
}

/* attn_mma_kernel where it applies (bf16 / f16, D 64 or 128, env JAMBA_EXT_ATTN_MMA not "0"): *launched = 1 */
template <typename T>
static jamba_status attn_launch_mma(const attn_args &a, cudaStream_t stream, int *launched) {
    *launched = 0;
    if constexpr (!std::is_same<T, float>::value) {
        const char *env = getenv("JAMBA_EXT_ATTN_MMA"); /* "0": the CUDA-core kernel (A/B, tests) */
        if (!(a.D == 64 || a.D == 128) || (env != NULL && env[0] == '0')) return JAMBA_OK;
        const dim3 grid((unsigned)a.P, (unsigned)(a.B * a.H)), block(ATTN_WARPS * 32);
        if (a.D == 64) jamba_kernel_launch(attn_mma_kernel<T, 64>, grid, block, 0, stream, a);
        else jamba_kernel_launch(attn_mma_kernel<T, 128>, grid, block, 0, stream, a);
        JAMBA_LAUNCH_CHECK("jamba.decode_attention (attn_mma_kernel)", stream);
        *launched = 1;
    }
    return JAMBA_OK;
}

template <typename T>
static jamba_status attn_launch(const attn_args &a, cudaStream_t stream) {
    int launched = 0;
    JAMBA_TRY(attn_launch_mma<T>(a, stream, &launched));
    if (!launched) {
        const int rm8 = a.R > 4;
        switch (a.D) {
        case 64: rm8 ? attn_launch_split<T, 2, 8>(a, stream) : attn_launch_split<T, 2, 4>(a, stream); break;
        case 128: rm8 ? attn_launch_split<T, 4, 8>(a, stream) : attn_launch_split<T, 4, 4>(a, stream); break;
        default: rm8 ? attn_launch_split<T, 8, 8>(a, stream) : attn_launch_split<T, 8, 4>(a, stream); break;
        }
        JAMBA_LAUNCH_CHECK("jamba.decode_attention (attn_split_kernel)", stream);
    }
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
    JAMBA_TRY(jamba_check_dense(op, "part_o", &p->part_o, 4, JAMBA_MASK(JAMBA_F32), osh));
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
