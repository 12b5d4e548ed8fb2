/* cross_entropy.c -- the language-model loss per row of logits and its gradient, on the CPU (training).
 *
 * Exports: jamba_cross_entropy_check / _cpu, jamba_cross_entropy_bwd_check / _cpu (the checks are shared with
 * csrc/cuda/cross_entropy.cu).
 * Layout (csrc/jamba.h): logits (N, V) f32|f16|bf16, unit stride along V, any row stride; target (N,) i64|i32
 * contiguous; loss, lse, dloss (N,) f32 contiguous; dlogits (N, V) contiguous, logits' dtype.
 * Math: lse = max + log(sum exp(x - max)), the exps through the vectorisable jamba_exp2f (rel. error < 2e-7) summed in
 * fp32 over 4096-term blocks and the blocks in double; loss = lse - x[target] (0 when the target is ignore_index);
 * dlogits = round_x((exp(x - lse) - onehot) * dloss). A row is converted to fp32 once into a
 * per-thread buffer; rows are independent (OpenMP over rows).
 * NaN and -inf (as jamba_ext/reference.py and torch): a row with a NaN logit has lse and loss NaN (all NaN included:
 * the max skips NaNs, the sum does not); a row of -inf only has lse -inf and loss NaN; the gradient of either is NaN
 * everywhere (exp(x - lse) is NaN for every x there, -inf included). Ignored rows: loss and gradient 0 whatever they
 * hold.
 */
#include <math.h>
#include <stdlib.h>

#include "../common.h"

static const char *OP_CE = "jamba.cross_entropy";
static const char *OP_CE_BWD = "jamba.cross_entropy_bwd";

#define I32 JAMBA_MASK(JAMBA_I32)
#define I64 JAMBA_MASK(JAMBA_I64)

static int64_t target_at(const jamba_tensor *t, int64_t n) {
    return t->dtype == JAMBA_I64 ? ((const int64_t *)t->data)[n] : (int64_t)((const int32_t *)t->data)[n];
}

/* logits (N, V) and target (N,): the checks both ops share */
static jamba_status check_logits_target(const char *op, const jamba_tensor *logits, const jamba_tensor *target) {
    JAMBA_TRY(jamba_check_tensor(op, "logits", logits, 2, JAMBA_FLOATS, 0));
    JAMBA_TRY(jamba_check_unit_stride(op, "logits", logits, 1));
    const int64_t N = logits->shape[0], V = logits->shape[1];
    if (V < 1) return jamba_set_error(JAMBA_ERR_SHAPE, "%s: logits must have at least one column (V >= 1), got V = %lld",
                                      op, (long long)V);
    if (N > 1 && logits->stride[0] < V)
        return jamba_set_error(JAMBA_ERR_ARG, "%s: logits rows must not overlap (row stride %lld < V = %lld)", op,
                               (long long)logits->stride[0], (long long)V);
    JAMBA_TRY(jamba_check_tensor(op, "target", target, 1, I32 | I64, 0));
    const int64_t tsh[1] = {N};
    JAMBA_TRY(jamba_check_shape(op, "target", target, tsh));
    return jamba_check_contiguous(op, "target", target);
}

static jamba_status check_rows_f32(const char *op, const char *name, const jamba_tensor *t, int64_t N) {
    JAMBA_TRY(jamba_check_tensor(op, name, t, 1, JAMBA_MASK(JAMBA_F32), 0));
    const int64_t sh[1] = {N};
    JAMBA_TRY(jamba_check_shape(op, name, t, sh));
    return jamba_check_contiguous(op, name, t);
}

/* the CPU's error for a target outside [0, V) that is not ignore_index (CUDA gives NaN instead: no host sync) */
static jamba_status check_targets_cpu(const char *op, const jamba_tensor *target, int64_t N, int64_t V, int64_t ign) {
    for (int64_t n = 0; n < N; n++) {
        const int64_t t = target_at(target, n);
        if (t != ign && (t < 0 || t >= V))
            return jamba_set_error(JAMBA_ERR_ARG, "%s: target[%lld] = %lld is outside [0, %lld) and is not "
                                   "ignore_index (%lld)", op, (long long)n, (long long)t, (long long)V, (long long)ign);
    }
    return JAMBA_OK;
}

jamba_status jamba_cross_entropy_check(const jamba_cross_entropy_params *p) {
    const char *op = OP_CE;
    JAMBA_TRY(check_logits_target(op, &p->logits, &p->target));
    const int64_t N = p->logits.shape[0];
    JAMBA_TRY(check_rows_f32(op, "loss", &p->loss, N));
    JAMBA_TRY(check_rows_f32(op, "lse", &p->lse, N));
    const jamba_tensor *outs[] = {&p->loss, &p->lse};
    const char *names[] = {"loss", "lse"};
    for (int i = 0; i < 2; i++)
        if (jamba_tensors_overlap(outs[i], &p->logits) || jamba_tensors_overlap(outs[i], &p->target) ||
            jamba_tensors_overlap(outs[i], outs[1 - i]))
            return jamba_set_error(JAMBA_ERR_ARG, "%s: %s must not overlap another argument in memory", op, names[i]);
    return JAMBA_OK;
}

jamba_status jamba_cross_entropy_bwd_check(const jamba_cross_entropy_bwd_params *p) {
    const char *op = OP_CE_BWD;
    JAMBA_TRY(check_logits_target(op, &p->logits, &p->target));
    const int64_t N = p->logits.shape[0], V = p->logits.shape[1];
    JAMBA_TRY(check_rows_f32(op, "lse", &p->lse, N));
    JAMBA_TRY(check_rows_f32(op, "dloss", &p->dloss, N));
    JAMBA_TRY(jamba_check_tensor(op, "dlogits", &p->dlogits, 2, JAMBA_MASK(p->logits.dtype), 0));
    const int64_t sh[2] = {N, V};
    JAMBA_TRY(jamba_check_shape(op, "dlogits", &p->dlogits, sh));
    JAMBA_TRY(jamba_check_contiguous(op, "dlogits", &p->dlogits));
    const jamba_tensor *ins[] = {&p->logits, &p->target, &p->lse, &p->dloss};
    const char *names[] = {"logits", "target", "lse", "dloss"};
    for (int i = 0; i < 4; i++)
        if (jamba_tensors_overlap(&p->dlogits, ins[i]))
            return jamba_set_error(JAMBA_ERR_ARG, "%s: dlogits must not overlap %s in memory", op, names[i]);
    return JAMBA_OK;
}

/* max and sum of exp(x - max) over a row (fp32; the exps through the vectorisable jamba_exp2f, summed in fp32 lanes
 * then in double): the loops vectorise in the AVX2 clone */
JAMBA_CPU_CLONES
static void row_max_sumexp(const float *restrict row, int64_t V, float *m_out, double *s_out) {
    float m = -INFINITY;
#pragma omp simd reduction(max : m)
    for (int64_t v = 0; v < V; v++) m = row[v] > m ? row[v] : m;
    double s = 0.0;
    int nan = 0;
    for (int64_t v = 0; v < V; v++) nan |= row[v] != row[v];
    if (nan) s = NAN;
    else if (m != -INFINITY) {  /* every logit -inf: lse = -inf */
        for (int64_t v0 = 0; v0 < V; v0 += 4096) {  /* fp32 partial sums of 4096 terms, added in double */
            const int64_t v1 = v0 + 4096 < V ? v0 + 4096 : V;
            float part = 0.f;
#pragma omp simd reduction(+ : part)
            for (int64_t v = v0; v < v1; v++) {  /* (x - m) first: the exponent's rounding relative to it, not to x */
                const float e = jamba_exp2f((row[v] - m) * JAMBA_LOG2E);
                part += row[v] == -INFINITY ? 0.f : e;  /* exp2f clamps to 2^-125: a masked word adds nothing */
            }
            s += (double)part;
        }
    }
    *m_out = m, *s_out = s;
}

/* the forward of row n: lse and loss from the row converted to fp32 */
static void fwd_row(const void *ctx, int64_t n, float *row) {
    const jamba_cross_entropy_params *p = (const jamba_cross_entropy_params *)ctx;
    const int64_t V = p->logits.shape[1], es = (int64_t)jamba_dtype_size(p->logits.dtype);
    jamba_load_row(row, (const char *)p->logits.data + n * p->logits.stride[0] * es, p->logits.dtype, V, 1);
    float m;
    double s;
    row_max_sumexp(row, V, &m, &s);
    /* (s NaN: NaN, also where m is -inf: a row of NaNs; m = +inf: NaN) */
    const float l = m == -INFINITY && s == 0.0 ? -INFINITY : m + (float)log(s);
    ((float *)p->lse.data)[n] = l;
    const int64_t t = target_at(&p->target, n);
    ((float *)p->loss.data)[n] = t == p->ignore_index ? 0.f : l - row[t];
}

/* row[v] = exp(row[v] - l) * d (vectorised; row[v] - l = -inf, a -inf logit under a finite or +inf lse, gives exactly
 * 0; NaN where it is NaN: an lse that is NaN, or -inf with the logit) */
JAMBA_CPU_CLONES
static void row_softmax_scaled(float *restrict row, int64_t V, float l, float d) {
#pragma omp simd
    for (int64_t v = 0; v < V; v++) {
        const float z = row[v] - l, e = jamba_exp2f(z * JAMBA_LOG2E) * d;
        row[v] = z == -INFINITY ? 0.f * d : e;
    }
}

/* the backward of row n: dlogits, row the fp32 buffer */
static void bwd_row(const void *ctx, int64_t n, float *row) {
    const jamba_cross_entropy_bwd_params *p = (const jamba_cross_entropy_bwd_params *)ctx;
    const jamba_dtype dt = p->logits.dtype;
    const int64_t V = p->logits.shape[1], es = (int64_t)jamba_dtype_size(dt);
    const int64_t t = target_at(&p->target, n);
    if (t == p->ignore_index) {
        for (int64_t v = 0; v < V; v++) row[v] = 0.f;
    } else {
        jamba_load_row(row, (const char *)p->logits.data + n * p->logits.stride[0] * es, dt, V, 1);
        const float l = ((const float *)p->lse.data)[n], d = ((const float *)p->dloss.data)[n], xt = row[t];
        row_softmax_scaled(row, V, l, d);
        row[t] = (expf(xt - l) - 1.f) * d;
    }
    jamba_store_row((char *)p->dlogits.data + n * V * es, dt, row, V, 1);
}

/* row_fn(ctx, n, buffer) for every row n < N, OpenMP over rows, a V-float buffer per thread */
static jamba_status for_rows(const char *op, int64_t N, int64_t V, void (*row_fn)(const void *, int64_t, float *),
                             const void *ctx) {
    int failed = 0;
#pragma omp parallel if (N * V >= JAMBA_OMP_MIN_WORK)
    {
        float *row = (float *)malloc((size_t)V * sizeof(float));
        if (!row) {
#pragma omp atomic write
            failed = 1;
        }
#pragma omp for schedule(static)
        for (int64_t n = 0; n < N; n++)
            if (row) row_fn(ctx, n, row);
        free(row);
    }
    if (failed) return jamba_set_error(JAMBA_ERR_ARG, "%s: out of memory for a row buffer of %lld floats", op,
                                       (long long)V);
    return JAMBA_OK;
}

jamba_status jamba_cross_entropy_cpu(const jamba_cross_entropy_params *p) {
    JAMBA_TRY(jamba_cross_entropy_check(p));
    const int64_t N = p->logits.shape[0], V = p->logits.shape[1];
    JAMBA_TRY(check_targets_cpu(OP_CE, &p->target, N, V, p->ignore_index));
    return for_rows(OP_CE, N, V, fwd_row, p);
}

jamba_status jamba_cross_entropy_bwd_cpu(const jamba_cross_entropy_bwd_params *p) {
    JAMBA_TRY(jamba_cross_entropy_bwd_check(p));
    const int64_t N = p->logits.shape[0], V = p->logits.shape[1];
    JAMBA_TRY(check_targets_cpu(OP_CE_BWD, &p->target, N, V, p->ignore_index));
    return for_rows(OP_CE_BWD, N, V, bwd_row, p);
}
