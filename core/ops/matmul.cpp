// Matrix products: matmul (NumPy semantics with batch broadcasting) and linear, both on
// Backend::gemm. Operands that are transposes of row-major data go to gemm with the
// transpose flag rather than being copied; shared (broadcast) operands get batch stride 0.
#include "core/ops.h"
#include "core/ops/op_common.h"

namespace ssmtrain {

using namespace ops_detail;

namespace {

// One gemm operand: `stored` (Bt, rows, cols) in the layout gemm reads (last-axis stride 1,
// row stride >= row length), `trans` when it holds the transpose of the logical matrix.
struct GemmOperand {
  Tensor stored;
  bool trans = false;
};

bool row_major(const Tensor& m) {  // m (R, C)
  return m.strides()[1] == 1 && m.strides()[0] >= m.size(1);
}

// A 2-D matrix (R, C), any strides, as a gemm operand shared by `batch` products.
GemmOperand matrix_operand(Tensor m, int64_t batch) {
  GemmOperand op;
  int64_t r = m.size(0), c = m.size(1);
  Tensor mt = m.transpose(0, 1);
  if (m.is_contiguous()) {
    op.stored = m.reshape({r, c});  // also normalises the strides of size-1 axes
  } else if (mt.is_contiguous()) {
    op.stored = mt.reshape({c, r});
    op.trans = true;
  } else if (row_major(m)) {
    op.stored = m;  // e.g. a column range of a wider matrix
  } else if (row_major(mt)) {
    op.stored = mt;
    op.trans = true;
  } else {
    op.stored = m.contiguous();
  }
  Tensor one = op.stored.unsqueeze(0);
  op.stored = batch == 1 ? one : one.expand({batch, one.size(1), one.size(2)});
  return op;
}

// x (.., R, C) broadcast to batch + (R, C), as a gemm operand of `batch_count` products.
GemmOperand batched_operand(const Tensor& x, const Dims& batch, int64_t batch_count) {
  int64_t own_batch = 1;
  for (int i = 0; i + 2 < x.dim(); ++i) own_batch *= x.size(i);
  if (own_batch == 1) {
    Tensor m = x;
    while (m.dim() > 2) m = m.select(0, 0);  // drop size-1 batch axes as views
    return matrix_operand(m, batch_count);
  }
  Dims full = batch;
  int64_t r = x.size(-2), c = x.size(-1);
  full.push_back(r);
  full.push_back(c);
  Tensor xe = x.expand(full);
  GemmOperand op;
  Tensor xt = xe.transpose(-1, -2);
  if (xe.is_contiguous()) {
    op.stored = xe.reshape({batch_count, r, c});
  } else if (xt.is_contiguous()) {
    op.stored = xt.reshape({batch_count, c, r});
    op.trans = true;
  } else {
    // Mixed broadcast/strided batch layouts cannot be described by one batch stride.
    op.stored = xe.contiguous().reshape({batch_count, r, c});
  }
  return op;
}

}  // namespace

namespace ops_detail {

Tensor matmul_nograd(const Tensor& a, const Tensor& b) {
  NoGradGuard no_grad;
  Dims batch_a(a.shape().begin(), a.shape().end() - 2), batch_b(b.shape().begin(), b.shape().end() - 2);
  Dims batch = broadcast_shapes(batch_a, batch_b, "matmul");
  int64_t m = a.size(-2), n = b.size(-1);
  int64_t batch_count = batch.numel();
  Tensor out = Tensor::empty({batch_count, m, n}, a.dtype(), a.device());
  if (out.numel() > 0) {  // K = 0 gives zeros (the backend's gemm fills out)
    GemmOperand opa = batched_operand(a, batch, batch_count), opb = batched_operand(b, batch, batch_count);
    backend(a.device()).gemm(opa.stored, opa.trans, opb.stored, opb.trans, out, 1, 0);
  }
  Dims out_shape = batch;
  out_shape.push_back(m);
  out_shape.push_back(n);
  return out.reshape(out_shape);
}

void gemm_2d(const Tensor& a, const Tensor& b, const Tensor& out, double beta) {
  if (out.numel() == 0) return;
  NoGradGuard no_grad;
  Tensor out3 = out.unsqueeze(0);
  GemmOperand opa = matrix_operand(a, 1), opb = matrix_operand(b, 1);
  backend(out.device()).gemm(opa.stored, opa.trans, opb.stored, opb.trans, out3, 1, beta);
}

}  // namespace ops_detail

Tensor matmul(const Tensor& a, const Tensor& b) {
  check_floating(a, "matmul", "a");
  check_floating(b, "matmul", "b");
  check_compatible(a, b, "matmul");
  SSMT_CHECK(a.dim() >= 1 && b.dim() >= 1, "matmul: a ", a.describe(), " and b ", b.describe(),
             ": both operands need at least one dimension");
  Tensor ap, bp;  // operands promoted to >= 2-D: a (K) -> (1, K), b (K) -> (K, 1)
  {
    NoGradGuard no_grad;
    ap = a.dim() == 1 ? a.unsqueeze(0) : a;
    bp = b.dim() == 1 ? b.unsqueeze(1) : b;
  }
  SSMT_CHECK(ap.size(-1) == bp.size(-2), "matmul: a ", a.describe(), " and b ", b.describe(),
             ": inner dimensions differ (", ap.size(-1), " vs ", bp.size(-2), ")");
  Tensor full = matmul_nograd(ap, bp);  // batch + (M, N)
  Dims out_shape = full.shape();
  if (b.dim() == 1) out_shape.erase(out_shape.size() - 1);
  if (a.dim() == 1) out_shape.erase(out_shape.size() - (b.dim() == 1 ? 1 : 2));
  Tensor out;
  {
    NoGradGuard no_grad;
    out = full.reshape(out_shape);
  }
  if (any_requires_grad({a, b})) {
    bool need_a = a.requires_grad(), need_b = b.requires_grad();
    Dims a_shape = a.shape(), b_shape = b.shape(), full_shape = full.shape();
    Tensor saved_a = need_b ? ap.detach() : Tensor(), saved_b = need_a ? bp.detach() : Tensor();
    record("matmul", {a, b}, {out}, [=](const std::vector<Tensor>& g) -> std::vector<Tensor> {
      Tensor gf = g[0].reshape(full_shape);  // (.., M, N)
      Tensor ga, gb;
      if (need_a) {  // ga = g @ b^T, summed over a's broadcast batch axes
        Tensor full_ga = matmul_nograd(gf, saved_b.transpose(-1, -2));
        Dims ap_shape = a_shape;
        if (a_shape.size() == 1) ap_shape.insert(0, 1);
        ga = reduce_grad(full_ga, ap_shape).reshape(a_shape);
      }
      if (need_b) {  // gb = a^T @ g, summed over b's broadcast batch axes
        Dims bp_shape = b_shape;
        if (b_shape.size() == 1) bp_shape.push_back(1);
        int64_t k = saved_a.size(-1), n = gf.size(-1);
        if (bp_shape.size() == 2 && full_shape.size() > 2) {
          // A shared matrix under a batched a: one (K, B*M) @ (B*M, N) product.
          Dims a_full = full_shape;
          a_full[a_full.size() - 1] = k;
          int64_t rows = Dims(full_shape.begin(), full_shape.end() - 1).numel();
          Tensor a_rows = saved_a.expand(a_full).reshape({rows, k}), g_rows = gf.reshape({rows, n});
          gb = matmul_nograd(a_rows.transpose(0, 1), g_rows);
        } else {
          gb = reduce_grad(matmul_nograd(saved_a.transpose(-1, -2), gf), bp_shape);
        }
        gb = gb.reshape(b_shape);
      }
      return {ga, gb};
    });
  }
  return out;
}

namespace {

// The argument checks of linear and linear_split; returns whether the pair is mixed: bf16
// activations with f32 master weights. The product then runs on the weights rounded to bf16,
// as through a cast, but the weight gradient comes out of the GEMM in f32 (bf16 operands,
// f32 accumulation and output): no bf16 copy of it, no cast back, no rounding to bf16.
bool check_linear_args(const Tensor& x, const Tensor& w, const char* op) {
  check_floating(x, op, "x");
  check_floating(w, op, "w");
  const bool mixed = x.dtype() == DType::bf16 && w.dtype() == DType::f32;
  check_compatible(x, w, op, !mixed);
  SSMT_CHECK(w.dim() == 2, op, ": weight ", w.describe(), ": expected a matrix (out_features, in_features)");
  SSMT_CHECK(x.dim() >= 1 && x.size(-1) == w.size(1), op, ": x ", x.describe(), " and weight ", w.describe(),
             ": expected x (.., ", w.size(1), ")");
  return mixed;
}

}  // namespace

Tensor linear(const Tensor& x, const Tensor& w, const Tensor& b) {
  const bool mixed = check_linear_args(x, w, "linear");
  if (b.defined()) {
    check_compatible(x, b, "linear", false);
    SSMT_CHECK(b.dtype() == x.dtype() || b.dtype() == w.dtype(), "linear: bias ", b.describe(), ": expected ",
               dtype_name(x.dtype()), " or ", dtype_name(w.dtype()));
    SSMT_CHECK(b.dim() == 1 && b.size(0) == w.size(0), "linear: bias ", b.describe(), " and weight ",
               w.describe(), ": expected a bias of shape (", w.size(0), ",)");
  }
  int64_t in = w.size(1), out_features = w.size(0);
  Dims x_shape = x.shape(), y_shape = x.shape();
  y_shape[y_shape.size() - 1] = out_features;
  int64_t rows = Dims(x_shape.begin(), x_shape.end() - 1).numel();
  Tensor x_rows, y, wc;
  {
    NoGradGuard no_grad;
    wc = mixed ? w.to(DType::bf16) : w;  // the GEMM operand
    x_rows = x.reshape({rows, in});      // (M, in); copies only when x is not viewable
    Tensor y_rows = Tensor::empty({rows, out_features}, x.dtype(), x.device());
    if (b.defined() && y_rows.numel() > 0)
      backend(x.device()).copy(b.unsqueeze(0).expand(y_rows.shape()), y_rows);  // (converts an f32 bias)
    gemm_2d(x_rows, wc.transpose(0, 1), y_rows, b.defined() ? 1.0 : 0.0);
    y = y_rows.reshape(y_shape);
  }
  if (any_requires_grad({x, w, b})) {
    bool need_x = x.requires_grad(), need_w = w.requires_grad(), need_b = b.defined() && b.requires_grad();
    Tensor saved_x = need_w ? x_rows.detach() : Tensor(), saved_w = need_x ? wc.detach() : Tensor();
    DType dt = x.dtype(), wdt = w.dtype(), bdt = b.defined() ? b.dtype() : dt;
    Device dev = x.device();
    record("linear", {x, w, b}, {y}, [=](const std::vector<Tensor>& g) -> std::vector<Tensor> {
      Tensor gy = g[0].reshape({rows, out_features});
      Tensor gx, gw, gb;
      if (need_x) {  // gx (M, in) = gy @ W, added in the GEMM to x's gradient so far when the tape hands it over
        Tensor acc = take_input_grad(0, x_shape, dt);
        if (acc.defined()) {
          gemm_2d(gy, saved_w, acc.reshape({rows, in}), 1.0);
          gx = acc;
        } else {
          gx = Tensor::empty({rows, in}, dt, dev);
          gemm_2d(gy, saved_w, gx, 0);
          gx = gx.reshape(x_shape);
        }
      }
      if (need_w) {  // gW (out, in) = gy^T @ x, in the weight's dtype (f32 from bf16 operands when mixed)
        gw = Tensor::empty({out_features, in}, wdt, dev);
        gemm_2d(gy.transpose(0, 1), saved_x, gw, 0);
      }
      if (need_b) {
        gb = sum(gy, {0});
        if (gb.dtype() != bdt) gb = gb.to(bdt);
      }
      return {gx, gw, gb};
    });
  }
  return y;
}

std::vector<Tensor> linear_split(const Tensor& x, const Tensor& w, const std::vector<int64_t>& sizes) {
  const bool mixed = check_linear_args(x, w, "linear_split");
  int64_t total = 0;
  for (int64_t n : sizes) {
    SSMT_CHECK(n >= 0, "linear_split: negative block size ", n);
    total += n;
  }
  SSMT_CHECK(!sizes.empty() && total == w.size(0), "linear_split: block sizes sum to ", total, ", weight ",
             w.describe(), " has ", w.size(0), " rows");
  const int64_t in = w.size(1), k = static_cast<int64_t>(sizes.size());
  const Dims x_shape = x.shape();
  const int64_t rows = Dims(x_shape.begin(), x_shape.end() - 1).numel();
  Tensor x_rows, wc;
  std::vector<Tensor> ys;
  {
    NoGradGuard no_grad;
    wc = mixed ? w.to(DType::bf16) : w;  // the GEMM operand
    x_rows = x.reshape({rows, in});
    int64_t r0 = 0;
    for (int64_t n : sizes) {
      Dims y_shape = x_shape;
      y_shape[y_shape.size() - 1] = n;
      Tensor y_rows = Tensor::empty({rows, n}, x.dtype(), x.device());
      gemm_2d(x_rows, wc.narrow(0, r0, n).transpose(0, 1), y_rows, 0);
      ys.push_back(y_rows.reshape(y_shape));
      r0 += n;
    }
  }
  if (any_requires_grad({x, w})) {
    const bool need_x = x.requires_grad(), need_w = w.requires_grad();
    Tensor saved_x = need_w ? x_rows.detach() : Tensor(), saved_w = need_x ? wc.detach() : Tensor();
    const DType dt = x.dtype(), wdt = w.dtype();
    const Device dev = x.device();
    const Dims w_shape = w.shape();
    record("linear_split", {x, w}, ys, [=](const std::vector<Tensor>& g) -> std::vector<Tensor> {
      Tensor gx, gw;
      if (need_x) gx = Tensor::empty({rows, in}, dt, dev);
      if (need_w) gw = Tensor::empty(w_shape, wdt, dev);
      int64_t r0 = 0;
      for (int64_t i = 0; i < k; ++i) {
        const int64_t n = sizes[static_cast<size_t>(i)];
        Tensor gy = g[static_cast<size_t>(i)].reshape({rows, n});
        if (need_x) gemm_2d(gy, saved_w.narrow(0, r0, n), gx, i == 0 ? 0.0 : 1.0);  // gx += gy_i @ W_i
        if (need_w) gemm_2d(gy.transpose(0, 1), saved_x, gw.narrow(0, r0, n), 0);    // dW rows of block i
        r0 += n;
      }
      return {need_x ? gx.reshape(x_shape) : gx, gw};
    });
  }
  return ys;
}

}  // namespace ssmtrain
