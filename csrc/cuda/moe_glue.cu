/* moe_glue.cu -- the pieces around torch GEMMs on CUDA: the SwiGLU activation of a fused gate/up projection
 * and the weighted combine of expert outputs kept in sorted order (jamba_ext/ops.py runs them between and
 * after its two torch._grouped_mm calls, the prefill engine from 4096 slots on Hopper).
 *
 * Exports: jamba_silu_mul_cuda, jamba_silu_mul_bwd_cuda, jamba_moe_combine_cuda, jamba_moe_grad_rows_cuda (checks and
 * math: csrc/cpu/moe.c, csrc/jamba.h).
 * Both are memory-bound streams: 16-byte vectors when rows allow, element access otherwise; fp32 math with
 * HF's roundings in the model dtype (moe_scaled of moe.cuh; the SiLU with the fast exp and division).
 * No atomics, no host synchronisation: a bad expert id gives NaN rows, as in moe_experts.
 */
#include "moe.cuh"

#include <string.h>

#define GLUE_THREADS 256

/* silu_mul_kernel<T, VEC>
 *   gate_up (M, 2F) T, unit stride along 2F, row stride ld (elements); out (M, F) T contiguous.
 *   grid.x over the row's F / V vectors (VEC: V = 16 / sizeof(T), else V = 1), grid.y over pairs of rows
 *   (grid-stride when M > 2 * 65535); a thread issues the loads of both rows before any math.
 *   out[m, f] = moe_act_fast(gate_up[m, f], gate_up[m, F + f]) (moe.cuh). */
#define GLUE_ROWS 2
template <typename T, bool VEC>
__global__ void __launch_bounds__(GLUE_THREADS) silu_mul_kernel(T *out, const T *gu, int64_t M, int64_t F, int64_t ld) {
    jamba_pdl_begin();
    constexpr int V = VEC ? 16 / (int)sizeof(T) : 1;
    const int64_t c = (int64_t)blockIdx.x * GLUE_THREADS + threadIdx.x;
    if (c * V >= F) return;
    for (int64_t m0 = (int64_t)blockIdx.y * GLUE_ROWS; m0 < M; m0 += (int64_t)gridDim.y * GLUE_ROWS) {
        if (VEC) {
            jamba_vec16<T> vg[GLUE_ROWS], vu[GLUE_ROWS];
#pragma unroll
            for (int r = 0; r < GLUE_ROWS; r++)
                if (m0 + r < M) {
                    const T *g = gu + (m0 + r) * ld + c * V;
                    vg[r].raw = *reinterpret_cast<const uint4 *>(g);
                    vu[r].raw = *reinterpret_cast<const uint4 *>(g + F);
                }
#pragma unroll
            for (int r = 0; r < GLUE_ROWS; r++)
                if (m0 + r < M) {
                    jamba_vec16<T> vo;
#pragma unroll
                    for (int q = 0; q < V; q++)
                        vo.v[q] = jamba_st<T>(moe_act_fast<T>(jamba_ld<T>(vg[r].v[q]), jamba_ld<T>(vu[r].v[q])));
                    *reinterpret_cast<uint4 *>(out + (m0 + r) * F + c * V) = vo.raw;
                }
        } else {
            for (int r = 0; r < GLUE_ROWS && m0 + r < M; r++) {
                const T *g = gu + (m0 + r) * ld + c;
                out[(m0 + r) * F + c] = jamba_st<T>(moe_act_fast<T>(jamba_ld<T>(g[0]), jamba_ld<T>(g[F])));
            }
        }
    }
}

extern "C" jamba_status jamba_silu_mul_cuda(const jamba_silu_mul_params *p, jamba_launch launch) {
    JAMBA_TRY(jamba_silu_mul_check(p));
    const int64_t M = p->gate_up.shape[0], F = p->gate_up.shape[1] / 2, ld = p->gate_up.stride[0];
    if (M == 0 || F == 0) return JAMBA_OK;
    JAMBA_DEVICE_GUARD(launch);
    cudaStream_t stream = (cudaStream_t)launch.stream;
    const int64_t es = jamba_dtype_size(p->gate_up.dtype), V = 16 / es;
    const bool vec = F % V == 0 && jamba_aligned16(p->gate_up.data) && jamba_aligned16(p->out.data) &&
                     (M <= 1 || (ld * es) % 16 == 0);
    const int64_t cols = vec ? F / V : F;
    const int64_t pairs = jamba_ceil_div(M, GLUE_ROWS);
    const unsigned gx = (unsigned)jamba_ceil_div(cols, GLUE_THREADS), gy = (unsigned)(pairs < 65535 ? pairs : 65535);
    if (jamba_ceil_div(cols, GLUE_THREADS) > 65535)
        return jamba_set_error(JAMBA_ERR_ARG, "jamba.silu_mul: F must be below %lld, got %lld",
                               (long long)(65535LL * GLUE_THREADS), (long long)F);
    const dim3 grid(gx, gy);
    jamba_status s = JAMBA_ERR_DTYPE;
    JAMBA_DISPATCH_FLOAT(p->gate_up.dtype, T, {
        if (vec) jamba_kernel_launch(silu_mul_kernel<T, true>, grid, GLUE_THREADS, 0, stream, (T *)p->out.data,
            (const T *)p->gate_up.data, M, F, ld);
        else jamba_kernel_launch(silu_mul_kernel<T, false>, grid, GLUE_THREADS, 0, stream, (T *)p->out.data,
            (const T *)p->gate_up.data, M, F, ld);
        s = JAMBA_OK;
    });
    JAMBA_TRY(s);
    JAMBA_LAUNCH_CHECK("jamba.silu_mul: kernel launch", stream);
    return JAMBA_OK;
}

/* silu_mul_bwd_kernel<T, VEC> (training: the gradient of silu_mul)
 *   gate_up (M, 2F) T and dout (M, F) T, unit stride along the last axis, row strides lg / ld; dgate_up (M, 2F) T
 *   contiguous. Same grid as silu_mul_kernel; a thread loads g, u and dout of both rows before any math.
 *   s = sigmoid(g): dgate_up[m, f] = dout * u * s * (1 + g (1 - s)), dgate_up[m, F + f] = dout * g * s. */
__device__ __forceinline__ void silu_mul_bwd_one(float g, float u, float d, float &dg, float &du) {
    const float s = __fdividef(1.f, 1.f + __expf(-g));
    dg = d * u * s * (1.f + g * (1.f - s));
    du = d * g * s;
}

template <typename T, bool VEC>
__global__ void __launch_bounds__(GLUE_THREADS) silu_mul_bwd_kernel(T *dgu, const T *gu, const T *dout, int64_t M,
                                                                   int64_t F, int64_t lg, int64_t ld) {
    jamba_pdl_begin();
    constexpr int V = VEC ? 16 / (int)sizeof(T) : 1;
    const int64_t c = (int64_t)blockIdx.x * GLUE_THREADS + threadIdx.x;
    if (c * V >= F) return;
    for (int64_t m0 = (int64_t)blockIdx.y * GLUE_ROWS; m0 < M; m0 += (int64_t)gridDim.y * GLUE_ROWS) {
        if (VEC) {
            jamba_vec16<T> vg[GLUE_ROWS], vu[GLUE_ROWS], vd[GLUE_ROWS];
#pragma unroll
            for (int r = 0; r < GLUE_ROWS; r++)
                if (m0 + r < M) {
                    const T *g = gu + (m0 + r) * lg + c * V;
                    vg[r].raw = *reinterpret_cast<const uint4 *>(g);
                    vu[r].raw = *reinterpret_cast<const uint4 *>(g + F);
                    vd[r].raw = *reinterpret_cast<const uint4 *>(dout + (m0 + r) * ld + c * V);
                }
#pragma unroll
            for (int r = 0; r < GLUE_ROWS; r++)
                if (m0 + r < M) {
                    jamba_vec16<T> og, ou;
#pragma unroll
                    for (int q = 0; q < V; q++) {
                        float dg, du;
                        silu_mul_bwd_one(jamba_ld<T>(vg[r].v[q]), jamba_ld<T>(vu[r].v[q]), jamba_ld<T>(vd[r].v[q]),
                                            dg, du);
                        og.v[q] = jamba_st<T>(dg);
                        ou.v[q] = jamba_st<T>(du);
                    }
                    T *o = dgu + (m0 + r) * 2 * F + c * V;
                    *reinterpret_cast<uint4 *>(o) = og.raw;
                    *reinterpret_cast<uint4 *>(o + F) = ou.raw;
                }
        } else {
            for (int r = 0; r < GLUE_ROWS && m0 + r < M; r++) {
                const T *g = gu + (m0 + r) * lg + c;
                float dg, du;
                silu_mul_bwd_one(jamba_ld<T>(g[0]), jamba_ld<T>(g[F]), jamba_ld<T>(dout[(m0 + r) * ld + c]), dg, du);
                T *o = dgu + (m0 + r) * 2 * F + c;
                o[0] = jamba_st<T>(dg);
                o[F] = jamba_st<T>(du);
            }
        }
    }
}

extern "C" jamba_status jamba_silu_mul_bwd_cuda(const jamba_silu_mul_bwd_params *p, jamba_launch launch) {
    JAMBA_TRY(jamba_silu_mul_bwd_check(p));
    const int64_t M = p->gate_up.shape[0], F = p->gate_up.shape[1] / 2, lg = p->gate_up.stride[0];
    const int64_t ld = p->dout.stride[0];
    if (M == 0 || F == 0) return JAMBA_OK;
    JAMBA_DEVICE_GUARD(launch);
    cudaStream_t stream = (cudaStream_t)launch.stream;
    const int64_t es = jamba_dtype_size(p->gate_up.dtype), V = 16 / es;
    const bool vec = F % V == 0 && jamba_aligned16(p->gate_up.data) && jamba_aligned16(p->dout.data) &&
                     jamba_aligned16(p->dgate_up.data) && (M <= 1 || ((lg * es) % 16 == 0 && (ld * es) % 16 == 0));
    const int64_t cols = vec ? F / V : F;
    const int64_t pairs = jamba_ceil_div(M, GLUE_ROWS);
    if (jamba_ceil_div(cols, GLUE_THREADS) > 65535)
        return jamba_set_error(JAMBA_ERR_ARG, "jamba.silu_mul_bwd: F must be below %lld, got %lld",
                               (long long)(65535LL * GLUE_THREADS), (long long)F);
    const dim3 grid((unsigned)jamba_ceil_div(cols, GLUE_THREADS), (unsigned)(pairs < 65535 ? pairs : 65535));
    jamba_status s = JAMBA_ERR_DTYPE;
    JAMBA_DISPATCH_FLOAT(p->gate_up.dtype, T, {
        if (vec) jamba_kernel_launch(silu_mul_bwd_kernel<T, true>, grid, GLUE_THREADS, 0, stream,
            (T *)p->dgate_up.data, (const T *)p->gate_up.data, (const T *)p->dout.data, M, F, lg, ld);
        else jamba_kernel_launch(silu_mul_bwd_kernel<T, false>, grid, GLUE_THREADS, 0, stream,
            (T *)p->dgate_up.data, (const T *)p->gate_up.data, (const T *)p->dout.data, M, F, lg, ld);
        s = JAMBA_OK;
    });
    JAMBA_TRY(s);
    JAMBA_LAUNCH_CHECK("jamba.silu_mul_bwd: kernel launch", stream);
    return JAMBA_OK;
}

/* moe_slot_pos_kernel: pos[sorted[q]] = q for q < slots (sorted is a permutation: each pos written once) */
__global__ void __launch_bounds__(GLUE_THREADS) moe_slot_pos_kernel(int32_t *pos, const int32_t *sorted, int64_t slots) {
    jamba_pdl_begin();
    const int64_t q = (int64_t)blockIdx.x * GLUE_THREADS + threadIdx.x;
    if (q < slots) {
        const int32_t s = sorted[q];
        if (s >= 0 && s < slots) pos[s] = (int32_t)q;
    }
}

/* moe_combine_sorted_kernel<T, VEC>
 *   y (T*K, H) T contiguous, rows in sorted order; pos (T*K,) i32 (row of slot s in y); weights (T, K) f32;
 *   ids (T, K) i32; out (T, H) T contiguous. grid.x over the H / V vectors of a row, grid.y over tokens
 *   (grid-stride). out[t] = round(o_0 + o_1 ...), o_j = moe_scaled(y[pos[t*K+j]], w[t*K+j]); NaN rows for
 *   tokens with an id outside [0, E) (or a position outside y: sorted_slots was not a permutation). */
template <typename T, bool VEC>
__global__ void __launch_bounds__(GLUE_THREADS)
moe_combine_sorted_kernel(T *out, const T *y, const int32_t *pos, const float *weights, const int32_t *ids,
                          int64_t T_, int64_t H, int K, int E) {
    jamba_pdl_begin();
    constexpr int V = VEC ? 16 / (int)sizeof(T) : 1;
    const int64_t c = (int64_t)blockIdx.x * GLUE_THREADS + threadIdx.x;
    if (c * V >= H) return;
    for (int64_t t = blockIdx.y; t < T_; t += gridDim.y) {
        float acc[V];
        bool bad = false;
        for (int j = 0; j < K; j++) {
            const int64_t s = t * K + j;
            const int32_t ps = pos[s];
            const bool ok = ps >= 0 && ps < T_ * K; /* memory safety for a sorted_slots that is not a permutation */
            bad |= moe_key(ids[s], E) == E || !ok;
            const float w = weights[s];
            const T *row = y + (int64_t)(ok ? ps : 0) * H + c * V;
            float v[V];
            if (VEC) {
                jamba_vec16<T> r;
                r.raw = *reinterpret_cast<const uint4 *>(row);
#pragma unroll
                for (int q = 0; q < V; q++) v[q] = jamba_ld<T>(r.v[q]);
            } else {
                v[0] = jamba_ld<T>(row[0]);
            }
#pragma unroll
            for (int q = 0; q < V; q++) {
                const float o = moe_scaled<T>(v[q], w);
                acc[q] = j ? jamba_round<T>(acc[q] + o) : o;
            }
        }
        T *o = out + t * H + c * V;
        if (VEC) {
            jamba_vec16<T> r;
#pragma unroll
            for (int q = 0; q < V; q++) r.v[q] = jamba_st<T>(bad ? __int_as_float(0x7fc00000) : acc[q]);
            *reinterpret_cast<uint4 *>(o) = r.raw;
        } else {
            o[0] = jamba_st<T>(bad ? __int_as_float(0x7fc00000) : acc[0]);
        }
    }
}

extern "C" jamba_status jamba_moe_combine_cuda(const jamba_moe_combine_params *p, jamba_launch launch) {
    JAMBA_TRY(jamba_moe_combine_check(p));
    const int64_t T_ = p->expert_ids.shape[0], K = p->expert_ids.shape[1], H = p->y.shape[1], slots = T_ * K;
    if (T_ == 0) return JAMBA_OK;
    JAMBA_DEVICE_GUARD(launch);
    cudaStream_t stream = (cudaStream_t)launch.stream;
    jamba_kernel_launch(moe_slot_pos_kernel, (unsigned)jamba_ceil_div(slots, GLUE_THREADS), GLUE_THREADS, 0, stream,
        (int32_t *)p->slot_pos.data, (const int32_t *)p->sorted_slots.data, slots);
    JAMBA_LAUNCH_CHECK("jamba.moe_combine: slot position kernel launch", stream);
    if (H == 0) return JAMBA_OK;
    const int64_t es = jamba_dtype_size(p->y.dtype), V = 16 / es;
    const bool vec = H % V == 0 && jamba_aligned16(p->y.data) && jamba_aligned16(p->out.data);
    const int64_t cols = vec ? H / V : H;
    if (jamba_ceil_div(cols, GLUE_THREADS) > 65535)
        return jamba_set_error(JAMBA_ERR_ARG, "jamba.moe_combine: H must be below %lld, got %lld",
                               (long long)(65535LL * GLUE_THREADS), (long long)H);
    const dim3 grid((unsigned)jamba_ceil_div(cols, GLUE_THREADS), (unsigned)(T_ < 65535 ? T_ : 65535));
    const int E = (int)p->num_experts;
    jamba_status s = JAMBA_ERR_DTYPE;
    JAMBA_DISPATCH_FLOAT(p->y.dtype, T, {
        if (vec)
            jamba_kernel_launch(moe_combine_sorted_kernel<T, true>, grid, GLUE_THREADS, 0, stream, (T *)p->out.data,
                (const T *)p->y.data, (const int32_t *)p->slot_pos.data, (const float *)p->weights.data,
                (const int32_t *)p->expert_ids.data, T_, H, (int)K, E);
        else
            jamba_kernel_launch(moe_combine_sorted_kernel<T, false>, grid, GLUE_THREADS, 0, stream, (T *)p->out.data,
                (const T *)p->y.data, (const int32_t *)p->slot_pos.data, (const float *)p->weights.data,
                (const int32_t *)p->expert_ids.data, T_, H, (int)K, E);
        s = JAMBA_OK;
    });
    JAMBA_TRY(s);
    JAMBA_LAUNCH_CHECK("jamba.moe_combine: kernel launch", stream);
    return JAMBA_OK;
}

/* moe_grad_rows_kernel<T, VEC>
 *   go (T, H) T, unit stride along H, row stride ld; weights (T*K,) f32; sorted (S = T*K,) i32; y (S, H) T
 *   contiguous or NULL; dys (S, H) T contiguous; dws (S,) f32 or NULL.
 *   A warp per sorted position p (GLUE_THREADS / 32 per block, grid-stride): s = sorted[p], t = s / K; the lanes
 *   stride over the row's H / V vectors (VEC: V = 16 / sizeof(T), else 1): dys[p] = moe_scaled(go[t], w[s]) and the
 *   fp32 dot of go[t] and y[p], summed over the warp (butterfly) into dws[p]. s outside [0, S): NaN row and dws. */
template <typename T, bool VEC>
__global__ void __launch_bounds__(GLUE_THREADS)
moe_grad_rows_kernel(T *dys, float *dws, const T *go, const T *y, const float *weights, const int32_t *sorted,
                     int64_t S, int64_t H, int64_t ld, int K) {
    jamba_pdl_begin();
    constexpr int V = VEC ? 16 / (int)sizeof(T) : 1;
    constexpr int WARPS = GLUE_THREADS / 32;
    const int lane = threadIdx.x & 31;
    const int64_t nv = H / V;
    for (int64_t p = (int64_t)blockIdx.x * WARPS + (threadIdx.x >> 5); p < S; p += (int64_t)gridDim.x * WARPS) {
        const int32_t s = sorted[p];
        const bool ok = s >= 0 && s < S;
        const float w = ok ? weights[s] : __int_as_float(0x7fc00000);
        const T *g = go + (int64_t)(ok ? s / K : 0) * ld;
        const T *yr = y ? y + p * H : nullptr;
        T *o = dys + p * H;
        float dot = 0.f;
        for (int64_t i = lane; i < nv; i += 32) {
            float gv[V], yv[V], ov[V];
            if (VEC) {
                jamba_w16<T>::ld(*reinterpret_cast<const uint4 *>(g + i * V), gv);
                if (yr) jamba_w16<T>::ld(*reinterpret_cast<const uint4 *>(yr + i * V), yv);
            } else {
                gv[0] = jamba_ld<T>(g[i]);
                if (yr) yv[0] = jamba_ld<T>(yr[i]);
            }
#pragma unroll
            for (int q = 0; q < V; q++) {
                ov[q] = moe_scaled<T>(gv[q], w);
                if (yr) dot = fmaf(gv[q], yv[q], dot);
            }
            if (VEC) *reinterpret_cast<uint4 *>(o + i * V) = jamba_w16<T>::st(ov);
            else o[i] = jamba_st<T>(ov[0]);
        }
        if (dws) {
            dot = jamba_warp_sum(dot);
            if (lane == 0) dws[p] = ok ? dot : __int_as_float(0x7fc00000);
        }
    }
}

extern "C" jamba_status jamba_moe_grad_rows_cuda(const jamba_moe_grad_rows_params *p, jamba_launch launch) {
    JAMBA_TRY(jamba_moe_grad_rows_check(p));
    const int64_t T_ = p->go.shape[0], H = p->go.shape[1], K = p->weights.shape[1], S = T_ * K, ld = p->go.stride[0];
    if (S == 0) return JAMBA_OK;
    JAMBA_DEVICE_GUARD(launch);
    cudaStream_t stream = (cudaStream_t)launch.stream;
    const int64_t es = jamba_dtype_size(p->go.dtype), V = 16 / es;
    const bool vec = H % V == 0 && jamba_aligned16(p->go.data) && jamba_aligned16(p->dys.data) &&
                     (p->y.data == NULL || jamba_aligned16(p->y.data)) && (T_ <= 1 || (ld * es) % 16 == 0);
    const int64_t blocks = jamba_ceil_div(S, GLUE_THREADS / 32);
    const unsigned grid = (unsigned)(blocks < (1 << 30) ? blocks : (1 << 30));
    jamba_status s = JAMBA_ERR_DTYPE;
    JAMBA_DISPATCH_FLOAT(p->go.dtype, T, {
        if (vec) jamba_kernel_launch(moe_grad_rows_kernel<T, true>, grid, GLUE_THREADS, 0, stream, (T *)p->dys.data,
            (float *)p->dws.data, (const T *)p->go.data, (const T *)p->y.data, (const float *)p->weights.data,
            (const int32_t *)p->sorted_slots.data, S, H, ld, (int)K);
        else jamba_kernel_launch(moe_grad_rows_kernel<T, false>, grid, GLUE_THREADS, 0, stream, (T *)p->dys.data,
            (float *)p->dws.data, (const T *)p->go.data, (const T *)p->y.data, (const float *)p->weights.data,
            (const int32_t *)p->sorted_slots.data, S, H, ld, (int)K);
        s = JAMBA_OK;
    });
    JAMBA_TRY(s);
    JAMBA_LAUNCH_CHECK("jamba.moe_grad_rows: kernel launch", stream);
    return JAMBA_OK;
}
