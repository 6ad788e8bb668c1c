// Layers: forward against hand-written references, f64 gradient checks, init, dropout.
#include <doctest/doctest.h>

#include <cmath>

#include "gradcheck.h"
#include "nn/dropout.h"
#include "nn/init.h"
#include "nn/linear.h"
#include "nn/mlp.h"
#include "nn/norm.h"

using namespace ssmtrain;

namespace {

// Runs check_gradients over x and every parameter of `m` (converted to f64 beforehand).
template <typename M>
void check_module_gradients(M& m, const Tensor& x) {
  std::vector<Tensor> inputs = {x};
  for (const Tensor& p : m.parameters()) inputs.push_back(p);
  check_gradients([&](const std::vector<Tensor>& in) { return m.forward(in[0]); }, inputs);
}

}  // namespace

TEST_CASE("Linear forward matches x W^T + b") {
  Generator gen(3);
  Linear lin(3, 2, gen);
  Tensor x = random_tensor({4, 3}, gen);
  std::vector<float> w = lin.weight().to_vector<float>(), b = lin.bias().to_vector<float>(),
                     xv = x.to_vector<float>(), y = lin.forward(x).to_vector<float>();
  for (int i = 0; i < 4; ++i)
    for (int o = 0; o < 2; ++o) {
      double ref = b[o];
      for (int k = 0; k < 3; ++k) ref += xv[i * 3 + k] * w[o * 3 + k];
      CHECK(y[i * 2 + o] == doctest::Approx(ref).epsilon(1e-6));
    }
  CHECK(lin.forward(random_tensor({2, 5, 3}, gen)).shape() == Dims{2, 5, 2});
}

TEST_CASE("Linear default init is PyTorch kaiming uniform") {
  Generator gen(11);
  const int64_t in = 64, out = 256;
  Linear lin(in, out, gen);
  CHECK(gen.offset() == static_cast<uint64_t>(in * out + out));  // one counter per element
  double bound = 1.0 / std::sqrt(static_cast<double>(in));
  double max_abs = 0, sum = 0;
  for (float v : lin.weight().to_vector<float>()) {
    max_abs = std::max(max_abs, std::abs(static_cast<double>(v)));
    sum += v;
  }
  CHECK(max_abs <= bound);
  CHECK(max_abs > 0.99 * bound);
  CHECK(std::abs(sum / (in * out)) < 0.01 * bound);
  for (float v : lin.bias().to_vector<float>()) CHECK(std::abs(v) <= bound);

  // Same seed, same weights; another seed, other weights.
  Generator a(5), b(5), c(6);
  Linear la(8, 8, a), lb(8, 8, b), lc(8, 8, c);
  CHECK(la.weight().to_vector<float>() == lb.weight().to_vector<float>());
  CHECK(la.weight().to_vector<float>() != lc.weight().to_vector<float>());
}

TEST_CASE("Linear normal init and Embedding init have the requested std") {
  Generator gen(12);
  Linear lin(200, 300, gen, LinearOptions{.bias = true, .init = LinearInit::normal, .std = 0.05});
  std::vector<float> w = lin.weight().to_vector<float>();
  double s = 0, s2 = 0;
  for (float v : w) s += v, s2 += static_cast<double>(v) * v;
  double mean = s / w.size(), sd = std::sqrt(s2 / w.size() - mean * mean);
  CHECK(std::abs(mean) < 1e-3);
  CHECK(sd == doctest::Approx(0.05).scale(0).epsilon(0.02));
  for (float v : lin.bias().to_vector<float>()) CHECK(v == 0.0f);

  Embedding emb(500, 100, gen);
  std::vector<float> e = emb.weight().to_vector<float>();
  s = s2 = 0;
  for (float v : e) s += v, s2 += static_cast<double>(v) * v;
  CHECK(std::sqrt(s2 / e.size()) == doctest::Approx(0.02).scale(0).epsilon(0.02));
  Tensor ids = Tensor::from_vector<int64_t>({4, 0, 4}, {3});
  std::vector<float> rows = emb.forward(ids).to_vector<float>();
  for (int d = 0; d < 100; ++d) {
    CHECK(rows[d] == e[4 * 100 + d]);
    CHECK(rows[100 + d] == e[d]);
    CHECK(rows[200 + d] == e[4 * 100 + d]);
  }
}

TEST_CASE("init fan_in and residual rescale") {
  CHECK(init::fan_in(Tensor::zeros({8, 3, 4})) == 12);
  CHECK(init::fan_in(Tensor::zeros({8, 5})) == 5);
  Generator a(9), b(9);
  MLP scaled(4, 8, a), plain(4, 8, b);
  int n = init::rescale_residual_projections(scaled, 4);
  CHECK(n == 1);
  std::vector<float> s2 = scaled.fc2()->weight().to_vector<float>(), p2 = plain.fc2()->weight().to_vector<float>();
  for (size_t i = 0; i < s2.size(); ++i) CHECK(s2[i] == doctest::Approx(p2[i] / 2.0).scale(0).epsilon(1e-6));
  CHECK(scaled.fc1()->weight().to_vector<float>() == plain.fc1()->weight().to_vector<float>());
}

TEST_CASE("RMSNorm and LayerNorm forward match the definitions") {
  Generator gen(4);
  Tensor x = random_tensor({3, 5}, gen, DType::f64);
  RMSNorm rms(5, 1e-5);
  LayerNorm ln(5, 1e-5);
  rms.to(DType::f64);
  ln.to(DType::f64);
  std::vector<double> xv = x.to_vector<double>(), yr = rms.forward(x).to_vector<double>(),
                      yl = ln.forward(x).to_vector<double>();
  for (int r = 0; r < 3; ++r) {
    double ms = 0, mean = 0, var = 0;
    for (int d = 0; d < 5; ++d) ms += xv[r * 5 + d] * xv[r * 5 + d] / 5, mean += xv[r * 5 + d] / 5;
    for (int d = 0; d < 5; ++d) var += (xv[r * 5 + d] - mean) * (xv[r * 5 + d] - mean) / 5;
    for (int d = 0; d < 5; ++d) {
      CHECK(yr[r * 5 + d] == doctest::Approx(xv[r * 5 + d] / std::sqrt(ms + 1e-5)).epsilon(1e-12));
      CHECK(yl[r * 5 + d] == doctest::Approx((xv[r * 5 + d] - mean) / std::sqrt(var + 1e-5)).epsilon(1e-12));
    }
  }
  CHECK(rms.named_parameters()[0].has_tag(param_tag::no_decay));
  CHECK(ln.named_parameters()[1].name == "bias");
  CHECK(ln.named_parameters()[1].has_tag(param_tag::no_decay));
}

TEST_CASE("Linear gradient check in f64") {
  Generator gen(21);
  Linear lin(4, 3, gen);
  lin.to(DType::f64);
  check_module_gradients(lin, grad_leaf({2, 5, 4}, gen));
}

TEST_CASE("RMSNorm gradient check in f64") {
  Generator gen(22);
  RMSNorm norm(6);
  norm.to(DType::f64);
  // A non-trivial weight, so the weight's gradient is not the plain normalised input sum.
  init::uniform_(norm.weight(), gen, 0.5, 1.5);
  check_module_gradients(norm, grad_leaf({3, 6}, gen));
}

TEST_CASE("LayerNorm gradient check in f64") {
  Generator gen(23);
  LayerNorm norm(6);
  norm.to(DType::f64);
  init::uniform_(norm.weight(), gen, 0.5, 1.5);
  init::uniform_(norm.bias(), gen, -0.5, 0.5);
  check_module_gradients(norm, grad_leaf({3, 6}, gen));
}

TEST_CASE("MLP gradient check in f64") {
  Generator gen(24);
  MLP mlp(4, 6, gen, MLPOptions{.bias = true});
  mlp.to(DType::f64);
  CHECK(mlp.parameters().size() == 4);
  check_module_gradients(mlp, grad_leaf({2, 3, 4}, gen));
}

TEST_CASE("GatedMLP forward is fc2 of value times silu of gate and its gradients check") {
  Generator gen(25);
  GatedMLP g(4, 5, gen);
  g.to(DType::f64);
  CHECK(g.fc1()->weight().shape() == Dims{10, 4});
  CHECK(g.fc2()->weight().shape() == Dims{4, 5});
  CHECK_FALSE(g.fc1()->bias().defined());
  Tensor x = grad_leaf({3, 4}, gen);
  {
    NoGradGuard ng;
    std::vector<double> h = linear(x, g.fc1()->weight()).to_vector<double>();
    std::vector<double> act(15);
    for (int r = 0; r < 3; ++r)
      for (int j = 0; j < 5; ++j) {
        double value = h[r * 10 + j], gate = h[r * 10 + 5 + j];
        act[r * 5 + j] = value * gate / (1 + std::exp(-gate));
      }
    Tensor ref = linear(Tensor::from_vector(act, {3, 5}), g.fc2()->weight());
    check_close(g.forward(x), ref, 1e-12, 1e-14, "gated mlp forward");
  }
  check_module_gradients(g, x);
  CHECK(gated_mlp_hidden(768) == 2048);
  CHECK(gated_mlp_hidden(64, 128) == 256);
}

TEST_CASE("Dropout is deterministic, scales kept values and is identity in eval") {
  Tensor x = Tensor::ones({10000});
  Dropout d1(0.25, 77), d2(0.25, 77);
  std::vector<float> a = d1.forward(x).to_vector<float>(), b = d2.forward(x).to_vector<float>();
  CHECK(a == b);
  CHECK(d1.generator().offset() == 10000);
  int zeros = 0;
  for (float v : a) {
    if (v == 0.0f)
      ++zeros;
    else
      CHECK(v == doctest::Approx(1.0 / 0.75));
  }
  CHECK(zeros > 2200);
  CHECK(zeros < 2800);
  // The next draw uses new counters: a different mask.
  CHECK(d1.forward(x).to_vector<float>() != a);
  d1.eval();
  CHECK(d1.forward(x).to_vector<float>() == x.to_vector<float>());
  Generator shared(5);
  Dropout d3(0.5, shared);
  d3.forward(x);
  CHECK(shared.offset() == 10000);
  CHECK_THROWS_AS(Dropout(1.0, 1), UserError);
}

TEST_CASE("Linear runs in the input's dtype and returns f32 gradients to f32 weights") {
  Generator gen(4);
  Linear lin(6, 5, gen);
  Tensor x = random_tensor({3, 6}, gen);
  // Reference in f32, then the same with a bf16 input (mixed precision).
  Tensor y32 = lin.forward(x);
  backward(sum(y32));
  Tensor gw32 = lin.weight().grad();
  lin.zero_grad();
  Tensor y16 = lin.forward(x.to(DType::bf16));
  CHECK(y16.dtype() == DType::bf16);
  backward(sum(cast(y16, DType::f32)));
  Tensor gw16 = lin.weight().grad();
  REQUIRE(gw16.defined());
  CHECK(gw16.dtype() == DType::f32);
  // bf16 rounds inputs, weights and outputs to 8 significant bits (relative 2^-9 each); sums
  // of 6 products of O(1) values stay within ~3 * 2^-9 * 6 = 0.035 absolute.
  check_close(cast(y16, DType::f32), y32, 2e-2, 4e-2, "bf16 output vs f32");
  check_close(gw16, gw32, 2e-2, 4e-2, "weight gradient through the bf16 path");
}
