// CPU implementations of the saesteer ops (schemas: csrc/ops.cpp): argument checks, dtype mapping,
// contiguous inputs and output allocation, then the torch-free kernels of csrc/cpu/kernels.h.
//
// Only the ATen headers this file uses (Tensor methods, the thread setup of ATen/Parallel.h and the
// per-operator headers of empty, empty_like, from_blob, mm): ~14 s to compile on the 2-core build
// machines. ATen/ATen.h alone takes 4x as long as ATen/core/Tensor.h with torch/library.h (50 s
// against 12 s, measured in the same loaded minutes).
#define TORCH_ASSERT_ONLY_METHOD_OPERATORS
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/from_blob.h>
#include <ATen/ops/mm.h>
#include <torch/library.h>

#include <optional>
#include <tuple>

#include "cpu/kernels.h"

namespace saesteer {
namespace cpu {
namespace {

// ------------------------------------------------------------------------------------------------
// boundary checks (named after the schema's arguments)
// ------------------------------------------------------------------------------------------------
bool is_kernel_dtype(at::ScalarType t) { return t == at::kFloat || t == at::kBFloat16 || t == at::kHalf; }

void check_cpu(const at::Tensor& t, const char* name, const at::Tensor& x) {
  TORCH_CHECK(t.device() == x.device(), name, ": on ", t.device(), " but x is on ", x.device(),
              " (every argument must be on the same device)");
}

// Checks shared by every op that reads x and the encoder; returns d_sae.
int64_t check_encoder(const at::Tensor& x, const at::Tensor& W_enc_T, const at::Tensor& b_dec, const at::Tensor& params,
                      int64_t arch, int64_t norm) {
  TORCH_CHECK(x.dim() == 2, "x: expected a 2-D tensor [N, d_in], got shape ", x.sizes());
  TORCH_CHECK(is_kernel_dtype(x.scalar_type()), "x: expected float32, bfloat16 or float16, got ", x.scalar_type());
  TORCH_CHECK(W_enc_T.dim() == 2, "W_enc_T: expected [d_sae, d_in], got shape ", W_enc_T.sizes());
  const int64_t d_sae = W_enc_T.size(0), d_in = W_enc_T.size(1);
  TORCH_CHECK(x.size(1) == d_in, "x: expected last dimension d_in=", d_in, " (W_enc_T.size(1)), got shape ", x.sizes());
  TORCH_CHECK(is_kernel_dtype(W_enc_T.scalar_type()), "W_enc_T: expected float32, bfloat16 or float16, got ",
              W_enc_T.scalar_type());
  TORCH_CHECK(W_enc_T.is_contiguous(), "W_enc_T: expected a contiguous tensor (sae.W_enc_T)");
  TORCH_CHECK(b_dec.dim() == 1 && b_dec.size(0) == d_in, "b_dec: expected shape [", d_in, "], got ", b_dec.sizes());
  TORCH_CHECK(params.scalar_type() == at::kFloat && params.dim() == 2 && params.size(0) == 5 && params.size(1) == d_sae,
              "params: expected float32 [5, d_sae=", d_sae, "], got ", params.scalar_type(), " ", params.sizes());
  TORCH_CHECK(arch >= kStandard && arch <= kTopK, "arch: expected 0 (standard), 1 (jumprelu), 2 (gated) or 3 (topk), got ",
              arch);
  TORCH_CHECK(norm >= kNoNorm && norm <= kLayerNorm,
              "norm: expected 0 (none), 1 (constant_norm_rescale) or 2 (layer_norm), got ", norm);
  check_cpu(W_enc_T, "W_enc_T", x);
  check_cpu(b_dec, "b_dec", x);
  check_cpu(params, "params", x);
  return d_sae;
}

void check_features(const at::Tensor& features, int64_t d_sae, const at::Tensor& x) {
  TORCH_CHECK(features.dim() == 1 && features.scalar_type() == at::kLong,
              "features: expected a 1-D int64 tensor, got ", features.scalar_type(), " ", features.sizes());
  check_cpu(features, "features", x);
  const at::Tensor f = features.contiguous();
  const int64_t* p = f.data_ptr<int64_t>();
  for (int64_t r = 0; r < f.numel(); ++r) {
    TORCH_CHECK(p[r] >= 0 && p[r] < d_sae, "features: id ", p[r], " is outside [0, d_sae=", d_sae, ")");
  }
}

// The kernels' dtype of a checked tensor dtype; `name` names the argument in the error otherwise.
Dtype kernel_dtype(at::ScalarType st, const char* name) {
  switch (st) {
    case at::kFloat: return kFloat32;
    case at::kBFloat16: return kBFloat16;
    case at::kHalf: return kFloat16;
    default: TORCH_CHECK(false, name, ": expected float32, bfloat16 or float16, got ", st);
  }
}

// The encode's GEMM: c = a @ b.T through at::mm (MKL sgemm here), on the kernels' own buffers.
void gemm_aten(const float* a, const float* b, int64_t m, int64_t n, int64_t kdim, float* c) {
  const auto f32 = at::TensorOptions().dtype(at::kFloat);
  const at::Tensor A = at::from_blob(const_cast<float*>(a), {m, kdim}, f32);
  const at::Tensor B = at::from_blob(const_cast<float*>(b), {n, kdim}, f32);
  at::Tensor C = at::from_blob(c, {m, n}, f32);
  at::mm_out(C, A, B.t());
}

// The kernels run OpenMP regions sized by omp_get_max_threads(), a per-thread setting. torch sets
// it on each thread before that thread's first parallel op (torch.set_num_threads on the main
// thread, the same count on others); this does the same for a thread whose first parallel op is
// one of these, so the kernels use torch's thread count on every thread, as at::parallel_for does.
void init_threads() { at::internal::lazy_init_num_threads(); }

// Tensors a kernel reads, kept alive (and contiguous) for the call.
struct EncoderTensors {
  at::Tensor W_enc_T, b_dec, params;
  Encoder enc;
  EncoderTensors(const at::Tensor& W, const at::Tensor& b, const at::Tensor& p, int64_t arch, int64_t norm,
                 bool apply_b_dec)
      : W_enc_T(W), b_dec(b.to(at::kFloat).contiguous()), params(p.contiguous()) {
    enc = Encoder{W_enc_T.data_ptr(), b_dec.data_ptr<float>(), params.data_ptr<float>(),
                  kernel_dtype(W_enc_T.scalar_type(), "W_enc_T"), W_enc_T.size(0), W_enc_T.size(1),
                  static_cast<int>(arch), static_cast<int>(norm), apply_b_dec, &gemm_aten};
  }
};

// Shared body of steer and steer_rows: x2 [N, d_in], values [rows, S], mask [N] or undefined.
at::Tensor steer_common(const at::Tensor& x2, const at::Tensor& W_enc_T, const at::Tensor& W_dec, const at::Tensor& b_dec,
                        const at::Tensor& params, int64_t arch, int64_t norm, bool apply_b_dec, int64_t k,
                        const at::Tensor& features, int64_t mode, const at::Tensor& values, int64_t tokens_per_row,
                        const at::Tensor& mask) {
  const at::Tensor x = x2.contiguous();
  at::Tensor out = at::empty_like(x, at::MemoryFormat::Contiguous);
  const at::Tensor feats = features.contiguous();
  const at::Tensor vals = values.to(at::kFloat).contiguous();
  const at::Tensor m = mask.defined() ? mask.contiguous() : at::Tensor();
  const EncoderTensors E(W_enc_T, b_dec, params, arch, norm, apply_b_dec);
  SteerArgs a{E.enc, W_dec.data_ptr(), x.data_ptr(), out.data_ptr(), kernel_dtype(x.scalar_type(), "x"), x.size(0), k,
              feats.data_ptr<int64_t>(), feats.numel(), static_cast<int>(mode), vals.data_ptr<float>(), tokens_per_row,
              m.defined() ? m.data_ptr<bool>() : nullptr};
  init_threads();
  steer(a);
  return out;
}

void check_steer_args(const at::Tensor& x2, const at::Tensor& W_enc_T, const at::Tensor& W_dec, const at::Tensor& b_dec,
                      const at::Tensor& params, int64_t arch, int64_t norm, int64_t k, const at::Tensor& features,
                      int64_t mode) {
  const int64_t d_sae = check_encoder(x2, W_enc_T, b_dec, params, arch, norm);
  TORCH_CHECK(W_dec.sizes() == W_enc_T.sizes(), "W_dec: expected shape ", W_enc_T.sizes(), " (as W_enc_T), got ",
              W_dec.sizes());
  TORCH_CHECK(W_dec.scalar_type() == W_enc_T.scalar_type() && b_dec.scalar_type() == W_enc_T.scalar_type(),
              "W_dec/b_dec: expected the dtype of W_enc_T (", W_enc_T.scalar_type(), "), got ", W_dec.scalar_type(), "/",
              b_dec.scalar_type());
  TORCH_CHECK(W_dec.is_contiguous(), "W_dec: expected a contiguous tensor");
  check_cpu(W_dec, "W_dec", x2);
  TORCH_CHECK(arch != kTopK || (k >= 1 && k <= d_sae), "k: a topk SAE needs k in [1, d_sae=", d_sae, "], got ", k);
  TORCH_CHECK(mode >= kAblate && mode <= kAdd, "mode: expected 0 (ablate), 1 (scale), 2 (clamp) or 3 (add), got ", mode);
  check_features(features, d_sae, x2);
}

void check_values(const at::Tensor& values, at::IntArrayRef expected, const at::Tensor& x, const char* what) {
  TORCH_CHECK(values.sizes() == expected, "values: expected shape ", expected, " ", what, ", got ", values.sizes());
  TORCH_CHECK(values.is_floating_point(), "values: expected a floating-point tensor, got ", values.scalar_type());
  check_cpu(values, "values", x);
}

void check_mask(const std::optional<at::Tensor>& token_mask, at::IntArrayRef expected, const at::Tensor& x) {
  if (!token_mask.has_value()) return;
  const at::Tensor& m = *token_mask;
  TORCH_CHECK(m.scalar_type() == at::kBool, "token_mask: expected a bool tensor, got ", m.scalar_type());
  TORCH_CHECK(m.sizes() == expected, "token_mask: expected shape ", expected, " (x's leading dims), got ", m.sizes());
  check_cpu(m, "token_mask", x);
}

// ------------------------------------------------------------------------------------------------
// ops
// ------------------------------------------------------------------------------------------------
at::Tensor steer_cpu(const at::Tensor& x, const at::Tensor& W_enc_T, const at::Tensor& W_dec, const at::Tensor& b_dec,
                     const at::Tensor& params, int64_t arch, int64_t norm, bool apply_b_dec, int64_t k,
                     const at::Tensor& features, int64_t mode, const at::Tensor& values,
                     const std::optional<at::Tensor>& token_mask) {
  check_steer_args(x, W_enc_T, W_dec, b_dec, params, arch, norm, k, features, mode);
  check_values(values, {features.numel()}, x, "(one per feature)");
  check_mask(token_mask, {x.size(0)}, x);
  return steer_common(x, W_enc_T, W_dec, b_dec, params, arch, norm, apply_b_dec, k, features, mode, values, x.size(0),
                      token_mask.has_value() ? *token_mask : at::Tensor());
}

at::Tensor steer_rows_cpu(const at::Tensor& x, const at::Tensor& W_enc_T, const at::Tensor& W_dec,
                          const at::Tensor& b_dec, const at::Tensor& params, int64_t arch, int64_t norm,
                          bool apply_b_dec, int64_t k, const at::Tensor& features, int64_t mode,
                          const at::Tensor& values, const std::optional<at::Tensor>& token_mask) {
  TORCH_CHECK(x.dim() == 3, "x: steer_rows expects [R, T, d_in], got shape ", x.sizes());
  const int64_t R = x.size(0), T = x.size(1);
  const at::Tensor x2 = x.reshape({R * T, x.size(2)});
  check_steer_args(x2, W_enc_T, W_dec, b_dec, params, arch, norm, k, features, mode);
  check_values(values, {R, features.numel()}, x, "([R, |S|]: one row of values per batch row)");
  check_mask(token_mask, {R, T}, x);
  const at::Tensor m = token_mask.has_value() ? token_mask->reshape({R * T}) : at::Tensor();
  const int64_t internal_mode = mode == kAblate ? kAblateMask : mode;
  return steer_common(x2, W_enc_T, W_dec, b_dec, params, arch, norm, apply_b_dec, k, features, internal_mode, values, T, m)
      .view(x.sizes());
}

std::tuple<at::Tensor, at::Tensor> encode_topk_cpu(const at::Tensor& x, const at::Tensor& W_enc_T,
                                                   const at::Tensor& b_dec, const at::Tensor& params, int64_t arch,
                                                   int64_t norm, bool apply_b_dec, int64_t sae_k, int64_t k) {
  const int64_t d_sae = check_encoder(x, W_enc_T, b_dec, params, arch, norm);
  TORCH_CHECK(k >= 1 && k <= d_sae, "k: expected an int in [1, d_sae=", d_sae, "], got ", k);
  TORCH_CHECK(arch != kTopK || (sae_k >= 1 && sae_k <= d_sae), "sae_k: a topk SAE needs sae_k in [1, d_sae=", d_sae,
              "], got ", sae_k);
  const at::Tensor xc = x.contiguous();
  const int64_t N = xc.size(0);
  at::Tensor out_v = at::empty({N, k}, xc.options());
  at::Tensor out_i = at::empty({N, k}, xc.options().dtype(at::kLong));
  if (N == 0) return {out_v, out_i};
  const EncoderTensors E(W_enc_T, b_dec, params, arch, norm, apply_b_dec);
  init_threads();
  encode_topk(EncodeTopkArgs{E.enc, xc.data_ptr(), kernel_dtype(xc.scalar_type(), "x"), N, sae_k, k, out_v.data_ptr(),
                             out_i.data_ptr<int64_t>()});
  return {out_v, out_i};
}

at::Tensor decode_sparse_cpu(const at::Tensor& values, const at::Tensor& indices, const at::Tensor& W_dec,
                             const at::Tensor& b_dec, const at::Tensor& params) {
  TORCH_CHECK(values.dim() == 2, "values: expected a 2-D tensor [N, k], got shape ", values.sizes());
  TORCH_CHECK(is_kernel_dtype(values.scalar_type()), "values: expected float32, bfloat16 or float16, got ",
              values.scalar_type());
  TORCH_CHECK(indices.sizes() == values.sizes(), "indices: expected the shape of values ", values.sizes(), ", got ",
              indices.sizes());
  TORCH_CHECK(indices.scalar_type() == at::kLong, "indices: expected int64, got ", indices.scalar_type());
  TORCH_CHECK(W_dec.dim() == 2 && W_dec.is_contiguous(), "W_dec: expected a contiguous [d_sae, d_in] tensor, got shape ",
              W_dec.sizes());
  const int64_t d_sae = W_dec.size(0), d = W_dec.size(1);
  TORCH_CHECK(b_dec.dim() == 1 && b_dec.size(0) == d, "b_dec: expected shape [", d, "], got ", b_dec.sizes());
  TORCH_CHECK(params.scalar_type() == at::kFloat && params.dim() == 2 && params.size(0) == 5 && params.size(1) == d_sae,
              "params: expected float32 [5, d_sae=", d_sae, "], got ", params.scalar_type(), " ", params.sizes());
  check_cpu(indices, "indices", values);
  check_cpu(W_dec, "W_dec", values);
  check_cpu(b_dec, "b_dec", values);
  check_cpu(params, "params", values);
  const at::Tensor v = values.contiguous(), idx = indices.contiguous();
  const int64_t N = v.size(0), K = v.size(1);
  const int64_t* ip = idx.data_ptr<int64_t>();
  for (int64_t j = 0; j < N * K; ++j) {
    TORCH_CHECK(ip[j] >= 0 && ip[j] < d_sae, "indices: id ", ip[j], " is outside [0, d_sae=", d_sae, ")");
  }
  at::Tensor out = at::empty({N, d}, v.options());
  if (N == 0) return out;
  const Dtype w_dtype = kernel_dtype(W_dec.scalar_type(), "W_dec");
  const at::Tensor bd = b_dec.to(at::kFloat).contiguous(), pr = params.contiguous();
  init_threads();
  decode_sparse(DecodeSparseArgs{v.data_ptr(), ip, W_dec.data_ptr(), bd.data_ptr<float>(), pr.data_ptr<float>(),
                                 kernel_dtype(v.scalar_type(), "values"), w_dtype, N, K, d_sae, d, out.data_ptr()});
  return out;
}

at::Tensor trigger_score_cpu(const at::Tensor& x, const at::Tensor& W_enc_T, const at::Tensor& b_dec,
                             const at::Tensor& params, int64_t arch, int64_t norm, bool apply_b_dec, int64_t k,
                             const at::Tensor& features, const at::Tensor& weights) {
  const int64_t d_sae = check_encoder(x, W_enc_T, b_dec, params, arch, norm);
  TORCH_CHECK(arch != kTopK || (k >= 1 && k <= d_sae), "k: a topk SAE needs k in [1, d_sae=", d_sae, "], got ", k);
  check_features(features, d_sae, x);
  TORCH_CHECK(weights.dim() == 1 && weights.size(0) == features.size(0) && weights.scalar_type() == at::kFloat,
              "weights: expected float32 [|S|=", features.size(0), "], got ", weights.scalar_type(), " ", weights.sizes());
  check_cpu(weights, "weights", x);
  const at::Tensor xc = x.contiguous(), feats = features.contiguous(), w = weights.contiguous();
  at::Tensor out = at::empty({xc.size(0)}, xc.options().dtype(at::kFloat));
  if (xc.size(0) == 0) return out;
  const EncoderTensors E(W_enc_T, b_dec, params, arch, norm, apply_b_dec);
  init_threads();
  trigger_score(TriggerArgs{E.enc, xc.data_ptr(), kernel_dtype(xc.scalar_type(), "x"), xc.size(0), k,
                            feats.data_ptr<int64_t>(), w.data_ptr<float>(), feats.numel(), out.data_ptr<float>()});
  return out;
}

}  // namespace
}  // namespace cpu
}  // namespace saesteer

TORCH_LIBRARY_IMPL(saesteer, CPU, m) {
  m.impl("steer", &saesteer::cpu::steer_cpu);
  m.impl("steer_rows", &saesteer::cpu::steer_rows_cpu);
  m.impl("encode_topk", &saesteer::cpu::encode_topk_cpu);
  m.impl("decode_sparse", &saesteer::cpu::decode_sparse_cpu);
  m.impl("trigger_score", &saesteer::cpu::trigger_score_cpu);
}
