// CUDA implementations of the saesteer ops (schemas: csrc/ops.cpp): argument checks, device guard,
// current stream (c10::cuda::getCurrentCUDAStream, which at::cuda re-exports; its header needs no cuBLAS),
// then the torch-free launchers of csrc/kernels. Registered: steer, steer_rows,
// decode_sparse, trigger_score. encode_topk has no CUDA kernel (the Triton one serves CUDA tensors).
//
// Everything here is CUDA-graph safe: outputs come from the caching allocator on the current
// stream, no host synchronization, no data-dependent shapes.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <torch/library.h>

#include <cmath>
#include <optional>
#include <utility>

#include "kernels/decode_sparse.cuh"
#include "kernels/steer.cuh"

namespace {

#define CHECK_CUDA(t) TORCH_CHECK((t).is_cuda(), #t ": expected a CUDA tensor, got one on ", (t).device())
#define CHECK_CONTIGUOUS(t) TORCH_CHECK((t).is_contiguous(), #t ": expected a contiguous tensor")
#define CHECK_DTYPE(t, dt) \
  TORCH_CHECK((t).scalar_type() == (dt), #t ": expected dtype ", (dt), ", got ", (t).scalar_type())
#define CHECK_SAME_DEVICE(t, ref) \
  TORCH_CHECK((t).device() == (ref).device(), #t ": on ", (t).device(), " but " #ref " is on ", (ref).device())
#define CHECK_SHAPE(t, ...)                                                                              \
  TORCH_CHECK((t).sizes() == at::IntArrayRef({__VA_ARGS__}), #t ": expected shape ", at::IntArrayRef({__VA_ARGS__}), \
              ", got ", (t).sizes())
#define CHECK_LAUNCH(err, what) TORCH_CHECK((err) == cudaSuccess, "saesteer " what " kernel: ", cudaGetErrorString(err))

template <typename T>
struct Tag {
  using type = T;
};

// Calls f(Tag<T>{}) with T the CUDA storage type of `st`.
template <typename F>
void dispatch_storage(at::ScalarType st, const char* name, F&& f) {
  switch (st) {
    case at::kFloat: f(Tag<float>{}); break;
    case at::kHalf: f(Tag<__half>{}); break;
    case at::kBFloat16: f(Tag<__nv_bfloat16>{}); break;
    default: TORCH_CHECK(false, name, ": expected float32, bfloat16 or float16, got ", st);
  }
}

template <typename T>
const T* ptr(const at::Tensor& t) {
  return reinterpret_cast<const T*>(t.data_ptr());
}

// The SAE tensors every op shares: same device as `x`, the layout of csrc/ops.cpp's conventions.
void check_sae(const at::Tensor& x, const at::Tensor& W, const char* W_name, const at::Tensor& b_dec,
               const at::Tensor& params) {
  TORCH_CHECK(W.dim() == 2, W_name, ": expected [d_sae, d_in], got shape ", W.sizes());
  TORCH_CHECK(W.is_contiguous(), W_name, ": expected a contiguous tensor");
  TORCH_CHECK(W.device() == x.device(), W_name, ": on ", W.device(), " but the input is on ", x.device());
  TORCH_CHECK(W.scalar_type() == x.scalar_type(), W_name, ": the cuda backend needs the SAE in the input's dtype (",
              x.scalar_type(), "), got ", W.scalar_type(), "; convert one with .to()");
  CHECK_SAME_DEVICE(b_dec, x);
  CHECK_DTYPE(b_dec, x.scalar_type());
  CHECK_CONTIGUOUS(b_dec);
  CHECK_SHAPE(b_dec, W.size(1));
  CHECK_SAME_DEVICE(params, x);
  CHECK_DTYPE(params, at::kFloat);
  CHECK_CONTIGUOUS(params);
  CHECK_SHAPE(params, 5, W.size(0));
}

// topk SAEs: each token's k winners by score (pre + b_enc) * mag_scale, relu'd, through ATen
// (cuBLAS GEMM + topk). Membership needs the full encode; the decode stays on the |S| rows.
std::pair<at::Tensor, at::Tensor> topk_winners(const at::Tensor& x2, const at::Tensor& W_enc_T,
                                               const at::Tensor& b_dec, const at::Tensor& params, int64_t norm,
                                               bool apply_b_dec, int64_t k) {
  const int64_t D = x2.size(1);
  at::Tensor xf = x2.to(at::kFloat);
  if (norm == 1) {
    xf = xf * ((xf * xf).sum(at::IntArrayRef{-1}, true).sqrt().reciprocal() * std::sqrt(static_cast<double>(D)));
  } else if (norm == 2) {
    xf = xf - xf.mean(at::IntArrayRef{-1}, true);
    at::Tensor sd = ((xf * xf).sum(at::IntArrayRef{-1}, true) / static_cast<double>(D - 1)).sqrt();
    xf = xf / (sd + 1e-5);
  }
  if (apply_b_dec) xf = xf - b_dec.to(at::kFloat);
  at::Tensor pre = at::matmul(xf.to(W_enc_T.scalar_type()), W_enc_T.t()).to(at::kFloat);
  at::Tensor score = (pre + params.select(0, 0)) * params.select(0, 2);
  auto top = at::topk(score, k, /*dim=*/-1, /*largest=*/true, /*sorted=*/false);
  return {std::get<0>(top).clamp_min(0).contiguous(), std::get<1>(top).contiguous()};
}

// The kernel arguments shared by steer and the trigger read, for x2 [N, d_in] (unit column stride);
// a topk SAE's winners (tk_v, tk_i) are computed into the given tensors, which must outlive the launch.
template <typename T>
saesteer::SteerArgs<T> subset_args(const at::Tensor& x2, const at::Tensor& W_enc_T, const at::Tensor& b_dec,
                                   const at::Tensor& params, int64_t arch, int64_t norm, bool apply_b_dec, int64_t k,
                                   const at::Tensor& features, const at::Tensor& values, at::Tensor& tk_v,
                                   at::Tensor& tk_i) {
  if (arch == 3) {
    TORCH_CHECK(k >= 1 && k <= W_enc_T.size(0), "k: a topk SAE needs 1 <= k <= d_sae, got ", k);
    std::tie(tk_v, tk_i) = topk_winners(x2, W_enc_T, b_dec, params, norm, apply_b_dec, k);
  }
  saesteer::SteerArgs<T> a{};
  a.x = ptr<T>(x2);
  a.W_enc_T = ptr<T>(W_enc_T);
  a.b_dec = ptr<T>(b_dec);
  a.params = params.data_ptr<float>();
  a.features = features.data_ptr<int64_t>();
  a.values = values.data_ptr<float>();
  a.topk_idx = arch == 3 ? tk_i.data_ptr<int64_t>() : nullptr;
  a.topk_val = arch == 3 ? tk_v.data_ptr<float>() : nullptr;
  a.n_tokens = x2.size(0);
  a.d_in = x2.size(1);
  a.d_sae = W_enc_T.size(0);
  a.n_features = features.size(0);
  a.x_stride = x2.stride(0);
  a.tok_per_row = 1;
  a.topk_k = arch == 3 ? k : 0;
  a.arch = static_cast<int>(arch);
  a.norm = static_cast<int>(norm);
  a.apply_b_dec = apply_b_dec;
  return a;
}

// x2 [N, d_in] (unit column stride), mask [N] or undefined, values [S] (stride 0) or [R, S].
at::Tensor steer_launch(const at::Tensor& x2, const at::Tensor& W_enc_T, const at::Tensor& W_dec,
                        const at::Tensor& b_dec, const at::Tensor& params, int64_t arch, int64_t norm, bool apply_b_dec,
                        int64_t k, const at::Tensor& features, int64_t mode, const at::Tensor& values,
                        const at::Tensor& mask, int64_t tok_per_row, int64_t values_stride) {
  const int64_t N = x2.size(0), D = x2.size(1), S = features.size(0);
  at::Tensor out = at::empty({N, D}, x2.options());
  if (N == 0) return out;
  if (S == 0) return out.copy_(x2);
  at::Tensor tk_v, tk_i;
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(x2.device().index());
  dispatch_storage(x2.scalar_type(), "x", [&](auto tag) {
    using T = typename decltype(tag)::type;
    saesteer::SteerArgs<T> a = subset_args<T>(x2, W_enc_T, b_dec, params, arch, norm, apply_b_dec, k, features, values,
                                              tk_v, tk_i);
    a.out = reinterpret_cast<T*>(out.data_ptr());
    a.W_dec = ptr<T>(W_dec);
    a.token_mask = mask.defined() ? reinterpret_cast<const uint8_t*>(mask.data_ptr()) : nullptr;
    a.out_stride = out.stride(0);
    a.tok_per_row = tok_per_row;
    a.values_stride = values_stride;
    a.mode = static_cast<int>(mode);
    CHECK_LAUNCH(saesteer::launch_steer_subset<T>(a, stream), "steer");
  });
  return out;
}

void check_steer_args(const at::Tensor& x, const at::Tensor& W_enc_T, const at::Tensor& W_dec, const at::Tensor& b_dec,
                      const at::Tensor& params, int64_t arch, int64_t norm, int64_t mode, const at::Tensor& features) {
  CHECK_CUDA(x);
  check_sae(x, W_enc_T, "W_enc_T", b_dec, params);
  check_sae(x, W_dec, "W_dec", b_dec, params);
  TORCH_CHECK(W_dec.sizes() == W_enc_T.sizes(), "W_dec: expected the shape of W_enc_T ", W_enc_T.sizes(), ", got ",
              W_dec.sizes());
  TORCH_CHECK(x.size(-1) == W_enc_T.size(1), "x: expected last dimension d_in=", W_enc_T.size(1), ", got shape ",
              x.sizes());
  TORCH_CHECK(arch >= 0 && arch <= 3, "arch: expected 0..3, got ", arch);
  TORCH_CHECK(norm >= 0 && norm <= 2, "norm: expected 0..2, got ", norm);
  TORCH_CHECK(mode >= 0 && mode <= 3, "mode: expected 0..3, got ", mode);
  CHECK_SAME_DEVICE(features, x);
  CHECK_DTYPE(features, at::kLong);
  CHECK_CONTIGUOUS(features);
  TORCH_CHECK(features.dim() == 1, "features: expected [S], got shape ", features.sizes());
}

at::Tensor check_mask(const std::optional<at::Tensor>& token_mask, const at::Tensor& x, at::IntArrayRef lead) {
  if (!token_mask.has_value()) return at::Tensor();
  const at::Tensor& m = *token_mask;
  CHECK_SAME_DEVICE(m, x);
  CHECK_DTYPE(m, at::kBool);
  TORCH_CHECK(m.sizes() == lead, "token_mask: expected shape ", lead, " (x's leading dims), got ", m.sizes());
  return m.reshape({-1}).contiguous();
}

at::Tensor steer_cuda(const at::Tensor& x, const at::Tensor& W_enc_T, const at::Tensor& W_dec, const at::Tensor& b_dec,
                      const at::Tensor& params, int64_t arch, int64_t norm, bool apply_b_dec, int64_t k,
                      const at::Tensor& features, int64_t mode, const at::Tensor& values,
                      const std::optional<at::Tensor>& token_mask) {
  check_steer_args(x, W_enc_T, W_dec, b_dec, params, arch, norm, mode, features);
  TORCH_CHECK(x.dim() == 2, "x: expected [N, d_in], got shape ", x.sizes());
  CHECK_SAME_DEVICE(values, x);
  CHECK_DTYPE(values, at::kFloat);
  CHECK_SHAPE(values, features.size(0));
  const c10::cuda::CUDAGuard guard(x.device());
  const at::Tensor m = check_mask(token_mask, x, x.sizes().slice(0, 1));
  const at::Tensor x2 = x.stride(1) == 1 ? x : x.contiguous();
  return steer_launch(x2, W_enc_T, W_dec, b_dec, params, arch, norm, apply_b_dec, k, features, mode,
                      values.contiguous(), m, /*tok_per_row=*/1, /*values_stride=*/0);
}

at::Tensor steer_rows_cuda(const at::Tensor& x, const at::Tensor& W_enc_T, const at::Tensor& W_dec,
                           const at::Tensor& b_dec, const at::Tensor& params, int64_t arch, int64_t norm,
                           bool apply_b_dec, int64_t k, const at::Tensor& features, int64_t mode,
                           const at::Tensor& values, const std::optional<at::Tensor>& token_mask) {
  check_steer_args(x, W_enc_T, W_dec, b_dec, params, arch, norm, mode, features);
  TORCH_CHECK(x.dim() == 3, "x: expected [R, T, d_in], got shape ", x.sizes());
  const int64_t R = x.size(0), T = x.size(1), S = features.size(0);
  CHECK_SAME_DEVICE(values, x);
  CHECK_DTYPE(values, at::kFloat);
  CHECK_SHAPE(values, R, S);
  const c10::cuda::CUDAGuard guard(x.device());
  const at::Tensor m = check_mask(token_mask, x, x.sizes().slice(0, 2));
  at::Tensor v = values.contiguous();
  if (mode == 0) {  // ablate with a 0/1 mask m: f' = f * (1 - m), i.e. scale by 1 - m
    v = at::rsub(v, 1.0);
    mode = 1;
  }
  const at::Tensor x2 = x.reshape({R * T, x.size(2)}).contiguous();
  at::Tensor out = steer_launch(x2, W_enc_T, W_dec, b_dec, params, arch, norm, apply_b_dec, k, features, mode, v, m,
                                /*tok_per_row=*/T > 0 ? T : 1, /*values_stride=*/S);
  return out.view({R, T, x.size(2)});
}

at::Tensor trigger_score_cuda(const at::Tensor& x, const at::Tensor& W_enc_T, const at::Tensor& b_dec,
                              const at::Tensor& params, int64_t arch, int64_t norm, bool apply_b_dec, int64_t k,
                              const at::Tensor& features, const at::Tensor& weights) {
  CHECK_CUDA(x);
  TORCH_CHECK(x.dim() == 2, "x: expected [N, d_in], got shape ", x.sizes());
  check_sae(x, W_enc_T, "W_enc_T", b_dec, params);
  TORCH_CHECK(x.size(1) == W_enc_T.size(1), "x: expected last dimension d_in=", W_enc_T.size(1), ", got shape ",
              x.sizes());
  TORCH_CHECK(arch >= 0 && arch <= 3, "arch: expected 0..3, got ", arch);
  TORCH_CHECK(norm >= 0 && norm <= 2, "norm: expected 0..2, got ", norm);
  CHECK_SAME_DEVICE(features, x);
  CHECK_DTYPE(features, at::kLong);
  TORCH_CHECK(features.dim() == 1, "features: expected [S], got shape ", features.sizes());
  CHECK_SAME_DEVICE(weights, x);
  CHECK_DTYPE(weights, at::kFloat);
  CHECK_SHAPE(weights, features.size(0));
  const c10::cuda::CUDAGuard guard(x.device());
  const at::Tensor x2 = x.stride(1) == 1 ? x : x.contiguous();
  const at::Tensor f = features.contiguous(), w = weights.contiguous();
  at::Tensor out = at::zeros({x2.size(0)}, x2.options().dtype(at::kFloat));
  if (x2.size(0) == 0 || f.size(0) == 0) return out;
  at::Tensor tk_v, tk_i;
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(x2.device().index());
  dispatch_storage(x2.scalar_type(), "x", [&](auto tag) {
    using T = typename decltype(tag)::type;
    const saesteer::SteerArgs<T> a = subset_args<T>(x2, W_enc_T, b_dec, params, arch, norm, apply_b_dec, k, f, w, tk_v, tk_i);
    CHECK_LAUNCH(saesteer::launch_trigger_subset<T>(a, out.data_ptr<float>(), stream), "trigger_score");
  });
  return out;
}

at::Tensor decode_sparse_cuda(const at::Tensor& values, const at::Tensor& indices, const at::Tensor& W_dec,
                              const at::Tensor& b_dec, const at::Tensor& params) {
  CHECK_CUDA(values);
  TORCH_CHECK(values.dim() == 2, "values: expected [N, k], got shape ", values.sizes());
  TORCH_CHECK(indices.sizes() == values.sizes(), "indices: expected the shape of values ", values.sizes(), ", got ",
              indices.sizes());
  CHECK_SAME_DEVICE(indices, values);
  CHECK_DTYPE(indices, at::kLong);
  check_sae(values, W_dec, "W_dec", b_dec, params);
  const c10::cuda::CUDAGuard guard(values.device());
  const at::Tensor v = values.contiguous(), i = indices.contiguous();
  const int64_t N = v.size(0), k = v.size(1), D = W_dec.size(1);
  at::Tensor out = at::empty({N, D}, v.options());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(v.device().index());
  dispatch_storage(v.scalar_type(), "values", [&](auto tag) {
    using T = typename decltype(tag)::type;
    saesteer::DecodeSparseArgs<T> a{};
    a.values = ptr<T>(v);
    a.indices = i.data_ptr<int64_t>();
    a.W_dec = ptr<T>(W_dec);
    a.b_dec = ptr<T>(b_dec);
    a.params = params.data_ptr<float>();
    a.out = reinterpret_cast<T*>(out.data_ptr());
    a.n_rows = N;
    a.k = k;
    a.d_in = D;
    a.d_sae = W_dec.size(0);
    a.values_stride = v.stride(0);
    a.indices_stride = i.stride(0);
    CHECK_LAUNCH(saesteer::launch_decode_sparse<T>(a, stream), "decode_sparse");
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(saesteer, CUDA, m) {
  m.impl("steer", &steer_cuda);
  m.impl("steer_rows", &steer_rows_cuda);
  m.impl("decode_sparse", &decode_sparse_cuda);
  m.impl("trigger_score", &trigger_score_cuda);
}
