// The selective scan exactly as SPECS section 1 writes it, for tests: every input copied to
// double on the host, every state kept, no autodiff, no parallelism.
#include <cmath>
#include <cstdint>
#include <vector>

#include "core/autograd.h"
#include "core/error.h"
#include "ssm_reference.h"

namespace ssmtrain {

SelectiveScanResult selective_scan_reference(const Tensor& u, const Tensor& delta, const Tensor& A, const Tensor& Bm,
                                             const Tensor& Cm, const Tensor& Dskip, const Tensor& z,
                                             const Tensor& delta_bias, bool delta_softplus, const Tensor& h0,
                                             const Tensor& seq_idx) {
  NoGradGuard no_grad;
  SSMT_CHECK(u.dim() == 3 && A.dim() == 2 && Bm.dim() == 4, "selective_scan_reference: u ", u.shape().str(),
             ", A ", A.shape().str(), ", Bm ", Bm.shape().str(), ": expected (B, L, D), (D, N), (B, L, G, N)");
  const int64_t B = u.size(0), L = u.size(1), D = u.size(2), N = A.size(1), G = Bm.size(2);
  SSMT_CHECK(D % G == 0, "selective_scan_reference: G = ", G, " must divide D = ", D);
  auto host = [](const Tensor& t) { return t.defined() ? t.to_vector<double>() : std::vector<double>(); };
  const std::vector<double> uv = host(u), deltav = host(delta), Av = host(A), Bv = host(Bm), Cv = host(Cm);
  const std::vector<double> Dv = host(Dskip), zv = host(z), biasv = host(delta_bias), h0v = host(h0);
  const std::vector<int32_t> seq = seq_idx.defined() ? seq_idx.to_vector<int32_t>() : std::vector<int32_t>();

  // states[((b * L + t) * D + d) * N + n] = h_t[d, n] of batch b.
  std::vector<double> states(static_cast<size_t>(B * L * D * N));
  std::vector<double> out(static_cast<size_t>(B * L * D)), h_last(static_cast<size_t>(B * D * N));
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t d = 0; d < D; ++d) {
      const int64_t g = d / (D / G);
      for (int64_t n = 0; n < N; ++n) {
        double h = h0v.empty() ? 0.0 : h0v[(b * D + d) * N + n];
        for (int64_t t = 0; t < L; ++t) {
          const int64_t i = (b * L + t) * D + d, j = ((b * L + t) * G + g) * N + n;
          double dt = deltav[i] + (biasv.empty() ? 0.0 : biasv[d]);
          if (delta_softplus) dt = dt > 20 ? dt : std::log1p(std::exp(dt));
          const bool restart = !seq.empty() && t > 0 && seq[b * L + t] != seq[b * L + t - 1];
          if (restart) h = 0;  // a new document: the state starts from zero
          h = std::exp(dt * Av[d * N + n]) * h + dt * Bv[j] * uv[i];
          states[i * N + n] = h;
        }
        h_last[(b * D + d) * N + n] = h;
      }
      for (int64_t t = 0; t < L; ++t) {
        const int64_t i = (b * L + t) * D + d;
        double y = Dv.empty() ? 0.0 : Dv[d] * uv[i];
        for (int64_t n = 0; n < N; ++n) y += Cv[((b * L + t) * G + g) * N + n] * states[i * N + n];
        if (!zv.empty()) y *= zv[i] / (1 + std::exp(-zv[i]));
        out[i] = y;
      }
    }
  }
  const DType state_dtype = u.dtype() == DType::f64 ? DType::f64 : DType::f32;
  return {Tensor::from_vector(out, {B, L, D}).to(u.dtype()).to(u.device()),
          Tensor::from_vector(h_last, {B, D, N}).to(state_dtype).to(u.device())};
}

}  // namespace ssmtrain
