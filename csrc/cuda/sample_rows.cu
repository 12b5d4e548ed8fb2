/* sample_rows.cu -- one token per row of logits, each row with its own sampling settings, on CUDA (a server's
 * decode step: the rows are requests with their own temperature, top_k, top_p, min_p and penalties).
 *
 * Exports: jamba_sample_rows_cuda (checks and math: csrc/cpu/sample_rows.c, csrc/jamba.h).
 * Layout: logits x (R, V) T in {f32, f16, bf16}, unit stride along V, row stride ld (elements); params (R, 7) f32;
 *   seen (R, V) u8 and counts (R, V) i32 contiguous, each optional (NULL); tokens (R,) i64, tau (R,) f32.
 *   ws (f32, at least jamba_sample_rows_ws_elems(R, V) = 2 R V): a row's score keys (u32) and its exp(s - m).
 * Work split: one block of SR_THREADS threads per row (grid-stride over rows past SR_MAX_GRID). Pass 1 reads logits,
 *   seen and counts once, finds the max (greedy rows stop there) and writes a sampled row's score keys to ws; the
 *   later passes read ws (L2-resident for a decode batch): 4 for top_k, 1 for the top_p mass Z (it writes
 *   exp(s - m) to ws), 4 for top_p, 1 for the draw (Philox only for the kept columns). The radix passes build a 256-bin histogram in shared memory (counts, or masses in
 *   fixed point -- integer sums, so the selection does not depend on the order of the additions): the lanes of a
 *   warp with one digit sum first (match / redux), each pair of warps adds into its own copy of the histogram
 *   (SR_COPIES), the copies are summed, and warp 0 finds the digit (a prefix sum over the bins, 8 a lane). The draw is a Gumbel-max over the kept columns
 *   (Philox uniforms: the CPU's, column for column), reduced as (value, column) pairs with the first column winning
 *   ties. No host synchronisation; deterministic for a seed and offset.
 */
#include "common.cuh"

#include <math.h>

#define SR_THREADS 1024
#define SR_WARPS (SR_THREADS / 32)
#define SR_COPIES 16               /* histogram copies in shared memory: warps w and w + 16 share copy w % 16 */
#define SR_MAX_GRID (1 << 30)

struct sr_row {
    float rep, pres, freq;
    const uint8_t *seen;
    const int32_t *cnt;
};

/* the penalised logit of column v */
template <typename T>
__device__ __forceinline__ float sr_x(const T *row, const sr_row &q, int64_t v) {
    float x = jamba_ld<T>(row[v]);
    if (q.seen != nullptr && q.seen[v]) x = x < 0.f ? __fmul_rn(x, q.rep) : __fdiv_rn(x, q.rep);
    if (q.cnt != nullptr) {
        const int32_t c = q.cnt[v];
        x = __fsub_rn(x, __fmul_rn(q.freq, (float)c));
        x = __fsub_rn(x, c > 0 ? q.pres : 0.f);
    }
    return x;
}

/* (value, column) pairs: the larger value wins, the smaller column on a tie; block-wide, result in every thread */
__device__ __forceinline__ void sr_better(float &bv, int64_t &bi, float v, int64_t i) {
    if (i >= 0 && (bi < 0 || v > bv || (v == bv && i < bi))) {
        bv = v;
        bi = i;
    }
}

__device__ void sr_argmax(float &bv, int64_t &bi, float *sv, int64_t *si) {
    for (int o = 16; o > 0; o >>= 1) {
        const float v = __shfl_xor_sync(0xffffffffu, bv, o);
        const int64_t i = __shfl_xor_sync(0xffffffffu, bi, o);
        sr_better(bv, bi, v, i);
    }
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    __syncthreads();                                   /* (sv / si may still be read from the last call) */
    if (lane == 0) {
        sv[warp] = bv;
        si[warp] = bi;
    }
    __syncthreads();
    bv = sv[0];
    bi = si[0];
    for (int w = 1; w < SR_WARPS; w++) sr_better(bv, bi, sv[w], si[w]);
}

__device__ float sr_min(float v, float *sv) {
    for (int o = 16; o > 0; o >>= 1) v = fminf(v, __shfl_xor_sync(0xffffffffu, v, o));
    __syncthreads();
    if ((threadIdx.x & 31) == 0) sv[threadIdx.x >> 5] = v;
    __syncthreads();
    v = sv[0];
    for (int w = 1; w < SR_WARPS; w++) v = fminf(v, sv[w]);
    return v;
}

/* hist[digit] += w for the lanes of the warp whose digit is < 256 (the others pass 256): the lanes of one digit
 * (__match_any_sync) sum their w (__reduce_add_sync on the low 24 and the high bits: w < 2^41) and the first of them
 * adds it to the warp's copy of the histogram. A row's scores crowd into a few bins of the first radix pass: one
 * shared-memory atomic per lane on one histogram serialised ~0.7 ms a row at V = 65536 (bench_sampling at bb68f11),
 * and cooperative groups' labeled_partition + reduce still cost ~0.5 ms (9b35e52). Every lane of the warp must call
 * it (redux.sync: sm_80+; one atomic a lane below). */
__device__ __forceinline__ void sr_hist_add(unsigned long long *hist, unsigned digit, unsigned long long w) {
#if __CUDA_ARCH__ >= 800
    const unsigned peers = __match_any_sync(0xffffffffu, digit);
    const unsigned lo = __reduce_add_sync(peers, (unsigned)(w & 0xFFFFFFull));
    const unsigned hi = __reduce_add_sync(peers, (unsigned)(w >> 24));
    if ((threadIdx.x & 31) == (unsigned)(__ffs(peers) - 1) && digit < 256u)
        atomicAdd(&hist[digit], ((unsigned long long)hi << 24) + lo);
#else  /* (JAMBA_EXT_ARCHS below 80: one atomic a lane) */
    if (digit < 256u) atomicAdd(&hist[digit], w);
#endif
}

/* every copy of the histogram zeroed (then a __syncthreads) */
__device__ __forceinline__ void sr_hist_zero(unsigned long long (*copies)[256]) {
    for (int i = threadIdx.x; i < SR_COPIES * 256; i += SR_THREADS) copies[i >> 8][i & 255] = 0ull;
}

/* hist[b] = the sum of the copies' bin b (after a __syncthreads; then a __syncthreads) */
__device__ __forceinline__ void sr_hist_merge(unsigned long long (*copies)[256], unsigned long long *hist) {
    for (int b = threadIdx.x; b < 256; b += SR_THREADS) {
        unsigned long long t = 0ull;
        for (int c = 0; c < SR_COPIES; c++) t += copies[c][b];
        hist[b] = t;
    }
}

/* Warp 0: over the bins in scan order (descending: 255 first), the first bin j where before + h[j] > target, and
 * the sum of the bins scanned before it; written to *digit and *before (read after the caller's __syncthreads). */
__device__ void sr_find(const unsigned long long *h, bool descending, unsigned long long target, int *digit,
                        unsigned long long *before) {
    if (threadIdx.x >= 32) return;
    const int lane = threadIdx.x;
    unsigned long long mine = 0;
    for (int j = 0; j < 8; j++) mine += h[descending ? 255 - (lane * 8 + j) : lane * 8 + j];
    unsigned long long incl = mine;                   /* inclusive prefix sum over the lanes */
    for (int o = 1; o < 32; o <<= 1) {
        const unsigned long long t = __shfl_up_sync(0xffffffffu, incl, o);
        if (lane >= o) incl += t;
    }
    const unsigned hit = __ballot_sync(0xffffffffu, incl > target);
    const int first = hit ? __ffs(hit) - 1 : 31;      /* (none: the last bin; cannot happen for a valid target) */
    if (lane == first) {
        unsigned long long acc = incl - mine;
        int j = 0;
        for (; j < 7; j++) {
            const int b = descending ? 255 - (lane * 8 + j) : lane * 8 + j;
            if (acc + h[b] > target) break;
            acc += h[b];
        }
        *digit = descending ? 255 - (lane * 8 + j) : lane * 8 + j;
        *before = acc;
    }
}

/* the float of an order-preserving key (jamba_f32_key's inverse) */
__device__ __forceinline__ float sr_key_f32(uint32_t key) {
    return __uint_as_float((key & 0x80000000u) ? (key ^ 0x80000000u) : ~key);
}

template <typename T>
__global__ void __launch_bounds__(SR_THREADS) sr_kernel(int64_t *tokens, float *tau, const T *x, int64_t ld,
                                                        const float *params, const uint8_t *seen, const int32_t *counts,
                                                        uint32_t *ws, int64_t R, int64_t V, uint64_t seed,
                                                        uint64_t offset) {
    jamba_pdl_begin();
    __shared__ unsigned long long hist[256], copies[SR_COPIES][256];
    __shared__ float sv[SR_WARPS];
    __shared__ int64_t si[SR_WARPS];
    __shared__ int s_digit;
    __shared__ unsigned long long s_before, s_z;
    const int lane = threadIdx.x & 31;
    unsigned long long *mine = copies[(threadIdx.x >> 5) % SR_COPIES];
    for (int64_t r = blockIdx.x; r < R; r += gridDim.x) {
        const T *row = x + r * ld;
        const float *pr = params + r * 7;
        const float temp = pr[0], top_p = pr[2], min_p = pr[3];
        const int64_t k = (pr[1] >= 1.0f && pr[1] < (float)V) ? (int64_t)pr[1] : 0;
        uint32_t *wkey = ws + r * 2 * V;                       /* the scores' keys, then their e = exp(s - m) */
        float *we = reinterpret_cast<float *>(ws + r * 2 * V + V);
        sr_row q;
        q.rep = pr[4];
        q.pres = pr[5];
        q.freq = pr[6];
        q.seen = seen != nullptr ? seen + r * V : nullptr;
        q.cnt = counts != nullptr ? counts + r * V : nullptr;
        const bool sampled = temp > 0.f;
        /* pass 1: the max of the penalised logits (first column on ties); a sampled row's score keys to ws */
        float bv = -INFINITY;
        int64_t bi = -1;
        for (int64_t v = threadIdx.x; v < V; v += SR_THREADS) {
            const float xv = sr_x<T>(row, q, v);
            sr_better(bv, bi, xv, v);
            if (sampled) wkey[v] = jamba_f32_key(__fdiv_rn(xv, temp));
        }
        sr_argmax(bv, bi, sv, si);
        if (!sampled) {                               /* greedy */
            if (threadIdx.x == 0) {
                tokens[r] = bi < 0 ? 0 : bi;
                tau[r] = bv;
            }
            __syncthreads();
            continue;
        }
        const float m = __fdiv_rn(bv, temp);
        /* top_k: the key of the k-th largest score (4 radix passes, counts) */
        uint32_t kk = 0u;
        if (k) {
            unsigned long long need = (unsigned long long)k;
            for (int pass = 0; pass < 4; pass++) {
                const int shift = 24 - 8 * pass;
                const uint32_t hi = pass ? 0xFFFFFFFFu << (shift + 8) : 0u;
                sr_hist_zero(copies);
                __syncthreads();
                for (int64_t base = threadIdx.x - lane; base < V; base += SR_THREADS) {   /* (whole warps) */
                    const int64_t v = base + lane;
                    const uint32_t key = v < V ? wkey[v] : 0u;
                    const bool cand = v < V && (key & hi) == kk;
                    if (__any_sync(0xffffffffu, cand)) sr_hist_add(mine, cand ? (key >> shift) & 255u : 256u, 1ull);
                }
                __syncthreads();
                sr_hist_merge(copies, hist);
                __syncthreads();
                sr_find(hist, true, need - 1ull, &s_digit, &s_before);
                __syncthreads();
                need -= s_before;
                kk |= (uint32_t)s_digit << shift;
            }
        }
        /* top_p: e = exp(s - m) of the columns top_k keeps (to ws) and their mass Z, then the smallest key whose
         * mass at or below it exceeds floor((1 - top_p) Z) (4 radix passes, fixed-point masses) */
        uint32_t kp = 0u;
        if (top_p < 1.f) {
            unsigned long long z = 0ull;
            for (int64_t v = threadIdx.x; v < V; v += SR_THREADS) {
                const uint32_t key = wkey[v];
                const float e = key >= kk ? expf(sr_key_f32(key) - m) : 0.f;
                we[v] = e;
                z += jamba_mass_fixed(e);
            }
            __syncthreads();                          /* (every thread has read the top_k passes' s_before) */
            if (threadIdx.x == 0) s_z = 0ull;
            __syncthreads();
            atomicAdd(&s_z, z);
            __syncthreads();
            z = s_z;
            const unsigned long long target = (unsigned long long)((1.0 - (double)top_p) * (double)z);
            unsigned long long below = 0ull;
            for (int pass = 0; pass < 4; pass++) {
                const int shift = 24 - 8 * pass;
                const uint32_t hi = pass ? 0xFFFFFFFFu << (shift + 8) : 0u;
                __syncthreads();
                sr_hist_zero(copies);
                __syncthreads();
                for (int64_t base = threadIdx.x - lane; base < V; base += SR_THREADS) {   /* (whole warps) */
                    const int64_t v = base + lane;
                    const uint32_t key = v < V ? wkey[v] : 0u;
                    const bool cand = v < V && key >= kk && (key & hi) == kp;
                    if (__any_sync(0xffffffffu, cand))
                        sr_hist_add(mine, cand ? (key >> shift) & 255u : 256u, cand ? jamba_mass_fixed(we[v]) : 0ull);
                }
                __syncthreads();
                sr_hist_merge(copies, hist);
                __syncthreads();
                sr_find(hist, false, target - below, &s_digit, &s_before);
                __syncthreads();
                below += s_before;
                kp |= (uint32_t)s_digit << shift;
            }
        }
        /* the draw: Gumbel-max over the kept columns; tau = the smallest kept score */
        const uint32_t kmin = kk > kp ? kk : kp;
        const uint32_t k0 = (uint32_t)seed, k1 = (uint32_t)(seed >> 32);
        const uint32_t o0 = (uint32_t)offset, o1 = (uint32_t)(offset >> 32);
        float gv = -INFINITY, smin = INFINITY;
        int64_t gi = -1;
        for (int64_t v = threadIdx.x; v < V; v += SR_THREADS) {
            const uint32_t key = wkey[v];
            if (key < kmin) continue;
            const float s = sr_key_f32(key);
            if (min_p > 0.f && (top_p < 1.f ? we[v] : expf(s - m)) < min_p) continue;
            const float u = jamba_uniform24(jamba_philox_word((uint32_t)v, (uint32_t)r, o0, o1, k0, k1));
            sr_better(gv, gi, s - logf(-logf(u)), v);
            smin = fminf(smin, s);
        }
        sr_argmax(gv, gi, sv, si);
        smin = sr_min(smin, sv);
        if (threadIdx.x == 0) {
            tokens[r] = gi < 0 ? (bi < 0 ? 0 : bi) : gi;   /* (gi < 0: a NaN row, nothing kept) */
            tau[r] = gi < 0 ? m : smin;
        }
        __syncthreads();
    }
}

extern "C" jamba_status jamba_sample_rows_cuda(const jamba_sample_rows_params *p, jamba_launch launch) {
    JAMBA_TRY(jamba_sample_rows_check(p));
    const int64_t R = p->logits.shape[0], V = p->logits.shape[1], ld = p->logits.stride[0];
    if (R == 0) return JAMBA_OK;
    JAMBA_TRY(jamba_check_workspace("jamba.sample_rows", &p->ws, jamba_sample_rows_ws_elems(R, V)));
    if (jamba_tensors_overlap(&p->ws, &p->logits) || jamba_tensors_overlap(&p->ws, &p->tokens) ||
        jamba_tensors_overlap(&p->ws, &p->tau) || jamba_tensors_overlap(&p->ws, &p->params) ||
        jamba_tensors_overlap(&p->ws, &p->seen) || jamba_tensors_overlap(&p->ws, &p->counts))
        return jamba_set_error(JAMBA_ERR_ARG, "jamba.sample_rows: ws must not overlap another argument in memory");
    JAMBA_DEVICE_GUARD(launch);
    cudaStream_t stream = (cudaStream_t)launch.stream;
    const dim3 grid((unsigned)(R < SR_MAX_GRID ? R : SR_MAX_GRID));
    jamba_status s = JAMBA_ERR_DTYPE;
    JAMBA_DISPATCH_FLOAT(p->logits.dtype, T, {
        jamba_kernel_launch(sr_kernel<T>, grid, SR_THREADS, 0, stream, (int64_t *)p->tokens.data,
                            (float *)p->tau.data, (const T *)p->logits.data, ld, (const float *)p->params.data,
                            (const uint8_t *)p->seen.data, (const int32_t *)p->counts.data, (uint32_t *)p->ws.data,
                            R, V, p->seed, p->offset);
        s = JAMBA_OK;
    });
    JAMBA_TRY(s);
    JAMBA_LAUNCH_CHECK("jamba.sample_rows: kernel launch", stream);
    return JAMBA_OK;
}
