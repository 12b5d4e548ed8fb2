/* common.h -- helpers shared by the C files of the core (not part of the public API).
 *   error reporting (thread-local message + status), argument checks that name the op and the
 *   argument, and scalar dtype conversion for the CPU kernels (bf16/fp16 <-> fp32, round to nearest even).
 */
#ifndef JAMBA_COMMON_H
#define JAMBA_COMMON_H

#include <stdint.h>
#include <string.h>
#include "jamba.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Records "fmt..." as the thread's last error and returns s. */
jamba_status jamba_set_error(jamba_status s, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;

/* dtype masks for jamba_check_tensor */
#define JAMBA_MASK(d) (1u << (unsigned)(d))
#define JAMBA_FLOATS (JAMBA_MASK(JAMBA_F32) | JAMBA_MASK(JAMBA_F16) | JAMBA_MASK(JAMBA_BF16))

/* Checks presence, rank and dtype. optional: a NULL tensor is fine. */
jamba_status jamba_check_tensor(const char *op, const char *name, const jamba_tensor *t, int ndim,
                                unsigned dtype_mask, int optional);
/* Checks t->shape against expected[0..ndim) (entries < 0 match anything). */
jamba_status jamba_check_shape(const char *op, const char *name, const jamba_tensor *t,
                               const int64_t *expected);
/* Checks t->stride[dim] == 1 (or that the dim has size <= 1). */
jamba_status jamba_check_unit_stride(const char *op, const char *name, const jamba_tensor *t, int dim);
/* Checks that t is contiguous (row-major). */
jamba_status jamba_check_contiguous(const char *op, const char *name, const jamba_tensor *t);
/* Checks two tensors have the same dtype. */
jamba_status jamba_check_same_dtype(const char *op, const char *name, const jamba_tensor *t,
                                    const char *ref_name, const jamba_tensor *ref);

#define JAMBA_TRY(expr)                          \
    do {                                         \
        jamba_status jamba_try_s_ = (expr);      \
        if (jamba_try_s_ != JAMBA_OK)            \
            return jamba_try_s_;                 \
    } while (0)

/* ---- scalar conversions (CPU) ---- */
static inline float jamba_bf16_to_f32(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}
static inline uint16_t jamba_f32_to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40); /* quiet NaN */
    u += 0x7fffu + ((u >> 16) & 1u); /* round to nearest even */
    return (uint16_t)(u >> 16);
}
float jamba_f16_to_f32(uint16_t h);
uint16_t jamba_f32_to_f16(float f);

static inline float jamba_load(const void *p, jamba_dtype dt, int64_t i) {
    switch (dt) {
    case JAMBA_F32: return ((const float *)p)[i];
    case JAMBA_BF16: return jamba_bf16_to_f32(((const uint16_t *)p)[i]);
    case JAMBA_F16: return jamba_f16_to_f32(((const uint16_t *)p)[i]);
    case JAMBA_F64: return (float)((const double *)p)[i];
    default: return 0.0f;
    }
}
static inline void jamba_store(void *p, jamba_dtype dt, int64_t i, float v) {
    switch (dt) {
    case JAMBA_F32: ((float *)p)[i] = v; break;
    case JAMBA_BF16: ((uint16_t *)p)[i] = jamba_f32_to_bf16(v); break;
    case JAMBA_F16: ((uint16_t *)p)[i] = jamba_f32_to_f16(v); break;
    case JAMBA_F64: ((double *)p)[i] = (double)v; break;
    default: break;
    }
}
/* Rounds v to dtype dt and back (the value a store followed by a load would give). */
static inline float jamba_round_to(jamba_dtype dt, float v) {
    switch (dt) {
    case JAMBA_BF16: return jamba_bf16_to_f32(jamba_f32_to_bf16(v));
    case JAMBA_F16: return jamba_f16_to_f32(jamba_f32_to_f16(v));
    default: return v;
    }
}
/* Loads n elements x[i*stride] into f32 dst. */
void jamba_load_row(float *dst, const void *src, jamba_dtype dt, int64_t n, int64_t stride);
/* Stores n f32 values into dst[i*stride]. */
void jamba_store_row(void *dst, jamba_dtype dt, const float *src, int64_t n, int64_t stride);

static inline int64_t jamba_dtype_size(jamba_dtype d) {
    switch (d) {
    case JAMBA_F32: case JAMBA_I32: return 4;
    case JAMBA_F16: case JAMBA_BF16: return 2;
    case JAMBA_F64: case JAMBA_I64: return 8;
    default: return 0;
    }
}

#ifdef __cplusplus
}
#endif
#endif
