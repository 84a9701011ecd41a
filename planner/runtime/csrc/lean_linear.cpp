// specplan::linear — the CPU decode step's matrix-vector kernel.
//
// y (M, N) = x (M, K) . W (N, K)^T + b for bf16 or fp32 x, W, b (nn.Linear's layout, used as
// stored: no repacking). Every output is one dot product with its own fp32 accumulator
// vector, summed over K in order, then reduced across lanes, then the bias added: the same
// operations whatever M is and whichever rows share a block, so a k-token verify step computes
// each token's row exactly as a one-token step does (batch-invariant by construction).
// W is read once per call: blocks of four rows are split over torch's intra-op threads, each
// block is multiplied with every row of x (two at a time) while it sits in L1, and the next
// block is prefetched meanwhile (+35% read bandwidth here: BENCHMARKS.md, "A lean CPU step").
// Instruction sets: AVX-512 BF16 (vdpbf16ps on bf16 pairs), AVX-512F or AVX2+FMA (bf16
// widened to fp32, then FMA); elsewhere `simd_width()` is 0 and the runtime keeps torch's linear.
// Built on first use with -march=native -fopenmp (planner/runtime/kernels.py).

#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <cstdint>
#include <cstring>
#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace {

using bf16 = c10::BFloat16;
constexpr int64_t kBlock = 4;  // W rows per block

#if defined(__AVX512F__)
constexpr int64_t kWidth = 16;  // fp32 lanes
using Acc = __m512;
inline Acc zero() { return _mm512_setzero_ps(); }
inline float reduce(Acc a) { return _mm512_reduce_add_ps(a); }
inline Acc widen(const bf16* p) {
  __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}
inline Acc fma_step(Acc a, const float* x, const float* w) { return _mm512_fmadd_ps(_mm512_loadu_ps(x), _mm512_loadu_ps(w), a); }
inline Acc fma_step(Acc a, const bf16* x, const bf16* w) { return _mm512_fmadd_ps(widen(x), widen(w), a); }
#elif defined(__AVX2__) && defined(__FMA__)
constexpr int64_t kWidth = 8;
using Acc = __m256;
inline Acc zero() { return _mm256_setzero_ps(); }
inline float reduce(Acc a) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}
inline Acc widen(const bf16* p) {
  __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}
inline Acc fma_step(Acc a, const float* x, const float* w) { return _mm256_fmadd_ps(_mm256_loadu_ps(x), _mm256_loadu_ps(w), a); }
inline Acc fma_step(Acc a, const bf16* x, const bf16* w) { return _mm256_fmadd_ps(widen(x), widen(w), a); }
#else
constexpr int64_t kWidth = 0;
#endif

// Elements per vector step: vdpbf16ps takes 32 bf16 (16 pairs) into 16 fp32 lanes.
template <typename T>
constexpr int64_t step_elems() {
#if defined(__AVX512BF16__)
  if constexpr (std::is_same_v<T, bf16>) return 32;
#endif
  return kWidth;
}

// MT rows of x times R rows of W (w, w + K, ...): out[m * R + r] = sum_k x_m[k] w_r[k], each
// with its own accumulator, in the same order whatever MT, R and the other rows are. While a
// block is multiplied, the next block of W (`ahead`) is prefetched into L1.
template <typename T, int64_t MT, int64_t R>
inline void dot_tile(const T* x, const T* w, const T* ahead, int64_t K, float* out) {
  constexpr int64_t S = step_elems<T>();
  int64_t k = 0;
  for (int64_t i = 0; i < MT * R; ++i) out[i] = 0.f;
#if defined(__AVX512F__) || (defined(__AVX2__) && defined(__FMA__))
  Acc acc[MT * R];
  for (int64_t i = 0; i < MT * R; ++i) acc[i] = zero();
  for (; k + S <= K; k += S) {
    if (ahead)
      for (int64_t r = 0; r < R; ++r) _mm_prefetch(reinterpret_cast<const char*>(ahead + r * K + k), _MM_HINT_T0);
#if defined(__AVX512BF16__)
    if constexpr (std::is_same_v<T, bf16>) {
      for (int64_t r = 0; r < R; ++r) {
        __m512bh wv = (__m512bh)_mm512_loadu_si512(w + r * K + k);
        for (int64_t m = 0; m < MT; ++m)
          acc[m * R + r] = _mm512_dpbf16_ps(acc[m * R + r], (__m512bh)_mm512_loadu_si512(x + m * K + k), wv);
      }
      continue;
    }
#endif
    for (int64_t r = 0; r < R; ++r)
      for (int64_t m = 0; m < MT; ++m) acc[m * R + r] = fma_step(acc[m * R + r], x + m * K + k, w + r * K + k);
  }
  for (int64_t i = 0; i < MT * R; ++i) out[i] = reduce(acc[i]);
#endif
  for (; k < K; ++k)  // the tail (or every element without SIMD), in order
    for (int64_t m = 0; m < MT; ++m)
      for (int64_t r = 0; r < R; ++r) out[m * R + r] += float(x[m * K + k]) * float(w[r * K + k]);
}

template <typename T>
void rows(const T* x, const T* w, const T* b, T* y, int64_t M, int64_t N, int64_t K) {
  constexpr int64_t MT = 2;  // rows of x per tile
  const int64_t blocks = (N + kBlock - 1) / kBlock;
  at::parallel_for(0, blocks, 16, [&](int64_t b0, int64_t b1) {
    float out[MT * kBlock];
    for (int64_t blk = b0; blk < b1; ++blk) {
      const int64_t n0 = blk * kBlock, rows_here = std::min(kBlock, N - n0);
      const T* ahead = blk + 1 < b1 && (blk + 2) * kBlock <= N ? w + (n0 + kBlock) * K : nullptr;
      for (int64_t m0 = 0; m0 < M; m0 += MT) {
        const int64_t ms = std::min(MT, M - m0);
        if (rows_here == kBlock && ms == MT) {
          dot_tile<T, MT, kBlock>(x + m0 * K, w + n0 * K, ahead, K, out);
        } else if (rows_here == kBlock) {
          dot_tile<T, 1, kBlock>(x + m0 * K, w + n0 * K, ahead, K, out);
        } else {
          for (int64_t m = 0; m < ms; ++m)
            for (int64_t r = 0; r < rows_here; ++r) dot_tile<T, 1, 1>(x + (m0 + m) * K, w + (n0 + r) * K, nullptr, K, out + m * kBlock + r);
        }
        for (int64_t m = 0; m < ms; ++m)
          for (int64_t r = 0; r < rows_here; ++r)
            y[(m0 + m) * N + n0 + r] = T(out[m * kBlock + r] + (b ? float(b[n0 + r]) : 0.f));
      }
    }
  });
}

at::Tensor linear_cpu(const at::Tensor& x, const at::Tensor& weight, const c10::optional<at::Tensor>& bias) {
  TORCH_CHECK(weight.dim() == 2 && weight.is_contiguous(), "specplan::linear: weight must be a contiguous (N, K) matrix");
  TORCH_CHECK(x.scalar_type() == weight.scalar_type(), "specplan::linear: x and weight dtypes differ");
  const int64_t N = weight.size(0), K = weight.size(1);
  TORCH_CHECK(x.size(-1) == K, "specplan::linear: x's last dimension is not the weight's in-features");
  const bool has_bias = bias.has_value() && bias->defined();
  auto x2 = x.reshape({-1, K}).contiguous();
  auto b = has_bias ? bias->to(x.scalar_type()).contiguous() : at::Tensor();
  const int64_t M = x2.size(0);
  auto y = at::empty({M, N}, x.options());
  if (x.scalar_type() == at::kBFloat16) {
    rows(x2.data_ptr<bf16>(), weight.data_ptr<bf16>(), has_bias ? b.data_ptr<bf16>() : nullptr, y.data_ptr<bf16>(), M, N, K);
  } else {
    TORCH_CHECK(x.scalar_type() == at::kFloat, "specplan::linear: dtype must be bf16 or fp32");
    rows(x2.data_ptr<float>(), weight.data_ptr<float>(), has_bias ? b.data_ptr<float>() : nullptr, y.data_ptr<float>(), M, N, K);
  }
  auto shape = x.sizes().vec();
  shape.back() = N;
  return y.view(shape);
}

at::Tensor linear_meta(const at::Tensor& x, const at::Tensor& weight, const c10::optional<at::Tensor>& bias) {
  auto shape = x.sizes().vec();
  shape.back() = weight.size(0);
  return at::empty(shape, x.options());
}

int64_t simd_width() { return kWidth; }

}  // namespace

TORCH_LIBRARY(specplan, m) {
  m.def("linear(Tensor x, Tensor weight, Tensor? bias) -> Tensor");
  m.def("simd_width() -> int", simd_width);
}
TORCH_LIBRARY_IMPL(specplan, CPU, m) { m.impl("linear", linear_cpu); }
TORCH_LIBRARY_IMPL(specplan, Meta, m) { m.impl("linear", linear_meta); }
