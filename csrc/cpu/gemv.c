/* gemv.c -- out = x @ weight^T (+ bias) for a few rows of x, on the CPU.
 *
 * Exports: jamba_gemv_check (shared with csrc/cuda/gemv.cu), jamba_gemv_cpu.
 * Layout (csrc/jamba.h): x (M, K), weight (N, K), out (M, N), unit stride along the last dim, any row stride, one
 * float dtype; bias (N,) contiguous, x's dtype or f32, optional.
 * Math: out[m, n] = round_x( dot(x[m], w[n]) + bias[n] ), the dot in fp32 over 8 interleaved partial sums added in
 * a fixed order (the same bits with any thread count). x is converted to fp32 once; each thread converts one
 * weight row at a time and takes its dot with every row of x, so the weight is read once whatever M is.
 * The model keeps torch's F.linear on the CPU (its BLAS); this op exists so that every op runs on both backends.
 */
#include <stdlib.h>

#include "../common.h"

static const char *OP_GEMV = "jamba.gemv";

/* [first byte, last byte + 1) spanned by a 2-D tensor with unit stride along dim 1 */
static void span2(const jamba_tensor *t, const char **lo, const char **hi) {
    const int64_t es = jamba_dtype_size(t->dtype);
    *lo = (const char *)t->data;
    *hi = *lo + ((t->shape[0] - 1) * t->stride[0] + t->shape[1]) * es;
}

jamba_status jamba_gemv_check(const jamba_gemv_params *p) {
    const char *op = OP_GEMV;
    JAMBA_TRY(jamba_check_tensor(op, "x", &p->x, 2, JAMBA_FLOATS, 0));
    JAMBA_TRY(jamba_check_unit_stride(op, "x", &p->x, 1));
    const int64_t M = p->x.shape[0], K = p->x.shape[1];
    JAMBA_TRY(jamba_check_tensor(op, "weight", &p->weight, 2, JAMBA_MASK(p->x.dtype), 0));
    const int64_t wsh[2] = {-1, K};
    JAMBA_TRY(jamba_check_shape(op, "weight", &p->weight, wsh));
    JAMBA_TRY(jamba_check_unit_stride(op, "weight", &p->weight, 1));
    const int64_t N = p->weight.shape[0];
    JAMBA_TRY(jamba_check_tensor(op, "out", &p->out, 2, JAMBA_MASK(p->x.dtype), 0));
    const int64_t osh[2] = {M, N};
    JAMBA_TRY(jamba_check_shape(op, "out", &p->out, osh));
    JAMBA_TRY(jamba_check_unit_stride(op, "out", &p->out, 1));
    JAMBA_TRY(jamba_check_tensor(op, "bias", &p->bias, 1, JAMBA_MASK(JAMBA_F32) | JAMBA_MASK(p->x.dtype), 1));
    if (p->bias.data) {
        const int64_t bsh[1] = {N};
        JAMBA_TRY(jamba_check_shape(op, "bias", &p->bias, bsh));
        JAMBA_TRY(jamba_check_unit_stride(op, "bias", &p->bias, 0));
    }
    if (M > 1 && N > 0 && p->out.stride[0] < N)
        return jamba_set_error(JAMBA_ERR_ARG, "%s: out rows must not overlap (row stride %lld < %lld)", op,
                               (long long)p->out.stride[0], (long long)N);
    if (M > 0 && N > 0) {
        const char *o0, *o1, *a0, *a1;
        span2(&p->out, &o0, &o1);
        if (K > 0) {
            span2(&p->x, &a0, &a1);
            if (o0 < a1 && a0 < o1) return jamba_set_error(JAMBA_ERR_ARG, "%s: out must not overlap x in memory", op);
            span2(&p->weight, &a0, &a1);
            if (o0 < a1 && a0 < o1)
                return jamba_set_error(JAMBA_ERR_ARG, "%s: out must not overlap weight in memory", op);
        }
    }
    return JAMBA_OK;
}

/* dot of two fp32 rows over 8 interleaved partial sums, added pairwise in a fixed order */
JAMBA_CPU_CLONES
static float gemv_dot(const float *a, const float *b, int64_t K) {
    float s[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
    int64_t k = 0;
    for (; k + 8 <= K; k += 8)
        for (int j = 0; j < 8; j++) s[j] += a[k + j] * b[k + j];
    for (int j = 0; k + j < K; j++) s[j] += a[k + j] * b[k + j];
    return ((s[0] + s[4]) + (s[1] + s[5])) + ((s[2] + s[6]) + (s[3] + s[7]));
}

jamba_status jamba_gemv_cpu(const jamba_gemv_params *p) {
    JAMBA_TRY(jamba_gemv_check(p));
    const int64_t M = p->x.shape[0], K = p->x.shape[1], N = p->weight.shape[0];
    if (M == 0 || N == 0) return JAMBA_OK;
    const jamba_dtype dt = p->x.dtype;
    const int64_t es = jamba_dtype_size(dt);
    float *xf = (float *)malloc((size_t)(M * K > 0 ? M * K : 1) * sizeof(float));
    if (!xf) return jamba_set_error(JAMBA_ERR_ARG, "%s: out of memory (x: %lld x %lld)", OP_GEMV, (long long)M,
                                    (long long)K);
    for (int64_t m = 0; m < M; m++)
        jamba_load_row(xf + m * K, (const char *)p->x.data + m * p->x.stride[0] * es, dt, K, 1);
    int oom = 0;
#pragma omp parallel if (N * K * (M < 8 ? M : 8) > JAMBA_OMP_MIN_WORK)
    {
        float *wr = (float *)malloc((size_t)(K > 0 ? K : 1) * sizeof(float));
        if (!wr) {
#pragma omp atomic write
            oom = 1;
        } else {
#pragma omp for schedule(static)
            for (int64_t n = 0; n < N; n++) {
                jamba_load_row(wr, (const char *)p->weight.data + n * p->weight.stride[0] * es, dt, K, 1);
                const float b = p->bias.data ? jamba_load(p->bias.data, p->bias.dtype, n) : 0.f;
                for (int64_t m = 0; m < M; m++)
                    jamba_store((char *)p->out.data + m * p->out.stride[0] * es, dt, n,
                                gemv_dot(xf + m * K, wr, K) + b);
            }
        }
        free(wr);
    }
    free(xf);
    if (oom) return jamba_set_error(JAMBA_ERR_ARG, "%s: out of memory (a row of %lld)", OP_GEMV, (long long)K);
    return JAMBA_OK;
}
