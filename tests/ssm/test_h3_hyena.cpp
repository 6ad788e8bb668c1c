// The H3 and Hyena mixers (ssm/h3.h, ssm/hyena.h) against naive references that share no
// code with them: explicit loops over the parameters read back as doubles, the S4D kernel
// from explicit powers of Abar, the implicit filters from the formulas of the header, and
// every long convolution as the direct O(L^2) causal sum instead of an FFT. Then f64
// finite-difference gradients of the whole mixer (input and every parameter), on both the
// causal-conv and the FFT path of the shift SSM, one and several heads, orders 1 to 3.
//
// Tolerances of the reference comparisons: the mixer and the reference compute the same f64
// sums in a different order (FFT of length <= 2L rounds at ~eps log2(n) ~ 1e-15 of the
// norm of the operands; kernel powers by exp vs repeated products at ~L eps). With O(1)
// activations through two products and two projections the outputs are O(10), so the
// absolute differences are ~1e-13; bounds rtol 1e-9, atol 1e-10 are orders above that and
// orders below any modelling error (a wrong tap, sign or head is O(0.1)).
#include <doctest/doctest.h>

#include <cmath>
#include <complex>
#include <memory>
#include <vector>

#include "core/autograd.h"
#include "core/ops.h"
#include "gradcheck.h"
#include "ssm/h3.h"
#include "ssm/hyena.h"
#include "ssm/model.h"

using namespace ssmtrain;

namespace {

using cd = std::complex<double>;

std::vector<double> host(const Mixer& m, const std::string& name) {
  return m.parameter(name).contiguous().to_vector<double>();
}

// y (T, out) = x (T, in) W^T + b; W (out, in) row-major; b may be empty.
std::vector<double> dense(const std::vector<double>& x, int64_t T, int64_t in, const std::vector<double>& W,
                          const std::vector<double>& b, int64_t out) {
  std::vector<double> y(static_cast<size_t>(T * out));
  for (int64_t t = 0; t < T; ++t)
    for (int64_t o = 0; o < out; ++o) {
      double s = b.empty() ? 0.0 : b[o];
      for (int64_t i = 0; i < in; ++i) s += x[t * in + i] * W[o * in + i];
      y[t * out + o] = s;
    }
  return y;
}

// Direct causal convolution of channel c of u (B, L, C) with taps K (C, L): y[l] = sum_{j<=l} K[j] u[l-j].
std::vector<double> direct_conv(const std::vector<double>& u, const std::vector<double>& K, int64_t B, int64_t L,
                                int64_t C) {
  std::vector<double> y(u.size(), 0.0);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t c = 0; c < C; ++c)
      for (int64_t l = 0; l < L; ++l) {
        double s = 0;
        for (int64_t j = 0; j <= l; ++j) s += K[c * L + j] * u[(b * L + l - j) * C + c];
        y[(b * L + l) * C + c] = s;
      }
  return y;
}

// The depthwise short conv (C, W) with taps oldest first (tap W-1 = the current step) + bias.
std::vector<double> short_conv(const std::vector<double>& u, const std::vector<double>& w,
                               const std::vector<double>& bias, int64_t B, int64_t L, int64_t C, int64_t W) {
  std::vector<double> y(u.size());
  for (int64_t b = 0; b < B; ++b)
    for (int64_t l = 0; l < L; ++l)
      for (int64_t c = 0; c < C; ++c) {
        double s = bias.empty() ? 0.0 : bias[c];
        for (int64_t k = 0; k < W; ++k) {
          const int64_t src = l + k - (W - 1);
          if (src >= 0) s += w[c * W + k] * u[(b * L + src) * C + c];
        }
        y[(b * L + l) * C + c] = s;
      }
  return y;
}

// ---- H3 ----

std::shared_ptr<H3> make_h3(int64_t D, int64_t N, int64_t P, int64_t W, const std::string& disc, uint64_t seed) {
  H3Options o;
  o.d_model = D, o.d_state = N, o.head_dim = P, o.shift_width = W, o.discretization = disc;
  o.dt_min = 1e-2, o.dt_max = 2e-1;
  Generator gen(seed);
  auto m = std::make_shared<H3>(o, gen);
  m->to(DType::f64);
  return m;
}

std::vector<double> h3_reference(const H3& m, const std::vector<double>& x, int64_t B, int64_t L) {
  const H3Options& o = m.options();
  const int64_t D = o.d_model, P = o.head_dim, H = D / P, N2 = o.d_state / 2, W = o.shift_width, T = B * L;
  const auto qkv = dense(x, T, D, host(m, "in_proj.weight"), host(m, "in_proj.bias"), 3 * D);
  std::vector<double> q(T * D), k(T * D), v(T * D);
  for (int64_t t = 0; t < T; ++t)
    for (int64_t d = 0; d < D; ++d)
      q[t * D + d] = qkv[t * 3 * D + d], k[t * D + d] = qkv[t * 3 * D + D + d],
                v[t * D + d] = qkv[t * 3 * D + 2 * D + d];
  k = short_conv(k, host(m, "shift_weight"), {}, B, L, D, W);
  // The diagonal SSM's kernel, K_l = 2 Re sum_n C_n Bbar_n Abar_n^l, by explicit powers.
  const auto log_dt = host(m, "log_dt"), lar = host(m, "log_A_real"), aim = host(m, "A_imag");
  const auto Bp = host(m, "B"), Cp = host(m, "C"), Dp = host(m, "D");
  std::vector<double> K(static_cast<size_t>(H * L), 0.0);
  for (int64_t h = 0; h < H; ++h)
    for (int64_t n = 0; n < N2; ++n) {
      const int64_t i = h * N2 + n;
      const double dt = std::exp(log_dt[h]);
      const cd A(-std::exp(lar[i]), aim[i]), Bc(Bp[2 * i], Bp[2 * i + 1]), Cc(Cp[2 * i], Cp[2 * i + 1]);
      cd Abar, Bbar;
      if (o.discretization == "zoh") {
        Abar = std::exp(dt * A), Bbar = (Abar - 1.0) / A * Bc;
      } else {
        Abar = (1.0 + dt / 2 * A) / (1.0 - dt / 2 * A), Bbar = dt * Bc / (1.0 - dt / 2 * A);
      }
      cd pw = 1.0;
      for (int64_t l = 0; l < L; ++l, pw *= Abar) K[h * L + l] += 2.0 * (Cc * Bbar * pw).real();
    }
  // Per head: S[i, j] = K * (k_i v_j) + D k_i v_j; y_j = sum_i q_i S[i, j].
  std::vector<double> y(static_cast<size_t>(T * D), 0.0);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < H; ++h)
      for (int64_t i = 0; i < P; ++i)
        for (int64_t j = 0; j < P; ++j)
          for (int64_t l = 0; l < L; ++l) {
            auto kv = [&](int64_t s) { return k[(b * L + s) * D + h * P + i] * v[(b * L + s) * D + h * P + j]; };
            double S = Dp[h] * kv(l);
            for (int64_t s = 0; s <= l; ++s) S += K[h * L + l - s] * kv(s);
            y[(b * L + l) * D + h * P + j] += q[(b * L + l) * D + h * P + i] * S;
          }
  return dense(y, T, D, host(m, "out_proj.weight"), host(m, "out_proj.bias"), D);
}

// ---- Hyena ----

std::shared_ptr<Hyena> make_hyena(int64_t D, int64_t order, int64_t l_max, uint64_t seed, int64_t emb = 5,
                                  int64_t width = 6, int64_t layers = 1, double shift = 0.0) {
  HyenaOptions o;
  o.d_model = D, o.order = order, o.l_max = l_max, o.filter_emb_dim = emb, o.filter_width = width;
  o.filter_layers = layers, o.window_shift = shift;
  o.filter_sine_freq = 1.5;
  Generator gen(seed);
  auto m = std::make_shared<Hyena>(o, gen);
  m->to(DType::f64);
  return m;
}

// The implicit filters (N D, L) from the formulas of ssm/hyena.h.
std::vector<double> hyena_reference_filters(const Hyena& m, int64_t L) {
  const HyenaOptions& o = m.options();
  const int64_t E = o.filter_emb_dim, F = o.filter_width, C = o.order * o.d_model, bands = (E - 1) / 2;
  const int64_t Lr = o.l_max > 0 ? o.l_max : L;
  std::vector<double> out(static_cast<size_t>(C * L));
  for (int64_t t = 0; t < L; ++t) {
    std::vector<double> z(E);
    z[0] = static_cast<double>(t) / std::max<int64_t>(Lr - 1, 1);
    for (int64_t k = 0; k < bands; ++k) {
      const double f = bands == 1 ? 1e-4 : 1e-4 + (bands - 1 - 1e-4) * k / static_cast<double>(bands - 1);
      const double w = 2 * M_PI * t / static_cast<double>(Lr);
      z[1 + k] = std::cos(f * w), z[1 + bands + k] = -std::sin(f * w);
    }
    int64_t in = E;
    for (int64_t i = 0; i <= o.filter_layers; ++i) {
      const std::string fc = "filter_fc" + std::to_string(i);
      z = dense(z, 1, in, host(m, fc + ".weight"), host(m, fc + ".bias"), F);
      const auto freq = host(m, "filter_freq" + std::to_string(i));
      for (int64_t u = 0; u < F; ++u) z[u] = std::sin(freq[u] * z[u]);
      in = F;
    }
    const std::string last = "filter_fc" + std::to_string(o.filter_layers + 1);
    z = dense(z, 1, F, host(m, last + ".weight"), {}, C);
    const double slow = std::abs(std::log(o.decay_target)) / o.slow_decay_pct;
    const double fast = std::abs(std::log(o.decay_target)) / o.fast_decay_pct;
    for (int64_t c = 0; c < C; ++c) {
      const double alpha = C == 1 ? slow : slow + (fast - slow) * c / static_cast<double>(C - 1);
      const double window = std::exp(-alpha * t / static_cast<double>(std::max<int64_t>(Lr - 1, 1))) + o.window_shift;
      out[c * L + t] = z[c] * window;
    }
  }
  return out;
}

std::vector<double> hyena_reference(const Hyena& m, const std::vector<double>& x, int64_t B, int64_t L) {
  const HyenaOptions& o = m.options();
  const int64_t D = o.d_model, N = o.order, T = B * L, S = (N + 1) * D;
  auto proj = dense(x, T, D, host(m, "in_proj.weight"), host(m, "in_proj.bias"), S);
  proj = short_conv(proj, host(m, "short_conv.weight"), host(m, "short_conv.bias"), B, L, S, o.short_width);
  auto stream = [&](int64_t s) {
    std::vector<double> out(static_cast<size_t>(T * D));
    for (int64_t t = 0; t < T; ++t)
      for (int64_t d = 0; d < D; ++d) out[t * D + d] = proj[t * S + s * D + d];
    return out;
  };
  const auto h = hyena_reference_filters(m, L);
  const auto fbias = host(m, "filter_bias");
  std::vector<double> z = stream(N);
  for (int64_t n = 0; n < N; ++n) {
    std::vector<double> Kn(h.begin() + n * D * L, h.begin() + (n + 1) * D * L);
    const auto conv = direct_conv(z, Kn, B, L, D);
    const auto gate = stream(n);
    for (int64_t t = 0; t < T; ++t)
      for (int64_t d = 0; d < D; ++d)
        z[t * D + d] = gate[t * D + d] * (conv[t * D + d] + fbias[n * D + d] * z[t * D + d]);
  }
  return dense(z, T, D, host(m, "out_proj.weight"), host(m, "out_proj.bias"), D);
}

}  // namespace

TEST_CASE("h3 matches the naive reference (direct convolutions, explicit kernel powers)") {
  Generator gen(1601);
  struct Case {
    int64_t B, L, D, N, P, W;
    const char* disc;
  };
  // P = 1 (elementwise) and several heads; the shift on causal_conv1d (W <= 4) and by FFT
  // (W = 6 < L, and W = 9 > L: the filter cut to L).
  for (const Case& c : {Case{2, 7, 4, 4, 1, 4, "zoh"}, Case{2, 9, 6, 6, 2, 3, "bilinear"},
                        Case{1, 8, 6, 4, 3, 6, "zoh"}, Case{2, 5, 4, 2, 2, 9, "zoh"}}) {
    CAPTURE(c.L);
    CAPTURE(c.P);
    CAPTURE(c.W);
    auto m = make_h3(c.D, c.N, c.P, c.W, c.disc, 17 + c.L);
    const Tensor x = random_tensor({c.B, c.L, c.D}, gen, DType::f64);
    const Tensor y = m->forward(x);
    const Tensor ref = host_tensor(h3_reference(*m, x.to_vector<double>(), c.B, c.L), {c.B, c.L, c.D});
    check_close(y, ref, 1e-9, 1e-10, "h3 vs reference");
  }
}

TEST_CASE("h3 gradients of the input and every parameter match finite differences") {
  Generator gen(1602);
  struct Case {
    int64_t P, W;
  };
  for (const Case& c : {Case{1, 3}, Case{2, 4}, Case{2, 6}}) {
    CAPTURE(c.P);
    CAPTURE(c.W);
    auto m = make_h3(4, 4, c.P, c.W, "zoh", 29);
    std::vector<Tensor> inputs = {grad_leaf({2, 7, 4}, gen)};
    for (const Tensor& p : m->parameters()) inputs.push_back(p);
    check_gradients([&](const std::vector<Tensor>& in) { return m->forward(in[0]); }, inputs);
  }
}

TEST_CASE("h3 parameters: names, shapes and tags") {
  auto m = make_h3(6, 4, 2, 4, "zoh", 3);
  std::vector<std::string> names, ssm;
  for (const auto& p : m->named_parameters()) {
    names.push_back(p.name);
    if (p.has_tag(param_tag::ssm)) ssm.push_back(p.name);
  }
  // A module lists its own parameters first, then its children's.
  CHECK(names == std::vector<std::string>{"shift_weight", "log_dt", "log_A_real", "A_imag", "B", "C", "D",
                                          "in_proj.weight", "in_proj.bias", "out_proj.weight", "out_proj.bias"});
  CHECK(ssm == std::vector<std::string>{"log_dt", "log_A_real", "A_imag", "B"});
  CHECK(m->heads() == 3);
  CHECK(m->parameter("C").shape() == Dims{3, 2, 2});
  CHECK(m->ssm_kernel(5).shape() == Dims{3, 5});
}

TEST_CASE("hyena implicit filters match the formulas") {
  for (int64_t l_max : {0, 6, 16}) {
    CAPTURE(l_max);
    auto m = make_hyena(3, 2, l_max, 41, 5, 6, 1, 0.1);
    const Tensor K = m->filters(11);
    CHECK(K.shape() == Dims{6, 11});
    check_close(K, host_tensor(hyena_reference_filters(*m, 11), {6, 11}), 1e-12, 1e-13, "filters");
  }
  // The window decays from 1 (+ shift) at t = 0 to decay_target at t = pct * (Lr - 1).
  HyenaOptions o;
  const auto w = hyena_window(101, 101, 2, o);
  CHECK(w[0] == doctest::Approx(1.0));
  CHECK(w[30 * 2 + 1] == doctest::Approx(o.decay_target).epsilon(1e-9));  // fast channel at 0.3
  CHECK(w[100 * 2 + 0] == doctest::Approx(std::pow(o.decay_target, 1 / 1.5)).epsilon(1e-9));
}

TEST_CASE("hyena matches the naive reference (direct long convolutions)") {
  Generator gen(1603);
  struct Case {
    int64_t B, L, D, order, l_max;
  };
  for (const Case& c : {Case{2, 7, 4, 2, 0}, Case{1, 10, 3, 1, 16}, Case{2, 6, 2, 3, 4}}) {
    CAPTURE(c.order);
    CAPTURE(c.L);
    auto m = make_hyena(c.D, c.order, c.l_max, 53 + c.order);
    const Tensor x = random_tensor({c.B, c.L, c.D}, gen, DType::f64);
    const Tensor y = m->forward(x);
    const Tensor ref = host_tensor(hyena_reference(*m, x.to_vector<double>(), c.B, c.L), {c.B, c.L, c.D});
    check_close(y, ref, 1e-9, 1e-10, "hyena vs reference");
  }
}

TEST_CASE("hyena gradients of the input and every parameter match finite differences") {
  Generator gen(1604);
  for (int64_t order : {1, 2, 3}) {
    CAPTURE(order);
    auto m = make_hyena(3, order, 8, 61, 5, 4, 1, 0.05);
    std::vector<Tensor> inputs = {grad_leaf({2, 6, 3}, gen)};
    for (const Tensor& p : m->parameters()) inputs.push_back(p);
    check_gradients([&](const std::vector<Tensor>& in) { return m->forward(in[0]); }, inputs);
  }
}

TEST_CASE("hyena parameters: names, shapes and tags") {
  auto m = make_hyena(4, 2, 0, 7, 5, 6, 2);
  std::vector<std::string> names, ssm;
  for (const auto& p : m->named_parameters()) {
    names.push_back(p.name);
    if (p.has_tag(param_tag::ssm)) ssm.push_back(p.name);
  }
  CHECK(names == std::vector<std::string>{"filter_freq0", "filter_freq1", "filter_freq2", "filter_bias",
                                          "in_proj.weight", "in_proj.bias", "short_conv.weight", "short_conv.bias",
                                          "filter_fc0.weight", "filter_fc0.bias", "filter_fc1.weight",
                                          "filter_fc1.bias", "filter_fc2.weight", "filter_fc2.bias",
                                          "filter_fc3.weight", "out_proj.weight", "out_proj.bias"});
  CHECK(ssm.size() == 11);
  CHECK(m->parameter("in_proj.weight").shape() == Dims{12, 4});
  CHECK(m->parameter("filter_fc3.weight").shape() == Dims{8, 6});
}

TEST_CASE("model factory builds h3 and hyena stacks") {
  ModelSpec spec;
  spec.model.d_model = 8, spec.model.n_layer = 3, spec.model.d_state = 4, spec.model.vocab_size = 16;
  spec.model.layers = {"hyena", "h3", "hyena"};
  spec.model.mixers.get<H3Options>().head_dim = 2;
  spec.model.mixers.get<HyenaOptions>().order = 3;
  Generator gen(5);
  auto lm = build_language_model(spec, gen);
  auto h3 = std::dynamic_pointer_cast<H3>(lm->block(1)->mixer());
  auto hy = std::dynamic_pointer_cast<Hyena>(lm->block(2)->mixer());
  REQUIRE(h3);
  REQUIRE(hy);
  CHECK(h3->heads() == 4);
  CHECK(hy->options().order == 3);
  Tensor ids = Tensor::from_vector<int64_t>({1, 2, 3, 4, 5, 6, 7}, {1, 7});
  CHECK(std::isfinite(sum(lm->forward(ids).logits).item<float>()));
}

// The recurrent / streaming form against the full-sequence form, in f64. Both compute the
// same sums in other orders (an FFT against a running recurrence or a direct sum): ~1e-14
// relative to outputs of O(10); 1e-9 is far below any modelling error (a wrong tap is O(0.1)).
TEST_CASE("h3 step by step equals the full sequence") {
  Generator gen(1605);
  struct Case {
    int64_t P, W;
    const char* disc;
  };
  for (const Case& c : {Case{1, 4, "zoh"}, Case{2, 1, "bilinear"}, Case{2, 6, "zoh"}}) {
    CAPTURE(c.P);
    CAPTURE(c.W);
    auto m = make_h3(4, 6, c.P, c.W, c.disc, 71);
    const int64_t B = 2, L = 11;
    const Tensor x = random_tensor({B, L, 4}, gen, DType::f64);
    const Tensor full = m->forward(x);
    auto state = m->init_state(B, Device::cpu(), DType::f64);
    std::vector<Tensor> steps;
    for (int64_t t = 0; t < L; ++t) steps.push_back(m->step(x.select(1, t).contiguous(), *state));
    check_close(stack(steps, 1), full, 1e-9, 1e-10, "h3 step vs forward");
  }
}

TEST_CASE("hyena step by step equals the full sequence, past its reference length") {
  Generator gen(1606);
  for (int64_t order : {1, 2, 3}) {
    CAPTURE(order);
    auto m = make_hyena(3, order, 5, 73, 5, 6, 1, 0.05);  // l_max 5 < L: the taps grow twice
    const int64_t B = 2, L = 13;
    const Tensor x = random_tensor({B, L, 3}, gen, DType::f64);
    const Tensor full = m->forward(x);
    auto state = m->init_state(B, Device::cpu(), DType::f64);
    std::vector<Tensor> steps;
    for (int64_t t = 0; t < L; ++t) steps.push_back(m->step(x.select(1, t).contiguous(), *state));
    check_close(stack(steps, 1), full, 1e-9, 1e-10, "hyena step vs forward");
  }
  // A short conv of one tap keeps an empty window.
  {
    HyenaOptions o;
    o.d_model = 3, o.order = 2, o.l_max = 8, o.short_width = 1, o.filter_emb_dim = 5, o.filter_width = 4;
    Generator g(77);
    auto m1 = std::make_shared<Hyena>(o, g);
    m1->to(DType::f64);
    const Tensor x = random_tensor({1, 6, 3}, gen, DType::f64);
    const Tensor full = m1->forward(x);
    auto state = m1->init_state(1, Device::cpu(), DType::f64);
    std::vector<Tensor> steps;
    for (int64_t t = 0; t < 6; ++t) steps.push_back(m1->step(x.select(1, t).contiguous(), *state));
    check_close(stack(steps, 1), full, 1e-9, 1e-10, "hyena step, short_width 1");
  }
  // Without a reference length the filters of a stream are undefined.
  auto m = make_hyena(3, 2, 0, 75);
  CHECK_THROWS_AS(m->init_state(1, Device::cpu(), DType::f64), UserError);
}
