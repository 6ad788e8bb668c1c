// linear_scan: the chunked parallel scan against a sequential loop (every chunking, with
// and without an initial state), its finite-difference gradients, lower precisions and
// argument errors.
#include <doctest/doctest.h>

#include <string>

#include "gradcheck.h"
#include "ssm/kernels/linear_scan.h"

namespace ssmtrain {
namespace {

// h_t = a_t h_{t-1} + b_t, one step at a time, in double.
std::vector<double> sequential_scan(const Tensor& a, const Tensor& b, const Tensor& h0) {
  const int64_t B = a.size(0), L = a.size(1), C = a.size(2);
  const auto av = a.to_vector<double>(), bv = b.to_vector<double>();
  const auto h0v = h0.defined() ? h0.to_vector<double>() : std::vector<double>(B * C, 0.0);
  std::vector<double> h(av.size());
  for (int64_t bi = 0; bi < B; ++bi)
    for (int64_t c = 0; c < C; ++c) {
      double state = h0v[bi * C + c];
      for (int64_t t = 0; t < L; ++t) {
        const int64_t i = (bi * L + t) * C + c;
        state = av[i] * state + bv[i];
        h[i] = state;
      }
    }
  return h;
}

}  // namespace

TEST_CASE("linear_scan matches the sequential recurrence for every chunking") {
  Generator gen(21);
  const int64_t B = 2, L = 37, C = 5;
  const Tensor a = random_tensor({B, L, C}, gen, DType::f64, Device::cpu(), -1.1, 1.1);
  const Tensor b = random_tensor({B, L, C}, gen, DType::f64);
  const Tensor h0 = random_tensor({B, C}, gen, DType::f64);
  for (int64_t chunk : {0, 1, 2, 5, 36, 37, 100}) {
    CAPTURE(chunk);
    check_close(linear_scan(a, b, h0, chunk), Tensor::from_vector(sequential_scan(a, b, h0), {B, L, C}), 1e-12,
                1e-13, "with h0");
    check_close(linear_scan(a, b, Tensor(), chunk), Tensor::from_vector(sequential_scan(a, b, Tensor()), {B, L, C}),
                1e-12, 1e-13, "without h0");
  }
  CHECK(linear_scan_default_chunk(37) == 37);
  CHECK(linear_scan_default_chunk(4096) == 256);
}

TEST_CASE("linear_scan default chunking splits a long sequence and stays exact") {
  // a = 1, b = 1 counts the steps: exact in any association order.
  const int64_t L = 3000;
  const Tensor ones = Tensor::ones({1, L, 2}, DType::f64);
  const auto h = linear_scan(ones, ones).to_vector<double>();
  for (int64_t t : {0L, 1L, 272L, 273L, 1500L, L - 1}) CHECK(h[t * 2 + 1] == static_cast<double>(t + 1));
  Generator gen(22);
  const Tensor a = random_tensor({1, L, 3}, gen, DType::f64, Device::cpu(), 0.5, 1.0);
  const Tensor b = random_tensor({1, L, 3}, gen, DType::f64);
  check_close(linear_scan(a, b), Tensor::from_vector(sequential_scan(a, b, Tensor()), {1, L, 3}), 1e-11, 1e-12,
              "long");
}

TEST_CASE("linear_scan on strided inputs") {
  Generator gen(23);
  const Tensor wide_a = random_tensor({2, 11, 9}, gen, DType::f64), wide_b = random_tensor({2, 11, 9}, gen, DType::f64);
  const Tensor a = wide_a.narrow(2, 2, 4), b = wide_b.narrow(2, 5, 4);  // batch/time strided, channels contiguous
  const Tensor at = wide_a.transpose(1, 2).contiguous().transpose(1, 2).narrow(2, 2, 4);  // channel stride != 1
  check_close(linear_scan(a, b, Tensor(), 3), Tensor::from_vector(sequential_scan(a, b, Tensor()), {2, 11, 4}), 1e-12,
              1e-13, "narrowed");
  check_close(linear_scan(at, b, Tensor(), 3), Tensor::from_vector(sequential_scan(at, b, Tensor()), {2, 11, 4}),
              1e-12, 1e-13, "transposed");
}

TEST_CASE("linear_scan gradients match finite differences") {
  Generator gen(24);
  for (int64_t chunk : {1, 5, 37}) {
    CAPTURE(chunk);
    std::vector<Tensor> leaves = {grad_leaf({2, 37, 3}, gen, -1.1, 1.1), grad_leaf({2, 37, 3}, gen),
                                  grad_leaf({2, 3}, gen)};
    check_gradients([chunk](const std::vector<Tensor>& x) { return linear_scan(x[0], x[1], x[2], chunk); }, leaves);
  }
  std::vector<Tensor> no_h0 = {grad_leaf({1, 20, 2}, gen), grad_leaf({1, 20, 2}, gen)};
  check_gradients([](const std::vector<Tensor>& x) { return linear_scan(x[0], x[1], Tensor(), 6); }, no_h0);
}

TEST_CASE("linear_scan in f32 and bf16") {
  Generator gen(25);
  const Tensor a = random_tensor({2, 50, 4}, gen, DType::f64, Device::cpu(), 0.3, 1.0);
  const Tensor b = random_tensor({2, 50, 4}, gen, DType::f64);
  const Tensor ref = Tensor::from_vector(sequential_scan(a, b, Tensor()), {2, 50, 4});
  check_close(linear_scan(a.to(DType::f32), b.to(DType::f32), Tensor(), 7), ref, 1e-5, 1e-5, "f32");
  const Tensor a16 = a.to(DType::bf16), b16 = b.to(DType::bf16);
  const Tensor ref16 = Tensor::from_vector(sequential_scan(a16, b16, Tensor()), {2, 50, 4});
  const Tensor h16 = linear_scan(a16, b16, Tensor(), 7);
  CHECK(h16.dtype() == DType::bf16);
  check_close(h16, ref16, 8e-3, 1e-2, "bf16 (scanned in f32, rounded once)");
}

TEST_CASE("linear_scan names the offending argument") {
  Generator gen(26);
  const Tensor a = random_tensor({2, 5, 3}, gen), b = random_tensor({2, 5, 4}, gen);
  std::string msg;
  try {
    linear_scan(a, b);
  } catch (const UserError& e) {
    msg = e.what();
  }
  CHECK(msg == "linear_scan: b (2, 5, 4) f32 cpu: expected (B, L, C) = (2, 5, 3)");
}

}  // namespace ssmtrain
