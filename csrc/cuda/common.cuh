/* common.cuh -- helpers shared by the CUDA kernels of the core (csrc/cuda/*.cu).
 *
 *   JAMBA_CUDA_CHECK(expr)     a failing CUDA call -> jamba_set_error("file:line: expr: cudaGetErrorString"),
 *                              return JAMBA_ERR_CUDA from the enclosing launcher
 *   jamba_kernel_launch(k, grid, block, smem, stream, args...)   every launch of the library (no <<<>>>):
 *                              with programmatic dependent launch (PDL) on sm_90+, see below (_coop: cooperative;
 *                              _cluster: thread-block clusters along x)
 *   jamba_pdl_begin()          first statement of every kernel: waits for the stream's previous kernel
 *   JAMBA_LAUNCH_CHECK(what)   after every launch: cudaGetLastError(); with env JAMBA_EXT_SYNC=1 also
 *                              cudaStreamSynchronize, so an asynchronous fault names the op that caused it
 *   jamba_device_guard         switches to jamba_launch.device when it differs, restores the old device
 *   jamba_ld<T> / jamba_st<T>  scalar dtype conversion (float, __half, __nv_bfloat16) <-> fp32
 *   jamba_ld_any               load of a runtime-dtype scalar (weights, B/C: f32 or the activation dtype)
 *   jamba_warp_sum             butterfly sum over a warp (every lane gets the total)
 *   jamba_max_nan              max that keeps a NaN (max.NaN), for running maxima that must propagate NaN
 *   jamba_w16<T>               16 bytes (uint4) <-> 16/sizeof(T) floats on 32-bit words, no unions
 *   JAMBA_DISPATCH_FLOAT       switch from a jamba_dtype to a C++ type T (f32, f16, bf16)
 *   mma16816<T>                one m16n8k16 tensor-core product (bf16 / f16 in, fp32 accumulate)
 *   cp_async16[_mem], ...      16-byte cp.async copies into shared memory, their commit / wait (sm_80+)
 * Offsets are int64_t everywhere a tensor is indexed.
 */
#ifndef JAMBA_CUDA_COMMON_CUH
#define JAMBA_CUDA_COMMON_CUH

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <stdint.h>

/* common.h is C; its CPU helpers use C99 `restrict`, which C++ spells __restrict__ */
#define restrict __restrict__
#include "../common.h"
#undef restrict

#ifndef JAMBA_LOG2E
#define JAMBA_LOG2E 1.4426950408889634f
#endif
#define JAMBA_FULL_MASK 0xffffffffu

/* ---- error checks ------------------------------------------------------------------------------ */
static inline jamba_status jamba_cuda_fail(cudaError_t e, const char *file, int line, const char *what) {
    return jamba_set_error(JAMBA_ERR_CUDA, "%s:%d: %s: %s (%s)", file, line, what, cudaGetErrorString(e),
                           cudaGetErrorName(e));
}

/* 1 when env JAMBA_EXT_SYNC=1 (read each time: cheap, and tests may flip it between calls) */
static inline int jamba_sync_each_launch(void) {
    const char *s = getenv("JAMBA_EXT_SYNC");
    return s != NULL && s[0] == '1';
}

#define JAMBA_CUDA_CHECK(expr)                                                \
    do {                                                                      \
        cudaError_t jamba_e_ = (expr);                                        \
        if (jamba_e_ != cudaSuccess)                                          \
            return jamba_cuda_fail(jamba_e_, __FILE__, __LINE__, #expr);      \
    } while (0)

/* Use right after a launch on `stream`. Under stream capture a synchronise is illegal: skip it then. */
#define JAMBA_LAUNCH_CHECK(what, stream)                                                              \
    do {                                                                                              \
        cudaError_t jamba_e_ = cudaGetLastError();                                                    \
        if (jamba_e_ != cudaSuccess) return jamba_cuda_fail(jamba_e_, __FILE__, __LINE__, what);      \
        if (jamba_sync_each_launch()) {                                                               \
            cudaStreamCaptureStatus jamba_cs_ = cudaStreamCaptureStatusNone;                          \
            cudaStreamIsCapturing((stream), &jamba_cs_);                                              \
            if (jamba_cs_ == cudaStreamCaptureStatusNone) {                                           \
                jamba_e_ = cudaStreamSynchronize(stream);                                             \
                if (jamba_e_ != cudaSuccess) return jamba_cuda_fail(jamba_e_, __FILE__, __LINE__, what); \
            }                                                                                         \
        }                                                                                             \
    } while (0)

/* Sets the current device to `device` for the guard's lifetime when it differs (torch may call us from
 * a thread whose current device is another GPU). ok() is false when a CUDA call failed; err() says why. */
struct jamba_device_guard {
    int prev, switched;
    cudaError_t status;
    explicit jamba_device_guard(int device) : prev(-1), switched(0), status(cudaSuccess) {
        status = cudaGetDevice(&prev);
        if (status == cudaSuccess && prev != device) {
            status = cudaSetDevice(device);
            switched = status == cudaSuccess;
        }
    }
    ~jamba_device_guard() {
        if (switched) cudaSetDevice(prev);
    }
    bool ok() const { return status == cudaSuccess; }
};

#define JAMBA_DEVICE_GUARD(launch)                                                             \
    jamba_device_guard jamba_guard_((launch).device);                                          \
    if (!jamba_guard_.ok())                                                                    \
        return jamba_cuda_fail(jamba_guard_.status, __FILE__, __LINE__, "set device (jamba_launch.device)")

/* Cached per-device properties (csrc/cuda/runtime.cu). */
extern "C" int jamba_cuda_sm_count(int device);
extern "C" int jamba_cuda_pdl_ok(int device);

/* ---- launches: programmatic dependent launch (PDL) --------------------------------------------------
 * A decode step is a chain of short kernels, and between two dependent kernels of a stream (or a CUDA graph)
 * the GPU idles while the second one is launched. With PDL (sm_90+) a kernel is launched with
 * cudaLaunchAttributeProgrammaticStreamSerialization: it may be scheduled as soon as every block of the
 * previous kernel has executed griddepcontrol.launch_dependents, and its blocks then wait in
 * griddepcontrol.wait until that kernel has completed and its memory is visible. So every kernel of the library
 * starts with jamba_pdl_begin() (wait, then allow the next kernel to be scheduled) before it touches global
 * memory: the order of memory effects is exactly the plain stream order; only launch latency is hidden. A
 * kernel that follows a non-PDL kernel (torch's, cuBLAS) simply waits for its completion as before.
 * Used when the device is sm_90+ and runs code compiled for it (jamba_cuda_pdl_ok: the sm_80 build of these
 * kernels has no griddepcontrol) and env JAMBA_EXT_PDL is not "0" (read per launch, like JAMBA_EXT_SYNC). */
__device__ __forceinline__ void jamba_pdl_begin() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;\n" ::: "memory");
    asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
#endif
}

/* For a kernel that reads model weights before its jamba_pdl_begin(): its first statement instead (tests/test_build.py
 * then wants jamba_pdl_begin() later in the body). Before the wait the stream's previous kernel may still run (never
 * an earlier one: that completed before the previous kernel passed its own wait), so only memory that no kernel of
 * this library writes may be read there: weights, never activations, states or workspaces. */
__device__ __forceinline__ void jamba_pdl_weights_first() {}

static inline int jamba_pdl_enabled(void) {
    const char *s = getenv("JAMBA_EXT_PDL");
    if (s != NULL && s[0] == '0') return 0;
    int dev = 0;
    if (cudaGetDevice(&dev) != cudaSuccess) {
        cudaGetLastError();
        return 0;
    }
    return jamba_cuda_pdl_ok(dev);
}

/* the arguments converted to the kernel's parameter types (KArgs given explicitly), then launched */
template <typename... KArgs>
static inline cudaError_t jamba_launch_converted(const cudaLaunchConfig_t *cfg, const void *kernel, KArgs... args) {
    void *params[] = {const_cast<void *>(static_cast<const void *>(&args))...};
    return cudaLaunchKernelExC(cfg, kernel, params);
}

/* the launch of jamba_kernel_launch(_coop / _cluster): PDL where jamba_pdl_enabled(), the cooperative attribute
 * when coop, clusters of `cluster` blocks along x when cluster > 1 (sm_90+) */
template <typename... KArgs, typename... Args>
static inline cudaError_t jamba_kernel_launch_with(bool coop, unsigned cluster, void (*kernel)(KArgs...), dim3 grid,
                                                   dim3 block, size_t smem, cudaStream_t stream, Args &&...args) {
    static_assert(sizeof...(KArgs) == sizeof...(Args), "jamba_kernel_launch: argument count differs from the kernel's");
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = grid;
    cfg.blockDim = block;
    cfg.dynamicSmemBytes = smem;
    cfg.stream = stream;
    cudaLaunchAttribute attr[3];
    unsigned n = 0;
    if (jamba_pdl_enabled()) {
        attr[n].id = cudaLaunchAttributeProgrammaticStreamSerialization;
        attr[n++].val.programmaticStreamSerializationAllowed = 1;
    }
    if (coop) {
        attr[n].id = cudaLaunchAttributeCooperative;
        attr[n++].val.cooperative = 1;
    }
    if (cluster > 1) {
        attr[n].id = cudaLaunchAttributeClusterDimension;
        attr[n].val.clusterDim.x = cluster;
        attr[n].val.clusterDim.y = 1;
        attr[n++].val.clusterDim.z = 1;
    }
    cfg.attrs = attr;
    cfg.numAttrs = n;
    return jamba_launch_converted<KArgs...>(&cfg, reinterpret_cast<const void *>(kernel),
                                            static_cast<Args &&>(args)...);
}

/* kernel<<<grid, block, smem, stream>>>(args...), with PDL where jamba_pdl_enabled(); a failure is left for
 * JAMBA_LAUNCH_CHECK's cudaGetLastError (the runtime records it as the thread's last error) */
template <typename... KArgs, typename... Args>
static inline void jamba_kernel_launch(void (*kernel)(KArgs...), dim3 grid, dim3 block, size_t smem,
                                       cudaStream_t stream, Args &&...args) {
    (void)jamba_kernel_launch_with(false, 1u, kernel, grid, block, smem, stream, static_cast<Args &&>(args)...);
}

/* jamba_kernel_launch in clusters of `cluster` blocks along x (grid.x a multiple of it; sm_90+) */
template <typename... KArgs, typename... Args>
static inline void jamba_kernel_launch_cluster(void (*kernel)(KArgs...), unsigned cluster, dim3 grid, dim3 block,
                                               size_t smem, cudaStream_t stream, Args &&...args) {
    (void)jamba_kernel_launch_with(false, cluster, kernel, grid, block, smem, stream, static_cast<Args &&>(args)...);
}

/* jamba_kernel_launch with the cooperative attribute as well (every block resident at once, or the launch fails
 * with cudaErrorCooperativeLaunchTooLarge instead of a grid barrier waiting forever). Returns the launch's error,
 * cleared from the thread's last error, so that the caller can take another path. */
template <typename... KArgs, typename... Args>
static inline cudaError_t jamba_kernel_launch_coop(void (*kernel)(KArgs...), dim3 grid, dim3 block, size_t smem,
                                                   cudaStream_t stream, Args &&...args) {
    const cudaError_t e =
        jamba_kernel_launch_with(true, 1u, kernel, grid, block, smem, stream, static_cast<Args &&>(args)...);
    if (e != cudaSuccess) (void)cudaGetLastError();
    return e;
}

/* ---- dtype conversion ---------------------------------------------------------------------------- */
template <typename T> __device__ __forceinline__ float jamba_ld(T v);
template <> __device__ __forceinline__ float jamba_ld<float>(float v) { return v; }
template <> __device__ __forceinline__ float jamba_ld<__half>(__half v) { return __half2float(v); }
template <> __device__ __forceinline__ float jamba_ld<__nv_bfloat16>(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T> __device__ __forceinline__ T jamba_st(float v);
template <> __device__ __forceinline__ float jamba_st<float>(float v) { return v; }
template <> __device__ __forceinline__ __half jamba_st<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 jamba_st<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

/* v rounded to T and back (what a store then a load would give) */
template <typename T> __device__ __forceinline__ float jamba_round(float v) { return jamba_ld<T>(jamba_st<T>(v)); }

/* runtime-dtype scalar load (uniform branch; the dtype is the same for every thread) */
__device__ __forceinline__ float jamba_ld_any(const void *p, int dtype, int64_t i) {
    if (dtype == JAMBA_F32) return ((const float *)p)[i];
    if (dtype == JAMBA_BF16) return __bfloat162float(((const __nv_bfloat16 *)p)[i]);
    return __half2float(((const __half *)p)[i]);
}

/* ---- math ----------------------------------------------------------------------------------------------- */
/* 2^x on the special-function unit (ex2.approx.ftz: rel. error ~2^-22, denormal results flush to 0) */
__device__ __forceinline__ float jamba_cu_exp2(float x) {
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
}
/* max(a, b), NaN when either is (fmaxf returns the other operand, so a NaN would vanish from a running max):
 * max.NaN, one FMNMX.NAN, the cost of fmaxf (below sm_80 a compare and fmaxf) */
__device__ __forceinline__ float jamba_max_nan(float a, float b) {
#if __CUDA_ARCH__ >= 800
    float r;
    asm("max.NaN.f32 %0, %1, %2;" : "=f"(r) : "f"(a), "f"(b));
    return r;
#else
    return (a != a || b != b) ? __int_as_float(0x7fffffff) : fmaxf(a, b);
#endif
}
/* softplus with torch's threshold 20 (beta 1) */
__device__ __forceinline__ float jamba_cu_softplus(float v) { return v <= 20.f ? log1pf(__expf(v)) : v; }
__device__ __forceinline__ float jamba_cu_silu(float v) { return v / (1.f + __expf(-v)); }

/* ---- reductions ----------------------------------------------------------------------------------------- */
__device__ __forceinline__ float jamba_warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(JAMBA_FULL_MASK, v, o);
    return v;
}

/* ---- vector access ----------------------------------------------------------------------------------- */
/* 16-byte vector of T: 4 floats or 8 halves/bf16s */
template <typename T> struct jamba_vec16 {
    static constexpr int n = 16 / (int)sizeof(T);
    union {
        uint4 raw;
        T v[16 / sizeof(T)];
    };
};
__host__ __device__ __forceinline__ bool jamba_aligned16(const void *p) { return ((uintptr_t)p & 15u) == 0; }

/* 16 bytes <-> VN = 16/sizeof(T) floats on 32-bit words, without splitting 16-bit elements into registers
 * of their own (element access through the jamba_vec16 union makes the compiler unpack each bf16/f16 into a
 * register: twice the registers). Shared by causal_conv1d.cu and rms_norm.cu.
 *   jamba_w16<T>::ld(raw, f)  VN floats from one uint4 (element e at the e-th lowest address)
 *   jamba_w16<T>::st(f)       VN floats rounded to T (nearest even), packed into one uint4
 *   jamba_w16<T>::f1(bits)    one element from its bits (the low 16 bits for bf16/f16, all 32 for f32)
 *   jamba_{bf16,f16}x2_{ld,st}  the same for the two 16-bit elements of one 32-bit word (low half first) */
__device__ __forceinline__ void jamba_bf16x2_ld(uint32_t u, float *f) {
    f[0] = __uint_as_float(u << 16);
    f[1] = __uint_as_float(u & 0xffff0000u);
}
__device__ __forceinline__ uint32_t jamba_bf16x2_st(float a, float b) {
    const __nv_bfloat162 h = __floats2bfloat162_rn(a, b); /* .x = a: the lower address */
    uint32_t u;
    memcpy(&u, &h, 4);
    return u;
}
__device__ __forceinline__ void jamba_f16x2_ld(uint32_t u, float *f) {
    __half2 h;
    memcpy(&h, &u, 4);
    const float2 q = __half22float2(h);
    f[0] = q.x, f[1] = q.y;
}
__device__ __forceinline__ uint32_t jamba_f16x2_st(float a, float b) {
    const __half2 h = __floats2half2_rn(a, b);
    uint32_t u;
    memcpy(&u, &h, 4);
    return u;
}
template <typename T> struct jamba_w16;
template <> struct jamba_w16<float> {
    static __device__ __forceinline__ float f1(uint32_t u) { return __uint_as_float(u); }
    static __device__ __forceinline__ void ld(const uint4 &r, float *f) {
        f[0] = __uint_as_float(r.x), f[1] = __uint_as_float(r.y), f[2] = __uint_as_float(r.z), f[3] = __uint_as_float(r.w);
    }
    static __device__ __forceinline__ uint4 st(const float *f) {
        return make_uint4(__float_as_uint(f[0]), __float_as_uint(f[1]), __float_as_uint(f[2]), __float_as_uint(f[3]));
    }
};
template <> struct jamba_w16<__nv_bfloat16> {
    static __device__ __forceinline__ float f1(uint32_t u) { return __uint_as_float(u << 16); }
    static __device__ __forceinline__ void ld(const uint4 &r, float *f) {
        jamba_bf16x2_ld(r.x, f), jamba_bf16x2_ld(r.y, f + 2), jamba_bf16x2_ld(r.z, f + 4), jamba_bf16x2_ld(r.w, f + 6);
    }
    static __device__ __forceinline__ uint4 st(const float *f) {
        return make_uint4(jamba_bf16x2_st(f[0], f[1]), jamba_bf16x2_st(f[2], f[3]), jamba_bf16x2_st(f[4], f[5]),
                          jamba_bf16x2_st(f[6], f[7]));
    }
};
template <> struct jamba_w16<__half> {
    static __device__ __forceinline__ float f1(uint32_t u) { return __half2float(__ushort_as_half((unsigned short)u)); }
    static __device__ __forceinline__ void ld(const uint4 &r, float *f) {
        jamba_f16x2_ld(r.x, f), jamba_f16x2_ld(r.y, f + 2), jamba_f16x2_ld(r.z, f + 4), jamba_f16x2_ld(r.w, f + 6);
    }
    static __device__ __forceinline__ uint4 st(const float *f) {
        return make_uint4(jamba_f16x2_st(f[0], f[1]), jamba_f16x2_st(f[2], f[3]), jamba_f16x2_st(f[4], f[5]),
                          jamba_f16x2_st(f[6], f[7]));
    }
};

/* ---- dtype dispatch ------------------------------------------------------------------------------------ */
#define JAMBA_DISPATCH_FLOAT(dtype, T, ...)                   \
    switch (dtype) {                                          \
    case JAMBA_F32: { typedef float T; __VA_ARGS__; break; }  \
    case JAMBA_F16: { typedef __half T; __VA_ARGS__; break; } \
    case JAMBA_BF16: { typedef __nv_bfloat16 T; __VA_ARGS__; break; } \
    default: break;                                           \
    }

static inline int64_t jamba_ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

/* grid.x is limited to 2^31-1 blocks; kernels loop over "virtual" blocks when more are needed */
#define JAMBA_MAX_GRID_X 2147483647LL

/* ---- async global -> shared copies (sm_80+; moe.cu's GEMMs, gemv.cu's ring kernel) ------------------------ */
__device__ __forceinline__ uint32_t smem_u32(const void *p) { return (uint32_t)__cvta_generic_to_shared(p); }

/* 16-byte global -> shared copy; valid == false writes zeros and reads nothing */
__device__ __forceinline__ void cp_async16(uint32_t dst, const void *src, bool valid) {
    const int n = valid ? 16 : 0;
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(n));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N> __device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N)); }
/* The same with a compiler memory barrier, for code that reads the copied data with plain C++ loads
 * (the decode kernel): the loads stay after the wait, and reads of a ring slot stay before the copy that
 * refills it. _ca: cached in L1 too (small operands that the other warps of the SM read again). */
__device__ __forceinline__ void cp_async16_mem(uint32_t dst, const void *src, bool valid) {
    const int n = valid ? 16 : 0;
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(n) : "memory");
}
__device__ __forceinline__ void cp_async16_ca_mem(uint32_t dst, const void *src, bool valid) {
    const int n = valid ? 16 : 0;
    asm volatile("cp.async.ca.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(n) : "memory");
}
__device__ __forceinline__ void cp_async_commit_mem() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int N> __device__ __forceinline__ void cp_async_wait_mem() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

/* c += a (16 x 16, row-major) * b (16 x 8, col-major) on tensor cores (mma.sync m16n8k16, sm_80+), fp32
 * accumulate; T __nv_bfloat16 or __half. Fragments (g = lane / 4, t = lane % 4): a[0] row g, k 2t .. 2t+1; a[1] row
 * g + 8, same k; a[2] / a[3] the same rows at k + 8; b0 k 2t .. 2t+1 of column g, b1 k + 8; c[0..1] row g, columns
 * 2t, 2t + 1; c[2..3] row g + 8. (moe.cu's GEMMs, gemv.cu's gemv_mma_kernel) */
template <typename T> __device__ __forceinline__ void mma16816(float (&c)[4], const uint32_t (&a)[4], uint32_t b0,
                                                              uint32_t b1);
template <> __device__ __forceinline__ void mma16816<__nv_bfloat16>(float (&c)[4], const uint32_t (&a)[4],
                                                                    uint32_t b0, uint32_t b1) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
                 "{%8, %9}, {%0, %1, %2, %3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
template <> __device__ __forceinline__ void mma16816<__half>(float (&c)[4], const uint32_t (&a)[4], uint32_t b0,
                                                             uint32_t b1) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
                 "{%8, %9}, {%0, %1, %2, %3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

/* out (I, J) = in (I, K, J) summed over k in a fixed order (sum_mid.cu); what names the launch in errors */
jamba_status jamba_cuda_sum_mid(float *out, const float *in, int64_t I, int64_t K, int64_t J, cudaStream_t stream,
                                const char *what);

#endif /* JAMBA_CUDA_COMMON_CUH */
