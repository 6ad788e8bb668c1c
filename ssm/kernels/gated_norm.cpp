// Gated RMSNorm: argument checks, the tape node, and the CPU forward and backward (OpenMP
// over rows; the weight gradient summed per block of rows, then over blocks in order, so the
// result does not depend on the thread count). y and z are read through their row strides
// (a column slice of a wider projection is not copied); the other operands are contiguous.
#include "ssm/kernels/gated_norm.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "core/error.h"
#include "core/fused_op.h"
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
      const int64_t c0 = r * D + g * gs, y0 = r * p.y_stride + g * gs, z0 = r * p.z_stride + g * gs;
      auto v_at = [&](int64_t i) {
        const A zi = static_cast<A>(z[z0 + i]);
        return static_cast<A>(y[y0 + i]) * zi * math::sigmoid(zi);
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
        const int64_t y0 = r * p.y_stride + g * gs, z0 = r * p.z_stride + g * gs;
        const A inv = rstd[r * G + g];
        A dot = 0;
        for (int64_t i = 0; i < gs; ++i) {
          const A zi = static_cast<A>(z[z0 + i]);
          const A n = static_cast<A>(y[y0 + i]) * zi * math::sigmoid(zi) * inv;
          dot += static_cast<A>(dout[c0 + i]) * (w ? w[w0 + i] : A(1)) * n;
        }
        const A mean = dot / static_cast<A>(gs);
        for (int64_t i = 0; i < gs; ++i) {
          const A zi = static_cast<A>(z[z0 + i]), yi = static_cast<A>(y[y0 + i]), s = math::sigmoid(zi);
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

}  // namespace

void gated_norm_fwd_cpu(const GatedNormParams& p) {
  SSMT_DISPATCH_FLOAT(p.dtype, kOp, [&] { forward_cpu<scalar_t>(p); });
}

void gated_norm_bwd_cpu(const GatedNormParams& p) {
  SSMT_DISPATCH_FLOAT(p.dtype, kOp, [&] { backward_cpu<scalar_t>(p); });
}

namespace {
const FusedKernels<GatedNormParams> kKernels = {gated_norm_fwd_cpu, gated_norm_bwd_cpu,
                                                SSMT_CUDA_KERNEL(gated_norm_fwd_cuda),
                                                SSMT_CUDA_KERNEL(gated_norm_bwd_cuda)};

// The elements between consecutive rows of t (.., D) when the kernels can read it in place:
// its last axis contiguous and its leading axes one row axis in disguise (each stride the
// next one's times its size; axes of size 1 have no say). -1 otherwise.
int64_t row_stride(const Tensor& t) {
  const Dims& shape = t.shape();
  const Dims& strides = t.strides();
  const int last = t.dim() - 1;
  if (shape[last] > 1 && strides[last] != 1) return -1;
  int64_t stride = -1, span = 1;  // the innermost leading axis' stride; the rows of the axes seen so far
  for (int i = last - 1; i >= 0; --i) {
    if (shape[i] == 1) continue;
    if (stride < 0) {
      stride = strides[i], span = shape[i];
    } else if (strides[i] == stride * span) {
      span *= shape[i];
    } else {
      return -1;
    }
  }
  return stride < 0 ? shape[last] : stride;  // one row: any stride serves
}

// t itself when row_stride(t) finds one, else a contiguous copy (on the tape like any copy).
Tensor with_row_stride(const Tensor& t) { return row_stride(t) >= 0 ? t : t.contiguous(); }

}  // namespace

Tensor gated_rms_norm(const Tensor& y_in, const Tensor& z_in, const Tensor& w_in, int64_t group_size, double eps) {
  using P = GatedNormParams;
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
  if (w_in.defined()) {
    check_shape(kOp, "w", w_in, {D}, "(D)");
    check_device(kOp, "w", w_in, y_in.device(), "y");
    check_floating_arg(kOp, "w", w_in);
  }
  FusedOp<P> op(kOp, kKernels, y_in.device());
  const DType cd = compute_dtype(y_in.dtype());
  const Tensor y = with_row_stride(y_in), z = with_row_stride(z_in);
  const Tensor w = w_in.defined() ? w_in.to(cd).contiguous() : Tensor();
  P& p = op.p;
  p.dtype = y.dtype();
  p.rows = D > 0 ? y.numel() / D : 0, p.D = D, p.group_size = group_size, p.eps = eps;
  p.y_stride = row_stride(y), p.z_stride = row_stride(z);
  p.y = y.data_ptr(), p.z = z.data_ptr(), p.w = w.defined() ? w.data_ptr() : nullptr;
  op.input(y, &P::dy);
  op.input(z, &P::dz);
  op.input(w, &P::dw);
  Tensor out = op.output(y.shape(), y.dtype(), &P::out);
  op.output({p.rows, p.groups()}, cd, &P::rstd, /*saved=*/true);
  op.forward();
  op.record({out}, [](P& q, const std::vector<Tensor>& grads) {
    Tensor dout = grads[0].contiguous();
    q.dout = dout.data_ptr();
    return std::vector<Tensor>{dout};
  });
  return out;
}

}  // namespace ssmtrain
