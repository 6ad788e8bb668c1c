// The kernel interface every device implements: raw computations on already-allocated
// tensors, with no autodiff. core/cpu/ (the reference, OpenMP + Eigen) and core/cuda/
// (custom kernels + cuBLAS) each implement it once; the autodiff ops in core/ops/ call
// `backend(device)` and never test the device themselves.
//
// Conventions for every method:
//  - all tensors are on this backend's device; shapes were checked by the caller;
//  - outputs are contiguous unless a comment says otherwise; inputs may be any strided
//    view (including stride-0 broadcast views) unless a comment says "contiguous";
//  - bf16 is loaded as float, computed in float, stored rounded; f64 computes in double;
//    reductions accumulate in float (f32, bf16) or double (f64);
//  - outputs have the dtype of the first input unless stated.
#pragma once

#include <cstdint>

#include "core/tensor.h"

namespace ssmtrain {

// y = f(x; p0, p1). The parameters are used by the scalar forms only.
enum class UnaryOp : uint8_t {
  neg, exp, log, log1p, sqrt, rsqrt, square, abs, sigmoid, softplus, silu, gelu, tanh, relu,
  add_scalar,  // x + p0
  mul_scalar,  // x * p0
  rsub_scalar, // p0 - x
  rdiv_scalar, // p0 / x
  pow_scalar,  // x ^ p0
  clamp,       // min(max(x, p0), p1)
  sin,
};
const char* unary_op_name(UnaryOp op);

// out = a (op) b. Comparisons write 1 or 0 in the output dtype.
enum class BinaryOp : uint8_t { add, sub, mul, div, maximum, minimum, eq, ne, lt, le, gt, ge };
const char* binary_op_name(BinaryOp op);

enum class ReduceOp : uint8_t { sum, max, min };

class Backend {
 public:
  virtual ~Backend() = default;

  // ---- data movement and creation ----
  // dst <- src converted to dst's dtype; same shape; dst may be any non-overlapping view.
  virtual void copy(const Tensor& src, const Tensor& dst) = 0;
  virtual void fill(const Tensor& dst, double value) = 0;                  // dst contiguous
  virtual void arange(const Tensor& dst, double start, double step) = 0;   // dst contiguous, 1-D
  // Element i of dst (contiguous) uses Philox counter offset + i with key seed (core/random.h).
  virtual void fill_uniform(const Tensor& dst, uint64_t seed, uint64_t offset, double low, double high) = 0;
  virtual void fill_normal(const Tensor& dst, uint64_t seed, uint64_t offset, double mean, double std) = 0;
  // Integers uniform in [low, high): low + philox4x32(offset + i, seed).v[2] % (high - low).
  virtual void fill_randint(const Tensor& dst, uint64_t seed, uint64_t offset, int64_t low, int64_t high) = 0;

  // ---- elementwise ----
  // out (shape S) = f(x (S)). Float dtypes only.
  virtual void unary(UnaryOp op, const Tensor& x, const Tensor& out, double p0, double p1) = 0;
  // gx (S) = gy (S) * f'(x (S)). For clamp, the derivative is 1 inside [p0, p1], else 0.
  // For abs, sign(x) (0 at 0); relu, 1 for x > 0.
  virtual void unary_backward(UnaryOp op, const Tensor& x, const Tensor& gy, const Tensor& gx, double p0,
                              double p1) = 0;
  // out (S) = a (S) op b (S); a and b may be broadcast views of out's shape; same dtype.
  virtual void binary(BinaryOp op, const Tensor& a, const Tensor& b, const Tensor& out) = 0;
  // out (S) = cond != 0 ? a : b; cond any dtype; a, b same dtype as out; any views of S.
  virtual void where(const Tensor& cond, const Tensor& a, const Tensor& b, const Tensor& out) = 0;

  // ---- row-wise (x contiguous (M, K), reductions over the last axis) ----
  virtual void reduce_rows(ReduceOp op, const Tensor& x, const Tensor& out) = 0;  // out (M)
  virtual void logsumexp_rows(const Tensor& x, const Tensor& out) = 0;          // out (M)
  // out (M, K) = inclusive cumulative sum along K (from the end when reverse).
  virtual void cumsum_rows(const Tensor& x, const Tensor& out, bool reverse) = 0;
  // y (M, K) = softmax(x) or log_softmax(x) along K.
  virtual void softmax_rows(const Tensor& x, const Tensor& y, bool log) = 0;
  // softmax: gx = y * (gy - sum(gy * y)); log_softmax: gx = gy - exp(y) * sum(gy).
  virtual void softmax_rows_backward(const Tensor& y, const Tensor& gy, const Tensor& gx, bool log) = 0;

  // ---- matrix products ----
  // out (Bt, M, N) = alpha * opA(a) @ opB(b) + beta * out, opX = transpose when trans_x.
  // a: (Bt, M, K), or (Bt, K, M) when trans_a; b: (Bt, K, N), or (Bt, N, K) when trans_b.
  // a and b: last-axis stride 1, row stride >= row length, any batch stride (0 = shared).
  // out contiguous. f32 uses TF32 on CUDA only when allow_tf32(); bf16 accumulates in f32.
  // a and b share one dtype; out has it too, or is f32 under bf16 operands (the mixed form:
  // bf16 tensor-core products accumulated and stored in f32, e.g. weight gradients and logits).
  virtual void gemm(const Tensor& a, bool trans_a, const Tensor& b, bool trans_b, const Tensor& out, double alpha,
                    double beta) = 0;

  // ---- fused losses and norms ----
  // logits (M, V) contiguous, targets (M) i64. loss (M) f32 = lse - logit[target] (0 where
  // target == ignore_index), lse (M) f32 = logsumexp of the row. An out-of-range target
  // (not ignore_index) is reported as a UserError on CPU and skipped (loss 0) on CUDA.
  virtual void cross_entropy_forward(const Tensor& logits, const Tensor& targets, int64_t ignore_index,
                                     const Tensor& loss, const Tensor& lse) = 0;
  // dlogits (M, V) = (softmax(logits) - onehot(target)) * gloss[m]; gloss (M) f32; rows with
  // target == ignore_index get 0. The softmax is recomputed from lse, never stored.
  virtual void cross_entropy_backward(const Tensor& logits, const Tensor& targets, const Tensor& lse,
                                      const Tensor& gloss, int64_t ignore_index, const Tensor& dlogits) = 0;
  // Forward and backward in one pass over each row, for a loss whose gradient is known when
  // the forward runs (a mean loss): loss and lse (M) f32 as cross_entropy_forward, and
  // dlogits (M, V) = (softmax(logits) - onehot(target)) * scale[0], in dlogits' own float
  // dtype (bf16 gradients from f32 logits). scale: (1) float on the device, so no host sync.
  // Rows with target == ignore_index get loss 0 and a zero gradient row.
  virtual void cross_entropy_with_grad(const Tensor& logits, const Tensor& targets, int64_t ignore_index,
                                       const Tensor& scale, const Tensor& loss, const Tensor& lse,
                                       const Tensor& dlogits) = 0;
  // x (M, D) contiguous, w (D) or undefined; y (M, D) = x * rstd * w, rstd (M) f32.
  virtual void rms_norm_forward(const Tensor& x, const Tensor& w, double eps, const Tensor& y,
                                const Tensor& rstd) = 0;
  // gx (M, D) (x's dtype), gw (D) f32 (written, not accumulated; ignored when w undefined).
  virtual void rms_norm_backward(const Tensor& x, const Tensor& w, const Tensor& rstd, const Tensor& gy,
                                 const Tensor& gx, const Tensor& gw) = 0;
  // The pre-norm residual step: s (M, D) f32 = h (M, D) f32 + y (M, D) (any float dtype, or
  // undefined: s = h), n (M, D) (any float dtype) = s * rstd * w, w (D) f32, rstd (M) f32.
  virtual void add_rms_norm_forward(const Tensor& h, const Tensor& y, const Tensor& w, double eps, const Tensor& s,
                                    const Tensor& n, const Tensor& rstd) = 0;
  // Its backward: the norm's input gradient plus gs (f32, undefined = 0) into gh (f32) and/or
  // gy (y's dtype) (either may be undefined), gw (D) f32 written (undefined: skipped).
  virtual void add_rms_norm_backward(const Tensor& s, const Tensor& w, const Tensor& rstd, const Tensor& gn,
                                     const Tensor& gs, const Tensor& gh, const Tensor& gy, const Tensor& gw) = 0;
  // y = (x - mean) * rstd * w + b; w, b (D) or undefined; mean, rstd (M) f32.
  virtual void layer_norm_forward(const Tensor& x, const Tensor& w, const Tensor& b, double eps, const Tensor& y,
                                  const Tensor& mean, const Tensor& rstd) = 0;
  // gw, gb (D) f32, written (ignored when undefined).
  virtual void layer_norm_backward(const Tensor& x, const Tensor& w, const Tensor& mean, const Tensor& rstd,
                                   const Tensor& gy, const Tensor& gx, const Tensor& gw, const Tensor& gb) = 0;

  // ---- indexing (x, out contiguous; idx i64 contiguous) ----
  // out (M, R) = x (N, R) [idx (M)]. Out-of-range indices: UserError on CPU.
  virtual void index_select_rows(const Tensor& x, const Tensor& idx, const Tensor& out) = 0;
  // out (N, R) += g (M, R) at rows idx (M); deterministic: a fixed summation order per row.
  virtual void index_add_rows(const Tensor& g, const Tensor& idx, const Tensor& out) = 0;
  // out (M, J) = x (M, K) [m, idx (M, J)].
  virtual void gather_last(const Tensor& x, const Tensor& idx, const Tensor& out) = 0;
  // out (M, K) += g (M, J) at [m, idx[m, j]]; deterministic.
  virtual void scatter_add_last(const Tensor& g, const Tensor& idx, const Tensor& out) = 0;

  // Wait for all queued work (no-op on CPU).
  virtual void synchronize() = 0;
};

// The backend of a device. CUDA devices throw a UserError when ssmtrain was built
// without CUDA or no GPU is present.
Backend& backend(Device device);

// Matrix-product precision for f32 on CUDA: TF32 tensor cores (fp32 accumulate) when on.
// Off by default so CUDA matches the CPU to fp32 rounding; the trainer turns it on.
bool allow_tf32();
void set_allow_tf32(bool on);

// The part of Backend::gemm that does not depend on the device, called first by every
// backend: checks the ranks, dtypes and shapes (InternalError naming the tensors) and does the
// calls with no product to compute: an empty out, or K = 0 (out = beta * out). Returns false
// when nothing is left to do.
bool gemm_prologue(Backend& be, const Tensor& a, bool trans_a, const Tensor& b, bool trans_b, const Tensor& out,
                   double beta);

// add_rms_norm_forward / _backward composed from copy, binary add and the rms_norm kernels
// of `be`: the CPU's implementation (the same arithmetic as add + rms_norm + casts done
// separately), and the CUDA backend's for dtypes its fused kernels do not take.
void add_rms_norm_forward_composed(Backend& be, const Tensor& h, const Tensor& y, const Tensor& w, double eps,
                                   const Tensor& s, const Tensor& n, const Tensor& rstd);
void add_rms_norm_backward_composed(Backend& be, const Tensor& s, const Tensor& w, const Tensor& rstd,
                                    const Tensor& gn, const Tensor& gs, const Tensor& gh, const Tensor& gy,
                                    const Tensor& gw);

namespace cpu {
Backend& cpu_backend();
}
// Implemented in core/cuda/*.cu; declared unconditionally, defined only in CUDA builds.
namespace cuda {
Backend& cuda_backend(int device);
int device_count();  // 0 when the driver or a GPU is missing (never throws)
// Copies between host and device memory of `device`, ordered on its compute stream.
// memcpy_h2d stages the bytes in pinned memory and returns without waiting for the device
// (up to 16 MiB; larger copies wait); `src` may be reused as soon as it returns.
// memcpy_d2h waits for the copy (and so for all work queued before it).
void memcpy_h2d(void* dst, const void* src, size_t nbytes, int device);
void memcpy_d2h(void* dst, const void* src, size_t nbytes, int device);
// The compute stream of `device` (a cudaStream_t), for kernels launched outside core/.
void* compute_stream(int device);
}  // namespace cuda

}  // namespace ssmtrain
