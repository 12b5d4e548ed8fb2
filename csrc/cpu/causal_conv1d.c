/* causal_conv1d.c -- depthwise causal conv1d over time and its decode-step update, on the CPU.
 *
 * Exports: jamba_causal_conv1d_check / _cpu, jamba_causal_conv1d_update_check / _cpu.
 * Math (both): over the history h = concat(state, x) of one channel c,
 *   out[t] = act(bias[c] + sum_{j<K} w[c,j] * h[t - (K-1) + j]),   act = silu or identity
 * causal_conv1d : state = initial_state (or zeros); final_state = last S_out entries of h.
 * _update       : state = conv_state (B, DI, S), S >= K-1, rewritten in place as the last S entries of h.
 * OpenMP over (batch, channel) rows; fp32 accumulation; outputs rounded once to x's dtype.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "../common.h"

#define CHUNK 1024 /* time steps staged in fp32 per row */

static inline float silu_f(float v) { return jamba_silu(v); }

/* yo[t] = act(bias + sum_j w[j] * xin[t + j]), t < n; xin holds K-1 history entries then n inputs.
 * The width is unrolled per case so the t loop vectorises. */
JAMBA_CPU_CLONES
static void conv_chunk(const float *restrict xin, float *restrict yo, float *restrict tmp, int64_t n,
                       const float *w, float bias, int64_t K, int silu) {
    const float w0 = w[0], w1 = w[1], w2 = w[2], w3 = w[3];
    switch (K) {
    case 2:
#pragma omp simd
        for (int64_t t = 0; t < n; t++) yo[t] = bias + w0 * xin[t] + w1 * xin[t + 1];
        break;
    case 3:
#pragma omp simd
        for (int64_t t = 0; t < n; t++) yo[t] = bias + w0 * xin[t] + w1 * xin[t + 1] + w2 * xin[t + 2];
        break;
    default:
#pragma omp simd
        for (int64_t t = 0; t < n; t++)
            yo[t] = bias + w0 * xin[t] + w1 * xin[t + 1] + w2 * xin[t + 2] + w3 * xin[t + 3];
        break;
    }
    if (silu) {
        memcpy(tmp, yo, sizeof(float) * (size_t)n);
        jamba_silu_row(yo, tmp, n);
    }
}

/* weight (DI, K) and bias (DI,) checks shared by the forward, the update and the backward (common.h) */
jamba_status jamba_conv_check_weight_bias(const char *op, const jamba_tensor *weight, const jamba_tensor *bias,
                                      const jamba_tensor *x, int64_t DI) {
    JAMBA_TRY(jamba_check_tensor(op, "weight", weight, 2, JAMBA_MASK(JAMBA_F32) | JAMBA_MASK(x->dtype), 0));
    const int64_t K = weight->shape[1];
    if (K < JAMBA_MIN_CONV_WIDTH || K > JAMBA_MAX_CONV_WIDTH)
        return jamba_set_error(JAMBA_ERR_ARG, "%s: weight: conv width must be in %d..%d, got %lld", op,
                               JAMBA_MIN_CONV_WIDTH, JAMBA_MAX_CONV_WIDTH, (long long)K);
    const int64_t wsh[2] = {DI, K}, bsh[1] = {DI};
    JAMBA_TRY(jamba_check_shape(op, "weight", weight, wsh));
    JAMBA_TRY(jamba_check_tensor(op, "bias", bias, 1, JAMBA_MASK(JAMBA_F32) | JAMBA_MASK(x->dtype), 1));
    if (bias->data) JAMBA_TRY(jamba_check_shape(op, "bias", bias, bsh));
    return JAMBA_OK;
}

jamba_status jamba_causal_conv1d_check(const jamba_causal_conv1d_params *p) {
    const char *op = "jamba.causal_conv1d";
    JAMBA_TRY(jamba_check_tensor(op, "x", &p->x, 3, JAMBA_FLOATS, 0));
    JAMBA_TRY(jamba_check_unit_stride(op, "x", &p->x, 2));
    const int64_t B = p->x.shape[0], DI = p->x.shape[1], L = p->x.shape[2];
    JAMBA_TRY(jamba_conv_check_weight_bias(op, &p->weight, &p->bias, &p->x, DI));
    const int64_t K = p->weight.shape[1];
    const int64_t osh[3] = {B, DI, L};
    JAMBA_TRY(jamba_check_dense(op, "out", &p->out, 3, JAMBA_MASK(p->x.dtype), osh));
    if (p->initial_state.data) {
        JAMBA_TRY(jamba_check_tensor(op, "initial_state", &p->initial_state, 3, JAMBA_MASK(p->x.dtype), 0));
        const int64_t ish[3] = {B, DI, -1};
        JAMBA_TRY(jamba_check_shape(op, "initial_state", &p->initial_state, ish));
        if (p->initial_state.shape[2] < K - 1)
            return jamba_set_error(JAMBA_ERR_SHAPE,
                                   "%s: initial_state must hold at least width-1 = %lld steps, got shape "
                                   "(%lld, %lld, %lld)", op, (long long)(K - 1), (long long)B, (long long)DI,
                                   (long long)p->initial_state.shape[2]);
        JAMBA_TRY(jamba_check_unit_stride(op, "initial_state", &p->initial_state, 2));
    }
    if (p->final_state.data) {
        JAMBA_TRY(jamba_check_tensor(op, "final_state", &p->final_state, 3, JAMBA_MASK(p->x.dtype), 0));
        const int64_t fsh[3] = {B, DI, -1};
        JAMBA_TRY(jamba_check_shape(op, "final_state", &p->final_state, fsh));
        JAMBA_TRY(jamba_check_unit_stride(op, "final_state", &p->final_state, 2));
    }
    return JAMBA_OK;
}

jamba_status jamba_causal_conv1d_cpu(const jamba_causal_conv1d_params *p) {
    JAMBA_TRY(jamba_causal_conv1d_check(p));
    const int64_t B = p->x.shape[0], DI = p->x.shape[1], L = p->x.shape[2], K = p->weight.shape[1];
    const jamba_dtype dt = p->x.dtype;
    const int64_t es = jamba_dtype_size(dt);
    const int has_init = p->initial_state.data != NULL, has_final = p->final_state.data != NULL;
    const int64_t S_in = has_init ? p->initial_state.shape[2] : 0;
    const int64_t S_out = has_final ? p->final_state.shape[2] : 0;
    int oom = 0;
#pragma omp parallel if (B * DI * L > JAMBA_OMP_MIN_WORK)
    {
        float *xin = (float *)malloc(sizeof(float) * (CHUNK + JAMBA_MAX_CONV_WIDTH));
        float *yo = (float *)malloc(sizeof(float) * 2 * CHUNK); /* outputs + scratch */
        if (!xin || !yo) {
#pragma omp atomic write
            oom = 1;
        } else {
#pragma omp for schedule(static)
            for (int64_t bc = 0; bc < B * DI; bc++) {
                const int64_t b = bc / DI, c = bc % DI;
                float w[JAMBA_MAX_CONV_WIDTH] = {0}, bias = 0.f;
                for (int64_t j = 0; j < K; j++)
                    w[j] = jamba_load(p->weight.data, p->weight.dtype, c * p->weight.stride[0] + j * p->weight.stride[1]);
                if (p->bias.data) bias = jamba_load(p->bias.data, p->bias.dtype, c * p->bias.stride[0]);
                /* row (b, c) of x: x + b*sx0 + c*sx1, unit stride along time */
                const char *xr = (const char *)p->x.data + (b * p->x.stride[0] + c * p->x.stride[1]) * es;
                char *orow = (char *)p->out.data + (b * p->out.stride[0] + c * p->out.stride[1]) * es;
                /* xin[0..K-2] = the K-1 history entries before the current chunk */
                for (int64_t j = 0; j < K - 1; j++) {
                    const int64_t pos = S_in - (K - 1) + j; /* index into initial_state */
                    xin[j] = (has_init && pos >= 0)
                                 ? jamba_load(p->initial_state.data, dt,
                                              b * p->initial_state.stride[0] + c * p->initial_state.stride[1] + pos)
                                 : 0.f;
                }
                for (int64_t t0 = 0; t0 < L; t0 += CHUNK) {
                    const int64_t n = L - t0 < CHUNK ? L - t0 : CHUNK;
                    jamba_load_row(xin + K - 1, xr + t0 * es, dt, n, 1);
                    conv_chunk(xin, yo, yo + CHUNK, n, w, bias, K, p->silu);
                    jamba_store_row(orow + t0 * es, dt, yo, n, 1);
                    for (int64_t j = 0; j < K - 1; j++) xin[j] = xin[n + j];
                }
                if (has_final) {
                    /* final_state[j] = h[S_in + L - S_out + j], h = concat(initial_state, x), zeros before */
                    char *fr = (char *)p->final_state.data +
                               (b * p->final_state.stride[0] + c * p->final_state.stride[1]) * es;
                    for (int64_t j = 0; j < S_out; j++) {
                        const int64_t pos = S_in + L - S_out + j;
                        float v = 0.f;
                        if (pos >= S_in) {
                            v = jamba_load(xr, dt, pos - S_in);
                        } else if (pos >= 0) {
                            v = jamba_load(p->initial_state.data, dt,
                                           b * p->initial_state.stride[0] + c * p->initial_state.stride[1] + pos);
                        }
                        jamba_store(fr, dt, j, v);
                    }
                }
            }
        }
        free(xin);
        free(yo);
    }
    if (oom) return jamba_set_error(JAMBA_ERR_ARG, "jamba.causal_conv1d: out of memory");
    return JAMBA_OK;
}

jamba_status jamba_causal_conv1d_update_check(const jamba_causal_conv1d_update_params *p) {
    const char *op = "jamba.causal_conv1d_update";
    JAMBA_TRY(jamba_check_tensor(op, "x", &p->x, 3, JAMBA_FLOATS, 0));
    const int64_t B = p->x.shape[0], DI = p->x.shape[1], L = p->x.shape[2];
    JAMBA_TRY(jamba_conv_check_weight_bias(op, &p->weight, &p->bias, &p->x, DI));
    const int64_t K = p->weight.shape[1];
    JAMBA_TRY(jamba_check_tensor(op, "conv_state", &p->conv_state, 3, JAMBA_MASK(p->x.dtype), 0));
    const int64_t ssh[3] = {B, DI, -1}, osh[3] = {B, DI, L};
    JAMBA_TRY(jamba_check_shape(op, "conv_state", &p->conv_state, ssh));
    if (p->conv_state.shape[2] < K - 1)
        return jamba_set_error(JAMBA_ERR_SHAPE, "%s: conv_state must hold at least width-1 = %lld steps, got %lld",
                               op, (long long)(K - 1), (long long)p->conv_state.shape[2]);
    JAMBA_TRY(jamba_check_unit_stride(op, "conv_state", &p->conv_state, 2));
    JAMBA_TRY(jamba_check_dense(op, "out", &p->out, 3, JAMBA_MASK(p->x.dtype), osh));
    JAMBA_TRY(jamba_check_no_self_overlap(op, "conv_state", &p->conv_state));
    JAMBA_TRY(jamba_check_apart(op, "x", &p->x, "conv_state", &p->conv_state));
    JAMBA_TRY(jamba_check_apart(op, "weight", &p->weight, "conv_state", &p->conv_state));
    JAMBA_TRY(jamba_check_apart(op, "bias", &p->bias, "conv_state", &p->conv_state));
    JAMBA_TRY(jamba_check_apart(op, "out", &p->out, "conv_state", &p->conv_state));
    return JAMBA_OK;
}

/* The decode step in the HF cache layout, all f32 (L == 1, S == K == 4; see update_fast_ok): out[c] =
 * act(bias[c] + w[c, 0] h1 + w[c, 1] h2 + w[c, 2] h3 + w[c, 3] x[c]) over channels c < n of one batch row, state row
 * c (h0, h1, h2, h3) <- (h1, h2, h3, x[c]); the same sums in the same order as the general loop, vectorised over
 * channels, SiLU as a separate pass (jamba_silu_row). bias may be NULL; tmp: n floats. The general loop costs
 * ~20 ns a channel on one core (its per-element dtype switches and fused SiLU do not vectorise). */
JAMBA_CPU_CLONES
static void conv_update_row_f32(float *st, const float *x, float *restrict out, float *restrict tmp,
                                const float *restrict w, const float *restrict bias, int64_t n, int silu) {
#pragma omp simd
    for (int64_t c = 0; c < n; c++) {
        const float h1 = st[4 * c + 1], h2 = st[4 * c + 2], h3 = st[4 * c + 3], xv = x[c];
        out[c] = (bias ? bias[c] : 0.f) + w[4 * c] * h1 + w[4 * c + 1] * h2 + w[4 * c + 2] * h3 + w[4 * c + 3] * xv;
        st[4 * c] = h1, st[4 * c + 1] = h2, st[4 * c + 2] = h3, st[4 * c + 3] = xv;
    }
    if (silu) {
        memcpy(tmp, out, sizeof(float) * (size_t)n);
        jamba_silu_row(out, tmp, n);
    }
}
/* conv_update_row_f32 applies: f32 x / state / weight / bias, one step into a 4-entry state of a width-4 conv, state
 * rows of 4 contiguous entries, x with unit channel stride outside the state's memory (x may be a view of the state,
 * which the general loop handles), weight rows of 4 contiguous taps, bias contiguous */
static int update_fast_ok(const jamba_causal_conv1d_update_params *p) {
    const int64_t B = p->x.shape[0], DI = p->x.shape[1];
    if (!(p->x.dtype == JAMBA_F32 && p->weight.dtype == JAMBA_F32 && (!p->bias.data || p->bias.dtype == JAMBA_F32) &&
          p->x.shape[2] == 1 && p->weight.shape[1] == 4 && p->conv_state.shape[2] == 4 &&
          p->conv_state.stride[1] == 4 && p->x.stride[1] == 1 && p->weight.stride[0] == 4 &&
          p->weight.stride[1] == 1 && (!p->bias.data || p->bias.stride[0] == 1)))
        return 0;
    const char *xs = (const char *)p->x.data, *ss = (const char *)p->conv_state.data;
    const char *xe = xs + 4 * ((B - 1) * p->x.stride[0] + DI);
    const char *se = ss + 4 * ((B - 1) * p->conv_state.stride[0] + 4 * DI);
    return xe <= ss || se <= xs;
}

jamba_status jamba_causal_conv1d_update_cpu(const jamba_causal_conv1d_update_params *p) {
    JAMBA_TRY(jamba_causal_conv1d_update_check(p));
    const int64_t B = p->x.shape[0], DI = p->x.shape[1], L = p->x.shape[2], K = p->weight.shape[1];
    const int64_t S = p->conv_state.shape[2];
    const jamba_dtype dt = p->x.dtype;
    if (B > 0 && DI > 0 && update_fast_ok(p)) { /* in chunks of 1024 channels of one batch row */
        const int64_t nch = (DI + 1023) / 1024;
#pragma omp parallel for schedule(static) if (B * DI * (L + S) > JAMBA_OMP_MIN_WORK)
        for (int64_t q = 0; q < B * nch; q++) {
            float tmp[1024];
            const int64_t b = q / nch, c0 = (q % nch) * 1024, n = DI - c0 < 1024 ? DI - c0 : 1024;
            conv_update_row_f32((float *)p->conv_state.data + b * p->conv_state.stride[0] + 4 * c0,
                                (const float *)p->x.data + b * p->x.stride[0] + c0,
                                (float *)p->out.data + b * p->out.stride[0] + c0, tmp,
                                (const float *)p->weight.data + 4 * c0,
                                p->bias.data ? (const float *)p->bias.data + c0 : NULL, n, p->silu);
        }
        return JAMBA_OK;
    }
#pragma omp parallel for schedule(static) if (B * DI * (L + S) > JAMBA_OMP_MIN_WORK)
    for (int64_t bc = 0; bc < B * DI; bc++) {
        const int64_t b = bc / DI, c = bc % DI;
        float w[JAMBA_MAX_CONV_WIDTH] = {0}, bias = 0.f, win[JAMBA_MAX_CONV_WIDTH] = {0};
        for (int64_t j = 0; j < K; j++)
            w[j] = jamba_load(p->weight.data, p->weight.dtype, c * p->weight.stride[0] + j * p->weight.stride[1]);
        if (p->bias.data) bias = jamba_load(p->bias.data, p->bias.dtype, c * p->bias.stride[0]);
        const int64_t so = b * p->conv_state.stride[0] + c * p->conv_state.stride[1]; /* state row */
        const int64_t xo = b * p->x.stride[0] + c * p->x.stride[1];
        const int64_t oo = b * p->out.stride[0] + c * p->out.stride[1];
        for (int64_t j = 0; j < K - 1; j++) win[j] = jamba_load(p->conv_state.data, dt, so + S - (K - 1) + j);
        for (int64_t t = 0; t < L; t++) {
            win[K - 1] = jamba_load(p->x.data, dt, xo + t * p->x.stride[2]);
            float acc = bias;
            for (int64_t j = 0; j < K; j++) acc += w[j] * win[j];
            jamba_store(p->out.data, dt, oo + t, p->silu ? silu_f(acc) : acc);
            for (int64_t j = 0; j < K - 1; j++) win[j] = win[j + 1];
        }
        /* state <- last S entries of concat(state, x) */
        const int64_t keep = S > L ? S - L : 0;
        for (int64_t j = 0; j < keep; j++)
            jamba_store(p->conv_state.data, dt, so + j, jamba_load(p->conv_state.data, dt, so + j + L));
        for (int64_t j = keep; j < S; j++)
            jamba_store(p->conv_state.data, dt, so + j, jamba_load(p->x.data, dt, xo + (L - S + j) * p->x.stride[2]));
    }
    return JAMBA_OK;
}
