/* decode_attention.c -- softmax attention of a few query rows per KV head over a KV cache, on the CPU.
 *
 * Exports: jamba_decode_attention_check (shared with csrc/cuda/decode_attention.cu), jamba_decode_attention_cpu.
 * Layout (csrc/jamba.h): q, out (B, HKV, R, D); k, v (B, HKV, S, D); unit stride along D, any other strides, one float
 * dtype; key_mask (B, S) bool, optional. The workspace tensors are CUDA's and ignored here.
 * Math, per (b, h, r), in fp32: s_j = scale * dot(q, k_j) for the keys that take part, m = max s_j,
 * out = round_x( sum_j exp(s_j - m) v_j / sum_j exp(s_j - m) ), 0 when no key takes part. Two passes over the keys
 * (scores, then the weighted sum); one (b, h) per OpenMP iteration, its R rows together.
 * NaN (as jamba_ext/reference.py): m is NaN when a score is (a NaN in q or in an attended key's K row), and then every
 * exp(s_j - m), so the whole output row, is NaN; a NaN in an attended V row reaches its column through e * v. A masked
 * key's K and V rows are never read.
 */
#include <math.h>
#include <stdlib.h>

#include "../common.h"

static const char *OP_ATTN = "jamba.decode_attention";

static jamba_status check_rows4(const char *name, const jamba_tensor *t, const int64_t *shape, jamba_dtype dt) {
    JAMBA_TRY(jamba_check_tensor(OP_ATTN, name, t, 4, JAMBA_MASK(dt), 0));
    JAMBA_TRY(jamba_check_shape(OP_ATTN, name, t, shape));
    return jamba_check_unit_stride(OP_ATTN, name, t, 3);
}

jamba_status jamba_decode_attention_check(const jamba_decode_attention_params *p) {
    const char *op = OP_ATTN;
    JAMBA_TRY(jamba_check_tensor(op, "q", &p->q, 4, JAMBA_FLOATS, 0));
    JAMBA_TRY(jamba_check_unit_stride(op, "q", &p->q, 3));
    const int64_t B = p->q.shape[0], H = p->q.shape[1], R = p->q.shape[2], D = p->q.shape[3];
    const int64_t ksh[4] = {B, H, -1, D};
    JAMBA_TRY(check_rows4("k", &p->k, ksh, p->q.dtype));
    const int64_t S = p->k.shape[2];
    const int64_t vsh[4] = {B, H, S, D}, osh[4] = {B, H, R, D};
    JAMBA_TRY(check_rows4("v", &p->v, vsh, p->q.dtype));
    JAMBA_TRY(check_rows4("out", &p->out, osh, p->q.dtype));
    JAMBA_TRY(jamba_check_tensor(op, "key_mask", &p->key_mask, 2, JAMBA_MASK(JAMBA_U8), 1));
    if (p->key_mask.data) {
        const int64_t msh[2] = {B, S};
        JAMBA_TRY(jamba_check_shape(op, "key_mask", &p->key_mask, msh));
    }
    if (!isfinite(p->scale))
        return jamba_set_error(JAMBA_ERR_ARG, "%s: scale must be finite, got %g", op, p->scale);
    return JAMBA_OK;
}

/* one (b, h): its R query rows against the S keys; s (S floats), row (D floats), acc (D floats) are scratch */
static void attn_head(const jamba_decode_attention_params *p, int64_t b, int64_t h, float *s, float *qr, float *row,
                      float *acc) {
    const int64_t R = p->q.shape[2], D = p->q.shape[3], S = p->k.shape[2];
    const jamba_dtype dt = p->q.dtype;
    const int64_t es = jamba_dtype_size(dt);
    const char *q0 = (const char *)p->q.data + (b * p->q.stride[0] + h * p->q.stride[1]) * es;
    const char *k0 = (const char *)p->k.data + (b * p->k.stride[0] + h * p->k.stride[1]) * es;
    const char *v0 = (const char *)p->v.data + (b * p->v.stride[0] + h * p->v.stride[1]) * es;
    char *o0 = (char *)p->out.data + (b * p->out.stride[0] + h * p->out.stride[1]) * es;
    const unsigned char *mask =
        p->key_mask.data ? (const unsigned char *)p->key_mask.data + b * p->key_mask.stride[0] : NULL;
    const int64_t ms = p->key_mask.data ? p->key_mask.stride[1] : 0;
    const float scale = (float)p->scale;
    for (int64_t r = 0; r < R; r++) {
        jamba_load_row(qr, q0 + r * p->q.stride[2] * es, dt, D, 1);
        float m = -INFINITY;
        for (int64_t j = 0; j < S; j++) {
            if (mask && !mask[j * ms]) continue;
            jamba_load_row(row, k0 + j * p->k.stride[2] * es, dt, D, 1);
            float d = 0.f;
            for (int64_t i = 0; i < D; i++) d += qr[i] * row[i];
            s[j] = d * scale;
            m = (s[j] > m || s[j] != s[j]) ? s[j] : m;  /* a NaN score sticks (no comparison with m = NaN holds) */
        }
        for (int64_t i = 0; i < D; i++) acc[i] = 0.f;
        float l = 0.f;
        if (m != -INFINITY) {  /* (NaN m passes: a NaN row) */
            for (int64_t j = 0; j < S; j++) {
                if (mask && !mask[j * ms]) continue;
                const float e = expf(s[j] - m);
                l += e;
                jamba_load_row(row, v0 + j * p->v.stride[2] * es, dt, D, 1);
                for (int64_t i = 0; i < D; i++) acc[i] += e * row[i];
            }
        }
        const float inv = l == 0.f ? 0.f : 1.f / l;  /* (l NaN: NaN) */
        for (int64_t i = 0; i < D; i++) acc[i] *= inv;
        jamba_store_row(o0 + r * p->out.stride[2] * es, dt, acc, D, 1);
    }
}

jamba_status jamba_decode_attention_cpu(const jamba_decode_attention_params *p) {
    JAMBA_TRY(jamba_decode_attention_check(p));
    const int64_t B = p->q.shape[0], H = p->q.shape[1], R = p->q.shape[2], D = p->q.shape[3], S = p->k.shape[2];
    if (B == 0 || H == 0 || R == 0 || D == 0) return JAMBA_OK;
    int oom = 0;
#pragma omp parallel if (B * H * R * S * D > JAMBA_OMP_MIN_WORK)
    {
        float *s = (float *)malloc((size_t)(S > 0 ? S : 1) * sizeof(float));
        float *buf = (float *)malloc((size_t)(3 * D) * sizeof(float));
        if (!s || !buf) {
#pragma omp atomic write
            oom = 1;
        } else {
#pragma omp for schedule(static)
            for (int64_t bh = 0; bh < B * H; bh++) attn_head(p, bh / H, bh % H, s, buf, buf + D, buf + 2 * D);
        }
        free(s);
        free(buf);
    }
    if (oom) return jamba_set_error(JAMBA_ERR_ARG, "%s: out of memory (S = %lld)", OP_ATTN, (long long)S);
    return JAMBA_OK;
}
