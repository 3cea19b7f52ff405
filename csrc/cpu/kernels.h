// Torch-free CPU kernels of the saesteer ops: raw pointers, sizes, an enum dtype (csrc/sae_enums.h),
// OpenMP threads. The ATen binding (csrc/ops_cpu.cpp) checks the arguments, makes the tensors
// contiguous, allocates the outputs and fills these structs; the math and its conventions are
// csrc/ops.cpp's and python/saesteer/sae.py's.
//
// Every array is row-major and contiguous. W_enc_T and W_dec have the SAE's dtype, x and the
// outputs x's (decode_sparse: the values'); b_dec, params and values are float32; ids are int64.
#pragma once

#include <cstdint>

#include "sae_enums.h"

namespace saesteer {
namespace cpu {

// c[m, n] = sum_j a[m, j] * b[n, j] for float32 a [m, kdim] and b [n, kdim] (b's rows are weight
// rows): the GEMM of the tiled full encode, supplied by the binding (at::mm: MKL sgemm in the
// x86 torch wheels). Required by a topk SAE's steer (encode_topk has its own GEMM).
using GemmFn = void (*)(const float* a, const float* b, int64_t m, int64_t n, int64_t kdim, float* c);

// The encoder side every op that encodes shares.
struct Encoder {
  const void* W_enc_T;  // [d_sae, d_in]
  const float* b_dec;   // [d_in] float32; subtracted from the normalized input when apply_b_dec
  const float* params;  // [5, d_sae] (sae_enums.h ParamRow)
  Dtype w_dtype;
  int64_t d_sae, d_in;
  int arch, norm;
  bool apply_b_dec;
  GemmFn gemm;
};

struct SteerArgs {
  Encoder enc;
  const void* W_dec;        // [d_sae, d_in], enc.w_dtype
  const void* x;            // [N, d_in], x_dtype
  void* out;                // [N, d_in], x_dtype
  Dtype x_dtype;
  int64_t N;
  int64_t k;                // the topk SAE's own k
  const int64_t* features;  // [S]
  int64_t S;
  int mode;                 // Mode, kAblateMask included
  const float* values;      // [N / tokens_per_row, S]; token n uses row n / tokens_per_row
  int64_t tokens_per_row;
  const bool* token_mask;   // [N], or nullptr: every token
};

// out = x + s * sum_{r in S} (f'_r - f_r) * dec_scale * W_dec[S_r] where the mask is set, x bit for
// bit elsewhere and where no coefficient is non-zero (steer and steer_rows).
void steer(const SteerArgs& a);

struct EncodeTopkArgs {
  Encoder enc;
  const void* x;      // [N, d_in], x_dtype
  Dtype x_dtype;
  int64_t N;
  int64_t sae_k;      // the topk SAE's own k
  int64_t k;          // how many to return
  void* out_values;   // [N, k], x_dtype, largest first
  int64_t* out_ids;   // [N, k]
};

void encode_topk(const EncodeTopkArgs& a);

struct TriggerArgs {
  Encoder enc;
  const void* x;            // [N, d_in], x_dtype
  Dtype x_dtype;
  int64_t N;
  int64_t k;                // the topk SAE's own k
  const int64_t* features;  // [S]
  const float* weights;     // [S]
  int64_t S;
  float* out;               // [N] float32
};

// out[n] = sum_r weights[r] * f_{features[r]}(x_n): the |S| encoder rows only (standard, jumprelu,
// gated), the full encode for a topk SAE's membership test, as steer reads them.
void trigger_score(const TriggerArgs& a);

struct DecodeSparseArgs {
  const void* values;   // [N, K], v_dtype
  const int64_t* ids;   // [N, K], each in [0, d_sae)
  const void* W_dec;    // [d_sae, d_in], w_dtype
  const float* b_dec;   // [d_in] float32
  const float* params;  // [5, d_sae]
  Dtype v_dtype, w_dtype;
  int64_t N, K, d_sae, d_in;
  void* out;            // [N, d_in], v_dtype
};

void decode_sparse(const DecodeSparseArgs& a);

}  // namespace cpu
}  // namespace saesteer
