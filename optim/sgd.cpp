// SGD with momentum, written with core ops so it runs wherever the parameters live.
#include "optim/sgd.h"

#include "core/autograd.h"
#include "core/backend.h"
#include "core/ops.h"

namespace ssmtrain {

SGD::SGD(std::vector<ParamGroup> groups, double lr, SGDOptions options)
    : Optimizer(std::move(groups), lr), options_(options) {
  SSMT_CHECK(options.momentum >= 0 && options.momentum < 1, "optim.momentum must be in [0, 1), got ",
             options.momentum);
  SSMT_CHECK(options.dampening >= 0 && options.dampening <= 1, "optim.dampening must be in [0, 1], got ",
             options.dampening);
}

std::vector<std::string> SGD::buffer_kinds() const {
  if (options_.momentum > 0) return {"momentum_buffer"};
  return {};
}

void SGD::step() {
  NoGradGuard no_grad;
  for (Slot& slot : slots_) {
    Tensor g = checked_grad(slot);
    if (!g.defined()) continue;
    const Tensor p = slot.spec.tensor.detach();
    const double wd = groups()[slot.group].weight_decay;
    const double lr = group_lr(slot.group);
    if (wd != 0) g = add(g, mul(p, wd));
    Tensor direction = g;
    if (options_.momentum > 0) {
      bool first = slot.buffers.empty();
      ensure_buffers(slot);
      Tensor& buf = slot.buffers[0];
      Tensor next = first ? g : add(mul(buf, options_.momentum), mul(g, 1.0 - options_.dampening));
      backend(p.device()).copy(next, buf);
      direction = buf;
    }
    backend(p.device()).copy(sub(p, mul(direction, lr)), p);
    ++slot.step;
  }
}

}  // namespace ssmtrain
