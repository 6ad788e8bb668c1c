// gated_rms_norm (Mamba-2's gated RMSNorm): against a naive loop in f64, against the composed
// ops it replaces, finite-difference gradients of y, z and w, strided rows of y and z (read
// in place, or copied when the leading axes do not collapse to one row stride), and its
// argument errors.
#include <doctest/doctest.h>

#include <cmath>
#include <string>
#include <vector>

#include "core/ops.h"
#include "gradcheck.h"
#include "ssm/kernels/gated_norm.h"
#include "user_error.h"

namespace ssmtrain {
namespace {

// out[r, c] = w[c] v[r, c] / sqrt(mean over c's group of v^2 + eps), v = y silu(z).
std::vector<double> naive_gated_norm(const Tensor& y, const Tensor& z, const Tensor& w, int64_t gs, double eps) {
  const int64_t D = y.size(-1), rows = y.numel() / D;
  const auto yv = y.to_vector<double>(), zv = z.to_vector<double>();
  const auto wv = w.defined() ? w.to_vector<double>() : std::vector<double>(D, 1.0);
  std::vector<double> out(yv.size());
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t g = 0; g < D / gs; ++g) {
      double ss = 0;
      for (int64_t i = 0; i < gs; ++i) {
        const int64_t k = r * D + g * gs + i;
        const double v = yv[k] * zv[k] / (1 + std::exp(-zv[k]));
        ss += v * v;
      }
      const double inv = 1 / std::sqrt(ss / gs + eps);
      for (int64_t i = 0; i < gs; ++i) {
        const int64_t k = r * D + g * gs + i;
        out[k] = yv[k] * zv[k] / (1 + std::exp(-zv[k])) * inv * wv[g * gs + i];
      }
    }
  return out;
}

}  // namespace

TEST_CASE("gated_rms_norm matches a naive loop and the composed ops, per group") {
  Generator gen(41);
  const int64_t B = 2, L = 5, D = 12;
  for (int64_t gs : {12, 4, 1}) {
    CAPTURE(gs);
    const Tensor y = random_tensor({B, L, D}, gen, DType::f64, Device::cpu(), -2, 2);
    const Tensor z = random_tensor({B, L, D}, gen, DType::f64, Device::cpu(), -3, 3);
    const Tensor w = random_tensor({D}, gen, DType::f64, Device::cpu(), 0.5, 1.5);
    const Tensor out = gated_rms_norm(y, z, w, gs, 1e-5);
    check_close(out, host_tensor(naive_gated_norm(y, z, w, gs, 1e-5), out.shape()), 1e-13, 1e-14, "vs naive");
    // The composition Mamba2 used before: (y * silu(z)) per group -> rms_norm -> * w.
    const Tensor composed =
        mul(rms_norm(mul(y, silu(z)).reshape({B, L, D / gs, gs}), Tensor(), 1e-5).reshape({B, L, D}), w);
    check_close(out, composed, 1e-13, 1e-14, "vs composed ops");
    const Tensor plain = gated_rms_norm(y, z, Tensor(), gs, 1e-5);
    check_close(plain, host_tensor(naive_gated_norm(y, z, Tensor(), gs, 1e-5), out.shape()), 1e-13, 1e-14,
                "without a weight");
  }
}

TEST_CASE("gated_rms_norm gradients match finite differences") {
  Generator gen(42);
  for (int64_t gs : {6, 3}) {
    CAPTURE(gs);
    std::vector<Tensor> in{grad_leaf({2, 3, 6}, gen, -2, 2), grad_leaf({2, 3, 6}, gen, -3, 3),
                           grad_leaf({6}, gen, 0.5, 1.5)};
    check_gradients([gs](const std::vector<Tensor>& v) { return gated_rms_norm(v[0], v[1], v[2], gs, 1e-5); }, in);
  }
}

TEST_CASE("gated_rms_norm in f32 and bf16 agrees with f64 to its rounding") {
  Generator gen(43);
  const Tensor y = random_tensor({3, 7, 16}, gen, DType::f64, Device::cpu(), -2, 2);
  const Tensor z = random_tensor({3, 7, 16}, gen, DType::f64, Device::cpu(), -3, 3);
  const Tensor w = random_tensor({16}, gen, DType::f64, Device::cpu(), 0.5, 1.5);
  const Tensor ref = gated_rms_norm(y, z, w, 8, 1e-5);
  // f32: inputs exact in f32 would give ~1e-7; the f64 inputs are rounded to f32 first
  // (relative 6e-8 each), a handful of operations follow: 1e-6 relative bounds it.
  check_close(gated_rms_norm(y.to(DType::f32), z.to(DType::f32), w.to(DType::f32), 8, 1e-5), ref, 1e-6, 1e-6, "f32");
  // bf16: inputs and output rounded to bf16 (2^-9 relative each), math in f32: 3 roundings.
  check_close(gated_rms_norm(y.to(DType::bf16), z.to(DType::bf16), w.to(DType::f32), 8, 1e-5), ref, 1.2e-2, 1e-3,
              "bf16");
}

// y and z as column slices of wider rows (z of a projection output, as in Mamba2): the op
// reads them in place (one tape node, no copy) and gives, bit for bit, what it gives on
// contiguous copies, in the forward and in every gradient.
TEST_CASE("gated_rms_norm reads strided rows in place, bitwise as on contiguous copies") {
  Generator gen(44);
  const int64_t B = 2, L = 5, D = 12;
  for (DType dtype : {DType::f64, DType::f32, DType::bf16}) {
    for (int64_t gs : {12, 4}) {
      for (bool weight : {true, false}) {
        CAPTURE(dtype_name(dtype));
        CAPTURE(gs);
        CAPTURE(weight);
        Tensor y_wide = random_tensor({B, L, D + 5}, gen, DType::f64, Device::cpu(), -2, 2).to(dtype);
        Tensor z_wide = random_tensor({B, L, 2 * D + 3}, gen, DType::f64, Device::cpu(), -3, 3).to(dtype);
        y_wide.requires_grad_(), z_wide.requires_grad_();
        Tensor w = weight ? random_tensor({D}, gen, DType::f64, Device::cpu(), 0.5, 1.5).to(dtype == DType::f64 ? DType::f64 : DType::f32)
                          : Tensor();
        if (weight) w.requires_grad_();
        clear_tape();
        const Tensor y = y_wide.narrow(2, 3, D), z = z_wide.narrow(2, D + 1, D);
        REQUIRE(!y.is_contiguous());
        Tensor yc = y.detach().contiguous().requires_grad_(), zc = z.detach().contiguous().requires_grad_();
        Tensor wc = weight ? w.detach().requires_grad_() : Tensor();

        const size_t nodes = tape_size();
        const Tensor out = gated_rms_norm(y, z, w, gs, 1e-5);
        CHECK(tape_size() == nodes + 1);  // the op alone: no copy of y or z
        const Tensor out_c = gated_rms_norm(yc, zc, wc, gs, 1e-5);
        CHECK(out.to_vector<double>() == out_c.to_vector<double>());

        const Tensor g = random_tensor(out.shape(), gen, DType::f64).to(dtype);
        backward(add(sum(mul(cast(out, DType::f64), cast(g, DType::f64))),
                     sum(mul(cast(out_c, DType::f64), cast(g, DType::f64)))));
        CHECK(y_wide.grad().narrow(2, 3, D).to_vector<double>() == yc.grad().to_vector<double>());
        CHECK(z_wide.grad().narrow(2, D + 1, D).to_vector<double>() == zc.grad().to_vector<double>());
        if (weight) CHECK(w.grad().to_vector<double>() == wc.grad().to_vector<double>());
      }
    }
  }
}

// Layouts whose leading axes do not collapse to one row stride (a slice along L, a
// transposed (L, B) pair, a last axis with a stride) are copied first, and still agree with
// the naive loop; one row or size-1 axes with any strides are read in place.
TEST_CASE("gated_rms_norm copies layouts without one row stride and reads the rest in place") {
  Generator gen(45);
  const int64_t B = 2, L = 4, D = 8, gs = 4;
  const Tensor w = random_tensor({D}, gen, DType::f64, Device::cpu(), 0.5, 1.5);
  auto run = [&](const Tensor& y, const Tensor& z, size_t nodes, const char* what) {
    INFO(what);
    Tensor yl = y.detach().requires_grad_();  // a leaf view: the op's own nodes only
    clear_tape();
    const Tensor out = gated_rms_norm(yl, z, w, gs, 1e-5);
    CHECK(tape_size() == nodes);
    check_close(out, host_tensor(naive_gated_norm(y.contiguous(), z.contiguous(), w, gs, 1e-5), out.shape()), 1e-13,
                1e-14, what);
    clear_tape();
  };
  const Tensor z = random_tensor({B, L, D}, gen, DType::f64, Device::cpu(), -3, 3);
  run(random_tensor({B, L + 3, D}, gen, DType::f64, Device::cpu(), -2, 2).narrow(1, 2, L), z, 2, "a slice along L");
  run(random_tensor({L, B, D}, gen, DType::f64, Device::cpu(), -2, 2).transpose(0, 1), z, 2, "(L, B) transposed");
  run(random_tensor({B, L, D, 2}, gen, DType::f64, Device::cpu(), -2, 2).select(3, 1), z, 2, "a strided last axis");
  run(random_tensor({1, L + 3, D + 2}, gen, DType::f64, Device::cpu(), -2, 2).narrow(1, 1, 1).narrow(2, 1, D),
      random_tensor({1, 1, D}, gen, DType::f64, Device::cpu(), -3, 3), 1, "one row");
  run(random_tensor({3, 1, 2 * B * L, D + 3}, gen, DType::f64, Device::cpu(), -2, 2).select(0, 1).narrow(1, 0, B * L)
          .narrow(2, 2, D),
      z.reshape({1, B * L, D}), 1, "a size-1 leading axis over strided rows");
}

TEST_CASE("gated_rms_norm gradients of strided y and z match finite differences") {
  Generator gen(46);
  for (int64_t gs : {6, 3}) {
    CAPTURE(gs);
    std::vector<Tensor> in{grad_leaf({2, 3, 9}, gen, -2, 2), grad_leaf({2, 3, 14}, gen, -3, 3),
                           grad_leaf({6}, gen, 0.5, 1.5)};
    check_gradients(
        [gs](const std::vector<Tensor>& v) {
          return gated_rms_norm(v[0].narrow(2, 2, 6), v[1].narrow(2, 7, 6), v[2], gs, 1e-5);
        },
        in);
  }
}

TEST_CASE("gated_rms_norm names its bad arguments") {
  using testing::contains;
  using testing::user_error_of;
  const Tensor y = Tensor::zeros({2, 3, 6}), z = Tensor::zeros({2, 3, 6});
  CHECK(contains(user_error_of([&] { gated_rms_norm(y, z, Tensor(), 4, 1e-5); }), "group_size 4 must divide"));
  CHECK(contains(user_error_of([&] { gated_rms_norm(y, Tensor::zeros({2, 3, 5}), Tensor(), 3, 1e-5); }), "z"));
  CHECK(contains(user_error_of([&] { gated_rms_norm(y, z, Tensor::zeros({5}), 3, 1e-5); }), "w"));
  CHECK(contains(user_error_of([&] { gated_rms_norm(y, z.to(DType::f64), Tensor(), 3, 1e-5); }), "z"));
}

}  // namespace ssmtrain
