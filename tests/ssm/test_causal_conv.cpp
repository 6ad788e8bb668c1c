// causal_conv1d: against a naive loop for every kernel width and option, finite-difference
// gradients (x, weight, bias, initial state, and through the final state), step-by-step
// generation equal to the full sequence, state chaining, strided inputs and errors.
#include <doctest/doctest.h>

#include <cmath>
#include <string>

#include "gradcheck.h"
#include "ssm/kernels/causal_conv1d.h"

namespace ssmtrain {
namespace {

// out[b, t, c] = act(bias[c] + sum_k w[c, k] x[b, t + k - (K - 1), c]), earlier inputs from
// the state (oldest first) or zero.
std::vector<double> naive_conv(const Tensor& x, const Tensor& w, const Tensor& bias, bool silu, const Tensor& state) {
  const int64_t B = x.size(0), L = x.size(1), C = x.size(2), K = w.size(1);
  const auto xv = x.to_vector<double>(), wv = w.to_vector<double>();
  const auto bv = bias.defined() ? bias.to_vector<double>() : std::vector<double>(C, 0.0);
  const auto sv = state.defined() ? state.to_vector<double>() : std::vector<double>(B * C * (K - 1), 0.0);
  std::vector<double> out(B * L * C);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < L; ++t)
      for (int64_t c = 0; c < C; ++c) {
        double acc = bv[c];
        for (int64_t k = 0; k < K; ++k) {
          const int64_t src = t + k - (K - 1);
          acc += wv[c * K + k] * (src >= 0 ? xv[(b * L + src) * C + c] : sv[(b * C + c) * (K - 1) + (K - 1 + src)]);
        }
        out[(b * L + t) * C + c] = silu ? acc / (1 + std::exp(-acc)) : acc;
      }
  return out;
}

}  // namespace

TEST_CASE("causal_conv1d matches the naive loop for every width and option") {
  Generator gen(31);
  const int64_t B = 2, L = 13, C = 5;
  for (int64_t K : {1, 2, 3, 4}) {
    for (int mask = 0; mask < 8; ++mask) {
      CAPTURE(K);
      CAPTURE(mask);
      const bool with_bias = mask & 1, silu = mask & 2, with_state = mask & 4;
      const Tensor x = random_tensor({B, L, C}, gen, DType::f64);
      const Tensor w = random_tensor({C, K}, gen, DType::f64);
      const Tensor bias = with_bias ? random_tensor({C}, gen, DType::f64) : Tensor();
      const Tensor state = with_state ? random_tensor({B, C, K - 1}, gen, DType::f64) : Tensor();
      const CausalConv1dResult r = causal_conv1d(x, w, bias, silu, state);
      check_close(r.out, Tensor::from_vector(naive_conv(x, w, bias, silu, state), {B, L, C}), 1e-13, 1e-14, "out");
      // The final state is the last K - 1 inputs.
      if (K > 1) check_close(r.final_state, x.narrow(1, L - (K - 1), K - 1).transpose(1, 2), 0, 0, "final state");
    }
  }
}

TEST_CASE("causal_conv1d gradients match finite differences") {
  Generator gen(32);
  for (int64_t L : {9, 2}) {  // L = 2 < K - 1: part of the final state comes from the initial state
    CAPTURE(L);
    std::vector<Tensor> leaves = {grad_leaf({2, L, 5}, gen), grad_leaf({5, 4}, gen), grad_leaf({5}, gen),
                                  grad_leaf({2, 5, 3}, gen)};
    check_gradients(
        [](const std::vector<Tensor>& x) {
          const CausalConv1dResult r = causal_conv1d(x[0], x[1], x[2], true, x[3]);
          return cat({r.out.reshape({-1}), r.final_state.reshape({-1})}, 0);
        },
        leaves);
  }
  std::vector<Tensor> plain = {grad_leaf({1, 7, 3}, gen), grad_leaf({3, 2}, gen)};
  check_gradients([](const std::vector<Tensor>& x) { return causal_conv1d(x[0], x[1]).out; }, plain);
}

TEST_CASE("causal_conv1d step by step equals the full sequence") {
  Generator gen(33);
  const int64_t B = 2, L = 10, C = 6, K = 4;
  for (bool silu : {false, true}) {
    const Tensor x = random_tensor({B, L, C}, gen, DType::f64);
    const Tensor w = random_tensor({C, K}, gen, DType::f64), bias = random_tensor({C}, gen, DType::f64);
    const Tensor init = random_tensor({B, C, K - 1}, gen, DType::f64);
    const CausalConv1dResult full = causal_conv1d(x, w, bias, silu, init);
    const Tensor state = init.clone();
    for (int64_t t = 0; t < L; ++t) {
      const Tensor y = causal_conv1d_step(x.select(1, t), state, w, bias, silu);
      check_close(y, full.out.select(1, t), 1e-14, 1e-15, "step output");
    }
    check_close(state, full.final_state, 0, 0, "state after the steps");
  }
}

TEST_CASE("causal_conv1d chains two halves through the final state") {
  Generator gen(34);
  const Tensor x = random_tensor({2, 11, 4}, gen, DType::f64);
  const Tensor w = random_tensor({4, 3}, gen, DType::f64), bias = random_tensor({4}, gen, DType::f64);
  const CausalConv1dResult whole = causal_conv1d(x, w, bias, true);
  const CausalConv1dResult first = causal_conv1d(x.narrow(1, 0, 6), w, bias, true);
  const CausalConv1dResult second = causal_conv1d(x.narrow(1, 6, 5), w, bias, true, first.final_state);
  check_close(first.out, whole.out.narrow(1, 0, 6), 1e-14, 1e-15, "first half");
  check_close(second.out, whole.out.narrow(1, 6, 5), 1e-14, 1e-15, "second half");
  check_close(second.final_state, whole.final_state, 0, 0, "final state");
}

TEST_CASE("causal_conv1d on a channel slice of a wider tensor and in f32 and bf16") {
  Generator gen(35);
  const Tensor wide = random_tensor({2, 9, 12}, gen, DType::f64);
  const Tensor x = wide.narrow(2, 4, 5);  // strided batch and time, contiguous channels: no copy
  const Tensor w = random_tensor({5, 4}, gen, DType::f64), bias = random_tensor({5}, gen, DType::f64);
  const Tensor ref = Tensor::from_vector(naive_conv(x, w, bias, true, Tensor()), {2, 9, 5});
  check_close(causal_conv1d(x, w, bias, true).out, ref, 1e-13, 1e-14, "slice");
  check_close(causal_conv1d(x.to(DType::f32), w.to(DType::f32), bias, true).out, ref, 1e-5, 1e-5, "f32");
  const Tensor x16 = x.to(DType::bf16);
  const Tensor ref16 = Tensor::from_vector(naive_conv(x16, w, bias, true, Tensor()), {2, 9, 5});
  const CausalConv1dResult r16 = causal_conv1d(x16, w, bias, true);
  CHECK(r16.out.dtype() == DType::bf16);
  check_close(r16.out, ref16, 8e-3, 1e-2, "bf16");
}

TEST_CASE("causal_conv1d names the offending argument") {
  Generator gen(36);
  const Tensor x = random_tensor({2, 9, 5}, gen), w = random_tensor({5, 4}, gen);
  auto error_of = [](const std::function<void()>& fn) -> std::string {
    try {
      fn();
    } catch (const UserError& e) {
      return e.what();
    }
    return "(no error)";
  };
  const Tensor bad_w = random_tensor({4, 4}, gen), bad_state = random_tensor({2, 5, 4}, gen);
  CHECK(error_of([&] { causal_conv1d(x, bad_w); }) == "causal_conv1d: weight (4, 4) f32 cpu: expected (C, K) = (5, 4)");
  CHECK(error_of([&] { causal_conv1d(x, w, Tensor(), false, bad_state); }) ==
        "causal_conv1d: initial_state (2, 5, 4) f32 cpu: expected (B, C, K-1) = (2, 5, 3)");
  const Tensor strided_state = random_tensor({2, 3, 5}, gen).transpose(1, 2);
  CHECK(error_of([&] { causal_conv1d_step(x.select(1, 0), strided_state, w); }).find("must be contiguous") !=
        std::string::npos);
}

}  // namespace ssmtrain
