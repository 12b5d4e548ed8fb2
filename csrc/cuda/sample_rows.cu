/* sample_rows.cu -- one token per row of logits, each row with its own sampling settings, on CUDA (a server's
 * decode step: the rows are requests with their own temperature, top_k, top_p, min_p and penalties).
 *
 * Exports: jamba_sample_rows_cuda (checks and math: csrc/cpu/sample_rows.c, csrc/jamba.h).
 * Layout: logits x (R, V) T in {f32, f16, bf16}, unit stride along V, row stride ld (elements); params (R, 7) f32;
 *   seen (R, V) u8 and counts (R, V) i32 contiguous, each optional (NULL); tokens (R,) i64, tau (R,) f32; rng (R, 2)
 *   i64 contiguous, optional: each row's own Philox key and counter (csrc/jamba.h).
 *   ws (f32, at least jamba_sample_rows_ws_elems(R, V) = R V): row r's score keys (u32) at ws + r V (both paths).
 * Passes over a row: pass 1 reads logits, seen and counts once, finds the max (greedy rows stop there), writes a
 *   sampled row's score keys to ws and counts a top_k row's top digits (top_k's first radix histogram, combined with
 *   the max); the later passes read ws (L2-resident for a decode batch): 3 more for top_k, 4 for
 *   top_p (the first sums the mass Z with its histogram; a candidate's e = exp(s - m) is computed from its key where
 *   a pass needs it: the same bits each time, and no round trip to memory), 1 for the draw (Philox only for the kept
 *   columns). The radix passes build a 256-bin histogram in shared memory (counts, or masses in fixed
 *   point -- integer sums, so the selection does not depend on the order of the additions): the lanes of a warp with
 *   one digit sum first (match / popc or redux), each warp adds into its own copy of the histogram (SR_COPIES, in
 *   dynamic shared memory: no atomics), the copies are summed, and warp 0 finds the digit (a prefix sum over the
 *   bins, 8 a lane). The draw is a Gumbel-max over the kept columns (Philox uniforms: the CPU's, column for column),
 *   reduced as (value, column) pairs with the first column winning ties; a column whose score is too far below the
 *   argmax column's draw value to reach it skips its Philox (sr_draw_floor: the same token). No host
 *   synchronisation; deterministic for a seed and offset.
 * Two kernels, the same tokens and tau to the bit (tests/test_sample_rows.py compares them):
 *   sr_kernel (any GPU): one block of SR_THREADS threads per row (grid-stride over rows past SR_MAX_GRID); thread t
 *     takes columns t, t + SR_THREADS, ...; a radix pass over V = 65536 costs ~13-22 us on one SM of an H200.
 *   sr_cluster_kernel<T, C> (sm_90+, C = 8, 4 or 2): a cluster of C CTAs of SR_THREADS threads per row (a stride
 *     loop over rows past SR_MAX_CLUSTERS clusters). CTA c owns the columns [c w, (c + 1) w) clipped to V,
 *     w = ceil(V / C) rounded up to a multiple of SR_THREADS (small V: the last CTAs own nothing), and its thread t
 *     takes the columns of the one-block kernel's thread t that lie there (so that even a fold with NaNs, whose max
 *     depends on which thread held which column, gives sr_kernel's bits: sr_cluster_argmax). Each pass builds the
 *     CTA's result over its slice as sr_kernel does over the row, then the cluster combines them through distributed
 *     shared memory (sr_part; see sr_cluster_kernel): every CTA reads all C partials in rank order and reduces them
 *     identically. SR_THREADS (1024) in both: that thread mapping, and sr_kernel's block helpers as they are.
 * Which kernel, and which C (sr_cluster_size; env JAMBA_EXT_SAMPLE_ROWS_CLUSTER overrides the choice): at 64
 *   registers a thread, a CTA of 1024 threads fills an SM's register file (one CTA an SM, in either kernel), and the
 *   C CTAs of a cluster must be co-scheduled within one GPC, so an H200 (132 SMs) runs only about 13-14 clusters of 8
 *   at once (more of 4 or 2: cudaOccupancyMaxActiveClusters). The rows past that wait for a second wave, and so on,
 *   each wave costing about what a one-row call does. Measured on an H200 (CUDA-graph replays, bf16, V = 65536;
 *   one-block -> clusters of 8, session 52's kernels): top_p 0.95 402 -> 109 us at R = 1, 407 -> 210 us at R = 16
 *   (2 waves), 417 -> 516 us at R = 64 (about 5 waves: slower than one block). So from V = SR_CLUSTER_MIN_V the
 *   default takes the largest C in (8, 4, 2) whose clusters hold all R rows in one wave (R <= cudaOccupancyMaxActive-
 *   Clusters at that C, asked once per device, dtype and C): a smaller C gives a row fewer SMs, but a second wave would
 *   cost a whole row's time; and sr_kernel where even C = 2 needs two waves. Session 54's kernels, the default ->
 *   (one-block) at R = 1 / 16 / 64: top_p 0.95 40 / 61 / 102 us (171 / 173 / 175), top_k 50 25.5 / 30 / 44 us
 *   (67 / 67 / 68), greedy 6.3 / 8.2 / 11.9 us (docs/PERF_NOTES.md; s54_full_67a0b78.log, sr3_round_a20d592.log).
 * NaN (as the CPU op): pass 1 folds a NaN penalised logit as -inf (one select a column), so it is never the argmax
 *   nor drawn while a column is finite (before, a NaN at a thread's first column stuck as its max, and a NaN's key
 *   was the largest: top_k kept it); a row whose scores are all -inf (NaN / -inf logits only) gives bi, column 0
 *   there, and tau -inf, greedy or sampled. The NaN paths of the folds below (sr_better, sr_cluster_argmax's exact
 *   path) stay for NaN scores that settings unchecked on a GPU can still make (x / temperature with an infinite one).
 */
#include "common.cuh"

#include <cooperative_groups.h>
#include <math.h>

#include <type_traits>

#define SR_THREADS 1024
#define SR_WARPS (SR_THREADS / 32)
#define SR_COPIES SR_WARPS         /* histogram copies in shared memory: warp w's own copy w (no atomics) */
#define SR_SMEM (SR_COPIES * 256 * 8) /* dynamic shared memory of both kernels: the copies (64 KB) */
#define SR_MAX_GRID (1 << 30)
#define SR_BATCH 4                 /* a lane's loads issued ahead of their use in each pass over the columns */
#define SR_CLUSTER 8               /* the largest cluster size C (the portable maximum): env "1", the first tried */
#define SR_CLUSTER_MIN_V 4096      /* the default takes a cluster kernel from here: >= 4 CTAs with columns at C = 8 */
#define SR_MAX_CLUSTERS 128        /* clusters in sr_cluster_kernel's grid (more rows: a stride loop) */
#define SR_MAX_DEVICES 64

struct sr_row {
    float rep, pres, freq;
    const uint8_t *seen;
    const int32_t *cnt;
};

/* the penalised logit of column v, x its logit */
__device__ __forceinline__ float sr_pen(float x, const sr_row &q, int64_t v) {
    if (q.seen != nullptr && q.seen[v]) x = x < 0.f ? __fmul_rn(x, q.rep) : __fdiv_rn(x, q.rep);
    if (q.cnt != nullptr) {
        const int32_t c = q.cnt[v];
        x = __fsub_rn(x, __fmul_rn(q.freq, (float)c));
        x = __fsub_rn(x, c > 0 ? q.pres : 0.f);
    }
    return x;
}

/* (value, column) pairs: the larger value wins, the smaller column on a tie (i < 0: none) */
__device__ __forceinline__ void sr_better(float &bv, int64_t &bi, float v, int64_t i) {
    if (i >= 0 && (bi < 0 || v > bv || (v == bv && i < bi))) {
        bv = v;
        bi = i;
    }
}

/* Block-wide reductions, the result in every thread: each warp's butterfly (lane 0's result), then warp 0's over the
 * warps' results (sv / si: SR_WARPS + 1 slots, the last the result). sr_better is a total order without NaNs; a NaN
 * that a fold meets first sticks, so with NaNs the result is that of this order -- sr_kernel's, which the cluster
 * kernel's exact path rebuilds. fminf ignores NaNs and orders -0 below +0 (PTX min): any order. Two barriers each:
 * the slots a call writes first (sv[w]) were last read before the previous call's second barrier, and the result
 * slot is written after this call's first one, which every reader of the last result has passed. */
__device__ void sr_argmax(float &bv, int64_t &bi, float *sv, int64_t *si) {
    for (int o = 16; o > 0; o >>= 1) {
        const float v = __shfl_xor_sync(0xffffffffu, bv, o);
        const int64_t i = __shfl_xor_sync(0xffffffffu, bi, o);
        sr_better(bv, bi, v, i);
    }
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (lane == 0) {
        sv[warp] = bv;
        si[warp] = bi;
    }
    __syncthreads();
    if (warp == 0) {
        bv = sv[lane];
        bi = si[lane];
        for (int o = 16; o > 0; o >>= 1) {
            const float v = __shfl_xor_sync(0xffffffffu, bv, o);
            const int64_t i = __shfl_xor_sync(0xffffffffu, bi, o);
            sr_better(bv, bi, v, i);
        }
        if (lane == 0) {
            sv[SR_WARPS] = bv;
            si[SR_WARPS] = bi;
        }
    }
    __syncthreads();
    bv = sv[SR_WARPS];
    bi = si[SR_WARPS];
}

__device__ float sr_min(float v, float *sv) {
    for (int o = 16; o > 0; o >>= 1) v = fminf(v, __shfl_xor_sync(0xffffffffu, v, o));
    if ((threadIdx.x & 31) == 0) sv[threadIdx.x >> 5] = v;
    __syncthreads();
    if (threadIdx.x < 32) {
        v = sv[threadIdx.x];
        for (int o = 16; o > 0; o >>= 1) v = fminf(v, __shfl_xor_sync(0xffffffffu, v, o));
        if (threadIdx.x == 0) sv[SR_WARPS] = v;
    }
    __syncthreads();
    return sv[SR_WARPS];
}

/* mine[digit] += w for the lanes of the warp whose digit is < 256 (the others pass 256), mine the warp's own copy of
 * the histogram: the lanes of one digit (__match_any_sync) sum their w -- COUNT: w = 1 a lane, the sum the group's
 * popcount; else __reduce_add_sync on the low 24 and the high bits (w < 2^41), in the groups of two or more lanes
 * only (the reductions run once a group: a later pass's sparse candidates, each alone with its digit, skip them) --
 * and the first of them adds it with a plain read-modify-write (the groups' digits differ, and no other warp writes
 * this copy; a __syncwarp then orders it before the next call's reads). A row's scores crowd into a few bins of the
 * first radix pass: one shared-memory atomic per lane on one histogram serialised ~0.7 ms a row at
 * V = 65536 (bench_sampling at bb68f11), cooperative groups' labeled_partition + reduce still cost ~0.5 ms (9b35e52),
 * and 64-bit shared atomics on copies shared by two warps compile to compare-and-swap loops (session 53's Nsight
 * Compute: the largest stall). Every lane of the warp must call it (match / redux.sync: sm_80+; one atomic a lane
 * below). */
template <bool COUNT>
__device__ __forceinline__ void sr_hist_add(unsigned long long *mine, unsigned digit, unsigned long long w) {
#if __CUDA_ARCH__ >= 800
    const unsigned peers = __match_any_sync(0xffffffffu, digit);
    unsigned long long sum = w;
    if (COUNT) {
        sum = (unsigned long long)__popc(peers);
    } else if (digit < 256u && (peers & (peers - 1u)) != 0u) {   /* (a lane alone with its digit adds its own w) */
        const unsigned lo = __reduce_add_sync(peers, (unsigned)(w & 0xFFFFFFull));
        const unsigned hi = __reduce_add_sync(peers, (unsigned)(w >> 24));
        sum = ((unsigned long long)hi << 24) + lo;
    }
    if ((threadIdx.x & 31) == (unsigned)(__ffs(peers) - 1) && digit < 256u) mine[digit] += sum;
    __syncwarp();
#else  /* (JAMBA_EXT_ARCHS below 80: one atomic a lane) */
    if (digit < 256u) atomicAdd(&mine[digit], COUNT ? 1ull : w);
#endif
}

/* the warp's own copy zeroed (every lane calls it; the copies were last read by the previous pass's merge, which ends
 * at a block barrier) */
__device__ __forceinline__ void sr_hist_zero(unsigned long long *mine) {
    for (int i = threadIdx.x & 31; i < 256; i += 32) mine[i] = 0ull;
    __syncwarp();
}

/* hist[b] = the sum of the copies' bin b (after a __syncthreads; then a __syncthreads) */
__device__ __forceinline__ void sr_hist_merge(unsigned long long (*copies)[256], unsigned long long *hist) {
    for (int b = threadIdx.x; b < 256; b += SR_THREADS) {
        unsigned long long t = 0ull;
        for (int c = 0; c < SR_COPIES; c++) t += copies[c][b];
        hist[b] = t;
    }
}

/* Warp 0: over the bins in scan order (descending: 255 first), the first bin j where before + h[j] > target (before:
 * the sum of the bins scanned before it), written to *digit, and target - before, the next pass's target, to *rem (both
 * read after the caller's __syncthreads). keep >= 0 (top_p's first pass, whose histogram holds all the kept mass Z):
 * the target is floor((1 - keep) Z) first. */
__device__ void sr_find(const unsigned long long *h, bool descending, unsigned long long target, double keep,
                        int *digit, unsigned long long *rem) {
    if (threadIdx.x >= 32) return;
    const int lane = threadIdx.x;
    unsigned long long mine = 0;
    for (int j = 0; j < 8; j++) mine += h[descending ? 255 - (lane * 8 + j) : lane * 8 + j];
    unsigned long long incl = mine;                   /* inclusive prefix sum over the lanes */
    for (int o = 1; o < 32; o <<= 1) {
        const unsigned long long t = __shfl_up_sync(0xffffffffu, incl, o);
        if (lane >= o) incl += t;
    }
    if (keep >= 0.0) target = (unsigned long long)((1.0 - keep) * (double)__shfl_sync(0xffffffffu, incl, 31));
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
        *rem = target - acc;
    }
}

/* column v's uniform of row r: Philox keyed by seed with counter (v, r, offset), or with rng (R, 2) by the row's own
 * key rng[r, 0] with counter (v, 0, rng[r, 1]) (csrc/jamba.h). The row's pair is loaded at each call (an L1 hit):
 * held in registers across the draw loop it made the cluster kernel spill. */
__device__ __forceinline__ float sr_uniform(const int64_t *rng, int64_t r, int64_t v, uint64_t seed, uint64_t offset) {
    const uint64_t key = rng != nullptr ? (uint64_t)__ldg(rng + 2 * r) : seed;
    const uint64_t ctr = rng != nullptr ? (uint64_t)__ldg(rng + 2 * r + 1) : offset;
    return jamba_uniform24(jamba_philox_word((uint32_t)v, rng != nullptr ? 0u : (uint32_t)r, (uint32_t)ctr,
                                             (uint32_t)(ctr >> 32), (uint32_t)key, (uint32_t)(key >> 32)));
}

/* The draw's bound: the Gumbel noise -logf(-logf(u)) is below SR_NOISE_MAX for every u that jamba_uniform24 gives
 * (at most 1 - 2^-24: 16.6355), so a kept column with fl(s + SR_NOISE_MAX) < L, L the draw value of the row's argmax
 * column (sr_draw_floor), cannot reach L: rounding is monotone, so its g = fl(s - log(-log(u))) <= fl(s + SR_NOISE_MAX)
 * < L. Such a column is folded as -inf, without its Philox and logs: still a non-NaN value below the row's best, so
 * every fold (the first column on ties, a NaN that sticks when it comes first) ends as it would with its true g. */
#define SR_NOISE_MAX 16.64f
/* L: the draw value of column bi, the row's argmax (pass 1), whose score is m -- the same expression and bits as the
 * draw loop gives it. bi is kept whenever it is a column: its key is the row's largest (top_k and top_p keep the
 * largest), its e is 1 (min_p <= 1). NaN (no column pruned) for an empty row (bi < 0) or a NaN max. */
__device__ __forceinline__ float sr_draw_floor(const int64_t *rng, int64_t r, int64_t bi, float m, uint64_t seed,
                                               uint64_t offset) {
    return bi < 0 ? NAN : m - logf(-logf(sr_uniform(rng, r, bi, seed, offset)));
}

/* the float of an order-preserving key (jamba_f32_key's inverse) */
__device__ __forceinline__ float sr_key_f32(uint32_t key) {
    return __uint_as_float((key & 0x80000000u) ? (key ^ 0x80000000u) : ~key);
}

/* Row r's settings (params (R, 7)), its penalties' inputs and its workspace (both kernels) */
struct sr_cfg {
    float temp, top_p, min_p;
    int64_t k;                     /* top_k in [1, V), else 0 (off) */
    uint32_t *wkey;                /* the scores' keys (ws + r V) */
    sr_row q;
};
__device__ __forceinline__ sr_cfg sr_setup(const float *params, const uint8_t *seen, const int32_t *counts,
                                           uint32_t *ws, int64_t r, int64_t V) {
    const float *pr = params + r * 7;
    sr_cfg c;
    c.temp = pr[0];
    c.top_p = pr[2];
    c.min_p = pr[3];
    c.k = (pr[1] >= 1.0f && pr[1] < (float)V) ? (int64_t)pr[1] : 0;
    c.wkey = ws + r * V;
    c.q.rep = pr[4];
    c.q.pres = pr[5];
    c.q.freq = pr[6];
    c.q.seen = seen != nullptr ? seen + r * V : nullptr;
    c.q.cnt = counts != nullptr ? counts + r * V : nullptr;
    return c;
}

/* One radix pass's adds to the warp's histogram copy over the columns [lo, hi) (whole warps: every lane of a warp
 * calls sr_hist_add together): the digit at `shift` of the keys whose bits above it equal prefix's; MASS false
 * (top_k) counts them, MASS true (top_p) adds the fixed-point masses of those >= floor_key (top_k's threshold), e =
 * exp(s - m) computed from the key wherever a pass needs it (the same bits each time). A lane's keys are loaded
 * SR_BATCH at a time ahead of their adds (an L2 round trip each otherwise). */
template <bool MASS>
__device__ __forceinline__ void sr_pass_adds(unsigned long long *mine, const uint32_t *wkey, int64_t lo, int64_t hi,
                                             int shift, uint32_t prefix, uint32_t floor_key, float m) {
    const int lane = threadIdx.x & 31;
    const uint32_t above = shift < 24 ? 0xFFFFFFFFu << (shift + 8) : 0u;
    for (int64_t base = lo + threadIdx.x - lane; base < hi; base += SR_BATCH * SR_THREADS) {
        uint32_t key[SR_BATCH];
#pragma unroll
        for (int u = 0; u < SR_BATCH; u++) {
            const int64_t v = base + u * SR_THREADS + lane;
            key[u] = v < hi ? wkey[v] : 0u;
        }
#pragma unroll
        for (int u = 0; u < SR_BATCH; u++) {
            const int64_t v = base + u * SR_THREADS + lane;
            const bool cand = v < hi && (!MASS || key[u] >= floor_key) && (key[u] & above) == prefix;
            if (__any_sync(0xffffffffu, cand))
                sr_hist_add<!MASS>(mine, cand ? (key[u] >> shift) & 255u : 256u,
                                   !cand ? 0ull : MASS ? jamba_mass_fixed(expf(sr_key_f32(key[u]) - m)) : 1ull);
        }
    }
}

/* A radix selection over the columns [lo, hi) of a row (4 passes of 8 bits, most significant first; every thread
 * calls it): MASS false (top_k) -> the key of the (target + 1)-th largest score (digits scanned from 255 down); MASS
 * true (top_p; target given by keep = top_p and Z) -> the smallest key >= floor_key whose mass at or below it exceeds
 * floor((1 - top_p) Z) (scanned from 0 up; Z, the kept columns' mass, is the first pass's histogram total: sr_find's
 * keep). Each pass: the warp's own copy zeroed, its adds (sr_pass_adds), then merge(), which leaves the whole row's
 * histogram in hist (the copies summed; in sr_cluster_kernel also across the cluster), then warp 0's sr_find.
 * have0: the first pass's histogram is in hist already (top_k's top digit, counted in pass 1: sr_pass1's COUNT). */
template <bool MASS, typename Merge>
__device__ __forceinline__ uint32_t sr_select(unsigned long long *mine, const unsigned long long *hist,
                                              const uint32_t *wkey, int64_t lo, int64_t hi,
                                              uint32_t floor_key, unsigned long long target, double keep, float m,
                                              int *s_digit, unsigned long long *s_rem, Merge merge, bool have0) {
    uint32_t prefix = 0u;
    for (int pass = 0; pass < 4; pass++) {
        const int shift = 24 - 8 * pass;
        if (pass > 0 || !have0) {
            sr_hist_zero(mine);
            sr_pass_adds<MASS>(mine, wkey, lo, hi, shift, prefix, floor_key, m);
            merge();
        }
        sr_find(hist, !MASS, target, MASS && pass == 0 ? keep : -1.0, s_digit, s_rem);
        __syncthreads();
        target = *s_rem;
        prefix |= (uint32_t)*s_digit << shift;
    }
    return prefix;
}

/* Pass 1 over the thread's columns of [lo, hi) (lo + t, lo + t + SR_THREADS, ...; the logits loaded SR_BATCH ahead):
 * the fold of the penalised logits into (bv, bi) -- NANFREE: also into (nv, ni) over the non-NaN ones -- and a
 * sampled row's score keys to wkey; COUNT (a sampled top_k row): also the keys' top digits counted into the warp's
 * histogram copy mine (zeroed by the caller), top_k's first radix pass without a pass of its own. The loop runs by
 * whole warps (lo is a multiple of SR_THREADS), as sr_hist_add needs. */
template <typename T, bool NANFREE, bool COUNT>
__device__ __forceinline__ void sr_pass1(const T *row, const sr_row &q, int64_t lo, int64_t hi, float temp,
                                         bool sampled, uint32_t *wkey, float &bv, int64_t &bi, float &nv,
                                         int64_t &ni, unsigned long long *mine) {
    const int lane = threadIdx.x & 31;
    for (int64_t wbase = lo + threadIdx.x - lane; wbase < hi; wbase += SR_BATCH * SR_THREADS) {
        const int64_t base = wbase + lane;
        float xr[SR_BATCH];
#pragma unroll
        for (int j = 0; j < SR_BATCH; j++)
            xr[j] = base + j * SR_THREADS < hi ? jamba_ld<T>(row[base + j * SR_THREADS]) : 0.f;
#pragma unroll
        for (int j = 0; j < SR_BATCH; j++) {
            const int64_t v = base + j * SR_THREADS;
            if (!COUNT && v >= hi) break;
            unsigned digit = 256u;
            if (v < hi) {
                const float xp = sr_pen(xr[j], q, v), xv = xp == xp ? xp : -INFINITY;   /* NaN counts as -inf */
                sr_better(bv, bi, xv, v);
                if (NANFREE && xv == xv) sr_better(nv, ni, xv, v);
                if (sampled) {
                    const uint32_t key = jamba_f32_key(__fdiv_rn(xv, temp));
                    wkey[v] = key;
                    digit = key >> 24;
                }
            }
            if (COUNT) {
                if (wbase + j * SR_THREADS >= hi) break;   /* (warp-uniform: no lane of the warp has a column) */
                sr_hist_add<true>(mine, digit, 1ull);
            }
        }
    }
}

/* The draw over the thread's kept columns of [lo, hi) (keys >= kmin, and e >= min_p; the keys loaded SR_BATCH ahead):
 * the Gumbel-max fold into (gv, gi) -- NANFREE: also into (ng, ngi) over the non-NaN values -- and smin, the smallest
 * kept score; a column that cannot reach lfloor is folded as -inf without its Philox (sr_draw_floor) */
template <bool NANFREE>
__device__ __forceinline__ void sr_draw(const uint32_t *wkey, int64_t lo, int64_t hi, uint32_t kmin, float min_p,
                                        float m, float lfloor, const int64_t *rng, int64_t r, uint64_t seed,
                                        uint64_t offset, float &gv, int64_t &gi, float &ng, int64_t &ngi,
                                        float &smin) {
    for (int64_t base = lo + threadIdx.x; base < hi; base += SR_BATCH * SR_THREADS) {
        uint32_t key[SR_BATCH];
#pragma unroll
        for (int j = 0; j < SR_BATCH; j++) key[j] = base + j * SR_THREADS < hi ? wkey[base + j * SR_THREADS] : 0u;
#pragma unroll
        for (int j = 0; j < SR_BATCH; j++) {
            const int64_t v = base + j * SR_THREADS;
            if (v >= hi || key[j] < kmin) continue;
            const float s = sr_key_f32(key[j]);
            if (min_p > 0.f && expf(s - m) < min_p) continue;
            const float g = s + SR_NOISE_MAX < lfloor ? -INFINITY
                                                      : s - logf(-logf(sr_uniform(rng, r, v, seed, offset)));
            sr_better(gv, gi, g, v);
            if (NANFREE && g == g) sr_better(ng, ngi, g, v);
            smin = fminf(smin, s);
        }
    }
}

template <typename T>
__global__ void __launch_bounds__(SR_THREADS) sr_kernel(int64_t *tokens, float *tau, const T *x, int64_t ld,
                                                        const float *params, const uint8_t *seen, const int32_t *counts,
                                                        uint32_t *ws, int64_t R, int64_t V, uint64_t seed,
                                                        uint64_t offset, const int64_t *rng) {
    jamba_pdl_begin();
    extern __shared__ __align__(16) unsigned long long sr_dyn[];      /* SR_SMEM bytes: the copies */
    __shared__ unsigned long long hist[256];
    __shared__ float sv[SR_WARPS + 1];
    __shared__ int64_t si[SR_WARPS + 1];
    __shared__ int s_digit;
    __shared__ unsigned long long s_rem;
    unsigned long long(*copies)[256] = reinterpret_cast<unsigned long long(*)[256]>(sr_dyn);
    unsigned long long *mine = copies[threadIdx.x >> 5];
    for (int64_t r = blockIdx.x; r < R; r += gridDim.x) {
        const T *row = x + r * ld;
        const sr_cfg c = sr_setup(params, seen, counts, ws, r, V);
        const auto &[temp, top_p, min_p, k, wkey, q] = c;
        const bool sampled = temp > 0.f;
        /* pass 1: the max of the penalised logits (first column on ties); a sampled row's score keys to ws, and a
         * top_k row's top digits counted (top_k's first radix pass) */
        const bool countk = sampled && k != 0;
        float bv = -INFINITY, unused_v = -INFINITY;
        int64_t bi = -1, unused_i = -1;
        if (countk) {
            sr_hist_zero(mine);
            sr_pass1<T, false, true>(row, q, 0, V, temp, sampled, wkey, bv, bi, unused_v, unused_i, mine);
        } else {
            sr_pass1<T, false, false>(row, q, 0, V, temp, sampled, wkey, bv, bi, unused_v, unused_i, mine);
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
        if (m == -INFINITY) {                         /* every score -inf: bi (column 0 of a NaN / -inf row) */
            if (threadIdx.x == 0) {
                tokens[r] = bi < 0 ? 0 : bi;
                tau[r] = -INFINITY;
            }
            __syncthreads();
            continue;
        }
        /* top_k: the key of the k-th largest score (4 radix passes, counts) */
        auto merge = [&]() {                          /* (the copies summed into hist) */
            __syncthreads();
            sr_hist_merge(copies, hist);
            __syncthreads();
        };
        if (countk) merge();                          /* (pass 1's counts: top_k's first histogram) */
        const uint32_t kk = k ? sr_select<false>(mine, hist, wkey, 0, V, 0u, (unsigned long long)k - 1ull, -1.0,
                                                 m, &s_digit, &s_rem, merge, true) : 0u;
        /* top_p: e = exp(s - m) of the columns top_k keeps and their mass Z, in the first of the radix passes
         * that find the smallest key whose mass at or below it exceeds floor((1 - top_p) Z) (4 passes, fixed-point
         * masses) */
        const uint32_t kp = top_p < 1.f ? sr_select<true>(mine, hist, wkey, 0, V, kk, 0ull, (double)top_p, m,
                                                          &s_digit, &s_rem, merge, false) : 0u;
        /* the draw: Gumbel-max over the kept columns (those that cannot reach the argmax column's value without
         * their Philox: sr_draw_floor); tau = the smallest kept score */
        const uint32_t kmin = kk > kp ? kk : kp;
        const float lfloor = sr_draw_floor(rng, r, bi, m, seed, offset);
        float gv = -INFINITY, smin = INFINITY;
        int64_t gi = -1;
        sr_draw<false>(wkey, 0, V, kmin, min_p, m, lfloor, rng, r, seed, offset, gv, gi, unused_v, unused_i, smin);
        sr_argmax(gv, gi, sv, si);
        smin = sr_min(smin, sv);
        if (threadIdx.x == 0) {
            tokens[r] = gi < 0 ? (bi < 0 ? 0 : bi) : gi;   /* (gi < 0: nothing kept; a guard) */
            tau[r] = gi < 0 ? m : smin;
        }
        __syncthreads();
    }
}

/* ---- the cluster path (sm_90+) --------------------------------------------------------------------------------- */

/* One CTA's partial of a combine, in its shared memory, which every CTA of the cluster reads (double-buffered: see
 * sr_cluster_kernel); and the CTA's own copy of the combined result (r*: only its own threads read it). */
struct sr_part {
    unsigned long long h[256];     /* a radix pass: the slice's histogram (counts, or fixed-point masses) */
    float v, smin, rv, rmin;       /* pass 1 / the draw: the slice's best value, the draw's smallest kept score */
    int64_t i, ri;                 /* ... and the best value's column; the row's (rv, ri), rmin */
    int nan, rnan;                 /* some thread's fold stuck at a NaN (sr_cluster_argmax); in any CTA */
};

/* Each thread's folds for sr_cluster_argmax's exact path: (fv, fi) from empty as sr_kernel's threads fold, (nv, ni)
 * over the non-NaN values only. In the (dynamic) shared memory of the histogram copies (never both in use at once). */
struct sr_slots {
    float fv[SR_THREADS], nv[SR_THREADS];
    int64_t fi[SR_THREADS], ni[SR_THREADS];
};
union sr_scratch {
    unsigned long long copies[SR_COPIES][256];
    sr_slots slots;
};
static_assert(sizeof(sr_slots) <= sizeof(unsigned long long) * SR_COPIES * 256, "sr_slots must fit in the copies");

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
namespace cg = cooperative_groups;

/* the cluster's index along x and the number of clusters (grid x / C) */
__device__ __forceinline__ int64_t sr_cluster_id() {
    unsigned v;
    asm("mov.u32 %0, %%clusterid.x;" : "=r"(v));
    return v;
}
__device__ __forceinline__ int64_t sr_cluster_count() {
    unsigned v;
    asm("mov.u32 %0, %%nclusterid.x;" : "=r"(v));
    return v;
}

/* A radix pass's histogram of the row into hist (this CTA's shared memory): the CTA's copies summed into P->h, one
 * cluster barrier, then sr_cluster_gather. Called by every thread after the CTA's sr_hist_add calls; hist is ready
 * for sr_find on return. One event on P. */
static_assert(SR_THREADS == 4 * 256, "sr_cluster_gather: four threads a bin");
template <int C> __device__ void sr_cluster_gather(unsigned long long (*copies)[256], const sr_part *P,
                                                   unsigned long long *hist);
template <int C>
__device__ void sr_cluster_hist(unsigned long long (*copies)[256], sr_part *P, unsigned long long *hist) {
    __syncthreads();
    sr_hist_merge(copies, P->h);
    cg::this_cluster().sync();
    sr_cluster_gather<C>(copies, P, hist);
}

/* hist[b] = the C partials' P->h[b] summed (u64: exact in any order), after the cluster barrier that published them
 * (sr_cluster_hist's, or pass 1's in sr_cluster_argmax) and before the next event's: thread t reads bin t % 256 of
 * ranks t / 256, t / 256 + 4, ... (two remote loads a thread at C = 8, in flight together), its sum goes to copy
 * t / 256 (free until the next pass: this CTA's copies were summed before the barrier, and no peer reads them now),
 * and those four are added. Every thread calls it; hist is ready on return. */
template <int C>
__device__ void sr_cluster_gather(unsigned long long (*copies)[256], const sr_part *P, unsigned long long *hist) {
    cg::cluster_group cluster = cg::this_cluster();
    const int b = threadIdx.x & 255, q = threadIdx.x >> 8;
    unsigned long long t = 0ull;
#pragma unroll
    for (int c = q; c < C; c += 4) t += cluster.map_shared_rank(P->h, c)[b];
    copies[q][b] = t;
    __syncthreads();
    if (threadIdx.x < 256) hist[b] = copies[0][b] + copies[1][b] + copies[2][b] + copies[3][b];
    __syncthreads();
}

/* The row's best (value, column) pair (pass 1, the draw) in every thread of every CTA: what sr_kernel's sr_argmax
 * gives over the whole row, to the bit. In: (bv, bi) the thread's fold over its columns (sr_better from empty, as
 * sr_kernel's threads fold); (nv, ni) the same fold over the non-NaN values only; smin (with_min) the thread's
 * smallest kept score, replaced by the row's. One event on P.
 * Without NaNs sr_better is a total order (the larger value, then the smaller column), so any grouping gives the
 * row's best pair: each CTA reduces its slice (sr_argmax), and the C results are reduced in rank order. A
 * NaN that a fold takes first sticks (no comparison with it is true), and then the result depends on which thread
 * held which column. So when a fold of some thread of some CTA is stuck at a NaN, every CTA takes the exact path: the
 * fold of sr_kernel's thread t (its columns are those of this kernel's threads t of CTAs 0, 1, ... in turn) is
 * composed from the slots -- the first CTA with columns gives its fold from empty (NaN first: stuck), a later CTA's
 * NaN-free fold replaces the state where sr_better prefers it (a stuck state never) -- then sr_argmax as sr_kernel
 * runs it; then one more cluster barrier, so that no CTA rewrites its slots (the histogram copies) while a peer
 * reads them. smin needs no exact path: fminf ignores a NaN and orders -0 below +0 (PTX min), whatever the order. */
template <int C>
__device__ void sr_cluster_argmax(float &bv, int64_t &bi, float nv, int64_t ni, float &smin, bool with_min,
                                  sr_part *P, sr_slots *slots, float *sv, int64_t *si) {
    cg::cluster_group cluster = cg::this_cluster();
    const int t = threadIdx.x;
    slots->fv[t] = bv;
    slots->fi[t] = bi;
    slots->nv[t] = nv;
    slots->ni[t] = ni;
    const int stuck = __syncthreads_or(bi >= 0 && bv != bv);
    sr_argmax(bv, bi, sv, si);
    if (with_min) smin = sr_min(smin, sv);
    if (t == 0) {
        P->v = bv;
        P->i = bi;
        P->smin = smin;
        P->nan = stuck;
    }
    cluster.sync();
    if (t < 32) {                                     /* lane c reads rank c's partial; each lane folds them in order */
        float v = -INFINITY, mn = INFINITY;
        int64_t i = -1;
        int nan = 0;
        if (t < C) {
            const sr_part *q = cluster.map_shared_rank(P, t);
            v = q->v;
            i = q->i;
            mn = q->smin;
            nan = q->nan;
        }
        float rv = -INFINITY, rmin = INFINITY;
        int64_t ri = -1;
        for (int c = 0; c < C; c++) {
            sr_better(rv, ri, __shfl_sync(0xffffffffu, v, c), __shfl_sync(0xffffffffu, i, c));
            rmin = fminf(rmin, __shfl_sync(0xffffffffu, mn, c));
        }
        const unsigned anynan = __ballot_sync(0xffffffffu, nan != 0);
        if (t == 0) {
            P->rv = rv;
            P->ri = ri;
            P->rmin = rmin;
            P->rnan = anynan != 0u;
        }
    }
    __syncthreads();
    bv = P->rv;
    bi = P->ri;
    smin = P->rmin;
    if (P->rnan) {                                    /* (the same in every CTA: every CTA takes this path or none) */
        bv = -INFINITY;
        bi = -1;
        for (int c = 0; c < C; c++) {
            const sr_slots *q = cluster.map_shared_rank(slots, c);
            if (bi < 0) {
                bv = q->fv[t];
                bi = q->fi[t];
            } else {
                sr_better(bv, bi, q->nv[t], q->ni[t]);
            }
        }
        sr_argmax(bv, bi, sv, si);
        cluster.sync();
    }
}
#endif

/* sr_cluster_kernel<T, C>: sr_kernel's math with a row per cluster of C CTAs (the header's work split; C = 8, 4 or 2,
 * chosen per call by sr_cluster_size).
 *   grid (clusters * C) along x, cluster dims (C, 1, 1), SR_THREADS threads a CTA; cluster q takes rows q,
 *   q + clusters, ...; the CTA of rank c owns the row's columns [v0, v1) and only that slice of its keys
 *   in ws; only rank 0 writes tokens[r] and tau[r].
 * Each combine (an "event": pass 1; each of the 4 top_k passes; each of the 4 top_p passes; the draw) is: the
 * CTA writes its partial to part[ev & 1] (ev: the events so far), one cluster barrier (cluster.sync: barrier.cluster
 * arrive.release + wait.acquire, all threads of all CTAs), then every CTA reads the C partials of part[ev & 1]
 * in rank order and reduces them the same way, so all reach the same digit / max without a broadcast. One barrier an
 * event is enough: a CTA next writes part[ev & 1] at event ev + 2, after it has passed event ev + 1's barrier, and a
 * CTA still reading part[ev & 1] for event ev has not arrived at that barrier yet (its reads come first in program
 * order and are released by its arrival). The control flow depends only on the row's params and on combined results,
 * which are the same in every CTA, so all CTAs of a cluster iterate the same rows and reach every barrier the same
 * number of times, greedy rows and empty slices included (sr_cluster_argmax's exact path adds one barrier, in every
 * CTA or none). The last barrier keeps each CTA (its shared memory) alive until its peers have read it.
 * None of this depends on C (each combine reads exactly the C partials of the launch's cluster dims, C <= 32 so that
 * one lane a rank suffices; a CTA of an empty slice still reaches every barrier).
 * The body is built for sm_90+ only (clusters, distributed shared memory); the sm_80 build traps, and the host never
 * launches it there (sr_cluster_ok). */
template <typename T, int C>
__global__ void __launch_bounds__(SR_THREADS)
    sr_cluster_kernel(int64_t *tokens, float *tau, const T *x, int64_t ld, const float *params, const uint8_t *seen,
                      const int32_t *counts, uint32_t *ws, int64_t R, int64_t V, uint64_t seed, uint64_t offset,
                      const int64_t *rng) {
    jamba_pdl_begin();
    static_assert(C >= 1 && C <= SR_CLUSTER, "sr_cluster_kernel: C CTAs a cluster, at most the portable 8");
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    cg::cluster_group cluster = cg::this_cluster();
    extern __shared__ __align__(16) unsigned long long sr_dyn[];      /* SR_SMEM bytes: */
    sr_scratch &scratch = *reinterpret_cast<sr_scratch *>(sr_dyn);    /* the copies, or sr_cluster_argmax's slots */
    __shared__ sr_part part[2];
    __shared__ unsigned long long hist[256];
    __shared__ float sv[SR_WARPS + 1];
    __shared__ int64_t si[SR_WARPS + 1];
    __shared__ int s_digit;
    __shared__ unsigned long long s_rem;
    unsigned long long(*copies)[256] = scratch.copies;
    unsigned long long *mine = copies[threadIdx.x >> 5];
    /* the slice: ceil(V / C) rounded up to a multiple of SR_THREADS columns (so thread t's columns are sr_kernel's
     * thread t's), the last CTAs' short or empty (e.g. every CTA but rank 0's for V <= SR_THREADS) */
    const int64_t w = ((V + C - 1) / C + SR_THREADS - 1) / SR_THREADS * SR_THREADS;
    const int64_t rank = cluster.block_rank();
    const int64_t v0 = rank * w < V ? rank * w : V, v1 = v0 + w < V ? v0 + w : V;
    unsigned ev = 0;                                  /* combine events so far (the same count in every CTA) */
    for (int64_t r = sr_cluster_id(); r < R; r += sr_cluster_count()) {
        const T *row = x + r * ld;
        const sr_cfg c = sr_setup(params, seen, counts, ws, r, V);
        const auto &[temp, top_p, min_p, k, wkey, q] = c;
        const bool sampled = temp > 0.f;
        /* pass 1: the max of the penalised logits (first column on ties); a sampled row's score keys to ws, and a
         * top_k row's top digits counted (top_k's first radix pass: the CTA's histogram published in pass 1's
         * partial, with its cluster barrier, before the slots overwrite the copies) */
        const bool countk = sampled && k != 0;
        float bv = -INFINITY, nv = -INFINITY, no_min = INFINITY;
        int64_t bi = -1, ni = -1;
        if (countk) {
            sr_hist_zero(mine);
            sr_pass1<T, true, true>(row, q, v0, v1, temp, sampled, wkey, bv, bi, nv, ni, mine);
            __syncthreads();
            sr_hist_merge(copies, part[ev & 1u].h);
            __syncthreads();
        } else {
            sr_pass1<T, true, false>(row, q, v0, v1, temp, sampled, wkey, bv, bi, nv, ni, mine);
        }
        sr_cluster_argmax<C>(bv, bi, nv, ni, no_min, false, &part[ev++ & 1u], &scratch.slots, sv, si);
        if (!sampled) {                               /* greedy */
            if (rank == 0 && threadIdx.x == 0) {
                tokens[r] = bi < 0 ? 0 : bi;
                tau[r] = bv;
            }
            continue;
        }
        const float m = __fdiv_rn(bv, temp);
        if (m == -INFINITY) {                         /* every score -inf: bi (column 0 of a NaN / -inf row); bv is */
            if (rank == 0 && threadIdx.x == 0) {      /* the row's in every CTA, so all leave here, as greedy rows */
                tokens[r] = bi < 0 ? 0 : bi;          /* do (pass 1's top_k counts in part: never read) */
                tau[r] = -INFINITY;
            }
            continue;
        }
        /* top_k: the key of the k-th largest score (4 radix passes, counts) */
        auto merge = [&]() { sr_cluster_hist<C>(copies, &part[ev++ & 1u], hist); };   /* (one event a pass) */
        if (countk) sr_cluster_gather<C>(copies, &part[(ev - 1u) & 1u], hist);   /* (pass 1's counts) */
        const uint32_t kk = k ? sr_select<false>(mine, hist, wkey, v0, v1, 0u, (unsigned long long)k - 1ull,
                                                 -1.0, m, &s_digit, &s_rem, merge, true) : 0u;
        /* top_p: e = exp(s - m) of the columns top_k keeps and their mass Z, in the first of the radix passes
         * that find the smallest key whose mass at or below it exceeds floor((1 - top_p) Z) (4 passes, fixed-point
         * masses; Z the first pass's histogram total, summed across the cluster with it) */
        const uint32_t kp = top_p < 1.f ? sr_select<true>(mine, hist, wkey, v0, v1, kk, 0ull, (double)top_p, m,
                                                          &s_digit, &s_rem, merge, false) : 0u;
        /* the draw: Gumbel-max over the kept columns (those that cannot reach the argmax column's value without
         * their Philox: sr_draw_floor); tau = the smallest kept score */
        const uint32_t kmin = kk > kp ? kk : kp;
        const float lfloor = sr_draw_floor(rng, r, bi, m, seed, offset);
        float gv = -INFINITY, ng = -INFINITY, smin = INFINITY;
        int64_t gi = -1, ngi = -1;
        sr_draw<true>(wkey, v0, v1, kmin, min_p, m, lfloor, rng, r, seed, offset, gv, gi, ng, ngi, smin);
        sr_cluster_argmax<C>(gv, gi, ng, ngi, smin, true, &part[ev++ & 1u], &scratch.slots, sv, si);
        if (rank == 0 && threadIdx.x == 0) {
            tokens[r] = gi < 0 ? (bi < 0 ? 0 : bi) : gi;   /* (gi < 0: nothing kept; a guard) */
            tau[r] = gi < 0 ? m : smin;
        }
    }
    cluster.sync();                                   /* (peers may still read this CTA's last partial) */
#else
    __trap();                                         /* (sm_80 build: never launched, see sr_cluster_ok) */
#endif
}

/* ---- which kernel, which cluster size (host) ------------------------------------------------------------------- */

/* Per device, asked with it current, cached at first use (a race between two first calls writes the same values
 * twice). sr_ok_cache: whether the cluster kernels run there at all (1 yes, -1 no, 0 not asked yet): compute
 * capability 9+ with cluster launch, code built for sm_90+ (a PTX build for sm_80 on a Hopper runs the trap body: its
 * ptxVersion is 80) and a cluster of SR_CLUSTER CTAs of SR_THREADS threads that fits, for every dtype.
 * sr_active_cache[device][dtype][sr_size_index(C)]: 1 + cudaOccupancyMaxActiveClusters of sr_cluster_kernel<T, C>
 * at cluster dims (C, 1, 1), the clusters of C that run at once (0: not asked yet); sr_cluster_ok fills all 9. */
static int sr_ok_cache[SR_MAX_DEVICES];
static int sr_active_cache[SR_MAX_DEVICES][3][3];
static int sr_smem_set[SR_MAX_DEVICES];

/* Both kernels' dynamic shared memory limit raised to SR_SMEM (the histogram copies), once per device (current); at
 * each call on a device past SR_MAX_DEVICES */
static jamba_status sr_smem_attrs(int device) {
    if (device >= 0 && device < SR_MAX_DEVICES && sr_smem_set[device]) return JAMBA_OK;
    const cudaFuncAttribute a = cudaFuncAttributeMaxDynamicSharedMemorySize;
    JAMBA_CUDA_CHECK(cudaFuncSetAttribute(sr_kernel<float>, a, SR_SMEM));
    JAMBA_CUDA_CHECK(cudaFuncSetAttribute(sr_kernel<__half>, a, SR_SMEM));
    JAMBA_CUDA_CHECK(cudaFuncSetAttribute(sr_kernel<__nv_bfloat16>, a, SR_SMEM));
    JAMBA_CUDA_CHECK(cudaFuncSetAttribute(sr_cluster_kernel<float, 8>, a, SR_SMEM));
    JAMBA_CUDA_CHECK(cudaFuncSetAttribute(sr_cluster_kernel<__half, 8>, a, SR_SMEM));
    JAMBA_CUDA_CHECK(cudaFuncSetAttribute(sr_cluster_kernel<__nv_bfloat16, 8>, a, SR_SMEM));
    JAMBA_CUDA_CHECK(cudaFuncSetAttribute(sr_cluster_kernel<float, 4>, a, SR_SMEM));
    JAMBA_CUDA_CHECK(cudaFuncSetAttribute(sr_cluster_kernel<__half, 4>, a, SR_SMEM));
    JAMBA_CUDA_CHECK(cudaFuncSetAttribute(sr_cluster_kernel<__nv_bfloat16, 4>, a, SR_SMEM));
    JAMBA_CUDA_CHECK(cudaFuncSetAttribute(sr_cluster_kernel<float, 2>, a, SR_SMEM));
    JAMBA_CUDA_CHECK(cudaFuncSetAttribute(sr_cluster_kernel<__half, 2>, a, SR_SMEM));
    JAMBA_CUDA_CHECK(cudaFuncSetAttribute(sr_cluster_kernel<__nv_bfloat16, 2>, a, SR_SMEM));
    if (device >= 0 && device < SR_MAX_DEVICES) sr_smem_set[device] = 1;
    return JAMBA_OK;
}

template <typename T> static constexpr int sr_dtype_index() {
    return std::is_same<T, float>::value ? 0 : std::is_same<T, __half>::value ? 1 : 2;
}
static_assert(SR_CLUSTER == 8, "the cluster sizes are 8, 4 and 2 (sr_size_index, sr_active, the launch)");
static inline int sr_size_index(int C) { return C == 8 ? 0 : C == 4 ? 1 : 2; }

/* cudaOccupancyMaxActiveClusters of sr_cluster_kernel<T, C> on the current device; 0 where its code is sm_80's or a
 * query fails (the error cleared: it must not fail the launch check) */
template <typename T, int C> static int sr_query_active() {
    cudaFuncAttributes fa;
    if (cudaFuncGetAttributes(&fa, sr_cluster_kernel<T, C>) != cudaSuccess) {
        (void)cudaGetLastError();
        return 0;
    }
    if (fa.ptxVersion < 90) return 0;
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = dim3(C);
    cfg.blockDim = dim3(SR_THREADS);
    cfg.dynamicSmemBytes = SR_SMEM;
    cudaLaunchAttribute attr;
    attr.id = cudaLaunchAttributeClusterDimension;
    attr.val.clusterDim.x = C;
    attr.val.clusterDim.y = 1;
    attr.val.clusterDim.z = 1;
    cfg.attrs = &attr;
    cfg.numAttrs = 1;
    int clusters = 0;
    if (cudaOccupancyMaxActiveClusters(&clusters, sr_cluster_kernel<T, C>, &cfg) != cudaSuccess) {
        (void)cudaGetLastError();
        return 0;
    }
    return clusters > 0 ? clusters : 0;
}

/* sr_query_active<T, C> on device (current), cached; C in {8, 4, 2} */
template <typename T> static int sr_active(int device, int C) {
    if (device < 0 || device >= SR_MAX_DEVICES) return 0;
    int &slot = sr_active_cache[device][sr_dtype_index<T>()][sr_size_index(C)];
    int v = slot;
    if (v == 0) {
        v = 1 + (C == 8 ? sr_query_active<T, 8>() : C == 4 ? sr_query_active<T, 4>() : sr_query_active<T, 2>());
        slot = v;
    }
    return v - 1;
}

static bool sr_cluster_ok(int device) {
    if (device < 0 || device >= SR_MAX_DEVICES) return false;
    int v = sr_ok_cache[device];
    if (v == 0) {
        int major = 0, cluster_launch = 0;
        bool ok = cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) == cudaSuccess &&
                  cudaDeviceGetAttribute(&cluster_launch, cudaDevAttrClusterLaunch, device) == cudaSuccess &&
                  major >= 9 && cluster_launch != 0;
        if (!ok) (void)cudaGetLastError();            /* (a failed query must not fail the launch check) */
        ok = ok && sr_active<float>(device, SR_CLUSTER) > 0 && sr_active<__half>(device, SR_CLUSTER) > 0 &&
             sr_active<__nv_bfloat16>(device, SR_CLUSTER) > 0;
        for (int C = SR_CLUSTER / 2; ok && C >= 2; C >>= 1) {   /* (the other sizes now: no query at a later call) */
            (void)sr_active<float>(device, C);
            (void)sr_active<__half>(device, C);
            (void)sr_active<__nv_bfloat16>(device, C);
        }
        v = ok ? 1 : -1;
        sr_ok_cache[device] = v;
    }
    return v > 0;
}

/* The cluster size C of this call's kernel (sr_cluster_kernel<T, C>), or 0: sr_kernel. Env
 * JAMBA_EXT_SAMPLE_ROWS_CLUSTER, read at each call: "0" sr_kernel; "1" C = SR_CLUSTER, "2" / "4" / "8" that C, at
 * any V (tests, A/B); any other value, or unset: from V = SR_CLUSTER_MIN_V the largest C in (8, 4, 2) with
 * R <= the clusters of C that run at once (all rows in one wave: the header says why), sr_kernel where none has.
 * A cluster size only where the device runs the cluster kernels (sr_cluster_ok) and a cluster of that size fits. */
template <typename T> static int sr_cluster_size(int device, int64_t R, int64_t V) {
    const char *env = getenv("JAMBA_EXT_SAMPLE_ROWS_CLUSTER");
    const char e = env != NULL && env[0] != '\0' && env[1] == '\0' ? env[0] : '\0';   /* (one character, or none) */
    const int forced = e == '1' || e == '8' ? 8 : e == '4' ? 4 : e == '2' ? 2 : 0;
    if (e == '0' || (forced == 0 && V < SR_CLUSTER_MIN_V) || !sr_cluster_ok(device)) return 0;
    if (forced != 0) return sr_active<T>(device, forced) > 0 ? forced : 0;
    for (int C = SR_CLUSTER; C >= 2; C >>= 1)
        if (R <= (int64_t)sr_active<T>(device, C)) return C;
    return 0;
}

extern "C" jamba_status jamba_sample_rows_cuda(const jamba_sample_rows_params *p, jamba_launch launch) {
    JAMBA_TRY(jamba_sample_rows_check(p));
    const int64_t R = p->logits.shape[0], V = p->logits.shape[1], ld = p->logits.stride[0];
    if (R == 0) return JAMBA_OK;
    JAMBA_TRY(jamba_check_workspace("jamba.sample_rows", &p->ws, jamba_sample_rows_ws_elems(R, V)));
    if (jamba_tensors_overlap(&p->ws, &p->logits) || jamba_tensors_overlap(&p->ws, &p->tokens) ||
        jamba_tensors_overlap(&p->ws, &p->tau) || jamba_tensors_overlap(&p->ws, &p->params) ||
        jamba_tensors_overlap(&p->ws, &p->seen) || jamba_tensors_overlap(&p->ws, &p->counts) ||
        jamba_tensors_overlap(&p->ws, &p->rng))
        return jamba_set_error(JAMBA_ERR_ARG, "jamba.sample_rows: ws must not overlap another argument in memory");
    JAMBA_DEVICE_GUARD(launch);
    JAMBA_TRY(sr_smem_attrs(launch.device));
    cudaStream_t stream = (cudaStream_t)launch.stream;
    /* the cluster kernels: SR_MAX_CLUSTERS clusters at most (more rows: the kernel's stride loop) */
    const int64_t nc = R < SR_MAX_CLUSTERS ? R : SR_MAX_CLUSTERS;
    const dim3 grid((unsigned)(R < SR_MAX_GRID ? R : SR_MAX_GRID));
    jamba_status s = JAMBA_ERR_DTYPE;
    JAMBA_DISPATCH_FLOAT(p->logits.dtype, T, {
        const int C = sr_cluster_size<T>(launch.device, R, V);
        if (C != 0) {
            auto *kernel = C == 8 ? &sr_cluster_kernel<T, 8>
                           : C == 4 ? &sr_cluster_kernel<T, 4>
                                    : &sr_cluster_kernel<T, 2>;
            jamba_kernel_launch_cluster(kernel, (unsigned)C, dim3((unsigned)(nc * C)), SR_THREADS, SR_SMEM, stream,
                                        (int64_t *)p->tokens.data, (float *)p->tau.data, (const T *)p->logits.data,
                                        ld, (const float *)p->params.data, (const uint8_t *)p->seen.data,
                                        (const int32_t *)p->counts.data, (uint32_t *)p->ws.data, R, V, p->seed,
                                        p->offset, (const int64_t *)p->rng.data);
        } else {
            jamba_kernel_launch(sr_kernel<T>, grid, SR_THREADS, SR_SMEM, stream, (int64_t *)p->tokens.data,
                                (float *)p->tau.data, (const T *)p->logits.data, ld, (const float *)p->params.data,
                                (const uint8_t *)p->seen.data, (const int32_t *)p->counts.data,
                                (uint32_t *)p->ws.data, R, V, p->seed, p->offset, (const int64_t *)p->rng.data);
        }
        s = JAMBA_OK;
    });
    JAMBA_TRY(s);
    JAMBA_LAUNCH_CHECK("jamba.sample_rows: kernel launch", stream);
    return JAMBA_OK;
}
