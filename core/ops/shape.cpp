// Shape ops that build a new tensor from pieces: cat, stack, pad, plus the differentiable
// cast. Forwards copy each piece into a narrow()-ed view of the output; backwards hand each
// input the matching narrow view of the gradient, made contiguous.
#include "core/ops.h"
#include "core/ops/op_common.h"

namespace ssmtrain {

using namespace ops_detail;

namespace {

// out = the pieces (already of matching shapes) concatenated along `axis`; records one
// node whose backward hands input i the slice [offset_i, offset_i + size_i) of the gradient,
// passed through `slice_grad` (identity for cat, squeeze for stack).
template <typename SliceGrad>
Tensor concat(const char* name, const std::vector<Tensor>& inputs, const std::vector<Tensor>& pieces, int axis,
              SliceGrad slice_grad) {
  Dims out_shape = pieces[0].shape();
  out_shape[axis] = 0;
  for (const Tensor& p : pieces) out_shape[axis] += p.size(axis);
  Tensor out = Tensor::empty(out_shape, pieces[0].dtype(), pieces[0].device());
  std::vector<int64_t> offsets, sizes;
  {
    NoGradGuard no_grad;
    int64_t offset = 0;
    for (const Tensor& p : pieces) {
      if (p.numel() > 0) backend(out.device()).copy(p, out.narrow(axis, offset, p.size(axis)));
      offsets.push_back(offset);
      sizes.push_back(p.size(axis));
      offset += p.size(axis);
    }
  }
  if (any_requires_grad(inputs)) {
    std::vector<bool> need;
    for (const Tensor& t : inputs) need.push_back(t.requires_grad());
    record(name, inputs, {out}, [=](const std::vector<Tensor>& g) -> std::vector<Tensor> {
      std::vector<Tensor> grads(need.size());
      for (size_t i = 0; i < need.size(); ++i)
        if (need[i]) grads[i] = slice_grad(g[0].narrow(axis, offsets[i], sizes[i])).contiguous();
      return grads;
    });
  }
  return out;
}

// Same dtype, device and rank for every piece; sizes equal except on `axis` (when >= 0).
void check_pieces(const std::vector<Tensor>& xs, int free_axis, const char* name) {
  SSMT_CHECK(!xs.empty(), name, ": needs at least one tensor");
  for (size_t i = 0; i < xs.size(); ++i) {
    SSMT_CHECK(xs[i].defined(), name, ": tensor ", i, " is undefined");
    check_compatible(xs[0], xs[i], name);
    bool same = xs[i].dim() == xs[0].dim();
    for (int d = 0; same && d < xs[0].dim(); ++d) same = d == free_axis || xs[i].size(d) == xs[0].size(d);
    SSMT_CHECK(same, name, ": tensor ", i, " ", xs[i].describe(), " does not match tensor 0 ", xs[0].describe(),
               free_axis >= 0 ? " outside the concatenation axis" : "");
  }
}

}  // namespace

Tensor cat(const std::vector<Tensor>& xs, int axis_in) {
  SSMT_CHECK(!xs.empty() && xs[0].defined() && xs[0].dim() > 0, "cat: needs defined tensors of rank >= 1");
  int axis = normalize_axis(axis_in, xs[0].dim(), "cat");
  check_pieces(xs, axis, "cat");
  return concat("cat", xs, xs, axis, [](const Tensor& g) { return g; });
}

Tensor stack(const std::vector<Tensor>& xs, int axis_in) {
  SSMT_CHECK(!xs.empty() && xs[0].defined(), "stack: needs at least one defined tensor");
  int axis = normalize_axis(axis_in, xs[0].dim() + 1, "stack");
  check_pieces(xs, -1, "stack");
  std::vector<Tensor> pieces;
  {
    NoGradGuard no_grad;  // the unsqueezed views are internal, not tape nodes
    for (const Tensor& x : xs) pieces.push_back(x.unsqueeze(axis));
  }
  return concat("stack", xs, pieces, axis, [axis](const Tensor& g) { return g.squeeze(axis); });
}

Tensor pad(const Tensor& x, int axis_in, int64_t before, int64_t after, double value) {
  check_defined(x, "pad", "x");
  SSMT_CHECK(x.dim() > 0, "pad of ", x.describe(), ": needs at least one dimension");
  SSMT_CHECK(before >= 0 && after >= 0, "pad of ", x.describe(), ": padding must be non-negative (got ", before,
             ", ", after, ")");
  int axis = normalize_axis(axis_in, x.dim(), "pad");
  Dims out_shape = x.shape();
  int64_t n = x.size(axis);
  out_shape[axis] = before + n + after;
  Tensor out = Tensor::full(out_shape, value, x.dtype(), x.device());
  {
    NoGradGuard no_grad;
    if (x.numel() > 0) backend(x.device()).copy(x, out.narrow(axis, before, n));
  }
  if (any_requires_grad({x})) {
    record("pad", {x}, {out}, [=](const std::vector<Tensor>& g) -> std::vector<Tensor> {
      return {g[0].narrow(axis, before, n).contiguous()};
    });
  }
  return out;
}

Tensor cast(const Tensor& x, DType dtype) {
  check_defined(x, "cast", "x");
  return x.to(dtype);  // records its own node when both dtypes are floating
}

}  // namespace ssmtrain
