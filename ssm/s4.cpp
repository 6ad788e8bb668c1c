#include "ssm/s4.h"

#include <Eigen/Dense>
#include <cmath>

#include "core/backend.h"
#include "core/ops.h"
#include "nn/init.h"
#include "ssm/mixer_util.h"

namespace ssmtrain {

using cd = std::complex<double>;

S4InitModes s4_init_modes(const std::string& init, int64_t N) {
  SSMT_CHECK(N >= 2 && N % 2 == 0, "s4: d_state must be even and >= 2 (N / 2 complex modes), got ", N);
  const int64_t N2 = N / 2;
  S4InitModes m;
  m.Lambda.resize(N2), m.P.assign(N2, 0.0), m.B.assign(N2, 1.0);
  if (init == "legs") {
    // HiPPO-LegS: A + P P^T = -1/2 I + S with S[n, k] = -+ 1/2 sqrt(2n+1) sqrt(2k+1) below /
    // above the diagonal. -i S is Hermitian: S = V diag(i mu) V^*, mu in +- pairs.
    Eigen::MatrixXd S = Eigen::MatrixXd::Zero(N, N);
    Eigen::VectorXd P(N), B(N);
    for (int64_t n = 0; n < N; ++n) {
      P[n] = std::sqrt(n + 0.5);
      B[n] = std::sqrt(2.0 * n + 1.0);
      for (int64_t k = 0; k < N; ++k) {
        const double v = 0.5 * std::sqrt(2.0 * n + 1.0) * std::sqrt(2.0 * k + 1.0);
        if (n > k) S(n, k) = -v;
        if (n < k) S(n, k) = v;
      }
    }
    Eigen::MatrixXcd M = cd(0.0, -1.0) * S.cast<cd>();
    Eigen::SelfAdjointEigenSolver<Eigen::MatrixXcd> es(M);
    SSMT_ASSERT(es.info() == Eigen::Success, "HiPPO-LegS diagonalisation failed");
    // Eigenvalues ascend: the last N2 are the positive mu (one of each conjugate pair).
    for (int64_t j = 0; j < N2; ++j) {
      const int64_t col = N2 + j;
      const Eigen::VectorXcd v = es.eigenvectors().col(col);
      m.Lambda[j] = cd(-0.5, es.eigenvalues()[col]);
      m.P[j] = v.adjoint() * P.cast<cd>();
      m.B[j] = v.adjoint() * B.cast<cd>();
    }
  } else if (init == "lin" || init == "inv" || init == "real") {
    for (int64_t n = 0; n < N2; ++n) {
      const double dn = static_cast<double>(n), dN = static_cast<double>(N);
      if (init == "lin") m.Lambda[n] = cd(-0.5, M_PI * dn);
      if (init == "inv") m.Lambda[n] = cd(-0.5, dN / M_PI * (dN / (2 * dn + 1) - 1));
      if (init == "real") m.Lambda[n] = cd(-(dn + 1), 0.0);
    }
  } else {
    throw UserError("s4: unknown init '" + init + "' (expected legs, lin, inv or real)");
  }
  return m;
}

namespace {

// A parameter's current values as host doubles.
std::vector<double> host(const Tensor& t) { return t.contiguous().to_vector<double>(); }

// The continuous parameters of every channel in f64.
struct HostSSM {
  int64_t H = 0, N2 = 0;
  std::vector<double> dt;
  std::vector<cd> A, B, P, C;  // (H, N2); P empty for diag
};

std::vector<cd> host_complex(const Tensor& t) {
  std::vector<double> v = host(t);
  std::vector<cd> out(v.size() / 2);
  for (size_t i = 0; i < out.size(); ++i) out[i] = cd(v[2 * i], v[2 * i + 1]);
  return out;
}

// The bilinear discretisation of the full conjugate-symmetric DPLR system of channel h:
// state order (kept modes, their conjugates), A = Lambda - P P^*.
struct DenseDplr {
  Eigen::MatrixXcd Abar;   // (N, N)
  Eigen::VectorXcd Bbar;   // (N)
  Eigen::RowVectorXcd Ct;  // (N)
};

DenseDplr dense_dplr(const HostSSM& s, int64_t h) {
  const int64_t N2 = s.N2, N = 2 * N2;
  Eigen::VectorXcd lam(N), P(N), B(N);
  DenseDplr d;
  d.Ct.resize(N);
  for (int64_t n = 0; n < N2; ++n) {
    const int64_t i = h * N2 + n;
    lam[n] = s.A[i], lam[N2 + n] = std::conj(s.A[i]);
    P[n] = s.P[i], P[N2 + n] = std::conj(s.P[i]);
    B[n] = s.B[i], B[N2 + n] = std::conj(s.B[i]);
    d.Ct[n] = s.C[i], d.Ct[N2 + n] = std::conj(s.C[i]);
  }
  const Eigen::MatrixXcd A = Eigen::MatrixXcd(lam.asDiagonal()) - P * P.adjoint();
  const Eigen::MatrixXcd I = Eigen::MatrixXcd::Identity(N, N);
  const double dt = s.dt[h];
  Eigen::PartialPivLU<Eigen::MatrixXcd> lu(I - (dt / 2) * A);
  d.Abar = lu.solve(I + (dt / 2) * A);
  d.Bbar = lu.solve(dt * B);
  return d;
}

Eigen::MatrixXcd matrix_power(Eigen::MatrixXcd base, int64_t e) {
  Eigen::MatrixXcd out = Eigen::MatrixXcd::Identity(base.rows(), base.cols());
  for (; e > 0; e >>= 1) {
    if (e & 1) out = out * base;
    base = base * base;
  }
  return out;
}

struct S4State : MixerState {
  bool dense = false;
  double scale = 2;  // y = scale * Re(C h): 2 for the kept half of conjugate pairs, 1 for the full state
  Tensor Ar, Ai;     // diag: Abar (H, M); dense: Abar^T (H, M, M)
  Tensor Br, Bi;     // Bbar (H, M)
  Tensor Cr, Ci;     // C (H, M)
  Tensor hr, hi;     // state (B, H, M)
};

Tensor to_device(const std::vector<double>& v, const Dims& shape, DType dtype, Device device) {
  return Tensor::from_vector(v, shape).to(dtype).to(device);
}

}  // namespace

S4::S4(const S4Options& o, Generator& gen) : opt_(o) {
  SSMT_CHECK(o.d_model > 0, "s4: d_model must be positive, got ", o.d_model);
  SSMT_CHECK(o.kernel == "dplr" || o.kernel == "diag", "model.s4.kernel: unknown kernel '", o.kernel,
             "' (expected dplr or diag)");
  SSMT_CHECK(o.dt_min > 0 && o.dt_max >= o.dt_min, "model.s4.dt_min / dt_max: need 0 < dt_min <= dt_max, got ",
             o.dt_min, " and ", o.dt_max);
  SSMT_CHECK(o.dropout >= 0 && o.dropout < 1, "s4: dropout must be in [0, 1), got ", o.dropout);
  SSMT_CHECK(o.l_max >= 0, "s4: l_max must be >= 0, got ", o.l_max);
  dplr_ = o.kernel == "dplr";
  disc_ = parse_s4_discretization(o.discretization, "model.s4.discretization");
  SSMT_CHECK(!dplr_ || disc_ == S4Discretization::bilinear,
             "model.s4.discretization: the dplr kernel (Cauchy + Woodbury) is defined for the bilinear "
             "discretization; set model.s4.discretization: bilinear, or model.s4.kernel: diag for zoh");
  H_ = o.d_model;
  const S4InitModes modes = s4_init_modes(o.init, o.d_state);
  N2_ = static_cast<int64_t>(modes.Lambda.size());
  kernel_len_ = o.l_max;

  const S4DiagInit init = s4_diag_init(modes, H_, o.dt_min, o.dt_max, gen);
  log_dt_ = register_parameter("log_dt", Tensor::from_vector(init.log_dt, {H_}), {param_tag::ssm});
  log_A_real_ = register_parameter("log_A_real", Tensor::from_vector(init.log_A_real, {H_, N2_}), {param_tag::ssm});
  A_imag_ = register_parameter("A_imag", Tensor::from_vector(init.A_imag, {H_, N2_}), {param_tag::ssm});
  B_ = register_parameter("B", Tensor::from_vector(init.B, {H_, N2_, 2}), {param_tag::ssm});
  if (dplr_) P_ = register_parameter("P", Tensor::from_vector(init.P, {H_, N2_, 2}), {param_tag::ssm});
  // C ~ complex normal (unit variance: each part N(0, 1/2)).
  C_ = register_parameter("C", Tensor::empty({H_, N2_, 2}));
  init::normal_(C_, gen, 0.0, std::sqrt(0.5));
  D_ = register_parameter("D", Tensor::empty({H_}), {param_tag::no_decay});
  init::normal_(D_, gen, 0.0, 1.0);
  output_linear_ = register_module("output_linear", std::make_shared<Linear>(H_, 2 * H_, gen));
  if (o.dropout > 0)
    dropout_ =
        register_module("dropout", std::make_shared<Dropout>(o.dropout, static_cast<uint64_t>(gen.below(0xffffffffu))));
}

S4DiagInit s4_diag_init(const S4InitModes& modes, int64_t H, double dt_min, double dt_max, Generator& gen) {
  const auto N2 = static_cast<int64_t>(modes.Lambda.size());
  S4DiagInit r;
  r.log_dt.resize(static_cast<size_t>(H));
  r.log_A_real.resize(static_cast<size_t>(H * N2));
  r.A_imag.resize(static_cast<size_t>(H * N2));
  r.B.resize(static_cast<size_t>(H * N2 * 2));
  r.P.resize(static_cast<size_t>(H * N2 * 2));
  const double lo = std::log(dt_min), hi = std::log(dt_max);
  for (auto& v : r.log_dt) v = static_cast<float>(lo + (hi - lo) * gen.uniform());
  for (int64_t h = 0; h < H; ++h)
    for (int64_t n = 0; n < N2; ++n) {
      const auto i = static_cast<size_t>(h * N2 + n);
      const auto m = static_cast<size_t>(n);
      r.log_A_real[i] = static_cast<float>(std::log(-modes.Lambda[m].real()));
      r.A_imag[i] = static_cast<float>(modes.Lambda[m].imag());
      r.B[2 * i] = static_cast<float>(modes.B[m].real()), r.B[2 * i + 1] = static_cast<float>(modes.B[m].imag());
      r.P[2 * i] = static_cast<float>(modes.P[m].real()), r.P[2 * i + 1] = static_cast<float>(modes.P[m].imag());
    }
  return r;
}

Tensor s4_diag_A(const Tensor& log_A_real, const Tensor& A_imag) { return stack({neg(exp(log_A_real)), A_imag}, -1); }

Tensor S4::A_complex() const { return s4_diag_A(log_A_real_, A_imag_); }

void S4::ensure_kernel_length(int64_t L) {
  if (!dplr_) return;
  if (kernel_len_ == 0) kernel_len_ = L;
  while (kernel_len_ < L) {
    // Ct = C (I - Abar^Lk) -> C (I - Abar^2Lk) = Ct (I + Abar^Lk); the conjugate half of the
    // row stays the conjugate of the kept half.
    HostSSM s;
    s.H = H_, s.N2 = N2_;
    for (double v : host(log_dt_)) s.dt.push_back(std::exp(v));
    {
      std::vector<double> lar = host(log_A_real_), aim = host(A_imag_);
      for (size_t i = 0; i < lar.size(); ++i) s.A.push_back(cd(-std::exp(lar[i]), aim[i]));
    }
    s.B = host_complex(B_), s.P = host_complex(P_), s.C = host_complex(C_);
    std::vector<double> updated(static_cast<size_t>(H_ * N2_ * 2));
    for (int64_t h = 0; h < H_; ++h) {
      DenseDplr d = dense_dplr(s, h);
      Eigen::RowVectorXcd c = d.Ct + d.Ct * matrix_power(d.Abar, kernel_len_);
      for (int64_t n = 0; n < N2_; ++n)
        updated[2 * (h * N2_ + n)] = c[n].real(), updated[2 * (h * N2_ + n) + 1] = c[n].imag();
    }
    NoGradGuard ng;
    backend(C_.device()).copy(to_device(updated, C_.shape(), C_.dtype(), C_.device()), C_);
    kernel_len_ *= 2;
  }
}

Tensor S4::kernel(int64_t L) {
  Tensor dt = exp(log_dt_);
  Tensor A = A_complex();
  if (!dplr_) return s4d_vandermonde_kernel(dt, A, B_, C_, L, disc_);
  ensure_kernel_length(L);
  Tensor K = s4_dplr_kernel(dt, A, P_, B_, C_, kernel_len_);
  return kernel_len_ == L ? K : K.narrow(1, 0, L);
}

Tensor S4::output_stage(const Tensor& y_in, DType out_dtype) {
  Tensor y = gelu(y_in);
  if (dropout_) y = dropout_->forward(y);
  y = as_dtype(y, out_dtype);
  Tensor z = linear(y, as_dtype(output_linear_->weight(), out_dtype), as_dtype(output_linear_->bias(), out_dtype));
  auto ab = z.chunk(2, -1);
  return ab[0] * sigmoid(ab[1]);
}

Tensor S4::forward(const Tensor& x) {
  SSMT_CHECK(x.dim() == 3 && x.size(2) == H_, "s4: input ", x.describe(), ": expected (B, L, ", H_, ")");
  const int64_t L = x.size(1);
  SSMT_CHECK(L >= 1, "s4: input ", x.describe(), " has an empty sequence axis");
  // The SSM runs in the parameters' dtype (f32 master weights, f64 in gradient checks).
  Tensor u = as_dtype(x, log_dt_.dtype());
  Tensor y = fft_conv(u, kernel(L)) + u * D_;
  return output_stage(y, x.dtype());
}

std::unique_ptr<MixerState> S4::init_state(int64_t batch, Device device, DType dtype) {
  NoGradGuard ng;
  HostSSM s;
  s.H = H_, s.N2 = N2_;
  for (double v : host(log_dt_)) s.dt.push_back(std::exp(v));
  {
    std::vector<double> lar = host(log_A_real_), aim = host(A_imag_);
    for (size_t i = 0; i < lar.size(); ++i) s.A.push_back(cd(-std::exp(lar[i]), aim[i]));
  }
  s.B = host_complex(B_), s.C = host_complex(C_);
  if (dplr_) s.P = host_complex(P_);

  auto st = std::make_unique<S4State>();
  const DType pd = log_dt_.dtype();
  const int64_t M = dplr_ ? 2 * N2_ : N2_;
  std::vector<double> ar, ai, br(H_ * M), bi(H_ * M), cr(H_ * M), ci(H_ * M);
  if (!dplr_) {
    ar.resize(H_ * M), ai.resize(H_ * M);
    for (int64_t h = 0; h < H_; ++h)
      for (int64_t n = 0; n < N2_; ++n) {
        const int64_t i = h * N2_ + n;
        cd z, E;
        s4_discretize_mode(s.A[i], s.dt[h], disc_, z, E);
        const cd bbar = E * s.B[i];
        ar[i] = z.real(), ai[i] = z.imag(), br[i] = bbar.real(), bi[i] = bbar.imag();
        cr[i] = s.C[i].real(), ci[i] = s.C[i].imag();
      }
    st->Ar = to_device(ar, {H_, M}, pd, device);
    st->Ai = to_device(ai, {H_, M}, pd, device);
  } else {
    ar.resize(H_ * M * M), ai.resize(H_ * M * M);
    for (int64_t h = 0; h < H_; ++h) {
      DenseDplr d = dense_dplr(s, h);
      // C = Ct (I - Abar^Lk)^{-1}; before any forward (Lk = 0) Ct is taken as C itself.
      Eigen::RowVectorXcd C = d.Ct;
      if (kernel_len_ > 0) {
        const Eigen::MatrixXcd I = Eigen::MatrixXcd::Identity(M, M);
        C = (I - matrix_power(d.Abar, kernel_len_)).transpose().partialPivLu().solve(d.Ct.transpose()).transpose();
      }
      for (int64_t i = 0; i < M; ++i) {
        for (int64_t j = 0; j < M; ++j) {  // Abar^T, so that h_row @ Abar^T = (Abar h)^T
          ar[(h * M + i) * M + j] = d.Abar(j, i).real();
          ai[(h * M + i) * M + j] = d.Abar(j, i).imag();
        }
        br[h * M + i] = d.Bbar[i].real(), bi[h * M + i] = d.Bbar[i].imag();
        cr[h * M + i] = C[i].real(), ci[h * M + i] = C[i].imag();
      }
    }
    st->dense = true;
    st->scale = 1;
    st->Ar = to_device(ar, {H_, M, M}, pd, device);
    st->Ai = to_device(ai, {H_, M, M}, pd, device);
  }
  st->Br = to_device(br, {H_, M}, pd, device), st->Bi = to_device(bi, {H_, M}, pd, device);
  st->Cr = to_device(cr, {H_, M}, pd, device), st->Ci = to_device(ci, {H_, M}, pd, device);
  st->hr = Tensor::zeros({batch, H_, M}, pd, device);
  st->hi = Tensor::zeros({batch, H_, M}, pd, device);
  (void)dtype;  // the state lives in the parameters' dtype, like the convolution mode
  return st;
}

Tensor S4::step(const Tensor& x_t, MixerState& state) {
  auto& s = dynamic_cast<S4State&>(state);
  SSMT_CHECK(x_t.dim() == 2 && x_t.size(1) == H_, "s4: step input ", x_t.describe(), ": expected (B, ", H_, ")");
  NoGradGuard ng;
  Tensor u = as_dtype(x_t, log_dt_.dtype());  // (B, H)
  Tensor uu = u.unsqueeze(-1);                // (B, H, 1)
  Tensor nr, ni;
  if (s.dense) {
    Tensor hr = s.hr.unsqueeze(-2), hi = s.hi.unsqueeze(-2);  // (B, H, 1, M)
    nr = (matmul(hr, s.Ar) - matmul(hi, s.Ai)).squeeze(-2);
    ni = (matmul(hr, s.Ai) + matmul(hi, s.Ar)).squeeze(-2);
  } else {
    nr = s.Ar * s.hr - s.Ai * s.hi;
    ni = s.Ar * s.hi + s.Ai * s.hr;
  }
  s.hr = nr + s.Br * uu;
  s.hi = ni + s.Bi * uu;
  Tensor y = sum(s.Cr * s.hr - s.Ci * s.hi, {2}) * s.scale;  // (B, H)
  return output_stage(y + u * D_, x_t.dtype());
}

void S4Options::validate(const MixerContext& c) const {
  SSMT_CHECK(dt_min <= dt_max, c.key("dt_min"), " (", format_number(dt_min), ") must not exceed ", c.key("dt_max"),
             " (", format_number(dt_max), ")");
}

MixerEntry s4_mixer_entry() {
  auto build = [](const S4Options& options, const MixerContext& c, Generator& gen) -> std::shared_ptr<Mixer> {
    S4Options o = options;
    o.d_model = c.d_model, o.d_state = c.d_state;
    if (c.name == "s4d") o.kernel = "diag";
    // Fixed from the config (not from the first input), so evaluation at another length
    // reads a checkpoint's C for the length it was trained at.
    if (o.l_max == 0) o.l_max = c.seq_len;
    return std::make_shared<S4>(o, gen);
  };
  return mixer_entry<S4Options>({{"s4", "S4, kernel from s4.kernel"}, {"s4d", "S4D, diagonal kernel"}}, build, "s4",
                                "S4 and S4D layers (SPECS section 4).");
}

}  // namespace ssmtrain
