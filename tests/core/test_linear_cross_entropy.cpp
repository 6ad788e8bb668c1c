// The fused LM head + loss, linear_cross_entropy, and the two backend pieces it is built on:
// cross_entropy_with_grad (loss, lse and the scaled logit gradient in one pass) and the mixed
// gemm (bf16 operands, f32 out). On the CPU the fused op must equal the unfused
// cross_entropy(linear(x, w)) for every block size, its gradients must match finite
// differences, and its errors must name the tensor; on CUDA (skipped visibly without a GPU)
// every piece is compared with the CPU, and the whole op with an f64 CPU reference computed
// from the same (bf16-rounded where the op rounds) inputs.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "core/backend.h"
#include "core/ops.h"
#include "gradcheck.h"
#include "op_reference.h"
#include "user_error.h"

using namespace ssmtrain;

namespace {

constexpr int64_t kIgnore = -100;

// Targets of `shape` in [0, v): every fourth position (from 1) ignored, the first one class
// 0 and the last counted one class v - 1, so both ends of the class axis are hit.
Tensor make_targets(const Dims& shape, int64_t v, Generator& gen, int64_t ignore = kIgnore) {
  std::vector<int64_t> t(static_cast<size_t>(shape.numel()));
  for (size_t i = 0; i < t.size(); ++i) t[i] = i % 4 == 1 ? ignore : static_cast<int64_t>(gen.below(v));
  if (!t.empty()) t[0] = 0;
  for (size_t i = t.size(); i-- > 0;)
    if (t[i] != ignore) {
      t[i] = v - 1;
      break;
    }
  return Tensor::from_vector(t, shape);
}

int64_t counted(const Tensor& targets, int64_t ignore = kIgnore) {
  std::vector<int64_t> t = targets.to_vector<int64_t>();
  return std::count_if(t.begin(), t.end(), [&](int64_t x) { return x != ignore; });
}

double max_abs(const Tensor& t) {
  double m = 0;
  for (double x : t.to_vector<double>()) m = std::max(m, std::abs(x));
  return m;
}

// The loss and the gradients of x and w after backward(upstream * loss).
struct HeadRun {
  Tensor loss;  // scalar
  Tensor gx, gw;
};

// Runs the fused op (chunk_rows >= 0) or, for chunk_rows < 0, the unfused
// cross_entropy(linear(x, w)), on fresh leaves holding x's and w's values.
HeadRun run_head(const Tensor& x, const Tensor& w, const Tensor& targets, int64_t chunk_rows, double upstream,
                 int64_t ignore = kIgnore) {
  Tensor xl = x.detach().clone().requires_grad_();
  Tensor wl = w.detach().clone().requires_grad_();
  clear_tape();
  Tensor loss = chunk_rows >= 0 ? linear_cross_entropy(xl, wl, targets, ignore, chunk_rows)
                                : cross_entropy(linear(xl, wl), targets, ignore);
  backward(loss * upstream);
  REQUIRE(tape_size() == 0);
  return {loss.detach(), xl.grad(), wl.grad()};
}

// Gradients are compared elementwise with an absolute floor relative to the largest reference
// element: every gradient element is a sum of terms of the size of the largest elements, so
// the rounding of those sums is an absolute error on that scale, however much they cancel.
void check_grad(const Tensor& got, const Tensor& want, double rtol, double rel_floor, const char* what) {
  REQUIRE(got.defined());
  check_close(got.to(Device::cpu()), want, rtol, rel_floor * max_abs(want), what);
}

}  // namespace

// ---- the op on the CPU ----

TEST_CASE("linear_cross_entropy equals cross_entropy of linear for every chunk size on the cpu") {
  Generator gen(700);
  const int64_t b = 2, l = 7, d = 16, v = 37, m = b * l;
  const double upstream = 2.5;  // backward of 2.5 * loss: the saved gradients must be scaled
  Tensor targets = make_targets({b, l}, v, gen);
  // 10 counted of 14: 1/count is not a power of two, so its rounding is visible.
  REQUIRE(counted(targets) == 10);
  Tensor x64 = random_tensor({b, l, d}, gen, DType::f64, Device::cpu(), -1, 1);
  Tensor w64 = random_tensor({v, d}, gen, DType::f64, Device::cpu(), -1, 1);
  for (DType dt : {DType::f64, DType::f32}) {
    Tensor x = x64.to(dt), w = w64.to(dt);
    HeadRun want = run_head(x, w, targets, -1, upstream);
    for (int64_t chunk : {int64_t{1}, int64_t{3}, int64_t{5}, m, int64_t{100}, int64_t{0}}) {
      INFO(std::string(dtype_name(dt)), " chunk_rows ", chunk);
      // One tape node.
      {
        Tensor xl = x.detach().clone().requires_grad_(), wl = w.detach().clone().requires_grad_();
        clear_tape();
        Tensor loss = linear_cross_entropy(xl, wl, targets, kIgnore, chunk);
        CHECK(tape_size() == 1);
        CHECK(loss.dim() == 0);
        CHECK(loss.dtype() == (dt == DType::f64 ? DType::f64 : DType::f32));
        clear_tape();
      }
      HeadRun got = run_head(x, w, targets, chunk, upstream);
      CHECK(got.gx.dtype() == dt);
      CHECK(got.gw.dtype() == dt);
      CHECK(got.gx.shape() == x.shape());
      CHECK(got.gw.shape() == w.shape());
      // f64: both forms compute in double from the same values; they differ in summation
      // order only (GEMMs of K <= 37 terms, a mean of 10 rows): ~K * 1.1e-16 of the terms'
      // scale, far inside 1e-12. f32: the same argument with u = 6e-8 gives ~2e-6 on the
      // logits (K = 16), which exp turns into ~2e-6 relative on the probabilities; the
      // gradient GEMMs add ~K * u again. 1e-5 leaves a margin of five.
      const double tol = dt == DType::f64 ? 1e-12 : 1e-5;
      CHECK(got.loss.item<double>() == doctest::Approx(want.loss.item<double>()).epsilon(tol));
      check_grad(got.gx, want.gx, tol, tol, "gradient of x");
      check_grad(got.gw, want.gw, tol, tol, "gradient of w");
    }
  }
}

TEST_CASE("linear_cross_entropy with every target ignored gives a zero loss and zero gradients") {
  Generator gen(701);
  for (DType dt : {DType::f64, DType::f32}) {
    for (int64_t chunk : {int64_t{3}, int64_t{0}}) {
      INFO(std::string(dtype_name(dt)), " chunk_rows ", chunk);
      Tensor x = random_tensor({2, 5, 8}, gen, dt), w = random_tensor({11, 8}, gen, dt);
      Tensor targets = Tensor::full({2, 5}, static_cast<double>(kIgnore), DType::i64);
      HeadRun got = run_head(x, w, targets, chunk, 2.5);
      CHECK(got.loss.item<double>() == 0.0);  // 0, not 0/0
      REQUIRE(got.gx.defined());
      REQUIRE(got.gw.defined());
      CHECK(ref::host(got.gx) == std::vector<double>(static_cast<size_t>(x.numel()), 0.0));
      CHECK(ref::host(got.gw) == std::vector<double>(static_cast<size_t>(w.numel()), 0.0));
    }
  }
}

TEST_CASE("linear_cross_entropy gradients of x and w match finite differences") {
  Generator gen(702);
  Tensor x = grad_leaf({2, 3, 5}, gen, -2, 2);
  Tensor w = grad_leaf({7, 5}, gen, -2, 2);
  Tensor targets = make_targets({2, 3}, 7, gen, -1);
  for (int64_t chunk : {int64_t{1}, int64_t{4}, int64_t{0}}) {
    INFO("chunk_rows ", chunk);
    check_gradients(
        [&](const std::vector<Tensor>& in) { return linear_cross_entropy(in[0], in[1], targets, -1, chunk); }, {x, w});
  }
}

TEST_CASE("linear_cross_entropy errors name the offending tensor") {
  using testing::contains;
  using testing::user_error_of;
  Tensor x = Tensor::ones({2, 3, 4}), w = Tensor::ones({5, 4});
  Tensor targets = Tensor::zeros({2, 3}, DType::i64);

  std::string msg = user_error_of([&] { linear_cross_entropy(x, w, Tensor::zeros({2, 3}, DType::i32)); });
  CHECK(contains(msg, "linear_cross_entropy"));
  CHECK(contains(msg, "targets"));
  CHECK(contains(msg, "expected dtype i64"));

  msg = user_error_of([&] { linear_cross_entropy(x, Tensor::ones({5, 3}), targets); });
  CHECK(contains(msg, "linear_cross_entropy"));
  CHECK(contains(msg, "x "));
  CHECK(contains(msg, "w "));
  CHECK(contains(msg, "expected x (.., 3)"));

  msg = user_error_of([&] { linear_cross_entropy(x, w, Tensor::zeros({2, 4}, DType::i64)); });
  CHECK(contains(msg, "linear_cross_entropy"));
  CHECK(contains(msg, "targets"));
  CHECK(contains(msg, "expected targets of shape (2, 3)"));
}

// ---- the mixed-precision head against an f64 reference (CPU here, CUDA below) ----

namespace {

// linear_cross_entropy on `device` with x of dtype xdt and f32 w, against the unfused op
// computed on the CPU in f64 from the values the device computes with: x as stored (bf16
// rounded when xdt is bf16) and w rounded to xdt (the op casts w for its GEMMs).
//
// Tolerances. Logits: products of 8-bit (bf16) or 24-bit (f32) operands summed in f32 over
// D terms, ~sqrt(D) * 2^-24 of the logit scale; the loss (f32 statistics) is within 2e-5.
// f32 gradients: f32 probabilities times f32 GEMMs over up to V = 50280 terms, blocked or
// tree sums growing like sqrt(V) * 2^-24 ~ 1e-5 of the terms' scale: rtol 1e-4, floor 1e-4.
// bf16 x: the logit gradient is stored in bf16 (2^-9 relative per element), so a gradient
// element sum_v dlogit_v * w_vd errs by up to 2^-9 * sum_v |dlogit_v w_vd| <= 2^-8 * scale *
// max|w|, about 2^-8 of the largest gradient element; the gradient of x is then stored in
// bf16 twice (the GEMM output and the upstream scaling, 2^-9 each). Relative error ~2^-8 =
// 3.9e-3 on both counts: rtol and floor 1e-2. The gradient of w is accumulated in f32 and
// only inherits the bf16 logit gradients: the same 1e-2 covers it.
void check_head_against_f64(Device device, DType xdt, int64_t v, const Dims& xshape_rows,
                            const std::vector<int64_t>& chunks, Generator& gen) {
  const int64_t d = 64;
  const double upstream = 2.5;
  Dims xshape = xshape_rows;
  xshape.push_back(d);
  Tensor x = random_tensor(xshape, gen, DType::f64, Device::cpu(), -1, 1).to(xdt);
  Tensor w = random_tensor({v, d}, gen, DType::f64, Device::cpu(), -1, 1).to(DType::f32);
  Tensor targets = make_targets(xshape_rows, v, gen);
  HeadRun want = run_head(x.to(DType::f64), w.to(xdt).to(DType::f64), targets, -1, upstream);
  const bool mixed = xdt == DType::bf16;
  const double loss_tol = 2e-5;
  const double grad_tol = mixed ? 1e-2 : 1e-4;
  for (int64_t chunk : chunks) {
    INFO(device.str(), " x ", std::string(dtype_name(xdt)), " w f32, V ", v, ", M ", xshape_rows.numel(),
         ", chunk_rows ", chunk);
    HeadRun got = run_head(x.to(device), w.to(device), targets.to(device), chunk, upstream);
    CHECK(got.loss.device() == device);
    CHECK(got.loss.dtype() == DType::f32);
    CHECK(got.gx.dtype() == xdt);
    CHECK(got.gw.dtype() == DType::f32);
    CHECK(got.loss.to(Device::cpu()).item<double>() == doctest::Approx(want.loss.item<double>()).epsilon(loss_tol));
    check_grad(got.gx, want.gx, grad_tol, grad_tol, "gradient of x");
    check_grad(got.gw, want.gw, grad_tol, grad_tol, "gradient of w");
  }
}

}  // namespace

TEST_CASE("linear_cross_entropy with bf16 x and f32 w matches the f64 reference on the cpu") {
  Generator gen(703);
  check_head_against_f64(Device::cpu(), DType::bf16, 300, {3, 41}, {32, 50, 0}, gen);
  check_head_against_f64(Device::cpu(), DType::f32, 300, {3, 41}, {32, 0}, gen);
}

// ---- the backend pieces on the CPU ----

namespace {

// cross_entropy_with_grad on `be` into f32 loss and lse and dlogits of dtype `gdt`.
std::vector<Tensor> with_grad(Backend& be, const Tensor& logits, const Tensor& targets, const Tensor& scale,
                              DType gdt) {
  const int64_t m = logits.size(0);
  Tensor loss = Tensor::empty({m}, DType::f32, logits.device()), lse = Tensor::empty({m}, DType::f32, logits.device());
  Tensor dlogits = Tensor::empty(logits.shape(), gdt, logits.device());
  be.cross_entropy_with_grad(logits, targets, kIgnore, scale, loss, lse, dlogits);
  return {loss, lse, dlogits};
}

}  // namespace

TEST_CASE("cpu cross_entropy_with_grad matches cross_entropy_forward and backward with a scale") {
  Generator gen(704);
  Backend& be = backend(Device::cpu());
  const int64_t m = 13;
  const double scale_value = 0.37;
  for (int64_t v : {int64_t{5}, int64_t{100}, int64_t{1031}}) {
    Tensor logits = random_tensor({m, v}, gen, DType::f32, Device::cpu(), -5, 5);
    Tensor targets = make_targets({m}, v, gen);
    Tensor scale = Tensor::full({1}, scale_value, DType::f32);
    // The reference: forward, then backward with every row's upstream gradient = scale.
    Tensor loss = Tensor::empty({m}, DType::f32), lse = Tensor::empty({m}, DType::f32);
    Tensor dlogits = Tensor::empty({m, v}, DType::f32);
    be.cross_entropy_forward(logits, targets, kIgnore, loss, lse);
    be.cross_entropy_backward(logits, targets, lse, Tensor::full({m}, scale_value, DType::f32), kIgnore, dlogits);
    for (DType gdt : {DType::f32, DType::bf16}) {
      INFO("V ", v, " dlogits ", std::string(dtype_name(gdt)));
      std::vector<Tensor> got = with_grad(be, logits, targets, scale, gdt);
      CHECK(got[2].dtype() == gdt);
      // Both evaluate exp(logit - lse) * scale in float from the same lse: equal to a few
      // f32 ulps (rtol 2^-21). In bf16 the same float is rounded once, so a value within those
      // ulps of a rounding boundary may land one bf16 ulp (2^-8 relative) away: rtol 2^-7.
      check_close(got[0], loss, 1e-6, 0, "loss");
      check_close(got[1], lse, 1e-6, 0, "lse");
      const double rtol = gdt == DType::bf16 ? 1.0 / 128 : 1.0 / (1 << 21);
      check_close(got[2], dlogits.to(gdt), rtol, 0, "dlogits");
      // Ignored rows: loss 0 and a zero gradient row.
      std::vector<double> g = ref::host(got[2]), l = ref::host(got[0]);
      for (int64_t r = 1; r < m; r += 4) {
        CHECK(l[r] == 0.0);
        CHECK(std::all_of(g.begin() + r * v, g.begin() + (r + 1) * v, [](double x) { return x == 0.0; }));
      }
    }
  }
}

namespace {

// gemm(a, b) into a copy of `out0` on `be`.
Tensor gemm_into(Backend& be, const Tensor& a, bool ta, const Tensor& b, bool tb, const Tensor& out0, double alpha,
                 double beta) {
  Tensor out = out0.clone();
  be.gemm(a, ta, b, tb, out, alpha, beta);
  return out;
}

struct GemmShape {
  int64_t bt_a, bt_b, bt, m, k, n;
};

// bf16 operands of the shapes gemm expects for the transpose flags, and a random f32 out.
struct GemmCase {
  Tensor a, b, out0;
};
GemmCase gemm_case(const GemmShape& s, bool ta, bool tb, Generator& gen) {
  Dims da = ta ? Dims{s.bt_a, s.k, s.m} : Dims{s.bt_a, s.m, s.k};
  Dims db = tb ? Dims{s.bt_b, s.n, s.k} : Dims{s.bt_b, s.k, s.n};
  return {random_tensor(da, gen, DType::bf16), random_tensor(db, gen, DType::bf16),
          random_tensor({s.bt, s.m, s.n}, gen, DType::f32, Device::cpu(), -2, 2)};
}

const GemmShape kGemmShapes[] = {{1, 1, 1, 17, 37, 23}, {3, 3, 3, 9, 64, 5}, {3, 1, 3, 8, 33, 12}};

}  // namespace

TEST_CASE("cpu mixed gemm of bf16 operands into f32 equals the f32 gemm of the rounded operands") {
  Generator gen(705);
  Backend& be = backend(Device::cpu());
  for (const GemmShape& s : kGemmShapes)
    for (bool ta : {false, true})
      for (bool tb : {false, true})
        for (double beta : {0.0, 1.0}) {
          INFO("batches ", s.bt_a, "/", s.bt_b, " -> ", s.bt, ", m ", s.m, " k ", s.k, " n ", s.n, ", ta ", ta, " tb ",
               tb, " beta ", beta);
          GemmCase c = gemm_case(s, ta, tb, gen);
          Tensor got = gemm_into(be, c.a, ta, c.b, tb, c.out0, 1.5, beta);
          CHECK(got.dtype() == DType::f32);
          Tensor want = gemm_into(be, c.a.to(DType::f32), ta, c.b.to(DType::f32), tb, c.out0, 1.5, beta);
          // Widening bf16 to f32 is exact and products of 8-bit significands are exact in f32,
          // so the mixed form is the f32 gemm of the same values; the CPU runs that very gemm,
          // so the results are bitwise equal.
          check_close(got, want, 0, 0, "mixed gemm");
        }
}

// ---- CUDA against the CPU ----

TEST_CASE("cuda linear_cross_entropy matches the f64 cpu reference in f32 and with bf16 x and f32 w") {
  if (!cuda_test_device()) return;
  Generator gen(710);
  for (int64_t v : {int64_t{1000}, int64_t{50280}})
    for (DType xdt : {DType::f32, DType::bf16})
      check_head_against_f64(Device::cuda(0), xdt, v, {3, 101}, {128, 0}, gen);
}

TEST_CASE("cuda mixed gemm of bf16 operands into f32 matches the cpu") {
  if (!cuda_test_device()) return;
  Generator gen(711);
  Device gpu = Device::cuda(0);
  const GemmShape big = {1, 1, 1, 300, 1000, 64};
  for (const GemmShape& s : {kGemmShapes[0], kGemmShapes[1], kGemmShapes[2], big})
    for (bool ta : {false, true})
      for (bool tb : {false, true})
        for (double beta : {0.0, 1.0}) {
          INFO("batches ", s.bt_a, "/", s.bt_b, " -> ", s.bt, ", m ", s.m, " k ", s.k, " n ", s.n, ", ta ", ta, " tb ",
               tb, " beta ", beta);
          GemmCase c = gemm_case(s, ta, tb, gen);
          Tensor want = gemm_into(backend(Device::cpu()), c.a, ta, c.b, tb, c.out0, 1.5, beta);
          Tensor got = gemm_into(backend(gpu), c.a.to(gpu), ta, c.b.to(gpu), tb, c.out0.to(gpu), 1.5, beta);
          backend(gpu).synchronize();
          CHECK(got.dtype() == DType::f32);
          // Exact products (8-bit significands) of |a|, |b| < 1 with random signs, summed in f32
          // in another order on each device: partial sums of size ~sqrt(K), K roundings of
          // 2^-24 of them with random signs, ~K * 2^-24 = 6e-5 at K = 1000 and 4e-6 at K = 64.
          // rtol 1e-4 as the f32 gemm comparison, atol 1e-4 scaled with K past 250.
          const double atol = 1e-4 * std::max(1.0, static_cast<double>(s.k) / 250);
          check_close(got.to(Device::cpu()), want, 1e-4, atol, "mixed gemm");
        }
}

TEST_CASE("cuda cross_entropy_with_grad matches the cpu with f32 and bf16 dlogits and ignored rows") {
  if (!cuda_test_device()) return;
  Generator gen(712);
  Device gpu = Device::cuda(0);
  const int64_t m = 37;
  // V <= 1024: a warp per row; above: a block per row (odd 1031 also disables vector loads);
  // rows of 32 KB up to the shared-memory limit (9000 and 50280 f32 logits: two and one
  // blocks per multiprocessor) are copied into shared memory once; 70000 f32 logits (280 KB)
  // are past the limit of current GPUs and walk global memory twice again.
  for (int64_t v : {int64_t{100}, int64_t{1000}, int64_t{1031}, int64_t{9000}, int64_t{50280}, int64_t{70000}})
    for (DType gdt : {DType::f32, DType::bf16}) {
      INFO("V ", v, " dlogits ", std::string(dtype_name(gdt)));
      Tensor logits = random_tensor({m, v}, gen, DType::f32, Device::cpu(), -5, 5);
      Tensor targets = make_targets({m}, v, gen);
      Tensor scale = Tensor::full({1}, 0.37, DType::f32);
      std::vector<Tensor> got = with_grad(backend(gpu), logits.to(gpu), targets.to(gpu), scale.to(gpu), gdt);
      backend(gpu).synchronize();
      std::vector<Tensor> want = with_grad(backend(Device::cpu()), logits, targets, scale, gdt);
      // The devices differ in the order of the row sums (a warp or block tree against the
      // CPU's lanes) and in exp's last bits: ~sqrt(V) * 2^-24 on the sum-exp, 1e-5 relative on
      // loss and lse. f32 gradients: a few ulps of exp: rtol 1e-4. bf16 gradients: a float
      // within those ulps of a rounding boundary lands one bf16 ulp (2^-8) away: rtol 1e-2.
      check_close(got[0].to(Device::cpu()), want[0], 1e-5, 1e-6, "loss");
      check_close(got[1].to(Device::cpu()), want[1], 1e-5, 1e-6, "lse");
      CHECK(got[2].dtype() == gdt);
      check_close(got[2].to(Device::cpu()), want[2], gdt == DType::bf16 ? 1e-2 : 1e-4, 1e-9, "dlogits");
      std::vector<double> g = ref::host(got[2].to(Device::cpu()));
      for (int64_t r = 1; r < m; r += 4)
        CHECK(std::all_of(g.begin() + r * v, g.begin() + (r + 1) * v, [](double x) { return x == 0.0; }));
    }
}
