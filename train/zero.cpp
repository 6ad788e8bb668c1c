#include "train/zero.h"

#include <algorithm>
#include <cmath>
#include <map>

#include "core/backend.h"
#include "core/ops.h"

namespace ssmtrain {

ZeroOptimizer::ZeroOptimizer(GradBuckets& buckets, const AdamW& full) : buckets_(buckets) {
  SSMT_ASSERT(buckets.sharded(), "ZeroOptimizer needs sharded gradient buckets");
  NoGradGuard no_grad;
  std::map<std::string, size_t> group_of;
  for (size_t g = 0; g < full.groups().size(); ++g)
    for (const ParamSpec& p : full.groups()[g].params) group_of[p.name] = g;
  std::vector<ParamGroup> groups = full.groups();
  for (ParamGroup& g : groups) g.params.clear();
  const int64_t lo = buckets.shard_begin(), hi = lo + buckets.shard_size();
  const auto& entries = buckets.entries();
  for (size_t i = 0; i < entries.size(); ++i) {
    const auto& e = entries[i];
    const int64_t from = std::max(e.offset, lo), to = std::min(e.offset + e.numel, hi);
    if (from >= to) continue;
    auto it = group_of.find(e.spec.name);
    SSMT_CHECK(it != group_of.end(), "dist.zero: parameter '", e.spec.name, "' is not in the optimizer's groups");
    Piece piece{i, from - e.offset, to - from, from - lo, Tensor()};
    // A view without autograd history: a leaf of its own, whose .grad is set each step.
    piece.view = e.spec.tensor.detach().reshape({e.numel}).narrow(0, piece.begin, piece.numel).detach();
    groups[it->second].params.push_back(ParamSpec{e.spec.name, piece.view, e.spec.tags});
    pieces_.push_back(piece);
  }
  inner_ = std::make_unique<AdamW>(std::move(groups), full.base_lr(), full.options());
  const Device device = entries.front().spec.tensor.device();
  param_shard_ = Tensor::zeros({buckets.shard_size()}, DType::f32, device);
  param_full_ = Tensor::zeros({buckets.shard_size() * buckets.dist().world_size()}, DType::f32, device);
}

int64_t ZeroOptimizer::state_elements() const {
  int64_t n = 0;
  for (const Piece& p : pieces_) n += p.numel;
  return n;
}

Tensor ZeroOptimizer::clip_status(const Tensor& squares, double max_norm, const Tensor& loss) {
  NoGradGuard no_grad;
  const Device device = squares.device();
  auto f64 = [&](double v) { return Tensor::full({1}, v, DType::f64, device); };
  // 1 where x is finite: x - x is 0 for finite x and NaN for inf and NaN.
  auto finite = [&](const Tensor& x) { return eq(sub(x, x), f64(0.0)); };
  const Tensor norm = sqrt(squares);
  const Tensor norm_ok = finite(norm);
  Tensor ok = norm_ok;  // the update goes ahead
  if (loss.defined()) ok = mul(ok, finite(loss.reshape({1}).to(DType::f64).to(device)));
  Tensor scale = f64(1.0), clipped = f64(0.0);
  if (max_norm > 0) {
    const Tensor coef = div(f64(max_norm), add(norm, 1e-6));  // clip_grad_norm's factor
    clipped = mul(norm_ok, lt(coef, f64(1.0)));               // as the host: a finite norm clips
    scale = where(clipped, coef, f64(1.0));
  }
  return cat({norm, scale, sub(f64(1.0), ok), clipped}, 0);
}

DeviceClip ZeroOptimizer::step(const Optimizer& full, double max_norm, const Tensor& loss) {
  NoGradGuard no_grad;
  Dist& dist = buckets_.dist();
  Tensor grad = buckets_.shard_grad();  // (S) f32, zero past N
  // The global norm: each rank's squared norm in f64, summed over the ranks on the device.
  Tensor g64 = grad.to(DType::f64);
  Tensor squares = sum(mul(g64, g64)).reshape({1});
  dist.all_reduce_sum_async(squares).wait();
  DeviceClip clip;
  clip.status = clip_status(squares, max_norm, loss);
  clip.grads_scaled = !grad.device().is_cuda();
  if (clip.grads_scaled) {
    // The CPU applies the factor here, as the host clip does (no wait: the status is here).
    const ClipResult r = clip.read();
    if (r.clipped) grad = mul(grad, r.scale);
  }
  for (const Piece& p : pieces_) {
    Tensor view = p.view;  // a handle sharing the piece
    view.set_grad(grad.narrow(0, p.shard_at, p.numel));
  }
  inner_->set_lr(full.lr());
  inner_->step_clipped(clip);
  inner_->zero_grad();
  // A skipped update left the shard as it was: gathering it changes nothing, and deciding
  // that on the host would be a wait for the device.
  Backend& be = backend(param_shard_.device());
  for (const Piece& p : pieces_) be.copy(p.view, param_shard_.narrow(0, p.shard_at, p.numel));
  dist.all_gather_async(param_shard_, param_full_).wait();
  for (const auto& e : buckets_.entries())
    be.copy(param_full_.narrow(0, e.offset, e.numel).view(e.spec.tensor.shape()), e.spec.tensor);
  return clip;
}

void ZeroOptimizer::gather_state_into(Optimizer& full) {
  NoGradGuard no_grad;
  Dist& dist = buckets_.dist();
  inner_->resolve_pending();
  const auto& entries = buckets_.entries();
  const Device device = param_shard_.device();
  std::map<std::string, std::map<std::string, Tensor>> mine;
  for (const StateTensor& st : inner_->export_state()) mine[st.param_name][st.kind] = st.value;
  // Every parameter's step count: the largest over the ranks holding a piece of it (all
  // pieces of a parameter are updated together, so they agree).
  std::vector<double> steps(entries.size(), 0.0);
  const std::vector<std::string> kinds = {"exp_avg", "exp_avg_sq"};
  std::vector<Tensor> shards, fulls;
  for (size_t k = 0; k < kinds.size(); ++k) {
    shards.push_back(Tensor::zeros({buckets_.shard_size()}, DType::f32, device));
    fulls.push_back(Tensor::zeros({param_full_.numel()}, DType::f32, device));
  }
  Backend& be = backend(device);
  for (const Piece& p : pieces_) {
    auto it = mine.find(entries[p.entry].spec.name);
    if (it == mine.end()) continue;
    steps[p.entry] = static_cast<double>(it->second.at("step").item<int64_t>());
    for (size_t k = 0; k < kinds.size(); ++k)
      be.copy(it->second.at(kinds[k]), shards[k].narrow(0, p.shard_at, p.numel));
  }
  dist.max(steps);
  for (size_t k = 0; k < kinds.size(); ++k) dist.all_gather_async(shards[k], fulls[k]).wait();
  if (!dist.is_main()) return;
  std::vector<StateTensor> state;
  for (size_t i = 0; i < entries.size(); ++i) {
    if (steps[i] == 0) continue;
    const auto& e = entries[i];
    state.push_back({e.spec.name, "step", Tensor::scalar(steps[i], DType::i64)});
    for (size_t k = 0; k < kinds.size(); ++k)
      state.push_back({e.spec.name, kinds[k], fulls[k].narrow(0, e.offset, e.numel).view(e.spec.tensor.shape())});
  }
  full.import_state(state);
}

void ZeroOptimizer::load_state_from(Optimizer& full) {
  NoGradGuard no_grad;
  full.resolve_pending();
  std::map<std::string, std::map<std::string, Tensor>> all;
  for (const StateTensor& st : full.export_state()) all[st.param_name][st.kind] = st.value;
  std::vector<StateTensor> state;
  const auto& entries = buckets_.entries();
  for (const Piece& p : pieces_) {
    auto it = all.find(entries[p.entry].spec.name);
    if (it == all.end()) continue;  // a parameter not updated yet starts fresh
    for (const auto& [kind, value] : it->second) {
      if (kind == "step") {
        state.push_back({it->first, kind, value});
      } else {
        state.push_back({it->first, kind, value.reshape({entries[p.entry].numel}).narrow(0, p.begin, p.numel)});
      }
    }
  }
  inner_->import_state(state);
  release(full);
}

void ZeroOptimizer::release(Optimizer& full) { full.import_state({}); }

}  // namespace ssmtrain
