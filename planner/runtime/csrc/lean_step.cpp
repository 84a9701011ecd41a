// specplan::rms_norm, specplan::rotary, specplan::attention — the rest of the CPU decode step.
//
// After the linears (lean_linear.cpp), a one-token step on CPU is mostly the dispatch of a few
// hundred tiny ATen ops: an RMSNorm is 7 of them, rotary embeddings 14 per layer, attention
// with its additive mask another handful. Each op here does that work in one call, per token
// row, in one fixed order whatever the number of tokens in the step (batch-invariant, like the
// linears), and rounds where the transformers modules it replaces round, so its outputs are
// those modules' outputs up to the order of fp32 sums:
//   rms_norm   LlamaRMSNorm: y = w * bf16(x * rsqrt(mean(x^2) + eps))   (fp32 statistics)
//   rotary     apply_rotary_pos_emb: x * cos + rotate_half(x) * sin     (for q and k, in place)
//   attention  softmax(q k^T * scale + mask) v over the KV cache, GQA heads shared, fp32 inside;
//              keys whose mask entry is the dtype's lowest value are skipped (their softmax
//              weight is exactly 0), so a step reads only the cache slots it can see.
//   decoder_layer  a Llama-family decoder layer (LlamaDecoderLayer's forward) in one call: the
//              ops above and the linears, the KV cache written at the step's positions, both
//              residual adds; the same ops in the same order as the modules calling them one by
//              one, so the same bits, without a few dozen Python-level calls per layer.

#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <cmath>
#include <array>
#include <limits>
#include <utility>
#include <vector>
#include "lean_vec.h"
#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace specplan_impl {  // lean_linear.cpp
std::vector<at::Tensor> linears_cpu(const at::Tensor& x, at::TensorList weights, const c10::List<c10::optional<at::Tensor>>& biases);
at::Tensor linear_cpu(const at::Tensor& x, const at::Tensor& weight, const c10::optional<at::Tensor>& bias);
at::Tensor silu_gated_linear_cpu(const at::Tensor& x, const at::Tensor& w_gate, const c10::optional<at::Tensor>& b_gate,
                                 const at::Tensor& w_up, const c10::optional<at::Tensor>& b_up);
at::Tensor silu_mul_cpu(at::Tensor gate, const at::Tensor& up);
void add_lora_cpu(at::Tensor& y, const at::Tensor& low, const at::Tensor& lora_bt, double scaling);
}  // namespace specplan_impl

namespace {

using namespace specplan_vec;

using bf16 = c10::BFloat16;

// Dot product of two length-n rows in fp32 with 16 partial sums (fixed order: lane i sums
// elements i, i + 16, ...; then lanes in order), which the compiler vectorises as is.
template <typename T>
inline float dot(const T* a, const T* b, int64_t n) {
  float lane[16] = {0.f};
  int64_t k = 0;
  for (; k + 16 <= n; k += 16)
    for (int i = 0; i < 16; ++i) lane[i] += float(a[k + i]) * float(b[k + i]);
  float s = 0.f;
  for (int i = 0; i < 16; ++i) s += lane[i];
  for (; k < n; ++k) s += float(a[k]) * float(b[k]);
  return s;
}

template <typename T>
inline const T* qr_of(const T* qp, const at::Tensor& q, int64_t b, int64_t h, int64_t t) {
  return qp + b * q.stride(0) + h * q.stride(1) + t * q.stride(2);
}

template <typename T>
void rms_norm_rows(const T* x, const T* w, T* y, int64_t M, int64_t K, float eps) {
  at::parallel_for(0, M, 64, [&](int64_t m0, int64_t m1) {
    for (int64_t m = m0; m < m1; ++m) {
      const T* xr = x + m * K;
      const float r = 1.f / std::sqrt(dot(xr, xr, K) / float(K) + eps);
      for (int64_t k = 0; k < K; ++k) y[m * K + k] = T(float(w[k]) * float(T(float(xr[k]) * r)));
    }
  });
}

at::Tensor rms_norm_cpu(const at::Tensor& x, const at::Tensor& weight, double eps) {
  TORCH_CHECK(x.scalar_type() == weight.scalar_type(), "specplan::rms_norm: x and weight dtypes differ");
  const int64_t K = weight.numel();
  TORCH_CHECK(x.size(-1) == K && weight.is_contiguous(), "specplan::rms_norm: weight must be a contiguous row of x's width");
  auto x2 = x.reshape({-1, K}).contiguous();
  auto y = at::empty_like(x2);
  if (x.scalar_type() == at::kBFloat16) {
    rms_norm_rows(x2.data_ptr<bf16>(), weight.data_ptr<bf16>(), y.data_ptr<bf16>(), x2.size(0), K, float(eps));
  } else {
    TORCH_CHECK(x.scalar_type() == at::kFloat, "specplan::rms_norm: dtype must be bf16 or fp32");
    rms_norm_rows(x2.data_ptr<float>(), weight.data_ptr<float>(), y.data_ptr<float>(), x2.size(0), K, float(eps));
  }
  return y.view(x.sizes());
}

// x (B, H, T, D) -> out (B, H, T, D) contiguous; cos, sin (B, T, D).
// out = x * cos + rotate_half(x) * sin, rotate_half(x) = cat(-x[D/2:], x[:D/2]), each product
// and the sum rounded to T as transformers' three bf16 ops round them.
template <typename T>
void rotary_rows(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin, at::Tensor& out) {
  const int64_t B = x.size(0), H = x.size(1), Tn = x.size(2), D = x.size(3), half = D / 2;
  const T* c = cos.data_ptr<T>();
  const T* s = sin.data_ptr<T>();
  const T* xp = x.data_ptr<T>();
  T* op = out.data_ptr<T>();
  const int64_t xs0 = x.stride(0), xs1 = x.stride(1), xs2 = x.stride(2);
  at::parallel_for(0, B * H * Tn, 64, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t b = i / (H * Tn), h = (i / Tn) % H, t = i % Tn;
      const T* xr = xp + b * xs0 + h * xs1 + t * xs2;
      const T* cr = c + (b * Tn + t) * D;
      const T* sr = s + (b * Tn + t) * D;
      T* o = op + i * D;
      for (int64_t d = 0; d < D; ++d) {
        const float rot = d < half ? -float(xr[d + half]) : float(xr[d - half]);
        o[d] = T(float(T(float(xr[d]) * float(cr[d]))) + float(T(rot * float(sr[d]))));
      }
    }
  });
}

std::vector<at::Tensor> rotary_cpu(const at::Tensor& q, const at::Tensor& k, const at::Tensor& cos, const at::Tensor& sin) {
  TORCH_CHECK(q.dim() == 4 && k.dim() == 4 && cos.dim() == 3, "specplan::rotary: q, k (B, H, T, D) and cos, sin (B, T, D)");
  TORCH_CHECK(q.stride(3) == 1 && k.stride(3) == 1, "specplan::rotary: q and k rows must be contiguous");
  TORCH_CHECK(q.size(3) % 2 == 0 && cos.size(-1) == q.size(3), "specplan::rotary: rotary width must be the (even) head width");
  auto c = cos.expand({q.size(0), q.size(2), q.size(3)}).contiguous();
  auto s = sin.expand({q.size(0), q.size(2), q.size(3)}).contiguous();
  auto qo = at::empty(q.sizes(), q.options()), ko = at::empty(k.sizes(), k.options());
  if (q.scalar_type() == at::kBFloat16) {
    rotary_rows<bf16>(q, c, s, qo);
    rotary_rows<bf16>(k, c, s, ko);
  } else {
    TORCH_CHECK(q.scalar_type() == at::kFloat, "specplan::rotary: dtype must be bf16 or fp32");
    rotary_rows<float>(q, c, s, qo);
    rotary_rows<float>(k, c, s, ko);
  }
  return {qo, ko};
}

// q (B, H, T, D), k, v (B, Hk, S, D) with unit stride in D; mask (1 or B, 1, T, S) additive.
// out (B, T, H, D). One work item per (batch, query head) takes all T of its query rows. Each
// query row's arithmetic is fixed whatever T is and whichever rows share the item:
// score_j = dot(q, k_j) * scale + mask (attend_head's vectors where AVX-512 is and D is a
// multiple of 16 up to 256, else `dot`), p_j = exp(score_j - max),
// out = sum_j p_j v_j / sum_j p_j in key order (exp by exp16 where AVX-512 is, std::exp elsewhere).

// A score row's softmax weights in place: exp(score - top), blocked keys (-inf) left as they are.
inline void exp_shifted(float* sr, int64_t S, float top) {
  const float none = -std::numeric_limits<float>::infinity();
  int64_t j = 0;
#if defined(__AVX512F__)
  const __m512 shift = _mm512_set1_ps(top), blocked_key = _mm512_set1_ps(none);
  for (; j + 16 <= S; j += 16) {
    const __m512 sc = _mm512_loadu_ps(sr + j);
    const __mmask16 seen = _mm512_cmp_ps_mask(sc, blocked_key, _CMP_NEQ_OQ);
    _mm512_storeu_ps(sr + j, _mm512_mask_mov_ps(blocked_key, seen, exp16(_mm512_sub_ps(sc, shift))));
  }
  for (; j < S; ++j) {  // the tail through the same 16-lane function
    alignas(64) float one[16] = {};
    one[0] = sr[j] - top;
    _mm512_store_ps(one, exp16(_mm512_load_ps(one)));
    if (sr[j] != none) sr[j] = one[0];
  }
#else
  for (; j < S; ++j)
    if (sr[j] != none) sr[j] = std::exp(sr[j] - top);
#endif
}


#if defined(__AVX512F__)
// One query head's T rows with D = 16 * ND (attention_rows' path wherever AVX-512 is and D is a
// multiple of 16 up to 256), row by row with the query row and the output sums in registers:
// the dot over D in 16-lane fp32 vectors, lane i summing elements i, i + 16, ... with FMAs,
// then the lanes by a fixed tree. Each key and value row is widened from L1 as it is used;
// going through a buffer instead stalled every load on the store before it (39 -> 24 us for a
// 9-head step over 148 keys, one thread).
template <typename T, int ND>
void attend_head(const T* qp, const at::Tensor& q, int64_t b, int64_t h, const T* kr, int64_t ks, const T* vr, int64_t vs,
                 const T* mr, int64_t mt, int64_t ms, int64_t Tn, int64_t S, float scale, float* score, T* op, int64_t H) {
  const float blocked = float(std::numeric_limits<T>::lowest());
  const float none = -std::numeric_limits<float>::infinity();
  constexpr int64_t D = 16 * ND;
  for (int64_t t = 0; t < Tn; ++t) {
    const T* qr = qr_of(qp, q, b, h, t);
    __m512 qv[ND];
    for (int c = 0; c < ND; ++c) qv[c] = widen16(qr + 16 * c);
    float top = none;
    for (int64_t j = 0; j < S; ++j) {
      const float m = float(mr[t * mt + j * ms]);
      if (m <= blocked) { score[j] = none; continue; }
      const T* kj = kr + j * ks;
      __m512 a = _mm512_mul_ps(qv[0], widen16(kj));
      for (int c = 1; c < ND; ++c) a = _mm512_fmadd_ps(qv[c], widen16(kj + 16 * c), a);
      const float sc = _mm512_reduce_add_ps(a) * scale + m;
      score[j] = sc;
      top = std::max(top, sc);
    }
    exp_shifted(score, S, top);
    __m512 acc[ND];
    for (int c = 0; c < ND; ++c) acc[c] = _mm512_setzero_ps();
    float total = 0.f;
    for (int64_t j = 0; j < S; ++j) {
      const float p = score[j];
      if (p == none) continue;
      total += p;
      const __m512 pv = _mm512_set1_ps(p);
      const T* vj = vr + j * vs;
      for (int c = 0; c < ND; ++c) acc[c] = _mm512_fmadd_ps(pv, widen16(vj + 16 * c), acc[c]);
    }
    alignas(64) float row[D];
    for (int c = 0; c < ND; ++c) _mm512_store_ps(row + 16 * c, acc[c]);
    T* o = op + ((b * Tn + t) * H + h) * D;
    for (int64_t d = 0; d < D; ++d) o[d] = T(total > 0.f ? row[d] / total : 0.f);
  }
}
#endif

#if defined(__AVX512F__)
// attend_head<T, ND> for ND = 1 .. 16 (D = 16 .. 256), indexed by ND - 1.
template <typename T, size_t... I>
constexpr auto head_kernels(std::index_sequence<I...>) {
  return std::array{&attend_head<T, int(I) + 1>...};
}
#endif

template <typename T>
void attention_rows(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& mask, float scale,
                    at::Tensor& out) {
  const int64_t B = q.size(0), H = q.size(1), Tn = q.size(2), D = q.size(3), Hk = k.size(1), S = k.size(2);
  const int64_t group = H / Hk;
  const T* qp = q.data_ptr<T>();
  const T* kp = k.data_ptr<T>();
  const T* vp = v.data_ptr<T>();
  const T* mp = mask.data_ptr<T>();
  T* op = out.data_ptr<T>();
  const float blocked = float(std::numeric_limits<T>::lowest());
  const float none = -std::numeric_limits<float>::infinity();
  const int64_t mb = mask.size(0) == 1 ? 0 : mask.stride(0), mt = mask.stride(2), ms = mask.stride(3);
#if defined(__AVX512F__)
  static constexpr auto heads = head_kernels<T>(std::make_index_sequence<16>{});
  const bool vector = D % 16 == 0 && D <= 256;
#endif
  at::parallel_for(0, B * H, 1, [&](int64_t i0, int64_t i1) {
    std::vector<float> score(Tn * S), acc(Tn * D), top(Tn), total(Tn);
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t b = i / H, h = i % H, hk = h / group;
      const T* kr = kp + b * k.stride(0) + hk * k.stride(1);
      const T* vr = vp + b * v.stride(0) + hk * v.stride(1);
      const T* mr = mp + b * mb;
#if defined(__AVX512F__)
      if (vector) {
        heads[D / 16 - 1](qp, q, b, h, kr, k.stride(2), vr, v.stride(2), mr, mt, ms, Tn, S, scale, score.data(), op, H);
        continue;
      }
#endif
      for (int64_t t = 0; t < Tn; ++t) {
        top[t] = none;
        total[t] = 0.f;
      }
      std::fill(acc.begin(), acc.end(), 0.f);
      for (int64_t j = 0; j < S; ++j) {  // scores
        const T* kj = kr + j * k.stride(2);
        for (int64_t t = 0; t < Tn; ++t) {
          const float m = float(mr[t * mt + j * ms]);
          float& sc = score[t * S + j];
          if (m <= blocked) { sc = none; continue; }
          sc = dot(qr_of(qp, q, b, h, t), kj, D) * scale + m;
          top[t] = std::max(top[t], sc);
        }
      }
      // softmax weights, exp(score - max) in place of each score (blocked keys stay -inf),
      // then the weighted sum of value rows, in key order
      for (int64_t t = 0; t < Tn; ++t) exp_shifted(&score[t * S], S, top[t]);
      for (int64_t j = 0; j < S; ++j) {
        const T* vj = vr + j * v.stride(2);
        for (int64_t t = 0; t < Tn; ++t) {
          const float p = score[t * S + j];  // exp(score - max), above
          if (p == none) continue;
          total[t] += p;
          float* at = &acc[t * D];
          for (int64_t d = 0; d < D; ++d) at[d] += p * float(vj[d]);
        }
      }
      for (int64_t t = 0; t < Tn; ++t) {
        T* o = op + ((b * Tn + t) * H + h) * D;
        for (int64_t d = 0; d < D; ++d) o[d] = T(total[t] > 0.f ? acc[t * D + d] / total[t] : 0.f);
      }
    }
  });
}

at::Tensor attention_cpu(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& mask, double scale) {
  TORCH_CHECK(q.dim() == 4 && k.dim() == 4 && v.dim() == 4 && mask.dim() == 4, "specplan::attention: 4-d q, k, v and mask");
  TORCH_CHECK(q.stride(3) == 1 && k.stride(3) == 1 && v.stride(3) == 1, "specplan::attention: head rows must be contiguous");
  TORCH_CHECK(q.size(1) % k.size(1) == 0 && k.sizes() == v.sizes(), "specplan::attention: heads must be a multiple of KV heads");
  TORCH_CHECK(mask.size(2) == q.size(2) && mask.size(3) == k.size(2), "specplan::attention: mask must be (., 1, T, S)");
  TORCH_CHECK(q.scalar_type() == k.scalar_type() && q.scalar_type() == mask.scalar_type(), "specplan::attention: dtypes differ");
  auto out = at::empty({q.size(0), q.size(2), q.size(1), q.size(3)}, q.options());
  if (q.scalar_type() == at::kBFloat16) {
    attention_rows<bf16>(q, k, v, mask, float(scale), out);
  } else {
    TORCH_CHECK(q.scalar_type() == at::kFloat, "specplan::attention: dtype must be bf16 or fp32");
    attention_rows<float>(q, k, v, mask, float(scale), out);
  }
  return out;
}

// Projections of x by some of a layer's linears in one pass of the lean kernel: y_i = x W_i^T +
// b_i, plus, where the layer has LoRA (an S3D draft's copy of a kept layer), B_i (x A_i^T) *
// scaling, computed as specplan::lora_linear computes it (the A projections ride in the same
// pass). `which` indexes weights[2 + i] / biases[i] / lora_a[i] / lora_b[i] (q, k, v, o, gate, up, down).
std::vector<at::Tensor> projections(const at::Tensor& x, at::TensorList weights, const c10::List<c10::optional<at::Tensor>>& biases,
                                    const c10::List<c10::optional<at::Tensor>>& lora_a, const c10::List<c10::optional<at::Tensor>>& lora_b,
                                    double scaling, std::initializer_list<int> which) {
  using namespace specplan_impl;
  std::vector<at::Tensor> ws;
  c10::List<c10::optional<at::Tensor>> bs;
  std::vector<int> adapted;  // positions in `which` with LoRA
  for (int i : which) {
    ws.push_back(weights[2 + i]);
    bs.push_back(biases.get(i));
  }
  for (size_t j = 0; j < which.size(); ++j) {
    const int i = *(which.begin() + j);
    if (!lora_a.empty() && lora_a.get(i).has_value()) {
      ws.push_back(*lora_a.get(i));
      bs.push_back(c10::nullopt);
      adapted.push_back(int(j));
    }
  }
  auto ys = linears_cpu(x, ws, bs);
  for (size_t a = 0; a < adapted.size(); ++a) {
    const int j = adapted[a];
    add_lora_cpu(ys[j], ys[which.size() + a], *lora_b.get(*(which.begin() + j)), scaling);
  }
  ys.resize(which.size());
  return ys;
}

// LlamaDecoderLayer.forward for the runtime's step: x (B, T, hidden) -> (B, T, hidden).
// weights: input norm, post-attention norm, q, k, v, o, gate, up, down (nn.Linear layout);
// biases: q, k, v, o, gate, up, down (each optional); head_norms: Qwen3's q and k norms (none
// or both); cos, sin (B, T, D); k_cache, v_cache (B, Hk, S, D), written at input_pos (T,);
// mask (1 or B, 1, T, S) additive; lora_a, lora_bt: none, or one optional pair per linear in the
// biases' order, A (rank, in) and B transposed (rank, out), contiguous, with one scaling (an S3D
// draft's adapted copy of a kept layer).
at::Tensor decoder_layer_cpu(const at::Tensor& x, at::TensorList weights, const c10::List<c10::optional<at::Tensor>>& biases,
                             at::TensorList head_norms, double eps, const at::Tensor& cos, const at::Tensor& sin,
                             at::Tensor k_cache, at::Tensor v_cache, const at::Tensor& input_pos, const at::Tensor& mask,
                             int64_t head_dim, double scale, const c10::List<c10::optional<at::Tensor>>& lora_a,
                             const c10::List<c10::optional<at::Tensor>>& lora_b, double lora_scaling) {
  using namespace specplan_impl;
  TORCH_CHECK(weights.size() == 9 && biases.size() == 7, "specplan::decoder_layer: 9 weights and 7 biases");
  TORCH_CHECK(head_norms.empty() || head_norms.size() == 2, "specplan::decoder_layer: no head norms, or q's and k's");
  TORCH_CHECK(lora_a.size() == lora_b.size() && (lora_a.empty() || lora_a.size() == 7),
              "specplan::decoder_layer: no LoRA pairs, or one (or None) per linear");
  for (size_t i = 0; i < lora_a.size(); ++i)
    TORCH_CHECK(lora_a.get(i).has_value() == lora_b.get(i).has_value(), "specplan::decoder_layer: LoRA's A without its B");
  const int64_t B = x.size(0), Tn = x.size(1);
  auto h = rms_norm_cpu(x, weights[0], eps);
  auto qkv = projections(h, weights, biases, lora_a, lora_b, lora_scaling, {0, 1, 2});
  auto q = qkv[0].view({B, Tn, -1, head_dim}), k = qkv[1].view({B, Tn, -1, head_dim});
  if (!head_norms.empty()) {
    q = rms_norm_cpu(q, head_norms[0], eps);
    k = rms_norm_cpu(k, head_norms[1], eps);
  }
  auto v = qkv[2].view({B, Tn, -1, head_dim}).transpose(1, 2);
  auto qk = rotary_cpu(q.transpose(1, 2), k.transpose(1, 2), cos, sin);
  k_cache.index_copy_(2, input_pos, qk[1]);
  v_cache.index_copy_(2, input_pos, v);
  auto attended = attention_cpu(qk[0], k_cache, v_cache, mask, scale);  // (B, T, H, D)
  auto out = x + projections(attended.view({B, Tn, -1}), weights, biases, lora_a, lora_b, lora_scaling, {3})[0];
  auto gate_up = projections(rms_norm_cpu(out, weights[1], eps), weights, biases, lora_a, lora_b, lora_scaling, {4, 5});
  auto gated = silu_mul_cpu(gate_up[0], gate_up[1]);
  return out + projections(gated, weights, biases, lora_a, lora_b, lora_scaling, {6})[0];
}

at::Tensor rms_norm_meta(const at::Tensor& x, const at::Tensor&, double) { return at::empty_like(x); }
std::vector<at::Tensor> rotary_meta(const at::Tensor& q, const at::Tensor& k, const at::Tensor&, const at::Tensor&) {
  return {at::empty_like(q), at::empty_like(k)};
}
at::Tensor attention_meta(const at::Tensor& q, const at::Tensor&, const at::Tensor&, const at::Tensor&, double) {
  return at::empty({q.size(0), q.size(2), q.size(1), q.size(3)}, q.options());
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(specplan, m) {
  m.def("rms_norm(Tensor x, Tensor weight, float eps) -> Tensor");
  m.def("rotary(Tensor q, Tensor k, Tensor cos, Tensor sin) -> Tensor[]");
  m.def("attention(Tensor q, Tensor k, Tensor v, Tensor mask, float scale) -> Tensor");
  m.def("decoder_layer(Tensor x, Tensor[] weights, Tensor?[] biases, Tensor[] head_norms, float eps, Tensor cos, "
        "Tensor sin, Tensor(a!) k_cache, Tensor(b!) v_cache, Tensor input_pos, Tensor mask, int head_dim, float scale, "
        "Tensor?[] lora_a, Tensor?[] lora_bt, float lora_scaling) -> Tensor");
}
TORCH_LIBRARY_IMPL(specplan, CPU, m) {
  m.impl("rms_norm", rms_norm_cpu);
  m.impl("rotary", rotary_cpu);
  m.impl("attention", attention_cpu);
  m.impl("decoder_layer", decoder_layer_cpu);
}
TORCH_LIBRARY_IMPL(specplan, Meta, m) {
  m.impl("rms_norm", rms_norm_meta);
  m.impl("rotary", rotary_meta);
  m.impl("attention", attention_meta);
}
