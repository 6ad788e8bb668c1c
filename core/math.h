// The scalar math of the activations, written once for the host and the device (SSMT_HD):
// sigmoid, softplus, silu, gelu and their derivatives. The elementwise ops (CPU:
// core/cpu/elementwise.cpp, CUDA: core/cuda/math.cuh) and the SSM kernels of both backends
// (ssm/kernels) all call these. T is the compute type: float (for f32 and bf16) or double.
//
//   sigmoid(x)  = 1 / (1 + e^-x) for x >= 0, e^x / (1 + e^x) otherwise (no overflow, and
//                 no flush to zero before e^x itself underflows)
//   softplus(x) = x for x > 20 (the threshold of the reference Mamba code), else log1p(e^x)
//   silu(x)     = x sigmoid(x)
//   gelu(x)     = 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))   (the tanh form: the one
//                 GELU of the framework, docs/s4.md says why)
//
// Hot loops (the scans and the causal conv, forward and backward) use the branch-free
// sigmoid 1 / (1 + e^-x) instead, with the exponential as a parameter: no branch, so CPU
// loops vectorise with exp_vec and warps do not diverge. It is as safe at the extremes
// (e^-x = inf gives 0) and differs from the two-branch form only in rounding, and below
// x = -88 in f32, where it gives 0 rather than a denormal.
//
// Exponentials: exp_lib is the accurate library function (std::exp on the host; expf / exp
// on the device, never the __expf intrinsic), exp_vec a vectorisable f32 exp for CPU loops.
// Device-only fast forms (gelu_fast) say so in their name and their comment.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#include "core/random.h"  // SSMT_HD

namespace ssmtrain::math {

// ---- library functions, by type and side ----

SSMT_HD float exp_lib(float x) {
#if defined(__CUDA_ARCH__)
  return ::expf(x);
#else
  return std::exp(x);
#endif
}
SSMT_HD double exp_lib(double x) {
#if defined(__CUDA_ARCH__)
  return ::exp(x);
#else
  return std::exp(x);
#endif
}
SSMT_HD float log1p_lib(float x) {
#if defined(__CUDA_ARCH__)
  return ::log1pf(x);
#else
  return std::log1p(x);
#endif
}
SSMT_HD double log1p_lib(double x) {
#if defined(__CUDA_ARCH__)
  return ::log1p(x);
#else
  return std::log1p(x);
#endif
}
SSMT_HD float tanh_lib(float x) {
#if defined(__CUDA_ARCH__)
  return ::tanhf(x);
#else
  return std::tanh(x);
#endif
}
SSMT_HD double tanh_lib(double x) {
#if defined(__CUDA_ARCH__)
  return ::tanh(x);
#else
  return std::tanh(x);
#endif
}

// e^x in a form the compiler vectorises (host only: no library call, no branches), for the
// per-state decays exp(delta * A) of the CPU scans. x = k ln2 + r with k = round(x log2 e)
// (rounded by the 1.5 * 2^23 trick, exact under the default rounding mode) and ln2 split in
// two parts so that r is exact; e^r for |r| <= ln2 / 2 by the degree-6 polynomial of Cephes'
// expf (relative error about 1 ulp); 2^k built from the exponent bits. x below -87.3 gives
// 0, above 88.3 gives +inf (e^x itself overflows only above 88.72), NaN gives NaN. f64 uses
// std::exp.
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

// The exponentials as arguments of the branch-free forms below.
struct LibExp {
  template <typename T> SSMT_HD T operator()(T x) const { return exp_lib(x); }
};
struct VecExp {  // host only
  float operator()(float x) const { return exp_vec(x); }
  double operator()(double x) const { return exp_vec(x); }
};

// ---- the activations and their derivatives ----

template <typename T> SSMT_HD T sigmoid(T x) {
  if (x >= T(0)) return T(1) / (T(1) + exp_lib(-x));
  const T e = exp_lib(x);
  return e / (T(1) + e);
}
template <typename T> SSMT_HD T sigmoid_grad(T x) {
  const T s = sigmoid(x);
  return s * (T(1) - s);
}

template <typename T> SSMT_HD T softplus(T x) { return x > T(20) ? x : log1p_lib(exp_lib(x)); }
// d softplus / dx, consistent with the threshold (1 above it).
template <typename T> SSMT_HD T softplus_grad(T x) { return x > T(20) ? T(1) : sigmoid(x); }
// Both from one exponential: softplus' = e^x / (1 + e^x) (the two-branch sigmoid's form for
// x < 0; up to the threshold e^x <= e^20, so it cannot overflow).
template <typename T> SSMT_HD void softplus_and_grad(T x, T& value, T& grad) {
  if (x > T(20)) {
    value = x, grad = T(1);
    return;
  }
  const T e = exp_lib(x);
  value = log1p_lib(e);
  grad = e / (T(1) + e);
}

template <typename T> SSMT_HD T silu(T x) { return x * sigmoid(x); }
// d silu / dx = s (1 + x (1 - s)), s = sigmoid(x); the first form for a caller that has s
// (from either sigmoid).
template <typename T> SSMT_HD T silu_grad(T x, T s) { return s * (T(1) + x * (T(1) - s)); }
template <typename T> SSMT_HD T silu_grad(T x) { return silu_grad(x, sigmoid(x)); }

// sqrt(2 / pi) (x + 0.044715 x^3): the argument of the tanh.
template <typename T> SSMT_HD T gelu_inner(T x) {
  return T(0.7978845608028654) * (x + T(0.044715) * x * x * x);
}
template <typename T> SSMT_HD T gelu(T x) { return T(0.5) * x * (T(1) + tanh_lib(gelu_inner(x))); }
template <typename T> SSMT_HD T gelu_grad(T x) {
  const T t = tanh_lib(gelu_inner(x));
  const T dinner = T(0.7978845608028654) * (T(1) + T(3 * 0.044715) * x * x);
  return T(0.5) * (T(1) + t) + T(0.5) * x * (T(1) - t * t) * dinner;
}

// ---- branch-free forms for the hot loops (see the top of the file) ----

template <typename T, typename Exp = LibExp> SSMT_HD T sigmoid_branchless(T x, Exp exp = {}) {
  return T(1) / (T(1) + exp(-x));
}
template <typename T, typename Exp = LibExp> SSMT_HD T silu_branchless(T x, Exp exp = {}) {
  return x * sigmoid_branchless(x, exp);
}

#if defined(__CUDACC__)
// Device only: gelu for bf16 results, from the identity 0.5 (1 + tanh(u)) = sigmoid(2u):
// gelu(x) = x / (1 + exp(-2u)) with the fast exponential and division (__expf, __fdividef).
// That is a third of tanhf's instructions, and the bf16 kernel (half the bytes per element
// of f32) is otherwise compute-bound. No cancellation: relative error ~1e-6, far below
// bf16's half ulp (2e-3). For u very negative exp(-2u) overflows and x / inf gives the
// correct limit 0.
__device__ __forceinline__ float gelu_fast(float x) {
  return __fdividef(x, 1.0f + __expf(-2.0f * gelu_inner(x)));
}

// Device only, for the per-element work of the fused SSM kernels (selective scan, causal conv,
// gated RMSNorm; f32 arithmetic whatever the storage type). The library's log1pf and IEEE
// division cost about 50 instructions per element in the scan, as much as the recurrence
// itself; these forms take about 20 and stay within a few ulp of the library's
// (tests/ssm/test_fast_math_cuda.cu checks them against the f64 values).
//
// sigmoid(x) = 1 / (1 + e^-x) with the library exponential and the fast reciprocal
// (__fdividef: within 2 ulp). For x < -87 the denominator passes 2^126 and the result is 0,
// the limit; e^-x = inf gives 1 / inf = 0 too.
__device__ __forceinline__ float sigmoid_fast(float x) { return __fdividef(1.0f, 1.0f + expf(-x)); }
__device__ __forceinline__ float silu_fast(float x) { return __fdividef(x, 1.0f + expf(-x)); }
// softplus(x) = max(x, 0) + log1p(t), t = e^-|x| in (0, 1], branch-free, with
// log1p(t) = 2 atanh(s), s = t / (2 + t) <= 1/3, summed to s^15/15 (the first term left
// out is below 4e-9 of the sum) by Horner's rule. Above the threshold 20 of softplus(),
// x + log1p(e^-x) rounds to x (e^-20 = 2e-9 is under half an ulp of 20), and the derivative
// sigmoid(x) = 1 / (1 + t) (x >= 0) or t / (1 + t) (x < 0) rounds to 1: both agree with
// softplus() and softplus_grad() there, bit for bit.
__device__ __forceinline__ float log1p_unit(float t, float& inv1p) {  // t in [0, 1]
  const float s = __fdividef(t, 2.0f + t), s2 = s * s;
  float q = 1.0f / 15;
  q = fmaf(q, s2, 1.0f / 13);
  q = fmaf(q, s2, 1.0f / 11);
  q = fmaf(q, s2, 1.0f / 9);
  q = fmaf(q, s2, 1.0f / 7);
  q = fmaf(q, s2, 1.0f / 5);
  q = fmaf(q, s2, 1.0f / 3);
  q = fmaf(q, s2, 1.0f);
  inv1p = __fdividef(1.0f, 1.0f + t);
  return 2.0f * s * q;
}
__device__ __forceinline__ float softplus_fast(float x) {
  float unused;
  return fmaxf(x, 0.0f) + log1p_unit(expf(-fabsf(x)), unused);
}
__device__ __forceinline__ void softplus_and_grad_fast(float x, float& value, float& grad) {
  const float t = expf(-fabsf(x));
  float r;
  value = fmaxf(x, 0.0f) + log1p_unit(t, r);
  grad = x >= 0.0f ? r : t * r;
}
#endif

}  // namespace ssmtrain::math
