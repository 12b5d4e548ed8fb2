/* ck.cuh -- CK(call): exit with file, line, the call and CUDA's message when a runtime call fails (the standalone
 * labs and probes in dev/cuda/; the extension itself checks launches through csrc/cuda/common.cuh) */
#pragma once
#include <cuda_runtime.h>

#include <cstdio>
#include <cstdlib>

#define CK(x)                                                                                 \
    do {                                                                                      \
        cudaError_t e_ = (x);                                                                 \
        if (e_ != cudaSuccess) {                                                              \
            fprintf(stderr, "%s:%d %s: %s\n", __FILE__, __LINE__, #x, cudaGetErrorString(e_)); \
            exit(1);                                                                          \
        }                                                                                     \
    } while (0)
