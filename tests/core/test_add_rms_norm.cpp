// The fused pre-norm residual step add_rms_norm (core/ops.h): on the CPU against the
// separate ops it replaces (add, cast, rms_norm, cast), values and gradients of h, y and w
// through the tape with upstream gradients on both outputs; f64 finite differences; the
// user errors; and the CUDA fused kernels (core/cuda/add_norm.cu) against the CPU backend,
// called directly, on the shapes that pick their code paths.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <sstream>
#include <string>

#include "core/autograd.h"
#include "core/backend.h"
#include "core/ops.h"
#include "gradcheck.h"
#include "user_error.h"

using namespace ssmtrain;

namespace {

constexpr double kEps = 1e-5;

// Which outputs the loss reads: both, only the stream, only the normed activations.
enum class Use { both, sum_only, normed_only };

struct Result {
  Tensor loss, sum, normed;  // values
  Tensor gh, gy, gw;         // leaf gradients (undefined where none arrived)
};

// One forward and backward of L = sum(sum * r1) + sum(normed * r2) (the terms `use` keeps),
// either through add_rms_norm or through the separate ops: sum = add(h, cast(y)), normed =
// cast(rms_norm(sum, w)). Fresh leaves over the same data each call.
Result run(bool fused, const Tensor& h0, const Tensor& y0, const Tensor& w0, DType out_dtype, const Tensor& r1,
           const Tensor& r2, Use use, bool h_grad = true, bool y_grad = true) {
  clear_tape();
  Tensor h = h0.detach(), y = y0.defined() ? y0.detach() : Tensor(), w = w0.detach();
  if (h_grad) h.requires_grad_();
  if (y.defined() && y_grad) y.requires_grad_();
  w.requires_grad_();
  Tensor s, n;
  if (fused) {
    const size_t before = tape_size();
    AddRmsNorm r = add_rms_norm(h, y, w, kEps, out_dtype);
    CHECK(tape_size() == before + 1);  // one node
    s = r.sum;
    n = r.normed;
  } else {
    s = y.defined() ? add(h, cast(y, h.dtype())) : h;
    n = cast(rms_norm(s, w, kEps), out_dtype);
  }
  CHECK(s.dtype() == h.dtype());
  CHECK(n.dtype() == out_dtype);
  Tensor ls = sum(mul(s, r1)), ln = sum(mul(cast(n, h.dtype()), r2));
  Tensor loss = use == Use::both ? add(ls, ln) : use == Use::sum_only ? ls : ln;
  backward(loss);
  CHECK(tape_size() == 0);
  return {loss.detach(), s.detach(), n.detach(), h.grad(), y.defined() ? y.grad() : Tensor(), w.grad()};
}

Tensor or_zeros(const Tensor& g, const Tensor& like) {
  return g.defined() ? g : Tensor::zeros(like.shape(), like.dtype(), like.device());
}

// Compares fused against reference: every value and gradient within (rtol, atol) — 0, 0 is
// bitwise. A gradient that is undefined on one side only must be zeros on the other (the
// fused node hands w a zero gradient when only the stream was used).
void compare(const Result& got, const Result& want, const Tensor& y, const Tensor& w, double rtol, double atol) {
  check_close(got.loss, want.loss, rtol, atol, "loss");
  check_close(got.sum, want.sum, rtol, atol, "sum");
  check_close(got.normed, want.normed, rtol, atol, "normed");
  CHECK(got.gh.defined() == want.gh.defined());
  if (got.gh.defined()) check_close(got.gh, want.gh, rtol, atol, "grad h");
  CHECK(got.gy.defined() == want.gy.defined());
  if (got.gy.defined()) {
    CHECK(got.gy.dtype() == y.dtype());
    check_close(got.gy, want.gy, rtol, atol, "grad y");
  }
  if (got.gw.defined() || want.gw.defined()) {
    if (got.gw.defined()) CHECK(got.gw.dtype() == w.dtype());
    check_close(or_zeros(got.gw, w), or_zeros(want.gw, w), rtol, atol, "grad w");
  }
}

const char* use_name(Use u) { return u == Use::both ? "both outputs" : u == Use::sum_only ? "sum only" : "normed only"; }

}  // namespace

// The CPU backend composes add_rms_norm from the very kernels the separate ops run (copy,
// binary add, rms_norm_forward/backward), and the one addition the tape does at the fork of
// the stream (gx + gs, or gs + gx) is commutative in IEEE arithmetic: so f32 is bitwise.
// f64 is held to 1e-12 (it is bitwise too, for the same reason).
TEST_CASE("add_rms_norm equals add, rms_norm and cast on the cpu in f32 and f64") {
  Generator gen(901);
  for (DType dt : {DType::f32, DType::f64}) {
    const double tol = dt == DType::f64 ? 1e-12 : 0;
    const Dims shape{3, 5, 24};
    Tensor h = random_tensor(shape, gen, dt, Device::cpu(), -2, 2), y = random_tensor(shape, gen, dt);
    Tensor w = random_tensor({24}, gen, dt, Device::cpu(), 0.5, 1.5);
    Tensor r1 = random_tensor(shape, gen, dt), r2 = random_tensor(shape, gen, dt);
    for (Use use : {Use::both, Use::sum_only, Use::normed_only}) {
      INFO(std::string(dtype_name(dt)), ", ", std::string(use_name(use)));
      compare(run(true, h, y, w, dt, r1, r2, use), run(false, h, y, w, dt, r1, r2, use), y, w, tol, tol);
    }
    // Only some inputs require grad: the others get none.
    {
      INFO(std::string(dtype_name(dt)), ", y without grad");
      Result got = run(true, h, y, w, dt, r1, r2, Use::both, true, false);
      compare(got, run(false, h, y, w, dt, r1, r2, Use::both, true, false), y, w, tol, tol);
      CHECK_FALSE(got.gy.defined());
    }
    {
      INFO(std::string(dtype_name(dt)), ", h without grad");
      Result got = run(true, h, y, w, dt, r1, r2, Use::both, false, true);
      compare(got, run(false, h, y, w, dt, r1, r2, Use::both, false, true), y, w, tol, tol);
      CHECK_FALSE(got.gh.defined());
    }
    // y undefined: sum is h itself (a copy), normed = rms_norm(h).
    for (Use use : {Use::both, Use::normed_only}) {
      INFO(std::string(dtype_name(dt)), ", y undefined, ", std::string(use_name(use)));
      Result got = run(true, h, Tensor(), w, dt, r1, r2, use);
      compare(got, run(false, h, Tensor(), w, dt, r1, r2, use), Tensor(), w, tol, tol);
      check_close(got.sum, h, 0, 0, "sum with y undefined");
    }
  }
}

// Mixed precision: h, w f32, y bf16 (a mixer's output), normed bf16 (the next mixer's input).
// The reference does the same casts as separate ops; bf16 tensors (normed, grad y) may differ
// by one bf16 ulp (2^-7 relative at most: 7 stored mantissa bits) where the f32 value sits on
// a rounding boundary; the f32 ones (sum, grad h, grad w) are then within that too.
TEST_CASE("add_rms_norm with a bf16 y and bf16 output matches the composed ops") {
  Generator gen(902);
  const Dims shape{4, 7, 40};
  Tensor h = random_tensor(shape, gen, DType::f32, Device::cpu(), -2, 2);
  Tensor y = random_tensor(shape, gen, DType::bf16);
  Tensor w = random_tensor({40}, gen, DType::f32, Device::cpu(), 0.5, 1.5);
  Tensor r1 = random_tensor(shape, gen, DType::f32), r2 = random_tensor(shape, gen, DType::f32);
  const double bf16_rtol = std::ldexp(1.0, -7);
  for (Use use : {Use::both, Use::sum_only, Use::normed_only}) {
    INFO(std::string(use_name(use)));
    Result got = run(true, h, y, w, DType::bf16, r1, r2, use);
    Result want = run(false, h, y, w, DType::bf16, r1, r2, use);
    CHECK(got.gy.dtype() == DType::bf16);
    CHECK(got.gh.dtype() == DType::f32);
    check_close(got.sum, want.sum, 0, 0, "sum (an exact f32 add of the same values)");
    compare(got, want, y, w, bf16_rtol, 1e-6);
  }
}

TEST_CASE("add_rms_norm gradients of h, y and w match finite differences in f64") {
  Generator gen(903);
  Tensor h = grad_leaf({2, 3, 6}, gen, -2, 2), y = grad_leaf({2, 3, 6}, gen), w = grad_leaf({6}, gen, 0.5, 1.5);
  // Both outputs side by side, so the check's random weights act as independent upstream
  // gradients of sum and normed.
  auto both = [](const std::vector<Tensor>& in) {
    AddRmsNorm r = add_rms_norm(in[0], in[1], in[2], kEps, DType::f64);
    return cat({r.sum, r.normed}, -1);
  };
  check_gradients(both, {h, y, w});
  check_gradients(both, {h, Tensor(), w});  // y undefined
  // A large eps, so that its place in the formula is checked too.
  check_gradients(
      [](const std::vector<Tensor>& in) {
        AddRmsNorm r = add_rms_norm(in[0], in[1], in[2], 0.3, DType::f64);
        return cat({r.sum, r.normed}, -1);
      },
      {h, y, w});
}

TEST_CASE("add_rms_norm user errors name the tensor") {
  using testing::contains;
  using testing::user_error_of;
  Tensor h = Tensor::zeros({2, 3, 8}).set_name("stream");
  Tensor w = Tensor::ones({8}).set_name("norm.weight");
  Tensor y_bad = Tensor::zeros({2, 4, 8}).set_name("mixer_out");
  std::string msg = user_error_of([&] { add_rms_norm(h, y_bad, w, kEps, DType::f32); });
  CHECK(contains(msg, "add_rms_norm"));
  CHECK(contains(msg, "mixer_out"));
  CHECK(contains(msg, "stream"));
  CHECK(contains(msg, "(2, 4, 8)"));

  msg = user_error_of([&] { add_rms_norm(h, Tensor::zeros({2, 3, 8}), Tensor(), kEps, DType::f32); });
  CHECK(contains(msg, "add_rms_norm"));
  CHECK(contains(msg, "w"));
  CHECK(contains(msg, "required"));

  Tensor w_bad = Tensor::ones({7}).set_name("layers.1.norm.weight");
  msg = user_error_of([&] { add_rms_norm(h, Tensor(), w_bad, kEps, DType::f32); });
  CHECK(contains(msg, "layers.1.norm.weight"));
  CHECK(contains(msg, "(8,)"));

  Tensor y_int = Tensor::zeros({2, 3, 8}, DType::i64).set_name("token_ids");
  msg = user_error_of([&] { add_rms_norm(h, y_int, w, kEps, DType::f32); });
  CHECK(contains(msg, "token_ids"));

  msg = user_error_of([&] { add_rms_norm(h, Tensor(), w, kEps, DType::i32); });
  CHECK(contains(msg, "out_dtype"));
}

// ---- the CUDA kernels called directly, against the CPU backend ----

namespace {

// |got - want| <= rtol * |want| + scale[k / cols], k the flat index: cols = D with one scale
// per row, or cols = 1 with one per element. One assertion, naming the worst element.
void check_scaled(const Tensor& got, const Tensor& want, double rtol, const std::vector<double>& scale, int64_t cols,
                  const std::string& what) {
  INFO(what, ": ", got.describe(), " vs reference ", want.describe());
  REQUIRE(got.shape() == want.shape());
  CHECK(got.dtype() == want.dtype());
  std::vector<double> a = got.to(Device::cpu()).to_vector<double>(), b = want.to_vector<double>();
  int64_t failures = 0, worst = -1;
  double worst_excess = -1;
  for (size_t k = 0; k < a.size(); ++k) {
    const double tol = rtol * std::abs(b[k]) + scale[k / cols];
    const double err = std::abs(a[k] - b[k]);
    const bool ok = err <= tol;  // false for NaN
    if (!ok) ++failures;
    const double excess = std::isnan(err) ? INFINITY : err / std::max(tol, 1e-300);
    if (excess > worst_excess) worst_excess = excess, worst = static_cast<int64_t>(k);
  }
  std::ostringstream os;
  if (worst >= 0)
    os << failures << " of " << a.size() << " out of tolerance; worst at " << index_str(want.shape(), worst) << ": "
       << a[worst] << " vs " << b[worst] << " (allowed " << rtol * std::abs(b[worst]) + scale[worst / cols] << ")";
  CHECK_MESSAGE(failures == 0, os.str());
}

// rel * the root mean square of each row of t (M, D).
std::vector<double> row_rms(const Tensor& t, double rel) {
  const int64_t m = t.size(0), d = t.size(1);
  std::vector<double> v = t.to_vector<double>(), out(static_cast<size_t>(m));
  for (int64_t r = 0; r < m; ++r) {
    double ss = 0;
    for (int64_t i = 0; i < d; ++i) ss += v[r * d + i] * v[r * d + i];
    out[r] = rel * std::sqrt(ss / std::max<int64_t>(d, 1));
  }
  return out;
}

Tensor rand_on_cpu(const Dims& shape, Generator& gen, DType dt, double lo = -1, double hi = 1) {
  return Tensor::rand(shape, gen, DType::f32, Device::cpu(), lo, hi).to(dt);
}

Tensor like(const Dims& shape, DType dt, Device dev) { return Tensor::empty(shape, dt, dev); }

// Tolerances, from the arithmetic (u = 2^-24, the f32 unit roundoff):
//  - sum = h + y: one f32 addition of the same operands on both devices: bitwise.
//  - rstd: the sum of D squares accumulated in a different order (warp/block tree against the
//    CPU's lanes); positive terms, so the relative error is at most ~(D/8 + log2 D) u ~ 1.5e-5
//    for D = 2048 in the worst case and ~sqrt(D) u ~ 3e-6 in practice: rtol 1e-5.
//  - normed = s * rstd * w: relative, inheriting rstd's error plus two roundings: rtol 1e-5,
//    and 1e-6 of the row RMS for products near zero.
//  - gh = gs + rstd * (gn w - xhat * mean(gn w xhat)): the mean is a reduction in a different
//    order whose error is far below 1e-5 of the row's scale; the terms cancel, so the
//    tolerance is relative to the row RMS of the result: 1e-5 of it, plus rtol 1e-5.
//  - any bf16 output (normed, gy): both devices round f32 values that differ by the above to
//    8 significant bits; across a rounding boundary they land one bf16 ulp apart, at most 2^-7
//    of the value: rtol 2^-7 on top.
//  - gw[j] = sum over M rows of gn * s * rstd: both devices sum M terms in different orders
//    (the GPU: slabs of ceil(M/256) rows, then 256 partials in order), so the error is bounded
//    by a multiple of u * sum_r |term|. Worst case (M/256 + 256) u ~ 2e-5 of that sum for
//    M = 16384, in practice ~sqrt of the count: 2e-6 * sum_r |term| (about 1.3e-2 absolute on
//    a gradient of magnitude ~60 at M = 16384, while one row's term is ~0.4 on average).
constexpr double kRel = 1e-5;

double bf16_extra(DType dt) { return dt == DType::bf16 ? std::ldexp(1.0, -7) : 0.0; }

// The fused kernels on (m, d) random data against the CPU backend: forward with y and
// without, backward with gs, gh, gy, gw each defined or not; y and n (and so gy and gn) in
// f32 and bf16, every combination.
void compare_add_norm_kernels(int64_t m, int64_t d, Generator& gen) {
  const Device gpu = Device::cuda(0), cpu = Device::cpu();
  Backend& bg = backend(gpu);
  Backend& bc = backend(cpu);
  const Dims md{m, d};
  Tensor h = rand_on_cpu(md, gen, DType::f32, -2, 2), y32 = rand_on_cpu(md, gen, DType::f32);
  Tensor w = rand_on_cpu({d}, gen, DType::f32, 0.5, 1.5);
  Tensor gn32 = rand_on_cpu(md, gen, DType::f32), gs = rand_on_cpu(md, gen, DType::f32);
  Tensor hg = h.to(gpu), wg = w.to(gpu), gsg = gs.to(gpu);
  for (DType ydt : {DType::f32, DType::bf16})
    for (DType ndt : {DType::f32, DType::bf16}) {
      const std::string tag = std::string("M ") + std::to_string(m) + " D " + std::to_string(d) + " y " +
                              dtype_name(ydt) + " n " + dtype_name(ndt);
      INFO(tag);
      Tensor y = y32.to(ydt), gn = gn32.to(ndt), yg = y.to(gpu), gng = gn.to(gpu);
      // ---- forward, with y and without ----
      for (bool with_y : {true, false}) {
        if (!with_y && ydt == DType::bf16) continue;  // y's dtype does not matter then
        const std::string fwd = with_y ? "forward with y" : "forward, y undefined";
        INFO(fwd);
        Tensor s_c = like(md, DType::f32, cpu), n_c = like(md, ndt, cpu), r_c = like({m}, DType::f32, cpu);
        Tensor s_g = like(md, DType::f32, gpu), n_g = like(md, ndt, gpu), r_g = like({m}, DType::f32, gpu);
        bc.add_rms_norm_forward(h, with_y ? y : Tensor(), w, kEps, s_c, n_c, r_c);
        bg.add_rms_norm_forward(hg, with_y ? yg : Tensor(), wg, kEps, s_g, n_g, r_g);
        bg.synchronize();
        check_scaled(s_g, s_c, 0, std::vector<double>(m, 0.0), d, "sum");
        check_scaled(r_g, r_c, kRel, std::vector<double>(m, 0.0), 1, "rstd");
        check_scaled(n_g, n_c, kRel + bf16_extra(ndt), row_rms(n_c, 1e-6), d, "normed");
      }
      // ---- backward, from the CPU's forward (the same s and rstd on both devices) ----
      Tensor s = like(md, DType::f32, cpu), n = like(md, ndt, cpu), rstd = like({m}, DType::f32, cpu);
      bc.add_rms_norm_forward(h, y, w, kEps, s, n, rstd);
      Tensor sg = s.to(gpu), rstdg = rstd.to(gpu);
      // Column scales of gw: 2e-6 * sum_r |gn * s * rstd|.
      std::vector<double> gw_scale(static_cast<size_t>(d), 0.0);
      {
        std::vector<double> vs = s.to_vector<double>(), vg = gn.to_vector<double>(), vr = rstd.to_vector<double>();
        for (int64_t r = 0; r < m; ++r)
          for (int64_t j = 0; j < d; ++j) gw_scale[j] += std::abs(vg[r * d + j] * vs[r * d + j] * vr[r]);
        for (double& x : gw_scale) x *= 2e-6;
      }
      struct Variant {
        const char* name;
        bool gs, gh, gy, gw;
      };
      for (Variant v : {Variant{"all", true, true, true, true}, Variant{"gs undefined", false, true, true, true},
                        Variant{"gh and gw undefined", true, false, true, false},
                        Variant{"gs and gy undefined", false, true, false, true}}) {
        INFO("backward, ", std::string(v.name));
        auto outs = [&](Device dev) {
          return std::vector<Tensor>{v.gh ? like(md, DType::f32, dev) : Tensor(),
                                     v.gy ? like(md, ydt, dev) : Tensor(),
                                     v.gw ? like({d}, DType::f32, dev) : Tensor()};
        };
        std::vector<Tensor> oc = outs(cpu), og = outs(gpu);
        bc.add_rms_norm_backward(s, w, rstd, gn, v.gs ? gs : Tensor(), oc[0], oc[1], oc[2]);
        bg.add_rms_norm_backward(sg, wg, rstdg, gng, v.gs ? gsg : Tensor(), og[0], og[1], og[2]);
        bg.synchronize();
        if (v.gh) check_scaled(og[0], oc[0], kRel, row_rms(oc[0], kRel), d, "gh");
        if (v.gy) check_scaled(og[1], oc[1], kRel + bf16_extra(ydt), row_rms(oc[1], kRel), d, "gy");
        if (v.gw) check_scaled(og[2], oc[2], kRel, gw_scale, 1, "gw");
      }
    }
}

}  // namespace

// D = 768: a warp per row; D = 2048: a block per row (above kWarpRowLimit = 1024).
TEST_CASE("cuda add_rms_norm kernels match the cpu backend forward and backward") {
  if (!cuda_test_device()) return;
  Generator gen(904);
  // d <= 1024 and a multiple of 4: a warp per row, the weight gradient's partials summed in
  // the row pass (d = 100: lanes without a column; 1000: a partial last quad; M = 1000: a
  // partial last block of 32 rows); 770: a warp per row, single accesses, the separate
  // partial pass; 2048: a block per row.
  for (int64_t d : {int64_t{100}, int64_t{768}, int64_t{770}, int64_t{1000}, int64_t{2048}})
    compare_add_norm_kernels(1000, d, gen);
}

// M = 16384 rows: the weight gradient's full grid of 256 row slabs, and many rows per block
// of the forward. Slow for its CPU reference (about 30M elements per tensor).
TEST_SUITE("slow") {
  TEST_CASE("cuda add_rms_norm kernels match the cpu backend at M = 16384") {
    if (!cuda_test_device()) return;
    Generator gen(906);
    for (int64_t d : {int64_t{768}, int64_t{2048}}) compare_add_norm_kernels(16384, d, gen);
  }
}

// The op through the tape on the GPU (mixed precision: f32 stream, bf16 y and output)
// against the same op on the CPU: the node's wiring (which gradient is gs, which is gn, the
// zeros of an unused output) on the fused path. Tolerances as for the kernels, with the f32
// gradients of h and w inheriting the bf16 rounding of the upstream gradient of normed.
TEST_CASE("cuda add_rms_norm op matches the cpu op forward and backward") {
  if (!cuda_test_device()) return;
  const Device gpu = Device::cuda(0);
  Generator gen(905);
  const Dims shape{4, 64, 768};
  Tensor h = rand_on_cpu(shape, gen, DType::f32, -2, 2), y = rand_on_cpu(shape, gen, DType::bf16);
  Tensor w = rand_on_cpu({768}, gen, DType::f32, 0.5, 1.5);
  Tensor r1 = rand_on_cpu(shape, gen, DType::f32), r2 = rand_on_cpu(shape, gen, DType::f32);
  for (Use use : {Use::both, Use::sum_only, Use::normed_only}) {
    INFO(std::string(use_name(use)));
    Result want = run(true, h, y, w, DType::bf16, r1, r2, use);
    Result got = run(true, h.to(gpu), y.to(gpu), w.to(gpu), DType::bf16, r1.to(gpu), r2.to(gpu), use);
    const double b = std::ldexp(1.0, -7);
    check_close(got.sum.to(Device::cpu()), want.sum, 0, 0, "sum");
    check_close(got.normed.to(Device::cpu()), want.normed, kRel + b, 1e-6, "normed");
    check_close(got.loss.to(Device::cpu()), want.loss, 1e-3, 1e-2, "loss");
    check_close(got.gh.to(Device::cpu()), want.gh, kRel, 1e-4, "grad h");
    check_close(got.gy.to(Device::cpu()), want.gy, kRel + b, 1e-4, "grad y");
    check_close(or_zeros(got.gw, w.to(gpu)).to(Device::cpu()), or_zeros(want.gw, w), 1e-3, 1e-3, "grad w");
  }
}
