// Small helpers shared by the SSM mixers.
#pragma once

#include "core/ops.h"

namespace ssmtrain {

// A parameter in the compute dtype: itself when it already is, else a differentiable cast
// (mixed precision keeps f32 master weights and runs the mixer in bf16).
inline Tensor as_dtype(const Tensor& p, DType dtype) { return p.dtype() == dtype ? p : cast(p, dtype); }

}  // namespace ssmtrain
