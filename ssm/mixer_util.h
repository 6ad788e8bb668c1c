// Small helpers shared by the SSM mixers.
#pragma once

#include "core/ops.h"

namespace ssmtrain {

// A parameter in the compute dtype: itself when it already is, else a differentiable cast
// (mixed precision keeps f32 master weights and runs the mixer in bf16).
inline Tensor as_dtype(const Tensor& p, DType dtype) { return p.dtype() == dtype ? p : cast(p, dtype); }

// A weight for linear() under activations of `dtype`: f32 master weights stay f32 under bf16
// activations (linear rounds them for the product and returns their gradient in f32 straight
// from the GEMM); other combinations go through as_dtype.
inline Tensor linear_weight(const Tensor& p, DType dtype) {
  return dtype == DType::bf16 && p.dtype() == DType::f32 ? p : as_dtype(p, dtype);
}

}  // namespace ssmtrain
