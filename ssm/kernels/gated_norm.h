// Gated RMSNorm of Mamba-2 (SPECS section 3): the SSD output y gated by silu(z), normalised
// per group of channels, then scaled by a weight, as one differentiable op:
//   v = y o silu(z),   out = w o v / sqrt(mean_group(v^2) + eps)
// over groups of `group_size` consecutive channels of the last axis. One pass each way; the
// forward keeps y, z and the per-(row, group) rstd, the backward recomputes v.
#pragma once

#include <cstdint>

#include "core/tensor.h"

namespace ssmtrain {

// y, z (.., D) of one float dtype; w (D) in y's dtype or its compute dtype (f32 for bf16),
// or undefined (no weight); group_size divides D. Returns out (.., D) in y's dtype.
// y and z are read in place when their last axis is contiguous and their leading axes
// collapse to one row stride (e.g. z a column slice of a wider projection, strides
// (L W, W, 1)); otherwise they are copied to contiguous first.
Tensor gated_rms_norm(const Tensor& y, const Tensor& z, const Tensor& w, int64_t group_size, double eps);

// ---- kernel interface (rows of D contiguous channels) ----
// Row r of y starts at y + r * y_stride, of z at z + r * z_stride (strides in elements, any
// value >= 0: rows may be slices of wider rows); out, rstd, dout, dy and dz are contiguous
// (row r at r * D, resp. r * groups()).

struct GatedNormParams {
  DType dtype = DType::f32;  // of y, z, out, dout, dy, dz
  int64_t rows = 0, D = 0, group_size = 0;
  int64_t y_stride = 0, z_stride = 0;  // elements between consecutive rows of y, of z
  double eps = 1e-5;
  const void* y = nullptr;
  const void* z = nullptr;
  const void* w = nullptr;  // (D) compute dtype, or null
  void* out = nullptr;
  void* rstd = nullptr;     // (rows, D / group_size) compute dtype
  const void* dout = nullptr;
  void* dy = nullptr;
  void* dz = nullptr;
  void* dw = nullptr;       // (D) compute dtype, or null
  int64_t groups() const { return D / group_size; }
};

// The kernels of the op (core/fused_op.h): the CPU ones (gated_norm.cpp), the CUDA launchers
// on the compute stream of CUDA device `device` (gated_norm_cuda.cu, CUDA builds only).
void gated_norm_fwd_cpu(const GatedNormParams& p);
void gated_norm_bwd_cpu(const GatedNormParams& p);
void gated_norm_fwd_cuda(const GatedNormParams& p, int device);
void gated_norm_bwd_cuda(const GatedNormParams& p, int device);

}  // namespace ssmtrain
