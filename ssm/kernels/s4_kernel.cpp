// S4 / S4D kernel generation (Vandermonde, Cauchy + Woodbury) and the FFT convolution on
// the CPU, with their tape ops. Gradients of complex intermediates follow the convention
// g_z = dL/dRe z + i dL/dIm z: for w = f(z) holomorphic, g_z += conj(f'(z)) g_w; for a real
// input x of a complex w = f(x), dL/dx += Re(conj(g_w) f'(x)); for u = conj(z), g_z += conj(g_u).
#include "ssm/kernels/s4_kernel.h"

#include <cmath>
#include <complex>
#include <cstring>
#include <unsupported/Eigen/FFT>
#include <vector>

#include "core/autograd.h"
#include "core/error.h"
#include "core/fused_op.h"
#include "core/ops.h"
#include "ssm/kernels/kernel_common.h"

namespace ssmtrain {

using namespace ssm_detail;
using cd = std::complex<double>;

S4Discretization parse_s4_discretization(const std::string& name, const char* key) {
  if (name == "zoh") return S4Discretization::zoh;
  if (name == "bilinear") return S4Discretization::bilinear;
  throw UserError(detail::concat(key, ": unknown discretization '", name, "' (expected zoh or bilinear)"));
}

const char* s4_discretization_name(S4Discretization d) { return d == S4Discretization::zoh ? "zoh" : "bilinear"; }

int64_t fft_conv_size(int64_t L) {
  const int64_t need = std::max<int64_t>(2 * L - 1, 1);
  int64_t best = INT64_MAX;
  for (int64_t p2 = 1; p2 < 2 * need; p2 *= 2)
    for (int64_t p3 = p2; p3 < 2 * need; p3 *= 3)
      for (int64_t p5 = p3; p5 < 2 * need; p5 *= 5)
        if (p5 >= need && p5 < best) best = p5;
  return best;
}

namespace {

// Eigen's FFT (kissfft) does not handle a length of 1 (the identity transform); these
// wrappers do. Inverses are scaled by 1/n.
template <typename Acc>
void fft_fwd(Eigen::FFT<Acc>& fft, std::complex<Acc>* dst, const Acc* src, int64_t n) {
  if (n == 1)
    dst[0] = src[0];
  else
    fft.fwd(dst, src, n);
}
template <typename Acc>
void fft_inv(Eigen::FFT<Acc>& fft, Acc* dst, const std::complex<Acc>* src, int64_t n) {
  if (n == 1)
    dst[0] = src[0].real();
  else
    fft.inv(dst, src, n);
}
template <typename Acc>
void fft_inv(Eigen::FFT<Acc>& fft, std::complex<Acc>* dst, const std::complex<Acc>* src, int64_t n) {
  if (n == 1)
    dst[0] = src[0];
  else
    fft.inv(dst, src, n);
}

// ---- shared argument handling ----

// n values of a `dtype` array as host doubles (exact), and back (rounded as Tensor::to does).
std::vector<double> read_doubles(const void* src, DType dtype, int64_t n) {
  std::vector<double> v(static_cast<size_t>(n));
  SSMT_DISPATCH_FLOAT(dtype, "s4_kernel", [&] {
    const scalar_t* p = static_cast<const scalar_t*>(src);
    for (int64_t i = 0; i < n; ++i) v[i] = static_cast<double>(static_cast<acc_t<scalar_t>>(p[i]));
  });
  return v;
}
void write_doubles(const std::vector<double>& v, void* dst, DType dtype) {
  SSMT_DISPATCH_FLOAT(dtype, "s4_kernel", [&] {
    scalar_t* p = static_cast<scalar_t*>(dst);
    for (size_t i = 0; i < v.size(); ++i) p[i] = static_cast<scalar_t>(static_cast<acc_t<scalar_t>>(v[i]));
  });
}

// Complex parameter rows (H, N2, 2) of `dtype` -> host doubles, and gradients back.
std::vector<cd> complex_rows(const void* src, DType dtype, int64_t modes) {
  std::vector<double> v = read_doubles(src, dtype, 2 * modes);
  std::vector<cd> out(v.size() / 2);
  for (size_t i = 0; i < out.size(); ++i) out[i] = cd(v[2 * i], v[2 * i + 1]);
  return out;
}
void write_complex(const std::vector<cd>& g, void* dst, DType dtype) {
  if (!dst) return;
  std::vector<double> v(2 * g.size());
  for (size_t i = 0; i < g.size(); ++i) v[2 * i] = g[i].real(), v[2 * i + 1] = g[i].imag();
  write_doubles(v, dst, dtype);
}

void check_kernel_args(const char* op, const Tensor& dt, const std::vector<std::pair<const char*, Tensor>>& cplx,
                       int64_t L) {
  check_present(op, "dt", dt);
  check_floating_arg(op, "dt", dt);
  check_rank(op, "dt", dt, 1, "(H)");
  const int64_t H = dt.size(0);
  const Tensor& first = cplx[0].second;
  check_present(op, cplx[0].first, first);
  check_rank(op, cplx[0].first, first, 3, "(H, N2, 2)");
  const int64_t N2 = first.size(1);
  for (const auto& [name, t] : cplx) {
    check_present(op, name, t);
    check_shape(op, name, t, {H, N2, 2}, "(H, N2, 2)");
    check_device(op, name, t, dt.device(), "dt");
    check_dtype(op, name, t, dt.dtype(), "dt");
  }
  SSMT_CHECK(L >= 1, op, ": kernel length L must be >= 1, got ", L);
}

// ---- Vandermonde (diagonal A) ----

// Discretization of one mode: Abar = z, Bbar = E * B, with derivatives of z and E in A
// (holomorphic) and in the real dt.
struct DiagMode {
  cd z, logz, E;
  cd dz_dA, dz_ddt, dE_dA, dE_ddt;
};

DiagMode discretize_mode(cd A, double dt, S4Discretization disc) {
  DiagMode m;
  const cd a = dt * A;
  if (disc == S4Discretization::zoh) {
    // E = dt * phi(a), phi(a) = (e^a - 1) / a, with its series near a = 0.
    m.z = std::exp(a);
    m.logz = a;
    cd phi, dphi;
    if (std::abs(a) < 1e-4) {
      phi = 1.0 + a / 2.0 + a * a / 6.0;
      dphi = 0.5 + a / 3.0 + a * a / 8.0;
    } else {
      phi = (m.z - 1.0) / a;
      dphi = (m.z - phi) / a;
    }
    m.E = dt * phi;
    m.dz_dA = dt * m.z;
    m.dz_ddt = A * m.z;
    m.dE_dA = dt * dt * dphi;
    m.dE_ddt = m.z;  // d(dt phi(dt A))/d dt = phi + a phi' = e^a
  } else {
    const cd den = 1.0 - a / 2.0;
    const cd den2 = den * den;
    m.z = (1.0 + a / 2.0) / den;
    m.logz = std::log(m.z);
    m.E = dt / den;
    m.dz_dA = dt / den2;
    m.dz_ddt = A / den2;
    m.dE_dA = dt * dt / (2.0 * den2);
    m.dE_ddt = 1.0 / den2;
  }
  return m;
}

// z^l for l = 0, 1, ...: a running product, re-anchored at exp(l log z) every 64 steps so
// the rounding error stays below ~64 ulp whatever L.
struct Powers {
  cd z, logz, p = 1.0;
  int64_t l = 0;
  cd next() {  // returns z^l, then advances
    if (l % 64 == 0) p = std::exp(static_cast<double>(l) * logz);
    cd out = p;
    p *= z;
    ++l;
    return out;
  }
};

struct VandermondeInputs {
  int64_t H, N2, L;
  S4Discretization disc;
  std::vector<double> dt;
  std::vector<cd> A, B, C;
};

std::vector<double> vandermonde_forward(const VandermondeInputs& in) {
  std::vector<double> K(static_cast<size_t>(in.H * in.L), 0.0);
#pragma omp parallel for schedule(static)
  for (int64_t h = 0; h < in.H; ++h) {
    double* row = &K[h * in.L];
    for (int64_t n = 0; n < in.N2; ++n) {
      const int64_t i = h * in.N2 + n;
      DiagMode m = discretize_mode(in.A[i], in.dt[h], in.disc);
      const cd W = in.C[i] * m.E * in.B[i];
      Powers pw{m.z, m.logz};
      for (int64_t l = 0; l < in.L; ++l) row[l] += 2.0 * (W * pw.next()).real();
    }
  }
  return K;
}

struct VandermondeGrads {
  std::vector<double> dt;
  std::vector<cd> A, B, C;
};

VandermondeGrads vandermonde_backward(const VandermondeInputs& in, const std::vector<double>& gK) {
  VandermondeGrads g;
  const size_t modes = static_cast<size_t>(in.H * in.N2);
  g.dt.assign(static_cast<size_t>(in.H), 0.0);
  g.A.assign(modes, 0.0), g.B.assign(modes, 0.0), g.C.assign(modes, 0.0);
#pragma omp parallel for schedule(static)
  for (int64_t h = 0; h < in.H; ++h) {
    const double* gk = &gK[h * in.L];
    double gdt = 0;
    for (int64_t n = 0; n < in.N2; ++n) {
      const int64_t i = h * in.N2 + n;
      DiagMode m = discretize_mode(in.A[i], in.dt[h], in.disc);
      const cd W = in.C[i] * m.E * in.B[i];
      // K_l = 2 Re(W z^l): g_W = 2 sum_l g_l conj(z^l); g_z = 2 conj(W) sum_l g_l l conj(z^{l-1}).
      cd sum0 = 0.0, sum1 = 0.0, prev = 0.0;
      Powers pw{m.z, m.logz};
      for (int64_t l = 0; l < in.L; ++l) {
        const cd zl = pw.next();
        sum0 += gk[l] * std::conj(zl);
        if (l > 0) sum1 += gk[l] * static_cast<double>(l) * std::conj(prev);
        prev = zl;
      }
      const cd gW = 2.0 * sum0;
      const cd gz = 2.0 * std::conj(W) * sum1;
      // W = C E B.
      g.C[i] = std::conj(m.E * in.B[i]) * gW;
      g.B[i] = std::conj(in.C[i] * m.E) * gW;
      const cd gE = std::conj(in.C[i] * in.B[i]) * gW;
      g.A[i] = std::conj(m.dz_dA) * gz + std::conj(m.dE_dA) * gE;
      gdt += (std::conj(gz) * m.dz_ddt).real() + (std::conj(gE) * m.dE_ddt).real();
    }
    g.dt[h] = gdt;
  }
  return g;
}

// ---- Cauchy + Woodbury (DPLR, bilinear) ----

struct DplrInputs {
  int64_t H, N2, L;
  std::vector<double> dt;
  std::vector<cd> Lambda, P, B, Ct;
};

// The per-channel products that the four Cauchy sums weight: v00 = Ct B, v01 = Ct P,
// v10 = conj(P) B, v11 = |P|^2 (the conjugate modes contribute the conjugated weights).
struct DplrWeights {
  cd v00, v01, v10;
  double v11;
};

// Everything the forward computes at one frequency w of one channel.
struct DplrPoint {
  cd w, a, b;  // a = 1 - w, b = (1 + w) dt / 2
  cd k00, k01, k10, k11, q, T, F;
};

template <typename RS>
DplrPoint dplr_point(const DplrInputs& in, const DplrWeights* wts, int64_t h, int64_t k, RS&& keep_rs) {
  DplrPoint p;
  const double theta = -2.0 * M_PI * static_cast<double>(k) / static_cast<double>(in.L);
  p.w = cd(std::cos(theta), std::sin(theta));
  const double dt = in.dt[h];
  p.a = 1.0 - p.w;
  p.b = (1.0 + p.w) * (dt / 2.0);
  p.k00 = p.k01 = p.k10 = p.k11 = 0.0;
  for (int64_t n = 0; n < in.N2; ++n) {
    const cd lam = in.Lambda[h * in.N2 + n];
    const cd r = 1.0 / (p.a - p.b * lam), s = 1.0 / (p.a - p.b * std::conj(lam));
    const DplrWeights& v = wts[n];
    p.k00 += v.v00 * r + std::conj(v.v00) * s;
    p.k01 += v.v01 * r + std::conj(v.v01) * s;
    p.k10 += v.v10 * r + std::conj(v.v10) * s;
    p.k11 += v.v11 * (r + s);
    keep_rs(n, r, s);
  }
  p.q = 1.0 + p.b * p.k11;
  p.T = p.k01 * p.k10 / p.q;
  p.F = dt * (p.k00 - p.b * p.T);
  return p;
}

std::vector<DplrWeights> dplr_weights(const DplrInputs& in, int64_t h) {
  std::vector<DplrWeights> w(static_cast<size_t>(in.N2));
  for (int64_t n = 0; n < in.N2; ++n) {
    const int64_t i = h * in.N2 + n;
    w[n] = {in.Ct[i] * in.B[i], in.Ct[i] * in.P[i], std::conj(in.P[i]) * in.B[i], std::norm(in.P[i])};
  }
  return w;
}

std::vector<double> dplr_forward(const DplrInputs& in) {
  const int64_t L = in.L, half = L / 2;
  std::vector<double> K(static_cast<size_t>(in.H * L));
#pragma omp parallel
  {
    Eigen::FFT<double> fft;
    std::vector<cd> spec(static_cast<size_t>(L)), time(static_cast<size_t>(L));
#pragma omp for schedule(static)
    for (int64_t h = 0; h < in.H; ++h) {
      std::vector<DplrWeights> wts = dplr_weights(in, h);
      for (int64_t k = 0; k <= half; ++k) {
        const cd F = dplr_point(in, wts.data(), h, k, [](int64_t, cd, cd) {}).F;
        spec[k] = F;
        if (k > 0 && L - k != k) spec[L - k] = std::conj(F);
      }
      fft_inv(fft, time.data(), spec.data(), L);  // scaled by 1/L
      for (int64_t l = 0; l < L; ++l) K[h * L + l] = time[l].real();
    }
  }
  return K;
}

struct DplrGrads {
  std::vector<double> dt;
  std::vector<cd> Lambda, P, B, Ct;
};

DplrGrads dplr_backward(const DplrInputs& in, const std::vector<double>& gK) {
  const int64_t L = in.L, half = L / 2, N2 = in.N2;
  DplrGrads g;
  const size_t modes = static_cast<size_t>(in.H * N2);
  g.dt.assign(static_cast<size_t>(in.H), 0.0);
  g.Lambda.assign(modes, 0.0), g.P.assign(modes, 0.0), g.B.assign(modes, 0.0), g.Ct.assign(modes, 0.0);
#pragma omp parallel
  {
    Eigen::FFT<double> fft;
    std::vector<cd> G(static_cast<size_t>(L)), r(static_cast<size_t>(N2)), s(static_cast<size_t>(N2));
    std::vector<cd> gv00(static_cast<size_t>(N2)), gv01(static_cast<size_t>(N2)), gv10(static_cast<size_t>(N2));
    std::vector<double> gv11(static_cast<size_t>(N2));
    std::vector<double> gk(static_cast<size_t>(L));
#pragma omp for schedule(static)
    for (int64_t h = 0; h < in.H; ++h) {
      // K = Re(IFFT(spec)), spec[L-k] = conj(F_k): g_F_k = c_k / L * FFT(gK)[k] with c_k = 2
      // for mirrored frequencies and 1 for k = 0 and k = L/2.
      for (int64_t l = 0; l < L; ++l) gk[l] = gK[h * L + l];
      fft_fwd(fft, G.data(), gk.data(), L);
      std::vector<DplrWeights> wts = dplr_weights(in, h);
      std::fill(gv00.begin(), gv00.end(), cd(0.0));
      std::fill(gv01.begin(), gv01.end(), cd(0.0));
      std::fill(gv10.begin(), gv10.end(), cd(0.0));
      std::fill(gv11.begin(), gv11.end(), 0.0);
      const double dt = in.dt[h];
      double gdt = 0;
      for (int64_t k = 0; k <= half; ++k) {
        DplrPoint p = dplr_point(in, wts.data(), h, k, [&](int64_t n, cd rn, cd sn) { r[n] = rn, s[n] = sn; });
        const double c = (k == 0 || L - k == k) ? 1.0 : 2.0;
        const cd gF = c / static_cast<double>(L) * G[k];
        // F = dt (k00 - b T), T = k01 k10 / q, q = 1 + b k11.
        const cd gk00 = dt * gF;
        const cd gT = -dt * std::conj(p.b) * gF;
        cd gb = -dt * std::conj(p.T) * gF;
        gdt += (std::conj(gF) * (p.k00 - p.b * p.T)).real();
        const cd gk01 = std::conj(p.k10 / p.q) * gT;
        const cd gk10 = std::conj(p.k01 / p.q) * gT;
        const cd gq = -std::conj(p.T / p.q) * gT;
        const cd gk11 = std::conj(p.b) * gq;
        gb += std::conj(p.k11) * gq;
        for (int64_t n = 0; n < N2; ++n) {
          const int64_t i = h * N2 + n;
          const DplrWeights& v = wts[n];
          const cd lam = in.Lambda[i], rn = r[n], sn = s[n];
          // k.. = sum_n v r + conj(v) s.
          const cd gr = std::conj(v.v00) * gk00 + std::conj(v.v01) * gk01 + std::conj(v.v10) * gk10 + v.v11 * gk11;
          const cd gs = v.v00 * gk00 + v.v01 * gk01 + v.v10 * gk10 + v.v11 * gk11;
          gv00[n] += std::conj(rn) * gk00 + sn * std::conj(gk00);
          gv01[n] += std::conj(rn) * gk01 + sn * std::conj(gk01);
          gv10[n] += std::conj(rn) * gk10 + sn * std::conj(gk10);
          gv11[n] += (std::conj(gk11) * (rn + sn)).real();
          // r = 1 / (a - b lam), s = 1 / (a - b conj(lam)).
          g.Lambda[i] += std::conj(p.b * rn * rn) * gr + p.b * sn * sn * std::conj(gs);
          gb += std::conj(lam * rn * rn) * gr + lam * std::conj(sn * sn) * gs;
        }
        gdt += (std::conj(gb) * ((1.0 + p.w) / 2.0)).real();
      }
      for (int64_t n = 0; n < N2; ++n) {
        const int64_t i = h * N2 + n;
        g.Ct[i] = std::conj(in.B[i]) * gv00[n] + std::conj(in.P[i]) * gv01[n];
        g.B[i] = std::conj(in.Ct[i]) * gv00[n] + in.P[i] * gv10[n];
        g.P[i] = std::conj(in.Ct[i]) * gv01[n] + in.B[i] * std::conj(gv10[n]) + 2.0 * in.P[i] * gv11[n];
      }
      g.dt[h] = gdt;
    }
  }
  return g;
}

VandermondeInputs vandermonde_inputs(const S4KernelParams& p) {
  VandermondeInputs in{p.H, p.N2, p.L, p.disc, read_doubles(p.dt, p.dtype, p.H), {}, {}, {}};
  in.A = complex_rows(p.modes[0], p.dtype, p.H * p.N2);
  in.B = complex_rows(p.modes[1], p.dtype, p.H * p.N2);
  in.C = complex_rows(p.modes[2], p.dtype, p.H * p.N2);
  return in;
}

DplrInputs dplr_inputs(const S4KernelParams& p) {
  DplrInputs in{p.H, p.N2, p.L, read_doubles(p.dt, p.dtype, p.H), {}, {}, {}, {}};
  in.Lambda = complex_rows(p.modes[0], p.dtype, p.H * p.N2);
  in.P = complex_rows(p.modes[1], p.dtype, p.H * p.N2);
  in.B = complex_rows(p.modes[2], p.dtype, p.H * p.N2);
  in.Ct = complex_rows(p.modes[3], p.dtype, p.H * p.N2);
  return in;
}

void check_positive_dt(const char* op, const Tensor& dt, const std::vector<double>& v) {
  for (double x : v) SSMT_CHECK(x > 0 && std::isfinite(x), op, ": ", dt.describe(), " must be positive and finite");
}

}  // namespace

void s4_discretize_mode(cd A, double dt, S4Discretization disc, cd& z, cd& E) {
  const DiagMode m = discretize_mode(A, dt, disc);
  z = m.z;
  E = m.E;
}

// The CPU kernels of both generators: double precision whatever the dtype.
void s4d_vandermonde_fwd_cpu(const S4KernelParams& p) {
  write_doubles(vandermonde_forward(vandermonde_inputs(p)), p.K, p.dtype);
}

void s4d_vandermonde_bwd_cpu(const S4KernelParams& p) {
  const VandermondeGrads g = vandermonde_backward(vandermonde_inputs(p), read_doubles(p.dK, p.dtype, p.H * p.L));
  if (p.ddt) write_doubles(g.dt, p.ddt, p.dtype);
  write_complex(g.A, p.dmodes[0], p.dtype);
  write_complex(g.B, p.dmodes[1], p.dtype);
  write_complex(g.C, p.dmodes[2], p.dtype);
}

void s4_dplr_fwd_cpu(const S4KernelParams& p) { write_doubles(dplr_forward(dplr_inputs(p)), p.K, p.dtype); }

void s4_dplr_bwd_cpu(const S4KernelParams& p) {
  const DplrGrads g = dplr_backward(dplr_inputs(p), read_doubles(p.dK, p.dtype, p.H * p.L));
  if (p.ddt) write_doubles(g.dt, p.ddt, p.dtype);
  write_complex(g.Lambda, p.dmodes[0], p.dtype);
  write_complex(g.P, p.dmodes[1], p.dtype);
  write_complex(g.B, p.dmodes[2], p.dtype);
  write_complex(g.Ct, p.dmodes[3], p.dtype);
}

namespace {

const FusedKernels<S4KernelParams> kVandermondeKernels = {s4d_vandermonde_fwd_cpu, s4d_vandermonde_bwd_cpu,
                                                          SSMT_CUDA_KERNEL(s4d_vandermonde_fwd_cuda),
                                                          SSMT_CUDA_KERNEL(s4d_vandermonde_bwd_cuda)};
const FusedKernels<S4KernelParams> kDplrKernels = {s4_dplr_fwd_cpu, s4_dplr_bwd_cpu, SSMT_CUDA_KERNEL(s4_dplr_fwd_cuda),
                                                   SSMT_CUDA_KERNEL(s4_dplr_bwd_cuda)};

// Both generators: dt (H) and the (H, N2, 2) mode tensors -> K (H, L), one tape node. The
// kernels read contiguous copies; the tape records the tensors as given. On the CPU dt must
// be positive; on CUDA that check is skipped (it would need the values on the host).
Tensor generate_kernel(const char* name, const FusedKernels<S4KernelParams>& kernels, const Tensor& dt,
                       const std::vector<Tensor>& modes, int64_t L, S4Discretization disc) {
  FusedOp<S4KernelParams> op(name, kernels, dt.device());
  if (!dt.device().is_cuda()) check_positive_dt(name, dt, dt.to_vector<double>());
  S4KernelParams& p = op.p;
  p.dtype = dt.dtype();
  p.H = dt.size(0), p.N2 = modes[0].size(1), p.L = L, p.disc = disc;
  const Tensor dt_c = dt.detach().contiguous();
  p.dt = dt_c.data_ptr();
  op.input(dt, &S4KernelParams::ddt, /*saved=*/false);
  op.save(dt_c);
  for (size_t i = 0; i < modes.size(); ++i) {
    const Tensor m = modes[i].detach().contiguous();
    p.modes[i] = m.data_ptr();
    op.input(modes[i], [i](S4KernelParams& q) -> void*& { return q.dmodes[i]; }, /*saved=*/false);
    op.save(m);
  }
  Tensor K = op.output({p.H, L}, p.dtype, &S4KernelParams::K);
  op.forward();
  op.record({K}, [](S4KernelParams& q, const std::vector<Tensor>& grads) {
    Tensor dK = grads[0].contiguous();
    q.dK = dK.data_ptr();
    return std::vector<Tensor>{dK};
  });
  return K;
}

}  // namespace

Tensor s4d_vandermonde_kernel(const Tensor& dt, const Tensor& A, const Tensor& B, const Tensor& C, int64_t L,
                              S4Discretization disc) {
  constexpr const char* kOp = "s4d_vandermonde_kernel";
  check_kernel_args(kOp, dt, {{"A", A}, {"B", B}, {"C", C}}, L);
  return generate_kernel(kOp, kVandermondeKernels, dt, {A, B, C}, L, disc);
}

Tensor s4_dplr_kernel(const Tensor& dt, const Tensor& Lambda, const Tensor& P, const Tensor& B, const Tensor& Ct,
                      int64_t L) {
  constexpr const char* kOp = "s4_dplr_kernel";
  check_kernel_args(kOp, dt, {{"Lambda", Lambda}, {"P", P}, {"B", B}, {"Ct", Ct}}, L);
  return generate_kernel(kOp, kDplrKernels, dt, {Lambda, P, B, Ct}, L, S4Discretization::bilinear);
}

// ---- FFT convolution ----

namespace {

// Spectra of the zero-padded kernel rows: (H, n) complex.
template <typename Acc, typename T>
std::vector<std::complex<Acc>> kernel_spectra(const T* K, int64_t H, int64_t L, int64_t n) {
  std::vector<std::complex<Acc>> Kf(static_cast<size_t>(H * n));
#pragma omp parallel
  {
    Eigen::FFT<Acc> fft;
    std::vector<Acc> buf(static_cast<size_t>(n));
#pragma omp for schedule(static)
    for (int64_t h = 0; h < H; ++h) {
      std::fill(buf.begin(), buf.end(), Acc(0));
      for (int64_t l = 0; l < L; ++l) buf[l] = static_cast<Acc>(K[h * L + l]);
      fft_fwd(fft, &Kf[h * n], buf.data(), n);
    }
  }
  return Kf;
}

template <typename T>
void fft_conv_forward(const FftConvParams& p) {
  using Acc = acc_t<T>;
  using C = std::complex<Acc>;
  const int64_t B = p.B, L = p.L, H = p.H, n = fft_conv_size(L);
  const T* u = static_cast<const T*>(p.u);
  T* y = static_cast<T*>(p.y);
  std::vector<C> Kf = kernel_spectra<Acc>(static_cast<const T*>(p.K), H, L, n);
#pragma omp parallel
  {
    Eigen::FFT<Acc> fft;
    std::vector<Acc> buf(static_cast<size_t>(n));
    std::vector<C> spec(static_cast<size_t>(n));
#pragma omp for collapse(2) schedule(static)
    for (int64_t b = 0; b < B; ++b) {
      for (int64_t h = 0; h < H; ++h) {
        std::fill(buf.begin(), buf.end(), Acc(0));
        for (int64_t l = 0; l < L; ++l) buf[l] = static_cast<Acc>(u[(b * L + l) * H + h]);
        fft_fwd(fft, spec.data(), buf.data(), n);
        for (int64_t f = 0; f < n; ++f) spec[f] *= Kf[h * n + f];
        fft_inv(fft, buf.data(), spec.data(), n);
        for (int64_t l = 0; l < L; ++l) y[(b * L + l) * H + h] = static_cast<T>(buf[l]);
      }
    }
  }
}

template <typename T>
void fft_conv_backward(const FftConvParams& p) {
  using Acc = acc_t<T>;
  using C = std::complex<Acc>;
  const int64_t B = p.B, L = p.L, H = p.H, n = fft_conv_size(L);
  const T* u = static_cast<const T*>(p.u);
  const T* dy = static_cast<const T*>(p.dy);
  T* du = static_cast<T*>(p.du);
  T* dK = static_cast<T*>(p.dK);
  std::vector<C> Kf = du ? kernel_spectra<Acc>(static_cast<const T*>(p.K), H, L, n) : std::vector<C>();
  // One channel per iteration, batch summed in order: deterministic dK.
#pragma omp parallel
  {
    Eigen::FFT<Acc> fft;
    std::vector<Acc> buf(static_cast<size_t>(n));
    std::vector<C> gspec(static_cast<size_t>(n)), uspec(static_cast<size_t>(n)), acc(static_cast<size_t>(n));
#pragma omp for schedule(static)
    for (int64_t h = 0; h < H; ++h) {
      std::fill(acc.begin(), acc.end(), C(0));
      for (int64_t b = 0; b < B; ++b) {
        std::fill(buf.begin(), buf.end(), Acc(0));
        for (int64_t l = 0; l < L; ++l) buf[l] = static_cast<Acc>(dy[(b * L + l) * H + h]);
        fft_fwd(fft, gspec.data(), buf.data(), n);
        if (du) {  // du[j] = sum_{l>=j} K[l-j] dy[l]: correlation, conj(Khat) * dYhat
          for (int64_t f = 0; f < n; ++f) uspec[f] = std::conj(Kf[h * n + f]) * gspec[f];
          fft_inv(fft, buf.data(), uspec.data(), n);
          for (int64_t l = 0; l < L; ++l) du[(b * L + l) * H + h] = static_cast<T>(buf[l]);
        }
        if (dK) {  // dK[j] = sum_b sum_{l>=j} u[l-j] dy[l]
          std::fill(buf.begin(), buf.end(), Acc(0));
          for (int64_t l = 0; l < L; ++l) buf[l] = static_cast<Acc>(u[(b * L + l) * H + h]);
          fft_fwd(fft, uspec.data(), buf.data(), n);
          for (int64_t f = 0; f < n; ++f) acc[f] += std::conj(uspec[f]) * gspec[f];
        }
      }
      if (dK) {
        fft_inv(fft, buf.data(), acc.data(), n);
        for (int64_t l = 0; l < L; ++l) dK[h * L + l] = static_cast<T>(buf[l]);
      }
    }
  }
}

}  // namespace

void fft_conv_fwd_cpu(const FftConvParams& p) {
  if (p.B * p.L * p.H == 0) return;
  SSMT_DISPATCH_FLOAT(p.dtype, "fft_conv", [&] { fft_conv_forward<scalar_t>(p); });
}

void fft_conv_bwd_cpu(const FftConvParams& p) {
  if (p.B == 0 && p.dK) std::memset(p.dK, 0, static_cast<size_t>(p.H * p.L * dtype_size(p.dtype)));  // an empty sum
  if (p.B * p.L * p.H == 0) return;
  SSMT_DISPATCH_FLOAT(p.dtype, "fft_conv", [&] { fft_conv_backward<scalar_t>(p); });
}

namespace {
const FusedKernels<FftConvParams> kFftConvKernels = {fft_conv_fwd_cpu, fft_conv_bwd_cpu,
                                                     SSMT_CUDA_KERNEL(fft_conv_fwd_cuda),
                                                     SSMT_CUDA_KERNEL(fft_conv_bwd_cuda)};
}  // namespace

Tensor fft_conv(const Tensor& u_in, const Tensor& K_in) {
  constexpr const char* kOp = "fft_conv";
  check_present(kOp, "u", u_in);
  check_floating_arg(kOp, "u", u_in);
  check_rank(kOp, "u", u_in, 3, "(B, L, H)");
  const int64_t B = u_in.size(0), L = u_in.size(1), H = u_in.size(2);
  check_present(kOp, "K", K_in);
  check_shape(kOp, "K", K_in, {H, L}, "(H, L)");
  check_device(kOp, "K", K_in, u_in.device(), "u");
  check_dtype(kOp, "K", K_in, u_in.dtype(), "u");
  Tensor u = u_in.contiguous(), K = K_in.contiguous();
  FusedOp<FftConvParams> op(kOp, kFftConvKernels, u.device());
  FftConvParams& p = op.p;
  p.dtype = u.dtype();
  p.B = B, p.L = L, p.H = H;
  p.u = u.data_ptr(), p.K = K.data_ptr();
  op.input(u, &FftConvParams::du);
  op.input(K, &FftConvParams::dK);
  Tensor y = op.output({B, L, H}, u.dtype(), &FftConvParams::y);
  op.forward();
  op.record({y}, [](FftConvParams& q, const std::vector<Tensor>& grads) {
    Tensor dy = grads[0].contiguous();
    q.dy = dy.data_ptr();
    return std::vector<Tensor>{dy};
  });
  return y;
}

}  // namespace ssmtrain
