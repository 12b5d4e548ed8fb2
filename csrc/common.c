/* common.c -- error state, argument checks and dtype conversion shared by the core. */
#include "common.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>

static _Thread_local char last_error[1024];

const char *jamba_last_error(void) { return last_error; }

jamba_status jamba_set_error(jamba_status s, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(last_error, sizeof last_error, fmt, ap);
    va_end(ap);
    return s;
}

const char *jamba_status_string(jamba_status s) {
    switch (s) {
    case JAMBA_OK: return "ok";
    case JAMBA_ERR_ARG: return "invalid argument";
    case JAMBA_ERR_SHAPE: return "invalid shape";
    case JAMBA_ERR_DTYPE: return "invalid dtype";
    case JAMBA_ERR_CUDA: return "CUDA error";
    case JAMBA_ERR_UNSUPPORTED: return "unsupported";
    }
    return "unknown status";
}

const char *jamba_dtype_name(jamba_dtype d) {
    switch (d) {
    case JAMBA_F32: return "float32";
    case JAMBA_F16: return "float16";
    case JAMBA_BF16: return "bfloat16";
    case JAMBA_F64: return "float64";
    case JAMBA_I32: return "int32";
    case JAMBA_I64: return "int64";
    case JAMBA_U8: return "bool/uint8";
    }
    return "unknown";
}

/* "(2, 5, *)": a negative size (an expected shape's wildcard) prints as * */
static void fmt_dims(char *buf, size_t n, const int64_t *d, int ndim) {
    size_t o = 0;
    o += (size_t)snprintf(buf + o, n - o, "(");
    for (int i = 0; i < ndim && o < n; i++) {
        if (d[i] < 0)
            o += (size_t)snprintf(buf + o, n - o, i ? ", *" : "*");
        else
            o += (size_t)snprintf(buf + o, n - o, i ? ", %lld" : "%lld", (long long)d[i]);
    }
    if (ndim == 1 && o < n) o += (size_t)snprintf(buf + o, n - o, ",");
    if (o < n) snprintf(buf + o, n - o, ")");
}

static void fmt_mask(char *buf, size_t n, unsigned mask) {
    size_t o = 0;
    buf[0] = 0;
    for (int d = 0; d < 6 && o < n; d++)
        if (mask & JAMBA_MASK(d))
            o += (size_t)snprintf(buf + o, n - o, "%s%s", o ? "|" : "", jamba_dtype_name((jamba_dtype)d));
}

jamba_status jamba_check_tensor(const char *op, const char *name, const jamba_tensor *t, int ndim,
                                unsigned dtype_mask, int optional) {
    if (t->data == NULL) {
        if (optional) return JAMBA_OK;
        /* an empty tensor may legitimately have a NULL pointer: accept it when it has elements 0 */
        int empty = 0;
        for (int i = 0; i < t->ndim; i++) empty |= (t->shape[i] == 0);
        if (!(empty && t->ndim == ndim))
            return jamba_set_error(JAMBA_ERR_ARG, "%s: %s is required but was not given", op, name);
    }
    if (t->ndim != ndim)
        return jamba_set_error(JAMBA_ERR_SHAPE, "%s: %s must have %d dimensions, got %d", op, name, ndim,
                               t->ndim);
    if (!(dtype_mask & JAMBA_MASK(t->dtype))) {
        char m[96];
        fmt_mask(m, sizeof m, dtype_mask);
        return jamba_set_error(JAMBA_ERR_DTYPE, "%s: %s must have dtype %s, got %s", op, name, m,
                               jamba_dtype_name(t->dtype));
    }
    for (int i = 0; i < ndim; i++)
        if (t->shape[i] < 0)
            return jamba_set_error(JAMBA_ERR_SHAPE, "%s: %s has a negative size", op, name);
    return JAMBA_OK;
}

jamba_status jamba_check_shape(const char *op, const char *name, const jamba_tensor *t,
                               const int64_t *expected) {
    for (int i = 0; i < t->ndim; i++) {
        if (expected[i] >= 0 && expected[i] != t->shape[i]) {
            char e[128], g[128];
            fmt_dims(e, sizeof e, expected, t->ndim);
            fmt_dims(g, sizeof g, t->shape, t->ndim);
            return jamba_set_error(JAMBA_ERR_SHAPE, "%s: %s must have shape %s, got %s", op, name, e, g);
        }
    }
    return JAMBA_OK;
}

jamba_status jamba_check_unit_stride(const char *op, const char *name, const jamba_tensor *t, int dim) {
    if (t->data == NULL || t->shape[dim] <= 1 || t->stride[dim] == 1) return JAMBA_OK;
    char s[128];
    fmt_dims(s, sizeof s, t->stride, t->ndim);
    return jamba_set_error(JAMBA_ERR_SHAPE, "%s: %s must have stride 1 along dimension %d, got strides %s",
                           op, name, dim, s);
}

jamba_status jamba_check_workspace(const char *op, const jamba_tensor *ws, int64_t need) {
    JAMBA_TRY(jamba_check_tensor(op, "ws", ws, 1, JAMBA_MASK(JAMBA_F32), 0));
    JAMBA_TRY(jamba_check_contiguous(op, "ws", ws));
    if (ws->shape[0] < need)
        return jamba_set_error(JAMBA_ERR_SHAPE, "%s: ws: expected at least %lld f32 elements, got %lld", op,
                               (long long)need, (long long)ws->shape[0]);
    return JAMBA_OK;
}

int jamba_tensors_overlap(const jamba_tensor *a, const jamba_tensor *b) {
    const jamba_tensor *t[2] = {a, b};
    const char *lo[2], *hi[2];
    for (int k = 0; k < 2; k++) {
        if (t[k]->data == NULL) return 0;
        int64_t last = 0;
        for (int i = 0; i < t[k]->ndim; i++) {
            if (t[k]->shape[i] == 0) return 0;
            last += (t[k]->shape[i] - 1) * (t[k]->stride[i] < 0 ? -t[k]->stride[i] : t[k]->stride[i]);
        }
        lo[k] = (const char *)t[k]->data;
        hi[k] = lo[k] + (last + 1) * (int64_t)jamba_dtype_size(t[k]->dtype);
    }
    return lo[0] < hi[1] && lo[1] < hi[0];
}

jamba_status jamba_check_no_self_overlap(const char *op, const char *name, const jamba_tensor *t) {
    if (t->data == NULL) return JAMBA_OK;
    int64_t st[JAMBA_MAX_DIMS], sz[JAMBA_MAX_DIMS];
    int n = 0;
    for (int i = 0; i < t->ndim; i++) {
        if (t->shape[i] == 0) return JAMBA_OK;
        if (t->shape[i] == 1) continue;
        int64_t s = t->stride[i] < 0 ? -t->stride[i] : t->stride[i], z = t->shape[i];
        int j = n++;
        for (; j > 0 && st[j - 1] > s; j--) st[j] = st[j - 1], sz[j] = sz[j - 1]; /* insertion by stride */
        st[j] = s, sz[j] = z;
    }
    int64_t span = 1; /* elements from the first to past the last of the dims so far */
    for (int i = 0; i < n; i++) {
        if (st[i] < span) {
            char s[128];
            fmt_dims(s, sizeof s, t->stride, t->ndim);
            return jamba_set_error(JAMBA_ERR_ARG, "%s: %s is written in place, so its elements must not share memory "
                                   "(an expanded or overlapping view: strides %s); pass a tensor of its own "
                                   "(.clone())", op, name, s);
        }
        span += (sz[i] - 1) * st[i];
    }
    return JAMBA_OK;
}

jamba_status jamba_check_apart(const char *op, const char *name_a, const jamba_tensor *a, const char *name_b,
                               const jamba_tensor *b) {
    if (jamba_tensors_overlap(a, b))
        return jamba_set_error(JAMBA_ERR_ARG, "%s: %s must not overlap %s in memory (%s is written in place)", op,
                               name_a, name_b, name_b);
    return JAMBA_OK;
}

jamba_status jamba_check_contiguous(const char *op, const char *name, const jamba_tensor *t) {
    for (int i = 0; i < t->ndim; i++)
        if (t->shape[i] == 0) return JAMBA_OK; /* an empty tensor is contiguous whatever its strides */
    int64_t expect = 1;
    for (int i = t->ndim - 1; i >= 0; i--) {
        if (t->shape[i] > 1 && t->stride[i] != expect) {
            char s[128];
            fmt_dims(s, sizeof s, t->stride, t->ndim);
            return jamba_set_error(JAMBA_ERR_SHAPE, "%s: %s must be contiguous, got strides %s", op, name, s);
        }
        expect *= t->shape[i];
    }
    return JAMBA_OK;
}

jamba_status jamba_check_dense(const char *op, const char *name, const jamba_tensor *t, int ndim, unsigned dtype_mask,
                               const int64_t *expected) {
    JAMBA_TRY(jamba_check_tensor(op, name, t, ndim, dtype_mask, 0));
    JAMBA_TRY(jamba_check_shape(op, name, t, expected));
    return jamba_check_contiguous(op, name, t);
}

jamba_status jamba_check_same_dtype(const char *op, const char *name, const jamba_tensor *t,
                                    const char *ref_name, const jamba_tensor *ref) {
    if (t->data == NULL || t->dtype == ref->dtype) return JAMBA_OK;
    return jamba_set_error(JAMBA_ERR_DTYPE, "%s: %s must have the dtype of %s (%s), got %s", op, name,
                           ref_name, jamba_dtype_name(ref->dtype), jamba_dtype_name(t->dtype));
}

/* IEEE half <-> float, round to nearest even; portable bit manipulation. */
float jamba_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    uint32_t exp = (h >> 10) & 0x1f;
    uint32_t man = h & 0x3ff;
    uint32_t u;
    if (exp == 0) {
        if (man == 0) {
            u = sign;
        } else { /* subnormal: normalise */
            int e = -1;
            do { e++; man <<= 1; } while (!(man & 0x400));
            man &= 0x3ff;
            u = sign | ((uint32_t)(127 - 15 - e) << 23) | (man << 13);
        }
    } else if (exp == 31) {
        u = sign | 0x7f800000u | (man << 13);
    } else {
        u = sign | ((exp + 127 - 15) << 23) | (man << 13);
    }
    float f;
    memcpy(&f, &u, 4);
    return f;
}

uint16_t jamba_f32_to_f16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    uint32_t sign = (u >> 16) & 0x8000;
    uint32_t absu = u & 0x7fffffffu;
    if (absu > 0x7f800000u) return (uint16_t)(sign | 0x7e00);           /* NaN */
    if (absu >= 0x477ff000u) return (uint16_t)(sign | 0x7c00);          /* overflow -> inf */
    if (absu < 0x38800000u) {                                          /* subnormal or zero */
        if (absu < 0x33000000u) return (uint16_t)sign;                 /* < half of min subnormal */
        uint32_t man = (absu & 0x7fffff) | 0x800000;
        int shift = 113 - (int)(absu >> 23) + 13;                       /* 126 - exp + 1 */
        uint32_t r = man >> shift;
        uint32_t rem = man & ((1u << shift) - 1);
        uint32_t half = 1u << (shift - 1);
        if (rem > half || (rem == half && (r & 1))) r++;
        return (uint16_t)(sign | r);
    }
    uint32_t r = absu - 0x38000000u;                                   /* rebias 127 -> 15 */
    uint32_t h = r >> 13;
    uint32_t rem = r & 0x1fff;
    if (rem > 0x1000 || (rem == 0x1000 && (h & 1))) h++;
    return (uint16_t)(sign | h);
}

void jamba_load_row(float *dst, const void *src, jamba_dtype dt, int64_t n, int64_t stride) {
    if (n <= 0) return; /* (an empty tensor's data pointer may be NULL, which memcpy must not get even for 0 bytes) */
    if (dt == JAMBA_F32 && stride == 1) { /* the common case, a plain copy (the strided loop does not vectorise) */
        memcpy(dst, src, sizeof(float) * (size_t)n);
    } else if (dt == JAMBA_F32) {
        const float *s = (const float *)src;
        for (int64_t i = 0; i < n; i++) dst[i] = s[i * stride];
    } else if (dt == JAMBA_BF16 && stride == 1) {
        const uint16_t *s = (const uint16_t *)src;
        for (int64_t i = 0; i < n; i++) dst[i] = jamba_bf16_to_f32(s[i]);
    } else if (dt == JAMBA_BF16) {
        const uint16_t *s = (const uint16_t *)src;
        for (int64_t i = 0; i < n; i++) dst[i] = jamba_bf16_to_f32(s[i * stride]);
    } else {
        for (int64_t i = 0; i < n; i++) dst[i] = jamba_load(src, dt, i * stride);
    }
}

void jamba_store_row(void *dst, jamba_dtype dt, const float *src, int64_t n, int64_t stride) {
    if (n <= 0) return; /* (as in jamba_load_row: no memcpy from or to a NULL pointer) */
    if (dt == JAMBA_F32 && stride == 1) {
        memcpy(dst, src, sizeof(float) * (size_t)n);
    } else if (dt == JAMBA_F32) {
        float *d = (float *)dst;
        for (int64_t i = 0; i < n; i++) d[i * stride] = src[i];
    } else if (dt == JAMBA_BF16) {
        uint16_t *d = (uint16_t *)dst;
        for (int64_t i = 0; i < n; i++) d[i * stride] = jamba_f32_to_bf16(src[i]);
    } else {
        for (int64_t i = 0; i < n; i++) jamba_store(dst, dt, i * stride, src[i]);
    }
}

/* Fallback CUDA entry points, defined weak: a CUDA build overrides each with the strong definition in
 * csrc/cuda/<family>.cu; a CPU-only build (or a launcher not written yet) keeps these, which say so. */
#define NO_CUDA(name, ptype)                                                                        \
    __attribute__((weak)) jamba_status name(const ptype *p, jamba_launch launch) {                  \
        (void)p; (void)launch;                                                                      \
        return jamba_set_error(JAMBA_ERR_UNSUPPORTED,                                               \
                               #name ": jamba_ext was built without this CUDA kernel (install "     \
                               "with nvcc available, JAMBA_EXT_CUDA=1)");                           \
    }
NO_CUDA(jamba_rms_norm_cuda, jamba_rms_norm_params)
NO_CUDA(jamba_rms_norm_segments_cuda, jamba_rms_norm_segments_params)
NO_CUDA(jamba_causal_conv1d_cuda, jamba_causal_conv1d_params)
NO_CUDA(jamba_causal_conv1d_update_cuda, jamba_causal_conv1d_update_params)
NO_CUDA(jamba_causal_conv1d_bwd_cuda, jamba_causal_conv1d_bwd_params)
NO_CUDA(jamba_rms_norm_bwd_cuda, jamba_rms_norm_bwd_params)
NO_CUDA(jamba_selective_scan_cuda, jamba_selective_scan_params)
NO_CUDA(jamba_selective_state_update_cuda, jamba_selective_state_update_params)
NO_CUDA(jamba_selective_scan_bwd_cuda, jamba_selective_scan_bwd_params)
/* JAMBA_MOE_NO_CUDA */
NO_CUDA(jamba_moe_route_cuda, jamba_moe_route_params)
NO_CUDA(jamba_moe_permute_cuda, jamba_moe_permute_params)
NO_CUDA(jamba_moe_experts_cuda, jamba_moe_experts_params)
NO_CUDA(jamba_silu_mul_cuda, jamba_silu_mul_params)
NO_CUDA(jamba_silu_mul_bwd_cuda, jamba_silu_mul_bwd_params)
NO_CUDA(jamba_moe_combine_cuda, jamba_moe_combine_params)
NO_CUDA(jamba_moe_grad_rows_cuda, jamba_moe_grad_rows_params)
NO_CUDA(jamba_gemv_cuda, jamba_gemv_params)
NO_CUDA(jamba_dequant_fp8_cuda, jamba_dequant_fp8_params)
NO_CUDA(jamba_moe_experts_fp8_cuda, jamba_moe_experts_fp8_params)
NO_CUDA(jamba_decode_attention_cuda, jamba_decode_attention_params)
NO_CUDA(jamba_mamba_inner_step_cuda, jamba_mamba_inner_step_params)
NO_CUDA(jamba_cross_entropy_cuda, jamba_cross_entropy_params)
NO_CUDA(jamba_cross_entropy_bwd_cuda, jamba_cross_entropy_bwd_params)
NO_CUDA(jamba_sample_rows_cuda, jamba_sample_rows_params)
__attribute__((weak)) int jamba_has_cuda(void) { return 0; }
