// Fused error-preserving steer of a feature subset, one launch per call:
//
//   y[t] = x[t] + s_t * sum_{i in S} (f'_ti - f_ti) * dec_scale_i * W_dec[i]      (fp32 accumulate)
//
// with f_ti the activation of feature i on token t (encoder row W_enc_T[i] gathered, input
// normalization and activation fused), f' the edit, s_t the denormalization scale. A token whose
// coefficients are all zero, or whose mask is false, is copied bit for bit.
//
// Grid (N / TOK, n_split), 256 threads, TOK = 1 token per block (4 once N fills the GPU with
// 4-token blocks). Block (b, c): x' of its tokens into shared memory (fp32) with their row
// statistics; warp w computes the dots of features w, w + 8, ... (16-byte loads of the encoder
// row, each load used by the TOK tokens), then the coefficients; then it decodes the column chunks
// c, c + n_split, ... of 32 * VEC columns: warp w accumulates the decoder rows of its features
// (one 512-byte row segment per warp per feature), and the 8 partial sums meet in shared memory.
// At generation sizes (N = 1..64) n_split spreads a token over up to d_in / (32 * VEC) blocks; each
// recomputes the |S| dots (|S| * d_in elements from L2) rather than synchronizing with the others.
//
// topk SAEs: feature membership in a token's top k needs the full encode, so the caller passes the
// token's k winners (topk_idx / topk_val, relu'd) and the dots are replaced by a lookup.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace saesteer {

template <typename T>
struct SteerArgs {
  const T* x;               // [n_tokens, d_in], row stride x_stride, unit column stride
  T* out;                   // [n_tokens, d_in], row stride out_stride
  const T* W_enc_T;         // [d_sae, d_in] contiguous
  const T* W_dec;           // [d_sae, d_in] contiguous
  const T* b_dec;           // [d_in]
  const float* params;      // [5, d_sae] contiguous: bias, threshold, mag_scale, mag_bias, dec_scale
  const int64_t* features;  // [n_features] ids in [0, d_sae)
  const float* values;      // row r: values + r * values_stride, [n_features]
  const uint8_t* token_mask;  // [n_tokens] (0/1) or nullptr for all tokens
  const int64_t* topk_idx;  // topk SAEs: [n_tokens, topk_k] winners; nullptr otherwise
  const float* topk_val;    // topk SAEs: [n_tokens, topk_k] their relu'd activations
  int64_t n_tokens, d_in, d_sae, n_features;
  int64_t x_stride, out_stride;
  int64_t tok_per_row;    // token t uses value row t / tok_per_row (steer: n_tokens, stride 0)
  int64_t values_stride;  // 0 for steer, n_features for steer_rows
  int64_t topk_k;
  int arch, norm, mode;
  bool apply_b_dec;
};

// Shared memory a launch with `tokens_per_block` (1 or 4) tokens per block needs:
// 4 * tokens_per_block * (d_in + n_features) + 8 KB. Launches above the device's opt-in limit fail
// with cudaErrorInvalidValue.
template <typename T>
size_t steer_subset_smem_bytes(int64_t d_in, int64_t n_features, int tokens_per_block);

// Launch on `stream`. Returns the launch error (cudaSuccess when queued). No host synchronization and
// no allocation: safe inside CUDA graph capture.
template <typename T>
cudaError_t launch_steer_subset(const SteerArgs<T>& args, cudaStream_t stream);

// The trigger read: scores[t] = sum_s values[s] * f_{features[s]}(x_t) (float32 [n_tokens]), from the
// same subset encode (out, W_dec, token_mask, mode and tok_per_row are not read; values are the
// weights, values_stride 0). One block per token, d_in floats of shared memory. Same launch contract.
template <typename T>
cudaError_t launch_trigger_subset(const SteerArgs<T>& args, float* scores, cudaStream_t stream);

}  // namespace saesteer
