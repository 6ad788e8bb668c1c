// SGD with momentum, as torch.optim.SGD (nesterov off):
//   g <- g + wd * p                          (coupled L2 weight decay, PyTorch's SGD)
//   b <- g at the first update, else momentum * b + (1 - dampening) * g
//   p <- p - lr * b                          (p - lr * g when momentum == 0)
// State: "momentum_buffer" (f32) when momentum > 0. Runs on any device through core ops;
// after clip_grad_norm_deferred it reads the skip flag on the host (Optimizer::step_clipped:
// one wait per step on CUDA, unlike AdamW).
#pragma once

#include "optim/optimizer.h"

namespace ssmtrain {

struct SGDOptions {
  double momentum = 0.9;
  double dampening = 0.0;
};

class SGD : public Optimizer {
 public:
  SGD(std::vector<ParamGroup> groups, double lr, SGDOptions options = {});
  void step() override;
  const char* type_name() const override { return "SGD"; }
  const SGDOptions& options() const { return options_; }

 protected:
  std::vector<std::string> buffer_kinds() const override;

 private:
  SGDOptions options_;
};

}  // namespace ssmtrain
