// Bit views of floats for code that compiles both as C on the host and as CUDA device code
// (quantizers, optimizer element functions): memcpy on the host, intrinsics on the device.
#ifndef LLAMA_AO_COMMON_BITS_H
#define LLAMA_AO_COMMON_BITS_H

#include <stdint.h>
#include <string.h>

#ifdef __CUDACC__
#define AO_HD static __host__ __device__ __forceinline__
#else
#define AO_HD static inline
#endif

AO_HD uint32_t ao_f2u(float f) {
#ifdef __CUDA_ARCH__
    return __float_as_uint(f);
#else
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
#endif
}

AO_HD float ao_u2f(uint32_t u) {
#ifdef __CUDA_ARCH__
    return __uint_as_float(u);
#else
    float f;
    memcpy(&f, &u, 4);
    return f;
#endif
}

#endif
