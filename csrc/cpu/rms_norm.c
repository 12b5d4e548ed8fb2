/* rms_norm.c -- RMSNorm and fused residual-add RMSNorm on the CPU (C11 + OpenMP over rows).
 *
 * Exports: jamba_rms_norm_check, jamba_rms_norm_cpu (rms_norm when p->residual is absent, add_rms_norm
 * when present), jamba_rms_norm_segments_check / _cpu (the same per segment of a row). Math (HF JambaRMSNorm), per row of dim elements:
 *   s   = residual ? round_x(x + residual) : x          (residual_out = s)
 *   r   = rsqrt(mean(float(s)^2) + eps)
 *   out = round_x( round_x(s * r) * float(weight) )
 * Statistics in fp32; out and residual_out are written (never accumulated).
 */
#include <math.h>
#include <stdlib.h>

#include "../common.h"

static const char *OP_NORM = "jamba.rms_norm";

/* One row in fp32: row[] holds s (already rounded to dtype dt); writes row[] = round(s * r) * w. */
JAMBA_CPU_CLONES
static void norm_row(float *row, const float *w, int64_t dim, float eps, jamba_dtype dt) {
    float ss = 0.f;
#pragma omp simd reduction(+ : ss)
    for (int64_t i = 0; i < dim; i++) ss += row[i] * row[i];
    const float inv = 1.0f / sqrtf(ss / (float)dim + eps);
    if (dt == JAMBA_F32) {
#pragma omp simd
        for (int64_t i = 0; i < dim; i++) row[i] = row[i] * inv * w[i];
    } else {
        for (int64_t i = 0; i < dim; i++) row[i] = jamba_round_to(dt, row[i] * inv) * w[i];
    }
}

jamba_status jamba_rms_norm_check(const jamba_rms_norm_params *p) {
    const char *op = p->residual.data ? "jamba.add_rms_norm" : OP_NORM;
    JAMBA_TRY(jamba_check_tensor(op, "x", &p->x, 2, JAMBA_FLOATS, 0));
    const int64_t rows = p->x.shape[0], dim = p->x.shape[1];
    const int64_t sh[2] = {rows, dim}, wsh[1] = {dim};
    JAMBA_TRY(jamba_check_unit_stride(op, "x", &p->x, 1));
    JAMBA_TRY(jamba_check_tensor(op, "weight", &p->weight, 1,
                                 JAMBA_MASK(JAMBA_F32) | JAMBA_MASK(p->x.dtype), 0));
    JAMBA_TRY(jamba_check_shape(op, "weight", &p->weight, wsh));
    JAMBA_TRY(jamba_check_unit_stride(op, "weight", &p->weight, 0));
    JAMBA_TRY(jamba_check_tensor(op, "out", &p->out, 2, JAMBA_MASK(p->x.dtype), 0));
    JAMBA_TRY(jamba_check_shape(op, "out", &p->out, sh));
    JAMBA_TRY(jamba_check_unit_stride(op, "out", &p->out, 1));
    if (p->residual.data) {
        JAMBA_TRY(jamba_check_tensor(op, "residual", &p->residual, 2, JAMBA_MASK(p->x.dtype), 0));
        JAMBA_TRY(jamba_check_shape(op, "residual", &p->residual, sh));
        JAMBA_TRY(jamba_check_unit_stride(op, "residual", &p->residual, 1));
        JAMBA_TRY(jamba_check_tensor(op, "residual_out", &p->residual_out, 2, JAMBA_MASK(p->x.dtype), 0));
        JAMBA_TRY(jamba_check_shape(op, "residual_out", &p->residual_out, sh));
        JAMBA_TRY(jamba_check_unit_stride(op, "residual_out", &p->residual_out, 1));
    }
    if (!(p->eps >= 0.0) || !isfinite(p->eps))
        return jamba_set_error(JAMBA_ERR_ARG, "%s: eps must be a finite number >= 0, got %g", op, p->eps);
    return JAMBA_OK;
}

jamba_status jamba_rms_norm_cpu(const jamba_rms_norm_params *p) {
    JAMBA_TRY(jamba_rms_norm_check(p));
    const int64_t rows = p->x.shape[0], dim = p->x.shape[1];
    if (rows == 0 || dim == 0) return JAMBA_OK;
    const jamba_dtype dt = p->x.dtype;
    const int has_res = p->residual.data != NULL;
    float *w = (float *)malloc((size_t)dim * sizeof(float));
    if (!w) return jamba_set_error(JAMBA_ERR_ARG, "jamba.rms_norm: out of memory (dim %lld)", (long long)dim);
    jamba_load_row(w, p->weight.data, p->weight.dtype, dim, 1);
    const int64_t es = jamba_dtype_size(dt);
    int oom = 0;
#pragma omp parallel if (rows * dim > JAMBA_OMP_MIN_WORK)
    {
        float *row = (float *)malloc((size_t)dim * sizeof(float));
        float *tmp = has_res ? (float *)malloc((size_t)dim * sizeof(float)) : NULL;
        if (!row || (has_res && !tmp)) {
#pragma omp atomic write
            oom = 1;
        } else {
#pragma omp for schedule(static)
            for (int64_t r = 0; r < rows; r++) {
                /* row r: x + r*stride_x (elements), out + r*stride_out */
                const char *xr = (const char *)p->x.data + r * p->x.stride[0] * es;
                jamba_load_row(row, xr, dt, dim, 1);
                if (has_res) {
                    const char *rr = (const char *)p->residual.data + r * p->residual.stride[0] * es;
                    jamba_load_row(tmp, rr, dt, dim, 1);
                    for (int64_t i = 0; i < dim; i++) row[i] = jamba_round_to(dt, row[i] + tmp[i]);
                    jamba_store_row((char *)p->residual_out.data + r * p->residual_out.stride[0] * es, dt, row,
                                    dim, 1);
                }
                norm_row(row, w, dim, (float)p->eps, dt);
                jamba_store_row((char *)p->out.data + r * p->out.stride[0] * es, dt, row, dim, 1);
            }
        }
        free(row);
        free(tmp);
    }
    free(w);
    if (oom) return jamba_set_error(JAMBA_ERR_ARG, "jamba.rms_norm: out of memory");
    return JAMBA_OK;
}

/* ---- rms_norm_segments ---------------------------------------------------------------------------------- */
jamba_status jamba_rms_norm_segments_check(const jamba_rms_norm_segments_params *p) {
    const char *op = "jamba.rms_norm_segments";
    JAMBA_TRY(jamba_check_tensor(op, "x", &p->x, 2, JAMBA_FLOATS, 0));
    const int64_t rows = p->x.shape[0], dim = p->x.shape[1];
    const int64_t sh[2] = {rows, dim}, wsh[1] = {dim};
    JAMBA_TRY(jamba_check_unit_stride(op, "x", &p->x, 1));
    JAMBA_TRY(jamba_check_tensor(op, "weight", &p->weight, 1, JAMBA_MASK(JAMBA_F32) | JAMBA_MASK(p->x.dtype), 0));
    JAMBA_TRY(jamba_check_shape(op, "weight", &p->weight, wsh));
    JAMBA_TRY(jamba_check_unit_stride(op, "weight", &p->weight, 0));
    JAMBA_TRY(jamba_check_tensor(op, "out", &p->out, 2, JAMBA_MASK(p->x.dtype), 0));
    JAMBA_TRY(jamba_check_shape(op, "out", &p->out, sh));
    JAMBA_TRY(jamba_check_unit_stride(op, "out", &p->out, 1));
    return jamba_norm_check_segments(op, p->nseg, p->ends, dim, p->eps);
}

jamba_status jamba_norm_check_segments(const char *op, int64_t nseg, const int64_t *ends, int64_t dim, double eps) {
    if (nseg < 1 || nseg > JAMBA_NORM_MAX_SEGS)
        return jamba_set_error(JAMBA_ERR_ARG, "%s: 1 to %d segments, got %lld", op, JAMBA_NORM_MAX_SEGS,
                               (long long)nseg);
    int64_t prev = 0;
    for (int64_t i = 0; i < nseg; i++) {
        if (ends[i] <= prev)
            return jamba_set_error(JAMBA_ERR_ARG, "%s: split points must be increasing and inside (0, %lld), got "
                                   "segment %lld ending at %lld after %lld", op, (long long)dim, (long long)i,
                                   (long long)ends[i], (long long)prev);
        prev = ends[i];
    }
    if (prev != dim)
        return jamba_set_error(JAMBA_ERR_ARG, "%s: split points must be inside (0, %lld), the last segment ends at "
                               "%lld", op, (long long)dim, (long long)prev);
    if (!(eps >= 0.0) || !isfinite(eps))
        return jamba_set_error(JAMBA_ERR_ARG, "%s: eps must be a finite number >= 0, got %g", op, eps);
    return JAMBA_OK;
}

jamba_status jamba_rms_norm_segments_cpu(const jamba_rms_norm_segments_params *p) {
    JAMBA_TRY(jamba_rms_norm_segments_check(p));
    const int64_t rows = p->x.shape[0], dim = p->x.shape[1];
    if (rows == 0) return JAMBA_OK;
    const jamba_dtype dt = p->x.dtype;
    const int64_t es = jamba_dtype_size(dt);
    float *w = (float *)malloc((size_t)dim * sizeof(float));
    if (!w) return jamba_set_error(JAMBA_ERR_ARG, "jamba.rms_norm_segments: out of memory (dim %lld)", (long long)dim);
    jamba_load_row(w, p->weight.data, p->weight.dtype, dim, 1);
    int oom = 0;
#pragma omp parallel if (rows * dim > JAMBA_OMP_MIN_WORK)
    {
        float *row = (float *)malloc((size_t)dim * sizeof(float));
        if (!row) {
#pragma omp atomic write
            oom = 1;
        } else {
#pragma omp for schedule(static)
            for (int64_t r = 0; r < rows; r++) {
                jamba_load_row(row, (const char *)p->x.data + r * p->x.stride[0] * es, dt, dim, 1);
                int64_t s0 = 0;
                for (int64_t i = 0; i < p->nseg; i++) {
                    norm_row(row + s0, w + s0, p->ends[i] - s0, (float)p->eps, dt);
                    s0 = p->ends[i];
                }
                jamba_store_row((char *)p->out.data + r * p->out.stride[0] * es, dt, row, dim, 1);
            }
        }
        free(row);
    }
    free(w);
    if (oom) return jamba_set_error(JAMBA_ERR_ARG, "jamba.rms_norm_segments: out of memory");
    return JAMBA_OK;
}
