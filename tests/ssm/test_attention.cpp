// causal_attention and rotary_embedding (ssm/kernels/attention.h) against naive references
// in f64: the explicit softmax(q k^T / sqrt(d) + causal mask) v built from matmul, a mask and
// softmax, and a loop over the rotary pairs; finite-difference gradients in f64 (grouped
// heads, fewer queries than keys, strided inputs); the attention mixer's generation with its
// KV cache against the full forward; the Transformer++ stack (attention + SwiGLU mlp layers)
// and its generation through the language model; the options' checks.
#include <doctest/doctest.h>

#include <cmath>
#include <limits>
#include <string>
#include <tuple>
#include <vector>

#include "core/ops.h"
#include "gradcheck.h"
#include "ssm/attention.h"
#include "ssm/kernels/attention.h"
#include "ssm/mamba2.h"
#include "ssm/mlp_mixer.h"
#include "ssm/model.h"
#include "user_error.h"

namespace ssmtrain {
namespace {

using testing::contains;
using testing::user_error_of;

// The explicit form: per head h (kv head h / (H / Hkv)), S = q k^T * scale with S[i, j] =
// -inf where key j is after query i's position i + Lk - Lq, P = softmax(S), o = P v.
// Differentiable (composed tape ops). Returns o (B, Lq, H, D) and logsumexp(S) (B, H, Lq).
struct Naive {
  Tensor o, lse;
};
Naive naive_attention(const Tensor& q, const Tensor& k, const Tensor& v, double scale) {
  const int64_t Lq = q.size(1), Lk = k.size(1), H = q.size(2), Hkv = k.size(2);
  std::vector<int64_t> head_of(static_cast<size_t>(H));
  for (int64_t h = 0; h < H; ++h) head_of[h] = h / (H / Hkv);
  const Tensor idx = Tensor::from_vector(head_of, {H});
  const Tensor qh = q.permute({0, 2, 1, 3});                        // (B, H, Lq, D)
  const Tensor kh = index_select(k, 2, idx).permute({0, 2, 3, 1});  // (B, H, D, Lk)
  const Tensor vh = index_select(v, 2, idx).permute({0, 2, 1, 3});  // (B, H, Lk, D)
  std::vector<double> mask(static_cast<size_t>(Lq * Lk));
  for (int64_t i = 0; i < Lq; ++i)
    for (int64_t j = 0; j < Lk; ++j) mask[i * Lk + j] = j > i + (Lk - Lq) ? 1.0 : 0.0;
  const Tensor s = masked_fill(mul(matmul(qh, kh), scale), Tensor::from_vector(mask, {Lq, Lk}).to(q.dtype()),
                               -std::numeric_limits<double>::infinity());
  return {matmul(softmax(s, -1), vh).permute({0, 2, 1, 3}).contiguous(), logsumexp(s, {-1})};
}

// The rotary embedding by its definition, in f64 on the host.
std::vector<double> naive_rotary(const Tensor& x, int64_t offset, double base) {
  const int64_t B = x.size(0), L = x.size(1), H = x.size(2), D = x.size(3), half = D / 2;
  const std::vector<double> xv = x.contiguous().to_vector<double>();
  std::vector<double> y(xv.size());
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < L; ++t)
      for (int64_t h = 0; h < H; ++h)
        for (int64_t i = 0; i < half; ++i) {
          const int64_t at = ((b * L + t) * H + h) * D;
          const double theta = static_cast<double>(offset + t) / std::pow(base, 2.0 * i / D);
          const double x1 = xv[at + i], x2 = xv[at + i + half];
          y[at + i] = x1 * std::cos(theta) - x2 * std::sin(theta);
          y[at + i + half] = x2 * std::cos(theta) + x1 * std::sin(theta);
        }
  return y;
}

struct Shape {
  int64_t B, Lq, Lk, H, Hkv, D;
};

}  // namespace

TEST_CASE("causal_attention matches the explicit softmax(q k^T / sqrt(d) + causal mask) v") {
  Generator gen(7);
  for (const Shape s : {Shape{2, 9, 9, 4, 4, 6}, Shape{2, 9, 9, 4, 2, 6}, Shape{1, 5, 5, 3, 1, 8},
                        Shape{2, 4, 11, 2, 1, 4}, Shape{1, 1, 6, 2, 2, 4}, Shape{1, 1, 1, 1, 1, 2}}) {
    INFO("B ", s.B, " Lq ", s.Lq, " Lk ", s.Lk, " H ", s.H, " Hkv ", s.Hkv, " D ", s.D);
    const Tensor q = random_tensor({s.B, s.Lq, s.H, s.D}, gen, DType::f64, Device::cpu(), -2, 2);
    const Tensor k = random_tensor({s.B, s.Lk, s.Hkv, s.D}, gen, DType::f64, Device::cpu(), -2, 2);
    const Tensor v = random_tensor({s.B, s.Lk, s.Hkv, s.D}, gen, DType::f64);
    const double scale = 1.0 / std::sqrt(static_cast<double>(s.D));
    const AttentionResult r = causal_attention_with_lse(q, k, v, scale);
    const Naive n = naive_attention(q, k, v, scale);
    check_close(r.o, n.o, 1e-12, 1e-13, "o");
    check_close(r.lse, n.lse, 1e-12, 1e-13, "lse");
    // f32 on the same values: one rounding per operation, sums of at most 11 terms.
    const AttentionResult r32 = causal_attention_with_lse(q.to(DType::f32), k.to(DType::f32), v.to(DType::f32), scale);
    check_close(r32.o, n.o, 1e-4, 1e-5, "o in f32");
  }
}

TEST_CASE("causal_attention: the first query sees only the first key, the last query all keys") {
  Generator gen(3);
  const Tensor q = random_tensor({1, 4, 1, 4}, gen, DType::f64);
  const Tensor k = random_tensor({1, 4, 1, 4}, gen, DType::f64);
  const Tensor v = random_tensor({1, 4, 1, 4}, gen, DType::f64);
  const Tensor o = causal_attention(q, k, v, 0.5);
  check_close(o.select(1, 0), v.select(1, 0), 1e-15, 1e-15, "row 0 = v_0");
  // A single query against all four keys sees every key: the last row of the full op.
  const Tensor last = causal_attention(q.narrow(1, 3, 1), k, v, 0.5);
  check_close(last, o.narrow(1, 3, 1), 1e-14, 1e-15, "one query aligned to the end");
}

TEST_CASE("causal_attention gradients match finite differences (grouped heads, Lq < Lk, strided inputs)") {
  Generator gen(11);
  for (const Shape s : {Shape{2, 5, 5, 2, 2, 4}, Shape{1, 6, 6, 4, 2, 4}, Shape{2, 3, 7, 2, 1, 6}}) {
    INFO("H ", s.H, " Hkv ", s.Hkv, " Lq ", s.Lq, " Lk ", s.Lk);
    Tensor q = grad_leaf({s.B, s.Lq, s.H, s.D}, gen, -2, 2);
    Tensor k = grad_leaf({s.B, s.Lk, s.Hkv, s.D}, gen, -2, 2);
    Tensor v = grad_leaf({s.B, s.Lk, s.Hkv, s.D}, gen);
    check_gradients([](const std::vector<Tensor>& in) { return causal_attention(in[0], in[1], in[2], 0.7); },
                    {q, k, v});
  }
  // q, k and v as column slices of one fused projection (B, L, 3 H D): read in place.
  const int64_t B = 2, L = 5, H = 2, D = 4;
  Tensor proj = grad_leaf({B, L, 3 * H * D}, gen, -2, 2);
  check_gradients(
      [&](const std::vector<Tensor>& in) {
        auto parts = in[0].split({H * D, H * D, H * D}, -1);
        return causal_attention(parts[0].view({B, L, H, D}), parts[1].view({B, L, H, D}), parts[2].view({B, L, H, D}),
                                0.5);
      },
      {proj});
}

TEST_CASE("causal_attention gradients equal those of the explicit form") {
  Generator gen(5);
  const Tensor q0 = random_tensor({2, 7, 4, 6}, gen, DType::f64, Device::cpu(), -2, 2);
  const Tensor k0 = random_tensor({2, 7, 2, 6}, gen, DType::f64, Device::cpu(), -2, 2);
  const Tensor v0 = random_tensor({2, 7, 2, 6}, gen, DType::f64);
  const Tensor w = random_tensor({2, 7, 4, 6}, gen, DType::f64);
  auto grads = [&](bool fused) {
    Tensor q = q0.clone().detach(), k = k0.clone().detach(), v = v0.clone().detach();
    q.requires_grad_(), k.requires_grad_(), v.requires_grad_();
    const Tensor o = fused ? causal_attention(q, k, v, 0.4) : naive_attention(q, k, v, 0.4).o;
    backward(sum(mul(o, w)));
    return std::vector<Tensor>{q.grad(), k.grad(), v.grad()};
  };
  const auto fused = grads(true), naive = grads(false);
  const char* names[] = {"dq", "dk", "dv"};
  for (int i = 0; i < 3; ++i) check_close(fused[i], naive[i], 1e-11, 1e-12, names[i]);
}

TEST_CASE("causal_attention with packed documents equals each document attended on its own") {
  // Row 0 holds documents of 3, 1 and 4 positions, row 1 one document of 8.
  Generator gen(15);
  const int64_t B = 2, L = 8, H = 4, Hkv = 2, D = 6;
  const Tensor seq_idx = Tensor::from_vector<int32_t>({0, 0, 0, 1, 2, 2, 2, 2, 5, 5, 5, 5, 5, 5, 5, 5}, {B, L});
  Tensor q = grad_leaf({B, L, H, D}, gen, -2, 2), k = grad_leaf({B, L, Hkv, D}, gen, -2, 2),
         v = grad_leaf({B, L, Hkv, D}, gen);
  const Tensor o = causal_attention(q, k, v, 0.5, seq_idx);
  for (auto [b, start, len] : {std::tuple<int64_t, int64_t, int64_t>{0, 0, 3}, {0, 3, 1}, {0, 4, 4}, {1, 0, 8}}) {
    INFO("row ", b, " document at ", start, " of ", len);
    auto part = [&](const Tensor& t) { return t.narrow(0, b, 1).narrow(1, start, len); };
    check_close(part(o), causal_attention(part(q), part(k), part(v), 0.5), 1e-14, 1e-15, "document alone");
  }
  check_gradients([&](const std::vector<Tensor>& in) { return causal_attention(in[0], in[1], in[2], 0.5, seq_idx); },
                  {q, k, v});
  CHECK(contains(user_error_of([&] { causal_attention(q.narrow(1, 0, 4), k, v, 0.5, seq_idx); }),
                 "as many queries as keys"));
}

TEST_CASE("causal_attention in bf16 on the CPU stays within bf16 rounding of the f64 result") {
  Generator gen(9);
  const Tensor q = random_tensor({1, 12, 2, 8}, gen, DType::f64).to(DType::bf16);
  const Tensor k = random_tensor({1, 12, 2, 8}, gen, DType::f64).to(DType::bf16);
  const Tensor v = random_tensor({1, 12, 2, 8}, gen, DType::f64).to(DType::bf16);
  const Tensor o = causal_attention(q, k, v, 0.35);
  CHECK(o.dtype() == DType::bf16);
  // fp32 arithmetic on the rounded inputs; the output rounded once: 2^-9 relative.
  const Tensor ref = causal_attention(q.to(DType::f64), k.to(DType::f64), v.to(DType::f64), 0.35);
  check_close(o, ref, 4e-3, 1e-5, "bf16 vs f64 on the same inputs");
}

TEST_CASE("causal_attention reports bad arguments") {
  const Tensor q = Tensor::zeros({1, 4, 4, 8}), k = Tensor::zeros({1, 4, 3, 8});
  CHECK(contains(user_error_of([&] { causal_attention(q, k, k, 1.0); }), "must divide the 4 query heads"));
  const Tensor k2 = Tensor::zeros({1, 2, 2, 8});
  CHECK(contains(user_error_of([&] { causal_attention(q, k2, k2, 1.0); }), "more positions"));
  const Tensor k3 = Tensor::zeros({1, 4, 2, 6});
  CHECK(contains(user_error_of([&] { causal_attention(q, k3, k3, 1.0); }), "expected (B, Lk, Hkv, D)"));
  CHECK(contains(user_error_of([&] { causal_attention(q, k2.to(DType::f64), k2, 1.0); }), "dtype"));
}

TEST_CASE("rotary_embedding matches its definition and its gradient matches finite differences") {
  Generator gen(13);
  const Tensor x = random_tensor({2, 5, 3, 8}, gen, DType::f64);
  for (int64_t offset : {0, 7, 100000}) {
    CAPTURE(offset);
    const Tensor y = rotary_embedding(x, offset, 10000.0);
    // The angles (up to offset + L radians) are formed in another order than the op's
    // (t / base^(2i/D) vs t * base^(-2i/D)): an absolute difference of a few ulp of the
    // angle, 4 (offset + L) 2^-53, in values of |x| < 1.
    const double atol = 1e-15 + 4.0 * static_cast<double>(offset + 5) * std::ldexp(1.0, -53);
    check_close(y, host_tensor(naive_rotary(x, offset, 10000.0), x.shape()), 1e-14, atol, "rotary");
  }
  // A rotation keeps the norm of every pair; q.k after rotating both depends only on the
  // distance between the positions.
  const Tensor q = random_tensor({1, 1, 1, 8}, gen, DType::f64), k = random_tensor({1, 1, 1, 8}, gen, DType::f64);
  auto score = [&](int64_t i, int64_t j) {
    return sum(mul(rotary_embedding(q, i, 10000.0), rotary_embedding(k, j, 10000.0))).item<double>();
  };
  CHECK(score(5, 2) == doctest::Approx(score(105, 102)).epsilon(1e-12));
  Tensor xg = grad_leaf({2, 4, 2, 6}, gen);
  check_gradients([](const std::vector<Tensor>& in) { return rotary_embedding(in[0], 3, 100.0); }, {xg});
  // A strided input (a column slice) is read in place.
  Tensor wide = grad_leaf({1, 3, 16}, gen);
  check_gradients(
      [](const std::vector<Tensor>& in) {
        return rotary_embedding(in[0].narrow(2, 4, 8).view({1, 3, 2, 4}), 1, 50.0);
      },
      {wide});
  CHECK(contains(user_error_of([] { rotary_embedding(Tensor::zeros({1, 2, 1, 5}), 0); }), "must be even"));
}

namespace {

std::shared_ptr<Attention> make_attention(int64_t d_model, int64_t heads, int64_t kv_heads, int64_t head_dim,
                                          uint64_t seed) {
  AttentionOptions o;
  o.d_model = d_model, o.heads = heads, o.kv_heads = kv_heads, o.head_dim = head_dim;
  Generator gen(seed);
  auto a = std::make_shared<Attention>(o, gen);
  a->to(DType::f64);
  return a;
}

}  // namespace

TEST_CASE("attention mixer: generation with the KV cache equals the full forward") {
  // (heads, kv heads): multi-head, grouped-query, multi-query. L = 70 steps outgrows the
  // cache's first capacity (64 positions) once.
  for (auto [heads, kv] : {std::pair<int64_t, int64_t>{2, 2}, {4, 2}, {4, 1}}) {
    INFO("heads ", heads, " kv heads ", kv);
    auto attn = make_attention(8, heads, kv, 4, 17);
    NoGradGuard ng;
    const int64_t B = 2, L = 70;
    Generator gen(19);
    const Tensor x = random_tensor({B, L, 8}, gen, DType::f64);
    const Tensor full = attn->forward(x);
    auto state = attn->init_state(B, Device::cpu(), DType::f64);
    std::vector<Tensor> steps;
    for (int64_t t = 0; t < L; ++t) steps.push_back(attn->step(x.select(1, t).contiguous(), *state).unsqueeze(1));
    // The same f64 sums in the same order per query row: equal to rounding.
    check_close(cat(steps, 1), full, 1e-11, 1e-13, "stepped vs full output");
  }
}

TEST_CASE("attention mixer: packed documents give each document's own output") {
  auto attn = make_attention(8, 2, 1, 4, 41);
  NoGradGuard ng;
  Generator gen(43);
  const Tensor x = random_tensor({1, 7, 8}, gen, DType::f64);
  const Tensor seq_idx = Tensor::from_vector<int32_t>({0, 0, 0, 0, 1, 1, 1}, {1, 7});
  REQUIRE(attn->supports_seq_idx());
  const Tensor packed = attn->forward(x, seq_idx);
  // The second document moved to the start of a row: rotary embeddings are relative, so the
  // output is the same up to rounding.
  check_close(packed.narrow(1, 0, 4), attn->forward(x.narrow(1, 0, 4)), 1e-12, 1e-13, "first document");
  check_close(packed.narrow(1, 4, 3), attn->forward(x.narrow(1, 4, 3).contiguous()), 1e-12, 1e-13, "second document");
}

TEST_CASE("attention mixer: gradients of the input and the projections match finite differences") {
  auto attn = make_attention(6, 2, 1, 4, 23);
  Generator gen(29);
  Tensor x = grad_leaf({2, 5, 6}, gen);
  std::vector<Tensor> inputs{x};
  for (const auto& p : attn->named_parameters()) inputs.push_back(p.tensor);
  CHECK(attn->named_parameters().size() == 2);  // in_proj.weight, out_proj.weight
  check_gradients([&](const std::vector<Tensor>&) { return attn->forward(x); }, inputs);
}

TEST_CASE("Transformer++ stack: attention and SwiGLU mlp layers; generation equals the forward") {
  ModelSpec spec;
  spec.compute_dtype = DType::f64;  // with the parameters in f64 below: exact up to f64 rounding
  spec.model.mixer = "attention";
  spec.model.n_layer = 4, spec.model.d_model = 16, spec.model.vocab_size = 11;
  auto& mlp = spec.model.mixers.get<MLPMixerOptions>();
  mlp.mlp_every = 2, mlp.mlp_ratio = 8.0 / 3.0, mlp.mlp_multiple_of = 16;
  spec.model.mixers.get<AttentionOptions>().head_dim = 4;
  spec.model.mixers.get<AttentionOptions>().kv_heads = 2;
  CHECK(layer_mixers(spec.model) == std::vector<std::string>{"attention", "mlp", "attention", "mlp"});
  CHECK(mlp_hidden(mlp, 16) == 48);  // round(42.67) = 43, up to a multiple of 16
  Generator gen(31);
  auto model = build_language_model(spec, gen);
  REQUIRE(model->n_layer() == 4);
  auto* attn = dynamic_cast<Attention*>(model->block(0)->mixer().get());
  REQUIRE(attn);
  CHECK(attn->heads() == 4);
  CHECK(attn->kv_heads() == 2);
  model->to(DType::f64);
  NoGradGuard ng;
  const int64_t B = 2, L = 9;
  Generator ids_gen(37);
  const Tensor ids = Tensor::randint({B, L}, ids_gen, 0, 11);
  const Tensor logits = model->forward(ids).logits;  // (B, L, V)
  auto states = model->init_states(B, Device::cpu());
  Tensor last;
  for (int64_t t = 0; t < L; ++t) last = model->step(ids.select(1, t).contiguous(), states);
  check_close(last, logits.select(1, L - 1).contiguous(), 1e-10, 1e-12, "last-position logits");
}

TEST_CASE("attention options: head geometry is checked against d_model, naming the key") {
  ModelSpec spec;
  spec.model.mixer = "attention";
  spec.model.d_model = 24, spec.model.n_layer = 2, spec.model.vocab_size = 8;
  auto& o = spec.model.mixers.get<AttentionOptions>();
  o.head_dim = 16;
  Generator gen(1);
  CHECK(contains(user_error_of([&] { build_language_model(spec, gen); }), "model.attention.head_dim (16) must divide"));
  o.head_dim = 4, o.kv_heads = 4;
  CHECK(contains(user_error_of([&] { build_language_model(spec, gen); }),
                 "model.attention.kv_heads (4) must divide the number of query heads (6)"));
  o.kv_heads = 3, o.heads = 0;
  CHECK(build_language_model(spec, gen)->n_layer() == 2);
  o.head_dim = 5;
  CHECK(contains(user_error_of([&] { build_language_model(spec, gen); }), "must be even"));
  // With heads given, the attention width need not equal d_model.
  o.head_dim = 8, o.heads = 2, o.kv_heads = 0;
  CHECK(build_language_model(spec, gen)->n_layer() == 2);
  // attention.every: one attention layer in k of whatever the stack holds.
  ModelSpec hybrid;
  hybrid.model.mixer = "mamba2";
  hybrid.model.n_layer = 8, hybrid.model.d_model = 16;
  hybrid.model.mixers.get<AttentionOptions>().every = 4;
  hybrid.model.mixers.get<Mamba2Options>().headdim = 8;
  CHECK(layer_mixers(hybrid.model) ==
        std::vector<std::string>{"mamba2", "mamba2", "mamba2", "attention", "mamba2", "mamba2", "mamba2", "attention"});
  hybrid.model.mixers.get<AttentionOptions>().every = 9;
  CHECK(contains(user_error_of([&] { validate(hybrid.model); }),
                 "model.attention.every is 9 but model.n_layer is only 8"));
  MLPMixerOptions m;
  m.mlp_ratio = 8.0 / 3.0, m.mlp_multiple_of = 64;
  CHECK(mlp_hidden(m, 768) == 2048);
  CHECK(mlp_hidden(m, 1024) == 2752);  // round(2730.67) = 2731 -> 2752
}

}  // namespace ssmtrain
