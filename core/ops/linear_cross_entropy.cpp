// The fused head + loss of a language model: mean cross-entropy of x @ w^T over row blocks,
// so neither the full logits nor their gradient ever exist. At vocabulary 50k and 16k rows
// the unfused form holds 3.3 GB of f32 logits and as much again of logit gradients; here one
// block of about kBlockBytes is alive at a time.
//
// The loss is a mean, so its gradient with respect to the logits is known up to the upstream
// scalar while the forward runs: each block's logits are made (one GEMM), turned into the
// per-row loss and the scaled gradient in one row pass, and consumed at once by the two
// gradient GEMMs (dx block, dw accumulated). The backward only multiplies the saved dx and
// dw by the upstream gradient. Three GEMMs in all, as unfused, and no recompute.
//
// Precision: operands in x's dtype (bf16 under mixed precision: tensor cores), logits and
// loss statistics in f32 (f64 for f64), logit gradients in x's dtype (what the GEMMs take),
// dw accumulated over blocks in f32 (f64 for f64).
#include <algorithm>

#include "core/ops.h"
#include "core/ops/op_common.h"

namespace ssmtrain {

using namespace ops_detail;

namespace {

constexpr int64_t kBlockBytes = int64_t{256} << 20;  // f32 logits per block

int64_t block_rows(int64_t m, int64_t v, int64_t chunk_rows, DType stat) {
  if (chunk_rows > 0) return std::min(chunk_rows, std::max<int64_t>(m, 1));
  const int64_t by_bytes = kBlockBytes / (v * static_cast<int64_t>(dtype_size(stat)));
  return std::clamp<int64_t>(by_bytes, 1, std::max<int64_t>(m, 1));
}

}  // namespace

Tensor linear_cross_entropy(const Tensor& x, const Tensor& w, const Tensor& targets, int64_t ignore_index,
                            int64_t chunk_rows) {
  const char* name = "linear_cross_entropy";
  check_floating(x, name, "x");
  check_floating(w, name, "w");
  check_defined(targets, name, "targets");
  SSMT_CHECK(x.device() == w.device() && x.device() == targets.device(), name, ": x ", x.describe(), ", w ",
             w.describe(), " and targets ", targets.describe(), " must be on one device");
  SSMT_CHECK(targets.dtype() == DType::i64, name, ": targets ", targets.describe(), ": expected dtype i64");
  SSMT_CHECK(w.dim() == 2, name, ": w ", w.describe(), ": expected a matrix (V, D)");
  SSMT_CHECK(x.dim() >= 1 && x.size(-1) == w.size(1), name, ": x ", x.describe(), " and w ", w.describe(),
             ": expected x (.., ", w.size(1), ")");
  Dims expected(x.shape().begin(), x.shape().end() - 1);
  SSMT_CHECK(targets.shape() == expected, name, ": x ", x.describe(), " and targets ", targets.describe(),
             ": expected targets of shape ", expected.str());
  SSMT_CHECK(w.size(0) > 0, name, ": w ", w.describe(), ": the class axis is empty");
  const int64_t m = expected.numel(), d = w.size(1), v = w.size(0);
  const DType cdt = x.dtype(), stat = stat_dtype(cdt);
  const bool need_x = any_requires_grad({x}), need_w = any_requires_grad({w});
  const bool need_grad = need_x || need_w;
  const Device dev = x.device();
  Backend& be = backend(dev);

  Tensor loss, gx, gw;  // gx (M, D) cdt, gw (V, D) stat: the gradients for an upstream 1
  {
    NoGradGuard no_grad;
    Tensor x_rows = x.reshape({m, d}).contiguous();
    Tensor t_rows = targets.reshape({m}).contiguous();
    Tensor wc = w.dtype() == cdt ? w : w.to(cdt);  // (V, D): the GEMM operand
    Tensor count = counted_targets(t_rows, ignore_index, stat);  // on the device, >= 1
    Tensor scale = div(Tensor::ones({}, stat, dev), count).reshape({1});  // (1) stat dtype
    Tensor loss_rows = Tensor::empty({m}, stat, dev), lse_rows = Tensor::empty({m}, stat, dev);
    if (need_x) gx = Tensor::empty({m, d}, cdt, dev);
    if (need_w) gw = Tensor::empty({v, d}, stat, dev);
    const int64_t rows = block_rows(m, v, chunk_rows, stat);
    for (int64_t r0 = 0; r0 < m; r0 += rows) {
      const int64_t n = std::min(rows, m - r0);
      Tensor xb = x_rows.narrow(0, r0, n), tb = t_rows.narrow(0, r0, n);
      Tensor loss_b = loss_rows.narrow(0, r0, n), lse_b = lse_rows.narrow(0, r0, n);
      Tensor logits = Tensor::empty({n, v}, stat, dev);
      gemm_2d(xb, wc.transpose(0, 1), logits, 0);  // (n, V) = xb @ w^T
      if (!need_grad) {
        be.cross_entropy_forward(logits, tb, ignore_index, loss_b, lse_b);
        continue;
      }
      Tensor dlogits = Tensor::empty({n, v}, cdt, dev);
      be.cross_entropy_with_grad(logits, tb, ignore_index, scale, loss_b, lse_b, dlogits);
      logits = Tensor();  // the block's f32 logits go back to the cache before the GEMMs
      if (need_x) gemm_2d(dlogits, wc, gx.narrow(0, r0, n), 0);                        // (n, D)
      if (need_w) gemm_2d(dlogits.transpose(0, 1), xb, gw, r0 == 0 ? 0.0 : 1.0);  // (V, D) +=
    }
    if (m == 0 && need_w) be.fill(gw, 0);
    loss = div(sum(loss_rows), count);
  }
  if (need_grad) {
    const Dims x_shape = x.shape();
    const DType w_dtype = w.dtype();
    record(name, {x, w, targets}, {loss}, [=](const std::vector<Tensor>& g) -> std::vector<Tensor> {
      // Scale by the upstream scalar in the statistics dtype (no host read of g).
      Tensor gs = g[0].to(stat);
      Tensor dx, dw;
      if (gx.defined()) dx = mul(gx.to(stat), gs).to(cdt).reshape(x_shape);
      if (gw.defined()) dw = mul(gw, gs).to(w_dtype);
      return {dx, dw, Tensor()};
    });
  }
  return loss;
}

}  // namespace ssmtrain
