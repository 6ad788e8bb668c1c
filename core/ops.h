// The differentiable op library: every function here works on CPU and CUDA tensors, records
// one tape node when an input requires grad, and checks its arguments, naming the
// offending tensor and the expected shape in a UserError.
//
// Implementations: core/ops/<family>.cpp (autodiff level) on top of core/backend.h.
#pragma once

#include <vector>

#include "core/autograd.h"
#include "core/tensor.h"

namespace ssmtrain {

// ---- elementwise, with NumPy broadcasting (same dtype and device required) ----
Tensor add(const Tensor& a, const Tensor& b);
Tensor sub(const Tensor& a, const Tensor& b);
Tensor mul(const Tensor& a, const Tensor& b);
Tensor div(const Tensor& a, const Tensor& b);
Tensor maximum(const Tensor& a, const Tensor& b);  // gradient to a where a >= b, else b
Tensor minimum(const Tensor& a, const Tensor& b);
Tensor add(const Tensor& a, double s);
Tensor mul(const Tensor& a, double s);
Tensor rsub(const Tensor& a, double s);  // s - a
Tensor rdiv(const Tensor& a, double s);  // s / a

Tensor neg(const Tensor& x);
Tensor exp(const Tensor& x);
Tensor log(const Tensor& x);
Tensor log1p(const Tensor& x);
Tensor sqrt(const Tensor& x);
Tensor rsqrt(const Tensor& x);
Tensor square(const Tensor& x);
Tensor pow(const Tensor& x, double p);
Tensor abs(const Tensor& x);
Tensor clamp(const Tensor& x, double lo, double hi);
Tensor sigmoid(const Tensor& x);
Tensor softplus(const Tensor& x);  // x for x > 20, else log1p(exp(x))
Tensor silu(const Tensor& x);
Tensor gelu(const Tensor& x);      // tanh approximation
Tensor tanh(const Tensor& x);
Tensor relu(const Tensor& x);
Tensor sin(const Tensor& x);  // the sine activation of Hyena's implicit filters

// Comparisons: 1/0 in a's dtype, never differentiable.
Tensor eq(const Tensor& a, const Tensor& b);
Tensor ne(const Tensor& a, const Tensor& b);
Tensor lt(const Tensor& a, const Tensor& b);
Tensor le(const Tensor& a, const Tensor& b);
Tensor gt(const Tensor& a, const Tensor& b);
Tensor ge(const Tensor& a, const Tensor& b);
// cond ? a : b (broadcast); gradient flows to the chosen side.
Tensor where(const Tensor& cond, const Tensor& a, const Tensor& b);
Tensor masked_fill(const Tensor& x, const Tensor& mask, double value);

inline Tensor operator+(const Tensor& a, const Tensor& b) { return add(a, b); }
inline Tensor operator-(const Tensor& a, const Tensor& b) { return sub(a, b); }
inline Tensor operator*(const Tensor& a, const Tensor& b) { return mul(a, b); }
inline Tensor operator/(const Tensor& a, const Tensor& b) { return div(a, b); }
inline Tensor operator-(const Tensor& a) { return neg(a); }
inline Tensor operator+(const Tensor& a, double s) { return add(a, s); }
inline Tensor operator-(const Tensor& a, double s) { return add(a, -s); }
inline Tensor operator*(const Tensor& a, double s) { return mul(a, s); }
inline Tensor operator/(const Tensor& a, double s) { return mul(a, 1.0 / s); }
inline Tensor operator+(double s, const Tensor& a) { return add(a, s); }
inline Tensor operator-(double s, const Tensor& a) { return rsub(a, s); }
inline Tensor operator*(double s, const Tensor& a) { return mul(a, s); }
inline Tensor operator/(double s, const Tensor& a) { return rdiv(a, s); }

// ---- reductions over `axes` (empty = all axes) ----
Tensor sum(const Tensor& x, const Dims& axes = {}, bool keepdim = false);
Tensor mean(const Tensor& x, const Dims& axes = {}, bool keepdim = false);
Tensor max(const Tensor& x, const Dims& axes = {}, bool keepdim = false);  // gradient split among ties
Tensor logsumexp(const Tensor& x, const Dims& axes = {}, bool keepdim = false);
Tensor cumsum(const Tensor& x, int axis, bool reverse = false);

// ---- matrix products ----
// NumPy matmul: (.., M, K) @ (.., K, N) with batch broadcasting; 1-D operands promoted.
Tensor matmul(const Tensor& a, const Tensor& b);
// y (.., out) = x (.., in) @ W^T (W: (out, in)) + b (out); b may be undefined.
// Under bf16 x, W may be f32 (master weights): the product uses W rounded to bf16 and the
// weight gradient comes back in f32 straight from the GEMM (bias: bf16 or f32).
Tensor linear(const Tensor& x, const Tensor& w, const Tensor& b = Tensor());
// The products of x with consecutive row blocks of W (sizes sum to W's rows), as separate
// contiguous tensors (.., sizes[i]): the same values as linear() of each W.narrow, in one
// tape node whose backward accumulates dx over the blocks inside the GEMMs and writes dW
// block by block into one tensor (no per-block gradient buffers, zero fills or adds).
// Same dtype rules as linear; no bias.
std::vector<Tensor> linear_split(const Tensor& x, const Tensor& w, const std::vector<int64_t>& sizes);

// ---- fused ops (one tape node each, hand-written backward) ----
Tensor softmax(const Tensor& x, int axis = -1);
Tensor log_softmax(const Tensor& x, int axis = -1);
// logits (.., V), targets (..) i64 -> scalar f32: mean NLL over targets != ignore_index.
Tensor cross_entropy(const Tensor& logits, const Tensor& targets, int64_t ignore_index = -100);
// As above but returns per-position losses (..) f32 (0 at ignored positions); sum reduction.
Tensor cross_entropy_per_token(const Tensor& logits, const Tensor& targets, int64_t ignore_index = -100);
// The fused tied head + loss: cross_entropy(x @ w^T, targets) over blocks of `chunk_rows`
// rows (<= 0: blocks of about 256 MiB of f32 logits), never materialising all the logits or
// their gradients. x (.., D) float (bf16 for mixed precision: bf16 GEMMs, f32 logits),
// w (V, D) (f32 master weights are cast to x's dtype for the GEMMs; their gradient is
// accumulated in f32), targets (..) i64 -> scalar f32 (f64 for f64 x).
Tensor linear_cross_entropy(const Tensor& x, const Tensor& w, const Tensor& targets, int64_t ignore_index = -100,
                            int64_t chunk_rows = 0);
// weight (V, D), ids (..) i64 -> (.., D). Backward accumulates rows deterministically.
Tensor embedding(const Tensor& weight, const Tensor& ids);
// Normalise over the last axis with fp32 statistics; w (and b) of shape (D) or undefined.
Tensor rms_norm(const Tensor& x, const Tensor& w, double eps = 1e-5);
Tensor layer_norm(const Tensor& x, const Tensor& w, const Tensor& b, double eps = 1e-5);
// The pre-norm residual step, fused: sum = h + y (y of any float dtype, cast up; undefined:
// sum = h) and normed = rms_norm(sum, w, eps) stored in out_dtype (the next mixer's compute
// dtype, so no separate cast). h (.., D), w (D) required. One tape node.
struct AddRmsNorm {
  Tensor sum;     // (.., D) h's dtype
  Tensor normed;  // (.., D) out_dtype
};
AddRmsNorm add_rms_norm(const Tensor& h, const Tensor& y, const Tensor& w, double eps, DType out_dtype);
// Inverted dropout with a Philox mask from gen (advances it by numel); identity when
// !training or p == 0.
Tensor dropout(const Tensor& x, double p, Generator& gen, bool training);

// ---- shape ops ----
Tensor cat(const std::vector<Tensor>& xs, int axis);
Tensor stack(const std::vector<Tensor>& xs, int axis);
// Pads `axis` with `before` and `after` elements of `value`.
Tensor pad(const Tensor& x, int axis, int64_t before, int64_t after, double value = 0);
// out = x indexed along axis by idx (1-D i64).
Tensor index_select(const Tensor& x, int axis, const Tensor& idx);
// out[.., j] = x[.., idx[.., j]] along axis (idx same rank as x).
Tensor gather(const Tensor& x, int axis, const Tensor& idx);
// Differentiable dtype conversion (the mixed-precision cast).
Tensor cast(const Tensor& x, DType dtype);

}  // namespace ssmtrain
