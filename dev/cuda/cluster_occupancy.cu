/* dev/cuda/cluster_occupancy.cu -- how many 2-CTA clusters of the MoE persistent kernel's shape fit on this GPU at once
 * (352 threads, 225 KB of dynamic shared memory, 1 CTA per SM), next to the SM count: the session-18 cluster
 * experiment (moe_cluster_04aff16.log) ran 1.4x slower, which fewer resident CTAs would explain.
 *   nvcc -arch=sm_90a -o /tmp/cocc dev/cuda/cluster_occupancy.cu && /tmp/cocc */
#include <cstdio>
#include <cuda_runtime.h>

__global__ void __launch_bounds__(352, 1) probe_kernel(int *p) {
    extern __shared__ int s[];
    if (p) p[threadIdx.x] = s[threadIdx.x];
}

int main() {
    int sms = 0;
    cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0);
    const int smem = 225 * 1024;
    cudaFuncSetAttribute(probe_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
    for (int cs = 1; cs <= 4; cs *= 2) {
        cudaLaunchConfig_t cfg = {};
        cfg.gridDim = dim3(sms - sms % cs);
        cfg.blockDim = dim3(352);
        cfg.dynamicSmemBytes = smem;
        cudaLaunchAttribute at[1];
        at[0].id = cudaLaunchAttributeClusterDimension;
        at[0].val.clusterDim.x = cs, at[0].val.clusterDim.y = 1, at[0].val.clusterDim.z = 1;
        cfg.attrs = at;
        cfg.numAttrs = 1;
        int n = -1;
        const cudaError_t e = cudaOccupancyMaxActiveClusters(&n, (const void *)probe_kernel, &cfg);
        printf("SMs %d, cluster size %d: at most %d clusters at once (%d CTAs) [%s]\n", sms, cs, n, n * cs,
               cudaGetErrorString(e));
    }
    return 0;
}
