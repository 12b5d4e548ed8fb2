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
#define LOG2E JAMBA_LOG2E


/* The recurrence over nt steps of one (b, c) row: db holds dt (bias and softplus applied), a2 = A*log2(e),
 * bt/ct the (t, n) tiles of B and C, h the state (updated). yb[t] = C[t].h[t] (no D, no gate). */
JAMBA_CPU_CLONES
static void scan_row(const float *restrict ub, const float *restrict db, const float *restrict a2,
                     const float *restrict bt, const float *restrict ct, float *restrict h, float *restrict yb,
                     int64_t nt, int64_t N) {
    float dA[JAMBA_MAX_D_STATE];
    for (int64_t t = 0; t < nt; t++) {
        const float d = db[t], du = d * ub[t];
        const float *bn = bt + t * N, *cn = ct + t * N;
        float y = 0.f;
#pragma omp simd
        for (int64_t n = 0; n < N; n++) dA[n] = jamba_exp2f(d * a2[n]);
#pragma omp simd reduction(+ : y)
        for (int64_t n = 0; n < N; n++) {
            h[n] = dA[n] * h[n] + du * bn[n];
            y += h[n] * cn[n];
        }
        yb[t] = y;
    }
}


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

/* B, C, state: the shape check, where a d_state (dim nd) other than A's says so first (the expected d_state comes
 * from A: a wrong A would otherwise read as a wrong B) */
static jamba_status check_n_shape(const char *op, const char *name, const jamba_tensor *t, const int64_t *sh, int nd) {
    if (t->shape[nd] != sh[nd])
        return jamba_set_error(JAMBA_ERR_SHAPE, "%s: %s has d_state %lld (its dim %d) but A has %lld (A is (d_inner, "
                               "d_state)): they must match", op, name, (long long)t->shape[nd], nd,
                               (long long)sh[nd]);
    return jamba_check_shape(op, name, t, sh);
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
    JAMBA_TRY(check_n_shape(op, "B", &p->Bm, bsh, 1));
    JAMBA_TRY(jamba_check_tensor(op, "C", &p->Cm, 3, JAMBA_MASK(JAMBA_F32) | JAMBA_MASK(p->u.dtype), 0));
    JAMBA_TRY(check_n_shape(op, "C", &p->Cm, bsh, 1));
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
        JAMBA_TRY(check_n_shape(op, "initial_state", &p->initial_state, ssh, 2));
        JAMBA_TRY(jamba_check_unit_stride(op, "initial_state", &p->initial_state, 2));
    }
    JAMBA_TRY(jamba_check_tensor(op, "last_state", &p->last_state, 3, JAMBA_MASK(JAMBA_F32), 1));
    if (p->last_state.data) {
        JAMBA_TRY(check_n_shape(op, "last_state", &p->last_state, ssh, 2));
        JAMBA_TRY(jamba_check_contiguous(op, "last_state", &p->last_state));
    }
    JAMBA_TRY(jamba_check_dense(op, "out", &p->out, 3, JAMBA_MASK(p->u.dtype), act));
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
#pragma omp parallel if (DI * nt * N > JAMBA_OMP_MIN_WORK)
            {
                float ub[TCHUNK], db[TCHUNK], zb[TCHUNK], yb[TCHUNK];
                float a2[JAMBA_MAX_D_STATE], h[JAMBA_MAX_D_STATE];
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
                    for (int64_t t = 0; t < nt; t++) db[t] += dbias;
                    if (p->delta_softplus) jamba_softplus_row(db, zb, nt); /* zb: scratch until z loads */
                    scan_row(ub, db, a2, bt, ct, h, yb, nt, N);
                    if (p->D.data)
                        for (int64_t t = 0; t < nt; t++) yb[t] += Dc * ub[t];
                    if (p->z.data) {
                        const char *zr = (const char *)p->z.data + (b * p->z.stride[0] + c * p->z.stride[1] + t0) * es;
                        jamba_load_row(zb, zr, dt, nt, 1);
                        jamba_silu_row(db, zb, nt); /* db is free again: reuse it for the gate */
                        for (int64_t t = 0; t < nt; t++) yb[t] *= db[t];
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
    JAMBA_TRY(check_n_shape(op, "state", &p->state, ssh, 2));
    JAMBA_TRY(jamba_check_unit_stride(op, "state", &p->state, 2));
    JAMBA_TRY(jamba_check_tensor(op, "dt", &p->dt, 2, JAMBA_MASK(p->x.dtype), 0));
    JAMBA_TRY(jamba_check_shape(op, "dt", &p->dt, act));
    JAMBA_TRY(jamba_check_unit_stride(op, "dt", &p->dt, 1));
    JAMBA_TRY(jamba_check_tensor(op, "B", &p->Bm, 2, JAMBA_MASK(JAMBA_F32) | JAMBA_MASK(p->x.dtype), 0));
    JAMBA_TRY(check_n_shape(op, "B", &p->Bm, bsh, 1));
    JAMBA_TRY(jamba_check_tensor(op, "C", &p->Cm, 2, JAMBA_MASK(JAMBA_F32) | JAMBA_MASK(p->x.dtype), 0));
    JAMBA_TRY(check_n_shape(op, "C", &p->Cm, bsh, 1));
    JAMBA_TRY(check_param_vec(op, "D", &p->D, DI));
    JAMBA_TRY(check_param_vec(op, "dt_bias", &p->dt_bias, DI));
    JAMBA_TRY(jamba_check_tensor(op, "z", &p->z, 2, JAMBA_MASK(p->x.dtype), 1));
    if (p->z.data) {
        JAMBA_TRY(jamba_check_shape(op, "z", &p->z, act));
        JAMBA_TRY(jamba_check_unit_stride(op, "z", &p->z, 1));
    }
    JAMBA_TRY(jamba_check_dense(op, "out", &p->out, 2, JAMBA_MASK(p->x.dtype), act));
    JAMBA_TRY(jamba_check_no_self_overlap(op, "state", &p->state));
    const char *names[] = {"x", "dt", "A", "B", "C", "D", "z", "dt_bias", "out"};
    const jamba_tensor *ins[] = {&p->x, &p->dt, &p->A, &p->Bm, &p->Cm, &p->D, &p->z, &p->dt_bias, &p->out};
    for (int i = 0; i < 9; i++) JAMBA_TRY(jamba_check_apart(op, names[i], ins[i], "state", &p->state));
    return JAMBA_OK;
}

/* One step of nc consecutive channels of one batch row: state rows h + c * hs (N, updated in place), A rows a + c * as
 * (unscaled, unit stride), B and C rows bn / cn of the batch row, dt (bias and softplus applied) and x of each
 * channel; y[c] = C.h of channel c. One cloned call per block of channels, so the exp2 constants are set up once per
 * block, not once per channel: 0.372 -> 0.337 ms at batch 8 x 2048 channels, N 16, one thread (best of 400; with the
 * loops unrolled for N 16 it took 0.42). */
JAMBA_CPU_CLONES
static void update_rows(float *restrict h, int64_t hs, const float *restrict a, int64_t as, const float *restrict bn,
                        const float *restrict cn, const float *restrict d, const float *restrict u, float *restrict y,
                        int64_t nc, int64_t N) {
    for (int64_t c = 0; c < nc; c++) {
        float *hc = h + c * hs;
        const float *ac = a + c * as;
        const float dl = d[c] * LOG2E, du = d[c] * u[c];
        float yc = 0.f, dA[JAMBA_MAX_D_STATE];
#pragma omp simd
        for (int64_t n = 0; n < N; n++) dA[n] = jamba_exp2f(dl * ac[n]); /* exp apart: see jamba_silu_row */
#pragma omp simd reduction(+ : yc)
        for (int64_t n = 0; n < N; n++) {
            hc[n] = dA[n] * hc[n] + du * bn[n];
            yc += hc[n] * cn[n];
        }
        y[c] = yc;
    }
}

#define SSU_CB 16 /* channels per block of the CPU state update */

jamba_status jamba_selective_state_update_cpu(const jamba_selective_state_update_params *p) {
    JAMBA_TRY(jamba_selective_state_update_check(p));
    const int64_t B = p->x.shape[0], DI = p->x.shape[1], N = p->A.shape[1];
    if (B == 0 || DI == 0) return JAMBA_OK;
    const jamba_dtype dt = p->x.dtype, sdt = p->state.dtype;
    const int64_t es = jamba_dtype_size(dt), ses = jamba_dtype_size(sdt);
    const int a_unit = p->A.stride[1] == 1;
    /* fp32 scratch: B and C of every batch row (B, N) each; dt of every (b, c) with bias and softplus applied, x and
     * silu(z) (B, DI) each; DI floats for the softplus; A as (DI, N) rows when its N stride is not 1 */
    const size_t nf = (size_t)(2 * B * N + 3 * B * DI + DI + (a_unit ? 0 : DI * N));
    float *buf = (float *)malloc(sizeof(float) * nf);
    if (!buf) return jamba_set_error(JAMBA_ERR_ARG, "jamba.selective_state_update: out of memory");
    float *bc_f = buf, *dts = bc_f + 2 * B * N, *xs = dts + B * DI, *gates = xs + B * DI, *scratch = gates + B * DI;
    const float *A = (const float *)p->A.data;
    int64_t sa = p->A.stride[0];
    if (!a_unit) {
        float *ac = scratch + DI;
        for (int64_t c = 0; c < DI; c++)
            jamba_load_row(ac + c * N, A + c * p->A.stride[0], JAMBA_F32, N, p->A.stride[1]);
        A = ac, sa = N;
    }
    for (int64_t b = 0; b < B; b++) {
        float *d = dts + b * DI;
        jamba_load_row(d, (const char *)p->dt.data + b * p->dt.stride[0] * es, dt, DI, 1);
        if (p->dt_bias.data)
            for (int64_t c = 0; c < DI; c++) d[c] += ((const float *)p->dt_bias.data)[c * p->dt_bias.stride[0]];
        if (p->dt_softplus) jamba_softplus_row(d, scratch, DI);
        jamba_load_row(xs + b * DI, (const char *)p->x.data + b * p->x.stride[0] * es, dt, DI, 1);
        if (p->z.data) { /* silu(z), vectorised as dt: the fused scalar form is the slow one */
            jamba_load_row(scratch, (const char *)p->z.data + b * p->z.stride[0] * es, dt, DI, 1);
            jamba_silu_row(gates + b * DI, scratch, DI);
        }
        jamba_load_row(bc_f + b * N, (const char *)p->Bm.data + b * p->Bm.stride[0] * jamba_dtype_size(p->Bm.dtype),
                       p->Bm.dtype, N, p->Bm.stride[1]);
        jamba_load_row(bc_f + (B + b) * N,
                       (const char *)p->Cm.data + b * p->Cm.stride[0] * jamba_dtype_size(p->Cm.dtype), p->Cm.dtype,
                       N, p->Cm.stride[1]);
    }
    const int64_t nbc = (DI + SSU_CB - 1) / SSU_CB; /* channel blocks per batch row */
#pragma omp parallel for schedule(static) if (B * DI * N > 4 * JAMBA_OMP_MIN_WORK)
    for (int64_t blk = 0; blk < B * nbc; blk++) {
        const int64_t b = blk / nbc, c0 = blk % nbc * SSU_CB, nc = DI - c0 < SSU_CB ? DI - c0 : SSU_CB;
        float hbuf[SSU_CB * JAMBA_MAX_D_STATE], y[SSU_CB];
        /* state rows (b, c0..): unit stride along N; an fp32 state is updated where it is */
        char *srow = (char *)p->state.data + (b * p->state.stride[0] + c0 * p->state.stride[1]) * ses;
        float *h = sdt == JAMBA_F32 ? (float *)srow : hbuf;
        const int64_t hs = sdt == JAMBA_F32 ? p->state.stride[1] : N;
        if (sdt != JAMBA_F32)
            for (int64_t c = 0; c < nc; c++)
                jamba_load_row(hbuf + c * N, srow + c * p->state.stride[1] * ses, sdt, N, 1);
        update_rows(h, hs, A + c0 * sa, sa, bc_f + b * N, bc_f + (B + b) * N, dts + b * DI + c0, xs + b * DI + c0, y,
                    nc, N);
        if (sdt != JAMBA_F32)
            for (int64_t c = 0; c < nc; c++)
                jamba_store_row(srow + c * p->state.stride[1] * ses, sdt, hbuf + c * N, N, 1);
        for (int64_t c = 0; c < nc; c++) {
            const int64_t bc = b * DI + c0 + c;
            float v = y[c];
            if (p->D.data) v += ((const float *)p->D.data)[(c0 + c) * p->D.stride[0]] * xs[bc];
            if (p->z.data) v *= gates[bc];
            jamba_store(p->out.data, dt, b * p->out.stride[0] + c0 + c, v);
        }
    }
    free(buf);
    return JAMBA_OK;
}
