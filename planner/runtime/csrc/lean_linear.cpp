// specplan::linear — the CPU decode step's matrix-vector kernel; specplan::linears runs several
// projections of the same x in one call (q, k and v), specplan::silu_gated_linear a gated MLP's
// silu(gate) * up.
//
// y (M, N) = x (M, K) . W (N, K)^T + b for bf16 or fp32 x, W, b (nn.Linear's layout, used as
// stored: no repacking). Every output is one dot product with its own fp32 accumulator
// vector, summed over K in order, then reduced across lanes, then the bias added: the same
// operations whatever M is and whichever rows share a block, so a k-token verify step computes
// each token's row exactly as a one-token step does (batch-invariant by construction).
// W is read once per call: blocks of four rows are split over torch's intra-op threads, each
// block is multiplied with every row of x (four at a time) while it sits in L1, and the next
// block is prefetched meanwhile (+35% read bandwidth here: BENCHMARKS.md, "A lean CPU step").
// Instruction sets: AMX tiles for bf16 where the CPU has them and K is a multiple of 32 (blocks
// of 16 rows of W, x's rows as a tile's columns: a k-token verify costs about what one token
// does, where the vector kernel's arithmetic grew with k; BENCHMARKS.md, "AMX tiles"), else
// AVX-512 BF16 (vdpbf16ps on bf16 pairs), AVX-512F or AVX2+FMA (bf16 widened to fp32, then
// FMA); elsewhere `simd_width()` is 0 and the runtime keeps torch's linear. The AMX and vector
// kernels sum in different orders, so each is batch-invariant on its own, and a process uses
// one of them (SPECPLAN_AMX=0 chooses the vector kernel).
// Built on first use with -march=native -fopenmp (planner/runtime/kernels.py).

#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <cstdint>
#include <cmath>
#include <cstring>
#include <atomic>
#include <cctype>
#include <cstdlib>
#include <string>
#include <vector>
#include "lean_vec.h"
#if defined(__x86_64__)
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif

namespace {

using namespace specplan_vec;

using bf16 = c10::BFloat16;
constexpr int64_t kBlock = 4;  // W rows per block
constexpr int64_t kTileRows = 4;  // most rows of x multiplied with a block at once

#if defined(__AVX512F__)
constexpr int64_t kWidth = 16;  // fp32 lanes
using Acc = __m512;
inline Acc zero() { return _mm512_setzero_ps(); }
inline float reduce(Acc a) { return _mm512_reduce_add_ps(a); }
inline Acc fma_step(Acc a, const float* x, const float* w) { return _mm512_fmadd_ps(_mm512_loadu_ps(x), _mm512_loadu_ps(w), a); }
inline Acc fma_step(Acc a, const bf16* x, const bf16* w) { return _mm512_fmadd_ps(widen16(x), widen16(w), a); }
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
      __m512bh xv[MT];
      for (int64_t m = 0; m < MT; ++m) xv[m] = (__m512bh)_mm512_loadu_si512(x + m * K + k);
      for (int64_t r = 0; r < R; ++r) {
        const __m512bh wv = (__m512bh)_mm512_loadu_si512(w + r * K + k);
        for (int64_t m = 0; m < MT; ++m) acc[m * R + r] = _mm512_dpbf16_ps(acc[m * R + r], xv[m], wv);
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

// One weight matrix of a call: W (N, K), optional bias, output y (M, N).
template <typename T>
struct Matrix {
  const T* w;
  const T* b;
  T* y;
  int64_t N;
};

// ms (1, 2 or kTileRows) rows of x times a block of `rows_here` rows of W into out[m * kBlock + r].
template <typename T>
void tile(const T* x, const T* w, const T* ahead, int64_t K, int64_t ms, int64_t rows_here, float* out) {
  if (rows_here == kBlock && ms == kTileRows) {
    dot_tile<T, kTileRows, kBlock>(x, w, ahead, K, out);
  } else if (rows_here == kBlock && ms == 2) {
    dot_tile<T, 2, kBlock>(x, w, ahead, K, out);
  } else if (rows_here == kBlock) {
    dot_tile<T, 1, kBlock>(x, w, ahead, K, out);
  } else {
    for (int64_t m = 0; m < ms; ++m)
      for (int64_t r = 0; r < rows_here; ++r) dot_tile<T, 1, 1>(x + m * K, w + r * K, nullptr, K, out + m * kBlock + r);
  }
}

#if defined(__AMX_TILE__) && defined(__AMX_BF16__)
// AMX (Intel's tile unit, Sapphire Rapids and later): a 16-row block of W times up to 16 rows
// of x per tile multiply, C^T (16, 16) += W_block (16, 32) . X^T (32, 16) over K in steps of 32.
// W's rows are the A tile, loaded as stored (stride K); x, which is small, is repacked once per
// call into the B tile's pair-interleaved layout, padded to 16 columns with zeros. Each output
// C[n][m] is its own sum over K in order, whatever the other rows and columns hold, so the
// kernel stays batch-invariant; matrices whose K is not a multiple of 32, and the rows of a
// matrix past its last whole block of 16, take the vector kernel for every M alike.
constexpr int64_t kAmxRows = 16;  // W rows per tile (A's rows), x rows per tile (B's columns)
constexpr int64_t kAmxK = 32;     // bf16 elements of K per tile multiply

struct alignas(64) TileConfig {
  uint8_t palette = 1, start_row = 0, reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};

// Whether this process may use the tile registers: Linux grants the tile state on request
// (arch_prctl ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA); SPECPLAN_AMX=0 (or false, no, off) turns AMX off, and
// specplan::set_amx switches it for benchmarks (never between the steps of one decoding: the
// two kernels sum in different orders).
bool amx_granted() {
  static const bool ok = syscall(SYS_arch_prctl, 0x1023 /* ARCH_REQ_XCOMP_PERM */, 18 /* XFEATURE_XTILEDATA */) == 0;
  return ok;
}
std::atomic<bool> amx_on{[] {
  const char* env = std::getenv("SPECPLAN_AMX");
  std::string value = env ? env : "";
  for (char& c : value) c = char(std::tolower(static_cast<unsigned char>(c)));
  return !(value == "0" || value == "false" || value == "no" || value == "off");
}()};
bool amx_enabled() { return amx_on.load(std::memory_order_relaxed) && amx_granted(); }
bool set_amx(bool on) {
  amx_on = on;
  return amx_enabled();
}

// Columns of a B (and C) tile: x's rows, up to 16. A tile multiply takes the same time
// however many columns it has, but its B load does not: a one-token step loads 64 bytes of x per
// 32 of K, not 1 KB (measured: as fast as the vector kernel at one row, BENCHMARKS.md).
int64_t amx_columns(int64_t M) { return std::min(M, kAmxRows); }

// x (M, K) as B tiles: for each block of `cols` rows of x and each step of 32 along K, 16 pair
// rows of `cols` columns, (x[m][k0 + 2p], x[m][k0 + 2p + 1]) at [p][m]; rows past M are zeros.
std::vector<bf16> pack_x(const bf16* x, int64_t M, int64_t K, int64_t cols) {
  const int64_t mblocks = (M + cols - 1) / cols, ksteps = K / kAmxK;
  std::vector<bf16> packed(mblocks * ksteps * (kAmxK / 2) * cols * 2, bf16(0.f));
  for (int64_t m = 0; m < M; ++m) {
    const int64_t mb = m / cols, col = m % cols;
    for (int64_t k = 0; k < K; ++k) {
      const int64_t s = k / kAmxK, p = (k % kAmxK) / 2;
      packed[((mb * ksteps + s) * (kAmxK / 2) + p) * cols * 2 + col * 2 + (k & 1)] = x[m * K + k];
    }
  }
  return packed;
}

// The tiles of one call: C^T (16 W rows x cols rows of x, fp32) in tile 0, 16 W rows x 32 of K
// in tile 1, 16 pairs of K x cols rows of x in tile 2.
void configure_tiles(int64_t cols) {
  TileConfig cfg;
  cfg.rows[0] = kAmxRows; cfg.colsb[0] = cols * sizeof(float);
  cfg.rows[1] = kAmxRows; cfg.colsb[1] = kAmxK * sizeof(bf16);
  cfg.rows[2] = kAmxK / 2; cfg.colsb[2] = cols * 2 * sizeof(bf16);
  _tile_loadconfig(&cfg);
}

// One block of 16 rows of W (w) times every block of x (packed by pack_x), written to y with
// the bias. `ahead` (the next block, or null) is prefetched meanwhile.
void amx_block(const bf16* w, const bf16* ahead, const bf16* xp, int64_t M, int64_t K, int64_t cols, const bf16* b,
               bf16* y, int64_t N, int64_t n0) {
  const int64_t ksteps = K / kAmxK, xstep = (kAmxK / 2) * cols * 2;
  alignas(64) float c[kAmxRows * kAmxRows];
  for (int64_t m0 = 0; m0 < M; m0 += cols) {
    const bf16* xb = xp + (m0 / cols) * ksteps * xstep;
    _tile_zero(0);
    for (int64_t s = 0; s < ksteps; ++s) {
      if (ahead && m0 == 0)
        for (int64_t r = 0; r < kAmxRows; ++r) _mm_prefetch(reinterpret_cast<const char*>(ahead + r * K + s * kAmxK), _MM_HINT_T0);
      _tile_loadd(1, w + s * kAmxK, K * sizeof(bf16));
      _tile_loadd(2, xb + s * xstep, cols * 2 * sizeof(bf16));
      _tile_dpbf16ps(0, 1, 2);
    }
    _tile_stored(0, c, cols * sizeof(float));
    const int64_t ms = std::min(cols, M - m0);
    for (int64_t m = 0; m < ms; ++m)
      for (int64_t r = 0; r < kAmxRows; ++r)
        y[(m0 + m) * N + n0 + r] = bf16(c[r * cols + m] + (b ? float(b[n0 + r]) : 0.f));
  }
}
#else
bool amx_enabled() { return false; }
bool set_amx(bool) { return false; }
#endif

// Rows of W per block of work for a matrix: 16 (one AMX tile) where AMX runs it, else kBlock.
template <typename T>
int64_t block_rows(int64_t K) {
#if defined(__AMX_TILE__) && defined(__AMX_BF16__)
  if (std::is_same_v<T, bf16> && K % kAmxK == 0 && amx_enabled()) return kAmxRows;
#endif
  return kBlock;
}

// Rows n0 .. n0 + rows_here of one matrix with the vector kernel, every row of x.
template <typename T>
void vector_block(const T* x, const Matrix<T>& mat, const T* ahead, int64_t M, int64_t K, int64_t n0, int64_t rows_here) {
  float out[kTileRows * kBlock];
  const T* w = mat.w;
  const int64_t N = mat.N;
  for (int64_t q0 = n0; q0 < n0 + rows_here; q0 += kBlock) {
    const int64_t q = std::min(kBlock, n0 + rows_here - q0);
    const T* next = q0 + kBlock < n0 + rows_here ? nullptr : ahead;
    for (int64_t m0 = 0, ms; m0 < M; m0 += ms) {
      ms = M - m0 >= kTileRows ? kTileRows : M - m0 >= 2 ? 2 : 1;  // rows of x in this tile
      tile(x + m0 * K, w + q0 * K, next, K, ms, q, out);
      for (int64_t m = 0; m < ms; ++m)
        for (int64_t r = 0; r < q; ++r)
          mat.y[(m0 + m) * N + q0 + r] = T(out[m * kBlock + r] + (mat.b ? float(mat.b[q0 + r]) : 0.f));
    }
  }
}

// y_i = x W_i^T + b_i for every matrix of the call, their blocks of rows split over torch's
// threads in one parallel region (several projections of the same x cost one dispatch).
template <typename T>
void rows(const T* x, const std::vector<Matrix<T>>& mats, int64_t M, int64_t K) {
  if (M == 0) return;  // no rows: nothing to write (and no tile of zero columns)
  const int64_t brows = block_rows<T>(K);
  std::vector<int64_t> first_block(mats.size() + 1, 0);  // global block index of each matrix's first block
  for (size_t i = 0; i < mats.size(); ++i) first_block[i + 1] = first_block[i] + (mats[i].N + brows - 1) / brows;
#if defined(__AMX_TILE__) && defined(__AMX_BF16__)
  std::vector<bf16> packed;
  if constexpr (std::is_same_v<T, bf16>)
    if (brows == kAmxRows) packed = pack_x(x, M, K, amx_columns(M));
#endif
  at::parallel_for(0, first_block.back(), brows == kBlock ? 16 : 4, [&](int64_t b0, int64_t b1) {
    size_t i = 0;
    bool tiles_set = false;
    for (int64_t g = b0; g < b1; ++g) {
      while (g >= first_block[i + 1]) ++i;
      const Matrix<T>& mat = mats[i];
      const T* w = mat.w;
      const int64_t N = mat.N, blk = g - first_block[i];
      const int64_t n0 = blk * brows, rows_here = std::min(brows, N - n0);
      const T* ahead = g + 1 < b1 && (blk + 2) * brows <= N ? w + (n0 + brows) * K : nullptr;
#if defined(__AMX_TILE__) && defined(__AMX_BF16__)
      if constexpr (std::is_same_v<T, bf16>) {
        if (brows == kAmxRows && rows_here == kAmxRows) {
          if (!tiles_set) {
            configure_tiles(amx_columns(M));
            tiles_set = true;
          }
          amx_block(w + n0 * K, ahead, packed.data(), M, K, amx_columns(M), mat.b, mat.y, N, n0);
          continue;
        }
      }
#endif
      vector_block(x, mat, ahead, M, K, n0, rows_here);
    }
#if defined(__AMX_TILE__) && defined(__AMX_BF16__)
    if (tiles_set) _tile_release();
#endif
  });
}

}  // namespace

// Called by specplan::decoder_layer (lean_step.cpp) as well as registered below.
namespace specplan_impl {

using namespace specplan_vec;

// x (..., K) times each (N_i, K) weight: outputs (..., N_i), in x's dtype.
std::vector<at::Tensor> linears_cpu(const at::Tensor& x, at::TensorList weights, const c10::List<c10::optional<at::Tensor>>& biases) {
  TORCH_CHECK(!weights.empty() && biases.size() == weights.size(), "specplan::linears: one bias (or None) per weight");
  const int64_t K = x.size(-1);
  TORCH_CHECK(x.scalar_type() == at::kBFloat16 || x.scalar_type() == at::kFloat, "specplan::linear: dtype must be bf16 or fp32");
  auto x2 = x.reshape({-1, K}).contiguous();
  const int64_t M = x2.size(0);
  std::vector<at::Tensor> ys, bs;
  for (size_t i = 0; i < weights.size(); ++i) {
    const at::Tensor& w = weights[i];
    TORCH_CHECK(w.dim() == 2 && w.is_contiguous(), "specplan::linear: weight must be a contiguous (N, K) matrix");
    TORCH_CHECK(x.scalar_type() == w.scalar_type(), "specplan::linear: x and weight dtypes differ");
    TORCH_CHECK(w.size(1) == K, "specplan::linear: x's last dimension is not the weight's in-features");
    c10::optional<at::Tensor> b = biases.get(i);
    bs.push_back(b.has_value() && b->defined() ? b->to(x.scalar_type()).contiguous() : at::Tensor());
    ys.push_back(at::empty({M, w.size(0)}, x.options()));
  }
  AT_DISPATCH_SWITCH(x.scalar_type(), "specplan::linears",
    AT_DISPATCH_CASE(at::kBFloat16, [&] {
      std::vector<Matrix<bf16>> mats;
      for (size_t i = 0; i < weights.size(); ++i)
        mats.push_back({weights[i].data_ptr<bf16>(), bs[i].defined() ? bs[i].data_ptr<bf16>() : nullptr, ys[i].data_ptr<bf16>(), weights[i].size(0)});
      rows(x2.data_ptr<bf16>(), mats, M, K);
    })
    AT_DISPATCH_CASE(at::kFloat, [&] {
      std::vector<Matrix<float>> mats;
      for (size_t i = 0; i < weights.size(); ++i)
        mats.push_back({weights[i].data_ptr<float>(), bs[i].defined() ? bs[i].data_ptr<float>() : nullptr, ys[i].data_ptr<float>(), weights[i].size(0)});
      rows(x2.data_ptr<float>(), mats, M, K);
    }));
  for (size_t i = 0; i < ys.size(); ++i) {
    auto shape = x.sizes().vec();
    shape.back() = weights[i].size(0);
    ys[i] = ys[i].view(shape);
  }
  return ys;
}

at::Tensor linear_cpu(const at::Tensor& x, const at::Tensor& weight, const c10::optional<at::Tensor>& bias) {
  c10::List<c10::optional<at::Tensor>> biases;
  biases.push_back(bias);
  return linears_cpu(x, {weight}, biases)[0];
}

// silu(gate) * up in place of gate (same shapes), rounded where transformers' ops round in
// Llama's MLP (act_fn(gate_proj(x)) * up_proj(x)): silu, then the product.
// g = silu(g) * u over n elements: a / (1 + exp(-a)), rounded to T, times u, rounded to T. Where
// AVX-512 is, 16 at a time with exp16 (the tail through the same function, padded), so an
// element's result does not depend on where it sits; std::exp elsewhere.
template <typename T>
void silu_mul_rows(T* g, const T* u, int64_t n) {
  constexpr bool kBf16 = std::is_same_v<T, bf16>;
  int64_t i = 0;
#if defined(__AVX512F__)
  const __m512 one = _mm512_set1_ps(1.f);
  auto silu_times = [&](__m512 a, __m512 b) {
    __m512 s = _mm512_div_ps(a, _mm512_add_ps(one, exp16(_mm512_sub_ps(_mm512_setzero_ps(), a))));
    if (kBf16) s = round_bf16(s);
    const __m512 y = _mm512_mul_ps(s, b);
    return kBf16 ? round_bf16(y) : y;
  };
  for (; i + 16 <= n; i += 16) store16(g + i, silu_times(widen16(g + i), widen16(u + i)));
  if (i < n) {
    alignas(64) float a[16] = {}, b[16] = {}, y[16];
    for (int64_t j = i; j < n; ++j) { a[j - i] = float(g[j]); b[j - i] = float(u[j]); }
    _mm512_store_ps(y, silu_times(_mm512_load_ps(a), _mm512_load_ps(b)));
    for (int64_t j = i; j < n; ++j) g[j] = T(y[j - i]);  // already T's values: exact
  }
#else
  for (; i < n; ++i) {
    const float a = float(g[i]);
    g[i] = T(float(T(a / (1.f + std::exp(-a)))) * float(u[i]));
  }
#endif
}

at::Tensor silu_mul_cpu(at::Tensor gate, const at::Tensor& up_in) {
  TORCH_CHECK(gate.sizes() == up_in.sizes() && gate.scalar_type() == up_in.scalar_type(), "specplan::silu_mul: gate and up differ");
  gate = gate.contiguous();
  auto up = up_in.contiguous();
  AT_DISPATCH_SWITCH(gate.scalar_type(), "specplan::silu_mul",
    AT_DISPATCH_CASE(at::kBFloat16, [&] { silu_mul_rows(gate.data_ptr<bf16>(), up.data_ptr<bf16>(), gate.numel()); })
    AT_DISPATCH_CASE(at::kFloat, [&] { silu_mul_rows(gate.data_ptr<float>(), up.data_ptr<float>(), gate.numel()); }));
  return gate;
}

// silu(x W_gate^T + b_gate) * (x W_up^T + b_up), the gated MLP's first half (Llama's
// down_proj(act_fn(gate_proj(x)) * up_proj(x))) in one call.
at::Tensor silu_gated_linear_cpu(const at::Tensor& x, const at::Tensor& w_gate, const c10::optional<at::Tensor>& b_gate,
                                 const at::Tensor& w_up, const c10::optional<at::Tensor>& b_up) {
  c10::List<c10::optional<at::Tensor>> biases;
  biases.push_back(b_gate);
  biases.push_back(b_up);
  auto ys = linears_cpu(x, {w_gate, w_up}, biases);
  TORCH_CHECK(ys[0].sizes() == ys[1].sizes(), "specplan::silu_gated_linear: gate and up widths differ");
  return silu_mul_cpu(ys[0], ys[1]);
}

// A LoRA term added to a projection y (..., N) in place: y + B (x A^T) * scaling, given low =
// x A^T (..., r) and B transposed, bt (r, N), rounded where peft's ops round (B's projection,
// the product with scaling, then the sum). B's projection has only r (the rank) terms per
// output: it runs over the outputs (16 at a time, the r terms summed in order, a multiply then
// an add as the scalar tail does), on one thread (a few thousand multiply-adds: a parallel
// region's hand-off would cost more).

template <typename T>
void add_low_rank(T* y, const T* low, const T* bt, int64_t M, int64_t N, int64_t r, float scaling) {
  constexpr bool kBf16 = std::is_same_v<T, bf16>;
  for (int64_t m = 0; m < M; ++m) {
    T* ym = y + m * N;
    int64_t n = 0;
#if defined(__AVX512F__)
    const __m512 sc = _mm512_set1_ps(scaling);
    for (; n + 16 <= N; n += 16) {
      __m512 acc = _mm512_setzero_ps();
      for (int64_t j = 0; j < r; ++j) acc = _mm512_add_ps(acc, _mm512_mul_ps(_mm512_set1_ps(float(low[m * r + j])), widen16(bt + j * N + n)));
      __m512 term = kBf16 ? round_bf16(_mm512_mul_ps(round_bf16(acc), sc)) : _mm512_mul_ps(acc, sc);
      __m512 sum = _mm512_add_ps(widen16(ym + n), term);
      store16(ym + n, kBf16 ? round_bf16(sum) : sum);
    }
#endif
    for (; n < N; ++n) {
      float acc = 0.f;
      for (int64_t j = 0; j < r; ++j) acc += float(low[m * r + j]) * float(bt[j * N + n]);
      ym[n] = T(float(ym[n]) + float(T(float(T(acc)) * scaling)));
    }
  }
}

void add_lora_cpu(at::Tensor& y, const at::Tensor& low_in, const at::Tensor& lora_bt, double scaling) {
  TORCH_CHECK(lora_bt.dim() == 2 && lora_bt.size(1) == y.size(-1) && lora_bt.size(0) == low_in.size(-1) && lora_bt.is_contiguous(),
              "specplan::lora_linear: B transposed must be a contiguous (rank, out_features) matrix");
  TORCH_CHECK(lora_bt.scalar_type() == y.scalar_type(), "specplan::lora_linear: lora_b's dtype is not x's");
  TORCH_CHECK(y.is_contiguous(), "specplan::lora_linear: the projection must be contiguous");
  auto low = low_in.contiguous();
  const int64_t N = y.size(-1), r = low.size(-1), M = y.numel() / N;
  AT_DISPATCH_SWITCH(y.scalar_type(), "specplan::lora_linear",
    AT_DISPATCH_CASE(at::kBFloat16, [&] {
      add_low_rank(y.data_ptr<bf16>(), low.data_ptr<bf16>(), lora_bt.data_ptr<bf16>(), M, N, r, float(scaling));
    })
    AT_DISPATCH_CASE(at::kFloat, [&] {
      add_low_rank(y.data_ptr<float>(), low.data_ptr<float>(), lora_bt.data_ptr<float>(), M, N, r, float(scaling));
    }));
}

}  // namespace specplan_impl

namespace {

using namespace specplan_impl;

// A LoRA-adapted linear, peft's result + lora_B(lora_A(x)) * scaling, in one call: the base
// projection and x A^T (rank r) in one pass of the lean kernel, then B's term added
// (add_lora_cpu). For S3D drafts only: the verify never runs an adapter.
at::Tensor lora_linear_cpu(const at::Tensor& x, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
                           const at::Tensor& lora_a, const at::Tensor& lora_b, double scaling) {
  c10::List<c10::optional<at::Tensor>> biases;
  biases.push_back(bias);
  biases.push_back(c10::nullopt);
  TORCH_CHECK(lora_b.dim() == 2 && lora_b.size(1) == lora_a.size(0) && lora_b.size(0) == weight.size(0),
              "specplan::lora_linear: lora_b must be (out_features, rank) for lora_a (rank, in_features)");
  auto ys = linears_cpu(x, {weight, lora_a}, biases);  // (..., N) and (..., r), each rounded as its module's output is
  add_lora_cpu(ys[0], ys[1], lora_b.t().contiguous(), scaling);
  return ys[0];
}

at::Tensor linear_meta(const at::Tensor& x, const at::Tensor& weight, const c10::optional<at::Tensor>& bias) {
  auto shape = x.sizes().vec();
  shape.back() = weight.size(0);
  return at::empty(shape, x.options());
}

std::vector<at::Tensor> linears_meta(const at::Tensor& x, at::TensorList weights, const c10::List<c10::optional<at::Tensor>>&) {
  std::vector<at::Tensor> ys;
  for (const auto& w : weights) ys.push_back(linear_meta(x, w, c10::nullopt));
  return ys;
}

at::Tensor lora_linear_meta(const at::Tensor& x, const at::Tensor& weight, const c10::optional<at::Tensor>&,
                            const at::Tensor&, const at::Tensor&, double) {
  return linear_meta(x, weight, c10::nullopt);
}

at::Tensor silu_gated_linear_meta(const at::Tensor& x, const at::Tensor& w_gate, const c10::optional<at::Tensor>&,
                                  const at::Tensor&, const c10::optional<at::Tensor>&) {
  return linear_meta(x, w_gate, c10::nullopt);
}

int64_t simd_width() { return kWidth; }
bool amx() { return amx_enabled(); }

}  // namespace

at::Tensor silu_mul_meta(const at::Tensor& gate, const at::Tensor&) { return at::empty_like(gate); }

TORCH_LIBRARY(specplan, m) {
  m.def("linear(Tensor x, Tensor weight, Tensor? bias) -> Tensor");
  m.def("silu_mul(Tensor gate, Tensor up) -> Tensor");
  m.def("linears(Tensor x, Tensor[] weights, Tensor?[] biases) -> Tensor[]");
  m.def("silu_gated_linear(Tensor x, Tensor w_gate, Tensor? b_gate, Tensor w_up, Tensor? b_up) -> Tensor");
  m.def("lora_linear(Tensor x, Tensor weight, Tensor? bias, Tensor lora_a, Tensor lora_b, float scaling) -> Tensor");
  m.def("simd_width() -> int", simd_width);
  m.def("amx() -> bool", amx);
  m.def("set_amx(bool on) -> bool", set_amx);
}
TORCH_LIBRARY_IMPL(specplan, CPU, m) {
  m.impl("linear", linear_cpu);
  m.impl("linears", linears_cpu);
  m.impl("silu_gated_linear", silu_gated_linear_cpu);
  m.impl("lora_linear", lora_linear_cpu);
  m.impl("silu_mul", [](const at::Tensor& gate, const at::Tensor& up) { return silu_mul_cpu(gate.clone(), up); });
}
TORCH_LIBRARY_IMPL(specplan, Meta, m) {
  m.impl("linear", linear_meta);
  m.impl("linears", linears_meta);
  m.impl("silu_gated_linear", silu_gated_linear_meta);
  m.impl("lora_linear", lora_linear_meta);
  m.impl("silu_mul", silu_mul_meta);
}
