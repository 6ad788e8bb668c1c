// Gated RMSNorm: argument checks, the tape node, and the CPU forward and backward (OpenMP
// over rows; the weight gradient summed per block of rows, then over blocks in order, so the
// result does not depend on the thread count).
#include "ssm/kernels/gated_norm.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "core/autograd.h"
#include "core/error.h"
#include "core/math.h"
#include "core/ops.h"
#include "ssm/kernels/kernel_common.h"

namespace ssmtrain {

using namespace ssm_detail;

namespace {

constexpr const char* kOp = "gated_rms_norm";


template <typename T>
void forward_cpu(const GatedNormParams& p) {
  using A = acc_t<T>;
  const int64_t D = p.D, gs = p.group_size, G = p.groups();
  const T* y = static_cast<const T*>(p.y);
  const T* z = static_cast<const T*>(p.z);
  const A* w = static_cast<const A*>(p.w);
  T* out = static_cast<T*>(p.out);
  A* rstd = static_cast<A*>(p.rstd);
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < p.rows; ++r) {
    for (int64_t g = 0; g < G; ++g) {
      const int64_t c0 = r * D + g * gs;
      auto v_at = [&](int64_t i) {
        const A zi = static_cast<A>(z[c0 + i]);
        return static_cast<A>(y[c0 + i]) * zi * math::sigmoid(zi);
      };
      A ss = 0;
      for (int64_t i = 0; i < gs; ++i) {
        const A v = v_at(i);
        ss += v * v;
      }
      const A inv = A(1) / std::sqrt(ss / static_cast<A>(gs) + static_cast<A>(p.eps));
      rstd[r * G + g] = inv;
      for (int64_t i = 0; i < gs; ++i) out[c0 + i] = T(v_at(i) * inv * (w ? w[g * gs + i] : A(1)));
    }
  }
}

// With n = v rstd, gn = dout o w: dv = rstd (gn - n mean(gn o n)), dy = dv silu(z),
// dz = dv y silu'(z), dw = sum over rows of dout o n.
template <typename T>
void backward_cpu(const GatedNormParams& p) {
  using A = acc_t<T>;
  const int64_t D = p.D, gs = p.group_size, G = p.groups(), M = p.rows;
  const T* y = static_cast<const T*>(p.y);
  const T* z = static_cast<const T*>(p.z);
  const T* dout = static_cast<const T*>(p.dout);
  const A* w = static_cast<const A*>(p.w);
  const A* rstd = static_cast<const A*>(p.rstd);
  T* dy = static_cast<T*>(p.dy);
  T* dz = static_cast<T*>(p.dz);
  const int64_t nblk = std::clamp<int64_t>((M + 31) / 32, 1, 256), per = (M + nblk - 1) / nblk;
  std::vector<A> dw_part(p.dw ? static_cast<size_t>(nblk * D) : 0, A(0));
#pragma omp parallel for schedule(static)
  for (int64_t blk = 0; blk < nblk; ++blk) {
    A* dw_acc = p.dw ? dw_part.data() + blk * D : nullptr;
    for (int64_t r = blk * per; r < std::min(M, (blk + 1) * per); ++r) {
      for (int64_t g = 0; g < G; ++g) {
        const int64_t c0 = r * D + g * gs, w0 = g * gs;
        const A inv = rstd[r * G + g];
        A dot = 0;
        for (int64_t i = 0; i < gs; ++i) {
          const A zi = static_cast<A>(z[c0 + i]);
          const A n = static_cast<A>(y[c0 + i]) * zi * math::sigmoid(zi) * inv;
          dot += static_cast<A>(dout[c0 + i]) * (w ? w[w0 + i] : A(1)) * n;
        }
        const A mean = dot / static_cast<A>(gs);
        for (int64_t i = 0; i < gs; ++i) {
          const A zi = static_cast<A>(z[c0 + i]), yi = static_cast<A>(y[c0 + i]), s = math::sigmoid(zi);
          const A n = yi * zi * s * inv, go = static_cast<A>(dout[c0 + i]);
          const A dv = inv * (go * (w ? w[w0 + i] : A(1)) - n * mean);
          if (dy) dy[c0 + i] = T(dv * zi * s);
          if (dz) dz[c0 + i] = T(dv * yi * s * (A(1) + zi * (A(1) - s)));
          if (dw_acc) dw_acc[w0 + i] += go * n;
        }
      }
    }
  }
  if (A* dw = static_cast<A*>(p.dw)) {
    for (int64_t i = 0; i < D; ++i) {
      A s = 0;
      for (int64_t blk = 0; blk < nblk; ++blk) s += dw_part[blk * D + i];
      dw[i] = s;
    }
  }
}

void run_forward(const GatedNormParams& p, Device device) {
  if (device.is_cuda()) {
#if defined(SSMTRAIN_WITH_CUDA)
    return gated_norm_fwd_cuda(p, device);
#endif
  }
  SSMT_DISPATCH_FLOAT(p.dtype, kOp, [&] { forward_cpu<scalar_t>(p); });
}

void run_backward(const GatedNormParams& p, Device device) {
  if (device.is_cuda()) {
#if defined(SSMTRAIN_WITH_CUDA)
    return gated_norm_bwd_cuda(p, device);
#endif
  }
  SSMT_DISPATCH_FLOAT(p.dtype, kOp, [&] { backward_cpu<scalar_t>(p); });
}

}  // namespace

Tensor gated_rms_norm(const Tensor& y_in, const Tensor& z_in, const Tensor& w_in, int64_t group_size, double eps) {
  check_present(kOp, "y", y_in);
  check_present(kOp, "z", z_in);
  check_floating_arg(kOp, "y", y_in);
  SSMT_CHECK(y_in.dim() >= 1, kOp, ": y ", y_in.describe(), ": expected (.., D)");
  check_shape(kOp, "z", z_in, y_in.shape(), "like y");
  check_device(kOp, "z", z_in, y_in.device(), "y");
  check_dtype(kOp, "z", z_in, y_in.dtype(), "y");
  const int64_t D = y_in.size(-1);
  SSMT_CHECK(group_size >= 1 && D % group_size == 0, kOp, ": group_size ", group_size,
             " must divide the channel count ", D, " of y ", y_in.describe());
  SSMT_CHECK(eps >= 0, kOp, ": eps must be non-negative, got ", eps);
  const DType cd = compute_dtype(y_in.dtype());
  if (w_in.defined()) {
    check_shape(kOp, "w", w_in, {D}, "(D)");
    check_device(kOp, "w", w_in, y_in.device(), "y");
    check_floating_arg(kOp, "w", w_in);
  }
#if !defined(SSMTRAIN_WITH_CUDA)
  if (y_in.device().is_cuda()) throw_cuda_not_built(kOp, y_in);
#endif
  const Tensor y = y_in.contiguous(), z = z_in.contiguous();
  const Tensor w = w_in.defined() ? w_in.to(cd).contiguous() : Tensor();
  const Device device = y.device();
  const int64_t rows = D > 0 ? y.numel() / D : 0;

  auto params = [=](const Tensor& yy, const Tensor& zz, const Tensor& ww) {
    GatedNormParams p;
    p.dtype = yy.dtype();
    p.rows = rows, p.D = D, p.group_size = group_size, p.eps = eps;
    p.y = yy.data_ptr(), p.z = zz.data_ptr(), p.w = ww.defined() ? ww.data_ptr() : nullptr;
    return p;
  };
  Tensor out = Tensor::empty(y.shape(), y.dtype(), device);
  Tensor rstd = Tensor::empty({rows, D / group_size}, cd, device);
  if (rows > 0 && D > 0) {
    GatedNormParams p = params(y, z, w);
    p.out = out.data_ptr();
    p.rstd = rstd.data_ptr();
    run_forward(p, device);
  }
  const std::vector<Tensor> inputs{y, z, w};
  if (any_requires_grad(inputs)) {
    const bool want_y = wants_grad(y), want_z = wants_grad(z), want_w = wants_grad(w);
    const Tensor ky = saved(y), kz = saved(z), kw = saved(w), kr = rstd;
    record(kOp, inputs, {out}, [=](const std::vector<Tensor>& grads) -> std::vector<Tensor> {
      const Tensor dout = grads[0].contiguous();
      std::vector<Tensor> result(3);
      if (want_y) result[0] = Tensor::empty(ky.shape(), ky.dtype(), ky.device());
      if (want_z) result[1] = Tensor::empty(kz.shape(), kz.dtype(), kz.device());
      if (want_w) result[2] = Tensor::zeros({D}, kw.dtype(), kw.device());
      if (rows > 0 && D > 0) {
        GatedNormParams q = params(ky, kz, kw);
        q.rstd = kr.data_ptr();
        q.dout = dout.data_ptr();
        q.dy = want_y ? result[0].data_ptr() : nullptr;
        q.dz = want_z ? result[1].data_ptr() : nullptr;
        q.dw = want_w ? result[2].data_ptr() : nullptr;
        run_backward(q, device);
      }
      return result;
    });
  }
  return out;
}

}  // namespace ssmtrain
