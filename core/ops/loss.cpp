// Fused softmax, log_softmax and cross-entropy: one tape node each with a hand-written
// backward on the backend's row kernels. Cross-entropy never materialises the softmax: the
// forward keeps the per-row logsumexp and the backward recomputes probabilities from it.
#include "core/ops.h"
#include "core/ops/op_common.h"

namespace ssmtrain {

using namespace ops_detail;

namespace {

Tensor softmax_impl(const Tensor& x, int axis_in, bool log) {
  const char* name = log ? "log_softmax" : "softmax";
  check_floating(x, name, "x");
  SSMT_CHECK(x.dim() > 0, name, " of ", x.describe(), ": needs at least one dimension");
  int axis = normalize_axis(axis_in, x.dim(), name);
  Dims moved_shape;
  Tensor y_rows, y;
  {
    NoGradGuard no_grad;
    Tensor rows = axis_last_rows(x, axis, &moved_shape);  // (M, K)
    y_rows = Tensor::empty(rows.shape(), x.dtype(), x.device());
    if (y_rows.numel() > 0) backend(x.device()).softmax_rows(rows, y_rows, log);
    y = rows_to_axis(y_rows, moved_shape, axis);
  }
  if (any_requires_grad({x})) {
    Tensor saved_y = y_rows.detach();  // the row layout, so the backward needs no permute of y
    record(name, {x}, {y}, [=](const std::vector<Tensor>& g) -> std::vector<Tensor> {
      Dims unused;
      Tensor gy = axis_last_rows(g[0], axis, &unused);
      Tensor gx = Tensor::empty(gy.shape(), gy.dtype(), gy.device());
      if (gx.numel() > 0) backend(gx.device()).softmax_rows_backward(saved_y, gy, gx, log);
      return {rows_to_axis(gx, moved_shape, axis)};
    });
  }
  return y;
}

// The shared forward of both cross-entropy forms: per-row loss and lse (M), stat dtype.
struct CrossEntropyRows {
  Tensor logits;   // (M, V) contiguous
  Tensor targets;  // (M) i64 contiguous
  Tensor loss;     // (M)
  Tensor lse;      // (M)
};

CrossEntropyRows cross_entropy_rows(const Tensor& logits, const Tensor& targets, int64_t ignore_index,
                                    const char* name) {
  check_floating(logits, name, "logits");
  check_defined(targets, name, "targets");
  check_compatible(logits, targets, name, /*same_dtype=*/false);
  SSMT_CHECK(targets.dtype() == DType::i64, name, ": targets ", targets.describe(), ": expected dtype i64");
  SSMT_CHECK(logits.dim() >= 1, name, ": logits ", logits.describe(), ": expected (.., V)");
  Dims expected(logits.shape().begin(), logits.shape().end() - 1);
  SSMT_CHECK(targets.shape() == expected, name, ": logits ", logits.describe(), " and targets ",
             targets.describe(), ": expected targets of shape ", expected.str());
  CrossEntropyRows r;
  NoGradGuard no_grad;
  int64_t m = expected.numel(), v = logits.size(-1);
  r.logits = logits.reshape({m, v});
  r.targets = targets.reshape({m});
  DType stat = stat_dtype(logits.dtype());
  r.loss = Tensor::empty({m}, stat, logits.device());
  r.lse = Tensor::empty({m}, stat, logits.device());
  if (m > 0) {
    SSMT_CHECK(v > 0, name, ": logits ", logits.describe(), ": the class axis is empty");
    backend(logits.device()).cross_entropy_forward(r.logits, r.targets, ignore_index, r.loss, r.lse);
  }
  return r;
}

// dlogits (M, V) in the logits' dtype, reshaped to `shape`.
Tensor cross_entropy_grad(const CrossEntropyRows& r, const Tensor& gloss, int64_t ignore_index, const Dims& shape) {
  Tensor dlogits = Tensor::empty(r.logits.shape(), r.logits.dtype(), r.logits.device());
  if (dlogits.numel() > 0)
    backend(dlogits.device())
        .cross_entropy_backward(r.logits, r.targets, r.lse, gloss.contiguous(), ignore_index, dlogits);
  return dlogits.reshape(shape);
}

CrossEntropyRows saved_for_backward(const CrossEntropyRows& r) {
  return {r.logits.detach(), r.targets.detach(), Tensor(), r.lse.detach()};
}

}  // namespace

Tensor softmax(const Tensor& x, int axis) { return softmax_impl(x, axis, false); }
Tensor log_softmax(const Tensor& x, int axis) { return softmax_impl(x, axis, true); }

Tensor cross_entropy_per_token(const Tensor& logits, const Tensor& targets, int64_t ignore_index) {
  CrossEntropyRows r = cross_entropy_rows(logits, targets, ignore_index, "cross_entropy_per_token");
  Tensor out;
  {
    NoGradGuard no_grad;
    out = r.loss.reshape(targets.shape());
  }
  if (any_requires_grad({logits})) {
    CrossEntropyRows saved = saved_for_backward(r);
    Dims shape = logits.shape();
    int64_t m = r.loss.numel();
    record("cross_entropy_per_token", {logits, targets}, {out},
           [=](const std::vector<Tensor>& g) -> std::vector<Tensor> {
             return {cross_entropy_grad(saved, g[0].reshape({m}), ignore_index, shape), Tensor()};
           });
  }
  return out;
}

Tensor cross_entropy(const Tensor& logits, const Tensor& targets, int64_t ignore_index) {
  CrossEntropyRows r = cross_entropy_rows(logits, targets, ignore_index, "cross_entropy");
  Tensor loss, count;
  {
    NoGradGuard no_grad;
    count = counted_targets(r.targets, ignore_index, r.loss.dtype());
    loss = div(sum(r.loss), count);
  }
  if (any_requires_grad({logits})) {
    CrossEntropyRows saved = saved_for_backward(r);
    Dims shape = logits.shape();
    int64_t m = r.loss.numel();
    Tensor saved_count = count.detach();
    record("cross_entropy", {logits, targets}, {loss}, [=](const std::vector<Tensor>& g) -> std::vector<Tensor> {
      // d(sum(loss) / count) / d loss[m] = 1 / count (ignored rows are zeroed by the kernel).
      Tensor gloss = div(g[0], saved_count).expand({m});
      return {cross_entropy_grad(saved, gloss, ignore_index, shape), Tensor()};
    });
  }
  return loss;
}

namespace ops_detail {

Tensor counted_targets(const Tensor& targets, int64_t ignore_index, DType stat) {
  const Device dev = targets.device();
  Tensor ignore = Tensor::full({}, static_cast<double>(ignore_index), DType::i64, dev);
  return maximum(sum(ne(targets, ignore).to(stat)), Tensor::ones({}, stat, dev));
}

}  // namespace ops_detail

}  // namespace ssmtrain
