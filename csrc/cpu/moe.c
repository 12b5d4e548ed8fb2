/* moe.c -- MoE routing, token permutation and the weighted combine on the CPU (C11 + OpenMP), plus the
 * argument checks shared with csrc/cuda/moe.cu.
 *
 * Exports: jamba_moe_route_check / _cpu, jamba_moe_permute_check / _cpu, jamba_moe_experts_check / _cpu,
 * jamba_silu_mul_check / _cpu, jamba_silu_mul_bwd_check / _cpu, jamba_moe_combine_check / _cpu,
 * jamba_moe_grad_rows_check / _cpu.
 * Math (jamba-architecture.md 4.4, csrc/jamba.h):
 *   route:   p[t, :] = softmax(fp32(logits[t, :]))  (fp64 for fp64 logits); the TOPK largest p in
 *            descending order, ties to the lower expert id; weights = p (no renormalisation).
 *   permute: counting sort of the T*TOPK slots (s = t*TOPK + j) by expert id, stable (token order inside
 *            an expert); ids outside [0, E) form a last bucket after expert_offsets[E].
 *   silu_mul: act[m, f] = round(round(silu(g)) * u) of a fused gate/up row (fp32 math, expf).
 *   silu_mul_bwd: its gradient (training): d gate = dout * u * s * (1 + g (1 - s)), d up = dout * g * s,
 *            s = sigmoid(g), rounded once to the dtype.
 *   combine: out[t, :] = round(...round(o_0 + o_1) ... ), o_j = round(y[pos(t*TOPK + j)] * round(w)), j
 *            ascending, y in sorted order (pos: the inverse of sorted_slots).
 *   grad_rows: dys[p] = round(round(go[t]) * round(w[s])), dws[p] = sum_h go[t, h] y[p, h] (fp32), s = sorted[p],
 *            t = s / TOPK (the start of the MoE backward's grouped GEMMs).
 * The expert GEMMs of the CPU path run in torch (jamba_ext/ops.py, _moe_experts_torch): the CPU's
 * BLAS (oneDNN/MKL through torch.matmul) beats anything a page of C would do. Between and after them
 * run silu_mul and the combine (C); jamba_moe_experts_cpu itself only checks and refuses.
 * Every output is written, never accumulated.
 */
#include <math.h>
#include <stdlib.h>

#include "../common.h"

static const char *OP_ROUTE = "jamba.moe_route";
static const char *OP_PERMUTE = "jamba.moe_permute";
static const char *OP_EXPERTS = "jamba.moe_experts";
static const char *OP_SILU_MUL = "jamba.silu_mul";
static const char *OP_SILU_MUL_BWD = "jamba.silu_mul_bwd";
static const char *OP_GRAD_ROWS = "jamba.moe_grad_rows";
static const char *OP_COMBINE = "jamba.moe_combine";

#define I32 JAMBA_MASK(JAMBA_I32)
#define SLOTS_LIMIT 2147483647LL /* slots and offsets are int32 */

/* [data, data + numel * size) of two contiguous tensors overlap */
static int overlaps(const jamba_tensor *a, const jamba_tensor *b) {
    if (a->data == NULL || b->data == NULL) return 0;
    int64_t na = 1, nb = 1;
    for (int i = 0; i < a->ndim; i++) na *= a->shape[i];
    for (int i = 0; i < b->ndim; i++) nb *= b->shape[i];
    if (na == 0 || nb == 0) return 0;
    const char *a0 = (const char *)a->data, *b0 = (const char *)b->data;
    return a0 < b0 + nb * jamba_dtype_size(b->dtype) && b0 < a0 + na * jamba_dtype_size(a->dtype);
}

static jamba_status check_no_overlap(const char *op, const char *name, const jamba_tensor *t,
                                     const char *other_name, const jamba_tensor *other) {
    if (!overlaps(t, other)) return JAMBA_OK;
    return jamba_set_error(JAMBA_ERR_ARG, "%s: %s must not overlap %s in memory", op, name, other_name);
}

/* expert_offsets (E+1,) and sorted_slots (slots,), both int32 and contiguous */
static jamba_status check_permutation(const char *op, const jamba_tensor *offsets, const jamba_tensor *sorted,
                                      int64_t E, int64_t slots) {
    const int64_t osh[1] = {E + 1}, ssh[1] = {slots};
    JAMBA_TRY(jamba_check_tensor(op, "expert_offsets", offsets, 1, I32, 0));
    JAMBA_TRY(jamba_check_shape(op, "expert_offsets", offsets, osh));
    JAMBA_TRY(jamba_check_contiguous(op, "expert_offsets", offsets));
    JAMBA_TRY(jamba_check_tensor(op, "sorted_slots", sorted, 1, I32, 0));
    JAMBA_TRY(jamba_check_shape(op, "sorted_slots", sorted, ssh));
    JAMBA_TRY(jamba_check_contiguous(op, "sorted_slots", sorted));
    return check_no_overlap(op, "sorted_slots", sorted, "expert_offsets", offsets);
}

static jamba_status check_experts_count(const char *op, const char *name, int64_t E) {
    if (E < 1 || E > JAMBA_MOE_MAX_EXPERTS)
        return jamba_set_error(JAMBA_ERR_ARG, "%s: %s: the number of experts must be in 1..%d, got %lld", op,
                               name, JAMBA_MOE_MAX_EXPERTS, (long long)E);
    return JAMBA_OK;
}

/* expert_ids: (T, TOPK) int32, contiguous (T < 0: any T), TOPK >= 1, T*TOPK below 2^31; when weights is
 * given: f32 (T, TOPK), contiguous */
static jamba_status check_ids(const char *op, const jamba_tensor *ids, int64_t T, const jamba_tensor *weights) {
    JAMBA_TRY(jamba_check_tensor(op, "expert_ids", ids, 2, I32, 0));
    const int64_t sh[2] = {T < 0 ? ids->shape[0] : T, ids->shape[1]};
    JAMBA_TRY(jamba_check_shape(op, "expert_ids", ids, sh));
    JAMBA_TRY(jamba_check_contiguous(op, "expert_ids", ids));
    if (sh[1] < 1)
        return jamba_set_error(JAMBA_ERR_SHAPE, "%s: expert_ids must have shape (T, TOPK) with TOPK >= 1, got TOPK 0",
                               op);
    if (sh[0] * sh[1] >= SLOTS_LIMIT)
        return jamba_set_error(JAMBA_ERR_ARG, "%s: tokens * top_k must be below 2^31, got %lld", op,
                               (long long)(sh[0] * sh[1]));
    if (weights == NULL) return JAMBA_OK;
    JAMBA_TRY(jamba_check_tensor(op, "weights", weights, 2, JAMBA_MASK(JAMBA_F32), 0));
    JAMBA_TRY(jamba_check_shape(op, "weights", weights, sh));
    return jamba_check_contiguous(op, "weights", weights);
}

/* ---- route ------------------------------------------------------------------------------------------ */
jamba_status jamba_moe_route_check(const jamba_moe_route_params *p) {
    const char *op = OP_ROUTE;
    JAMBA_TRY(jamba_check_tensor(op, "router_logits", &p->logits, 2, JAMBA_FLOATS | JAMBA_MASK(JAMBA_F64), 0));
    JAMBA_TRY(jamba_check_unit_stride(op, "router_logits", &p->logits, 1));
    const int64_t T = p->logits.shape[0], E = p->logits.shape[1], K = p->top_k;
    JAMBA_TRY(check_experts_count(op, "router_logits (T, E)", E));
    if (K < 1 || K > E)
        return jamba_set_error(JAMBA_ERR_ARG, "%s: top_k must be in 1..%lld (the number of experts), got %lld",
                               op, (long long)E, (long long)K);
    if (T * K >= SLOTS_LIMIT)
        return jamba_set_error(JAMBA_ERR_ARG, "%s: tokens * top_k must be below 2^31, got %lld", op,
                               (long long)(T * K));
    const int64_t sh[2] = {T, K};
    JAMBA_TRY(jamba_check_dense(op, "weights", &p->weights, 2, JAMBA_MASK(JAMBA_F32), sh));
    JAMBA_TRY(jamba_check_tensor(op, "expert_ids", &p->expert_ids, 2, I32, 0));
    JAMBA_TRY(jamba_check_shape(op, "expert_ids", &p->expert_ids, sh));
    JAMBA_TRY(jamba_check_contiguous(op, "expert_ids", &p->expert_ids));
    JAMBA_TRY(check_no_overlap(op, "weights", &p->weights, "expert_ids", &p->expert_ids));
    if ((p->expert_offsets.data == NULL) != (p->sorted_slots.data == NULL) && T * K > 0)
        return jamba_set_error(JAMBA_ERR_ARG, "%s: expert_offsets and sorted_slots are given together or not at all",
                               op);
    if (p->expert_offsets.data != NULL)
        JAMBA_TRY(check_permutation(op, &p->expert_offsets, &p->sorted_slots, E, T * K));
    return JAMBA_OK;
}

/* softmax of one row (in place, fp64 for fp64 logits, else fp32) then top-k by repeated argmax */
static void route_row(const jamba_moe_route_params *p, int64_t t, double *buf) {
    const int64_t E = p->logits.shape[1], K = p->top_k;
    const char *row = (const char *)p->logits.data + t * p->logits.stride[0] * jamba_dtype_size(p->logits.dtype);
    float *w = (float *)p->weights.data + t * K;
    int32_t *ids = (int32_t *)p->expert_ids.data + t * K;
    if (p->logits.dtype == JAMBA_F64) {
        const double *l = (const double *)row;
        double m = -INFINITY, s = 0.0;
        for (int64_t e = 0; e < E; e++) m = l[e] > m ? l[e] : m;
        for (int64_t e = 0; e < E; e++) s += (buf[e] = exp(l[e] - m));
        for (int64_t e = 0; e < E; e++) buf[e] /= s;
    } else {
        float m = -INFINITY, s = 0.f;
        for (int64_t e = 0; e < E; e++) {
            buf[e] = jamba_load(row, p->logits.dtype, e);
            m = (float)buf[e] > m ? (float)buf[e] : m;
        }
        for (int64_t e = 0; e < E; e++) {
            float v = expf((float)buf[e] - m);
            buf[e] = v;
            s += v;
        }
        for (int64_t e = 0; e < E; e++) buf[e] = (double)((float)buf[e] / s);
    }
    for (int64_t j = 0; j < K; j++) {
        int64_t best = -1;
        for (int64_t e = 0; e < E; e++) {
            if (buf[e] < -0.5) continue;            /* taken (probabilities are >= 0) */
            if (best < 0 || buf[e] > buf[best]) best = e; /* strict >: ties go to the lower id */
        }
        w[j] = (float)buf[best];
        ids[j] = (int32_t)best;
        buf[best] = -1.0;
    }
}

static void permute(int32_t *offsets, int32_t *sorted, const int32_t *ids, int64_t slots, int64_t E) {
    /* bucket E collects ids outside [0, E); offsets[E] is where it starts */
    int64_t *count = (int64_t *)calloc((size_t)(E + 2), sizeof(int64_t));
    for (int64_t s = 0; s < slots; s++) {
        const int64_t e = (ids[s] >= 0 && ids[s] < E) ? ids[s] : E;
        count[e + 1]++;
    }
    for (int64_t e = 0; e <= E; e++) count[e + 1] += count[e]; /* count[e] = start of bucket e */
    for (int64_t e = 0; e <= E; e++) offsets[e] = (int32_t)count[e];
    for (int64_t s = 0; s < slots; s++) { /* stable: slots in ascending order */
        const int64_t e = (ids[s] >= 0 && ids[s] < E) ? ids[s] : E;
        sorted[count[e]++] = (int32_t)s;
    }
    free(count);
}

jamba_status jamba_moe_route_cpu(const jamba_moe_route_params *p) {
    JAMBA_TRY(jamba_moe_route_check(p));
    const int64_t T = p->logits.shape[0], E = p->logits.shape[1];
    if (T > 0) {
#pragma omp parallel
        {
            double buf[JAMBA_MOE_MAX_EXPERTS];
#pragma omp for schedule(static)
            for (int64_t t = 0; t < T; t++) route_row(p, t, buf);
        }
    }
    if (p->expert_offsets.data != NULL)
        permute((int32_t *)p->expert_offsets.data, (int32_t *)p->sorted_slots.data,
                (const int32_t *)p->expert_ids.data, T * p->top_k, E);
    return JAMBA_OK;
}

/* ---- permute ---------------------------------------------------------------------------------------- */
jamba_status jamba_moe_permute_check(const jamba_moe_permute_params *p) {
    const char *op = OP_PERMUTE;
    JAMBA_TRY(jamba_check_tensor(op, "expert_ids", &p->expert_ids, 2, I32, 0));
    JAMBA_TRY(jamba_check_contiguous(op, "expert_ids", &p->expert_ids));
    JAMBA_TRY(check_experts_count(op, "num_experts", p->num_experts));
    const int64_t slots = p->expert_ids.shape[0] * p->expert_ids.shape[1];
    if (slots >= SLOTS_LIMIT)
        return jamba_set_error(JAMBA_ERR_ARG, "%s: tokens * top_k must be below 2^31, got %lld", op,
                               (long long)slots);
    JAMBA_TRY(check_permutation(op, &p->expert_offsets, &p->sorted_slots, p->num_experts, slots));
    JAMBA_TRY(check_no_overlap(op, "sorted_slots", &p->sorted_slots, "expert_ids", &p->expert_ids));
    return check_no_overlap(op, "expert_offsets", &p->expert_offsets, "expert_ids", &p->expert_ids);
}

jamba_status jamba_moe_permute_cpu(const jamba_moe_permute_params *p) {
    JAMBA_TRY(jamba_moe_permute_check(p));
    permute((int32_t *)p->expert_offsets.data, (int32_t *)p->sorted_slots.data,
            (const int32_t *)p->expert_ids.data, p->expert_ids.shape[0] * p->expert_ids.shape[1],
            p->num_experts);
    return JAMBA_OK;
}

/* ---- experts (checks shared with CUDA) and the CPU combine ---------------------------------------- */
static jamba_status check_same_float(const char *op, const char *name, const jamba_tensor *t,
                                     const jamba_tensor *x, int ndim, const int64_t *shape) {
    JAMBA_TRY(jamba_check_tensor(op, name, t, ndim, JAMBA_FLOATS, 0));
    JAMBA_TRY(jamba_check_same_dtype(op, name, t, "x", x));
    JAMBA_TRY(jamba_check_shape(op, name, t, shape));
    return jamba_check_contiguous(op, name, t);
}

jamba_status jamba_moe_experts_check(const jamba_moe_experts_params *p) {
    const char *op = OP_EXPERTS;
    if (p->impl < JAMBA_MOE_IMPL_AUTO || p->impl > JAMBA_MOE_IMPL_WGMMA || p->impl == JAMBA_MOE_IMPL_COMBINE)
        return jamba_set_error(JAMBA_ERR_ARG, "%s: impl must be one of 0-3, 5-7 (jamba_moe_impl), got %d", op,
                               p->impl);
    JAMBA_TRY(jamba_check_tensor(op, "x", &p->x, 2, JAMBA_FLOATS, 0));
    JAMBA_TRY(jamba_check_contiguous(op, "x", &p->x));
    const int64_t T = p->x.shape[0], H = p->x.shape[1];
    JAMBA_TRY(jamba_check_tensor(op, "w_gate_up", &p->w_gate_up, 3, JAMBA_FLOATS, 0));
    const int64_t E = p->w_gate_up.shape[0], F2 = p->w_gate_up.shape[1], F = F2 / 2;
    JAMBA_TRY(check_experts_count(op, "w_gate_up (E, 2F, H)", E));
    if (F2 % 2 != 0)
        return jamba_set_error(JAMBA_ERR_SHAPE, "%s: w_gate_up must have shape (E, 2F, H) with an even middle "
                               "size (gate rows then up rows), got a middle size of %lld", op, (long long)F2);
    const int64_t gush[3] = {E, F2, H}, dsh[3] = {E, H, F};
    JAMBA_TRY(check_same_float(op, "w_gate_up", &p->w_gate_up, &p->x, 3, gush));
    JAMBA_TRY(check_same_float(op, "w_down", &p->w_down, &p->x, 3, dsh));
    JAMBA_TRY(check_ids(op, &p->expert_ids, T, &p->weights));
    const int64_t K = p->expert_ids.shape[1];
    const int64_t xsh[2] = {T, H};
    JAMBA_TRY(check_permutation(op, &p->expert_offsets, &p->sorted_slots, E, T * K));
    JAMBA_TRY(check_same_float(op, "out", &p->out, &p->x, 2, xsh));
    const int64_t ssh[2] = {T * K, H}, ash[2] = {T * K, F};
    JAMBA_TRY(check_same_float(op, "slot_out", &p->slot_out, &p->x, 2, ssh));
    JAMBA_TRY(check_same_float(op, "act", &p->act, &p->x, 2, ash));
    JAMBA_TRY(jamba_check_tensor(op, "sched", &p->sched, 1, I32, 1));
    if (p->sched.data != NULL) {
        JAMBA_TRY(jamba_check_contiguous(op, "sched", &p->sched));
        if (p->sched.shape[0] < 2)
            return jamba_set_error(JAMBA_ERR_SHAPE, "%s: sched must have at least 2 elements, got %lld", op,
                                   (long long)p->sched.shape[0]);
    }
    const jamba_tensor *ins[] = {&p->x, &p->weights, &p->expert_ids, &p->expert_offsets, &p->sorted_slots,
                                 &p->w_gate_up, &p->w_down, &p->act, &p->slot_out};
    const char *names[] = {"x", "weights", "expert_ids", "expert_offsets", "sorted_slots", "w_gate_up",
                           "w_down", "act", "slot_out"};
    for (int i = 0; i < 9; i++) JAMBA_TRY(check_no_overlap(op, "out", &p->out, names[i], ins[i]));
    for (int i = 0; i < 7; i++) JAMBA_TRY(check_no_overlap(op, "act", &p->act, names[i], ins[i]));
    for (int i = 0; i < 7; i++) JAMBA_TRY(check_no_overlap(op, "slot_out", &p->slot_out, names[i], ins[i]));
    JAMBA_TRY(check_no_overlap(op, "slot_out", &p->slot_out, "act", &p->act));
    if (p->sched.data == NULL) return JAMBA_OK;
    for (int i = 0; i < 9; i++) JAMBA_TRY(check_no_overlap(op, "sched", &p->sched, names[i], ins[i]));
    return check_no_overlap(op, "sched", &p->sched, "out", &p->out);
}

jamba_status jamba_moe_experts_cpu(const jamba_moe_experts_params *p) {
    JAMBA_TRY(jamba_moe_experts_check(p));
    return jamba_set_error(JAMBA_ERR_UNSUPPORTED, "%s: on the CPU the expert GEMMs run in torch (jamba_ext/ops.py) "
                           "around jamba_silu_mul_cpu and jamba_moe_combine_cpu", OP_EXPERTS);
}

/* ---- the pieces around torch GEMMs: silu_mul, combine of sorted rows ----------------------------------- */
/* gate_up (M, 2F): a float tensor with unit stride along 2F and an even last size (silu_mul and its gradient) */
static jamba_status check_gate_up(const char *op, const jamba_tensor *gu) {
    JAMBA_TRY(jamba_check_tensor(op, "gate_up", gu, 2, JAMBA_FLOATS, 0));
    JAMBA_TRY(jamba_check_unit_stride(op, "gate_up", gu, 1));
    if (gu->shape[1] % 2 != 0)
        return jamba_set_error(JAMBA_ERR_SHAPE, "%s: gate_up must have an even last size (gate then up), got %lld",
                               op, (long long)gu->shape[1]);
    return JAMBA_OK;
}

jamba_status jamba_silu_mul_check(const jamba_silu_mul_params *p) {
    const char *op = OP_SILU_MUL;
    JAMBA_TRY(check_gate_up(op, &p->gate_up));
    const int64_t M = p->gate_up.shape[0], F2 = p->gate_up.shape[1];
    const int64_t osh[2] = {M, F2 / 2};
    JAMBA_TRY(check_same_float(op, "out", &p->out, &p->gate_up, 2, osh));
    if (M > 0 && F2 > 0 && p->gate_up.stride[0] < F2 && M > 1)
        return jamba_set_error(JAMBA_ERR_ARG, "%s: gate_up rows must not overlap (row stride %lld < %lld)", op,
                               (long long)p->gate_up.stride[0], (long long)F2);
    if (jamba_tensors_overlap(&p->out, &p->gate_up))
        return jamba_set_error(JAMBA_ERR_ARG, "%s: out must not overlap gate_up in memory", op);
    return JAMBA_OK;
}

jamba_status jamba_silu_mul_cpu(const jamba_silu_mul_params *p) {
    JAMBA_TRY(jamba_silu_mul_check(p));
    const int64_t M = p->gate_up.shape[0], F = p->gate_up.shape[1] / 2, ld = p->gate_up.stride[0];
    const jamba_dtype dt = p->gate_up.dtype;
    const size_t es = jamba_dtype_size(dt);
    if (M == 0 || F == 0) return JAMBA_OK;
#pragma omp parallel for schedule(static) if (M * F >= JAMBA_OMP_MIN_WORK)
    for (int64_t m = 0; m < M; m++) {
        const char *row = (const char *)p->gate_up.data + m * ld * (int64_t)es;
        char *orow = (char *)p->out.data + m * F * (int64_t)es;
        for (int64_t f = 0; f < F; f++) {
            const float g = jamba_load(row, dt, f), u = jamba_load(row, dt, F + f);
            const float a = jamba_round_to(dt, g / (1.f + expf(-g)));
            jamba_store(orow, dt, f, a * u);
        }
    }
    return JAMBA_OK;
}

jamba_status jamba_silu_mul_bwd_check(const jamba_silu_mul_bwd_params *p) {
    const char *op = OP_SILU_MUL_BWD;
    JAMBA_TRY(check_gate_up(op, &p->gate_up));
    const int64_t M = p->gate_up.shape[0], F2 = p->gate_up.shape[1];
    const int64_t dsh[2] = {M, F2 / 2}, gsh[2] = {M, F2};
    JAMBA_TRY(jamba_check_tensor(op, "dout", &p->dout, 2, JAMBA_FLOATS, 0));
    JAMBA_TRY(jamba_check_same_dtype(op, "dout", &p->dout, "gate_up", &p->gate_up));
    JAMBA_TRY(jamba_check_shape(op, "dout", &p->dout, dsh));
    JAMBA_TRY(jamba_check_unit_stride(op, "dout", &p->dout, 1));
    JAMBA_TRY(jamba_check_tensor(op, "dgate_up", &p->dgate_up, 2, JAMBA_FLOATS, 0));
    JAMBA_TRY(jamba_check_same_dtype(op, "dgate_up", &p->dgate_up, "gate_up", &p->gate_up));
    JAMBA_TRY(jamba_check_shape(op, "dgate_up", &p->dgate_up, gsh));
    JAMBA_TRY(jamba_check_contiguous(op, "dgate_up", &p->dgate_up));
    const jamba_tensor *ins[] = {&p->gate_up, &p->dout};
    const char *names[] = {"gate_up", "dout"};
    for (int i = 0; i < 2; i++) {
        if (M > 1 && ins[i]->shape[1] > 0 && ins[i]->stride[0] < ins[i]->shape[1])
            return jamba_set_error(JAMBA_ERR_ARG, "%s: %s rows must not overlap (row stride %lld < %lld)", op,
                                   names[i], (long long)ins[i]->stride[0], (long long)ins[i]->shape[1]);
        if (jamba_tensors_overlap(&p->dgate_up, ins[i]))
            return jamba_set_error(JAMBA_ERR_ARG, "%s: dgate_up must not overlap %s in memory", op, names[i]);
    }
    return JAMBA_OK;
}

jamba_status jamba_silu_mul_bwd_cpu(const jamba_silu_mul_bwd_params *p) {
    JAMBA_TRY(jamba_silu_mul_bwd_check(p));
    const int64_t M = p->gate_up.shape[0], F = p->gate_up.shape[1] / 2;
    const int64_t lg = p->gate_up.stride[0], ld = p->dout.stride[0];
    const jamba_dtype dt = p->gate_up.dtype;
    const int64_t es = (int64_t)jamba_dtype_size(dt);
    if (M == 0 || F == 0) return JAMBA_OK;
#pragma omp parallel for schedule(static) if (M * F >= JAMBA_OMP_MIN_WORK)
    for (int64_t m = 0; m < M; m++) {
        const char *row = (const char *)p->gate_up.data + m * lg * es, *drow = (const char *)p->dout.data + m * ld * es;
        char *orow = (char *)p->dgate_up.data + m * 2 * F * es;
        for (int64_t f = 0; f < F; f++) {
            const float g = jamba_load(row, dt, f), u = jamba_load(row, dt, F + f), d = jamba_load(drow, dt, f);
            const float sg = 1.f / (1.f + expf(-g));
            jamba_store(orow, dt, f, d * u * sg * (1.f + g * (1.f - sg)));
            jamba_store(orow, dt, F + f, d * g * sg);
        }
    }
    return JAMBA_OK;
}

jamba_status jamba_moe_combine_check(const jamba_moe_combine_params *p) {
    const char *op = OP_COMBINE;
    JAMBA_TRY(jamba_check_tensor(op, "y", &p->y, 2, JAMBA_FLOATS, 0));
    JAMBA_TRY(jamba_check_contiguous(op, "y", &p->y));
    JAMBA_TRY(check_experts_count(op, "num_experts", p->num_experts));
    JAMBA_TRY(check_ids(op, &p->expert_ids, -1, &p->weights));
    const int64_t T = p->expert_ids.shape[0], K = p->expert_ids.shape[1], H = p->y.shape[1];
    const int64_t ysh[2] = {T * K, H}, osh[2] = {T, H}, psh[1] = {T * K};
    JAMBA_TRY(jamba_check_shape(op, "y", &p->y, ysh));
    JAMBA_TRY(jamba_check_tensor(op, "sorted_slots", &p->sorted_slots, 1, I32, 0));
    JAMBA_TRY(jamba_check_shape(op, "sorted_slots", &p->sorted_slots, psh));
    JAMBA_TRY(jamba_check_contiguous(op, "sorted_slots", &p->sorted_slots));
    JAMBA_TRY(jamba_check_tensor(op, "slot_pos", &p->slot_pos, 1, I32, 0));
    JAMBA_TRY(jamba_check_shape(op, "slot_pos", &p->slot_pos, psh));
    JAMBA_TRY(jamba_check_contiguous(op, "slot_pos", &p->slot_pos));
    JAMBA_TRY(check_same_float(op, "out", &p->out, &p->y, 2, osh));
    const jamba_tensor *ins[] = {&p->y, &p->weights, &p->expert_ids, &p->sorted_slots};
    const char *names[] = {"y", "weights", "expert_ids", "sorted_slots"};
    for (int i = 0; i < 4; i++) {
        JAMBA_TRY(check_no_overlap(op, "out", &p->out, names[i], ins[i]));
        JAMBA_TRY(check_no_overlap(op, "slot_pos", &p->slot_pos, names[i], ins[i]));
    }
    return check_no_overlap(op, "slot_pos", &p->slot_pos, "out", &p->out);
}

jamba_status jamba_moe_combine_cpu(const jamba_moe_combine_params *p) {
    JAMBA_TRY(jamba_moe_combine_check(p));
    const int64_t T = p->expert_ids.shape[0], K = p->expert_ids.shape[1], H = p->y.shape[1];
    const int64_t E = p->num_experts, slots = T * K;
    const int32_t *ids = (const int32_t *)p->expert_ids.data, *sorted = (const int32_t *)p->sorted_slots.data;
    int32_t *pos = (int32_t *)p->slot_pos.data;
    for (int64_t s = 0; s < slots; s++)
        if (ids[s] < 0 || ids[s] >= E)
            return jamba_set_error(JAMBA_ERR_ARG, "%s: expert_ids[%lld, %lld] = %d is outside [0, %lld)", OP_COMBINE,
                                   (long long)(s / K), (long long)(s % K), ids[s], (long long)E);
    for (int64_t s = 0; s < slots; s++) pos[s] = -1;
    for (int64_t q = 0; q < slots; q++) {
        const int32_t s = sorted[q];
        if (s < 0 || s >= slots || pos[s] >= 0)
            return jamba_set_error(JAMBA_ERR_ARG, "%s: sorted_slots is not a permutation of 0..%lld (entry %lld = %d)",
                                   OP_COMBINE, (long long)(slots - 1), (long long)q, s);
        pos[s] = (int32_t)q;
    }
    const jamba_dtype dt = p->y.dtype;
    const int64_t es = jamba_dtype_size(dt);
    const float *w = (const float *)p->weights.data;
    if (T == 0 || H == 0) return JAMBA_OK;
#pragma omp parallel if (T * H >= JAMBA_OMP_MIN_WORK)
    {
        float *acc = (float *)malloc((size_t)H * sizeof(float));
        float *row = (float *)malloc((size_t)H * sizeof(float));
#pragma omp for schedule(static)
        for (int64_t t = 0; t < T; t++) {
            for (int64_t j = 0; j < K; j++) {
                const int64_t s = t * K + j;
                const float wr = jamba_round_to(dt, w[s]);
                jamba_load_row(row, (const char *)p->y.data + (int64_t)pos[s] * H * es, dt, H, 1);
                for (int64_t h = 0; h < H; h++) {
                    const float o = jamba_round_to(dt, row[h] * wr);
                    acc[h] = j ? jamba_round_to(dt, acc[h] + o) : o;
                }
            }
            jamba_store_row((char *)p->out.data + t * H * es, dt, acc, H, 1);
        }
        free(acc);
        free(row);
    }
    return JAMBA_OK;
}

/* ---- grad_rows ------------------------------------------------------------------------------------------ */
jamba_status jamba_moe_grad_rows_check(const jamba_moe_grad_rows_params *p) {
    const char *op = OP_GRAD_ROWS;
    JAMBA_TRY(jamba_check_tensor(op, "go", &p->go, 2, JAMBA_FLOATS, 0));
    JAMBA_TRY(jamba_check_unit_stride(op, "go", &p->go, 1));
    const int64_t T = p->go.shape[0], H = p->go.shape[1];
    JAMBA_TRY(jamba_check_tensor(op, "weights", &p->weights, 2, JAMBA_MASK(JAMBA_F32), 0));
    JAMBA_TRY(jamba_check_contiguous(op, "weights", &p->weights));
    const int64_t wsh[2] = {T, -1};
    JAMBA_TRY(jamba_check_shape(op, "weights", &p->weights, wsh));
    const int64_t K = p->weights.shape[1], S = T * K;
    if (K < 1) return jamba_set_error(JAMBA_ERR_SHAPE, "%s: weights must have shape (T, TOPK) with TOPK >= 1", op);
    if (S >= SLOTS_LIMIT)
        return jamba_set_error(JAMBA_ERR_ARG, "%s: tokens * top_k must be below 2^31, got %lld", op, (long long)S);
    const int64_t ssh[1] = {S}, rsh[2] = {S, H};
    JAMBA_TRY(jamba_check_tensor(op, "sorted_slots", &p->sorted_slots, 1, I32, 0));
    JAMBA_TRY(jamba_check_shape(op, "sorted_slots", &p->sorted_slots, ssh));
    JAMBA_TRY(jamba_check_contiguous(op, "sorted_slots", &p->sorted_slots));
    JAMBA_TRY(jamba_check_dense(op, "dys", &p->dys, 2, JAMBA_MASK(p->go.dtype), rsh));
    JAMBA_TRY(jamba_check_tensor(op, "y", &p->y, 2, JAMBA_MASK(p->go.dtype), 1));
    JAMBA_TRY(jamba_check_tensor(op, "dws", &p->dws, 1, JAMBA_MASK(JAMBA_F32), 1));
    if (!p->y.data != !p->dws.data)
        return jamba_set_error(JAMBA_ERR_ARG, "%s: y and dws go together (the routing weights' gradient): give both or "
                               "neither", op);
    if (p->y.data) {
        JAMBA_TRY(jamba_check_shape(op, "y", &p->y, rsh));
        JAMBA_TRY(jamba_check_contiguous(op, "y", &p->y));
        JAMBA_TRY(jamba_check_shape(op, "dws", &p->dws, ssh));
        JAMBA_TRY(jamba_check_contiguous(op, "dws", &p->dws));
    }
    const jamba_tensor *outs[] = {&p->dys, &p->dws}, *ins[] = {&p->go, &p->y, &p->weights, &p->sorted_slots};
    const char *onames[] = {"dys", "dws"}, *inames[] = {"go", "y", "weights", "sorted_slots"};
    for (int i = 0; i < 2; i++)
        for (int j = 0; j < 4; j++)
            if (jamba_tensors_overlap(outs[i], ins[j]))
                return jamba_set_error(JAMBA_ERR_ARG, "%s: %s must not overlap %s in memory", op, onames[i], inames[j]);
    if (jamba_tensors_overlap(&p->dys, &p->dws))
        return jamba_set_error(JAMBA_ERR_ARG, "%s: dys must not overlap dws in memory", op);
    return JAMBA_OK;
}

/* sum_h a[h] b[h]: fp32 products summed in fp32 lanes over blocks of 1024, the blocks in double (vectorised) */
JAMBA_CPU_CLONES
static float grad_rows_dot(const float *restrict a, const float *restrict b, int64_t n) {
    double acc = 0.0;
    for (int64_t h0 = 0; h0 < n; h0 += 1024) {
        const int64_t h1 = h0 + 1024 < n ? h0 + 1024 : n;
        float part = 0.f;
#pragma omp simd reduction(+ : part)
        for (int64_t h = h0; h < h1; h++) part += a[h] * b[h];
        acc += (double)part;
    }
    return (float)acc;
}

JAMBA_CPU_CLONES
static void grad_rows_scale(float *restrict g, float w, int64_t n) {
#pragma omp simd
    for (int64_t h = 0; h < n; h++) g[h] *= w;
}

jamba_status jamba_moe_grad_rows_cpu(const jamba_moe_grad_rows_params *p) {
    JAMBA_TRY(jamba_moe_grad_rows_check(p));
    const int64_t T = p->go.shape[0], H = p->go.shape[1], K = p->weights.shape[1], S = T * K, ld = p->go.stride[0];
    const int32_t *sorted = (const int32_t *)p->sorted_slots.data;
    for (int64_t q = 0; q < S; q++)
        if (sorted[q] < 0 || sorted[q] >= S)
            return jamba_set_error(JAMBA_ERR_ARG, "%s: sorted_slots[%lld] = %d is outside [0, %lld)", OP_GRAD_ROWS,
                                   (long long)q, sorted[q], (long long)S);
    const jamba_dtype dt = p->go.dtype;
    const int64_t es = jamba_dtype_size(dt);
    const float *w = (const float *)p->weights.data;
    float *dws = (float *)p->dws.data;
    if (S == 0) return JAMBA_OK;
    int failed = 0;
#pragma omp parallel if (S * H >= JAMBA_OMP_MIN_WORK)
    {
        float *g = (float *)malloc((size_t)(2 * H + 1) * sizeof(float)), *y = g + H;
        if (!g) {
#pragma omp atomic write
            failed = 1;
        }
#pragma omp for schedule(static)
        for (int64_t q = 0; q < S; q++) {
            if (!g) continue;
            const int64_t s = sorted[q];
            jamba_load_row(g, (const char *)p->go.data + (s / K) * ld * es, dt, H, 1);
            if (dws) {
                jamba_load_row(y, (const char *)p->y.data + q * H * es, dt, H, 1);
                dws[q] = grad_rows_dot(g, y, H);
            }
            grad_rows_scale(g, jamba_round_to(dt, w[s]), H);
            jamba_store_row((char *)p->dys.data + q * H * es, dt, g, H, 1);
        }
        free(g);
    }
    if (failed) return jamba_set_error(JAMBA_ERR_ARG, "%s: out of memory for row buffers", OP_GRAD_ROWS);
    return JAMBA_OK;
}
