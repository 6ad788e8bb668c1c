// Groups, learning rates and state bookkeeping shared by every optimizer.
#include "optim/optimizer.h"

#include <algorithm>
#include <cmath>
#include <map>

#include "core/autograd.h"
#include "core/backend.h"

namespace ssmtrain {

Optimizer::Optimizer(std::vector<ParamGroup> groups, double base_lr)
    : groups_(std::move(groups)), base_lr_(base_lr), lr_(base_lr) {
  SSMT_CHECK(base_lr >= 0, "optim.lr must be >= 0, got ", base_lr);
  std::map<std::string, size_t> names;
  for (size_t g = 0; g < groups_.size(); ++g) {
    const ParamGroup& group = groups_[g];
    SSMT_CHECK(group.weight_decay >= 0, "parameter group '", group.name, "': weight_decay must be >= 0, got ",
               group.weight_decay);
    SSMT_CHECK(group.lr_scale >= 0 && (!group.lr || *group.lr >= 0), "parameter group '", group.name,
               "': learning rates must be >= 0");
    for (const ParamSpec& p : group.params) {
      const Tensor& t = p.tensor;
      SSMT_CHECK(t.defined(), "parameter '", p.name, "' is undefined");
      SSMT_CHECK(t.dtype() == DType::f32, "optimizer: parameter ", t.describe(),
                 " must be f32 (master weights are kept in f32)");
      SSMT_CHECK(t.is_contiguous() && t.is_leaf(), "optimizer: parameter ", t.describe(),
                 " must be a contiguous leaf tensor");
      SSMT_CHECK(names.emplace(p.name, g).second, "optimizer: parameter name '", p.name,
                 "' appears twice (in groups '", groups_[names[p.name]].name, "' and '", group.name, "')");
      slots_.push_back(Slot{p, g, 0, {}});
    }
  }
}

void Optimizer::zero_grad() {
  for (Slot& s : slots_) s.spec.tensor.zero_grad();
}

void Optimizer::set_lr(double lr) {
  SSMT_CHECK(lr >= 0 && std::isfinite(lr), "optimizer: learning rate must be finite and >= 0, got ", lr);
  lr_ = lr;
}

double Optimizer::group_lr(size_t group) const {
  SSMT_ASSERT(group < groups_.size());
  const ParamGroup& g = groups_[group];
  if (!g.lr) return lr_ * g.lr_scale;
  // An absolute group lr follows the schedule's shape: scaled by lr / base_lr.
  return base_lr_ > 0 ? *g.lr * (lr_ / base_lr_) : *g.lr;
}

std::vector<Tensor> Optimizer::parameters() const {
  std::vector<Tensor> out;
  for (const Slot& s : slots_) out.push_back(s.spec.tensor);
  return out;
}

void Optimizer::step_clipped(const DeviceClip& clip) {
  apply_clip_scale(parameters(), clip);
  if (clip.read().skip) return;
  step();
}

bool Optimizer::PendingUpdate::touches(size_t slot) const {
  return std::binary_search(slots.begin(), slots.end(), slot);
}

void Optimizer::settle_pending(size_t max_unsettled) {
  while (!pending_.empty()) {
    PendingUpdate& oldest = pending_.front();
    if (pending_.size() <= max_unsettled && !oldest.status.ready()) break;
    if (oldest.status.value(kClipSkip) != 0.0) {
      for (size_t i : oldest.slots) {
        SSMT_ASSERT(slots_[i].step > 0, "a skipped update of '", slots_[i].spec.name, "' was never counted");
        --slots_[i].step;
      }
    }
    pending_.pop_front();
  }
}

int64_t Optimizer::step_count() const {
  SSMT_ASSERT(pending_.empty(), "Optimizer::step_count: call resolve_pending() first");
  int64_t n = 0;
  for (const Slot& s : slots_) n = std::max(n, s.step);
  return n;
}

void Optimizer::ensure_buffers(Slot& slot) {
  if (!slot.buffers.empty()) return;
  const Tensor& p = slot.spec.tensor;
  for (const std::string& kind : buffer_kinds())
    slot.buffers.push_back(Tensor::zeros(p.shape(), DType::f32, p.device()).set_name(p.name() + "." + kind));
}

Tensor Optimizer::checked_grad(const Slot& slot) const {
  const Tensor& p = slot.spec.tensor;
  Tensor g = p.grad();
  if (!g.defined()) return g;
  SSMT_CHECK(g.shape() == p.shape() && g.dtype() == p.dtype() && g.device() == p.device(), "optimizer: gradient ",
             g.describe(), " does not match parameter ", p.describe());
  if (!g.is_contiguous()) {
    NoGradGuard no_grad;
    g = g.contiguous();
  }
  return g;
}

std::vector<StateTensor> Optimizer::export_state() const {
  SSMT_ASSERT(pending_.empty(), "Optimizer::export_state: call resolve_pending() first");
  std::vector<StateTensor> out;
  std::vector<std::string> kinds = buffer_kinds();
  for (const Slot& s : slots_) {
    if (s.step == 0) continue;
    out.push_back({s.spec.name, "step", Tensor::scalar(static_cast<double>(s.step), DType::i64)});
    for (size_t k = 0; k < s.buffers.size(); ++k) out.push_back({s.spec.name, kinds[k], s.buffers[k]});
  }
  return out;
}

void Optimizer::import_state(const std::vector<StateTensor>& state) {
  resolve_pending();  // the imported state replaces whatever the device decided
  std::vector<std::string> kinds = buffer_kinds();
  std::map<std::string, Slot*> by_name;
  for (Slot& s : slots_) by_name[s.spec.name] = &s;
  // Validate everything before touching any slot, so a bad file leaves the state intact.
  std::map<Slot*, std::map<std::string, Tensor>> incoming;
  for (const StateTensor& e : state) {
    auto it = by_name.find(e.param_name);
    SSMT_CHECK(it != by_name.end(), type_name(), " state: '", e.param_name,
               "' is not a parameter of this optimizer (was the checkpoint written for another model?)");
    const Tensor& p = it->second->spec.tensor;
    SSMT_CHECK(e.value.defined(), type_name(), " state '", e.param_name, "' ", e.kind, ": the tensor is undefined");
    if (e.kind == "step") {
      SSMT_CHECK(e.value.numel() == 1, type_name(), " state '", e.param_name, "' step: expected one value, got ",
                 e.value.describe());
    } else {
      SSMT_CHECK(std::find(kinds.begin(), kinds.end(), e.kind) != kinds.end(), type_name(), " state '",
                 e.param_name, "': unknown kind '", e.kind, "'");
      SSMT_CHECK(e.value.shape() == p.shape(), type_name(), " state '", e.param_name, "' ", e.kind, ": shape ",
                 e.value.shape().str(), " does not match the parameter's ", p.shape().str());
    }
    SSMT_CHECK(incoming[it->second].emplace(e.kind, e.value).second, type_name(), " state '", e.param_name,
               "': kind '", e.kind, "' given twice");
  }
  for (auto& [slot, entries] : incoming) {
    SSMT_CHECK(entries.size() == kinds.size() + 1, type_name(), " state '", slot->spec.name, "': expected step and ",
               kinds.size(), " buffer(s), got ", entries.size(), " entries");
  }
  NoGradGuard no_grad;
  for (Slot& s : slots_) {
    if (incoming.count(&s)) continue;
    s.step = 0;
    s.buffers.clear();
  }
  for (auto& [slot, entries] : incoming) {
    int64_t step = entries["step"].item<int64_t>();
    SSMT_CHECK(step > 0, type_name(), " state '", slot->spec.name, "': step must be positive, got ", step);
    slot->step = step;
    slot->buffers.clear();
    ensure_buffers(*slot);
    for (size_t k = 0; k < kinds.size(); ++k) {
      const Tensor& src = entries[kinds[k]];
      Tensor converted = src.to(slot->spec.tensor.device()).to(DType::f32);
      backend(converted.device()).copy(converted, slot->buffers[k]);
    }
  }
}

}  // namespace ssmtrain
