/* selective_scan_bwd.c -- gradients of the Mamba-1 selective scan, on the CPU (training).
 *
 * Exports: jamba_selective_scan_bwd_check / _cpu, jamba_selective_scan_bwd_ws_elems (the CUDA workspace size).
 * Shapes and math: csrc/jamba.h (selective_scan_bwd). Layouts: u, delta, z, dout (B, DI, L) unit stride along L;
 * Bm, Cm (B, N, L) any strides; du, ddelta, dz (B, DI, L), dBm, dCm (B, N, L), dA (DI, N), dD, ddelta_bias (DI,),
 * dinitial_state (B, DI, N) contiguous.
 * Work split, per batch row b: B and C converted once to fp32 (t, n) rows; OpenMP threads take fixed blocks of
 * SB_CB channels. Per channel: the forward recurrence over all L with h kept at the start of every SB_TC-step chunk,
 * then the chunks in reverse (the chunk's states and exp(dt A) recomputed from its checkpoint into buffers, then t
 * from the chunk's end down); the loops over the states vectorise (jamba_exp2f, AVX2 clone).
 * dB and dC are summed over the channels of a block into the block's (L, N) partials, then over the blocks in
 * block order; dA, dD and ddelta_bias per (b, c), then over b in order: the result does not depend on the thread
 * count.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "../common.h"

#define SB_TC 64  /* steps per checkpoint chunk */
#define SB_CB 32  /* channels per block (the unit of the dB / dC partial sums) */

/* CUDA layout (selective_scan_bwd.cu): blocks of JAMBA_SCAN_BWD_CPB channels, chunks of JAMBA_SCAN_BWD_CHUNK steps.
 * Workspace: chunk-start states (B, DI, NC, N), dB / dC partials (2, B, P, N, L), dA partials (B, DI, N), dD and
 * ddelta_bias partials (2, B, DI). 0 where the CUDA path does not run (N > 32). */
int64_t jamba_selective_scan_bwd_ws_elems(int64_t B, int64_t DI, int64_t L, int64_t N) {
    if (N < 1 || N > JAMBA_SCAN_BWD_CUDA_MAX_N || B < 0 || DI < 0 || L < 0) return 0;
    const int64_t P = (DI + JAMBA_SCAN_BWD_CPB - 1) / JAMBA_SCAN_BWD_CPB;
    const int64_t NC = (L + JAMBA_SCAN_BWD_CHUNK - 1) / JAMBA_SCAN_BWD_CHUNK;
    return B * DI * NC * N + 2 * B * P * N * L + B * DI * N + 2 * B * DI;
}

static jamba_status check_out(const char *op, const char *name, const jamba_tensor *t, int ndim, unsigned mask,
                              const int64_t *shape, int optional) {
    JAMBA_TRY(jamba_check_tensor(op, name, t, ndim, mask, optional));
    if (!t->data) return JAMBA_OK;
    JAMBA_TRY(jamba_check_shape(op, name, t, shape));
    return jamba_check_contiguous(op, name, t);
}

jamba_status jamba_selective_scan_bwd_check(const jamba_selective_scan_bwd_params *p) {
    const char *op = "jamba.selective_scan_bwd";
    /* the forward's inputs: the forward's own checks, with a stand-in out */
    jamba_selective_scan_params f;
    memset(&f, 0, sizeof f);
    f.u = p->u, f.delta = p->delta, f.A = p->A, f.Bm = p->Bm, f.Cm = p->Cm, f.D = p->D, f.z = p->z;
    f.delta_bias = p->delta_bias, f.initial_state = p->initial_state, f.delta_softplus = p->delta_softplus;
    JAMBA_TRY(jamba_check_tensor(op, "u", &p->u, 3, JAMBA_FLOATS, 0));
    JAMBA_TRY(jamba_check_tensor(op, "A", &p->A, 2, JAMBA_MASK(JAMBA_F32), 0));
    f.out = p->du; /* du has u's shape and dtype and is contiguous: checked as the forward's out */
    JAMBA_TRY(jamba_selective_scan_check(&f));
    const int64_t B = p->u.shape[0], DI = p->u.shape[1], L = p->u.shape[2], N = p->A.shape[1];
    const int64_t act[3] = {B, DI, L}, bsh[3] = {B, N, L}, ssh[3] = {B, DI, N}, ash[2] = {DI, N}, vsh[1] = {DI};
    const unsigned ut = JAMBA_MASK(p->u.dtype), f32 = JAMBA_MASK(JAMBA_F32);
    JAMBA_TRY(jamba_check_tensor(op, "dout", &p->dout, 3, ut, 0));
    JAMBA_TRY(jamba_check_shape(op, "dout", &p->dout, act));
    JAMBA_TRY(jamba_check_unit_stride(op, "dout", &p->dout, 2));
    JAMBA_TRY(jamba_check_tensor(op, "dlast_state", &p->dlast_state, 3, f32, 1));
    if (p->dlast_state.data) {
        JAMBA_TRY(jamba_check_shape(op, "dlast_state", &p->dlast_state, ssh));
        JAMBA_TRY(jamba_check_unit_stride(op, "dlast_state", &p->dlast_state, 2));
    }
    JAMBA_TRY(check_out(op, "du", &p->du, 3, ut, act, 0));
    JAMBA_TRY(check_out(op, "ddelta", &p->ddelta, 3, ut, act, 0));
    JAMBA_TRY(check_out(op, "dz", &p->dz, 3, ut, act, 1));
    if ((p->dz.data != NULL) != (p->z.data != NULL))
        return jamba_set_error(JAMBA_ERR_ARG, "%s: dz: must be given exactly when z is (z %s, dz %s)", op,
                               p->z.data ? "given" : "absent", p->dz.data ? "given" : "absent");
    JAMBA_TRY(check_out(op, "dB", &p->dBm, 3, f32, bsh, 0));
    JAMBA_TRY(check_out(op, "dC", &p->dCm, 3, f32, bsh, 0));
    JAMBA_TRY(check_out(op, "dA", &p->dA, 2, f32, ash, 0));
    JAMBA_TRY(check_out(op, "dD", &p->dD, 1, f32, vsh, 1));
    JAMBA_TRY(check_out(op, "ddelta_bias", &p->ddelta_bias, 1, f32, vsh, 1));
    JAMBA_TRY(check_out(op, "dinitial_state", &p->dinitial_state, 3, f32, ssh, 1));
    return JAMBA_OK;
}

static inline float sb_sigmoid(float x) { return 1.f / (1.f + expf(-x)); }

/* One channel (b, c) over all L: the forward for the checkpoints, then the reverse. Rows (fp32, L each): u, dt
 * (softplus applied), dsp (d dt / d delta), z (or NULL), dout; bt / ct: B and C of batch b as (L, N); A of the
 * channel and A2 = A * log2(e) (the exps through the vectorisable jamba_exp2f, as the forward scan). Scratch: ckpt (NC, N),
 * hbuf (SB_TC + 1, N) (the chunk's states: row i is h[t0 + i - 1]), abuf (SB_TC, N) (its exp(dt A), computed once
 * per chunk and used by the reverse). Writes du / ddelta / dz rows (fp32), adds into the block partials pdb / pdc
 * (L, N), returns dA (N), dD, ddelta_bias, dinit (N) of the channel. */
JAMBA_CPU_CLONES
static void sb_channel(const float *restrict u, const float *restrict dtr, const float *restrict dsp,
                       const float *restrict z, const float *restrict dout, const float *restrict bt,
                       const float *restrict ct, const float *restrict A, const float *restrict A2, float Dc,
                       const float *h0,
                       const float *dlast, int64_t L, int64_t N, float *restrict ckpt, float *restrict hbuf,
                       float *restrict abuf, float *restrict du, float *restrict ddelta, float *restrict dz,
                       float *restrict pdb, float *restrict pdc, float *restrict dA, float *dD, float *ddb,
                       float *dinit) {
    float h[JAMBA_MAX_D_STATE], g[JAMBA_MAX_D_STATE];
    for (int64_t n = 0; n < N; n++) h[n] = h0 ? h0[n] : 0.f, dA[n] = 0.f;
    const int64_t NC = (L + SB_TC - 1) / SB_TC;
    for (int64_t k = 0; k < NC; k++) {
        memcpy(ckpt + k * N, h, sizeof(float) * (size_t)N);
        const int64_t t1 = (k + 1) * SB_TC < L ? (k + 1) * SB_TC : L;
        for (int64_t t = k * SB_TC; t < t1; t++) {
            const float dt = dtr[t], dtu = dt * u[t];
            const float *bn = bt + t * N;
#pragma omp simd
            for (int64_t n = 0; n < N; n++) h[n] = jamba_exp2f(dt * A2[n]) * h[n] + dtu * bn[n];
        }
    }
    for (int64_t n = 0; n < N; n++) g[n] = dlast ? dlast[n] : 0.f;
    float sD = 0.f, sdb = 0.f;
    for (int64_t k = NC - 1; k >= 0; k--) {
        const int64_t t0 = k * SB_TC, t1 = t0 + SB_TC < L ? t0 + SB_TC : L;
        memcpy(hbuf, ckpt + k * N, sizeof(float) * (size_t)N);
        for (int64_t t = t0; t < t1; t++) { /* hbuf row t - t0 + 1 = h[t], abuf row t - t0 = exp(dt A) */
            const float dt = dtr[t], dtu = dt * u[t];
            const float *bn = bt + t * N, *hp = hbuf + (t - t0) * N;
            float *an = abuf + (t - t0) * N, *hn = hbuf + (t - t0 + 1) * N;
#pragma omp simd
            for (int64_t n = 0; n < N; n++) {
                an[n] = jamba_exp2f(dt * A2[n]);
                hn[n] = an[n] * hp[n] + dtu * bn[n];
            }
        }
        for (int64_t t = t1 - 1; t >= t0; t--) {
            const float ut = u[t], dt = dtr[t];
            const float *bn = bt + t * N, *cn = ct + t * N, *hp = hbuf + (t - t0) * N, *ht = hp + N;
            const float *a = abuf + (t - t0) * N;
            float y0 = Dc * ut;
#pragma omp simd reduction(+ : y0)
            for (int64_t n = 0; n < N; n++) y0 += cn[n] * ht[n];
            float gz = 1.f;
            if (z) {
                const float sz = sb_sigmoid(z[t]);
                gz = z[t] * sz;
                dz[t] = dout[t] * y0 * sz * (1.f + z[t] * (1.f - sz));
            }
            const float dyp = dout[t] * gz, dtu = dt * ut;
            float *pc = pdc + t * N, *pb = pdb + t * N;
            float sdu = 0.f, sddt = 0.f;
#pragma omp simd reduction(+ : sdu, sddt)
            for (int64_t n = 0; n < N; n++) {
                const float gn = g[n] + dyp * cn[n], ha = hp[n] * a[n];
                pc[n] += dyp * ht[n];
                pb[n] += gn * dtu;
                sdu += gn * bn[n];
                sddt += gn * (bn[n] * ut + ha * A[n]);
                dA[n] += gn * ha * dt;
                g[n] = a[n] * gn;
            }
            du[t] = dyp * Dc + dt * sdu;
            ddelta[t] = sddt * dsp[t];
            sD += dyp * ut;
            sdb += ddelta[t];
        }
    }
    *dD = sD, *ddb = sdb;
    for (int64_t n = 0; n < N; n++) dinit[n] = g[n];
}

jamba_status jamba_selective_scan_bwd_cpu(const jamba_selective_scan_bwd_params *p) {
    JAMBA_TRY(jamba_selective_scan_bwd_check(p));
    const int64_t B = p->u.shape[0], DI = p->u.shape[1], L = p->u.shape[2], N = p->A.shape[1];
    const jamba_dtype dt = p->u.dtype;
    const int64_t es = jamba_dtype_size(dt), NB = (DI + SB_CB - 1) / SB_CB;
    const int64_t NC = (L + SB_TC - 1) / SB_TC;
    /* fp32 scratch: B and C of one batch row (L, N) each; the blocks' dB / dC partials (NB, L, N) each; the per (b, c)
     * sums of dA (B, DI, N), dD and ddelta_bias (B, DI) each */
    const size_t nf = (size_t)(2 * L * N + 2 * NB * L * N + B * DI * N + 2 * B * DI);
    float *buf = (float *)calloc(nf ? nf : 1, sizeof(float));
    if (!buf) return jamba_set_error(JAMBA_ERR_ARG, "jamba.selective_scan_bwd: out of memory (%zu floats)", nf);
    float *bt = buf, *ct = bt + L * N, *pdb = ct + L * N, *pdc = pdb + NB * L * N, *pA = pdc + NB * L * N;
    float *pD = pA + B * DI * N, *pdbias = pD + B * DI;
    const float *A = (const float *)p->A.data;
    int failed = 0;
    for (int64_t b = 0; b < B && !failed; b++) {
        for (int64_t t = 0; t < L; t++)
            for (int64_t n = 0; n < N; n++) {
                bt[t * N + n] = jamba_load(p->Bm.data, p->Bm.dtype,
                                           b * p->Bm.stride[0] + n * p->Bm.stride[1] + t * p->Bm.stride[2]);
                ct[t * N + n] = jamba_load(p->Cm.data, p->Cm.dtype,
                                           b * p->Cm.stride[0] + n * p->Cm.stride[1] + t * p->Cm.stride[2]);
            }
        memset(pdb, 0, sizeof(float) * (size_t)(2 * NB * L * N));
#pragma omp parallel if (DI * L * N > JAMBA_OMP_MIN_WORK)
        {
            /* per thread: 8 rows of L (u, dt, dsp, z, dout, du, ddelta, dz), checkpoints (NC, N), the chunk's states
             * (SB_TC + 1, N) and exp(dt A) (SB_TC, N), A of the channel times log2(e) and as is (N each) */
            float *rows = (float *)malloc(sizeof(float) * (size_t)(8 * L + NC * N + (2 * SB_TC + 1) * N + 2 * N + 1));
            if (!rows) {
#pragma omp atomic write
                failed = 1;
            }
#pragma omp for schedule(static)
            for (int64_t blk = 0; blk < NB; blk++) {
                if (!rows) continue;
                float *u = rows, *x = u + L, *dsp = x + L, *z = dsp + L, *dout = z + L, *du = dout + L;
                float *dd = du + L, *dz = dd + L;
                float *ckpt = dz + L, *hbuf = ckpt + NC * N, *abuf = hbuf + (SB_TC + 1) * N, *Ac = abuf + SB_TC * N;
                float *Ar = Ac + N;
                const int64_t c1 = (blk + 1) * SB_CB < DI ? (blk + 1) * SB_CB : DI;
                for (int64_t c = blk * SB_CB; c < c1; c++) {
                    const int64_t ro = b * p->u.stride[0] + c * p->u.stride[1];
                    jamba_load_row(u, (const char *)p->u.data + ro * es, dt, L, 1);
                    jamba_load_row(x, (const char *)p->delta.data +
                                          (b * p->delta.stride[0] + c * p->delta.stride[1]) * es, dt, L, 1);
                    jamba_load_row(dout, (const char *)p->dout.data +
                                             (b * p->dout.stride[0] + c * p->dout.stride[1]) * es, dt, L, 1);
                    if (p->z.data)
                        jamba_load_row(z, (const char *)p->z.data + (b * p->z.stride[0] + c * p->z.stride[1]) * es,
                                       dt, L, 1);
                    const float bias =
                        p->delta_bias.data ? ((const float *)p->delta_bias.data)[c * p->delta_bias.stride[0]] : 0.f;
                    for (int64_t t = 0; t < L; t++) { /* x := dt (softplus applied), dsp := d dt / d x */
                        const float xt = x[t] + bias;
                        const int sp = p->delta_softplus && xt <= 20.f;
                        x[t] = sp ? log1pf(expf(xt)) : xt;
                        dsp[t] = sp ? sb_sigmoid(xt) : 1.f;
                    }
                    for (int64_t n = 0; n < N; n++) {
                        Ar[n] = A[c * p->A.stride[0] + n * p->A.stride[1]];
                        Ac[n] = Ar[n] * JAMBA_LOG2E;
                    }
                    const float Dc = p->D.data ? ((const float *)p->D.data)[c * p->D.stride[0]] : 0.f;
                    const float *h0 = p->initial_state.data
                                          ? (const float *)p->initial_state.data + b * p->initial_state.stride[0] +
                                                c * p->initial_state.stride[1]
                                          : NULL;
                    const float *dl = p->dlast_state.data ? (const float *)p->dlast_state.data +
                                                                b * p->dlast_state.stride[0] +
                                                                c * p->dlast_state.stride[1]
                                                          : NULL;
                    float dinit[JAMBA_MAX_D_STATE];
                    sb_channel(u, x, dsp, p->z.data ? z : NULL, dout, bt, ct, Ar, Ac, Dc, h0, dl, L, N, ckpt,
                               hbuf, abuf, du, dd, dz, pdb + blk * L * N, pdc + blk * L * N, pA + (b * DI + c) * N,
                               pD + b * DI + c, pdbias + b * DI + c, dinit);
                    const int64_t oo = (b * DI + c) * L; /* du, ddelta, dz are contiguous (B, DI, L) */
                    jamba_store_row((char *)p->du.data + oo * es, dt, du, L, 1);
                    jamba_store_row((char *)p->ddelta.data + oo * es, dt, dd, L, 1);
                    if (p->dz.data) jamba_store_row((char *)p->dz.data + oo * es, dt, dz, L, 1);
                    if (p->dinitial_state.data)
                        memcpy((float *)p->dinitial_state.data + (b * DI + c) * N, dinit, sizeof(float) * (size_t)N);
                }
            }
            free(rows);
        }
        /* dB, dC of batch b: the blocks' partials in block order, stored (N, L) */
        float *dB = (float *)p->dBm.data + b * N * L, *dC = (float *)p->dCm.data + b * N * L;
        for (int64_t n = 0; n < N; n++)
            for (int64_t t = 0; t < L; t++) {
                float sb = 0.f, sc = 0.f;
                for (int64_t k = 0; k < NB; k++) sb += pdb[(k * L + t) * N + n], sc += pdc[(k * L + t) * N + n];
                dB[n * L + t] = sb, dC[n * L + t] = sc;
            }
    }
    if (failed) {
        free(buf);
        return jamba_set_error(JAMBA_ERR_ARG, "jamba.selective_scan_bwd: out of memory (rows of %lld steps)",
                               (long long)L);
    }
    float *dA = (float *)p->dA.data;
    for (int64_t i = 0; i < DI * N; i++) {
        float s = 0.f;
        for (int64_t b = 0; b < B; b++) s += pA[b * DI * N + i];
        dA[i] = s;
    }
    for (int64_t c = 0; c < DI; c++) {
        float sD = 0.f, sb = 0.f;
        for (int64_t b = 0; b < B; b++) sD += pD[b * DI + c], sb += pdbias[b * DI + c];
        if (p->dD.data) ((float *)p->dD.data)[c] = sD;
        if (p->ddelta_bias.data) ((float *)p->ddelta_bias.data)[c] = sb;
    }
    free(buf);
    return JAMBA_OK;
}
