// Argument checks and layout helpers shared by the op families (see op_common.h).
#include "core/ops/op_common.h"

#include <algorithm>

namespace ssmtrain::ops_detail {

void check_defined(const Tensor& t, const char* op, const char* arg) {
  SSMT_CHECK(t.defined(), op, ": argument '", arg, "' is an undefined tensor");
}

void check_floating(const Tensor& t, const char* op, const char* arg) {
  check_defined(t, op, arg);
  SSMT_CHECK(is_floating(t.dtype()), op, ": ", arg, " = ", t.describe(),
             ": expected a floating dtype (f32, bf16 or f64)");
}

void check_compatible(const Tensor& a, const Tensor& b, const char* op, bool same_dtype) {
  SSMT_CHECK(a.device() == b.device(), op, ": ", a.describe(), " and ", b.describe(), ": devices differ (",
             a.device().str(), " vs ", b.device().str(), ")");
  if (same_dtype)
    SSMT_CHECK(a.dtype() == b.dtype(), op, ": ", a.describe(), " and ", b.describe(), ": dtypes differ (",
               dtype_name(a.dtype()), " vs ", dtype_name(b.dtype()), ")");
}

Dims normalize_axes(const Dims& axes, int rank, const char* op) {
  std::vector<int64_t> out;
  if (axes.empty()) {
    for (int i = 0; i < rank; ++i) out.push_back(i);
  } else {
    for (int64_t a : axes) out.push_back(normalize_axis(static_cast<int>(a), rank, op));
    std::sort(out.begin(), out.end());
    out.erase(std::unique(out.begin(), out.end()), out.end());
  }
  return Dims(out);
}

Tensor axis_last_rows(const Tensor& x, int axis, Dims* moved_shape) {
  Tensor moved = axis == x.dim() - 1 ? x : x.transpose(axis, -1);
  *moved_shape = moved.shape();
  int64_t m = 1;  // not numel / K, which fails for K == 0
  for (int i = 0; i + 1 < moved.dim(); ++i) m *= moved.size(i);
  return moved.contiguous().reshape({m, moved.size(-1)});
}

Tensor rows_to_axis(const Tensor& rows, Dims moved_shape, int axis) {
  moved_shape[moved_shape.size() - 1] = rows.size(-1);
  Tensor moved = rows.reshape(moved_shape);
  if (axis == moved_shape.size() - 1) return moved;
  return moved.transpose(axis, -1).contiguous();
}

Tensor reduce_grad(const Tensor& g, const Dims& shape) { return sum_to_shape(g, shape).contiguous(); }

}  // namespace ssmtrain::ops_detail
