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
/* jamba_check_tensor (required), jamba_check_shape and jamba_check_contiguous in that order: a dense operand of
 * a fixed shape (expected: ndim entries, < 0 matches anything). */
jamba_status jamba_check_dense(const char *op, const char *name, const jamba_tensor *t, int ndim, unsigned dtype_mask,
                               const int64_t *expected);
/* Checks two tensors have the same dtype. */
jamba_status jamba_check_same_dtype(const char *op, const char *name, const jamba_tensor *t,
                                    const char *ref_name, const jamba_tensor *ref);

/* A backward op's CUDA workspace: present, f32, contiguous, 1-D, at least need elements. */
jamba_status jamba_check_workspace(const char *op, const jamba_tensor *ws, int64_t need);

/* 1 if the byte ranges [first, last element] of a and b intersect (non-negative strides; absent or empty: 0) */
int jamba_tensors_overlap(const jamba_tensor *a, const jamba_tensor *b);
/* An operand written in place: no two of its elements at one address (a stride-0 or otherwise self-overlapping view,
 * e.g. an expanded state, would have its rows overwrite each other). Conservative: dims sorted by stride, each stride
 * must reach past the span of the smaller ones, which also refuses rare interleaved layouts. */
jamba_status jamba_check_no_self_overlap(const char *op, const char *name, const jamba_tensor *t);
/* name_a and name_b do not share memory (an input read while the other, written in place, changes) */
jamba_status jamba_check_apart(const char *op, const char *name_a, const jamba_tensor *a, const char *name_b,
                               const jamba_tensor *b);

/* causal_conv1d_bwd's CUDA work split (csrc/cuda/causal_conv1d_bwd.cu): time steps per block, and f32 partial sums
 * per block (the K <= 4 taps of dweight, then dbias); jamba_causal_conv1d_bwd_ws_elems sizes the workspace by them */
#define JAMBA_CONV_BWD_CHUNK 2048
#define JAMBA_CONV_BWD_PART (JAMBA_MAX_CONV_WIDTH + 1)
/* rms_norm_bwd's CUDA split of the rows for dweight's partial sums (csrc/cuda/rms_norm_bwd.cu) */
#define JAMBA_NORM_BWD_ROWS 32
/* selective_scan_bwd's CUDA split (csrc/cuda/selective_scan_bwd.cu): time steps per chunk (32 lanes x 8 steps) and
 * channels per block (the unit of the dB / dC partial sums); jamba_selective_scan_bwd_ws_elems sizes by them */
#define JAMBA_SCAN_BWD_CHUNK 256
#define JAMBA_SCAN_BWD_CPB 32

/* rms_norm_segments' segment ends (increasing, the last = dim, 1..JAMBA_NORM_MAX_SEGS of them) and eps checks
 * (csrc/cpu/rms_norm.c), shared with rms_norm_bwd */
jamba_status jamba_norm_check_segments(const char *op, int64_t nseg, const int64_t *ends, int64_t dim, double eps);

/* causal_conv1d's weight (DI, K) and bias (DI,) checks (csrc/cpu/causal_conv1d.c), shared with its backward */
jamba_status jamba_conv_check_weight_bias(const char *op, const jamba_tensor *weight, const jamba_tensor *bias,
                                          const jamba_tensor *x, int64_t DI);

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

/* Work (elements) below which a CPU kernel runs on one thread: waking an OpenMP team costs more than
 * it saves there, and torch's own thread pool may be spinning on the same cores (decode steps). */
#define JAMBA_OMP_MIN_WORK 65536

/* Hot CPU loops are compiled twice (baseline x86-64 and x86-64-v3: AVX2 + FMA) and picked at load time by the CPU's
 * features. Not "arch=haswell": GCC's resolver tests that one with __builtin_cpu_is("haswell"), the CPU model, so
 * every later Intel and every AMD CPU ran the baseline clone (session 20, checked with perf on an AVX-512 Xeon).
 * GCC 11 and older, and clang, get an "avx2" clone (feature-tested too; no FMA contraction in it). */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__CUDACC__) && !defined(__clang__) && __GNUC__ >= 12
#define JAMBA_CPU_CLONES __attribute__((target_clones("default", "arch=x86-64-v3")))
#elif defined(__x86_64__) && defined(__GNUC__) && !defined(__CUDACC__)
#define JAMBA_CPU_CLONES __attribute__((target_clones("default", "avx2")))
#else
#define JAMBA_CPU_CLONES
#endif

/* ---- fast vectorisable math for the CPU kernels ----
 * jamba_exp2f: 2^x by round-to-nearest range reduction (magic-number rounding, no floorf, so loops
 * over it vectorise with SSE2/AVX2) and a degree-6 polynomial in f*ln2, |f| <= 0.5: rel. error
 * below 2e-7. x is clamped to [-125, 126], so the result is always finite and normal. */
static inline float jamba_exp2f(float x) {
    x = x < -125.0f ? -125.0f : x; /* keeps p * 2^n normal: denormals are slow */
    x = x > 126.0f ? 126.0f : x;
    const float magic = 12582912.0f; /* 1.5 * 2^23: adding it rounds to an integer in the low bits */
    union { float f; uint32_t u; } r, sc;
    r.f = x + magic;
    const float f = x - (r.f - magic);                 /* [-0.5, 0.5] */
    const float g = f * 0.6931471805599453f;
    float p = 1.0f / 720.0f;
    p = p * g + 1.0f / 120.0f;
    p = p * g + 1.0f / 24.0f;
    p = p * g + 1.0f / 6.0f;
    p = p * g + 0.5f;
    p = p * g + 1.0f;
    p = p * g + 1.0f;
    sc.u = (r.u - 0x4b400000u + 127u) << 23;           /* 2^n, n = bits of r minus the magic number (unsigned:
                                                          a NaN x, which the clamps pass, must not make it UB) */
    return p * sc.f;
}
#define JAMBA_LOG2E 1.4426950408889634f
/* (v < -88: e^-v past jamba_exp2f's clamp at 2^126, where v / (1 + 2^126) is not ~0 for v below ~-1e33; v * 0 is
 * silu's -0 there, and NaN at -inf as the float64 reference's -inf * sigmoid(-inf)) */
static inline float jamba_silu(float v) { return v < -88.0f ? v * 0.0f : v / (1.0f + jamba_exp2f(-v * JAMBA_LOG2E)); }
/* gate[t] = silu(z[t]) for t < n, in two vectorised passes. One fused loop measured 9 ns/element against
 * 1 ns here (GCC 12, SSE2 and AVX2 alike; cause not established): keep the exp and the division apart. */
static inline void jamba_silu_row(float *restrict gate, const float *restrict z, int64_t n) {
#pragma omp simd
    for (int64_t t = 0; t < n; t++) gate[t] = jamba_exp2f(-z[t] * JAMBA_LOG2E);
#pragma omp simd
    for (int64_t t = 0; t < n; t++) gate[t] = z[t] < -88.0f ? z[t] * 0.0f : z[t] / (1.0f + gate[t]);
}

/* v[t] = softplus(v[t]) in place, torch's threshold: v > 20 ? v : log1p(exp(v)), evaluated as
 * max(v, 0) + log1p(e), e = exp(-|v|) in (0, 1], log1p(e) = 2 atanh(s) with s = e / (2 + e) <= 1/3 and the
 * odd series to s^15 (relative error < 1e-8 + exp2's 2e-7). tmp: n floats. Two passes, as jamba_silu_row. */
static inline void jamba_softplus_row(float *restrict v, float *restrict tmp, int64_t n) {
#pragma omp simd
    for (int64_t t = 0; t < n; t++) tmp[t] = jamba_exp2f(-(v[t] < 0.0f ? -v[t] : v[t]) * JAMBA_LOG2E);
#pragma omp simd
    for (int64_t t = 0; t < n; t++) {
        const float e = tmp[t], s = e / (2.0f + e), s2 = s * s;
        float q = 1.0f / 15.0f;
        q = q * s2 + 1.0f / 13.0f;
        q = q * s2 + 1.0f / 11.0f;
        q = q * s2 + 1.0f / 9.0f;
        q = q * s2 + 1.0f / 7.0f;
        q = q * s2 + 1.0f / 5.0f;
        q = q * s2 + 1.0f / 3.0f;
        q = q * s2 + 1.0f;
        const float r = (v[t] > 0.0f ? v[t] : 0.0f) + 2.0f * s * q;
        v[t] = v[t] > 20.0f ? v[t] : r;
    }
}


/* ---- sample_rows' pieces, shared by its CPU and CUDA kernels (host and device code) ---- */
#ifdef __CUDACC__
#define JAMBA_HD __host__ __device__
#else
#define JAMBA_HD
#endif
/* Philox4x32-10 (Salmon et al., SC'11): the first output word of counter (c0, c1, c2, c3) under key (k0, k1) */
JAMBA_HD static inline uint32_t jamba_philox_word(uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3, uint32_t k0,
                                                  uint32_t k1) {
    for (int i = 0; i < 10; i++) {
        const uint64_t p0 = (uint64_t)0xD2511F53u * c0, p1 = (uint64_t)0xCD9E8D57u * c2;
        const uint32_t n0 = (uint32_t)(p1 >> 32) ^ c1 ^ k0, n2 = (uint32_t)(p0 >> 32) ^ c3 ^ k1;
        c1 = (uint32_t)p1;
        c3 = (uint32_t)p0;
        c0 = n0;
        c2 = n2;
        k0 += 0x9E3779B9u;
        k1 += 0xBB67AE85u;
    }
    return c0;
}
/* uniform in (0, 1): 24 bits of the word, half a step in from either end -- but (2^24 - 1) + 0.5 rounds to 2^24 in f32,
 * so the top value is clamped to the largest float below 1 (else u = 1 there: a Gumbel noise -log(-log(u)) of +inf,
 * which won any draw; with the clamp the noise stays below 16.64, which sample_rows' CUDA draw relies on) */
JAMBA_HD static inline float jamba_uniform24(uint32_t w) {
    const float u = ((float)(w >> 8) + 0.5f) * 5.9604644775390625e-8f;
    return u < 1.0f ? u : 0.99999994f;
}
/* the order-preserving u32 of a float (a larger float, a larger key; -0 just below +0) */
JAMBA_HD static inline uint32_t jamba_f32_key(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}
/* a probability ratio e in [0, 1] in fixed point (2^-40), the unit of sample_rows' top_p masses */
JAMBA_HD static inline uint64_t jamba_mass_fixed(float e) { return (uint64_t)(e * 1099511627776.0f); }

static inline int64_t jamba_dtype_size(jamba_dtype d) {
    switch (d) {
    case JAMBA_F32: case JAMBA_I32: return 4;
    case JAMBA_F16: case JAMBA_BF16: return 2;
    case JAMBA_F64: case JAMBA_I64: return 8;
    case JAMBA_U8: return 1;
    default: return 0;
    }
}

#ifdef __cplusplus
}
#endif
#endif
