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
#include <limits>
#include <vector>

namespace specplan_impl {  // lean_linear.cpp
std::vector<at::Tensor> linears_cpu(const at::Tensor& x, at::TensorList weights, const c10::List<c10::optional<at::Tensor>>& biases);
at::Tensor linear_cpu(const at::Tensor& x, const at::Tensor& weight, const c10::optional<at::Tensor>& bias);
at::Tensor silu_gated_linear_cpu(const at::Tensor& x, const at::Tensor& w_gate, const c10::optional<at::Tensor>& b_gate,
                                 const at::Tensor& w_up, const c10::optional<at::Tensor>& b_up);
}  // namespace specplan_impl

namespace {

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
// out (B, T, H, D).
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
  const int64_t mb = mask.size(0) == 1 ? 0 : mask.stride(0), mt = mask.stride(2), ms = mask.stride(3);
  at::parallel_for(0, B * H * Tn, 1, [&](int64_t i0, int64_t i1) {
    std::vector<float> score(S), acc(D);
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t b = i / (H * Tn), h = (i / Tn) % H, t = i % Tn, hk = h / group;
      const T* qr = qp + b * q.stride(0) + h * q.stride(1) + t * q.stride(2);
      const T* kr = kp + b * k.stride(0) + hk * k.stride(1);
      const T* vr = vp + b * v.stride(0) + hk * v.stride(1);
      const T* mr = mp + b * mb + t * mt;
      float top = -std::numeric_limits<float>::infinity();
      for (int64_t j = 0; j < S; ++j) {
        const float m = float(mr[j * ms]);
        if (m <= blocked) { score[j] = -std::numeric_limits<float>::infinity(); continue; }
        score[j] = dot(qr, kr + j * k.stride(2), D) * scale + m;
        top = std::max(top, score[j]);
      }
      std::fill(acc.begin(), acc.end(), 0.f);
      float total = 0.f;
      for (int64_t j = 0; j < S; ++j) {
        if (score[j] == -std::numeric_limits<float>::infinity()) continue;
        const float p = std::exp(score[j] - top);
        total += p;
        const T* vj = vr + j * v.stride(2);
        for (int64_t d = 0; d < D; ++d) acc[d] += p * float(vj[d]);
      }
      T* o = op + ((b * Tn + t) * H + h) * D;
      for (int64_t d = 0; d < D; ++d) o[d] = T(total > 0.f ? acc[d] / total : 0.f);
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

// LlamaDecoderLayer.forward for the runtime's step: x (B, T, hidden) -> (B, T, hidden).
// weights: input norm, post-attention norm, q, k, v, o, gate, up, down (nn.Linear layout);
// biases: q, k, v, o, gate, up, down (each optional); head_norms: Qwen3's q and k norms (none
// or both); cos, sin (B, T, D); k_cache, v_cache (B, Hk, S, D), written at input_pos (T,);
// mask (1 or B, 1, T, S) additive.
at::Tensor decoder_layer_cpu(const at::Tensor& x, at::TensorList weights, const c10::List<c10::optional<at::Tensor>>& biases,
                             at::TensorList head_norms, double eps, const at::Tensor& cos, const at::Tensor& sin,
                             at::Tensor k_cache, at::Tensor v_cache, const at::Tensor& input_pos, const at::Tensor& mask,
                             int64_t head_dim, double scale) {
  using namespace specplan_impl;
  TORCH_CHECK(weights.size() == 9 && biases.size() == 7, "specplan::decoder_layer: 9 weights and 7 biases");
  TORCH_CHECK(head_norms.empty() || head_norms.size() == 2, "specplan::decoder_layer: no head norms, or q's and k's");
  const int64_t B = x.size(0), Tn = x.size(1);
  c10::List<c10::optional<at::Tensor>> qkv_biases;
  for (int i = 0; i < 3; ++i) qkv_biases.push_back(biases.get(i));
  auto h = rms_norm_cpu(x, weights[0], eps);
  auto qkv = linears_cpu(h, {weights[2], weights[3], weights[4]}, qkv_biases);
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
  auto out = x + linear_cpu(attended.view({B, Tn, -1}), weights[5], biases.get(3));
  auto gated = silu_gated_linear_cpu(rms_norm_cpu(out, weights[1], eps), weights[6], biases.get(4), weights[7], biases.get(5));
  return out + linear_cpu(gated, weights[8], biases.get(6));
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
        "Tensor sin, Tensor(a!) k_cache, Tensor(b!) v_cache, Tensor input_pos, Tensor mask, int head_dim, float scale) -> Tensor");
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
