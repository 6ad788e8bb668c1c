// AdamW: the CPU loop and the dispatch to the fused CUDA kernel.
#include "optim/adamw.h"

#include <cmath>
#include <map>

#include "optim/multi_tensor_cuda.h"

namespace ssmtrain {

void adamw_update_cpu(float* p, const float* g, float* m, float* v, int64_t n, float lr, float weight_decay,
                      double beta1_d, double beta2_d, float eps, double bias_correction1, double bias_correction2) {
  // 1 - beta is formed in double and rounded once: 1 - 0.999f in float is off by 1e-5.
  const float beta1 = static_cast<float>(beta1_d), beta2 = static_cast<float>(beta2_d);
  const float omb1 = static_cast<float>(1.0 - beta1_d), omb2 = static_cast<float>(1.0 - beta2_d);
  const float decay = 1.0f - lr * weight_decay;
  const float step_size = static_cast<float>(lr / bias_correction1);
  const float bc2_sqrt = static_cast<float>(std::sqrt(bias_correction2));
#pragma omp parallel for schedule(static) if (n > 32768)
  for (int64_t i = 0; i < n; ++i) {
    float gi = g[i];
    float mi = beta1 * m[i] + omb1 * gi;
    float vi = beta2 * v[i] + omb2 * gi * gi;
    m[i] = mi;
    v[i] = vi;
    float denom = std::sqrt(vi) / bc2_sqrt + eps;
    p[i] = p[i] * decay - step_size * mi / denom;
  }
}

AdamW::AdamW(std::vector<ParamGroup> groups, double lr, AdamWOptions options)
    : Optimizer(std::move(groups), lr), options_(options) {
  SSMT_CHECK(options.beta1 >= 0 && options.beta1 < 1, "optim.beta1 must be in [0, 1), got ", options.beta1);
  SSMT_CHECK(options.beta2 >= 0 && options.beta2 < 1, "optim.beta2 must be in [0, 1), got ", options.beta2);
  SSMT_CHECK(options.eps > 0, "optim.eps must be positive, got ", options.eps);
}

void AdamW::step() {
  settle_pending(0);  // the bias corrections need the exact step counts
  update(nullptr);
}

void AdamW::step_clipped(const DeviceClip& clip) {
  bool device_side = clip.on_cuda() && !clip.grads_scaled;
  for (const Slot& slot : slots_) device_side = device_side && slot.spec.tensor.device() == clip.status.device();
  if (!device_side) {
    // CPU (or a mix of devices): clipped already, decided on the host; today's update.
    Optimizer::step_clipped(clip);
    return;
  }
  // At most one earlier update may be undecided: its flag selects the bias corrections.
  settle_pending(1);
  update(&clip);
}

void AdamW::update(const DeviceClip* clip) {
  const float beta1 = static_cast<float>(options_.beta1), beta2 = static_cast<float>(options_.beta2);
  const float eps = static_cast<float>(options_.eps);
  const PendingUpdate* previous = pending_.empty() ? nullptr : &pending_.back();
  SSMT_ASSERT(pending_.size() <= 1 && (clip || !previous),
              "AdamW: more updates undecided than the kernel can tell apart");
  // (1 - beta1^t, 1 - beta2^t)
  auto bias_corrections = [&](int64_t t) {
    return std::pair{1.0 - std::pow(options_.beta1, static_cast<double>(t)),
                     1.0 - std::pow(options_.beta2, static_cast<double>(t))};
  };
  std::map<int, std::vector<AdamWTensorArgs>> cuda_batches;  // by device index
  std::vector<size_t> updated;
  for (size_t i = 0; i < slots_.size(); ++i) {
    Slot& slot = slots_[i];
    Tensor g = checked_grad(slot);
    if (!g.defined()) continue;
    ensure_buffers(slot);
    ++slot.step;
    updated.push_back(i);
    const ParamGroup& group = groups()[slot.group];
    float lr = static_cast<float>(group_lr(slot.group));
    float wd = static_cast<float>(group.weight_decay);
    auto [bc1, bc2] = bias_corrections(slot.step);
    const Tensor& p = slot.spec.tensor;
    if (p.device().is_cpu()) {
      adamw_update_cpu(p.data<float>(), g.data<float>(), slot.buffers[0].data<float>(), slot.buffers[1].data<float>(),
                       p.numel(), lr, wd, options_.beta1, options_.beta2, eps, bc1, bc2);
    } else {
      // Had the previous update been skipped, this one would be the slot's step - 1.
      auto [bc1_if_skipped, bc2_if_skipped] =
          previous && previous->touches(i) ? bias_corrections(slot.step - 1) : std::pair{bc1, bc2};
      // The same float step size and sqrt(bc2) as the CPU loop, so both round alike.
      AdamWTensorArgs args{p, g, slot.buffers[0], slot.buffers[1], wd * lr, {}, {}};
      args.step_size[0] = static_cast<float>(lr / bc1);
      args.step_size[1] = static_cast<float>(lr / bc1_if_skipped);
      args.bias_correction2_sqrt[0] = static_cast<float>(std::sqrt(bc2));
      args.bias_correction2_sqrt[1] = static_cast<float>(std::sqrt(bc2_if_skipped));
      cuda_batches[p.device().index].push_back(args);
    }
  }
  // The skip flag starts home before the update runs, so the read does not wait for it.
  AsyncRead status_read = clip ? AsyncRead(clip->status) : AsyncRead();
  for (auto& [device, batch] : cuda_batches) {
#if defined(SSMTRAIN_WITH_CUDA)
    AdamWHyper hyper{beta1, beta2, eps, static_cast<float>(1.0 - options_.beta1),
                     static_cast<float>(1.0 - options_.beta2)};
    if (clip) hyper.clip_status = clip->status.data<double>();
    if (previous) hyper.previous_status = previous->clip_status.data<double>();
    adamw_step_cuda(batch, hyper);
#else
    SSMT_CHECK(false, "AdamW: parameter ", batch.front().param.describe(),
               " is on a CUDA device but ssmtrain was built without CUDA");
#endif
  }
  if (clip) pending_.push_back(PendingUpdate{clip->status, std::move(status_read), std::move(updated)});
}

}  // namespace ssmtrain
