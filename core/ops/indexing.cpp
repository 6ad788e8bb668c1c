// Indexing ops: embedding, index_select and gather. Forwards copy rows (or elements along
// the last axis) with the backend's index kernels; backwards scatter-add into zeros with
// their deterministic counterparts, so repeated indices accumulate reproducibly.
#include "core/ops.h"
#include "core/ops/op_common.h"

namespace ssmtrain {

using namespace ops_detail;

namespace {

void check_index(const Tensor& idx, const Tensor& x, const char* op) {
  check_defined(idx, op, "idx");
  check_compatible(x, idx, op, /*same_dtype=*/false);
  SSMT_CHECK(idx.dtype() == DType::i64, op, ": indices ", idx.describe(), ": expected dtype i64");
}

// out (M, R) = x (N, R) [idx (M)], no autodiff.
Tensor select_rows(const Tensor& x_rows, const Tensor& idx) {
  Tensor out = Tensor::empty({idx.numel(), x_rows.size(1)}, x_rows.dtype(), x_rows.device());
  if (out.numel() > 0) backend(x_rows.device()).index_select_rows(x_rows, idx, out);
  return out;
}

// gx (N, R) = zeros, then rows idx (M) += g (M, R).
Tensor add_rows(const Tensor& g_rows, const Tensor& idx, int64_t n) {
  Tensor gx = Tensor::zeros({n, g_rows.size(1)}, g_rows.dtype(), g_rows.device());
  if (g_rows.numel() > 0) backend(gx.device()).index_add_rows(g_rows, idx, gx);
  return gx;
}

}  // namespace

Tensor embedding(const Tensor& weight, const Tensor& ids) {
  check_floating(weight, "embedding", "weight");
  check_index(ids, weight, "embedding");
  SSMT_CHECK(weight.dim() == 2, "embedding: weight ", weight.describe(), ": expected (V, D)");
  int64_t v = weight.size(0), d = weight.size(1);
  Dims out_shape = ids.shape();
  out_shape.push_back(d);
  Tensor ids_flat, out;
  {
    NoGradGuard no_grad;
    ids_flat = ids.reshape({ids.numel()});
    out = select_rows(weight.contiguous(), ids_flat).reshape(out_shape);
  }
  if (any_requires_grad({weight})) {
    Tensor saved_ids = ids_flat.detach();
    record("embedding", {weight, ids}, {out}, [=](const std::vector<Tensor>& g) -> std::vector<Tensor> {
      return {add_rows(g[0].reshape({saved_ids.numel(), d}), saved_ids, v), Tensor()};
    });
  }
  return out;
}

Tensor index_select(const Tensor& x, int axis_in, const Tensor& idx) {
  check_defined(x, "index_select", "x");
  check_index(idx, x, "index_select");
  SSMT_CHECK(x.dim() >= 1, "index_select of ", x.describe(), ": needs at least one dimension");
  SSMT_CHECK(idx.dim() == 1, "index_select: indices ", idx.describe(), ": expected a 1-D tensor");
  int axis = normalize_axis(axis_in, x.dim(), "index_select");
  int64_t n = x.size(axis);
  // Axis first: the selected slices are then rows (N, R) of a contiguous matrix.
  Dims moved_shape;
  Tensor idx_c, out;
  {
    NoGradGuard no_grad;
    Tensor moved = axis == 0 ? x : x.transpose(0, axis);
    moved_shape = moved.shape();
    int64_t r = Dims(moved_shape.begin() + 1, moved_shape.end()).numel();
    idx_c = idx.contiguous();
    Tensor rows = select_rows(moved.contiguous().reshape({n, r}), idx_c);
    Dims out_moved = moved_shape;
    out_moved[0] = idx.numel();
    Tensor out_m = rows.reshape(out_moved);
    out = axis == 0 ? out_m : out_m.transpose(0, axis).contiguous();
  }
  if (any_requires_grad({x})) {
    Tensor saved_idx = idx_c.detach();
    record("index_select", {x, idx}, {out}, [=](const std::vector<Tensor>& g) -> std::vector<Tensor> {
      Tensor gm = axis == 0 ? g[0] : g[0].transpose(0, axis);
      int64_t m = saved_idx.numel();
      int64_t r = Dims(moved_shape.begin() + 1, moved_shape.end()).numel();
      Tensor gx = add_rows(gm.contiguous().reshape({m, r}), saved_idx, n).reshape(moved_shape);
      return {axis == 0 ? gx : gx.transpose(0, axis).contiguous(), Tensor()};
    });
  }
  return out;
}

Tensor gather(const Tensor& x, int axis_in, const Tensor& idx) {
  check_defined(x, "gather", "x");
  check_index(idx, x, "gather");
  SSMT_CHECK(x.dim() >= 1 && idx.dim() == x.dim(), "gather: x ", x.describe(), " and indices ", idx.describe(),
             ": expected indices of the same rank as x");
  int axis = normalize_axis(axis_in, x.dim(), "gather");
  for (int i = 0; i < x.dim(); ++i)
    SSMT_CHECK(i == axis || idx.size(i) == x.size(i), "gather: x ", x.describe(), " and indices ",
               idx.describe(), ": sizes differ on axis ", i, " (only axis ", axis, " may differ)");
  Dims x_moved, idx_moved;
  Tensor idx_rows, out;
  {
    NoGradGuard no_grad;
    Tensor x_rows = axis_last_rows(x, axis, &x_moved);  // (M, K)
    idx_rows = axis_last_rows(idx, axis, &idx_moved);   // (M, J)
    Tensor out_rows = Tensor::empty(idx_rows.shape(), x.dtype(), x.device());
    if (out_rows.numel() > 0) backend(x.device()).gather_last(x_rows, idx_rows, out_rows);
    out = rows_to_axis(out_rows, idx_moved, axis);
  }
  if (any_requires_grad({x})) {
    Tensor saved_idx = idx_rows.detach();
    int64_t k = x.size(axis);
    DType dt = x.dtype();
    record("gather", {x, idx}, {out}, [=](const std::vector<Tensor>& g) -> std::vector<Tensor> {
      Dims unused;
      Tensor g_rows = axis_last_rows(g[0], axis, &unused);  // (M, J)
      Tensor gx = Tensor::zeros({saved_idx.size(0), k}, dt, g_rows.device());
      if (g_rows.numel() > 0) backend(gx.device()).scatter_add_last(g_rows, saved_idx, gx);
      return {rows_to_axis(gx, x_moved, axis), Tensor()};
    });
  }
  return out;
}

}  // namespace ssmtrain
