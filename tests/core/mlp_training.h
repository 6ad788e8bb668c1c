// A small end-to-end training run shared by the CPU training test (test_autograd.cpp) and
// the CUDA-vs-CPU comparison (test_ops_cuda.cpp): a 3-layer MLP (linear-gelu-linear-gelu-
// linear) fitted by plain SGD to random regression data from a fixed teacher function.
// Data and initial parameters are drawn on the host, so every device starts identically.
#pragma once

#include <cmath>
#include <vector>

#include "core/ops.h"
#include "gradcheck.h"

namespace ssmtrain::mlp_test {

struct MlpRun {
  std::vector<Tensor> params;  // W1, b1, W2, b2, W3, b3 after training, on the host
  std::vector<double> losses;  // loss before each step
};

// Trains for `steps` SGD steps on `device`, in `dtype` throughout (data drawn in f32).
inline MlpRun train_mlp(Device device, int steps = 200, double lr = 0.5, DType dtype = DType::f32) {
  constexpr int64_t n = 64, in = 8, hidden = 32, out = 2;
  Generator gen(2024);
  Tensor x = random_tensor({n, in}, gen, DType::f32, device).to(dtype);
  // Teacher: a smooth nonlinear function of x, so the MLP has something to fit.
  Tensor teacher = random_tensor({out, in}, gen, DType::f32, device, -1.5, 1.5).to(dtype);
  Tensor y;
  {
    NoGradGuard no_grad;
    y = tanh(linear(x, teacher)) * 1.5;
  }
  auto init = [&](Dims shape, int64_t fan_in) {
    double bound = 1.0 / std::sqrt(static_cast<double>(fan_in));
    Tensor p = random_tensor(shape, gen, DType::f32, device, -bound, bound).to(dtype);
    p.requires_grad_();
    return p;
  };
  std::vector<Tensor> params{init({hidden, in}, in),         init({hidden}, in),
                             init({hidden, hidden}, hidden), init({hidden}, hidden),
                             init({out, hidden}, hidden),    init({out}, hidden)};
  MlpRun run;
  for (int step = 0; step < steps; ++step) {
    Tensor h = gelu(linear(x, params[0], params[1]));
    h = gelu(linear(h, params[2], params[3]));
    Tensor pred = linear(h, params[4], params[5]);
    Tensor loss = mean(square(pred - y));
    run.losses.push_back(loss.item<double>());
    backward(loss);
    NoGradGuard no_grad;
    for (Tensor& p : params) {
      Tensor updated = p - p.grad() * lr;
      p = updated.detach();
      p.requires_grad_();
    }
  }
  for (const Tensor& p : params) run.params.push_back(p.to(Device::cpu()).detach());
  return run;
}

}  // namespace ssmtrain::mlp_test
