// Device helpers shared by the saesteer CUDA kernels: storage <-> float conversions, 16-byte vector
// loads, warp/block reductions, and the SAE math (activation, edit) in float32. Torch-free: the
// binding layer (csrc/ops_cuda.cu) owns checks, device guard and stream.
//
// Conversions are explicit (__half2float, __float2bfloat16_rn, ...) because PyTorch builds CUDA
// extensions with __CUDA_NO_HALF_OPERATORS__ / __CUDA_NO_HALF_CONVERSIONS__ /
// __CUDA_NO_BFLOAT16_CONVERSIONS__; CMakeLists.txt sets the same macros so `make cuda-check`
// compiles what setup.py compiles.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "sae_enums.h"

namespace saesteer {

constexpr int kWarpSize = 32;

template <typename T>
__device__ __forceinline__ float to_float(T v);
template <>
__device__ __forceinline__ float to_float<float>(float v) { return v; }
template <>
__device__ __forceinline__ float to_float<__half>(__half v) { return __half2float(v); }
template <>
__device__ __forceinline__ float to_float<__nv_bfloat16>(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T>
__device__ __forceinline__ T from_float(float v);
template <>
__device__ __forceinline__ float from_float<float>(float v) { return v; }
template <>
__device__ __forceinline__ __half from_float<__half>(float v) { return __float2half_rn(v); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

// Elements per 16-byte vector: 4 floats, 8 halves or bfloat16s.
template <typename T>
constexpr int kVec16 = 16 / static_cast<int>(sizeof(T));

// VEC consecutive elements of p as floats; one 16-byte load when VEC * sizeof(T) == 16 (p must then
// be 16-byte aligned), element loads otherwise.
template <typename T, int VEC>
__device__ __forceinline__ void load_floats(const T* __restrict__ p, float (&out)[VEC]) {
  if constexpr (VEC * sizeof(T) == 16) {
    const uint4 u = __ldg(reinterpret_cast<const uint4*>(p));
    const T* e = reinterpret_cast<const T*>(&u);
#pragma unroll
    for (int i = 0; i < VEC; ++i) out[i] = to_float<T>(e[i]);
  } else {
#pragma unroll
    for (int i = 0; i < VEC; ++i) out[i] = to_float<T>(p[i]);
  }
}

// Copy VEC elements bit for bit.
template <typename T, int VEC>
__device__ __forceinline__ void copy_bits(T* __restrict__ dst, const T* __restrict__ src) {
  if constexpr (VEC * sizeof(T) == 16) {
    *reinterpret_cast<uint4*>(dst) = *reinterpret_cast<const uint4*>(src);
  } else {
#pragma unroll
    for (int i = 0; i < VEC; ++i) dst[i] = src[i];
  }
}

// acc += w * p[0:VEC]
template <typename T, int VEC>
__device__ __forceinline__ void fma_row(float (&acc)[VEC], float w, const T* __restrict__ p) {
  float wv[VEC];
  load_floats<T, VEC>(p, wv);
#pragma unroll
  for (int i = 0; i < VEC; ++i) acc[i] += w * wv[i];
}

// Column-chunk reductions: each warp holds partial sums of one VEC-wide vector per lane of a
// chunk of kWarpSize * VEC columns; the warps' partials meet in shared `part` [warps][chunk].
template <int VEC>
__device__ __forceinline__ void store_partials(float* part, int warp, int lane, const float (&acc)[VEC]) {
#pragma unroll
  for (int i = 0; i < VEC; ++i) part[warp * kWarpSize * VEC + lane * VEC + i] = acc[i];
}

// Sum over the warps of column i of the chunk (call after a barrier).
template <int kWarps, int VEC>
__device__ __forceinline__ float sum_partials(const float* part, int i) {
  float sum = 0.f;
#pragma unroll
  for (int w = 0; w < kWarps; ++w) sum += part[w * kWarpSize * VEC + i];
  return sum;
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = kWarpSize / 2; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// Sum over the block; every thread gets the result. `scratch` holds one float per warp. Ends with
// a barrier, so `scratch` may be reused right away.
template <int kThreads>
__device__ __forceinline__ float block_sum(float v, float* scratch) {
  constexpr int kWarps = kThreads / kWarpSize;
  const int lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize;
  v = warp_sum(v);
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  float total = 0.f;
#pragma unroll
  for (int w = 0; w < kWarps; ++w) total += scratch[w];
  __syncthreads();
  return total;
}

// Activation of feature i from pre = x' . W_enc[:, i] (no bias yet). Not for topk SAEs, whose
// activations come from the selection.
__device__ __forceinline__ float activation(float pre, const float* __restrict__ params, int64_t d_sae,
                                            int64_t i, int arch) {
  const float h = pre + params[kBias * d_sae + i];
  if (arch == kJumpReLU) return h > params[kThreshold * d_sae + i] ? fmaxf(h, 0.f) : 0.f;  // strict >
  if (arch == kGated) {
    return h > 0.f ? fmaxf(pre * params[kMagScale * d_sae + i] + params[kMagBias * d_sae + i], 0.f) : 0.f;
  }
  return fmaxf(h, 0.f);
}

// The edited activation f': ablate 0, scale v f, clamp v, add f + v.
__device__ __forceinline__ float edit(float f, float v, int mode) {
  switch (mode) {
    case kAblate: return 0.f;
    case kScale: return f * v;
    case kClamp: return v;
    default: return f + v;
  }
}

inline bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

}  // namespace saesteer
