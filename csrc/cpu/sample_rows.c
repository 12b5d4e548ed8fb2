/* sample_rows.c -- one token per row of logits, each row with its own sampling settings, on the CPU.
 *
 * Exports: jamba_sample_rows_check (shared with csrc/cuda/sample_rows.cu), jamba_sample_rows_cpu.
 * Layout (csrc/jamba.h): logits (R, V) f32|f16|bf16, unit stride along V, any row stride; params (R, 7) f32; seen
 * (R, V) u8 and counts (R, V) i32, contiguous, each optional; tokens (R,) i64, tau (R,) f32 (ws: CUDA's only).
 * Math (csrc/jamba.h): a row's penalised scores go once into a per-thread fp32 buffer (divided by the temperature
 * when it samples); the top_k and top_p thresholds are radix selections on the scores' order-preserving keys, four
 * passes of 8 bits, most significant first: counts of keys for top_k, fixed-point masses (exact u64 sums, so the
 * result does not depend on the order of summation) for top_p; then one pass draws the token (Gumbel-max with
 * Philox uniforms). The same selections as the CUDA kernel, so both keep the same columns up to expf's ulps.
 * Rows are independent (OpenMP over rows).
 * NaN: a NaN penalised logit counts as -inf (never the argmax, never drawn while a column is finite; it had been the
 * argmax at column 0 and the largest key elsewhere); a row whose scores are all -inf (NaN / -inf logits only) gives
 * the first argmax, column 0 of such a row, and tau -inf, greedy or sampled (what a row of -inf gave before).
 */
#include <math.h>
#include <stdlib.h>

#include "../common.h"

static const char *OP = "jamba.sample_rows";

jamba_status jamba_sample_rows_check(const jamba_sample_rows_params *p) {
    JAMBA_TRY(jamba_check_tensor(OP, "logits", &p->logits, 2, JAMBA_FLOATS, 0));
    JAMBA_TRY(jamba_check_unit_stride(OP, "logits", &p->logits, 1));
    const int64_t R = p->logits.shape[0], V = p->logits.shape[1];
    if (V < 1)
        return jamba_set_error(JAMBA_ERR_SHAPE, "%s: logits must have at least one column (V >= 1), got V = %lld", OP,
                               (long long)V);
    if (R > 1 && p->logits.stride[0] < V)
        return jamba_set_error(JAMBA_ERR_ARG, "%s: logits rows must not overlap (row stride %lld < V = %lld)", OP,
                               (long long)p->logits.stride[0], (long long)V);
    const int64_t psh[2] = {R, 7}, rv[2] = {R, V}, r1[1] = {R};
    JAMBA_TRY(jamba_check_dense(OP, "params", &p->params, 2, JAMBA_MASK(JAMBA_F32), psh));
    JAMBA_TRY(jamba_check_tensor(OP, "seen", &p->seen, 2, JAMBA_MASK(JAMBA_U8), 1));
    if (p->seen.data != NULL) {
        JAMBA_TRY(jamba_check_shape(OP, "seen", &p->seen, rv));
        JAMBA_TRY(jamba_check_contiguous(OP, "seen", &p->seen));
    }
    JAMBA_TRY(jamba_check_tensor(OP, "counts", &p->counts, 2, JAMBA_MASK(JAMBA_I32), 1));
    if (p->counts.data != NULL) {
        JAMBA_TRY(jamba_check_shape(OP, "counts", &p->counts, rv));
        JAMBA_TRY(jamba_check_contiguous(OP, "counts", &p->counts));
    }
    JAMBA_TRY(jamba_check_tensor(OP, "rng", &p->rng, 2, JAMBA_MASK(JAMBA_I64), 1));
    if (p->rng.data != NULL) {
        const int64_t r2[2] = {R, 2};
        JAMBA_TRY(jamba_check_shape(OP, "rng", &p->rng, r2));
        JAMBA_TRY(jamba_check_contiguous(OP, "rng", &p->rng));
    }
    JAMBA_TRY(jamba_check_dense(OP, "tokens", &p->tokens, 1, JAMBA_MASK(JAMBA_I64), r1));
    JAMBA_TRY(jamba_check_dense(OP, "tau", &p->tau, 1, JAMBA_MASK(JAMBA_F32), r1));
    const jamba_tensor *outs[] = {&p->tokens, &p->tau},
                       *ins[] = {&p->logits, &p->params, &p->seen, &p->counts, &p->rng};
    const char *names[] = {"tokens", "tau"};
    for (int i = 0; i < 2; i++) {
        int clash = jamba_tensors_overlap(outs[i], outs[1 - i]);
        for (int j = 0; j < 5; j++) clash |= jamba_tensors_overlap(outs[i], ins[j]);
        if (clash) return jamba_set_error(JAMBA_ERR_ARG, "%s: %s must not overlap another argument in memory", OP,
                                          names[i]);
    }
    return JAMBA_OK;
}

int64_t jamba_sample_rows_ws_elems(int64_t R, int64_t V) { return R * V; }

/* Radix selection over the scores' keys, 4 passes of 8 bits, most significant first (csrc/cuda/sample_rows.cu does
 * the same with a block per row). by_mass = 0 (top_k): each key weighs 1 and the digits are scanned from 255 down;
 * the result is the key of the (target + 1)-th largest score. by_mass = 1 (top_p): the scores with key >= floor_key
 * weigh jamba_mass_fixed(exp(s - m)) and the digits are scanned from 0 up; the result is the smallest key whose mass
 * of keys <= it exceeds target. */
static uint32_t radix_select(const float *s, int64_t V, float m, uint32_t floor_key, int by_mass, uint64_t target) {
    uint32_t prefix = 0;
    for (int pass = 0; pass < 4; pass++) {
        const int shift = 24 - 8 * pass;
        const uint32_t hi = pass ? 0xFFFFFFFFu << (shift + 8) : 0u;
        uint64_t h[256] = {0};
        for (int64_t v = 0; v < V; v++) {
            const uint32_t key = jamba_f32_key(s[v]);
            if (key >= floor_key && (key & hi) == prefix)
                h[(key >> shift) & 255u] += by_mass ? jamba_mass_fixed(expf(s[v] - m)) : 1u;
        }
        int j = 0;                                          /* the first digit, in scan order, where the sum passes */
        for (; j < 255 && h[by_mass ? j : 255 - j] <= target; j++) target -= h[by_mass ? j : 255 - j];
        prefix |= (uint32_t)(by_mass ? j : 255 - j) << shift;
    }
    return prefix;
}

static void sample_row(const jamba_sample_rows_params *p, int64_t r, float *s) {  /* (math: csrc/jamba.h) */
    const int64_t V = p->logits.shape[1];
    const float *pr = (const float *)p->params.data + r * 7;
    const float temp = pr[0], top_p = pr[2], min_p = pr[3], rep = pr[4], pres = pr[5], freq = pr[6];
    const int64_t k = (pr[1] >= 1.0f && pr[1] < (float)V) ? (int64_t)pr[1] : 0;
    const char *row = (const char *)p->logits.data + r * p->logits.stride[0] * jamba_dtype_size(p->logits.dtype);
    const uint8_t *seen = p->seen.data ? (const uint8_t *)p->seen.data + r * V : NULL;
    const int32_t *cnt = p->counts.data ? (const int32_t *)p->counts.data + r * V : NULL;
    int64_t best = 0;
    for (int64_t v = 0; v < V; v++) {
        float x = jamba_load(row, p->logits.dtype, v);
        if (seen && seen[v]) x = x < 0.0f ? x * rep : x / rep;
        if (cnt) {
            const int32_t c = cnt[v];
            x = x - freq * (float)c;
            x = x - (c > 0 ? pres : 0.0f);
        }
        x = x == x ? x : -INFINITY;                         /* a NaN counts as -inf */
        s[v] = x;
        if (x > s[best]) best = v;
    }
    int64_t *tokens = (int64_t *)p->tokens.data;
    float *tau = (float *)p->tau.data;
    if (!(temp > 0.0f)) {                                   /* greedy */
        tokens[r] = best;
        tau[r] = s[best];
        return;
    }
    for (int64_t v = 0; v < V; v++) s[v] = s[v] / temp;
    const float m = s[best];
    if (m == -INFINITY) {                                   /* every score -inf: nothing to weigh (exp(s - m) NaN) */
        tokens[r] = best;
        tau[r] = -INFINITY;
        return;
    }
    const uint32_t kk = k ? radix_select(s, V, m, 0u, 0, (uint64_t)(k - 1)) : 0u;
    uint32_t kp = 0u;
    if (top_p < 1.0f) {
        uint64_t z = 0;
        for (int64_t v = 0; v < V; v++)
            if (jamba_f32_key(s[v]) >= kk) z += jamba_mass_fixed(expf(s[v] - m));
        kp = radix_select(s, V, m, kk, 1, (uint64_t)((1.0 - (double)top_p) * (double)z));
    }
    const uint32_t kmin = kk > kp ? kk : kp;
    const int64_t *rng = p->rng.data ? (const int64_t *)p->rng.data + 2 * r : NULL;  /* (a row's own key, counter) */
    const uint64_t seed = rng ? (uint64_t)rng[0] : p->seed, offset = rng ? (uint64_t)rng[1] : p->offset;
    const uint32_t k0 = (uint32_t)seed, k1 = (uint32_t)(seed >> 32), rw = rng ? 0u : (uint32_t)r;
    const uint32_t o0 = (uint32_t)offset, o1 = (uint32_t)(offset >> 32);
    int64_t tok = -1;
    float gbest = 0.0f, smin = INFINITY;
    for (int64_t v = 0; v < V; v++) {
        if (jamba_f32_key(s[v]) < kmin || (min_p > 0.0f && expf(s[v] - m) < min_p)) continue;
        const float u = jamba_uniform24(jamba_philox_word((uint32_t)v, rw, o0, o1, k0, k1));
        const float g = s[v] - logf(-logf(u));
        if (tok < 0 || g > gbest) {
            gbest = g;
            tok = v;
        }
        smin = s[v] < smin ? s[v] : smin;
    }
    tokens[r] = tok < 0 ? best : tok;                        /* (tok < 0: nothing kept; a guard) */
    tau[r] = tok < 0 ? m : smin;
}

jamba_status jamba_sample_rows_cpu(const jamba_sample_rows_params *p) {
    JAMBA_TRY(jamba_sample_rows_check(p));
    const int64_t R = p->logits.shape[0], V = p->logits.shape[1];
    int failed = 0;
#pragma omp parallel
    {
        float *s = (float *)malloc((size_t)V * sizeof(float));
#pragma omp for schedule(dynamic, 1) reduction(| : failed)
        for (int64_t r = 0; r < R; r++) {
            if (s != NULL) sample_row(p, r, s);
            else failed = 1;
        }
        free(s);
    }
    if (failed) return jamba_set_error(JAMBA_ERR_ARG, "%s: out of memory for a row buffer (%lld floats)", OP,
                                       (long long)V);
    return JAMBA_OK;
}
