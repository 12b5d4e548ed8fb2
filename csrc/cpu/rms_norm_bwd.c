/* rms_norm_bwd.c -- gradients of rms_norm / rms_norm_segments on the CPU (training), and the argument checks shared
 * with csrc/cuda/rms_norm_bwd.cu.
 *
 * Exports: jamba_rms_norm_bwd_check / _cpu, jamba_rms_norm_bwd_ws_elems (the CUDA workspace size).
 * Math: csrc/jamba.h (rms_norm_bwd). Two passes: rows in parallel (each row's r per segment, its dx; the segment
 * sums in double), then column blocks in parallel for dweight, the rows of each column summed in order 0..rows-1
 * (in double), so the result does not depend on the thread count. Outputs written once, never accumulated.
 */
#include <math.h>
#include <stdlib.h>

#include "../common.h"

static const char *OP = "jamba.rms_norm_bwd";

int64_t jamba_rms_norm_bwd_ws_elems(int64_t rows, int64_t dim) {
    const int64_t groups = (rows + JAMBA_NORM_BWD_ROWS - 1) / JAMBA_NORM_BWD_ROWS;
    return rows * JAMBA_NORM_MAX_SEGS + groups * dim;
}

jamba_status jamba_rms_norm_bwd_check(const jamba_rms_norm_bwd_params *p) {
    JAMBA_TRY(jamba_check_tensor(OP, "x", &p->x, 2, JAMBA_FLOATS, 0));
    JAMBA_TRY(jamba_check_unit_stride(OP, "x", &p->x, 1));
    const int64_t rows = p->x.shape[0], dim = p->x.shape[1];
    const int64_t sh[2] = {rows, dim}, wsh[1] = {dim};
    JAMBA_TRY(jamba_check_tensor(OP, "weight", &p->weight, 1, JAMBA_MASK(JAMBA_F32) | JAMBA_MASK(p->x.dtype), 0));
    JAMBA_TRY(jamba_check_shape(OP, "weight", &p->weight, wsh));
    JAMBA_TRY(jamba_check_unit_stride(OP, "weight", &p->weight, 0));
    JAMBA_TRY(jamba_check_tensor(OP, "dy", &p->dy, 2, JAMBA_MASK(p->x.dtype), 0));
    JAMBA_TRY(jamba_check_shape(OP, "dy", &p->dy, sh));
    JAMBA_TRY(jamba_check_unit_stride(OP, "dy", &p->dy, 1));
    JAMBA_TRY(jamba_check_tensor(OP, "dx", &p->dx, 2, JAMBA_MASK(p->x.dtype), 0));
    JAMBA_TRY(jamba_check_shape(OP, "dx", &p->dx, sh));
    JAMBA_TRY(jamba_check_contiguous(OP, "dx", &p->dx));
    JAMBA_TRY(jamba_check_tensor(OP, "dweight", &p->dweight, 1, JAMBA_MASK(JAMBA_F32), 0));
    JAMBA_TRY(jamba_check_shape(OP, "dweight", &p->dweight, wsh));
    JAMBA_TRY(jamba_check_contiguous(OP, "dweight", &p->dweight));
    JAMBA_TRY(jamba_norm_check_segments(OP, p->nseg, p->ends, dim, p->eps));
    const jamba_tensor *outs[] = {&p->dx, &p->dweight}, *ins[] = {&p->x, &p->weight, &p->dy};
    const char *onames[] = {"dx", "dweight"}, *inames[] = {"x", "weight", "dy"};
    for (int i = 0; i < 2; i++)
        for (int j = 0; j < 3; j++)
            if (jamba_tensors_overlap(outs[i], ins[j]))
                return jamba_set_error(JAMBA_ERR_ARG, "%s: %s must not overlap %s in memory", OP, onames[i],
                                       inames[j]);
    if (jamba_tensors_overlap(&p->dx, &p->dweight))
        return jamba_set_error(JAMBA_ERR_ARG, "%s: dx must not overlap dweight in memory", OP);
    return JAMBA_OK;
}

jamba_status jamba_rms_norm_bwd_cpu(const jamba_rms_norm_bwd_params *p) {
    JAMBA_TRY(jamba_rms_norm_bwd_check(p));
    const int64_t rows = p->x.shape[0], dim = p->x.shape[1], ns = p->nseg;
    const jamba_dtype dt = p->x.dtype;
    const int64_t es = jamba_dtype_size(dt), lx = p->x.stride[0], ld = p->dy.stride[0];
    float *dW = (float *)p->dweight.data;
    if (dim == 0) return JAMBA_OK;
    float *w = (float *)malloc(sizeof(float) * (size_t)dim);
    float *rr = (float *)malloc(sizeof(float) * (size_t)(rows * ns + 1));
    if (!w || !rr) {
        free(w);
        free(rr);
        return jamba_set_error(JAMBA_ERR_ARG, "%s: out of memory", OP);
    }
    jamba_load_row(w, p->weight.data, p->weight.dtype, dim, 1);
    int oom = 0;
#pragma omp parallel if (rows * dim > JAMBA_OMP_MIN_WORK)
    {
        float *buf = (float *)malloc(sizeof(float) * (size_t)(3 * dim));
        if (!buf) {
#pragma omp atomic write
            oom = 1;
        } else {
            float *x = buf, *g = buf + dim, *o = buf + 2 * dim;
#pragma omp for schedule(static)
            for (int64_t m = 0; m < rows; m++) {
                jamba_load_row(x, (const char *)p->x.data + m * lx * es, dt, dim, 1);
                jamba_load_row(g, (const char *)p->dy.data + m * ld * es, dt, dim, 1);
                int64_t a = 0;
                for (int64_t s = 0; s < ns; s++) {
                    const int64_t e = p->ends[s], n = e - a;
                    double sxx = 0.0, sgx = 0.0;
                    for (int64_t i = a; i < e; i++) {
                        sxx += (double)x[i] * x[i];
                        sgx += (double)g[i] * w[i] * x[i];
                    }
                    const float r = 1.0f / sqrtf((float)(sxx / (double)n) + (float)p->eps);
                    const float c = (float)(sgx / (double)n) * r * r * r;
                    for (int64_t i = a; i < e; i++) o[i] = r * g[i] * w[i] - x[i] * c;
                    rr[m * ns + s] = r;
                    a = e;
                }
                jamba_store_row((char *)p->dx.data + m * dim * es, dt, o, dim, 1);
            }
            free(buf);
        }
    }
    if (!oom) {
        /* dweight: column blocks of 64 in parallel, rows in order */
        const int64_t nb = (dim + 63) / 64;
#pragma omp parallel for schedule(static) if (rows * dim > JAMBA_OMP_MIN_WORK)
        for (int64_t cb = 0; cb < nb; cb++) {
            const int64_t c0 = cb * 64, c1 = c0 + 64 < dim ? c0 + 64 : dim;
            double acc[64] = {0};
            int seg[64];
            for (int64_t i = c0; i < c1; i++) {
                int s = 0;
                while (p->ends[s] <= i) s++;
                seg[i - c0] = s;
            }
            for (int64_t m = 0; m < rows; m++) {
                const char *xr = (const char *)p->x.data + m * lx * es, *gr = (const char *)p->dy.data + m * ld * es;
                for (int64_t i = c0; i < c1; i++) {
                    const float xh = jamba_round_to(dt, jamba_load(xr, dt, i) * rr[m * ns + seg[i - c0]]);
                    acc[i - c0] += (double)jamba_load(gr, dt, i) * xh;
                }
            }
            for (int64_t i = c0; i < c1; i++) dW[i] = (float)acc[i - c0];
        }
    }
    free(w);
    free(rr);
    if (oom) return jamba_set_error(JAMBA_ERR_ARG, "%s: out of memory", OP);
    return JAMBA_OK;
}
