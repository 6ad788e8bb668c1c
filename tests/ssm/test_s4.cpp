// S4 / S4D: kernel generation against explicit powers of the discretised state matrix (dense
// f64 matrices, conjugate pairs expanded), fft_conv against the direct causal convolution,
// finite-difference gradients of every op and of whole blocks, the HiPPO-LegS DPLR init,
// convolution mode against recurrent mode, and the model factory.
#include <doctest/doctest.h>

#include <Eigen/Dense>
#include <complex>
#include <unsupported/Eigen/MatrixFunctions>

#include "gradcheck.h"
#include "ssm/kernels/s4_kernel.h"
#include "ssm/model.h"
#include "ssm/s4.h"

namespace ssmtrain {
namespace {

using cd = std::complex<double>;

// (H, N2, 2) f64 with real parts in [re_lo, re_hi) and imaginary parts in [im_lo, im_hi).
Tensor complex_param(int64_t H, int64_t N2, Generator& gen, double re_lo, double re_hi, double im_lo, double im_hi,
                     bool leaf = false) {
  std::vector<double> v(static_cast<size_t>(H * N2 * 2));
  for (size_t i = 0; i < v.size(); i += 2) {
    v[i] = re_lo + (re_hi - re_lo) * gen.uniform();
    v[i + 1] = im_lo + (im_hi - im_lo) * gen.uniform();
  }
  Tensor t = Tensor::from_vector(v, {H, N2, 2});
  if (leaf) t.requires_grad_();
  return t;
}

cd at(const std::vector<double>& v, int64_t i) { return {v[2 * i], v[2 * i + 1]}; }

// The full (conjugate-pairs expanded) vectors of channel h: (kept, conjugates).
Eigen::VectorXcd full_vector(const Tensor& t, int64_t h) {
  const int64_t N2 = t.size(1);
  const auto v = t.to_vector<double>();
  Eigen::VectorXcd out(2 * N2);
  for (int64_t n = 0; n < N2; ++n) out[n] = at(v, h * N2 + n), out[N2 + n] = std::conj(at(v, h * N2 + n));
  return out;
}

// K[h, l] = Re(C Abar^l Bbar) from dense matrices: the reference for both kernels.
// dplr: A = Lambda - P P^*, C = Ct (I - Abar^L)^{-1}; else A = Lambda (P ignored).
Tensor explicit_kernel(const Tensor& dt, const Tensor& Lambda, const Tensor& P, const Tensor& B, const Tensor& C,
                       int64_t L, S4Discretization disc, bool dplr) {
  const int64_t H = dt.size(0), N = 2 * Lambda.size(1);
  const auto dtv = dt.to_vector<double>();
  std::vector<double> K(static_cast<size_t>(H * L));
  const Eigen::MatrixXcd I = Eigen::MatrixXcd::Identity(N, N);
  for (int64_t h = 0; h < H; ++h) {
    Eigen::MatrixXcd A = Eigen::MatrixXcd(full_vector(Lambda, h).asDiagonal());
    if (dplr) {
      Eigen::VectorXcd p = full_vector(P, h);
      A -= p * p.adjoint();
    }
    const Eigen::VectorXcd b = full_vector(B, h);
    Eigen::RowVectorXcd c = full_vector(C, h).transpose();
    Eigen::MatrixXcd Abar;
    Eigen::VectorXcd Bbar;
    if (disc == S4Discretization::zoh) {
      Abar = (dtv[h] * A).exp();
      Bbar = A.partialPivLu().solve((Abar - I) * b);
    } else {
      Eigen::PartialPivLU<Eigen::MatrixXcd> lu(I - dtv[h] / 2 * A);
      Abar = lu.solve(I + dtv[h] / 2 * A);
      Bbar = lu.solve(dtv[h] * b);
    }
    if (dplr) {
      Eigen::MatrixXcd AL = Eigen::MatrixXcd::Identity(N, N);
      for (int64_t l = 0; l < L; ++l) AL = AL * Abar;
      c = (I - AL).transpose().partialPivLu().solve(c.transpose()).transpose();
    }
    Eigen::VectorXcd x = Bbar;
    for (int64_t l = 0; l < L; ++l) {
      const cd k = c * x;
      CHECK(std::abs(k.imag()) <= 1e-9 * (1 + std::abs(k.real())));  // conjugate symmetry: a real kernel
      K[h * L + l] = k.real();
      x = Abar * x;
    }
  }
  return Tensor::from_vector(K, {H, L});
}

// y[b, l, h] = sum_{j<=l} K[h, j] u[b, l-j, h].
Tensor direct_conv(const Tensor& u, const Tensor& K) {
  const int64_t B = u.size(0), L = u.size(1), H = u.size(2);
  const auto uv = u.contiguous().to_vector<double>(), kv = K.contiguous().to_vector<double>();
  std::vector<double> y(uv.size(), 0.0);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t l = 0; l < L; ++l)
      for (int64_t h = 0; h < H; ++h)
        for (int64_t j = 0; j <= l; ++j) y[(b * L + l) * H + h] += kv[h * L + j] * uv[(b * L + l - j) * H + h];
  return Tensor::from_vector(y, {B, L, H});
}

Tensor positive_dt(int64_t H, Generator& gen, bool leaf = false) {
  Tensor t = random_tensor({H}, gen, DType::f64, Device::cpu(), 0.05, 0.5);
  if (leaf) t.requires_grad_();
  return t;
}

}  // namespace

TEST_CASE("fft_conv matches the direct causal convolution") {
  Generator gen(401);
  for (int64_t L : {1, 2, 7, 16, 37}) {
    CAPTURE(L);
    const int64_t B = 2, H = 3;
    const Tensor u = random_tensor({B, L, H}, gen, DType::f64);
    const Tensor K = random_tensor({H, L}, gen, DType::f64);
    // f64 FFT: rounding ~ 1e-16 * log2(n) * sum |K||u| <= ~1e-13 for O(1) data and L <= 37.
    check_close(fft_conv(u, K), direct_conv(u, K), 1e-11, 1e-12, "f64");
    // f32: the same bound with eps 6e-8 and L = 37 terms: ~1e-5 absolute.
    check_close(fft_conv(u.to(DType::f32), K.to(DType::f32)), direct_conv(u, K), 1e-4, 1e-4, "f32");
  }
  CHECK(fft_conv_size(1) == 1);
  CHECK(fft_conv_size(16) == 32);
  CHECK(fft_conv_size(37) == 75);  // 3 * 5^2 >= 73
  // A strided input (a transposed view) is read through its strides.
  const Tensor ut = random_tensor({2, 4, 5}, gen, DType::f64).transpose(1, 2);  // (2, 5, 4)
  const Tensor K = random_tensor({4, 5}, gen, DType::f64);
  check_close(fft_conv(ut, K), direct_conv(ut, K), 1e-11, 1e-12, "strided");
  CHECK_THROWS_AS(fft_conv(ut, random_tensor({4, 4}, gen, DType::f64)), UserError);
  CHECK_THROWS_AS(fft_conv(ut, K.to(DType::f32)), UserError);
}

TEST_CASE("fft_conv gradients match finite differences") {
  Generator gen(402);
  for (int64_t L : {5, 8}) {
    Tensor u = grad_leaf({2, L, 3}, gen), K = grad_leaf({3, L}, gen);
    check_gradients([](const std::vector<Tensor>& in) { return fft_conv(in[0], in[1]); }, {u, K});
  }
}

TEST_CASE("Vandermonde kernel equals explicit powers of Abar") {
  Generator gen(403);
  const int64_t H = 3, N2 = 4;
  for (auto disc : {S4Discretization::zoh, S4Discretization::bilinear}) {
    for (int64_t L : {1, 9, 32}) {
      CAPTURE(L);
      CAPTURE(s4_discretization_name(disc));
      const Tensor dt = positive_dt(H, gen);
      const Tensor A = complex_param(H, N2, gen, -1.0, -0.05, -4, 4);
      const Tensor B = complex_param(H, N2, gen, -1, 1, -1, 1), C = complex_param(H, N2, gen, -1, 1, -1, 1);
      // Both sides are f64 with O(1) entries and |Abar| < 1; the dense reference accumulates
      // ~L matrix products (error ~ L * N * 1e-16), the kernel ~64-step product chains.
      check_close(s4d_vandermonde_kernel(dt, A, B, C, L, disc),
                  explicit_kernel(dt, A, Tensor(), B, C, L, disc, /*dplr=*/false), 1e-10, 1e-11, "vandermonde");
    }
  }
  // The real-valued S4D-Real case: imaginary parts exactly zero.
  const Tensor dt = positive_dt(H, gen);
  const Tensor A = complex_param(H, N2, gen, -3.0, -0.5, 0, 0);
  const Tensor B = complex_param(H, N2, gen, 1, 1, 0, 0), C = complex_param(H, N2, gen, -1, 1, -1, 1);
  check_close(s4d_vandermonde_kernel(dt, A, B, C, 20, S4Discretization::zoh),
              explicit_kernel(dt, A, Tensor(), B, C, 20, S4Discretization::zoh, false), 1e-10, 1e-11, "real A");
}

TEST_CASE("Cauchy kernel with Woodbury equals explicit powers of the DPLR Abar") {
  Generator gen(404);
  const int64_t H = 3, N2 = 4;
  for (int64_t L : {1, 2, 13, 32}) {
    CAPTURE(L);
    const Tensor dt = positive_dt(H, gen);
    const Tensor Lam = complex_param(H, N2, gen, -1.0, -0.1, -4, 4);
    const Tensor P = complex_param(H, N2, gen, -0.5, 0.5, -0.5, 0.5);
    const Tensor B = complex_param(H, N2, gen, -1, 1, -1, 1), Ct = complex_param(H, N2, gen, -1, 1, -1, 1);
    // Frequency-domain evaluation and a length-L inverse FFT against L dense matrix
    // products and an N x N solve: both ~1e-14 relative; 1e-9 leaves room for the
    // conditioning of (I - Abar^L) with |Abar| near 1 at small dt.
    check_close(s4_dplr_kernel(dt, Lam, P, B, Ct, L),
                explicit_kernel(dt, Lam, P, B, Ct, L, S4Discretization::bilinear, /*dplr=*/true), 1e-9, 1e-10, "dplr");
  }
  // With P = 0 the DPLR kernel is the diagonal bilinear kernel of C = Ct (I - Abar^L)^{-1}:
  // checked above through the dense reference; here also the Ct = C (1 - z^L) identity.
  const int64_t L = 10;
  const Tensor dt = positive_dt(H, gen);
  const Tensor Lam = complex_param(H, N2, gen, -1.0, -0.1, -4, 4);
  const Tensor B = complex_param(H, N2, gen, -1, 1, -1, 1), C = complex_param(H, N2, gen, -1, 1, -1, 1);
  std::vector<double> ct = C.to_vector<double>();
  const auto lv = Lam.to_vector<double>(), dtv = dt.to_vector<double>();
  for (int64_t h = 0; h < H; ++h)
    for (int64_t n = 0; n < N2; ++n) {
      const int64_t i = h * N2 + n;
      const cd a = dtv[h] * at(lv, i);
      const cd z = (1.0 + a / 2.0) / (1.0 - a / 2.0);
      const cd c = at(ct, i) * (1.0 - std::pow(z, static_cast<double>(L)));
      ct[2 * i] = c.real(), ct[2 * i + 1] = c.imag();
    }
  check_close(s4_dplr_kernel(dt, Lam, Tensor::zeros({H, N2, 2}, DType::f64), B, Tensor::from_vector(ct, {H, N2, 2}), L),
              s4d_vandermonde_kernel(dt, Lam, B, C, L, S4Discretization::bilinear), 1e-10, 1e-11, "P = 0");
}

TEST_CASE("S4 kernel ops reject bad arguments") {
  Generator gen(405);
  const Tensor dt = positive_dt(2, gen), A = complex_param(2, 3, gen, -1, -0.1, -1, 1);
  CHECK_THROWS_AS(s4d_vandermonde_kernel(dt, A, A, complex_param(2, 4, gen, 0, 1, 0, 1), 4, S4Discretization::zoh),
                  UserError);
  CHECK_THROWS_AS(s4d_vandermonde_kernel(dt, A, A, A, 0, S4Discretization::zoh), UserError);
  CHECK_THROWS_AS(s4d_vandermonde_kernel(mul(dt, -1.0), A, A, A, 4, S4Discretization::zoh), UserError);
  CHECK_THROWS_AS(s4_dplr_kernel(dt, A, A, A, A.to(DType::f32), 4), UserError);
  CHECK_THROWS_AS(parse_s4_discretization("euler", "model.s4.discretization"), UserError);
}

TEST_CASE("Vandermonde kernel gradients match finite differences") {
  Generator gen(406);
  const int64_t H = 2, N2 = 3;
  for (auto disc : {S4Discretization::zoh, S4Discretization::bilinear}) {
    CAPTURE(s4_discretization_name(disc));
    Tensor dt = positive_dt(H, gen, true);
    Tensor A = complex_param(H, N2, gen, -1.0, -0.2, -3, 3, true);
    Tensor B = complex_param(H, N2, gen, -1, 1, -1, 1, true), C = complex_param(H, N2, gen, -1, 1, -1, 1, true);
    check_gradients(
        [disc](const std::vector<Tensor>& in) { return s4d_vandermonde_kernel(in[0], in[1], in[2], in[3], 11, disc); },
        {dt, A, B, C});
  }
}

TEST_CASE("Cauchy kernel gradients match finite differences") {
  Generator gen(407);
  const int64_t H = 2, N2 = 3;
  for (int64_t L : {8, 7}) {  // even L has the w = -1 frequency, odd L does not
    CAPTURE(L);
    Tensor dt = positive_dt(H, gen, true);
    Tensor Lam = complex_param(H, N2, gen, -1.0, -0.2, -3, 3, true);
    Tensor P = complex_param(H, N2, gen, -0.5, 0.5, -0.5, 0.5, true);
    Tensor B = complex_param(H, N2, gen, -1, 1, -1, 1, true), Ct = complex_param(H, N2, gen, -1, 1, -1, 1, true);
    check_gradients([L](const std::vector<Tensor>& in) { return s4_dplr_kernel(in[0], in[1], in[2], in[3], in[4], L); },
                    {dt, Lam, P, B, Ct});
  }
}

TEST_CASE("HiPPO-LegS in DPLR form keeps the spectrum of the LegS matrix") {
  const int64_t N = 8, N2 = N / 2;
  const S4InitModes m = s4_init_modes("legs", N);
  REQUIRE(static_cast<int64_t>(m.Lambda.size()) == N2);
  Eigen::VectorXcd lam(N), p(N);
  for (int64_t n = 0; n < N2; ++n) {
    CHECK(m.Lambda[n].real() == doctest::Approx(-0.5));
    CHECK(m.Lambda[n].imag() > 0);
    lam[n] = m.Lambda[n], lam[N2 + n] = std::conj(m.Lambda[n]);
    p[n] = m.P[n], p[N2 + n] = std::conj(m.P[n]);
  }
  // Lambda - P P^* is unitarily similar to the lower-triangular LegS matrix, whose
  // eigenvalues are its diagonal -1, ..., -N. The LegS eigenproblem is non-normal
  // (condition ~1e3 at N = 8), so 1e-8 bounds the f64 eigenvalue error comfortably.
  Eigen::MatrixXcd A = Eigen::MatrixXcd(lam.asDiagonal()) - p * p.adjoint();
  Eigen::ComplexEigenSolver<Eigen::MatrixXcd> es(A);
  std::vector<double> re;
  for (int64_t i = 0; i < N; ++i) {
    CHECK(std::abs(es.eigenvalues()[i].imag()) < 1e-8);
    re.push_back(es.eigenvalues()[i].real());
  }
  std::sort(re.begin(), re.end());
  for (int64_t i = 0; i < N; ++i) CHECK(re[i] == doctest::Approx(-static_cast<double>(N - i)).epsilon(1e-8));
  // |P~|^2 and |B~|^2 are preserved by the unitary change of basis (both halves count).
  double pn = 0, bn = 0;
  for (int64_t n = 0; n < N2; ++n) pn += 2 * std::norm(m.P[n]), bn += 2 * std::norm(m.B[n]);
  CHECK(pn == doctest::Approx(N * N / 2.0));                 // sum (n + 1/2)
  CHECK(bn == doctest::Approx(static_cast<double>(N * N)));  // sum (2n + 1)

  const S4InitModes lin = s4_init_modes("lin", N), inv = s4_init_modes("inv", N), real = s4_init_modes("real", N);
  CHECK(lin.Lambda[2].imag() == doctest::Approx(2 * M_PI));
  CHECK(inv.Lambda[0].imag() == doctest::Approx(N / M_PI * (N - 1.0)));
  CHECK(real.Lambda[3] == cd(-4.0, 0.0));
  CHECK(lin.B[1] == cd(1.0, 0.0));
  CHECK_THROWS_AS(s4_init_modes("legs", 7), UserError);
  CHECK_THROWS_AS(s4_init_modes("hippo", 8), UserError);
}

namespace {

struct Variant {
  const char* kernel;
  const char* init;
  const char* disc;
};

const Variant kVariants[] = {
    {"dplr", "legs", "bilinear"}, {"dplr", "lin", "bilinear"}, {"dplr", "inv", "bilinear"},
    {"dplr", "real", "bilinear"}, {"diag", "legs", "zoh"},     {"diag", "lin", "zoh"},
    {"diag", "inv", "zoh"},       {"diag", "real", "zoh"},     {"diag", "legs", "bilinear"},
    {"diag", "lin", "bilinear"},  {"diag", "inv", "bilinear"}, {"diag", "real", "bilinear"},
};

std::shared_ptr<S4> make_block(const Variant& v, int64_t H, int64_t N, uint64_t seed, double dt_min = 1e-2,
                               double dt_max = 2e-1) {
  S4Options o;
  o.d_model = H;
  o.d_state = N;
  o.kernel = v.kernel;
  o.init = v.init;
  o.discretization = v.disc;
  o.dt_min = dt_min, o.dt_max = dt_max;
  Generator gen(seed);
  auto block = std::make_shared<S4>(o, gen);
  block->to(DType::f64);
  return block;
}

}  // namespace

TEST_CASE("S4 and S4D blocks: step by step equals the full sequence") {
  Generator gen(408);
  const int64_t Bsz = 2, L = 12, H = 3, N = 8;
  for (const Variant& v : kVariants) {
    CAPTURE(v.kernel);
    CAPTURE(v.init);
    CAPTURE(v.disc);
    auto block = make_block(v, H, N, 17);
    const Tensor x = random_tensor({Bsz, L, H}, gen, DType::f64);
    const Tensor full = block->forward(x);
    auto state = block->init_state(Bsz, Device::cpu(), DType::f64);
    std::vector<Tensor> steps;
    for (int64_t t = 0; t < L; ++t) steps.push_back(block->step(x.select(1, t).contiguous(), *state));
    // Convolution (FFT, f64) and recurrence (L dense or diagonal steps, f64) compute the
    // same sums in different orders: ~1e-14 relative to |K| |u| ~ O(10) (LegS B~ grows
    // like sqrt(N)); 1e-9 is far below any modelling error (a wrong tap is O(0.1)).
    check_close(stack(steps, 1), full, 1e-9, 1e-10, "step vs forward");
  }
}

TEST_CASE("S4 DPLR kernel length doubling keeps the kernel") {
  Generator gen(409);
  auto block = make_block({"dplr", "legs", "bilinear"}, 2, 6, 23);
  const int64_t H = 2;
  Tensor K5 = block->kernel(5);
  CHECK(block->kernel_length() == 5);
  Tensor K3 = block->kernel(3);  // shorter: the first taps of the length-5 kernel
  check_close(K3, K5.narrow(1, 0, 3), 0, 0, "truncated");
  Tensor K12 = block->kernel(12);  // 5 -> 10 -> 20
  CHECK(block->kernel_length() == 20);
  // Ct is rewritten (Ct (I + Abar^Lk), twice) but C, hence every tap, is unchanged: the
  // rewrite multiplies by an N x N matrix power in f64, ~1e-14 relative.
  check_close(K12.narrow(1, 0, 5), K5, 1e-9, 1e-11, "doubled");
  // And the recurrence built from the rewritten Ct reproduces the length-12 convolution.
  const Tensor x = random_tensor({1, 12, H}, gen, DType::f64);
  const Tensor full = block->forward(x);
  auto state = block->init_state(1, Device::cpu(), DType::f64);
  std::vector<Tensor> steps;
  for (int64_t t = 0; t < 12; ++t) steps.push_back(block->step(x.select(1, t).contiguous(), *state));
  check_close(stack(steps, 1), full, 1e-9, 1e-10, "step after doubling");
}

TEST_CASE("S4 and S4D block gradients match finite differences") {
  Generator gen(410);
  const int64_t Bsz = 2, L = 6, H = 2, N = 4;
  for (const Variant& v :
       {Variant{"dplr", "legs", "bilinear"}, Variant{"diag", "inv", "zoh"}, Variant{"diag", "lin", "bilinear"}}) {
    CAPTURE(v.kernel);
    CAPTURE(v.init);
    auto block = make_block(v, H, N, 31);
    std::vector<Tensor> inputs = {grad_leaf({Bsz, L, H}, gen)};
    for (const Tensor& p : block->parameters()) inputs.push_back(p);
    check_gradients([&](const std::vector<Tensor>& in) { return block->forward(in[0]); }, inputs);
  }
}

TEST_CASE("S4 parameters: names and the ssm tag") {
  Generator gen(411);
  auto block = make_block({"dplr", "legs", "bilinear"}, 4, 8, 5);
  std::vector<std::string> names, ssm;
  for (const auto& p : block->named_parameters()) {
    names.push_back(p.name);
    if (p.has_tag(param_tag::ssm)) ssm.push_back(p.name);
  }
  CHECK(names == std::vector<std::string>{"log_dt", "log_A_real", "A_imag", "B", "P", "C", "D", "output_linear.weight",
                                          "output_linear.bias"});
  CHECK(ssm == std::vector<std::string>{"log_dt", "log_A_real", "A_imag", "B", "P"});
  CHECK(block->parameter("C").shape() == Dims{4, 4, 2});
  // log dt starts in [log dt_min, log dt_max].
  for (double v : block->parameter("log_dt").to_vector<double>()) {
    CHECK(v >= std::log(1e-2) - 1e-6);
    CHECK(v <= std::log(2e-1) + 1e-6);
  }
  auto diag = make_block({"diag", "real", "zoh"}, 4, 8, 5);
  CHECK_THROWS_AS(diag->parameter("P"), UserError);
}

TEST_CASE("model factory builds s4 and s4d mixers") {
  Generator gen(412);
  ModelSpec spec;
  spec.model.d_model = 8;
  spec.model.n_layer = 2;
  spec.model.d_state = 4;
  spec.model.vocab_size = 16;
  spec.model.mixer = "s4d";
  S4Options& s4_options = spec.model.mixers.get<S4Options>();
  auto lm = build_language_model(spec, gen);
  auto mixer = std::dynamic_pointer_cast<S4>(lm->block(0)->mixer());
  REQUIRE(mixer);
  CHECK_FALSE(mixer->is_dplr());
  spec.model.mixer = "s4";
  s4_options.discretization = "bilinear";
  auto lm2 = build_language_model(spec, gen);
  auto s4 = std::dynamic_pointer_cast<S4>(lm2->block(1)->mixer());
  REQUIRE(s4);
  CHECK(s4->is_dplr());
  const Tensor x = random_tensor({1, 5, 8}, gen);
  CHECK(s4->forward(x).shape() == Dims{1, 5, 8});
  s4_options.discretization = "zoh";  // the Cauchy kernel is defined for bilinear only
  CHECK_THROWS_AS(build_language_model(spec, gen), UserError);
  s4_options.kernel = "diag";
  CHECK_NOTHROW(build_language_model(spec, gen));
}

}  // namespace ssmtrain
