/* runtime.cu -- what the CUDA side shares at run time.
 *
 * Exports: jamba_has_cuda (strong; the weak one in csrc/common.c returns 0 in CPU-only builds) and
 * jamba_cuda_sm_count (multiprocessor count of a device, cached: kernels size their grids by it),
 * jamba_cuda_pdl_ok (whether launches on a device may use programmatic dependent launch; common.cuh).
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

/* Whether the code the device runs was compiled for sm_90+ (ptxVersion: the virtual architecture its SASS, or
 * its JIT, came from), so that every kernel starts with griddepcontrol.wait (jamba_pdl_begin); judged on this
 * probe (never launched), built with the same -gencode list as every kernel except the sm_90a-only wgmma file.
 * And the driver is CUDA 12.3 or newer, where CUDA graphs got programmatic edges (stream capture of PDL
 * launches); an older driver runs the kernels without PDL.
 * Cached per device: 1 yes, -1 no, 0 not asked yet. */
__global__ void jamba_pdl_probe_kernel(int *p) {
    jamba_pdl_begin();
    if (p != NULL) *p = 0;
}
static int pdl_cache[JAMBA_MAX_DEVICES];

extern "C" int jamba_cuda_pdl_ok(int device) {
    if (device < 0 || device >= JAMBA_MAX_DEVICES) return 0;
    int v = pdl_cache[device];
    if (v == 0) {
        int major = 0, driver = 0;
        cudaFuncAttributes fa;
        const bool ok = cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) == cudaSuccess &&
                        cudaFuncGetAttributes(&fa, jamba_pdl_probe_kernel) == cudaSuccess &&
                        cudaDriverGetVersion(&driver) == cudaSuccess;
        if (!ok) cudaGetLastError();
        v = (ok && major >= 9 && fa.ptxVersion >= 90 && driver >= 12030) ? 1 : -1;
        pdl_cache[device] = v;
    }
    return v > 0;
}
