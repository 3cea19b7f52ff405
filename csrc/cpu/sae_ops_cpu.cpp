// CPU kernels of the saesteer ops (schemas and argument conventions: csrc/ops.cpp).
//
// One translation unit on purpose: a file that includes ATen takes ~50 s to compile on the 2-core
// build machines.
//
// Layout of the work:
//   * steer / steer_rows, standard / jumprelu / gated: tokens are taken 4 at a time ("a block");
//     each block reads only the |S| encoder rows (W_enc_T[S]) and the decoder rows W_dec[S] whose
//     coefficient is non-zero for one of its tokens: O(|S| * d_in) per token, no [T, d_sae] buffer.
//     Blocks are the tasks of at::parallel_for; a single block of 1-4 tokens with many features (a
//     generation step) splits its encoder rows, then its output columns, across threads instead.
//   * steer / steer_rows, topk: the full encode runs tile by tile (at::mm into an [N, tile] buffer),
//     merged into a per-row heap of the SAE's k best scores; then the same delta over the |S| rows.
//   * encode_topk: the same tiled encode, merged into a per-row heap of the k largest activations.
//   * decode_sparse: per row, fp32 accumulation of k decoder rows.
// Inner loops are fp32 (bf16/fp16 rows are widened to fp32 first) and compiled for x86-64-v4,
// x86-64-v3 and baseline x86-64 (GCC target_clones: the extension is built without -march, so
// without this the loops would be SSE2 only).
//
// Ties in a top-k (the topk SAE's own selection, and encode_topk): among equal values the lower
// feature index wins. torch.topk does not document its order among ties, so the reference and this
// kernel may pick different members of an exact tie; with continuous weights exact ties of the k-th
// score do not happen in practice (zero activations in encode_topk excepted: their order is arbitrary).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>
#include <type_traits>
#include <utility>
#include <vector>

#include "sae_enums.h"

namespace saesteer {
namespace cpu {
namespace {

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define SAESTEER_SIMD_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define SAESTEER_SIMD_CLONES
#endif

constexpr int kBlock = 4;  // tokens per block (the register tile of the micro-kernels)

// ------------------------------------------------------------------------------------------------
// fp32 micro-kernels
// ------------------------------------------------------------------------------------------------
// out[4 t + r] = <x_t, w_r> for 4 tokens and 4 rows: 16 independent accumulators, 8 loads per 16
// FMAs. Measured on this machine's EPYC (x86-64-v4 clone, 2304-long rows in L1/L2): 50 GFMA/s,
// twice the 25 GFMA/s of a 4 x 2 tile.
SAESTEER_SIMD_CLONES void dot_4x4(const float* __restrict x0, const float* __restrict x1,
                                  const float* __restrict x2, const float* __restrict x3,
                                  const float* __restrict w0, const float* __restrict w1,
                                  const float* __restrict w2, const float* __restrict w3, int64_t n,
                                  float* __restrict out) {
  float a00 = 0.f, a01 = 0.f, a02 = 0.f, a03 = 0.f, a10 = 0.f, a11 = 0.f, a12 = 0.f, a13 = 0.f;
  float a20 = 0.f, a21 = 0.f, a22 = 0.f, a23 = 0.f, a30 = 0.f, a31 = 0.f, a32 = 0.f, a33 = 0.f;
#pragma omp simd reduction(+ : a00, a01, a02, a03, a10, a11, a12, a13, a20, a21, a22, a23, a30, a31, a32, a33)
  for (int64_t j = 0; j < n; ++j) {
    const float u0 = w0[j], u1 = w1[j], u2 = w2[j], u3 = w3[j];
    const float y0 = x0[j], y1 = x1[j], y2 = x2[j], y3 = x3[j];
    a00 += y0 * u0, a01 += y0 * u1, a02 += y0 * u2, a03 += y0 * u3;
    a10 += y1 * u0, a11 += y1 * u1, a12 += y1 * u2, a13 += y1 * u3;
    a20 += y2 * u0, a21 += y2 * u1, a22 += y2 * u2, a23 += y2 * u3;
    a30 += y3 * u0, a31 += y3 * u1, a32 += y3 * u2, a33 += y3 * u3;
  }
  out[0] = a00, out[1] = a01, out[2] = a02, out[3] = a03, out[4] = a10, out[5] = a11, out[6] = a12, out[7] = a13;
  out[8] = a20, out[9] = a21, out[10] = a22, out[11] = a23, out[12] = a30, out[13] = a31, out[14] = a32, out[15] = a33;
}

// out[r] = <x, w_r> for one token and 4 rows.
SAESTEER_SIMD_CLONES void dot_1x4(const float* __restrict x, const float* __restrict w0,
                                  const float* __restrict w1, const float* __restrict w2,
                                  const float* __restrict w3, int64_t n, float* __restrict out) {
  float a0 = 0.f, a1 = 0.f, a2 = 0.f, a3 = 0.f;
#pragma omp simd reduction(+ : a0, a1, a2, a3)
  for (int64_t j = 0; j < n; ++j) {
    const float xj = x[j];
    a0 += xj * w0[j];
    a1 += xj * w1[j];
    a2 += xj * w2[j];
    a3 += xj * w3[j];
  }
  out[0] = a0, out[1] = a1, out[2] = a2, out[3] = a3;
}

// acc_t += sum_r c[4 t + r] * w_r for 4 tokens and 4 rows (16 FMAs per 4 weight loads).
SAESTEER_SIMD_CLONES void axpy_4x4(float* __restrict a0, float* __restrict a1, float* __restrict a2,
                                   float* __restrict a3, const float* __restrict w0,
                                   const float* __restrict w1, const float* __restrict w2,
                                   const float* __restrict w3, const float* __restrict c, int64_t n) {
  const float c00 = c[0], c01 = c[1], c02 = c[2], c03 = c[3];
  const float c10 = c[4], c11 = c[5], c12 = c[6], c13 = c[7];
  const float c20 = c[8], c21 = c[9], c22 = c[10], c23 = c[11];
  const float c30 = c[12], c31 = c[13], c32 = c[14], c33 = c[15];
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) {
    const float u0 = w0[j], u1 = w1[j], u2 = w2[j], u3 = w3[j];
    a0[j] += c00 * u0 + c01 * u1 + c02 * u2 + c03 * u3;
    a1[j] += c10 * u0 + c11 * u1 + c12 * u2 + c13 * u3;
    a2[j] += c20 * u0 + c21 * u1 + c22 * u2 + c23 * u3;
    a3[j] += c30 * u0 + c31 * u1 + c32 * u2 + c33 * u3;
  }
}

// out[t] = <x_t, w> for 4 tokens and 1 row (the rows left over by dot_4x4).
SAESTEER_SIMD_CLONES void dot_4x1(const float* __restrict x0, const float* __restrict x1,
                                  const float* __restrict x2, const float* __restrict x3,
                                  const float* __restrict w, int64_t n, float* __restrict out) {
  float a0 = 0.f, a1 = 0.f, a2 = 0.f, a3 = 0.f;
#pragma omp simd reduction(+ : a0, a1, a2, a3)
  for (int64_t j = 0; j < n; ++j) {
    const float u = w[j];
    a0 += x0[j] * u;
    a1 += x1[j] * u;
    a2 += x2[j] * u;
    a3 += x3[j] * u;
  }
  out[0] = a0, out[1] = a1, out[2] = a2, out[3] = a3;
}

SAESTEER_SIMD_CLONES float dot_1x1(const float* __restrict x, const float* __restrict w, int64_t n) {
  float a = 0.f;
#pragma omp simd reduction(+ : a)
  for (int64_t j = 0; j < n; ++j) a += x[j] * w[j];
  return a;
}

// acc_t += c[t] * w for 4 tokens and 1 row.
SAESTEER_SIMD_CLONES void axpy_4x1(float* __restrict a0, float* __restrict a1, float* __restrict a2,
                                   float* __restrict a3, const float* __restrict w, const float* __restrict c,
                                   int64_t n) {
  const float c0 = c[0], c1 = c[1], c2 = c[2], c3 = c[3];
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) {
    const float u = w[j];
    a0[j] += c0 * u;
    a1[j] += c1 * u;
    a2[j] += c2 * u;
    a3[j] += c3 * u;
  }
}

SAESTEER_SIMD_CLONES void axpy_1x1(float* __restrict a, const float* __restrict w, float c, int64_t n) {
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) a[j] += c * w[j];
}

// acc += sum_r c[r] * w_r for one token and 4 rows.
SAESTEER_SIMD_CLONES void axpy_1x4(float* __restrict a, const float* __restrict w0, const float* __restrict w1,
                                   const float* __restrict w2, const float* __restrict w3,
                                   const float* __restrict c, int64_t n) {
  const float c0 = c[0], c1 = c[1], c2 = c[2], c3 = c[3];
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) a[j] += c0 * w0[j] + c1 * w1[j] + c2 * w2[j] + c3 * w3[j];
}

// ------------------------------------------------------------------------------------------------
// dtype plumbing: weights are a template parameter (one instantiation per SAE dtype); x, values and
// outputs are converted per row with a run-time switch (one branch per row, not per element).
// ------------------------------------------------------------------------------------------------
template <typename T>
void widen(const T* __restrict src, float* __restrict dst, int64_t n) {
  if constexpr (std::is_same_v<T, float>) {
    std::memcpy(dst, src, n * sizeof(float));
  } else {
    for (int64_t j = 0; j < n; ++j) dst[j] = static_cast<float>(src[j]);
  }
}

void load_row(const void* src, at::ScalarType st, float* dst, int64_t n) {
  switch (st) {
    case at::kFloat: widen(static_cast<const float*>(src), dst, n); break;
    case at::kBFloat16: widen(static_cast<const c10::BFloat16*>(src), dst, n); break;
    case at::kHalf: widen(static_cast<const c10::Half*>(src), dst, n); break;
    default: TORCH_INTERNAL_ASSERT(false, "saesteer: unexpected dtype ", st);
  }
}

template <typename T>
void narrow_store(const float* __restrict src, T* __restrict dst, int64_t n) {
  for (int64_t j = 0; j < n; ++j) dst[j] = static_cast<T>(src[j]);
}

void store_row(const float* src, void* dst, at::ScalarType st, int64_t n) {
  switch (st) {
    case at::kFloat: std::memcpy(dst, src, n * sizeof(float)); break;
    case at::kBFloat16: narrow_store(src, static_cast<c10::BFloat16*>(dst), n); break;
    case at::kHalf: narrow_store(src, static_cast<c10::Half*>(dst), n); break;
    default: TORCH_INTERNAL_ASSERT(false, "saesteer: unexpected dtype ", st);
  }
}

// n weights from p as fp32: p itself for fp32 weights, else widened into `scratch`.
template <typename w_t>
inline const float* row_f32(const w_t* p, int64_t n, float* scratch) {
  if constexpr (std::is_same_v<w_t, float>) {
    return p;
  } else {
    widen(p, scratch, n);
    return scratch;
  }
}

// ------------------------------------------------------------------------------------------------
// the SAE's math, per token / per feature (saesteer/sae.py)
// ------------------------------------------------------------------------------------------------
struct FeatureParams {  // rows of the packed float32 [5, d_sae] params
  const float *bias, *threshold, *mag_scale, *mag_bias, *dec_scale;
  FeatureParams(const float* p, int64_t d_sae)
      : bias(p + kBias * d_sae), threshold(p + kThreshold * d_sae), mag_scale(p + kMagScale * d_sae),
        mag_bias(p + kMagBias * d_sae), dec_scale(p + kDecScale * d_sae) {}
};

// xp = norm(x) - b_dec * apply_b_dec; returns the denormalization scale s (1 without a norm).
// Statistics are accumulated in double: the reference's fp32 reductions are pairwise, a plain
// fp32 running sum over d_in = 2304 would not be as accurate.
float normalize_row(const float* __restrict x, float* __restrict xp, int64_t n, int64_t norm,
                    const float* __restrict b_dec) {
  float s = 1.f;
  if (norm == kConstantNormRescale) {
    double ss = 0.0;
    for (int64_t j = 0; j < n; ++j) ss += double(x[j]) * double(x[j]);
    const float coeff = static_cast<float>(std::sqrt(double(n))) / static_cast<float>(std::sqrt(ss));
    for (int64_t j = 0; j < n; ++j) xp[j] = x[j] * coeff;
    s = 1.f / coeff;
  } else if (norm == kLayerNorm) {
    double sum = 0.0;
    for (int64_t j = 0; j < n; ++j) sum += x[j];
    const float mu = static_cast<float>(sum / double(n));
    double ss = 0.0;
    for (int64_t j = 0; j < n; ++j) {
      const float c = x[j] - mu;
      xp[j] = c;
      ss += double(c) * double(c);
    }
    const float std_ = static_cast<float>(std::sqrt(ss / double(n > 1 ? n - 1 : 1)));
    const float denom = std_ + kLayerNormEps;
    for (int64_t j = 0; j < n; ++j) xp[j] = xp[j] / denom;
    s = std_;
  } else if (xp != x) {
    std::memcpy(xp, x, n * sizeof(float));
  }
  if (b_dec != nullptr) {
    for (int64_t j = 0; j < n; ++j) xp[j] -= b_dec[j];
  }
  return s;
}

// Activation of feature i from pre = <x', W_enc[:, i]> (standard, jumprelu, gated). The standard
// SAE's threshold row is 0, so jumprelu's (h > thr) ? h : 0 is its relu too.
inline float activation(float pre, int64_t i, int64_t arch, const FeatureParams& p) {
  const float h = pre + p.bias[i];
  if (arch == kGated) {
    if (!(h > 0.f)) return 0.f;
    const float m = pre * p.mag_scale[i] + p.mag_bias[i];
    return m > 0.f ? m : 0.f;
  }
  return h > p.threshold[i] && h > 0.f ? h : 0.f;
}

inline float edited(float f, float v, int64_t mode) {
  switch (mode) {
    case kAblate: return 0.f;
    case kScale: return f * v;
    case kClamp: return v;
    case kAdd: return f + v;
    case kAblateMask: return f * (1.f - v);
  }
  return f;
}

// A (value, index) order for the top-k selections: larger value first, then lower index.
struct Scored {
  float v;
  int64_t i;
};
inline bool better(const Scored& a, const Scored& b) { return a.v > b.v || (a.v == b.v && a.i < b.i); }

// Running top-k of one row: heap.front() is its worst member once k elements are in.
struct RowTopK {
  std::vector<Scored> heap;
  int64_t k = 0;
  void reset(int64_t k_) {
    k = k_;
    heap.clear();
    heap.reserve(k_);
  }
  inline void push(float v, int64_t i) {
    if (std::isnan(v)) return;
    const Scored s{v, i};
    if (static_cast<int64_t>(heap.size()) < k) {
      heap.push_back(s);
      std::push_heap(heap.begin(), heap.end(), better);
    } else if (better(s, heap.front())) {
      std::pop_heap(heap.begin(), heap.end(), better);
      heap.back() = s;
      std::push_heap(heap.begin(), heap.end(), better);
    }
  }
  // Is (v, i) one of the k best? Exact for elements that were pushed: the heap holds exactly the
  // k best under `better`, and an element is better-or-equal than the worst of them iff it is in.
  inline bool contains(float v, int64_t i) const {
    if (static_cast<int64_t>(heap.size()) < k) return !std::isnan(v);
    const Scored& w = heap.front();
    return (w.i == i) || better(Scored{v, i}, w);
  }
};

// ------------------------------------------------------------------------------------------------
// steer
// ------------------------------------------------------------------------------------------------
struct SteerProblem {
  const void* x;          // [N, d_in] contiguous, dtype x_dtype
  void* out;              // [N, d_in] contiguous, dtype x_dtype
  at::ScalarType x_dtype;
  int64_t N, d_in, d_sae;
  const float* b_dec;     // fp32 [d_in], or nullptr when not applied to the input
  FeatureParams params;
  int64_t arch, norm, k;
  const int64_t* feats;   // [S]
  int64_t S;
  int64_t mode;
  const float* values;    // [rows, S]; token n uses row n / tokens_per_row
  int64_t tokens_per_row;
  std::vector<int64_t> active;  // tokens where the edit applies (the mask), in order
};

size_t x_row_bytes(const SteerProblem& P) { return P.d_in * c10::elementSize(P.x_dtype); }

void copy_token(const SteerProblem& P, int64_t n) {
  const size_t b = x_row_bytes(P);
  std::memcpy(static_cast<char*>(P.out) + n * b, static_cast<const char*>(P.x) + n * b, b);
}

// Per-token fp32 work space of one block (uninitialized: every element is written before it is read).
struct BlockScratch {
  std::unique_ptr<float[]> x, xp, coef, rows;
  explicit BlockScratch(const SteerProblem& P)
      : x(new float[kBlock * P.d_in]), xp(new float[kBlock * P.d_in]),
        coef(new float[kBlock * std::max<int64_t>(P.S, 1)]), rows(new float[4 * P.d_in]) {}
};

// Loads the block's tokens as fp32 into B.x; with normalize, x' into B.xp and the scales into s.
void load_block(const SteerProblem& P, const int64_t* toks, int nt, BlockScratch& B, float* s, bool normalize) {
  const size_t b = x_row_bytes(P);
  for (int t = 0; t < nt; ++t) {
    float* xr = B.x.get() + t * P.d_in;
    load_row(static_cast<const char*>(P.x) + toks[t] * b, P.x_dtype, xr, P.d_in);
    if (normalize) s[t] = normalize_row(xr, B.xp.get() + t * P.d_in, P.d_in, P.norm, P.b_dec);
  }
}

// coef[t, r] = (f'_r - f_r) * dec_scale * s_t from the activations f[t, r] (in place).
void coefficients(const SteerProblem& P, const int64_t* toks, int nt, const float* s, float* f) {
  for (int t = 0; t < nt; ++t) {
    const float* v = P.values + (toks[t] / P.tokens_per_row) * P.S;
    float* row = f + t * P.S;
    for (int64_t r = 0; r < P.S; ++r) {
      const float fi = row[r];
      row[r] = (edited(fi, v[r], P.mode) - fi) * P.params.dec_scale[P.feats[r]] * s[t];
    }
  }
}

// The decode half shared by every architecture: y_t = x_t + sum_r coef[t, r] * W_dec[S_r] for the
// block's tokens, columns [j0, j1) (accumulated in fp32 on top of B.x); a token whose coefficients
// are all zero is copied bit for bit. Only the rows with a non-zero coefficient for some token are
// read. `rows` is fp32 scratch for 4 widened row slices (bf16/fp16 weights).
template <typename w_t>
void apply_block(const SteerProblem& P, const w_t* W_dec, const int64_t* toks, int nt, BlockScratch& B, int64_t j0,
                 int64_t j1, float* rows) {
  const int64_t d = P.d_in, S = P.S, n = j1 - j0;
  const float* coef = B.coef.get();
  bool changed[kBlock] = {false, false, false, false};
  int64_t live[4];  // rows of the current group
  int nl = 0;
  float* xs = B.x.get() + j0;
  auto flush = [&]() {
    const float* w[4];
    for (int q = 0; q < nl; ++q) w[q] = row_f32(W_dec + P.feats[live[q]] * d + j0, n, rows + q * n);
    if (nt == kBlock) {
      if (nl == 4) {
        float c[kBlock * 4];
        for (int t = 0; t < kBlock; ++t)
          for (int q = 0; q < 4; ++q) c[t * 4 + q] = coef[t * S + live[q]];
        axpy_4x4(xs, xs + d, xs + 2 * d, xs + 3 * d, w[0], w[1], w[2], w[3], c, n);
      } else {
        for (int q = 0; q < nl; ++q) {
          const float c[4] = {coef[live[q]], coef[S + live[q]], coef[2 * S + live[q]], coef[3 * S + live[q]]};
          axpy_4x1(xs, xs + d, xs + 2 * d, xs + 3 * d, w[q], c, n);
        }
      }
    } else {
      for (int t = 0; t < nt; ++t) {
        if (nl == 4) {
          const float c[4] = {coef[t * S + live[0]], coef[t * S + live[1]], coef[t * S + live[2]], coef[t * S + live[3]]};
          axpy_1x4(xs + t * d, w[0], w[1], w[2], w[3], c, n);
        } else {
          for (int q = 0; q < nl; ++q) axpy_1x1(xs + t * d, w[q], coef[t * S + live[q]], n);
        }
      }
    }
    nl = 0;
  };
  for (int64_t r = 0; r < S; ++r) {
    bool any = false;
    for (int t = 0; t < nt; ++t) {
      if (coef[t * S + r] != 0.f) changed[t] = any = true;  // NaN != 0 too, as in the reference
    }
    if (any) {
      live[nl++] = r;
      if (nl == 4) flush();
    }
  }
  if (nl) flush();
  const size_t esz = c10::elementSize(P.x_dtype);
  for (int t = 0; t < nt; ++t) {
    char* dst = static_cast<char*>(P.out) + (toks[t] * d + j0) * esz;
    if (changed[t]) {
      store_row(xs + t * d, dst, P.x_dtype, n);
    } else {
      std::memcpy(dst, static_cast<const char*>(P.x) + (toks[t] * d + j0) * esz, n * esz);
    }
  }
}

template <typename w_t>
void apply_block(const SteerProblem& P, const w_t* W_dec, const int64_t* toks, int nt, BlockScratch& B) {
  apply_block(P, W_dec, toks, nt, B, 0, P.d_in, B.rows.get());
}

// Blocks per parallel task so that a task does at least ~64k multiply-adds; run inline when the
// whole call is one task (an OpenMP region costs microseconds, the whole op at T=1 is a few).
int64_t block_grain(const SteerProblem& P) {
  const int64_t work = kBlock * std::max<int64_t>(P.S, 1) * P.d_in * 2;
  return std::max<int64_t>(1, (int64_t{1} << 16) / std::max<int64_t>(work, 1));
}

template <typename F>
void parallel_tasks(int64_t n, int64_t grain, const F& f) {
  if (n <= grain) {
    f(0, n);
  } else {
    at::parallel_for(0, n, grain, f);
  }
}

// pre[t, r] = <x'_t, W_enc_T[S_r]> for the block's tokens and r in [r0, r1).
template <typename w_t>
void encode_subset_block(const SteerProblem& P, const w_t* W_enc_T, int nt, const float* xp, float* pre, int64_t r0,
                         int64_t r1, float* scratch) {
  const int64_t d = P.d_in, S = P.S;
  int64_t r = r0;
  if (nt == kBlock) {
    for (; r + 3 < r1; r += 4) {
      const float* w[4];
      for (int q = 0; q < 4; ++q) w[q] = row_f32(W_enc_T + P.feats[r + q] * d, d, scratch + q * d);
      float o[16];
      dot_4x4(xp, xp + d, xp + 2 * d, xp + 3 * d, w[0], w[1], w[2], w[3], d, o);
      for (int t = 0; t < kBlock; ++t)
        for (int q = 0; q < 4; ++q) pre[t * S + r + q] = o[4 * t + q];
    }
    for (; r < r1; ++r) {
      float o[4];
      dot_4x1(xp, xp + d, xp + 2 * d, xp + 3 * d, row_f32(W_enc_T + P.feats[r] * d, d, scratch), d, o);
      for (int t = 0; t < kBlock; ++t) pre[t * S + r] = o[t];
    }
    return;
  }
  for (; r + 3 < r1; r += 4) {
    const float* w[4];
    for (int q = 0; q < 4; ++q) w[q] = row_f32(W_enc_T + P.feats[r + q] * d, d, scratch + q * d);
    for (int t = 0; t < nt; ++t) dot_1x4(xp + t * d, w[0], w[1], w[2], w[3], d, pre + t * S + r);
  }
  for (; r < r1; ++r) {
    const float* w = row_f32(W_enc_T + P.feats[r] * d, d, scratch);
    for (int t = 0; t < nt; ++t) pre[t * S + r] = dot_1x1(xp + t * d, w, d);
  }
}

// Activations then coefficients of the block, in place in B.coef.
void block_coefficients(const SteerProblem& P, const int64_t* toks, int nt, const float* s, BlockScratch& B) {
  float* f = B.coef.get();
  for (int t = 0; t < nt; ++t)
    for (int64_t r = 0; r < P.S; ++r) f[t * P.S + r] = activation(f[t * P.S + r], P.feats[r], P.arch, P.params);
  coefficients(P, toks, nt, s, f);
}

// standard / jumprelu / gated: everything per block, |S| encoder and decoder rows only.
template <typename w_t>
void steer_subset(const SteerProblem& P, const w_t* W_enc_T, const w_t* W_dec) {
  const int64_t A = static_cast<int64_t>(P.active.size());
  const int64_t nblocks = (A + kBlock - 1) / kBlock;
  const int64_t d = P.d_in;
  // At generation time (one block of <= 4 tokens) a block-parallel loop has one task: split the
  // |S| encoder rows, then the d_in output columns, across threads instead, once the block has
  // enough work to pay for two parallel regions (~256k multiply-adds).
  if (nblocks == 1 && at::get_num_threads() > 1 && A * P.S * d * 2 >= (int64_t{1} << 18)) {
    const int nt = static_cast<int>(A);
    BlockScratch B(P);
    float s[kBlock];
    load_block(P, P.active.data(), nt, B, s, /*normalize=*/true);
    const int64_t row_groups = (P.S + 3) / 4;
    at::parallel_for(0, row_groups, 1, [&](int64_t g0, int64_t g1) {
      std::unique_ptr<float[]> scratch(new float[4 * d]);
      encode_subset_block(P, W_enc_T, nt, B.xp.get(), B.coef.get(), 4 * g0, std::min(P.S, 4 * g1), scratch.get());
    });
    block_coefficients(P, P.active.data(), nt, s, B);
    constexpr int64_t kCols = 256;
    at::parallel_for(0, (d + kCols - 1) / kCols, 1, [&](int64_t c0, int64_t c1) {
      const int64_t j0 = c0 * kCols, j1 = std::min(d, c1 * kCols);
      std::unique_ptr<float[]> rows(new float[4 * (j1 - j0)]);
      apply_block(P, W_dec, P.active.data(), nt, B, j0, j1, rows.get());
    });
    return;
  }
  parallel_tasks(nblocks, block_grain(P), [&](int64_t b0, int64_t b1) {
    BlockScratch B(P);
    for (int64_t blk = b0; blk < b1; ++blk) {
      const int64_t* toks = P.active.data() + blk * kBlock;
      const int nt = static_cast<int>(std::min<int64_t>(kBlock, A - blk * kBlock));
      float s[kBlock];
      load_block(P, toks, nt, B, s, /*normalize=*/true);
      encode_subset_block(P, W_enc_T, nt, B.xp.get(), B.coef.get(), 0, P.S, B.rows.get());
      block_coefficients(P, toks, nt, s, B);
      apply_block(P, W_dec, toks, nt, B);
    }
  });
}

// Columns of the tiled full encode: big enough for an efficient GEMM, small enough that the
// [rows, tile] buffer stays around 8 MB.
int64_t encode_tile(int64_t rows, int64_t d_sae) {
  const int64_t t = (int64_t{1} << 21) / std::max<int64_t>(rows, 1);
  return std::min<int64_t>(d_sae, std::max<int64_t>(256, std::min<int64_t>(4096, t)));
}

// The tiled encode: calls visit(row, tile_start, pre_row_ptr, tile_cols) for every row and tile,
// with pre = x' @ W_enc_T[tile].T in fp32, rows in parallel within a tile.
template <typename Visit>
void encode_tiles(const at::Tensor& xp, const at::Tensor& W_enc_T, Visit&& visit) {
  const int64_t rows = xp.size(0), d_sae = W_enc_T.size(0);
  const int64_t tile = encode_tile(rows, d_sae);
  for (int64_t j0 = 0; j0 < d_sae; j0 += tile) {
    const int64_t nc = std::min(tile, d_sae - j0);
    at::Tensor w = W_enc_T.narrow(0, j0, nc);
    if (w.scalar_type() != at::kFloat) w = w.to(at::kFloat);
    const at::Tensor pre = at::mm(xp, w.t()).contiguous();
    const float* pp = pre.data_ptr<float>();
    parallel_tasks(rows, std::max<int64_t>(1, 4096 / nc), [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) visit(r, j0, pp + r * nc, nc);
    });
  }
}

// topk: the full encode decides membership in the SAE's top k; the delta still reads |S| rows.
template <typename w_t>
void steer_topk(const SteerProblem& P, const at::Tensor& W_enc_T, const w_t* W_dec) {
  const int64_t A = static_cast<int64_t>(P.active.size());
  const int64_t d = P.d_in, S = P.S;
  at::Tensor xp_t = at::empty({A, d}, at::kFloat);
  std::vector<float> scale(A);
  float* xp = xp_t.data_ptr<float>();
  const size_t b = x_row_bytes(P);
  parallel_tasks(A, 16, [&](int64_t a0, int64_t a1) {
    std::vector<float> xr(d);
    for (int64_t a = a0; a < a1; ++a) {
      load_row(static_cast<const char*>(P.x) + P.active[a] * b, P.x_dtype, xr.data(), d);
      scale[a] = normalize_row(xr.data(), xp + a * d, d, P.norm, P.b_dec);
    }
  });
  // S's features in id order, to pick their scores out of each tile.
  std::vector<std::pair<int64_t, int64_t>> by_id(S);
  for (int64_t r = 0; r < S; ++r) by_id[r] = {P.feats[r], r};
  std::sort(by_id.begin(), by_id.end());
  std::vector<float> score_S(A * S);
  std::vector<RowTopK> top(A);
  for (auto& h : top) h.reset(P.k);
  encode_tiles(xp_t, W_enc_T, [&](int64_t a, int64_t j0, const float* pre, int64_t nc) {
    RowTopK& h = top[a];
    for (int64_t c = 0; c < nc; ++c) {
      const int64_t i = j0 + c;
      h.push((pre[c] + P.params.bias[i]) * P.params.mag_scale[i], i);
    }
    auto it = std::lower_bound(by_id.begin(), by_id.end(), std::make_pair(j0, int64_t{-1}));
    for (; it != by_id.end() && it->first < j0 + nc; ++it) {
      const int64_t i = it->first;
      score_S[a * S + it->second] = (pre[i - j0] + P.params.bias[i]) * P.params.mag_scale[i];
    }
  });
  const int64_t nblocks = (A + kBlock - 1) / kBlock;
  parallel_tasks(nblocks, block_grain(P), [&](int64_t b0, int64_t b1) {
    BlockScratch B(P);
    for (int64_t blk = b0; blk < b1; ++blk) {
      const int64_t a_first = blk * kBlock;
      const int64_t* toks = P.active.data() + a_first;
      const int nt = static_cast<int>(std::min<int64_t>(kBlock, A - a_first));
      float s[kBlock];
      load_block(P, toks, nt, B, s, /*normalize=*/false);
      float* f = B.coef.get();
      for (int t = 0; t < nt; ++t) {
        const int64_t a = a_first + t;
        s[t] = scale[a];
        for (int64_t r = 0; r < S; ++r) {
          const float sc = score_S[a * S + r];
          f[t * S + r] = top[a].contains(sc, P.feats[r]) && sc > 0.f ? sc : 0.f;
        }
      }
      coefficients(P, toks, nt, s, f);
      apply_block(P, W_dec, toks, nt, B);
    }
  });
}

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

at::Tensor b_dec_f32(const at::Tensor& b_dec) { return b_dec.to(at::kFloat).contiguous(); }

template <typename F>
void dispatch_weights(at::ScalarType st, F&& f) {
  switch (st) {
    case at::kFloat: f(float{}); break;
    case at::kBFloat16: f(c10::BFloat16{}); break;
    case at::kHalf: f(c10::Half{}); break;
    default: TORCH_CHECK(false, "W_dec: expected float32, bfloat16 or float16, got ", st);
  }
}

// Shared body of steer and steer_rows: x2 [N, d_in], values [rows, S], mask [N] or undefined.
at::Tensor steer_common(const at::Tensor& x2, const at::Tensor& W_enc_T, const at::Tensor& W_dec, const at::Tensor& b_dec,
                        const at::Tensor& params, int64_t arch, int64_t norm, bool apply_b_dec, int64_t k,
                        const at::Tensor& features, int64_t mode, const at::Tensor& values, int64_t tokens_per_row,
                        const at::Tensor& mask) {
  const at::Tensor x = x2.contiguous();
  at::Tensor out = at::empty_like(x, at::MemoryFormat::Contiguous);
  const int64_t S = features.numel(), N = x.size(0);
  if (S == 0 || N == 0) {
    out.copy_(x);
    return out;
  }
  const at::Tensor feats = features.contiguous();
  const at::Tensor vals = values.to(at::kFloat).contiguous();
  const at::Tensor bd = b_dec_f32(b_dec);
  const at::Tensor pr = params.contiguous();
  SteerProblem P{x.data_ptr(), out.data_ptr(), x.scalar_type(), N, x.size(1), W_enc_T.size(0),
                 apply_b_dec ? bd.data_ptr<float>() : nullptr, FeatureParams(pr.data_ptr<float>(), W_enc_T.size(0)),
                 arch, norm, k, feats.data_ptr<int64_t>(), S, mode, vals.data_ptr<float>(),
                 std::max<int64_t>(tokens_per_row, 1), {}};
  P.active.reserve(N);
  if (mask.defined()) {
    const at::Tensor m = mask.contiguous();
    const bool* mp = m.data_ptr<bool>();
    for (int64_t n = 0; n < N; ++n) {
      if (mp[n]) {
        P.active.push_back(n);
      } else {
        copy_token(P, n);
      }
    }
  } else {
    for (int64_t n = 0; n < N; ++n) P.active.push_back(n);
  }
  if (P.active.empty()) return out;
  dispatch_weights(W_dec.scalar_type(), [&](auto tag) {
    using w_t = decltype(tag);
    const w_t* Wd = W_dec.data_ptr<w_t>();
    if (arch == kTopK) {
      steer_topk<w_t>(P, W_enc_T, Wd);
    } else {
      steer_subset<w_t>(P, W_enc_T.data_ptr<w_t>(), Wd);
    }
  });
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

void check_mask(const c10::optional<at::Tensor>& token_mask, at::IntArrayRef expected, const at::Tensor& x) {
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
                     const c10::optional<at::Tensor>& token_mask) {
  check_steer_args(x, W_enc_T, W_dec, b_dec, params, arch, norm, k, features, mode);
  check_values(values, {features.numel()}, x, "(one per feature)");
  check_mask(token_mask, {x.size(0)}, x);
  return steer_common(x, W_enc_T, W_dec, b_dec, params, arch, norm, apply_b_dec, k, features, mode, values, x.size(0),
                      token_mask.has_value() ? *token_mask : at::Tensor());
}

at::Tensor steer_rows_cpu(const at::Tensor& x, const at::Tensor& W_enc_T, const at::Tensor& W_dec,
                          const at::Tensor& b_dec, const at::Tensor& params, int64_t arch, int64_t norm,
                          bool apply_b_dec, int64_t k, const at::Tensor& features, int64_t mode,
                          const at::Tensor& values, const c10::optional<at::Tensor>& token_mask) {
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
  const int64_t N = xc.size(0), d = xc.size(1);
  at::Tensor out_v = at::empty({N, k}, xc.options());
  at::Tensor out_i = at::empty({N, k}, xc.options().dtype(at::kLong));
  if (N == 0) return {out_v, out_i};
  const at::Tensor bd = b_dec_f32(b_dec);
  const at::Tensor pr = params.contiguous();
  const FeatureParams fp(pr.data_ptr<float>(), d_sae);
  const float* b = apply_b_dec ? bd.data_ptr<float>() : nullptr;
  at::Tensor xp_t = at::empty({N, d}, at::kFloat);
  float* xp = xp_t.data_ptr<float>();
  const size_t row_bytes = d * xc.element_size();
  parallel_tasks(N, 16, [&](int64_t n0, int64_t n1) {
    std::vector<float> xr(d);
    for (int64_t n = n0; n < n1; ++n) {
      load_row(static_cast<const char*>(xc.data_ptr()) + n * row_bytes, xc.scalar_type(), xr.data(), d);
      normalize_row(xr.data(), xp + n * d, d, norm, b);
    }
  });
  // topk SAE: select its own sae_k scores first; its activations are relu(score) there, 0 elsewhere.
  std::vector<RowTopK> top(N);
  for (auto& h : top) h.reset(arch == kTopK ? sae_k : k);
  encode_tiles(xp_t, W_enc_T, [&](int64_t n, int64_t j0, const float* pre, int64_t nc) {
    RowTopK& h = top[n];
    if (arch == kTopK) {
      for (int64_t c = 0; c < nc; ++c) h.push((pre[c] + fp.bias[j0 + c]) * fp.mag_scale[j0 + c], j0 + c);
    } else {
      for (int64_t c = 0; c < nc; ++c) h.push(activation(pre[c], j0 + c, arch, fp), j0 + c);
    }
  });
  parallel_tasks(N, 64, [&](int64_t n0, int64_t n1) {
    std::vector<float> vrow(k);
    std::vector<char> taken;
    for (int64_t n = n0; n < n1; ++n) {
      std::vector<Scored>& h = top[n].heap;
      if (arch == kTopK) {
        for (auto& e : h) e.v = e.v > 0.f ? e.v : 0.f;
      }
      std::sort(h.begin(), h.end(), better);
      int64_t* ip = out_i.data_ptr<int64_t>() + n * k;
      int64_t m = std::min<int64_t>(k, static_cast<int64_t>(h.size()));
      for (int64_t j = 0; j < m; ++j) {
        vrow[j] = h[j].v;
        ip[j] = h[j].i;
      }
      if (m < k) {  // topk SAE with k > sae_k (or NaN scores): pad with zero activations, lowest ids first
        taken.assign(d_sae, 0);
        for (int64_t j = 0; j < m; ++j) taken[ip[j]] = 1;
        for (int64_t i = 0; m < k && i < d_sae; ++i) {
          if (!taken[i]) {
            vrow[m] = 0.f;
            ip[m++] = i;
          }
        }
      }
      store_row(vrow.data(), static_cast<char*>(out_v.data_ptr()) + n * k * out_v.element_size(), out_v.scalar_type(), k);
    }
  });
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
  const at::Tensor bd = b_dec_f32(b_dec);
  const at::Tensor pr = params.contiguous();
  const float* dec_scale = pr.data_ptr<float>() + kDecScale * d_sae;
  dispatch_weights(W_dec.scalar_type(), [&](auto tag) {
    using w_t = decltype(tag);
    const w_t* Wd = W_dec.data_ptr<w_t>();
    const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 16) / std::max<int64_t>(K * d * 2, 1));
    parallel_tasks(N, grain, [&](int64_t n0, int64_t n1) {
      std::vector<float> acc(d), vr(std::max<int64_t>(K, 1)), rows(4 * d);
      std::vector<int64_t> live;
      for (int64_t n = n0; n < n1; ++n) {
        load_row(static_cast<const char*>(v.data_ptr()) + n * K * v.element_size(), v.scalar_type(), vr.data(), K);
        const int64_t* in = ip + n * K;
        live.clear();
        for (int64_t j = 0; j < K; ++j) {
          vr[j] *= dec_scale[in[j]];
          if (vr[j] != 0.f) live.push_back(j);
        }
        std::fill(acc.begin(), acc.end(), 0.f);
        const int64_t L = static_cast<int64_t>(live.size());
        int64_t g = 0;
        for (; g + 3 < L; g += 4) {
          const float* w[4];
          float c[4];
          for (int q = 0; q < 4; ++q) {
            w[q] = row_f32(Wd + in[live[g + q]] * d, d, rows.data() + q * d);
            c[q] = vr[live[g + q]];
          }
          axpy_1x4(acc.data(), w[0], w[1], w[2], w[3], c, d);
        }
        for (; g < L; ++g) axpy_1x1(acc.data(), row_f32(Wd + in[live[g]] * d, d, rows.data()), vr[live[g]], d);
        const float* bp = bd.data_ptr<float>();
        for (int64_t j = 0; j < d; ++j) acc[j] += bp[j];
        store_row(acc.data(), static_cast<char*>(out.data_ptr()) + n * d * out.element_size(), out.scalar_type(), d);
      }
    });
  });
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
}
