// The two reference forms of SSD for tests, in double precision on the host: the
// recurrence step by step, and the masked quadratic (attention-like) form.
#include <cmath>
#include <vector>

#include "core/autograd.h"
#include "core/error.h"
#include "ssm_reference.h"

namespace ssmtrain {

namespace {

// The inputs copied to double, with dt already biased and passed through the softplus.
struct HostSsd {
  int64_t B, L, H, P, G, N;
  std::vector<double> x, dt, A, Bm, Cm, D, h0;  // D, h0 empty when absent
  DType dtype;
  Device device;

  HostSsd(const char* op, const Tensor& x_in, const Tensor& dt_in, const Tensor& A_in, const Tensor& Bm_in,
          const Tensor& Cm_in, const Tensor& D_in, const Tensor& dt_bias, bool dt_softplus, const Tensor& h0_in) {
    SSMT_CHECK(x_in.dim() == 4 && Bm_in.dim() == 4, op, ": x ", x_in.shape().str(), ", Bm ", Bm_in.shape().str(),
               ": expected (B, L, H, P) and (B, L, G, N)");
    B = x_in.size(0), L = x_in.size(1), H = x_in.size(2), P = x_in.size(3), G = Bm_in.size(2), N = Bm_in.size(3);
    SSMT_CHECK(H % G == 0, op, ": G = ", G, " must divide H = ", H);
    dtype = x_in.dtype(), device = x_in.device();
    auto host = [](const Tensor& t) { return t.defined() ? t.to_vector<double>() : std::vector<double>(); };
    x = host(x_in), dt = host(dt_in), A = host(A_in), Bm = host(Bm_in), Cm = host(Cm_in), D = host(D_in);
    h0 = host(h0_in);
    const std::vector<double> bias = host(dt_bias);
    for (int64_t i = 0; i < static_cast<int64_t>(dt.size()); ++i) {
      double v = dt[i] + (bias.empty() ? 0.0 : bias[i % H]);
      dt[i] = dt_softplus ? (v > 20 ? v : std::log1p(std::exp(v))) : v;
    }
  }
  double xv(int64_t b, int64_t t, int64_t h, int64_t p) const { return x[((b * L + t) * H + h) * P + p]; }
  double dtv(int64_t b, int64_t t, int64_t h) const { return dt[(b * L + t) * H + h]; }
  double Bv(int64_t b, int64_t t, int64_t h, int64_t n) const { return Bm[((b * L + t) * G + h / (H / G)) * N + n]; }
  double Cv(int64_t b, int64_t t, int64_t h, int64_t n) const { return Cm[((b * L + t) * G + h / (H / G)) * N + n]; }
  double h0v(int64_t b, int64_t h, int64_t p, int64_t n) const {
    return h0.empty() ? 0.0 : h0[((b * H + h) * P + p) * N + n];
  }

  SsdResult result(const std::vector<double>& y, const std::vector<double>& h_last) const {
    const DType state_dtype = dtype == DType::f64 ? DType::f64 : DType::f32;
    return {Tensor::from_vector(y, {B, L, H, P}).to(dtype).to(device),
            Tensor::from_vector(h_last, {B, H, P, N}).to(state_dtype).to(device)};
  }
};

}  // namespace

SsdResult ssd_recurrent(const Tensor& x, const Tensor& dt, const Tensor& A, const Tensor& Bm, const Tensor& Cm,
                        const Tensor& D, const Tensor& dt_bias, bool dt_softplus, const Tensor& h0,
                        const Tensor& seq_idx) {
  NoGradGuard no_grad;
  const HostSsd s("ssd_recurrent", x, dt, A, Bm, Cm, D, dt_bias, dt_softplus, h0);
  const std::vector<int32_t> seq = seq_idx.defined() ? seq_idx.to_vector<int32_t>() : std::vector<int32_t>();
  auto reset = [&](int64_t b, int64_t t) { return !seq.empty() && t > 0 && seq[b * s.L + t] != seq[b * s.L + t - 1]; };
  std::vector<double> y(s.x.size()), h_last(static_cast<size_t>(s.B * s.H * s.P * s.N));
  std::vector<double> state(static_cast<size_t>(s.P * s.N));
  for (int64_t b = 0; b < s.B; ++b) {
    for (int64_t h = 0; h < s.H; ++h) {
      for (int64_t p = 0; p < s.P; ++p)
        for (int64_t n = 0; n < s.N; ++n) state[p * s.N + n] = s.h0v(b, h, p, n);
      for (int64_t t = 0; t < s.L; ++t) {
        const double dtv = s.dtv(b, t, h), a = reset(b, t) ? 0.0 : std::exp(dtv * s.A[h]);
        for (int64_t p = 0; p < s.P; ++p) {
          double out = s.D.empty() ? 0.0 : s.D[h] * s.xv(b, t, h, p);
          for (int64_t n = 0; n < s.N; ++n) {
            double& st = state[p * s.N + n];
            st = a * st + dtv * s.xv(b, t, h, p) * s.Bv(b, t, h, n);
            out += st * s.Cv(b, t, h, n);
          }
          y[((b * s.L + t) * s.H + h) * s.P + p] = out;
        }
      }
      std::copy(state.begin(), state.end(), h_last.begin() + (b * s.H + h) * s.P * s.N);
    }
  }
  return s.result(y, h_last);
}

SsdResult ssd_quadratic(const Tensor& x, const Tensor& dt, const Tensor& A, const Tensor& Bm, const Tensor& Cm,
                        const Tensor& D, const Tensor& dt_bias, bool dt_softplus, const Tensor& h0) {
  NoGradGuard no_grad;
  const HostSsd s("ssd_quadratic", x, dt, A, Bm, Cm, D, dt_bias, dt_softplus, h0);
  std::vector<double> y(s.x.size()), h_last(static_cast<size_t>(s.B * s.H * s.P * s.N));
  for (int64_t b = 0; b < s.B; ++b) {
    for (int64_t h = 0; h < s.H; ++h) {
      // mask(l, s) = exp(sum_{k=s+1..l} dt_k A): a running sum walking s down from l.
      auto for_each_source = [&](int64_t l, auto&& visit) {
        double segsum = 0;
        for (int64_t src = l; src >= 0; --src) {
          visit(src, std::exp(segsum));
          segsum += s.dtv(b, src, h) * s.A[h];
        }
        return std::exp(segsum);  // decay from before step 0 to l: weight of h0
      };
      for (int64_t l = 0; l < s.L; ++l) {
        std::vector<double> out(static_cast<size_t>(s.P), 0.0);
        const double h0_weight = for_each_source(l, [&](int64_t src, double mask) {
          double cb = 0;
          for (int64_t n = 0; n < s.N; ++n) cb += s.Cv(b, l, h, n) * s.Bv(b, src, h, n);
          for (int64_t p = 0; p < s.P; ++p) out[p] += mask * cb * s.dtv(b, src, h) * s.xv(b, src, h, p);
        });
        for (int64_t p = 0; p < s.P; ++p) {
          double from_h0 = 0;
          for (int64_t n = 0; n < s.N; ++n) from_h0 += s.h0v(b, h, p, n) * s.Cv(b, l, h, n);
          const double skip = s.D.empty() ? 0.0 : s.D[h] * s.xv(b, l, h, p);
          y[((b * s.L + l) * s.H + h) * s.P + p] = out[p] + h0_weight * from_h0 + skip;
        }
      }
      // The final state is the same sum read at l = L - 1 with B in place of C.
      double* hl = &h_last[(b * s.H + h) * s.P * s.N];
      for (int64_t p = 0; p < s.P; ++p)
        for (int64_t n = 0; n < s.N; ++n) hl[p * s.N + n] = 0;
      const double h0_weight = s.L == 0 ? 1.0 : for_each_source(s.L - 1, [&](int64_t src, double mask) {
        for (int64_t p = 0; p < s.P; ++p)
          for (int64_t n = 0; n < s.N; ++n)
            hl[p * s.N + n] += mask * s.dtv(b, src, h) * s.xv(b, src, h, p) * s.Bv(b, src, h, n);
      });
      for (int64_t p = 0; p < s.P; ++p)
        for (int64_t n = 0; n < s.N; ++n) hl[p * s.N + n] += h0_weight * s.h0v(b, h, p, n);
    }
  }
  return s.result(y, h_last);
}

}  // namespace ssmtrain
