// The device-only activations of the fused SSM kernels (core/math.h: softplus_fast,
// softplus_and_grad_fast, sigmoid_fast, silu_fast; the selective scan, causal conv and gated
// RMSNorm use them) against their values in f64, over the whole range the kernels see and
// past it.
//
// Error bounds, in units of 2^-23 |ref| (an f32 ulp is between 2^-24 and 2^-23 of a value),
// from the steps of each form: expf is within 2 ulp, __fdividef within 2, each rounding 1/2.
//   softplus:  t = e^-|x| (2), 2 + t (1/2, and t's error scaled by t / (2 + t) <= 1/3),
//              s = t / (2 + t) (2), the series in s^2 (about 1.5), 2 s q (1/2): about 5 for
//              x < 0; for x >= 0 the sum x + log1p(t), with log1p(t) <= the sum, adds 1/2.
//              Bound: 8.
//   its derivative: 1 / (1 + t) (2 + 1/2 + t's 2 scaled by t / (1 + t) <= 1/2): 3.5; times t
//              for x < 0: 2 + 3.5 + 1/2 = 6. Bound: 8.
//   sigmoid, silu: 1 + e^-x (2 + 1/2), then the fast division (2): 4.5. Bound: 6.
// Absolute slack near underflow: once 1 + e^-x passes 2^126, __fdividef gives 0 (the values
// there are below 2^-126, times |x| for silu), and for x < -87 softplus and its derivative are
// subnormal (t is): 2^-126 (1 + |x|) covers each case. Above 20, softplus_fast(x) must be x
// and the derivative 1 exactly: what the library form (threshold 20) gives.
#include <doctest/doctest.h>

#include <cuda_runtime.h>

#include <cmath>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "core/math.h"
#include "core/random.h"

namespace {

__global__ void eval_fast_math(const float* x, float* out, int n) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n) return;
  float v, g;
  ssmtrain::math::softplus_and_grad_fast(x[i], v, g);
  out[5 * i + 0] = v;
  out[5 * i + 1] = g;
  out[5 * i + 2] = ssmtrain::math::softplus_fast(x[i]);
  out[5 * i + 3] = ssmtrain::math::sigmoid_fast(x[i]);
  out[5 * i + 4] = ssmtrain::math::silu_fast(x[i]);
}

double softplus64(double x) { return x > 0 ? x + std::log1p(std::exp(-x)) : std::log1p(std::exp(x)); }
double sigmoid64(double x) { return x >= 0 ? 1 / (1 + std::exp(-x)) : std::exp(x) / (1 + std::exp(x)); }

}  // namespace

TEST_CASE("cuda fast softplus, sigmoid and silu of the SSM kernels are within a few ulp of f64") {
  if (!ssmtrain::cuda_available()) {
    MESSAGE("CUDA tests skipped: no GPU");
    return;
  }
  std::vector<float> xs = {0.0f, -0.0f, 1e-30f, -1e-30f, 1e-7f, -1e-7f, 0.5f, -0.5f, 1.0f, -1.0f,
                           19.999f, 20.0f, 20.001f, 30.0f, 87.0f, 88.5f, 100.0f, -19.999f, -20.0f,
                           -87.0f, -87.5f, -88.5f, -100.0f, -104.0f, -200.0f};
  ssmtrain::Generator gen(2207);
  for (int i = 0; i < 200000; ++i) xs.push_back(-110.0f + 220.0f * gen.uniform());  // every regime
  for (int i = 0; i < 200000; ++i) xs.push_back(-8.0f + 10.0f * gen.uniform());     // where dt lives
  const int n = static_cast<int>(xs.size());
  float *dx = nullptr, *dout = nullptr;
  REQUIRE(cudaMalloc(&dx, sizeof(float) * n) == cudaSuccess);
  REQUIRE(cudaMalloc(&dout, sizeof(float) * 5 * n) == cudaSuccess);
  REQUIRE(cudaMemcpy(dx, xs.data(), sizeof(float) * n, cudaMemcpyHostToDevice) == cudaSuccess);
  eval_fast_math<<<(n + 255) / 256, 256>>>(dx, dout, n);
  std::vector<float> out(static_cast<size_t>(5) * n);
  REQUIRE(cudaMemcpy(out.data(), dout, sizeof(float) * 5 * n, cudaMemcpyDeviceToHost) == cudaSuccess);
  cudaFree(dx);
  cudaFree(dout);

  const double ulp = std::ldexp(1.0, -23), tiny = std::ldexp(1.0, -126);
  const char* names[5] = {"softplus (with grad)", "softplus' ", "softplus", "sigmoid", "silu"};
  const double bound[5] = {8, 8, 8, 6, 6};
  int bad[5] = {0, 0, 0, 0, 0}, above_threshold = 0;
  double worst[5] = {0, 0, 0, 0, 0};
  for (int i = 0; i < n; ++i) {
    const double x = xs[i];
    const double ref[5] = {softplus64(x), sigmoid64(x), softplus64(x), sigmoid64(x), x * sigmoid64(x)};
    for (int k = 0; k < 5; ++k) {
      const double got = out[5 * i + k], err = std::fabs(got - ref[k]);
      const double tol = bound[k] * ulp * std::fabs(ref[k]) + tiny * (1 + std::fabs(x));
      if (std::fabs(ref[k]) > 1e-30) worst[k] = std::max(worst[k], err / (ulp * std::fabs(ref[k])));
      if (!(err <= tol) && ++bad[k] <= 3) MESSAGE(std::string(names[k]), "(", xs[i], ") = ", got, ", f64 ", ref[k]);
    }
    if (xs[i] > 20.0f) {  // the threshold of softplus(): bit for bit the library form's values
      const bool same = out[5 * i] == xs[i] && out[5 * i + 2] == xs[i] && out[5 * i + 1] == 1.0f;
      if (!same && ++above_threshold <= 3) MESSAGE("above 20: x ", xs[i], " gives ", out[5 * i], ", ", out[5 * i + 1]);
    }
  }
  for (int k = 0; k < 5; ++k) {
    MESSAGE(std::string(names[k]), ": worst ", worst[k], " x 2^-23 relative (bound ", bound[k], ")");
    CHECK(bad[k] == 0);
  }
  CHECK(above_threshold == 0);
}
