// Host-side helpers for the op tests in tests/core: naive references work on row-major
// std::vector<double> copies of tensors, indexed with these ravel/unravel/broadcast helpers.
#pragma once

#include <vector>

#include "core/tensor.h"
#include "gradcheck.h"

namespace ssmtrain::ref {

inline std::vector<double> host(const Tensor& t) { return t.to_vector<double>(); }

inline std::vector<int64_t> unravel(int64_t flat, const Dims& shape) {
  std::vector<int64_t> idx(shape.size());
  for (int d = shape.size() - 1; d >= 0; --d) {
    idx[d] = flat % shape[d];
    flat /= shape[d];
  }
  return idx;
}

inline int64_t ravel(const std::vector<int64_t>& idx, const Dims& shape) {
  int64_t flat = 0;
  for (int d = 0; d < shape.size(); ++d) flat = flat * shape[d] + idx[d];
  return flat;
}

// v (row-major, shape `from`) broadcast to shape `to` (NumPy rules), row-major.
inline std::vector<double> broadcast(const std::vector<double>& v, const Dims& from, const Dims& to) {
  std::vector<double> out(static_cast<size_t>(to.numel()));
  int lead = to.size() - from.size();
  for (int64_t i = 0; i < to.numel(); ++i) {
    std::vector<int64_t> idx = unravel(i, to), src;
    for (int d = 0; d < from.size(); ++d) src.push_back(from[d] == 1 ? 0 : idx[d + lead]);
    out[i] = v[ravel(src, from)];
  }
  return out;
}

// A tensor of `dtype` holding `v`; values are rounded to dtype, so references should be
// computed from host(tensor), not from v.
inline Tensor make(const std::vector<double>& v, const Dims& shape, DType dtype = DType::f64) {
  return Tensor::from_vector(v, shape).to(dtype);
}

// Per-dtype forward tolerances against a double-precision reference: f32 rounding of a
// few operations; bf16 keeps 8 significant bits (relative rounding 2^-9 per store), so a
// result computed in float and rounded once is within ~4e-3 relative.
struct Tolerance {
  double rtol, atol;
};
inline Tolerance forward_tolerance(DType dt) {
  switch (dt) {
    case DType::f64: return {1e-12, 1e-12};
    case DType::bf16: return {1e-2, 1e-2};
    default: return {2e-5, 2e-6};
  }
}

}  // namespace ssmtrain::ref
