/* mamba_step.c -- a Mamba layer's decode step between in_proj and out_proj (mamba_inner_step), on the CPU.
 *
 * Exports: jamba_mamba_inner_step_check (shared with csrc/cuda/mamba_step.cu), jamba_mamba_inner_step_split (the
 * five ops' parameters over the op's tensors and workspace; both backends), jamba_mamba_inner_step_work_elems,
 * jamba_mamba_inner_step_cpu.
 * Layout and math: csrc/jamba.h. On the CPU the op runs the five CPU kernels in order (conv update, gemv, norms,
 * gemv, state update) over the workspace ws; the fusion is the CUDA backend's (launches are what costs there).
 * Every argument, and each of the five ops' arguments, is checked before the first of them runs, so a bad call
 * leaves both states untouched.
 */
#include <string.h>

#include "../common.h"

static const char *OP_MS = "jamba.mamba_inner_step";

#define MS_CPB 64 /* channels per block of the CUDA kernel (its partial sums' rows) */

int64_t jamba_mamba_inner_step_work_elems(int64_t DI, int64_t B, int64_t NO) {
    const int64_t nblk = (DI + MS_CPB - 1) / MS_CPB, floats = (nblk + 1) * B * NO;
    return 8 + (floats + 1) / 2; /* 64 bytes of barrier counters, then the floats */
}

/* a 2-D view (rows, cols) of the contiguous workspace at element offset off */
static jamba_tensor ws_view(const jamba_tensor *ws, int64_t off, int64_t rows, int64_t cols) {
    jamba_tensor t;
    memset(&t, 0, sizeof t);
    t.data = (char *)ws->data + off * jamba_dtype_size(ws->dtype);
    t.dtype = ws->dtype;
    t.ndim = 2;
    t.shape[0] = rows, t.shape[1] = cols;
    t.stride[0] = cols, t.stride[1] = 1;
    return t;
}

/* columns [c0, c0 + n) of a 2-D tensor */
static jamba_tensor cols_view(const jamba_tensor *m, int64_t c0, int64_t n) {
    jamba_tensor t = *m;
    t.data = (char *)m->data + c0 * m->stride[1] * jamba_dtype_size(m->dtype);
    t.shape[1] = n;
    return t;
}

/* (B, DI) -> (B, DI, 1) */
static jamba_tensor add_len1(const jamba_tensor *m) {
    jamba_tensor t = *m;
    t.ndim = 3;
    t.shape[2] = 1, t.stride[2] = 1;
    return t;
}

void jamba_mamba_inner_step_split(const jamba_mamba_inner_step_params *p, jamba_mamba_inner_step_parts *q) {
    memset(q, 0, sizeof *q);
    const int64_t B = p->x.shape[0], DI = p->x.shape[1], R = p->dt_rank, NO = p->xproj_weight.shape[0];
    const int64_t N = p->A.shape[1];
    const jamba_tensor xc = ws_view(&p->ws, 0, B, DI), xdbl = ws_view(&p->ws, B * DI, B, NO);
    const jamba_tensor nrm = ws_view(&p->ws, B * (DI + NO), B, NO), delta = ws_view(&p->ws, B * (DI + 2 * NO), B, DI);
    q->conv.out = add_len1(&xc);
    q->conv.x = add_len1(&p->x);
    q->conv.conv_state = p->conv_state;
    q->conv.weight = p->conv_weight;
    q->conv.bias = p->conv_bias;
    q->conv.silu = 1;
    q->xproj.out = xdbl;
    q->xproj.x = xc;
    q->xproj.weight = p->xproj_weight;
    q->norm.out = nrm;
    q->norm.x = xdbl;
    q->norm.weight = p->norm_weight;
    q->norm.nseg = 3;
    q->norm.ends[0] = R, q->norm.ends[1] = R + N, q->norm.ends[2] = NO;
    q->norm.eps = p->eps;
    q->dtproj.out = delta;
    q->dtproj.x = cols_view(&nrm, 0, R);
    q->dtproj.weight = p->dtproj_weight;
    q->ssu.out = p->out;
    q->ssu.state = p->ssm_state;
    q->ssu.x = xc;
    q->ssu.dt = delta;
    q->ssu.A = p->A;
    q->ssu.Bm = cols_view(&nrm, R, N);
    q->ssu.Cm = cols_view(&nrm, R + N, N);
    q->ssu.D = p->D;
    q->ssu.z = p->z;
    q->ssu.dt_bias = p->dt_bias;
    q->ssu.dt_softplus = 1;
}

jamba_status jamba_mamba_inner_step_check(const jamba_mamba_inner_step_params *p) {
    const char *op = OP_MS;
    JAMBA_TRY(jamba_check_tensor(op, "x", &p->x, 2, JAMBA_FLOATS, 0));
    const int64_t B = p->x.shape[0], DI = p->x.shape[1];
    const jamba_dtype T = p->x.dtype;
    JAMBA_TRY(jamba_check_tensor(op, "xproj_weight", &p->xproj_weight, 2, JAMBA_MASK(T), 0));
    JAMBA_TRY(jamba_check_tensor(op, "A", &p->A, 2, JAMBA_MASK(JAMBA_F32), 0));
    const int64_t NO = p->xproj_weight.shape[0], N = p->A.shape[1], R = p->dt_rank;
    if (R < 1 || R + 2 * N != NO)
        return jamba_set_error(JAMBA_ERR_SHAPE,
                               "%s: dt_rank + 2 * d_state must equal xproj_weight's rows: dt_rank %lld, d_state %lld "
                               "(A's columns), xproj_weight has %lld rows",
                               op, (long long)R, (long long)N, (long long)NO);
    const int64_t xsh[2] = {-1, DI}, dsh[2] = {DI, R}, nsh[1] = {NO};
    JAMBA_TRY(jamba_check_shape(op, "xproj_weight", &p->xproj_weight, xsh));
    JAMBA_TRY(jamba_check_contiguous(op, "xproj_weight", &p->xproj_weight));
    JAMBA_TRY(jamba_check_dense(op, "dtproj_weight", &p->dtproj_weight, 2, JAMBA_MASK(T), dsh));
    JAMBA_TRY(jamba_check_dense(op, "norm_weight", &p->norm_weight, 1, JAMBA_MASK(T), nsh));
    JAMBA_TRY(jamba_check_tensor(op, "conv_weight", &p->conv_weight, 2, JAMBA_MASK(T), 0));
    JAMBA_TRY(jamba_check_contiguous(op, "conv_weight", &p->conv_weight));
    JAMBA_TRY(jamba_check_tensor(op, "conv_bias", &p->conv_bias, 1, JAMBA_MASK(T), 1));
    if (p->conv_bias.data) JAMBA_TRY(jamba_check_contiguous(op, "conv_bias", &p->conv_bias));
    JAMBA_TRY(jamba_check_tensor(op, "ssm_state", &p->ssm_state, 3, JAMBA_MASK(JAMBA_F32), 0));
    const int64_t ssh[3] = {B, DI, N}, csh[3] = {B, DI, -1}, zsh[2] = {B, DI};
    JAMBA_TRY(jamba_check_shape(op, "ssm_state", &p->ssm_state, ssh));
    JAMBA_TRY(jamba_check_contiguous(op, "ssm_state", &p->ssm_state));
    JAMBA_TRY(jamba_check_tensor(op, "conv_state", &p->conv_state, 3, JAMBA_MASK(T), 0));
    JAMBA_TRY(jamba_check_shape(op, "conv_state", &p->conv_state, csh));
    JAMBA_TRY(jamba_check_tensor(op, "z", &p->z, 2, JAMBA_MASK(T), 0));
    JAMBA_TRY(jamba_check_shape(op, "z", &p->z, zsh));
    JAMBA_TRY(jamba_check_tensor(op, "ws", &p->ws, 1, JAMBA_MASK(T), 0));
    JAMBA_TRY(jamba_check_contiguous(op, "ws", &p->ws));
    if (p->ws.shape[0] < B * (2 * DI + 2 * NO))
        return jamba_set_error(JAMBA_ERR_SHAPE, "%s: ws must have at least B * (2 DI + 2 NO) = %lld elements, got %lld",
                               op, (long long)(B * (2 * DI + 2 * NO)), (long long)p->ws.shape[0]);
    JAMBA_TRY(jamba_check_tensor(op, "work", &p->work, 1, JAMBA_MASK(JAMBA_I64), 1));
    if (p->work.data) {
        JAMBA_TRY(jamba_check_contiguous(op, "work", &p->work));
        const int64_t need = jamba_mamba_inner_step_work_elems(DI, B, NO);
        if (p->work.shape[0] < need)
            return jamba_set_error(JAMBA_ERR_SHAPE, "%s: work must have at least %lld elements for d_inner %lld, batch "
                                   "%lld, %lld x_proj outputs, got %lld", op, (long long)need, (long long)DI,
                                   (long long)B, (long long)NO, (long long)p->work.shape[0]);
    }
    if (!(p->eps >= 0.0))
        return jamba_set_error(JAMBA_ERR_ARG, "%s: eps must be >= 0, got %g", op, p->eps);
    /* the five ops' own checks (shapes, strides, dtypes, aliasing), all before the first runs */
    jamba_mamba_inner_step_parts q;
    jamba_mamba_inner_step_split(p, &q);
    JAMBA_TRY(jamba_causal_conv1d_update_check(&q.conv));
    JAMBA_TRY(jamba_gemv_check(&q.xproj));
    JAMBA_TRY(jamba_rms_norm_segments_check(&q.norm));
    JAMBA_TRY(jamba_gemv_check(&q.dtproj));
    JAMBA_TRY(jamba_selective_state_update_check(&q.ssu));
    JAMBA_TRY(jamba_check_apart(op, "conv_state", &p->conv_state, "ssm_state", &p->ssm_state));
    return JAMBA_OK;
}

jamba_status jamba_mamba_inner_step_cpu(const jamba_mamba_inner_step_params *p) {
    JAMBA_TRY(jamba_mamba_inner_step_check(p));
    if (p->x.shape[0] == 0 || p->x.shape[1] == 0) return JAMBA_OK;
    jamba_mamba_inner_step_parts q;
    jamba_mamba_inner_step_split(p, &q);
    JAMBA_TRY(jamba_causal_conv1d_update_cpu(&q.conv));
    JAMBA_TRY(jamba_gemv_cpu(&q.xproj));
    JAMBA_TRY(jamba_rms_norm_segments_cpu(&q.norm));
    JAMBA_TRY(jamba_gemv_cpu(&q.dtproj));
    return jamba_selective_state_update_cpu(&q.ssu);
}
