/* causal_conv1d_bwd.c -- gradients of the depthwise causal conv1d on the CPU (training), and the argument checks
 * shared with csrc/cuda/causal_conv1d_bwd.cu.
 *
 * Exports: jamba_causal_conv1d_bwd_check / _cpu, jamba_causal_conv1d_bwd_ws_elems (the CUDA workspace size).
 * Math: csrc/jamba.h (causal_conv1d_bwd). Per channel c (OpenMP over channels), batch rows in order b = 0..B-1:
 *   h = [K-1 history entries | x row] and g (zero-padded by K-1 on both sides) as fp32 rows of L + 2(K-1);
 *   dweight and dbias summed in double over (b, t) in that order (so the result does not depend on the threads);
 *   dx and the history part of dh from the padded g. Outputs written once, never accumulated.
 */
#include <math.h>
#include <stdlib.h>

#include "../common.h"

static const char *OP = "jamba.causal_conv1d_bwd";

int64_t jamba_causal_conv1d_bwd_ws_elems(int64_t B, int64_t DI, int64_t L) {
    const int64_t nch = L > 0 ? (L + JAMBA_CONV_BWD_CHUNK - 1) / JAMBA_CONV_BWD_CHUNK : 1;
    return DI * B * nch * JAMBA_CONV_BWD_PART;
}

jamba_status jamba_causal_conv1d_bwd_check(const jamba_causal_conv1d_bwd_params *p) {
    JAMBA_TRY(jamba_check_tensor(OP, "x", &p->x, 3, JAMBA_FLOATS, 0));
    JAMBA_TRY(jamba_check_unit_stride(OP, "x", &p->x, 2));
    const int64_t B = p->x.shape[0], DI = p->x.shape[1], L = p->x.shape[2];
    JAMBA_TRY(jamba_conv_check_weight_bias(OP, &p->weight, &p->bias, &p->x, DI));
    const int64_t K = p->weight.shape[1];
    const int64_t xsh[3] = {B, DI, L}, wsh[2] = {DI, K}, bsh[1] = {DI};
    JAMBA_TRY(jamba_check_tensor(OP, "dout", &p->dout, 3, JAMBA_MASK(p->x.dtype), 0));
    JAMBA_TRY(jamba_check_shape(OP, "dout", &p->dout, xsh));
    JAMBA_TRY(jamba_check_unit_stride(OP, "dout", &p->dout, 2));
    JAMBA_TRY(jamba_check_tensor(OP, "dx", &p->dx, 3, JAMBA_MASK(p->x.dtype), 0));
    JAMBA_TRY(jamba_check_shape(OP, "dx", &p->dx, xsh));
    JAMBA_TRY(jamba_check_contiguous(OP, "dx", &p->dx));
    JAMBA_TRY(jamba_check_tensor(OP, "dweight", &p->dweight, 2, JAMBA_MASK(JAMBA_F32), 0));
    JAMBA_TRY(jamba_check_shape(OP, "dweight", &p->dweight, wsh));
    JAMBA_TRY(jamba_check_contiguous(OP, "dweight", &p->dweight));
    JAMBA_TRY(jamba_check_tensor(OP, "dbias", &p->dbias, 1, JAMBA_MASK(JAMBA_F32), 0));
    JAMBA_TRY(jamba_check_shape(OP, "dbias", &p->dbias, bsh));
    JAMBA_TRY(jamba_check_contiguous(OP, "dbias", &p->dbias));
    if (p->initial_state.data) {
        JAMBA_TRY(jamba_check_tensor(OP, "initial_state", &p->initial_state, 3, JAMBA_MASK(p->x.dtype), 0));
        const int64_t ish[3] = {B, DI, -1};
        JAMBA_TRY(jamba_check_shape(OP, "initial_state", &p->initial_state, ish));
        if (p->initial_state.shape[2] < K - 1)
            return jamba_set_error(JAMBA_ERR_SHAPE, "%s: initial_state must hold at least width-1 = %lld steps, got "
                                   "%lld", OP, (long long)(K - 1), (long long)p->initial_state.shape[2]);
        JAMBA_TRY(jamba_check_unit_stride(OP, "initial_state", &p->initial_state, 2));
        JAMBA_TRY(jamba_check_tensor(OP, "dinitial_state", &p->dinitial_state, 3, JAMBA_MASK(p->x.dtype), 0));
        const int64_t dsh[3] = {B, DI, p->initial_state.shape[2]};
        JAMBA_TRY(jamba_check_shape(OP, "dinitial_state", &p->dinitial_state, dsh));
        JAMBA_TRY(jamba_check_contiguous(OP, "dinitial_state", &p->dinitial_state));
    } else if (p->dinitial_state.data) {
        return jamba_set_error(JAMBA_ERR_ARG, "%s: dinitial_state given without initial_state", OP);
    }
    /* the outputs must not share memory with anything (each is written in full, the inputs read throughout) */
    const jamba_tensor *outs[] = {&p->dx, &p->dinitial_state, &p->dweight, &p->dbias};
    const char *onames[] = {"dx", "dinitial_state", "dweight", "dbias"};
    const jamba_tensor *ins[] = {&p->x, &p->dout, &p->weight, &p->bias, &p->initial_state};
    const char *inames[] = {"x", "dout", "weight", "bias", "initial_state"};
    for (int i = 0; i < 4; i++) {
        for (int j = 0; j < 5; j++)
            if (jamba_tensors_overlap(outs[i], ins[j]))
                return jamba_set_error(JAMBA_ERR_ARG, "%s: %s must not overlap %s in memory", OP, onames[i],
                                       inames[j]);
        for (int j = i + 1; j < 4; j++)
            if (jamba_tensors_overlap(outs[i], outs[j]))
                return jamba_set_error(JAMBA_ERR_ARG, "%s: %s must not overlap %s in memory", OP, onames[i],
                                       onames[j]);
    }
    return JAMBA_OK;
}

jamba_status jamba_causal_conv1d_bwd_cpu(const jamba_causal_conv1d_bwd_params *p) {
    JAMBA_TRY(jamba_causal_conv1d_bwd_check(p));
    const int64_t B = p->x.shape[0], DI = p->x.shape[1], L = p->x.shape[2], K = p->weight.shape[1];
    const jamba_dtype dt = p->x.dtype;
    const int64_t es = jamba_dtype_size(dt), H = K - 1;
    const int has_init = p->initial_state.data != NULL;
    const int64_t S_in = has_init ? p->initial_state.shape[2] : 0;
    float *dW = (float *)p->dweight.data, *dB = (float *)p->dbias.data;
    int oom = 0;
#pragma omp parallel if (B * DI * L > JAMBA_OMP_MIN_WORK)
    {
        /* h: H history + L inputs; g: H zeros, L gradients, H zeros; dh: H + L */
        float *h = (float *)malloc(sizeof(float) * (size_t)(3 * (L + 2 * H) + 1));
        if (!h) {
#pragma omp atomic write
            oom = 1;
        } else {
            float *g = h + L + 2 * H, *dh = g + L + 2 * H;
#pragma omp for schedule(static)
            for (int64_t c = 0; c < DI; c++) {
                float w[JAMBA_MAX_CONV_WIDTH] = {0}, bias = 0.f;
                for (int64_t j = 0; j < K; j++)
                    w[j] = jamba_load(p->weight.data, p->weight.dtype,
                                      c * p->weight.stride[0] + j * p->weight.stride[1]);
                if (p->bias.data) bias = jamba_load(p->bias.data, p->bias.dtype, c * p->bias.stride[0]);
                double sw[JAMBA_MAX_CONV_WIDTH] = {0}, sb = 0.0;
                for (int64_t b = 0; b < B; b++) {
                    const char *xr = (const char *)p->x.data + (b * p->x.stride[0] + c * p->x.stride[1]) * es;
                    const char *gr = (const char *)p->dout.data + (b * p->dout.stride[0] + c * p->dout.stride[1]) * es;
                    const int64_t ir = b * p->initial_state.stride[0] + c * p->initial_state.stride[1];
                    for (int64_t j = 0; j < H; j++)
                        h[j] = has_init ? jamba_load(p->initial_state.data, dt, ir + S_in - H + j) : 0.f;
                    jamba_load_row(h + H, xr, dt, L, 1);
                    jamba_load_row(g + H, gr, dt, L, 1);
                    for (int64_t j = 0; j < H; j++) g[j] = g[H + L + j] = 0.f;
                    for (int64_t t = 0; t < L; t++) {
                        float pre = bias;
                        for (int64_t j = 0; j < K; j++) pre += w[j] * h[t + j];
                        if (p->silu) {
                            const float s = 1.f / (1.f + expf(-pre));
                            g[H + t] *= s * (1.f + pre * (1.f - s));
                        }
                        const double gt = g[H + t];
                        for (int64_t j = 0; j < K; j++) sw[j] += gt * h[t + j];
                        sb += gt;
                    }
                    /* dh[i] (h index i = t + H) = sum_j w[j] g[i - j] over 0 <= i - j < L = sum_j w[j] gp[i + H - j] */
                    for (int64_t i = 0; i < L + H; i++) {
                        float v = 0.f;
                        for (int64_t j = 0; j < K; j++) v += w[j] * g[i + H - j];
                        dh[i] = v;
                    }
                    jamba_store_row((char *)p->dx.data + (b * DI + c) * L * es, dt, dh + H, L, 1);
                    if (has_init) {
                        char *dr = (char *)p->dinitial_state.data + (b * DI + c) * S_in * es;
                        for (int64_t j = 0; j < S_in - H; j++) jamba_store(dr, dt, j, 0.f);
                        for (int64_t j = 0; j < H; j++) jamba_store(dr, dt, S_in - H + j, dh[j]);
                    }
                }
                for (int64_t j = 0; j < K; j++) dW[c * K + j] = (float)sw[j];
                dB[c] = (float)sb;
            }
            free(h);
        }
    }
    if (oom) return jamba_set_error(JAMBA_ERR_ARG, "%s: out of memory", OP);
    return JAMBA_OK;
}
