/* selective_scan.c -- Mamba-1 selective scan forward and its one-step decode update, on the CPU.
 *
 * Exports: jamba_selective_scan_check / _cpu, jamba_selective_state_update_check / _cpu.
 * Math, per batch b and channel c, state h (N,) in fp32:
 *   dt = delta[t] + delta_bias[c];  if softplus: dt = dt <= 20 ? log1p(exp(dt)) : dt
 *   h  = exp(dt * A[c,:]) * h + dt * B[:,t] * u[t]
 *   y  = sum_n h[n] * C[n,t] + D[c] * u[t];   if z: y *= z[t] * sigmoid(z[t]);   out[t] = round(y)
 * Work split: time in chunks of TCHUNK; per chunk B and C of the batch are converted once to fp32 (t, n)
 * tiles shared by all channels, then OpenMP threads run the recurrence over channels, each keeping its
 * h in registers for the chunk. exp() runs through a vectorisable exp2 (range reduction + polynomial,
 * rel. error < 2e-7) with A pre-scaled by log2(e).
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "../common.h"

#define TCHUNK 256
#define LOG2E 1.4426950408889634f

/* 2^x for x <= 0 (dt*A is never positive for A < 0; positive x is clamped at 64 to stay finite) */
static inline float exp2_poly(float x) {
    x = x < -126.0f ? -126.0f : (x > 64.0f ? 64.0f : x);
    const float xi = floorf(x + 0.5f);
    const float f = x - xi; /* [-0.5, 0.5] */
    /* 2^f = e^(f ln2): degree-6 Taylor polynomial in f*ln2, |f ln2| <= 0.347, rel. error < 2e-8 + rounding */
    const float g = f * 0.6931471805599453f;
    float p = 1.0f / 720.0f;
    p = p * g + 1.0f / 120.0f;
    p = p * g + 1.0f / 24.0f;
    p = p * g + 1.0f / 6.0f;
    p = p * g + 0.5f;
    p = p * g + 1.0f;
    p = p * g + 1.0f;
    int32_t bits = ((int32_t)xi + 127) << 23;
    float scale;
    memcpy(&scale, &bits, 4);
    return p * scale;
}

static inline float softplus_f(float v) { return v <= 20.0f ? log1pf(expf(v)) : v; }
static inline float silu_f(float v) { return v / (1.0f + expf(-v)); }

static jamba_status check_param_vec(const char *op, const char *name, const jamba_tensor *t, int64_t DI) {
    JAMBA_TRY(jamba_check_tensor(op, name, t, 1, JAMBA_MASK(JAMBA_F32), 1));
    const int64_t sh[1] = {DI};
    if (t->data) JAMBA_TRY(jamba_check_shape(op, name, t, sh));
    return JAMBA_OK;
}

static jamba_status check_A(const char *op, const jamba_tensor *A, int64_t DI) {
    JAMBA_TRY(jamba_check_tensor(op, "A", A, 2, JAMBA_MASK(JAMBA_F32), 0));
    const int64_t N = A->shape[1], sh[2] = {DI, -1};
    JAMBA_TRY(jamba_check_shape(op, "A", A, sh));
    if (N < 1 || N > JAMBA_MAX_D_STATE)
        return jamba_set_error(JAMBA_ERR_ARG, "%s: A: d_state must be in 1..%d, got %lld", op, JAMBA_MAX_D_STATE,
                               (long long)N);
    return JAMBA_OK;
}

jamba_status jamba_selective_scan_check(const jamba_selective_scan_params *p) {
    const char *op = "jamba.selective_scan";
    JAMBA_TRY(jamba_check_tensor(op, "u", &p->u, 3, JAMBA_FLOATS, 0));
    JAMBA_TRY(jamba_check_unit_stride(op, "u", &p->u, 2));
    const int64_t B = p->u.shape[0], DI = p->u.shape[1], L = p->u.shape[2];
    const int64_t act[3] = {B, DI, L};
    JAMBA_TRY(jamba_check_tensor(op, "delta", &p->delta, 3, JAMBA_MASK(p->u.dtype), 0));
    JAMBA_TRY(jamba_check_shape(op, "delta", &p->delta, act));
    JAMBA_TRY(jamba_check_unit_stride(op, "delta", &p->delta, 2));
    JAMBA_TRY(check_A(op, &p->A, DI));
    const int64_t N = p->A.shape[1];
    const int64_t bsh[3] = {B, N, L};
    JAMBA_TRY(jamba_check_tensor(op, "B", &p->Bm, 3, JAMBA_MASK(JAMBA_F32) | JAMBA_MASK(p->u.dtype), 0));
    JAMBA_TRY(jamba_check_shape(op, "B", &p->Bm, bsh));
    JAMBA_TRY(jamba_check_tensor(op, "C", &p->Cm, 3, JAMBA_MASK(JAMBA_F32) | JAMBA_MASK(p->u.dtype), 0));
    JAMBA_TRY(jamba_check_shape(op, "C", &p->Cm, bsh));
    JAMBA_TRY(check_param_vec(op, "D", &p->D, DI));
    JAMBA_TRY(check_param_vec(op, "delta_bias", &p->delta_bias, DI));
    JAMBA_TRY(jamba_check_tensor(op, "z", &p->z, 3, JAMBA_MASK(p->u.dtype), 1));
    if (p->z.data) {
        JAMBA_TRY(jamba_check_shape(op, "z", &p->z, act));
        JAMBA_TRY(jamba_check_unit_stride(op, "z", &p->z, 2));
    }
    const int64_t ssh[3] = {B, DI, N};
    JAMBA_TRY(jamba_check_tensor(op, "initial_state", &p->initial_state, 3, JAMBA_MASK(JAMBA_F32), 1));
    if (p->initial_state.data) {
        JAMBA_TRY(jamba_check_shape(op, "initial_state", &p->initial_state, ssh));
        JAMBA_TRY(jamba_check_unit_stride(op, "initial_state", &p->initial_state, 2));
    }
    JAMBA_TRY(jamba_check_tensor(op, "last_state", &p->last_state, 3, JAMBA_MASK(JAMBA_F32), 1));
    if (p->last_state.data) {
        JAMBA_TRY(jamba_check_shape(op, "last_state", &p->last_state, ssh));
        JAMBA_TRY(jamba_check_contiguous(op, "last_state", &p->last_state));
    }
    JAMBA_TRY(jamba_check_tensor(op, "out", &p->out, 3, JAMBA_MASK(p->u.dtype), 0));
    JAMBA_TRY(jamba_check_shape(op, "out", &p->out, act));
    JAMBA_TRY(jamba_check_contiguous(op, "out", &p->out));
    return JAMBA_OK;
}

jamba_status jamba_selective_scan_cpu(const jamba_selective_scan_params *p) {
    JAMBA_TRY(jamba_selective_scan_check(p));
    const int64_t B = p->u.shape[0], DI = p->u.shape[1], L = p->u.shape[2], N = p->A.shape[1];
    if (B == 0 || DI == 0) return JAMBA_OK;
    const jamba_dtype dt = p->u.dtype;
    const int64_t es = jamba_dtype_size(dt);
    float *h_all = (float *)malloc(sizeof(float) * (size_t)(DI * N));        /* state of batch b */
    float *bt = (float *)malloc(sizeof(float) * (size_t)(TCHUNK * N * 2));  /* B, C tiles (t, n) */
    if (!h_all || !bt) {
        free(h_all);
        free(bt);
        return jamba_set_error(JAMBA_ERR_ARG, "jamba.selective_scan: out of memory");
    }
    float *ct = bt + TCHUNK * N;
    for (int64_t b = 0; b < B; b++) {
        if (p->initial_state.data) {
            for (int64_t c = 0; c < DI; c++)
                for (int64_t n = 0; n < N; n++)
                    h_all[c * N + n] = ((const float *)p->initial_state.data)[b * p->initial_state.stride[0] +
                                                                              c * p->initial_state.stride[1] + n];
        } else {
            memset(h_all, 0, sizeof(float) * (size_t)(DI * N));
        }
        for (int64_t t0 = 0; t0 < L; t0 += TCHUNK) {
            const int64_t nt = L - t0 < TCHUNK ? L - t0 : TCHUNK;
            for (int64_t t = 0; t < nt; t++)
                for (int64_t n = 0; n < N; n++) {
                    bt[t * N + n] = jamba_load(p->Bm.data, p->Bm.dtype,
                                               b * p->Bm.stride[0] + n * p->Bm.stride[1] + (t0 + t) * p->Bm.stride[2]);
                    ct[t * N + n] = jamba_load(p->Cm.data, p->Cm.dtype,
                                               b * p->Cm.stride[0] + n * p->Cm.stride[1] + (t0 + t) * p->Cm.stride[2]);
                }
#pragma omp parallel
            {
                float ub[TCHUNK], db[TCHUNK], zb[TCHUNK], yb[TCHUNK];
                float a2[JAMBA_MAX_D_STATE], h[JAMBA_MAX_D_STATE], dA[JAMBA_MAX_D_STATE];
#pragma omp for schedule(static)
                for (int64_t c = 0; c < DI; c++) {
                    /* rows (b, c): u/delta/z + b*s0 + c*s1 (elements), unit stride along time */
                    const char *ur = (const char *)p->u.data + (b * p->u.stride[0] + c * p->u.stride[1] + t0) * es;
                    const char *dr = (const char *)p->delta.data +
                                     (b * p->delta.stride[0] + c * p->delta.stride[1] + t0) * es;
                    jamba_load_row(ub, ur, dt, nt, 1);
                    jamba_load_row(db, dr, dt, nt, 1);
                    const float dbias = p->delta_bias.data ? ((const float *)p->delta_bias.data)[c * p->delta_bias.stride[0]] : 0.f;
                    const float Dc = p->D.data ? ((const float *)p->D.data)[c * p->D.stride[0]] : 0.f;
                    for (int64_t n = 0; n < N; n++) {
                        a2[n] = ((const float *)p->A.data)[c * p->A.stride[0] + n * p->A.stride[1]] * LOG2E;
                        h[n] = h_all[c * N + n];
                    }
                    for (int64_t t = 0; t < nt; t++) {
                        float d = db[t] + dbias;
                        if (p->delta_softplus) d = softplus_f(d);
                        const float du = d * ub[t];
                        const float *bn = bt + t * N, *cn = ct + t * N;
                        float y = 0.f;
#pragma omp simd
                        for (int64_t n = 0; n < N; n++) dA[n] = exp2_poly(d * a2[n]);
#pragma omp simd reduction(+ : y)
                        for (int64_t n = 0; n < N; n++) {
                            h[n] = dA[n] * h[n] + du * bn[n];
                            y += h[n] * cn[n];
                        }
                        yb[t] = y + Dc * ub[t];
                    }
                    if (p->z.data) {
                        const char *zr = (const char *)p->z.data + (b * p->z.stride[0] + c * p->z.stride[1] + t0) * es;
                        jamba_load_row(zb, zr, dt, nt, 1);
                        for (int64_t t = 0; t < nt; t++) yb[t] *= silu_f(zb[t]);
                    }
                    /* out is contiguous (B, DI, L) */
                    jamba_store_row((char *)p->out.data + ((b * DI + c) * L + t0) * es, dt, yb, nt, 1);
                    for (int64_t n = 0; n < N; n++) h_all[c * N + n] = h[n];
                }
            }
        }
        if (p->last_state.data)
            memcpy((float *)p->last_state.data + b * DI * N, h_all, sizeof(float) * (size_t)(DI * N));
    }
    free(h_all);
    free(bt);
    return JAMBA_OK;
}

jamba_status jamba_selective_state_update_check(const jamba_selective_state_update_params *p) {
    const char *op = "jamba.selective_state_update";
    JAMBA_TRY(jamba_check_tensor(op, "x", &p->x, 2, JAMBA_FLOATS, 0));
    JAMBA_TRY(jamba_check_unit_stride(op, "x", &p->x, 1));
    const int64_t B = p->x.shape[0], DI = p->x.shape[1];
    const int64_t act[2] = {B, DI};
    JAMBA_TRY(check_A(op, &p->A, DI));
    const int64_t N = p->A.shape[1];
    JAMBA_TRY(jamba_check_tensor(op, "state", &p->state, 3, JAMBA_FLOATS, 0));
    const int64_t ssh[3] = {B, DI, N}, bsh[2] = {B, N};
    JAMBA_TRY(jamba_check_shape(op, "state", &p->state, ssh));
    JAMBA_TRY(jamba_check_unit_stride(op, "state", &p->state, 2));
    JAMBA_TRY(jamba_check_tensor(op, "dt", &p->dt, 2, JAMBA_MASK(p->x.dtype), 0));
    JAMBA_TRY(jamba_check_shape(op, "dt", &p->dt, act));
    JAMBA_TRY(jamba_check_unit_stride(op, "dt", &p->dt, 1));
    JAMBA_TRY(jamba_check_tensor(op, "B", &p->Bm, 2, JAMBA_MASK(JAMBA_F32) | JAMBA_MASK(p->x.dtype), 0));
    JAMBA_TRY(jamba_check_shape(op, "B", &p->Bm, bsh));
    JAMBA_TRY(jamba_check_tensor(op, "C", &p->Cm, 2, JAMBA_MASK(JAMBA_F32) | JAMBA_MASK(p->x.dtype), 0));
    JAMBA_TRY(jamba_check_shape(op, "C", &p->Cm, bsh));
    JAMBA_TRY(check_param_vec(op, "D", &p->D, DI));
    JAMBA_TRY(check_param_vec(op, "dt_bias", &p->dt_bias, DI));
    JAMBA_TRY(jamba_check_tensor(op, "z", &p->z, 2, JAMBA_MASK(p->x.dtype), 1));
    if (p->z.data) {
        JAMBA_TRY(jamba_check_shape(op, "z", &p->z, act));
        JAMBA_TRY(jamba_check_unit_stride(op, "z", &p->z, 1));
    }
    JAMBA_TRY(jamba_check_tensor(op, "out", &p->out, 2, JAMBA_MASK(p->x.dtype), 0));
    JAMBA_TRY(jamba_check_shape(op, "out", &p->out, act));
    JAMBA_TRY(jamba_check_contiguous(op, "out", &p->out));
    return JAMBA_OK;
}

jamba_status jamba_selective_state_update_cpu(const jamba_selective_state_update_params *p) {
    JAMBA_TRY(jamba_selective_state_update_check(p));
    const int64_t B = p->x.shape[0], DI = p->x.shape[1], N = p->A.shape[1];
    const jamba_dtype dt = p->x.dtype, sdt = p->state.dtype;
#pragma omp parallel for schedule(static) if (B * DI * N > 65536)
    for (int64_t bc = 0; bc < B * DI; bc++) {
        const int64_t b = bc / DI, c = bc % DI;
        float d = jamba_load(p->dt.data, dt, b * p->dt.stride[0] + c);
        if (p->dt_bias.data) d += ((const float *)p->dt_bias.data)[c * p->dt_bias.stride[0]];
        if (p->dt_softplus) d = softplus_f(d);
        const float u = jamba_load(p->x.data, dt, b * p->x.stride[0] + c);
        const int64_t so = b * p->state.stride[0] + c * p->state.stride[1]; /* state row (b, c) */
        float y = 0.f;
        for (int64_t n = 0; n < N; n++) {
            const float a = ((const float *)p->A.data)[c * p->A.stride[0] + n * p->A.stride[1]];
            const float bn = jamba_load(p->Bm.data, p->Bm.dtype, b * p->Bm.stride[0] + n * p->Bm.stride[1]);
            const float cn = jamba_load(p->Cm.data, p->Cm.dtype, b * p->Cm.stride[0] + n * p->Cm.stride[1]);
            const float h = exp2_poly(d * a * LOG2E) * jamba_load(p->state.data, sdt, so + n) + d * bn * u;
            jamba_store(p->state.data, sdt, so + n, h);
            y += h * cn;
        }
        if (p->D.data) y += ((const float *)p->D.data)[c * p->D.stride[0]] * u;
        if (p->z.data) y *= silu_f(jamba_load(p->z.data, dt, b * p->z.stride[0] + c));
        jamba_store(p->out.data, dt, b * p->out.stride[0] + c, y);
    }
    return JAMBA_OK;
}
