// The pre-norm residual step on the CPU: composed from the add, copy and RMSNorm kernels
// (core/backend.cpp), so its arithmetic is exactly that of the separate ops.
#include "core/cpu/backend_cpu.h"

namespace ssmtrain::cpu {

void CpuBackend::add_rms_norm_forward(const Tensor& h, const Tensor& y, const Tensor& w, double eps, const Tensor& s,
                                      const Tensor& n, const Tensor& rstd) {
  add_rms_norm_forward_composed(*this, h, y, w, eps, s, n, rstd);
}

void CpuBackend::add_rms_norm_backward(const Tensor& s, const Tensor& w, const Tensor& rstd, const Tensor& gn,
                                       const Tensor& gs, const Tensor& gh, const Tensor& gy, const Tensor& gw) {
  add_rms_norm_backward_composed(*this, s, w, rstd, gn, gs, gh, gy, gw);
}

}  // namespace ssmtrain::cpu
