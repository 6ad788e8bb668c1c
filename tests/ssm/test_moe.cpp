// The MoE layer on the CPU: the routing op against a direct transcription of its
// definition (top-k with ties, choice-major capacity, counts, usage), dispatch and combine
// against finite differences, the whole Switch block against a naive per-token
// implementation (top-1 and top-2, with drops, dropless and in evaluation), and the whole
// block's gradients, router and experts, through the output and the balancing and z losses,
// against finite differences in f64.
//
// Tolerances. The block and the naive version evaluate the same sums in f64 in different
// orders (batched GEMMs vs per-token loops): O(10) terms of O(1) values, so they agree to
// ~1e-15; 1e-12 leaves a wide margin and still catches any wrong gate, expert or dropped
// token (O(0.01) at least). Finite differences: gradcheck.h's analysis (eps 1e-6, rtol
// 1e-5) holds because routing is piecewise constant and the random data stay > 1e-4 away
// from any tie (checked below), so a step of 1e-6 never changes the routing.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <memory>
#include <numeric>
#include <string>
#include <vector>

#include "core/autograd.h"
#include "core/ops.h"
#include "gradcheck.h"
#include "ssm/kernels/moe_routing.h"
#include "ssm/moe.h"
#include "user_error.h"

using namespace ssmtrain;

namespace {

// The routing of moe_routing.h, transcribed: experts sorted by (-p, index), assignments
// walked choice-major then by token.
struct DirectRoute {
  std::vector<int64_t> expert, slot, first, counts;
  int64_t dropped = 0;
};
DirectRoute direct_route(const std::vector<double>& p, int64_t T, int64_t E, int64_t k, int64_t capacity) {
  DirectRoute r;
  r.expert.resize(static_cast<size_t>(T * k));
  r.slot.resize(static_cast<size_t>(T * k));
  r.first.assign(static_cast<size_t>(E), 0);
  for (int64_t t = 0; t < T; ++t) {
    std::vector<int64_t> order(static_cast<size_t>(E));
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return p[t * E + a] > p[t * E + b]; });
    for (int64_t j = 0; j < k; ++j) r.expert[t * k + j] = order[j];
    ++r.first[order[0]];
  }
  std::vector<int64_t> filled(static_cast<size_t>(E), 0);
  for (int64_t j = 0; j < k; ++j)
    for (int64_t t = 0; t < T; ++t) {
      const int64_t e = r.expert[t * k + j], pos = filled[e]++;
      r.slot[t * k + j] = pos < capacity ? e * capacity + pos : -1;
      r.dropped += pos < capacity ? 0 : 1;
    }
  r.counts = filled;
  return r;
}

Tensor param(Module& m, const std::string& name) {
  for (const auto& p : m.named_parameters())
    if (p.name == name) return p.tensor;
  FAIL("no parameter ", name);
  return Tensor();
}

double gelu_tanh(double x) { return 0.5 * x * (1 + std::tanh(std::sqrt(2 / M_PI) * (x + 0.044715 * x * x * x))); }

// The block token by token: router softmax, top-k, choice-major capacity, each kept
// assignment's expert FFN on the token alone, gates p (k = 1) or p renormalised over the k.
struct NaiveMoe {
  std::vector<double> y;
  DirectRoute route;
};
NaiveMoe naive_moe(SwitchMoE& moe, const Tensor& x, int64_t capacity) {
  const MoEOptions& o = moe.options();
  const int64_t T = x.size(0), D = o.d_model, E = o.num_experts, k = o.top_k;
  const std::vector<double> xv = x.to_vector<double>(), wr = param(moe, "router.weight").to_vector<double>();
  std::vector<double> probs(static_cast<size_t>(T * E));
  for (int64_t t = 0; t < T; ++t) {
    double mx = -1e300;
    for (int64_t e = 0; e < E; ++e) {
      double l = 0;
      for (int64_t d = 0; d < D; ++d) l += wr[e * D + d] * xv[t * D + d];
      probs[t * E + e] = l;
      mx = std::max(mx, l);
    }
    double z = 0;
    for (int64_t e = 0; e < E; ++e) z += probs[t * E + e] = std::exp(probs[t * E + e] - mx);
    for (int64_t e = 0; e < E; ++e) probs[t * E + e] /= z;
  }
  NaiveMoe out;
  out.route = direct_route(probs, T, E, k, capacity);
  out.y.assign(static_cast<size_t>(T * D), 0.0);
  for (int64_t t = 0; t < T; ++t) {
    double norm = 0;
    for (int64_t j = 0; j < k; ++j) norm += probs[t * E + out.route.expert[t * k + j]];
    for (int64_t j = 0; j < k; ++j) {
      const int64_t e = out.route.expert[t * k + j];
      if (out.route.slot[t * k + j] < 0) continue;
      const double gate = k == 1 ? probs[t * E + e] : probs[t * E + e] / norm;
      const std::string pre = "experts." + std::to_string(e) + ".";
      const std::vector<double> w1 = param(moe, pre + "fc1.weight").to_vector<double>();
      const std::vector<double> w2 = param(moe, pre + "fc2.weight").to_vector<double>();
      const int64_t F = static_cast<int64_t>(w1.size()) / D;
      std::vector<double> h(static_cast<size_t>(F));
      for (int64_t f = 0; f < F; ++f) {
        double a = 0;
        for (int64_t d = 0; d < D; ++d) a += w1[f * D + d] * xv[t * D + d];
        h[f] = o.activation == "relu" ? std::max(a, 0.0) : gelu_tanh(a);
      }
      for (int64_t d = 0; d < D; ++d) {
        double a = 0;
        for (int64_t f = 0; f < F; ++f) a += w2[d * F + f] * h[f];
        out.y[t * D + d] += gate * a;
      }
    }
  }
  return out;
}

// The smallest gap between router probabilities that decide the routing: consecutive ranks
// among the first k + 1 of each token (a tie there could flip under a tiny perturbation).
double routing_margin(SwitchMoE& moe, const Tensor& x) {
  NoGradGuard no_grad;
  const int64_t E = moe.options().num_experts, k = moe.options().top_k;
  const Tensor w = param(moe, "router.weight").to(DType::f64).to(Device::cpu());
  std::vector<double> p = softmax(linear(x.to(DType::f64).to(Device::cpu()), w), -1).to_vector<double>();
  double margin = 1e300;
  for (size_t t = 0; t * E < p.size(); ++t) {
    std::vector<double> row(p.begin() + static_cast<int64_t>(t) * E, p.begin() + static_cast<int64_t>(t + 1) * E);
    std::sort(row.rbegin(), row.rend());
    for (int64_t j = 0; j < std::min(k, E - 1); ++j) margin = std::min(margin, row[j] - row[j + 1]);
  }
  return margin;
}

struct BlockCase {
  int64_t top_k;
  double capacity_factor;
  const char* activation;
};

std::shared_ptr<SwitchMoE> make_moe(const BlockCase& c, uint64_t seed, int64_t E = 3) {
  Generator gen(seed);
  MoEOptions o;
  o.d_model = 4, o.num_experts = E, o.d_ff = 5, o.top_k = c.top_k, o.capacity_factor = c.capacity_factor;
  o.activation = c.activation;
  o.aux_loss_coef = 0.5, o.z_loss_coef = 0.1;  // large, so their gradients weigh in the checks
  auto moe = std::make_shared<SwitchMoE>(o, gen);
  moe->to(DType::f64);
  moe->train();
  return moe;
}

}  // namespace

TEST_CASE("moe_route matches the direct routing: top-k with ties, choice-major capacity, counts and usage") {
  Generator gen(3);
  for (int64_t T : {1, 7, 300, 600}) {
    for (int64_t E : {1, 3, 8}) {
      for (int64_t k : {1, 2, 3}) {
        if (k > E) continue;
        for (int64_t capacity : {int64_t{1}, std::max<int64_t>(1, T * k / E / 2), T}) {
          CAPTURE(T);
          CAPTURE(E);
          CAPTURE(k);
          CAPTURE(capacity);
          // Small integer "probabilities": many exact ties (moe_route does not need
          // normalised rows).
          Tensor probs = random_tensor({T, E}, gen, DType::f64, Device::cpu(), 0, 4);
          std::vector<double> pv = probs.to_vector<double>();
          for (double& v : pv) v = std::floor(v);
          probs = Tensor::from_vector(pv, {T, E});
          Tensor usage = Tensor::zeros({E + 2}, DType::f64);
          const DirectRoute want = direct_route(pv, T, E, k, capacity);
          for (DType dt : {DType::f64, DType::f32}) {
            const MoeRouting got = moe_route(probs.to(dt), k, capacity, usage);
            CHECK(got.expert.to_vector<int64_t>() == want.expert);
            CHECK(got.slot.to_vector<int64_t>() == want.slot);
            CHECK(got.first_counts.to_vector<int64_t>() == want.first);
            CHECK(got.counts.to_vector<int64_t>() == want.counts);
          }
          // Two calls accumulated.
          std::vector<double> u = usage.to_vector<double>();
          for (int64_t e = 0; e < E; ++e) CHECK(u[e] == 2.0 * static_cast<double>(want.first[e]));
          CHECK(u[E] == 2.0 * static_cast<double>(want.dropped));
          CHECK(u[E + 1] == 2.0 * static_cast<double>(T * k));
        }
      }
    }
  }
}

TEST_CASE("moe_route reports bad arguments by name") {
  Tensor probs = Tensor::ones({4, 3}, DType::f32);
  CHECK(testing::contains(testing::user_error_of([&] { moe_route(probs, 4, 2); }), "1 <= k <= E"));
  CHECK(testing::contains(testing::user_error_of([&] { moe_route(probs, 1, 0); }), "capacity"));
  CHECK(testing::contains(testing::user_error_of([&] { moe_route(probs, 1, 2, Tensor::zeros({3}, DType::f64)); }),
                          "usage"));
  Tensor slot = Tensor::zeros({5, 1}, DType::i64);
  CHECK(testing::contains(testing::user_error_of([&] { moe_dispatch(probs, slot, 4); }), "slot"));
}

TEST_CASE("moe_dispatch and moe_combine: values and gradients against finite differences") {
  Generator gen(11);
  const int64_t T = 9, D = 3, E = 4, k = 2, capacity = 3;
  Tensor probs = random_tensor({T, E}, gen, DType::f64);
  const MoeRouting r = moe_route(probs, k, capacity);
  const std::vector<int64_t> slot = r.slot.to_vector<int64_t>();
  REQUIRE(std::count(slot.begin(), slot.end(), -1) > 0);  // some assignments are dropped
  Tensor x = grad_leaf({T, D}, gen), yd = grad_leaf({E * capacity, D}, gen), gate = grad_leaf({T, k}, gen);
  {
    NoGradGuard no_grad;
    const std::vector<double> xd = moe_dispatch(x, r.slot, E * capacity).to_vector<double>();
    const std::vector<double> y = moe_combine(yd, r.slot, gate).to_vector<double>();
    const std::vector<double> xv = x.to_vector<double>(), ydv = yd.to_vector<double>(), gv = gate.to_vector<double>();
    std::vector<double> want_xd(static_cast<size_t>(E * capacity * D), 0.0), want_y(static_cast<size_t>(T * D), 0.0);
    for (int64_t t = 0; t < T; ++t)
      for (int64_t j = 0; j < k; ++j) {
        const int64_t s = slot[t * k + j];
        if (s < 0) continue;
        for (int64_t d = 0; d < D; ++d) {
          want_xd[s * D + d] = xv[t * D + d];
          want_y[t * D + d] += gv[t * k + j] * ydv[s * D + d];
        }
      }
    CHECK(xd == want_xd);  // copies: exact
    for (size_t i = 0; i < y.size(); ++i) CHECK(y[i] == doctest::Approx(want_y[i]).epsilon(1e-14));
  }
  check_gradients([&](const std::vector<Tensor>& in) { return moe_dispatch(in[0], r.slot, E * capacity); }, {x});
  check_gradients([&](const std::vector<Tensor>& in) { return moe_combine(in[0], r.slot, in[1]); }, {yd, gate});
}

TEST_CASE("Switch MoE block equals a naive per-token implementation (top-1, top-2, drops, dropless, eval)") {
  const BlockCase cases[] = {{1, 0.5, "relu"}, {1, 1.25, "gelu"}, {1, 0.0, "gelu"},
                             {2, 0.5, "gelu"}, {2, 0.0, "relu"},  {3, 0.75, "relu"}};
  for (const BlockCase& c : cases) {
    for (bool training : {true, false}) {
      CAPTURE(c.top_k);
      CAPTURE(c.capacity_factor);
      CAPTURE(training);
      auto moe = make_moe(c, 5, 4);
      if (!training) moe->eval();
      Generator gen(9);
      const int64_t B = 2, L = 7, T = B * L, D = 4;
      Tensor x = random_tensor({B, L, D}, gen, DType::f64);
      NoGradGuard no_grad;
      Tensor y = moe->forward(x).reshape({T, D});
      moe->take_aux_loss();
      const int64_t capacity = moe->capacity(T);
      if (!training || c.capacity_factor == 0) CHECK(capacity == T);
      if (training && c.capacity_factor > 0)
        CHECK(capacity == std::clamp<int64_t>(static_cast<int64_t>(c.capacity_factor * c.top_k * T / 4), 1, T));
      const NaiveMoe want = naive_moe(*moe, x.reshape({T, D}), capacity);
      check_close(y, Tensor::from_vector(want.y, {T, D}), 1e-12, 1e-12, "block vs naive output");
      const ExpertUsage u = moe->usage();
      if (training) {
        CHECK(u.tokens == T);
        CHECK(u.assignments == T * c.top_k);
        CHECK(u.dropped == want.route.dropped);
        CHECK(u.tokens_routed == want.route.first);
        if (c.capacity_factor == 0.5) CHECK(u.dropped > 0);  // the case exercises drops
      } else {
        CHECK(u.tokens == 0);  // evaluation does not count
      }
      if (c.capacity_factor == 0 || !training) CHECK(want.route.dropped == 0);
    }
  }
}

TEST_CASE("Switch MoE capacity: floor(factor * k * tokens / E), at least 1, at most tokens; 0 is dropless") {
  auto moe = make_moe({2, 1.25, "gelu"}, 1, 3);
  CHECK(moe->capacity(12) == 10);  // floor(1.25 * 2 * 12 / 3)
  CHECK(moe->capacity(1) == 1);
  auto big = make_moe({1, 10.0, "gelu"}, 1, 3);
  CHECK(big->capacity(12) == 12);
  auto dropless = make_moe({1, 0.0, "gelu"}, 1, 3);
  CHECK(dropless->capacity(12) == 12);
  moe->eval();
  CHECK(moe->capacity(12) == 12);
  // top_k over the experts is refused by the options' check, naming the key.
  MoEOptions o;
  o.num_experts = 2, o.top_k = 3;
  MixerContext context;
  context.n_layer = 2;
  context.prefix = "model.moe.";
  CHECK(testing::contains(testing::user_error_of([&] { o.validate(context); }), "model.moe.top_k"));
}

TEST_CASE("Switch MoE block gradients (router and experts, output and aux losses) match finite differences") {
  const BlockCase cases[] = {{1, 0.5, "gelu"}, {1, 0.0, "relu"}, {2, 0.5, "gelu"}, {2, 0.0, "gelu"}};
  for (const BlockCase& c : cases) {
    CAPTURE(c.top_k);
    CAPTURE(c.capacity_factor);
    auto moe = make_moe(c, 21);
    Generator gen(17);
    Tensor x = random_tensor({2, 6, 4}, gen, DType::f64);
    REQUIRE(routing_margin(*moe, x) > 1e-4);  // no tie within reach of the differences
    x.requires_grad_();
    std::vector<Tensor> inputs{x};
    for (const auto& p : moe->named_parameters()) inputs.push_back(p.tensor);
    // The output and the auxiliary loss (balancing + z-loss) together, so the router's
    // gradient through the gates and through the losses is checked.
    check_gradients(
        [&](const std::vector<Tensor>& in) {
          Tensor y = moe->forward(in[0]);
          Tensor aux = moe->take_aux_loss();
          REQUIRE(aux.defined());
          return cat({y.reshape({-1}), aux.reshape({1})}, 0);
        },
        inputs);
    if (c.capacity_factor > 0) CHECK(moe->usage().dropped > 0);
  }
}

TEST_CASE("moe_stack_weights equals stack of casts, with finite-difference gradients") {
  Generator gen(31);
  std::vector<Tensor> ws;
  for (int e = 0; e < 3; ++e) ws.push_back(grad_leaf({4, 5}, gen));
  // A non-contiguous weight is taken too.
  Tensor wide = grad_leaf({5, 4}, gen);
  {
    NoGradGuard no_grad;
    for (DType dt : {DType::f64, DType::f32, DType::bf16}) {
      std::vector<Tensor> cast_ws;
      for (const Tensor& w : ws) cast_ws.push_back(w.to(DType::f32).to(dt));
      const Tensor got = moe_stack_weights({ws[0].to(DType::f32), ws[1].to(DType::f32), ws[2].to(DType::f32)}, dt);
      CHECK(got.dtype() == dt);
      CHECK(got.shape() == Dims{3, 4, 5});
      CHECK(got.to_vector<double>() == stack(cast_ws, 0).to_vector<double>());  // the same rounding
    }
    const Tensor t = moe_stack_weights({wide.transpose(0, 1), ws[0]}, DType::f64);
    CHECK(t.select(0, 0).to_vector<double>() == wide.transpose(0, 1).contiguous().to_vector<double>());
  }
  check_gradients([](const std::vector<Tensor>& in) { return moe_stack_weights(in, DType::f64); }, ws);
}
