/* fp8.c -- fp8 (e4m3) expert weights on the CPU: dequant_fp8 and moe_experts_fp8 (few tokens), and the argument
 * checks both backends share.
 *
 * Exports: jamba_dequant_fp8_check / _cpu, jamba_moe_experts_fp8_check / _cpu.
 * Layouts and semantics: csrc/jamba.h (JAMBA_FP8_API):
 *   dequant_fp8      out (R, K) f32|f16|bf16 = round(e4m3(q (R, K) u8) * scale (R,) f32), groups of R/G rows skipped
 *                    where group_offsets (G+1,) i32 says no rows are routed to them
 *   moe_experts_fp8  x (T, H), weights / expert_ids (T, TOPK), w_gate_up (E, 2F, H) u8 + s_gate_up (E, 2F) f32,
 *                    w_down (E, H, F) u8 + s_down (E, H) f32, act (T*TOPK, F) workspace, out (T, H)
 * The e4m3 values come from a 256-entry table (exact: every e4m3 value is an fp32). moe_experts_fp8 is the decode
 * form (jamba_ext/ops.py calls it up to FP8_GEMV_MAX_TOKENS tokens; larger batches dequantize and run torch GEMMs):
 * each weight row is decoded and dotted with the slot's row, fp32 sums over 8 interleaved partials added in a fixed
 * order (deterministic), OpenMP over the output rows.
 */
#include "../common.h"

#include <math.h>
#include <stdlib.h>

static const char *OP_DEQUANT = "jamba.dequant_fp8";
static const char *OP_MOE_FP8 = "jamba.moe_experts_fp8";

/* e4m3 (bias 7, no infinities) -> fp32: e = 0 subnormal m/8 * 2^-6, e = 15 and m = 7 NaN */
static float e4m3_value(unsigned b) {
    const unsigned e = (b >> 3) & 15u, m = b & 7u;
    float v;
    if (e == 15u && m == 7u)
        v = NAN;
    else if (e == 0u)
        v = ldexpf((float)m, -9);
    else
        v = ldexpf((float)(8u + m), (int)e - 10);
    return (b & 0x80u) ? -v : v;
}

static float e4m3_lut[256];
static int e4m3_lut_ready; /* built before any parallel region; a second build by another thread writes the same */

static const float *e4m3_table(void) {
    if (!e4m3_lut_ready) {
        for (unsigned b = 0; b < 256u; b++) e4m3_lut[b] = e4m3_value(b);
        e4m3_lut_ready = 1;
    }
    return e4m3_lut;
}

jamba_status jamba_dequant_fp8_check(const jamba_dequant_fp8_params *p) {
    const char *op = OP_DEQUANT;
    JAMBA_TRY(jamba_check_tensor(op, "q", &p->q, 2, JAMBA_MASK(JAMBA_U8), 0));
    JAMBA_TRY(jamba_check_contiguous(op, "q", &p->q));
    const int64_t R = p->q.shape[0], K = p->q.shape[1];
    JAMBA_TRY(jamba_check_tensor(op, "out", &p->out, 2, JAMBA_FLOATS, 0));
    const int64_t osh[2] = {R, K};
    JAMBA_TRY(jamba_check_shape(op, "out", &p->out, osh));
    JAMBA_TRY(jamba_check_contiguous(op, "out", &p->out));
    JAMBA_TRY(jamba_check_tensor(op, "scale", &p->scale, 1, JAMBA_MASK(JAMBA_F32), 0));
    const int64_t ssh[1] = {R};
    JAMBA_TRY(jamba_check_shape(op, "scale", &p->scale, ssh));
    JAMBA_TRY(jamba_check_contiguous(op, "scale", &p->scale));
    JAMBA_TRY(jamba_check_tensor(op, "group_offsets", &p->group_offsets, 1, JAMBA_MASK(JAMBA_I32), 1));
    if (p->group_offsets.data) {
        JAMBA_TRY(jamba_check_contiguous(op, "group_offsets", &p->group_offsets));
        const int64_t G = p->group_offsets.shape[0] - 1;
        if (G < 1 || R % G != 0)
            return jamba_set_error(JAMBA_ERR_SHAPE, "%s: group_offsets must have G+1 entries with G >= 1 dividing the "
                                   "%lld rows, got %lld entries", op, (long long)R, (long long)(G + 1));
    }
    if (jamba_tensors_overlap(&p->out, &p->q) || jamba_tensors_overlap(&p->out, &p->scale))
        return jamba_set_error(JAMBA_ERR_ARG, "%s: out must not overlap q or scale in memory", op);
    return JAMBA_OK;
}

jamba_status jamba_dequant_fp8_cpu(const jamba_dequant_fp8_params *p) {
    JAMBA_TRY(jamba_dequant_fp8_check(p));
    const int64_t R = p->q.shape[0], K = p->q.shape[1];
    const int64_t G = p->group_offsets.data ? p->group_offsets.shape[0] - 1 : 1, per = G ? R / G : R;
    const int32_t *go = (const int32_t *)p->group_offsets.data;
    const uint8_t *q = (const uint8_t *)p->q.data;
    const float *sc = (const float *)p->scale.data, *lut = e4m3_table();
    const jamba_dtype dt = p->out.dtype;
    const int64_t es = jamba_dtype_size(dt);
    if (R == 0 || K == 0) return JAMBA_OK;
#pragma omp parallel if (R * K >= JAMBA_OMP_MIN_WORK)
    {
        float *row = (float *)malloc((size_t)K * sizeof(float));
#pragma omp for schedule(static)
        for (int64_t r = 0; r < R; r++) {
            if (go && go[r / per + 1] == go[r / per]) continue;
            const uint8_t *qr = q + r * K;
            const float s = sc[r];
            for (int64_t k = 0; k < K; k++) row[k] = lut[qr[k]] * s;
            jamba_store_row((char *)p->out.data + r * K * es, dt, row, K, 1);
        }
        free(row);
    }
    return JAMBA_OK;
}

jamba_status jamba_moe_experts_fp8_check(const jamba_moe_experts_fp8_params *p) {
    const char *op = OP_MOE_FP8;
    JAMBA_TRY(jamba_check_tensor(op, "x", &p->x, 2, JAMBA_FLOATS, 0));
    JAMBA_TRY(jamba_check_contiguous(op, "x", &p->x));
    const int64_t T = p->x.shape[0], H = p->x.shape[1];
    JAMBA_TRY(jamba_check_tensor(op, "out", &p->out, 2, JAMBA_MASK(p->x.dtype), 0));
    const int64_t xsh[2] = {T, H};
    JAMBA_TRY(jamba_check_shape(op, "out", &p->out, xsh));
    JAMBA_TRY(jamba_check_contiguous(op, "out", &p->out));
    JAMBA_TRY(jamba_check_tensor(op, "expert_ids", &p->expert_ids, 2, JAMBA_MASK(JAMBA_I32), 0));
    JAMBA_TRY(jamba_check_contiguous(op, "expert_ids", &p->expert_ids));
    const int64_t K = p->expert_ids.shape[1];
    const int64_t ish[2] = {T, K};
    JAMBA_TRY(jamba_check_shape(op, "expert_ids", &p->expert_ids, ish));
    JAMBA_TRY(jamba_check_dense(op, "weights", &p->weights, 2, JAMBA_MASK(JAMBA_F32), ish));
    JAMBA_TRY(jamba_check_tensor(op, "w_down", &p->w_down, 3, JAMBA_MASK(JAMBA_U8), 0));
    JAMBA_TRY(jamba_check_contiguous(op, "w_down", &p->w_down));
    const int64_t E = p->w_down.shape[0], F = p->w_down.shape[2];
    const int64_t dsh[3] = {E, H, F}, gsh[3] = {E, 2 * F, H}, sgs[2] = {E, 2 * F}, sds[2] = {E, H};
    JAMBA_TRY(jamba_check_shape(op, "w_down", &p->w_down, dsh));
    JAMBA_TRY(jamba_check_dense(op, "w_gate_up", &p->w_gate_up, 3, JAMBA_MASK(JAMBA_U8), gsh));
    JAMBA_TRY(jamba_check_dense(op, "s_gate_up", &p->s_gate_up, 2, JAMBA_MASK(JAMBA_F32), sgs));
    JAMBA_TRY(jamba_check_dense(op, "s_down", &p->s_down, 2, JAMBA_MASK(JAMBA_F32), sds));
    JAMBA_TRY(jamba_check_tensor(op, "act", &p->act, 2, JAMBA_MASK(p->x.dtype), 0));
    const int64_t ash[2] = {T * K, F};
    JAMBA_TRY(jamba_check_shape(op, "act", &p->act, ash));
    JAMBA_TRY(jamba_check_contiguous(op, "act", &p->act));
    if (E < 1 || K < 1)
        return jamba_set_error(JAMBA_ERR_SHAPE, "%s: need at least one expert and TOPK >= 1, got E %lld, TOPK %lld",
                               op, (long long)E, (long long)K);
    const int given = (p->expert_offsets.data != NULL) + (p->sorted_slots.data != NULL) + (p->slot_out.data != NULL);
    if (given != 0 && given != 3)
        return jamba_set_error(JAMBA_ERR_ARG, "%s: expert_offsets, sorted_slots and slot_out are given together or "
                               "not at all", op);
    if (given) { /* moe_route's permutation and the slot_out workspace */
        const int64_t osh[1] = {E + 1}, ssh[1] = {T * K}, wsh[2] = {T * K, H};
        JAMBA_TRY(jamba_check_dense(op, "expert_offsets", &p->expert_offsets, 1, JAMBA_MASK(JAMBA_I32), osh));
        JAMBA_TRY(jamba_check_dense(op, "sorted_slots", &p->sorted_slots, 1, JAMBA_MASK(JAMBA_I32), ssh));
        JAMBA_TRY(jamba_check_dense(op, "slot_out", &p->slot_out, 2, JAMBA_MASK(p->x.dtype), wsh));
        if (jamba_tensors_overlap(&p->slot_out, &p->act) || jamba_tensors_overlap(&p->slot_out, &p->x))
            return jamba_set_error(JAMBA_ERR_ARG, "%s: slot_out must not overlap act or x", op);
    }
    const int q8 = (p->act8.data != NULL) + (p->x_scale.data != NULL) + (p->act_scale.data != NULL) +
                   (p->sched.data != NULL);
    if (q8 != 0 && (q8 != 4 || !given))
        return jamba_set_error(JAMBA_ERR_ARG, "%s: fp8 activations take act8, x_scale, act_scale and sched together, "
                               "with the permutation", op);
    if (q8) { /* the W8A8 workspaces */
        const int64_t a8[2] = {T * K, F}, ssh[1] = {T * K};
        JAMBA_TRY(jamba_check_dense(op, "act8", &p->act8, 2, JAMBA_MASK(JAMBA_U8), a8));
        JAMBA_TRY(jamba_check_dense(op, "x_scale", &p->x_scale, 1, JAMBA_MASK(JAMBA_F32), ssh));
        JAMBA_TRY(jamba_check_dense(op, "act_scale", &p->act_scale, 1, JAMBA_MASK(JAMBA_F32), ssh));
        JAMBA_TRY(jamba_check_tensor(op, "sched", &p->sched, 1, JAMBA_MASK(JAMBA_I32), 0));
        JAMBA_TRY(jamba_check_contiguous(op, "sched", &p->sched));
        if (p->sched.shape[0] < 2)
            return jamba_set_error(JAMBA_ERR_SHAPE, "%s: sched needs at least 2 elements", op);
        const jamba_tensor *ws[] = {&p->act8, &p->x_scale, &p->act_scale, &p->sched};
        const jamba_tensor *os[] = {&p->x, &p->act, &p->slot_out, &p->act8, &p->x_scale, &p->act_scale, &p->sched};
        for (int i = 0; i < 4; i++)
            for (int j = 0; j < 7; j++)
                if (os[j] != ws[i] && jamba_tensors_overlap(ws[i], os[j]))
                    return jamba_set_error(JAMBA_ERR_ARG, "%s: the fp8 activation workspaces must not overlap each "
                                           "other, x, act or slot_out", op);
    }
    const jamba_tensor *ins[] = {&p->x, &p->weights, &p->expert_ids, &p->w_gate_up, &p->s_gate_up, &p->w_down,
                                 &p->s_down, &p->act, &p->expert_offsets, &p->sorted_slots, &p->slot_out,
                                 &p->act8, &p->x_scale, &p->act_scale, &p->sched};
    for (int i = 0; i < 15; i++)
        if (ins[i]->data && jamba_tensors_overlap(&p->out, ins[i]))
            return jamba_set_error(JAMBA_ERR_ARG, "%s: out must not overlap an input or the workspace", op);
    return JAMBA_OK;
}

/* sum_k lut[w[k]] * x[k] over 8 interleaved partials, added pairwise in a fixed order */
static float dot_e4m3(const uint8_t *w, const float *x, int64_t K, const float *lut) {
    float s[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
    int64_t k = 0;
    for (; k + 8 <= K; k += 8)
        for (int i = 0; i < 8; i++) s[i] += lut[w[k + i]] * x[k + i];
    for (int i = 0; k < K; k++, i++) s[i] += lut[w[k]] * x[k];
    return ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));
}

jamba_status jamba_moe_experts_fp8_cpu(const jamba_moe_experts_fp8_params *p) {
    JAMBA_TRY(jamba_moe_experts_fp8_check(p));
    if (p->act8.data != NULL)
        return jamba_set_error(JAMBA_ERR_UNSUPPORTED, "%s: fp8 activations (act8) run on Hopper GPUs only "
                               "(jamba_ext.ops.moe_experts_fp8 keeps bf16 activations elsewhere)", OP_MOE_FP8);
    const int64_t T = p->x.shape[0], H = p->x.shape[1], K = p->expert_ids.shape[1];
    const int64_t E = p->w_down.shape[0], F = p->w_down.shape[2];
    const int32_t *ids = (const int32_t *)p->expert_ids.data;
    for (int64_t s = 0; s < T * K; s++)
        if (ids[s] < 0 || ids[s] >= E)
            return jamba_set_error(JAMBA_ERR_ARG, "%s: expert_ids[%lld, %lld] = %d is outside [0, %lld)", OP_MOE_FP8,
                                   (long long)(s / K), (long long)(s % K), ids[s], (long long)E);
    if (T == 0 || H == 0) return JAMBA_OK;
    const jamba_dtype dt = p->x.dtype;
    const int64_t es = jamba_dtype_size(dt);
    const float *lut = e4m3_table(), *w = (const float *)p->weights.data;
    const float *sgu = (const float *)p->s_gate_up.data, *sd = (const float *)p->s_down.data;
    const uint8_t *wgu = (const uint8_t *)p->w_gate_up.data, *wd = (const uint8_t *)p->w_down.data;
    float *xf = (float *)malloc((size_t)(H + F + 1) * sizeof(float)), *af = xf + H;
    float *acc = (float *)calloc((size_t)H + 1, sizeof(float));
    if (!xf || !acc) {
        free(xf);
        free(acc);
        return jamba_set_error(JAMBA_ERR_ARG, "%s: out of host memory", OP_MOE_FP8);
    }
    for (int64_t t = 0; t < T; t++) {
        jamba_load_row(xf, (const char *)p->x.data + t * H * es, dt, H, 1);
        for (int64_t j = 0; j < K; j++) {
            const int64_t s = t * K + j, e = ids[s];
            const uint8_t *We = wgu + e * 2 * F * H;
            char *arow = (char *)p->act.data + s * F * es;
#pragma omp parallel for schedule(static) if (F * H >= JAMBA_OMP_MIN_WORK)
            for (int64_t f = 0; f < F; f++) {
                const float g = jamba_round_to(dt, sgu[e * 2 * F + f] * dot_e4m3(We + f * H, xf, H, lut));
                const float u = jamba_round_to(dt, sgu[e * 2 * F + F + f] * dot_e4m3(We + (F + f) * H, xf, H, lut));
                jamba_store(arow, dt, f, jamba_round_to(dt, g / (1.f + expf(-g))) * u);
            }
            jamba_load_row(af, arow, dt, F, 1);
            const uint8_t *Wd = wd + e * H * F;
            const float wr = jamba_round_to(dt, w[s]);
#pragma omp parallel for schedule(static) if (F * H >= JAMBA_OMP_MIN_WORK)
            for (int64_t h = 0; h < H; h++) {
                const float y = jamba_round_to(dt, sd[e * H + h] * dot_e4m3(Wd + h * F, af, F, lut));
                const float o = jamba_round_to(dt, y * wr);
                acc[h] = j ? jamba_round_to(dt, acc[h] + o) : o;
            }
        }
        jamba_store_row((char *)p->out.data + t * H * es, dt, acc, H, 1);
    }
    free(xf);
    free(acc);
    return JAMBA_OK;
}
