// Pieces shared by the SSM ops of ssm/kernels/ (selective scan, SSD, causal conv, linear
// scan): the scalar math every kernel uses (softplus with the reference threshold, sigmoid,
// silu and their derivatives), the strided view of a (B, L, ...) sequence tensor that the
// params structs carry, and the argument checks whose messages name the op, the tensor and
// the expected shape, e.g.
//   "selective_scan: Bm (2, 16, 3, 8) f32 cpu: expected (B, L, G, N) = (2, 16, 1, 8)".
//
// Dtype convention of every op here: sequence tensors (activations) are f32, bf16 or f64 and
// share one dtype; parameters and recurrent states are in the compute dtype (f64 for f64
// inputs, f32 otherwise), so bf16 activations are scanned in fp32.
#pragma once

#include <vector>

#include <cmath>
#include <cstdint>
#include <cstring>

#include "core/tensor.h"

namespace ssmtrain {

// A (B, L, ...) tensor as a kernel sees it: element i of the contiguous trailing block at
// (b, t) lives at data[b * batch_stride + t * seq_stride + i]. Batch and time may be strided
// (a slice of a wider projection output needs no copy); the trailing axes are contiguous.
struct SeqView {
  void* data = nullptr;
  int64_t batch_stride = 0;
  int64_t seq_stride = 0;
};

namespace ssm_math {

// e^x in a form the compiler vectorises (no library call, no branches), for the per-state
// decays exp(delta * A) of the scans. x = k ln2 + r with k = round(x log2 e) (rounded by the
// 1.5 * 2^23 trick, exact under the default rounding mode) and ln2 split in two parts so that
// r is exact; e^r for |r| <= ln2 / 2 by the degree-6 polynomial of Cephes' expf (relative
// error about 1 ulp); 2^k built from the exponent bits. x below -87.3 gives 0, above 88.3
// gives +inf (e^x itself overflows only above 88.72), NaN gives NaN. f64 uses std::exp.
inline float exp_vec(float x) {
  float xc = x < -87.3f ? -87.3f : x;  // ternaries, not fmin/fmax: a NaN stays NaN
  xc = xc > 88.3f ? 88.3f : xc;
  const float magic = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer
  const float kf = (xc * 1.44269504088896341f + magic) - magic;
  const float r = (xc - kf * 0.693359375f) - kf * -2.12194440e-4f;
  float q = 1.9875691500e-4f;
  q = q * r + 1.3981999507e-3f;
  q = q * r + 8.3334519073e-3f;
  q = q * r + 4.1665795894e-2f;
  q = q * r + 1.6666665459e-1f;
  q = q * r + 5.0000001201e-1f;
  const float er = q * (r * r) + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(kf) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof scale);
  const float y = er * scale;
  return x < -87.3f ? 0.0f : x > 88.3f ? HUGE_VALF : y;
}
inline double exp_vec(double x) { return std::exp(x); }

// softplus as the reference code computes it: x above 20, else log1p(exp(x)).
template <typename T> inline T softplus(T x) { return x > T(20) ? x : std::log1p(std::exp(x)); }
// d softplus / dx, consistent with the threshold (1 above it).
template <typename T> inline T softplus_grad(T x) { return x > T(20) ? T(1) : T(1) / (T(1) + std::exp(-x)); }
// Both from one exponential: softplus' = e^x / (1 + e^x) = sigmoid(x).
template <typename T> inline void softplus_and_grad(T x, T& value, T& grad) {
  if (x > T(20)) {
    value = x, grad = T(1);
    return;
  }
  const T e = std::exp(x);
  value = std::log1p(e);
  grad = e / (T(1) + e);
}
// exp_vec: vectorisable in f32 (see above), the library's exp in f64.
template <typename T> inline T sigmoid(T x) { return T(1) / (T(1) + exp_vec(-x)); }
template <typename T> inline T silu(T x) { return x * sigmoid(x); }
// d silu / dx = s (1 + x (1 - s)), s = sigmoid(x); the second form for a caller that has s.
template <typename T> inline T silu_grad(T x, T s) { return s * (T(1) + x * (T(1) - s)); }
template <typename T> inline T silu_grad(T x) { return silu_grad(x, sigmoid(x)); }

}  // namespace ssm_math

namespace ssm_detail {

// f64 for f64, f32 for f32 and bf16: the dtype of parameters, states and accumulators.
inline DType compute_dtype(DType t) { return t == DType::f64 ? DType::f64 : DType::f32; }

// The argument checks. `names` spells the expected axes, e.g. "(B, L, D)".
void check_present(const char* op, const char* arg, const Tensor& t);
void check_rank(const char* op, const char* arg, const Tensor& t, int rank, const char* names);
void check_shape(const char* op, const char* arg, const Tensor& t, const Dims& expected, const char* names);
// t on `device`, naming `ref` (the tensor that fixed the device).
void check_device(const char* op, const char* arg, const Tensor& t, Device device, const char* ref);
// t of dtype `dtype`, naming `ref` (the tensor that fixed the dtype).
void check_dtype(const char* op, const char* arg, const Tensor& t, DType dtype, const char* ref);
void check_floating_arg(const char* op, const char* arg, const Tensor& t);
// The UserError for ops whose CUDA kernel is not in this build yet.
[[noreturn]] void throw_cuda_not_built(const char* op, const Tensor& t);

// t itself when its last `inner_dims` axes are contiguous (any strides for the others),
// else a contiguous copy (recorded on the tape like any copy).
Tensor with_contiguous_rows(const Tensor& t, int inner_dims);
// The SeqView of a (B, L, ...) tensor whose trailing axes are contiguous.
SeqView seq_view(const Tensor& t);
// t.detach() or undefined: what a backward closure keeps (data, no history).
Tensor saved(const Tensor& t);
// True when t is defined and requires grad (decides which gradients a backward computes).
bool wants_grad(const Tensor& t);

}  // namespace ssm_detail

// dst[i] = sum over b < batches of part[b * width + i], summed in batch order (the CPU
// kernels' deterministic reduction of per-batch gradient partials); no-op for a null dst.
template <typename Acc>
void sum_batch_partials(const std::vector<Acc>& part, int64_t batches, int64_t width, void* dst_raw) {
  if (!dst_raw) return;
  Acc* dst = static_cast<Acc*>(dst_raw);
  for (int64_t i = 0; i < width; ++i) {
    Acc acc = 0;
    for (int64_t b = 0; b < batches; ++b) acc += part[b * width + i];
    dst[i] = acc;
  }
}

}  // namespace ssmtrain
