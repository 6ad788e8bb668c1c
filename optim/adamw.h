// AdamW (Loshchilov & Hutter): Adam with decoupled weight decay, as torch.optim.AdamW.
//
// For a parameter p with gradient g at its t-th update, with group lr and weight decay wd:
//   p  <- p * (1 - lr * wd)
//   m  <- beta1 * m + (1 - beta1) * g           v <- beta2 * v + (1 - beta2) * g^2
//   p  <- p - lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)
// CPU: one OpenMP loop per tensor. CUDA: one fused multi-tensor kernel per device per step
// (optim/adamw_cuda.cu), which after clip_grad_norm_deferred also applies the clip factor
// and skips the update on the device (step_clipped; optim/optimizer.h on the step counts).
// State: "exp_avg" (m) and "exp_avg_sq" (v), f32.
#pragma once

#include "optim/optimizer.h"

namespace ssmtrain {

struct AdamWOptions {
  double beta1 = 0.9;
  double beta2 = 0.95;  // the Mamba / GPT-3 recipe (SPECS 6); PyTorch's default is 0.999
  double eps = 1e-8;
};

class AdamW : public Optimizer {
 public:
  AdamW(std::vector<ParamGroup> groups, double lr, AdamWOptions options = {});
  void step() override;
  void step_clipped(const DeviceClip& clip) override;
  const char* type_name() const override { return "AdamW"; }
  const AdamWOptions& options() const { return options_; }

 protected:
  std::vector<std::string> buffer_kinds() const override { return {"exp_avg", "exp_avg_sq"}; }

 private:
  // Updates every parameter with a gradient; `clip` (CUDA only) carries the device-side
  // factor and skip flag, and the launch becomes a pending update.
  void update(const DeviceClip* clip);

  AdamWOptions options_;
};

// The CPU update of one tensor (exposed for tests and for the CUDA comparison).
// p, g, m, v: n floats each; bias_correction1/2 = 1 - beta^t.
void adamw_update_cpu(float* p, const float* g, float* m, float* v, int64_t n, float lr, float weight_decay,
                      double beta1, double beta2, float eps, double bias_correction1, double bias_correction2);

}  // namespace ssmtrain
