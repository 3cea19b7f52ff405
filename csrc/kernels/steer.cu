#include "kernels/steer.cuh"

#include "kernels/common.cuh"

namespace saesteer {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / kWarpSize;

// x'_t = norm(x_t) - b_dec * apply_b_dec into `xs`, returns the denormalization scale s_t.
template <typename T>
__device__ float normalize_row(const SteerArgs<T>& a, const T* __restrict__ x, float* xs, float* scratch) {
  const int tid = threadIdx.x;
  const int64_t D = a.d_in;
  float s1 = 0.f, s2 = 0.f;
  for (int64_t d = tid; d < D; d += kThreads) {
    const float v = to_float<T>(x[d]);
    xs[d] = v;
    s1 += v;
    s2 += v * v;
  }
  s1 = block_sum<kThreads>(s1, scratch);
  s2 = block_sum<kThreads>(s2, scratch);
  float mu = 0.f, inv = 1.f, scale = 1.f;
  if (a.norm == kConstantNormRescale) {
    inv = sqrtf(static_cast<float>(D)) / sqrtf(s2);
    scale = 1.f / inv;
  } else if (a.norm == kLayerNorm) {
    mu = s1 / static_cast<float>(D);
    float var = 0.f;  // second pass: no cancellation
    for (int64_t d = tid; d < D; d += kThreads) {
      const float c = xs[d] - mu;
      var += c * c;
    }
    const float sd = sqrtf(block_sum<kThreads>(var, scratch) / static_cast<float>(D - 1));
    inv = 1.f / (sd + kLayerNormEps);
    scale = sd;
  }
  if (a.norm != kNoNorm || a.apply_b_dec) {
    for (int64_t d = tid; d < D; d += kThreads) {
      float v = xs[d];
      if (a.norm != kNoNorm) v = (v - mu) * inv;
      if (a.apply_b_dec) v -= to_float<T>(a.b_dec[d]);
      xs[d] = v;
    }
  }
  return scale;
}

// f[u] = the activation of feature `feat` on token t0 + u (u < n_tok), in every lane of the warp:
// the dot of its encoder row with x' (xs [TOK][d_in] in shared memory; one 16-byte load of the row
// serves the TOK tokens), or for a topk SAE a look-up among the token's winners.
template <typename T, int VEC, int TOK>
__device__ __forceinline__ void subset_activations(const SteerArgs<T>& a, int64_t feat, const float* xs, int64_t t0,
                                                   int n_tok, int lane, float (&f)[TOK]) {
  constexpr int kChunk = kWarpSize * VEC;
  const int64_t D = a.d_in;
  if (a.topk_idx != nullptr) {  // topk SAE: f = the winner's activation, or 0 if not a winner
#pragma unroll
    for (int u = 0; u < TOK; ++u) {
      float hit = 0.f;
      if (u < n_tok) {
        const int64_t base = (t0 + u) * a.topk_k;
        for (int64_t j = lane; j < a.topk_k; j += kWarpSize) {
          if (a.topk_idx[base + j] == feat) hit = a.topk_val[base + j];
        }
      }
      f[u] = warp_sum(hit);  // ids are distinct: at most one lane holds a nonzero
    }
    return;
  }
  const T* __restrict__ w = a.W_enc_T + feat * D;
  float acc[TOK];
#pragma unroll
  for (int u = 0; u < TOK; ++u) acc[u] = 0.f;
  for (int64_t d = static_cast<int64_t>(lane) * VEC; d < D; d += kChunk) {
    float wv[VEC];
    load_floats<T, VEC>(w + d, wv);
#pragma unroll
    for (int u = 0; u < TOK; ++u) {
#pragma unroll
      for (int i = 0; i < VEC; ++i) acc[u] += wv[i] * xs[u * D + d + i];
    }
  }
#pragma unroll
  for (int u = 0; u < TOK; ++u) f[u] = activation(warp_sum(acc[u]), a.params, a.d_sae, feat, a.arch);
}

// The trigger read, one token per block: scores[t] = sum_s values[s] * f_{features[s]}(x_t), warp w
// taking the features w, w + kWarps, ... (the subset encode of the steer kernel, nothing decoded).
template <typename T, int VEC>
__global__ void __launch_bounds__(kThreads) trigger_subset_kernel(const SteerArgs<T> a, float* __restrict__ scores) {
  extern __shared__ float smem[];
  float* xs = smem;  // [d_in] x'
  __shared__ float scratch[kWarps];
  const int64_t t = blockIdx.x;
  const int tid = threadIdx.x, lane = tid % kWarpSize, warp = tid / kWarpSize;
  normalize_row<T>(a, a.x + t * a.x_stride, xs, scratch);
  __syncthreads();
  float acc = 0.f;
  for (int64_t s = warp; s < a.n_features; s += kWarps) {
    float f[1];
    subset_activations<T, VEC, 1>(a, a.features[s], xs, t, 1, lane, f);
    acc += a.values[s] * f[0];  // the same in every lane of the warp
  }
  acc = block_sum<kThreads>(lane == 0 ? acc : 0.f, scratch);
  if (tid == 0) scores[t] = acc;
}

// TOK tokens per block share each encoder-row load (their x' sit side by side in shared memory).
template <typename T, int VEC, int TOK>
__global__ void __launch_bounds__(kThreads) steer_subset_kernel(const SteerArgs<T> a) {
  constexpr int kChunk = kWarpSize * VEC;  // output columns per chunk: one vector per lane
  extern __shared__ float smem[];
  float* xs = smem;                          // [TOK][d_in]       x'
  float* coef = xs + TOK * a.d_in;           // [TOK][n_features] (f' - f) * dec_scale * s
  float* part = coef + TOK * a.n_features;   // [kWarps][kChunk]  per-warp partial deltas
  __shared__ float scratch[kWarps];
  __shared__ int changed[TOK];

  const int64_t t0 = static_cast<int64_t>(blockIdx.x) * TOK;
  const int n_tok = static_cast<int>(a.n_tokens - t0 < TOK ? a.n_tokens - t0 : TOK);
  const int tid = threadIdx.x, lane = tid % kWarpSize, warp = tid / kWarpSize;
  const int64_t D = a.d_in, S = a.n_features;

  // 1) x' of each token, in shared memory, and its denormalization scale (the same in every thread).
  if (tid < TOK) changed[tid] = 0;
  float scale[TOK];
#pragma unroll
  for (int u = 0; u < TOK; ++u) {
    scale[u] = u < n_tok ? normalize_row<T>(a, a.x + (t0 + u) * a.x_stride, xs + u * D, scratch) : 1.f;
  }
  __syncthreads();

  // 2) Coefficients: warp w takes features w, w + kWarps, ...; one encoder-row load serves TOK tokens.
  for (int64_t s = warp; s < S; s += kWarps) {
    const int64_t feat = a.features[s];
    float f[TOK];
    subset_activations<T, VEC, TOK>(a, feat, xs, t0, n_tok, lane, f);
    if (lane == 0) {
      const float dec_scale = a.params[kDecScale * a.d_sae + feat];
#pragma unroll
      for (int u = 0; u < TOK; ++u) {
        if (u < n_tok) {
          const float v = a.values[((t0 + u) / a.tok_per_row) * a.values_stride + s];
          float c = (edit(f[u], v, a.mode) - f[u]) * dec_scale;
          if (a.norm != kNoNorm) c *= scale[u];
          coef[u * S + s] = c;
          if (c != 0.f) atomicOr(&changed[u], 1);  // NaN != 0 too, as in the reference
        }
      }
    }
  }
  __syncthreads();

  // 3) This block's column chunks: y = x + coef @ W_dec[S], or x's bits when nothing changes.
  for (int u = 0; u < n_tok; ++u) {
    const int64_t t = t0 + u;
    const T* __restrict__ x = a.x + t * a.x_stride;
    T* __restrict__ out = a.out + t * a.out_stride;
    const float* cu = coef + u * S;
    const bool update = changed[u] != 0 && (a.token_mask == nullptr || a.token_mask[t] != 0);
    for (int64_t c0 = static_cast<int64_t>(blockIdx.y) * kChunk; c0 < D; c0 += static_cast<int64_t>(gridDim.y) * kChunk) {
      const int64_t d = c0 + static_cast<int64_t>(lane) * VEC;
      if (!update) {  // block-uniform branch
        if (warp == 0 && d < D) copy_bits<T, VEC>(out + d, x + d);
        continue;
      }
      float acc[VEC];
#pragma unroll
      for (int i = 0; i < VEC; ++i) acc[i] = 0.f;
      if (d < D) {
#pragma unroll 4
        for (int64_t s = warp; s < S; s += kWarps) {
          const float c = cu[s];  // warp-uniform: skipped rows cost no load
          if (c != 0.f) fma_row<T, VEC>(acc, c, a.W_dec + a.features[s] * D + d);
        }
      }
      store_partials<VEC>(part, warp, lane, acc);
      __syncthreads();
      for (int i = tid; i < kChunk; i += kThreads) {
        const int64_t col = c0 + i;
        if (col < D) out[col] = from_float<T>(to_float<T>(x[col]) + sum_partials<kWarps, VEC>(part, i));
      }
      __syncthreads();
    }
  }
}

// Opts `kernel` in to `smem` bytes of dynamic shared memory when above the 48 KB default
// (cudaErrorInvalidValue beyond the device's limit); *sms = the device's multiprocessor count.
template <typename Kernel>
cudaError_t prepare_smem(Kernel kernel, size_t smem, int* sms) {
  int device = 0, smem_optin = 0;
  cudaError_t err = cudaGetDevice(&device);
  if (err == cudaSuccess) err = cudaDeviceGetAttribute(sms, cudaDevAttrMultiProcessorCount, device);
  if (err == cudaSuccess) err = cudaDeviceGetAttribute(&smem_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device);
  if (err != cudaSuccess) return err;
  if (smem > static_cast<size_t>(smem_optin)) return cudaErrorInvalidValue;
  if (smem > 48 * 1024) {
    return cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
  }
  return cudaSuccess;
}

// Tokens per block: 4 from 32 tokens on (the encoder rows are then read from L2 a quarter as
// often; 8+ token groups times the column split still give ~70+ blocks), else 1.
constexpr int kTokensPerBlock = 4;
constexpr int64_t kGroupFromTokens = 32;

template <typename T, int VEC, int TOK>
cudaError_t launch(const SteerArgs<T>& a, cudaStream_t stream) {
  const size_t smem = steer_subset_smem_bytes<T>(a.d_in, a.n_features, TOK);
  auto kernel = steer_subset_kernel<T, VEC, TOK>;
  int sms = 0;
  const cudaError_t err = prepare_smem(kernel, smem, &sms);
  if (err != cudaSuccess) return err;
  // About two blocks per SM in total: a generation step (few tokens) splits each token's columns
  // over several blocks; a prefill keeps one block per token group so the dots are computed once.
  const int64_t blocks = (a.n_tokens + TOK - 1) / TOK;
  const int64_t chunks = (a.d_in + kWarpSize * VEC - 1) / (kWarpSize * VEC);
  const int64_t want = (2 * static_cast<int64_t>(sms) + blocks - 1) / blocks;
  const int64_t split = want < 1 ? 1 : (want > chunks ? chunks : want);
  const dim3 grid(static_cast<unsigned>(blocks), static_cast<unsigned>(split));
  kernel<<<grid, kThreads, smem, stream>>>(a);
  return cudaGetLastError();
}

template <typename T, int VEC>
cudaError_t launch_tok(const SteerArgs<T>& a, cudaStream_t stream) {
  return a.n_tokens >= kGroupFromTokens ? launch<T, VEC, kTokensPerBlock>(a, stream) : launch<T, VEC, 1>(a, stream);
}

}  // namespace

template <typename T>
size_t steer_subset_smem_bytes(int64_t d_in, int64_t n_features, int tokens_per_block) {
  return static_cast<size_t>(tokens_per_block * (d_in + n_features) + kWarps * kWarpSize * kVec16<T>) * sizeof(float);
}

template <typename T>
cudaError_t launch_steer_subset(const SteerArgs<T>& a, cudaStream_t stream) {
  if (a.n_tokens == 0) return cudaSuccess;
  if (a.n_tokens > 0x7fffffff || a.d_in < 1 || a.tok_per_row < 1) return cudaErrorInvalidValue;
  constexpr int V = kVec16<T>;
  const bool vec = a.d_in % V == 0 && a.x_stride % V == 0 && a.out_stride % V == 0 && aligned16(a.x) &&
                   aligned16(a.out) && aligned16(a.W_enc_T) && aligned16(a.W_dec);
  return vec ? launch_tok<T, V>(a, stream) : launch_tok<T, 1>(a, stream);
}

template <typename T>
cudaError_t launch_trigger_subset(const SteerArgs<T>& a, float* scores, cudaStream_t stream) {
  if (a.n_tokens == 0) return cudaSuccess;
  if (a.n_tokens > 0x7fffffff || a.d_in < 1) return cudaErrorInvalidValue;
  const size_t smem = static_cast<size_t>(a.d_in) * sizeof(float);
  constexpr int V = kVec16<T>;
  const bool vec = a.d_in % V == 0 && a.x_stride % V == 0 && aligned16(a.x) && aligned16(a.W_enc_T);
  auto kernel = vec ? trigger_subset_kernel<T, V> : trigger_subset_kernel<T, 1>;
  int sms = 0;
  const cudaError_t err = prepare_smem(kernel, smem, &sms);
  if (err != cudaSuccess) return err;
  kernel<<<static_cast<unsigned>(a.n_tokens), kThreads, smem, stream>>>(a, scores);
  return cudaGetLastError();
}

#define SAESTEER_INSTANTIATE(T)                                                          \
  template size_t steer_subset_smem_bytes<T>(int64_t, int64_t, int);                    \
  template cudaError_t launch_steer_subset<T>(const SteerArgs<T>&, cudaStream_t);        \
  template cudaError_t launch_trigger_subset<T>(const SteerArgs<T>&, float*, cudaStream_t);
SAESTEER_INSTANTIATE(float)
SAESTEER_INSTANTIATE(__half)
SAESTEER_INSTANTIATE(__nv_bfloat16)
#undef SAESTEER_INSTANTIATE

}  // namespace saesteer
