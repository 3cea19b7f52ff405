// CPU kernels of the saesteer ops (csrc/cpu/kernels.h; schemas and conventions: csrc/ops.cpp).
// Torch-free: raw pointers, sizes, an enum dtype, OpenMP threads; the ATen binding is
// csrc/ops_cpu.cpp. Without torch headers this file compiles in ~7 s on the 2-core build machines
// (the ATen-based file it replaces: ~31 s), and a change to a kernel recompiles only it.
//
// Layout of the work:
//   * steer / steer_rows, standard / jumprelu / gated: tokens are taken 4 at a time ("a block");
//     each block reads only the |S| encoder rows (W_enc_T[S]) and the decoder rows W_dec[S] whose
//     coefficient is non-zero for one of its tokens: O(|S| * d_in) per token, no [T, d_sae] buffer.
//     Blocks are the parallel tasks; up to 16 tokens go all at once instead, the threads splitting
//     the encoder rows, then the output columns (each weight row is read once per call).
//     The encode is 4-token x 3-row dot tiles (AVX2 + FMA where the CPU has them).
//   * steer / steer_rows, topk: the full encode runs tile by tile (the binding's GEMM into an
//     [N, tile] buffer), merged into a per-row heap of the SAE's k best scores; then the same delta
//     over the |S| rows.
//   * encode_topk: its own blocked GEMM (no [N, d_sae] buffer, W_enc_T streamed once), the features
//     split between the threads, the activation and a per-row heap of the k largest in its epilogue.
//   * decode_sparse: per row, fp32 accumulation of k decoder rows.
// Inner loops are fp32 (bf16/fp16 rows are widened to fp32 first) and compiled for x86-64-v4,
// x86-64-v3 and baseline x86-64 (GCC target_clones: the extension is built without -march, so
// without this the loops would be SSE2 only); the dot tiles of the encodes are AVX2 + FMA
// intrinsics chosen at run time, with a portable fallback.
//
// Threads: parallel_tasks splits [0, n) into one contiguous chunk per thread, as at::parallel_for
// does with torch's OpenMP backend; the extension and torch share one OpenMP runtime (the same
// libgomp.so.1 soname, loaded by torch first), so torch.set_num_threads sets the thread count here.
//
// Ties in a top-k (the topk SAE's own selection, and encode_topk): among equal values the lower
// feature index wins. torch.topk does not document its order among ties, so the reference and this
// kernel may pick different members of an exact tie; with continuous weights exact ties of the k-th
// score do not happen in practice. Zero activations in encode_topk are the common exact tie: here
// they too come in id order (the topk SAE's relu'd scores and the padding past its own k included).
#include "cpu/kernels.h"

#include <omp.h>

#if defined(__GNUC__) && defined(__x86_64__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <exception>
#include <cmath>
#include <cstring>
#include <limits>
#include <memory>
#include <type_traits>
#include <utility>
#include <vector>

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
// fp32 dot tiles: MR tokens x NR features in registers, for the subset encode of steer and
// trigger_score and for encode_topk's GEMM. The AVX2 + FMA kernels are chosen at run time
// (__builtin_cpu_supports), so the extension stays portable without -march; on other CPUs each
// entry of a tile is a dot_1x1.
// ------------------------------------------------------------------------------------------------
#if defined(__GNUC__) && defined(__x86_64__)
#define SAESTEER_TILE_AVX2 1
#define SAESTEER_AVX2 __attribute__((target("avx2,fma")))

SAESTEER_AVX2 inline float hsum256(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// c[t * cs + r] += <x_t, w[r]> over n columns, for MR tokens (rows of x, stride xs) and NR
// features (the rows w[0..NR): a block of W_enc_T, or the gathered rows of a feature subset). Meanwhile the first pf_n floats from pf are prefetched, one
// 64-byte line per 8 columns: the weights the next call will need, requested while this one computes.
template <int MR, int NR>
SAESTEER_AVX2 void dot_tile_avx2(const float* __restrict x, int64_t xs, const float* const* w, int64_t n,
                                 float* __restrict c, int64_t cs, const float* pf, int64_t pf_n) {
  __m256 acc[MR][NR];
#pragma GCC unroll 4
  for (int t = 0; t < MR; ++t)
#pragma GCC unroll 4
    for (int r = 0; r < NR; ++r) acc[t][r] = _mm256_setzero_ps();
  int64_t j = 0;
  for (; j + 8 <= n; j += 8) {
    if (2 * j < pf_n) _mm_prefetch(reinterpret_cast<const char*>(pf + 2 * j), _MM_HINT_T1);
    __m256 wv[NR];
#pragma GCC unroll 4
    for (int r = 0; r < NR; ++r) wv[r] = _mm256_loadu_ps(w[r] + j);
#pragma GCC unroll 4
    for (int t = 0; t < MR; ++t) {
      const __m256 xv = _mm256_loadu_ps(x + t * xs + j);
#pragma GCC unroll 4
      for (int r = 0; r < NR; ++r) acc[t][r] = _mm256_fmadd_ps(xv, wv[r], acc[t][r]);
    }
  }
  for (int t = 0; t < MR; ++t) {
    for (int r = 0; r < NR; ++r) {
      float s = hsum256(acc[t][r]);
      for (int64_t q = j; q < n; ++q) s += x[t * xs + q] * w[r][q];
      c[t * cs + r] += s;
    }
  }
}
#endif

// The same contract on any CPU.
template <int MR, int NR>
void dot_tile_generic(const float* x, int64_t xs, const float* const* w, int64_t n, float* c, int64_t cs,
                      const float*, int64_t) {
  for (int t = 0; t < MR; ++t)
    for (int r = 0; r < NR; ++r) c[t * cs + r] += dot_1x1(x + t * xs, w[r], n);
}

constexpr int kTileTokens = 4, kTileFeatures = 3;
using DotTileFn = void (*)(const float*, int64_t, const float* const*, int64_t, float*, int64_t, const float*,
                          int64_t);

// The tile kernels for this CPU, by [tokens - 1][features - 1] (the edges of a block use the smaller ones).
struct DotTiles {
  DotTileFn fn[kTileTokens][kTileFeatures];
};

#define SAESTEER_TILE_ROW(K, MR) {&K<MR, 1>, &K<MR, 2>, &K<MR, 3>}
#define SAESTEER_TILES(K) \
  DotTiles{{SAESTEER_TILE_ROW(K, 1), SAESTEER_TILE_ROW(K, 2), SAESTEER_TILE_ROW(K, 3), SAESTEER_TILE_ROW(K, 4)}}
const DotTiles& dot_tiles() {
  static const DotTiles tiles = [] {
#if defined(SAESTEER_TILE_AVX2)
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return SAESTEER_TILES(dot_tile_avx2);
#endif
    return SAESTEER_TILES(dot_tile_generic);
  }();
  return tiles;
}
#undef SAESTEER_TILES
#undef SAESTEER_TILE_ROW

// ------------------------------------------------------------------------------------------------
// dtype plumbing: weights are a template parameter (one instantiation per SAE dtype); x, values and
// outputs are converted per row with a run-time switch (one branch per row, not per element).
// The conversions give c10::BFloat16's and c10::Half's bits exactly (round to nearest even; NaN
// to 0x7FC0 in bf16 and to sign | 0x7E00 in fp16; checked over every fp16 and every fp32 bit
// pattern against c10), so outputs match the ATen kernels these replace.
// ------------------------------------------------------------------------------------------------
struct bf16 {
  uint16_t bits;
};
struct fp16 {
  uint16_t bits;
};

inline float f32_from_bits(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}
inline uint32_t f32_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
}

inline float to_f32(float v) { return v; }
inline float to_f32(bf16 v) { return f32_from_bits(uint32_t{v.bits} << 16); }
inline float to_f32(fp16 v) {
  const uint32_t sign = uint32_t{v.bits & 0x8000u} << 16;
  const uint32_t em = v.bits & 0x7fffu;  // exponent and mantissa
  // Normal numbers: move the fields into place and rebias the exponent (15 -> 127: + 112);
  // inf/NaN: exponent 31 -> 255 (+ 112 more), NaNs made quiet as x86 arithmetic does.
  uint32_t u = (em << 13) + (112u << 23);
  if (em >= 0x7c00u) u += 112u << 23;
  if (em > 0x7c00u) u |= 0x400000u;
  float r = f32_from_bits(u);
  if (em < 0x400u) r = static_cast<float>(em) * 0x1p-24f;  // zero and subnormals: exact
  return f32_from_bits(sign | f32_bits(r));
}

inline uint16_t bf16_bits(float f) {
  if (std::isnan(f)) return 0x7fc0u;
  const uint32_t u = f32_bits(f);
  return static_cast<uint16_t>((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

inline uint16_t fp16_bits(float f) {
  const uint32_t u = f32_bits(f);
  const uint16_t sign = static_cast<uint16_t>((u >> 16) & 0x8000u);
  const uint32_t a = u & 0x7fffffffu;
  if (a > 0x7f800000u) return sign | 0x7e00u;  // NaN
  if (a >= 0x477ff000u) return sign | 0x7c00u;  // |f| >= 65520 (halfway above 65504): inf
  uint32_t q, rem, half;
  if (a >= 0x38800000u) {  // a normal half: rebias 127 -> 15, keep 10 of the 23 mantissa bits
    const uint32_t r = a - (112u << 23);
    q = r >> 13, rem = r & 0x1fffu, half = 0x1000u;
  } else {  // a subnormal half (or 0): q = |f| * 2^24 rounded
    if (a <= 0x33000000u) return sign;  // |f| <= 2^-25 rounds to 0 (2^-25 itself: a tie, to even)
    const uint32_t m = (a & 0x7fffffu) | 0x800000u;
    const int shift = 126 - static_cast<int>(a >> 23);  // 14..24
    q = m >> shift, rem = m & ((1u << shift) - 1u), half = 1u << (shift - 1);
  }
  if (rem > half || (rem == half && (q & 1u))) ++q;  // a carry into the exponent is right too
  return static_cast<uint16_t>(sign | q);
}

inline void from_f32(float v, float* dst) { *dst = v; }
inline void from_f32(float v, bf16* dst) { dst->bits = bf16_bits(v); }
inline void from_f32(float v, fp16* dst) { dst->bits = fp16_bits(v); }

size_t element_size(Dtype t) { return t == kFloat32 ? 4 : 2; }

template <typename T>
void widen(const T* __restrict src, float* __restrict dst, int64_t n) {
  if constexpr (std::is_same_v<T, float>) {
    std::memcpy(dst, src, n * sizeof(float));
  } else {
    for (int64_t j = 0; j < n; ++j) dst[j] = to_f32(src[j]);
  }
}

void load_row(const void* src, Dtype st, float* dst, int64_t n) {
  switch (st) {
    case kFloat32: widen(static_cast<const float*>(src), dst, n); break;
    case kBFloat16: widen(static_cast<const bf16*>(src), dst, n); break;
    case kFloat16: widen(static_cast<const fp16*>(src), dst, n); break;
  }
}

template <typename T>
void narrow_store(const float* __restrict src, T* __restrict dst, int64_t n) {
  for (int64_t j = 0; j < n; ++j) from_f32(src[j], dst + j);
}

void store_row(const float* src, void* dst, Dtype st, int64_t n) {
  switch (st) {
    case kFloat32: std::memcpy(dst, src, n * sizeof(float)); break;
    case kBFloat16: narrow_store(src, static_cast<bf16*>(dst), n); break;
    case kFloat16: narrow_store(src, static_cast<fp16*>(dst), n); break;
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

// Calls f(w_t{}) with w_t the storage type of `st`.
template <typename F>
void dispatch_weights(Dtype st, F&& f) {
  switch (st) {
    case kFloat32: f(float{}); break;
    case kBFloat16: f(bf16{}); break;
    case kFloat16: f(fp16{}); break;
  }
}

// f(begin, end) over [0, n) in one contiguous chunk per thread, inline when n <= grain, with one
// thread, or inside a parallel region, as at::parallel_for does: an OpenMP region costs
// microseconds, the whole op at T=1 a few. An exception in a task (std::bad_alloc) is rethrown on
// the calling thread after the region, as at::parallel_for does; one leaving the region would end
// the process.
template <typename F>
void parallel_tasks(int64_t n, int64_t grain, const F& f) {
  const int64_t tasks = std::min<int64_t>(omp_get_max_threads(), (n + grain - 1) / std::max<int64_t>(grain, 1));
  if (n <= grain || tasks <= 1 || omp_in_parallel()) {
    if (n > 0) f(0, n);
    return;
  }
  const int64_t chunk = (n + tasks - 1) / tasks;
  std::exception_ptr error;
#pragma omp parallel for num_threads(static_cast<int>(tasks)) schedule(static, 1)
  for (int64_t t = 0; t < tasks; ++t) {
    const int64_t b = t * chunk, e = std::min(n, b + chunk);
    try {
      if (b < e) f(b, e);
    } catch (...) {
#pragma omp critical(saesteer_parallel_tasks_error)
      if (!error) error = std::current_exception();
    }
  }
  if (error) std::rethrow_exception(error);
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
  // The value an element must reach (>=) to be pushed in: -inf until k elements are in.
  inline float worst() const {
    return static_cast<int64_t>(heap.size()) < k ? -std::numeric_limits<float>::infinity() : heap.front().v;
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
  Dtype x_dtype;
  int64_t N, d_in, d_sae;
  const float* b_dec;     // fp32 [d_in], or nullptr when not applied to the input
  FeatureParams params;
  int64_t arch, norm, k;
  const int64_t* feats;   // [S]
  int64_t S;
  int64_t mode;
  const float* values;    // [rows, S]; token n uses row n / tokens_per_row
  int64_t tokens_per_row;
  GemmFn gemm;
  std::vector<int64_t> active;  // tokens where the edit applies (the mask), in order
};

size_t x_row_bytes(const SteerProblem& P) { return P.d_in * element_size(P.x_dtype); }

void copy_token(const SteerProblem& P, int64_t n) {
  const size_t b = x_row_bytes(P);
  std::memcpy(static_cast<char*>(P.out) + n * b, static_cast<const char*>(P.x) + n * b, b);
}

// Per-token fp32 work space of one block (uninitialized: every element is written before it is read).
struct BlockScratch {
  std::unique_ptr<float[]> x, xp, coef, rows;
  explicit BlockScratch(const SteerProblem& P)
      : x(new float[kBlock * P.d_in]), xp(new float[kBlock * P.d_in]),
        coef(new float[kBlock * std::max<int64_t>(P.S, 1)]), rows(new float[4 * P.d_in]) {}  // rows: 4 >= kTileFeatures
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

// coef[t, r] = (f'_r - f_r) * dec_scale * s_t from the activations f[t, r] (in place), r in [r0, r1).
void coefficients(const SteerProblem& P, const int64_t* toks, int nt, const float* s, float* f, int64_t r0,
                  int64_t r1) {
  for (int t = 0; t < nt; ++t) {
    const float* v = P.values + (toks[t] / P.tokens_per_row) * P.S;
    float* row = f + t * P.S;
    for (int64_t r = r0; r < r1; ++r) {
      const float fi = row[r];
      row[r] = (edited(fi, v[r], P.mode) - fi) * P.params.dec_scale[P.feats[r]] * s[t];
    }
  }
}

// The decode half shared by every architecture: y_t = x_t + sum_r coef[t, r] * W_dec[S_r] for the
// block's tokens, columns [j0, j1) (accumulated in fp32 on top of their fp32 rows x, stride d_in;
// coef [nt, |S|]); a token whose coefficients are all zero is copied bit for bit. Only the rows with
// a non-zero coefficient for some token are read. `rows` is fp32 scratch for 4 widened row slices
// (bf16/fp16 weights).
template <typename w_t>
void apply_block(const SteerProblem& P, const w_t* W_dec, const int64_t* toks, int nt, float* x, const float* coef,
                 int64_t j0, int64_t j1, float* rows) {
  const int64_t d = P.d_in, S = P.S, n = j1 - j0;
  bool changed[kBlock] = {false, false, false, false};
  int64_t live[4];  // rows of the current group
  int nl = 0;
  float* xs = x + j0;
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
  const size_t esz = element_size(P.x_dtype);
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
  apply_block(P, W_dec, toks, nt, B.x.get(), B.coef.get(), 0, P.d_in, B.rows.get());
}

// Blocks per parallel task so that a task does at least ~64k multiply-adds; run inline when the
// whole call is one task (an OpenMP region costs microseconds, the whole op at T=1 is a few).
int64_t block_grain(const SteerProblem& P) {
  const int64_t work = kBlock * std::max<int64_t>(P.S, 1) * P.d_in * 2;
  return std::max<int64_t>(1, (int64_t{1} << 16) / std::max<int64_t>(work, 1));
}

// pre[t, r] = <x'_t, W_enc_T[S_r]> for nt tokens (x' rows of stride d_in) and r in [r0, r1), pre
// of stride |S|: dot tiles of 4 tokens x 3 gathered rows, over chunks of d_in sized so that the
// tokens' chunk of x' and a tile's 3 row chunks (~24 KB) stay in L1 while the rows stream through
// it once. `scratch` holds 3 widened row chunks (bf16/fp16 weights; at most 3 d_in floats).
template <typename w_t>
void encode_subset(const SteerProblem& P, const w_t* W_enc_T, int64_t nt, const float* xp, float* pre, int64_t r0,
                   int64_t r1, float* scratch) {
  const int64_t d = P.d_in, S = P.S;
  const DotTiles& tiles = dot_tiles();
  const int64_t target = std::max<int64_t>(64, (6 << 10) / (nt + kTileFeatures));
  const int64_t chunks = (d + target - 1) / target;
  const int64_t kc = std::min(d, ((d + chunks - 1) / chunks + 7) / 8 * 8);
  for (int64_t t = 0; t < nt; ++t) std::fill(pre + t * S + r0, pre + t * S + r1, 0.f);
  for (int64_t j0 = 0; j0 < d; j0 += kc) {
    const int64_t n = std::min(kc, d - j0);
    for (int64_t r = r0; r < r1; r += kTileFeatures) {
      const int64_t nr = std::min<int64_t>(kTileFeatures, r1 - r);
      const float* w[kTileFeatures];
      for (int64_t q = 0; q < nr; ++q) w[q] = row_f32(W_enc_T + P.feats[r + q] * d + j0, n, scratch + q * n);
      for (int64_t t = 0; t < nt; t += kTileTokens) {
        const int64_t mr = std::min<int64_t>(kTileTokens, nt - t);
        tiles.fn[mr - 1][nr - 1](xp + t * d + j0, d, w, n, pre + t * S + r, S, nullptr, 0);
      }
    }
  }
}

// Activations then coefficients, in place in f [nt, |S|], features r in [r0, r1).
void subset_coefficients(const SteerProblem& P, const int64_t* toks, int nt, const float* s, float* f, int64_t r0,
                         int64_t r1) {
  for (int t = 0; t < nt; ++t)
    for (int64_t r = r0; r < r1; ++r) f[t * P.S + r] = activation(f[t * P.S + r], P.feats[r], P.arch, P.params);
  coefficients(P, toks, nt, s, f, r0, r1);
}

// Block-parallel subset encode of the active tokens: per block of kBlock tokens, x' and the |S|
// pre-activations <x'_t, W_enc_T[S_r]> into B.coef, then done(toks, nt, s, B) with s the tokens'
// denormalization scales.
template <typename w_t, typename Done>
void encode_blocks(const SteerProblem& P, const w_t* W_enc_T, Done&& done) {
  const int64_t A = static_cast<int64_t>(P.active.size());
  parallel_tasks((A + kBlock - 1) / kBlock, block_grain(P), [&](int64_t b0, int64_t b1) {
    BlockScratch B(P);
    for (int64_t blk = b0; blk < b1; ++blk) {
      const int64_t* toks = P.active.data() + blk * kBlock;
      const int nt = static_cast<int>(std::min<int64_t>(kBlock, A - blk * kBlock));
      float s[kBlock];
      load_block(P, toks, nt, B, s, /*normalize=*/true);
      encode_subset(P, W_enc_T, nt, B.xp.get(), B.coef.get(), 0, P.S, B.rows.get());
      done(toks, nt, s, B);
    }
  });
}

// [b, e) of [0, n) for thread id of nth: one contiguous chunk each, in units of `unit`.
inline std::pair<int64_t, int64_t> thread_chunk(int64_t n, int64_t unit, int id, int nth) {
  const int64_t units = (n + unit - 1) / unit, per = (units + nth - 1) / nth;
  return {std::min(n, id * per * unit), std::min(n, (id + 1) * per * unit)};
}

// Up to 16 tokens: all of them at once. Each thread loads and normalizes every token into its own
// buffers, encodes its share of the |S| rows (3-row units) for every token and turns them into
// coefficients; after one barrier it decodes its share of the d_in columns for every token, one
// block of 4 tokens after another (the later blocks find its slice of the decoder rows in L2).
// So each weight row is read once per call and each thread reads only its share (block-parallel
// tasks would each read all 2 |S| rows: at |S| = 32, d_in = 2304 more than a core's 512 KB L2).
// Only the [A, |S|] coefficients cross between the threads: on the 2-vCPU EPYC a version whose
// threads shared the normalized tokens instead (each normalizing half) took 62-66 us at Gemma Scope
// 16k, T = 8, |S| = 32 against 42-44 us for this one and 47 us for block-parallel tasks (minimums
// of 60 blocks of 20 calls in one process). One parallel region; none with one thread.
template <typename w_t>
void steer_subset_few(const SteerProblem& P, const w_t* W_enc_T, const w_t* W_dec, int threads) {
  const int64_t A = static_cast<int64_t>(P.active.size()), d = P.d_in, S = P.S;
  const int64_t* toks = P.active.data();
  // Shared: coef [A, S]. Per thread: x and x' [A, d], s [A], its [A, S] pre-activations, and 3
  // widened encoder rows or 4 decoder row slices. Nothing below throws.
  const int64_t own = 2 * A * d + A + A * S + 4 * d;
  std::unique_ptr<float[]> buf(new float[A * S + threads * own]);
  float* coef = buf.get();
  const auto run = [&](int id, int nth) {
    float *x = coef + A * S + id * own, *xp = x + A * d, *s = xp + A * d, *pre = s + A, *rows = pre + A * S;
    const size_t b = x_row_bytes(P);
    for (int64_t a = 0; a < A; ++a) {
      load_row(static_cast<const char*>(P.x) + toks[a] * b, P.x_dtype, x + a * d, d);
      s[a] = normalize_row(x + a * d, xp + a * d, d, P.norm, P.b_dec);
    }
    const auto [r0, r1] = thread_chunk(S, kTileFeatures, id, nth);
    if (r0 < r1) {
      encode_subset(P, W_enc_T, A, xp, pre, r0, r1, rows);
      for (int64_t a = 0; a < A; a += kBlock) {
        const int nt = static_cast<int>(std::min<int64_t>(kBlock, A - a));
        subset_coefficients(P, toks + a, nt, s + a, pre + a * S, r0, r1);
      }
      if (nth > 1)  // to the shared coefficients (one thread decodes from its own)
        for (int64_t a = 0; a < A; ++a) std::copy(pre + a * S + r0, pre + a * S + r1, coef + a * S + r0);
    }
    if (nth > 1) {  // not with one thread: it may be one thread of a caller's parallel region
#pragma omp barrier
    }
    const float* c = nth > 1 ? coef : pre;
    const auto [c0, c1] = thread_chunk(d, 8, id, nth);
    for (int64_t a = 0; a < A && c0 < c1; a += kBlock) {
      const int nt = static_cast<int>(std::min<int64_t>(kBlock, A - a));
      apply_block(P, W_dec, toks + a, nt, x + a * d, c + a * S, c0, c1, rows);
    }
  };
  if (threads <= 1) {
    run(0, 1);
    return;
  }
#pragma omp parallel num_threads(threads)
  run(omp_get_thread_num(), omp_get_num_threads());
}

// standard / jumprelu / gated: |S| encoder and decoder rows only. Up to 16 tokens:
// steer_subset_few, on several threads once the call has enough work for a parallel region (~256k
// multiply-adds). More: blocks of 4 tokens are the parallel tasks, each doing all of its own work.
template <typename w_t>
void steer_subset(const SteerProblem& P, const w_t* W_enc_T, const w_t* W_dec) {
  const int64_t A = static_cast<int64_t>(P.active.size());
  if (A <= 4 * kBlock) {
    const bool many = !omp_in_parallel() && A * P.S * P.d_in * 2 >= (int64_t{1} << 18);
    steer_subset_few(P, W_enc_T, W_dec, many ? omp_get_max_threads() : 1);
    return;
  }
  encode_blocks(P, W_enc_T, [&](const int64_t* toks, int nt, const float* s, BlockScratch& B) {
    subset_coefficients(P, toks, nt, s, B.coef.get(), 0, P.S);
    apply_block(P, W_dec, toks, nt, B);
  });
}

// Columns of the tiled full encode: big enough for an efficient GEMM, small enough that the
// [rows, tile] buffer stays around 8 MB.
int64_t encode_tile(int64_t rows, int64_t d_sae) {
  const int64_t t = (int64_t{1} << 21) / std::max<int64_t>(rows, 1);
  return std::min<int64_t>(d_sae, std::max<int64_t>(256, std::min<int64_t>(4096, t)));
}

// The tiled encode: calls visit(row, tile_start, pre_row_ptr, tile_cols) for every row and tile,
// with pre = x' @ W_enc_T[tile].T in fp32 (xp [rows, d]), rows in parallel within a tile.
template <typename w_t, typename Visit>
void encode_tiles(const float* xp, int64_t rows, const w_t* W_enc_T, int64_t d_sae, int64_t d, GemmFn gemm,
                  Visit&& visit) {
  const int64_t tile = encode_tile(rows, d_sae);
  std::vector<float> pre(rows * tile);
  std::vector<float> wf(std::is_same_v<w_t, float> ? 0 : tile * d);
  for (int64_t j0 = 0; j0 < d_sae; j0 += tile) {
    const int64_t nc = std::min(tile, d_sae - j0);
    const float* w;
    if constexpr (std::is_same_v<w_t, float>) {
      w = W_enc_T + j0 * d;
    } else {
      parallel_tasks(nc, 16, [&](int64_t c0, int64_t c1) { widen(W_enc_T + (j0 + c0) * d, wf.data() + c0 * d, (c1 - c0) * d); });
      w = wf.data();
    }
    gemm(xp, w, rows, nc, d, pre.data());
    const float* pp = pre.data();
    parallel_tasks(rows, std::max<int64_t>(1, 4096 / nc), [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) visit(r, j0, pp + r * nc, nc);
    });
  }
}

// topk: the activations f[a, r] of the features S for every active token (the full encode decides
// membership in the SAE's top k), and each token's denormalization scale.
template <typename w_t>
void topk_subset_acts(const SteerProblem& P, const w_t* W_enc_T, std::vector<float>& f, std::vector<float>& scale) {
  const int64_t A = static_cast<int64_t>(P.active.size());
  const int64_t d = P.d_in, S = P.S;
  std::vector<float> xp_buf(A * d);
  scale.assign(A, 1.f);
  float* xp = xp_buf.data();
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
  f.assign(A * S, 0.f);
  std::vector<RowTopK> top(A);
  for (auto& h : top) h.reset(P.k);
  encode_tiles(xp, A, W_enc_T, P.d_sae, d, P.gemm, [&](int64_t a, int64_t j0, const float* pre, int64_t nc) {
    RowTopK& h = top[a];
    for (int64_t c = 0; c < nc; ++c) {
      const int64_t i = j0 + c;
      h.push((pre[c] + P.params.bias[i]) * P.params.mag_scale[i], i);
    }
    auto it = std::lower_bound(by_id.begin(), by_id.end(), std::make_pair(j0, int64_t{-1}));
    for (; it != by_id.end() && it->first < j0 + nc; ++it) {
      const int64_t i = it->first;
      f[a * S + it->second] = (pre[i - j0] + P.params.bias[i]) * P.params.mag_scale[i];
    }
  });
  for (int64_t a = 0; a < A; ++a) {
    for (int64_t r = 0; r < S; ++r) {
      const float sc = f[a * S + r];
      f[a * S + r] = top[a].contains(sc, P.feats[r]) && sc > 0.f ? sc : 0.f;
    }
  }
}

// topk: the full encode decides membership in the SAE's top k; the delta still reads |S| rows.
template <typename w_t>
void steer_topk(const SteerProblem& P, const w_t* W_enc_T, const w_t* W_dec) {
  const int64_t A = static_cast<int64_t>(P.active.size());
  const int64_t S = P.S;
  std::vector<float> acts, scale;
  topk_subset_acts(P, W_enc_T, acts, scale);
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
        s[t] = scale[a_first + t];
        std::memcpy(f + t * S, acts.data() + (a_first + t) * S, S * sizeof(float));
      }
      coefficients(P, toks, nt, s, f, 0, S);
      apply_block(P, W_dec, toks, nt, B);
    }
  });
}

// The trigger read: per token sum_r w[r] * f[r], from the subset encode (or topk's full one).
template <typename w_t>
void trigger_subset(const SteerProblem& P, const w_t* W_enc_T, const float* w, float* out) {
  const int64_t N = P.N, S = P.S;
  if (P.arch == kTopK) {
    std::vector<float> f, scale;
    topk_subset_acts(P, W_enc_T, f, scale);
    for (int64_t n = 0; n < N; ++n) {
      double acc = 0.0;
      for (int64_t r = 0; r < S; ++r) acc += double(w[r]) * double(f[n * S + r]);
      out[n] = static_cast<float>(acc);
    }
    return;
  }
  encode_blocks(P, W_enc_T, [&](const int64_t* toks, int nt, const float*, BlockScratch& B) {
    const float* f = B.coef.get();
    for (int t = 0; t < nt; ++t) {
      double acc = 0.0;
      for (int64_t r = 0; r < S; ++r) acc += double(w[r]) * double(activation(f[t * S + r], P.feats[r], P.arch, P.params));
      out[toks[t]] = static_cast<float>(acc);
    }
  });
}

// ------------------------------------------------------------------------------------------------
// encode_topk: a blocked GEMM with the activation and the top-k selection in its epilogue
// ------------------------------------------------------------------------------------------------
// pre[t, f] = <x'_t, W_enc_T[f]> in dot-product form: both operands are row-major along d_in, so
// W_enc_T is read in place, never packed or transposed. The threads split the features: each
// streams its contiguous share of W_enc_T from memory once for all N tokens, into its own top-k
// heap per token; the heaps are merged at the end. Within a thread the work goes in blocks of `nb`
// features by `kc` columns of d_in (encode_blocking), sized so that the block of W (nb x kc) and the
// tokens' slice of x' (N x kc) stay in L2. The register tile is 4 tokens x 3 features: 12 ymm
// accumulators, 7 loads per 12 FMAs. After the last column chunk of a block its [N, nb]
// pre-activations, still in cache, go through the activation into the heaps.
// Block sizes of the encode for N tokens of d_in columns. Few tokens (<= 2 tiles): all of d_in per
// pass, their x' rows stay in L2. More: kc columns per pass, d_in cut into equal chunks of at most
// 1024 (a tile's 4 x' rows, 16 KB, stay in L1). nb features per block: their kc columns take ~192
// KB, a multiple of the tile's 3 features, so the block is read from L2 by every tile of tokens.
// Measured on the 2-core EPYC (Zen 3, 512 KB L2) at T = 128, one thread: kc 768 / nb 63, kc 1024 /
// nb 48 and kc 2304 / nb 21 within noise of each other (~70 GFLOP/s, MKL's sgemm: 80); kc 256: 15%
// slower. At T = 8, nb 6 to 48: the same.
struct EncodeBlocking {
  int64_t kc, nb;
};

EncodeBlocking encode_blocking(int64_t N, int64_t d) {
  constexpr int64_t kMaxChunk = 1024, kWFloats = 48 << 10;
  int64_t kc = d;
  if (N > 2 * kTileTokens && d > kMaxChunk) {
    const int64_t chunks = (d + kMaxChunk - 1) / kMaxChunk;
    kc = ((d + chunks - 1) / chunks + 7) / 8 * 8;
  }
  const int64_t nb = std::max<int64_t>(kTileFeatures, kWFloats / kc / kTileFeatures * kTileFeatures);
  return {kc, nb};
}

// One thread's share of encode_topk: features [f0, f1) of W_enc_T into heaps[0..N), each
// pre-activation through score(pre, feature) first.
template <typename w_t, typename Score>
void encode_topk_range(const float* xp, int64_t N, int64_t d, const w_t* W, int64_t f0, int64_t f1,
                       const EncodeBlocking& blk, const Score& score, RowTopK* heaps) {
  const DotTiles& tiles = dot_tiles();
  std::vector<float> c(N * blk.nb);
  std::vector<float> wf(std::is_same_v<w_t, float> ? 0 : blk.nb * blk.kc);
  for (int64_t fb = f0; fb < f1; fb += blk.nb) {
    const int64_t nb = std::min(blk.nb, f1 - fb);
    std::fill(c.begin(), c.begin() + N * nb, 0.f);
    for (int64_t j0 = 0; j0 < d; j0 += blk.kc) {
      const int64_t kc = std::min(blk.kc, d - j0);
      const float* w;
      int64_t ws;
      if constexpr (std::is_same_v<w_t, float>) {
        w = W + fb * d + j0, ws = d;
      } else {
        for (int64_t r = 0; r < nb; ++r) widen(W + (fb + r) * d + j0, wf.data() + r * kc, kc);
        w = wf.data(), ws = kc;
      }
      // fp32 whole rows: the next block's rows follow this one's in W_enc_T; the calls prefetch
      // them in turn, 2 kc floats each, so memory keeps streaming while the tiles compute.
      const float* pf = w;
      int64_t pf_left = 0;
      if constexpr (std::is_same_v<w_t, float>) {
        if (kc == d) pf = W + (fb + nb) * d, pf_left = std::max<int64_t>(0, std::min(blk.nb, f1 - fb - nb)) * d;
      }
      const auto tile = [&](int64_t t, int64_t r) {
        const int64_t mr = std::min<int64_t>(kTileTokens, N - t), nr = std::min<int64_t>(kTileFeatures, nb - r);
        const int64_t pn = std::min(pf_left, 2 * kc);
        const float* wr[kTileFeatures];
        for (int64_t q = 0; q < nr; ++q) wr[q] = w + (r + q) * ws;
        tiles.fn[mr - 1][nr - 1](xp + t * d + j0, d, wr, kc, c.data() + t * nb + r, nb, pf, pn);
        pf += pn, pf_left -= pn;
      };
      if (N <= 2 * kTileTokens) {  // few tokens: each weight tile meets them all while it is in L1
        for (int64_t r = 0; r < nb; r += kTileFeatures)
          for (int64_t t = 0; t < N; t += kTileTokens) tile(t, r);
      } else {  // a tile of tokens stays in L1 while the block's weights come from L2
        for (int64_t t = 0; t < N; t += kTileTokens)
          for (int64_t r = 0; r < nb; r += kTileFeatures) tile(t, r);
      }
    }
    // The epilogue: scores of the block's features, then only those that can enter a token's heap
    // (>= its current worst; NaN never) go through push(), which decides exactly.
    for (int64_t t = 0; t < N; ++t) {
      RowTopK& h = heaps[t];
      float* ct = c.data() + t * nb;
      for (int64_t r = 0; r < nb; ++r) ct[r] = score(ct[r], fb + r);
      float worst = h.worst();
      for (int64_t r = 0; r < nb; ++r) {
        if (ct[r] >= worst) {
          h.push(ct[r], fb + r);
          worst = h.worst();
        }
      }
    }
  }
}

// f(i) for every i in [0, n), the OpenMP threads each taking the next i as they finish one
// (schedule dynamic); inline with one thread or inside a parallel region. Exceptions as parallel_tasks.
template <typename F>
void parallel_dynamic(int64_t n, const F& f) {
  const int64_t threads = std::min<int64_t>(omp_get_max_threads(), n);
  if (threads <= 1 || omp_in_parallel()) {
    for (int64_t i = 0; i < n; ++i) f(i);
    return;
  }
  std::exception_ptr error;
#pragma omp parallel for num_threads(static_cast<int>(threads)) schedule(dynamic, 1)
  for (int64_t i = 0; i < n; ++i) {
    try {
      f(i);
    } catch (...) {
#pragma omp critical(saesteer_parallel_dynamic_error)
      if (!error) error = std::current_exception();
    }
  }
  if (error) std::rethrow_exception(error);
}

// heaps[p][n] for p in [0, P) hold the best of disjoint feature ranges; leaves the best k of their
// union in heaps[0][n] (exact: each part's best k contain the union's members from that part).
void merge_heaps(std::vector<std::vector<RowTopK>>& heaps, int64_t N, int64_t k) {
  if (heaps.size() < 2) return;
  parallel_tasks(N, 64, [&](int64_t n0, int64_t n1) {
    for (int64_t n = n0; n < n1; ++n) {
      std::vector<Scored>& all = heaps[0][n].heap;
      for (size_t p = 1; p < heaps.size(); ++p) all.insert(all.end(), heaps[p][n].heap.begin(), heaps[p][n].heap.end());
      if (static_cast<int64_t>(all.size()) > k) {
        std::nth_element(all.begin(), all.begin() + (k - 1), all.end(), better);
        all.resize(k);
      }
    }
  });
}

// ------------------------------------------------------------------------------------------------
// the kernels of csrc/cpu/kernels.h
// ------------------------------------------------------------------------------------------------
}  // namespace

void steer(const SteerArgs& a) {
  const Encoder& e = a.enc;
  const int64_t N = a.N, d = e.d_in;
  if (a.S == 0 || N == 0) {
    std::memcpy(a.out, a.x, N * d * element_size(a.x_dtype));
    return;
  }
  SteerProblem P{a.x, a.out, a.x_dtype, N, d, e.d_sae, e.apply_b_dec ? e.b_dec : nullptr,
                 FeatureParams(e.params, e.d_sae), e.arch, e.norm, a.k, a.features, a.S, a.mode, a.values,
                 std::max<int64_t>(a.tokens_per_row, 1), e.gemm, {}};
  P.active.reserve(N);
  for (int64_t n = 0; n < N; ++n) {
    if (a.token_mask == nullptr || a.token_mask[n]) {
      P.active.push_back(n);
    } else {
      copy_token(P, n);
    }
  }
  if (P.active.empty()) return;
  dispatch_weights(e.w_dtype, [&](auto tag) {
    using w_t = decltype(tag);
    const w_t* We = static_cast<const w_t*>(e.W_enc_T);
    const w_t* Wd = static_cast<const w_t*>(a.W_dec);
    if (e.arch == kTopK) {
      steer_topk<w_t>(P, We, Wd);
    } else {
      steer_subset<w_t>(P, We, Wd);
    }
  });
}

void encode_topk(const EncodeTopkArgs& a) {
  const Encoder& e = a.enc;
  const int64_t N = a.N, d = e.d_in, d_sae = e.d_sae, k = a.k;
  if (N == 0) return;
  const FeatureParams fp(e.params, d_sae);
  const float* b = e.apply_b_dec ? e.b_dec : nullptr;
  std::vector<float> xp(N * d);
  const size_t row_bytes = d * element_size(a.x_dtype);
  parallel_tasks(N, 16, [&](int64_t n0, int64_t n1) {
    std::vector<float> xr(d);
    for (int64_t n = n0; n < n1; ++n) {
      load_row(static_cast<const char*>(a.x) + n * row_bytes, a.x_dtype, xr.data(), d);
      normalize_row(xr.data(), xp.data() + n * d, d, e.norm, b);
    }
  });
  // topk SAE: select its own sae_k scores first; its activations are relu(score) there, 0 elsewhere.
  const int arch = e.arch;
  const int64_t sel_k = arch == kTopK ? a.sae_k : k;
  // The features go in parts of whole blocks, each at least ~1M multiply-adds: 4 per thread, taken
  // by the threads as they finish the previous, so that a thread descheduled on a shared machine
  // holds up a quarter of its share, not all of it. One per thread where 4 would make the parts'
  // heaps (16 bytes an entry) take more than 64 MB.
  const EncodeBlocking blk = encode_blocking(N, d);
  const int64_t nblocks = (d_sae + blk.nb - 1) / blk.nb;
  const int64_t min_blocks = std::max<int64_t>(1, (int64_t{1} << 20) / std::max<int64_t>(N * d * blk.nb, 1));
  const int64_t threads = omp_in_parallel() ? 1 : omp_get_max_threads();
  const int64_t per_thread = threads > 1 && 4 * threads * N * sel_k <= (int64_t{1} << 22) ? 4 : 1;
  const int64_t parts = std::max<int64_t>(1, std::min<int64_t>(per_thread * threads, nblocks / min_blocks));
  const int64_t per_part = (nblocks + parts - 1) / parts * blk.nb;
  std::vector<std::vector<RowTopK>> heaps(parts, std::vector<RowTopK>(N));
  for (auto& hp : heaps)
    for (auto& h : hp) h.reset(sel_k);
  // The architecture is a constant in each scorer, so the epilogue's score loop is branch-free.
  const auto topk_score = [&](float pre, int64_t i) { return (pre + fp.bias[i]) * fp.mag_scale[i]; };
  const auto gated_score = [&](float pre, int64_t i) { return activation(pre, i, kGated, fp); };
  const auto jump_score = [&](float pre, int64_t i) { return activation(pre, i, kJumpReLU, fp); };
  dispatch_weights(e.w_dtype, [&](auto tag) {
    using w_t = decltype(tag);
    const w_t* W = static_cast<const w_t*>(e.W_enc_T);
    parallel_dynamic(parts, [&](int64_t p) {
      const int64_t f0 = std::min(d_sae, p * per_part), f1 = std::min(d_sae, f0 + per_part);
      RowTopK* h = heaps[p].data();
      if (arch == kTopK) {
        encode_topk_range(xp.data(), N, d, W, f0, f1, blk, topk_score, h);
      } else if (arch == kGated) {
        encode_topk_range(xp.data(), N, d, W, f0, f1, blk, gated_score, h);
      } else {  // standard (threshold row 0) and jumprelu
        encode_topk_range(xp.data(), N, d, W, f0, f1, blk, jump_score, h);
      }
    });
  });
  merge_heaps(heaps, N, sel_k);
  std::vector<RowTopK>& top = heaps[0];
  const size_t out_row_bytes = k * element_size(a.x_dtype);
  parallel_tasks(N, 64, [&](int64_t n0, int64_t n1) {
    std::vector<float> vrow(k);
    std::vector<char> taken;
    for (int64_t n = n0; n < n1; ++n) {
      std::vector<Scored>& h = top[n].heap;
      if (arch == kTopK) {
        for (auto& s : h) s.v = s.v > 0.f ? s.v : 0.f;
      }
      std::sort(h.begin(), h.end(), better);
      int64_t* ip = a.out_ids + n * k;
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
        // The zeros (relu'd scores of the topk SAE and the padding) in id order, as every other tie.
        int64_t z = k;
        while (z > 0 && vrow[z - 1] == 0.f) --z;
        std::sort(ip + z, ip + k);
      }
      store_row(vrow.data(), static_cast<char*>(a.out_values) + n * out_row_bytes, a.x_dtype, k);
    }
  });
}

void trigger_score(const TriggerArgs& a) {
  const Encoder& e = a.enc;
  if (a.N == 0) return;
  if (a.S == 0) {
    std::fill(a.out, a.out + a.N, 0.f);
    return;
  }
  SteerProblem P{a.x, nullptr, a.x_dtype, a.N, e.d_in, e.d_sae, e.apply_b_dec ? e.b_dec : nullptr,
                 FeatureParams(e.params, e.d_sae), e.arch, e.norm, a.k, a.features, a.S, kAblate, nullptr,
                 1, e.gemm, {}};
  P.active.resize(a.N);
  for (int64_t n = 0; n < a.N; ++n) P.active[n] = n;
  dispatch_weights(e.w_dtype, [&](auto tag) {
    using w_t = decltype(tag);
    trigger_subset<w_t>(P, static_cast<const w_t*>(e.W_enc_T), a.weights, a.out);
  });
}

void decode_sparse(const DecodeSparseArgs& a) {
  const int64_t N = a.N, K = a.K, d = a.d_in;
  if (N == 0) return;
  const float* dec_scale = a.params + kDecScale * a.d_sae;
  const size_t v_row_bytes = K * element_size(a.v_dtype), out_row_bytes = d * element_size(a.v_dtype);
  dispatch_weights(a.w_dtype, [&](auto tag) {
    using w_t = decltype(tag);
    const w_t* Wd = static_cast<const w_t*>(a.W_dec);
    const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 16) / std::max<int64_t>(K * d * 2, 1));
    parallel_tasks(N, grain, [&](int64_t n0, int64_t n1) {
      std::vector<float> acc(d), vr(std::max<int64_t>(K, 1)), rows(4 * d);
      std::vector<int64_t> live;
      for (int64_t n = n0; n < n1; ++n) {
        load_row(static_cast<const char*>(a.values) + n * v_row_bytes, a.v_dtype, vr.data(), K);
        const int64_t* in = a.ids + n * K;
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
        for (int64_t j = 0; j < d; ++j) acc[j] += a.b_dec[j];
        store_row(acc.data(), static_cast<char*>(a.out) + n * out_row_bytes, a.v_dtype, d);
      }
    });
  });
}

}  // namespace cpu
}  // namespace saesteer
