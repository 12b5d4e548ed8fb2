/* runtime.cu -- what the CUDA side shares at run time.
 *
 * Exports: jamba_has_cuda (strong; the weak one in csrc/common.c returns 0 in CPU-only builds) and
 * jamba_cuda_sm_count (multiprocessor count of a device, cached: kernels size their grids by it).
 */
#include "common.cuh"

#define JAMBA_MAX_DEVICES 64

extern "C" int jamba_has_cuda(void) { return 1; }

/* Written once per device; a race between two first calls writes the same value twice. */
static int sm_count_cache[JAMBA_MAX_DEVICES];

extern "C" int jamba_cuda_sm_count(int device) {
    if (device < 0 || device >= JAMBA_MAX_DEVICES) return 132;
    int v = sm_count_cache[device];
    if (v > 0) return v;
    if (cudaDeviceGetAttribute(&v, cudaDevAttrMultiProcessorCount, device) != cudaSuccess || v <= 0) {
        cudaGetLastError(); /* clear the sticky-free error so the next launch check is not confused */
        return 132;         /* H200; only used to size grids, never for correctness */
    }
    sm_count_cache[device] = v;
    return v;
}
