#include "ssm/moe.h"

#include <algorithm>
#include <cmath>

#include "core/backend.h"
#include "core/ops.h"
#include "ssm/kernels/moe_routing.h"
#include "ssm/mixer_util.h"

namespace ssmtrain {

namespace {
// One expert: fc1 (d_model -> d_ff), activation, fc2 (d_ff -> d_model), no biases; every
// parameter tagged "expert" so parameter counts can tell total from active.
class Expert : public Module {
 public:
  Expert(int64_t d_model, int64_t d_ff, Generator& gen) {
    LinearOptions nobias;
    nobias.bias = false;
    fc1 = register_module("fc1", std::make_shared<Linear>(d_model, d_ff, gen, nobias));
    fc2 = register_module("fc2", std::make_shared<Linear>(d_ff, d_model, gen, nobias));
    tag_all_parameters(param_tag::expert);
  }
  std::shared_ptr<Linear> fc1, fc2;
};
}  // namespace

SwitchMoE::SwitchMoE(const MoEOptions& o, Generator& gen) : opt_(o), act_(activation_from_name(o.activation)) {
  SSMT_CHECK(o.num_experts >= 1, "moe: experts must be >= 1, got ", o.num_experts);
  SSMT_CHECK(o.capacity_factor >= 0, "moe: capacity_factor must be >= 0 (0 = dropless), got ", o.capacity_factor);
  SSMT_CHECK(o.top_k >= 1 && o.top_k <= o.num_experts, "moe: top_k must be in [1, experts = ", o.num_experts, "], got ",
             o.top_k);
  const int64_t d_ff = o.d_ff > 0 ? o.d_ff : 3 * o.d_model;
  LinearOptions nobias;
  nobias.bias = false;
  router_ = register_module("router", std::make_shared<Linear>(o.d_model, o.num_experts, gen, nobias));
  auto experts = register_module("experts", std::make_shared<ModuleList>());
  for (int64_t e = 0; e < o.num_experts; ++e) {
    auto ex = std::make_shared<Expert>(o.d_model, d_ff, gen);
    experts->push_back(ex);
    fc1_.push_back(ex->fc1);
    fc2_.push_back(ex->fc2);
  }
}

int64_t SwitchMoE::capacity(int64_t tokens) const {
  if (!is_training() || opt_.capacity_factor == 0) return std::max<int64_t>(1, tokens);
  const double cap = std::floor(opt_.capacity_factor * static_cast<double>(opt_.top_k) * static_cast<double>(tokens) /
                                static_cast<double>(opt_.num_experts));
  // An expert takes a token at most once, so more than `tokens` rows would stay empty.
  return std::clamp<int64_t>(static_cast<int64_t>(cap), 1, std::max<int64_t>(1, tokens));
}

Tensor SwitchMoE::forward(const Tensor& x) {
  SSMT_CHECK(x.dim() >= 2 && x.size(-1) == opt_.d_model, "moe: input ", x.describe(), ": expected (.., ", opt_.d_model,
             ")");
  const int64_t D = opt_.d_model, E = opt_.num_experts, K = opt_.top_k;
  const DType dt = x.dtype();
  const DType rdt = dt == DType::f64 ? DType::f64 : DType::f32;  // the router runs in f32
  Tensor xf = x.reshape({-1, D});
  const int64_t T = xf.size(0);
  Tensor logits = linear(as_dtype(xf, rdt), as_dtype(router_->weight(), rdt));  // (T, E)
  Tensor probs = softmax(logits, -1);

  // Routing on the device; training forwards add to the usage accumulator.
  int64_t C = capacity(T);
  Tensor usage;
  if (is_training()) {
    if (!usage_acc_.defined() || usage_acc_.device() != x.device())
      usage_acc_ = Tensor::zeros({E + 2}, DType::f64, x.device());
    usage = usage_acc_;
  }
  MoeRouting route = moe_route(probs, K, C, usage);
  if (!is_training() && T > 1) {
    // Evaluation and generation size the blocks by the busiest expert instead of by the
    // token count (C = T here, so nothing was dropped): one read of E counts per forward,
    // which a training step never does, for ~1x instead of E / k times the FFN work.
    const std::vector<int64_t> counts = route.counts.to_vector<int64_t>();
    const int64_t busiest = std::max<int64_t>(1, *std::max_element(counts.begin(), counts.end()));
    if (busiest < C) {
      C = busiest;
      route = moe_route(probs, K, C);
    }
  }
  Tensor gate = gather(probs, 1, route.expert);  // (T, K)
  if (K > 1) gate = gate / sum(gate, {1}, true);

  // The experts on per-expert blocks of C rows: two batched GEMMs over the stacked weights
  // (cast to the activations' dtype in the same pass).
  std::vector<Tensor> w1(static_cast<size_t>(E)), w2(static_cast<size_t>(E));
  for (int64_t e = 0; e < E; ++e) {
    w1[e] = fc1_[e]->weight();  // (F, D)
    w2[e] = fc2_[e]->weight();  // (D, F)
  }
  Tensor xd = moe_dispatch(xf, route.slot, E * C).reshape({E, C, D});
  Tensor h = apply_activation(act_, matmul(xd, moe_stack_weights(w1, dt).transpose(1, 2)));  // (E, C, F)
  Tensor yd = matmul(h, moe_stack_weights(w2, dt).transpose(1, 2));                          // (E, C, D)
  Tensor y = moe_combine(yd.reshape({E * C, D}), route.slot, gate);                          // (T, D)

  // Load balancing: alpha * E * sum_i f_i P_i; f is a constant, P carries the gradient.
  if (is_training() && (opt_.aux_loss_coef > 0 || opt_.z_loss_coef > 0)) {
    Tensor f = route.first_counts.to(rdt) * (1.0 / static_cast<double>(std::max<int64_t>(T, 1)));
    Tensor balance = sum(f * mean(probs, {0})) * static_cast<double>(E);
    last_balance_ = balance.detach();
    Tensor aux = balance * opt_.aux_loss_coef;
    if (opt_.z_loss_coef > 0) aux = aux + mean(square(logsumexp(logits, {-1}))) * opt_.z_loss_coef;
    add_aux_loss(aux);  // in the router dtype: f32, or f64 for f64 blocks
  }
  return y.reshape(x.shape());
}

ExpertUsage SwitchMoE::usage() const {
  const int64_t E = opt_.num_experts;
  ExpertUsage u;
  u.tokens_routed.assign(static_cast<size_t>(E), 0);
  if (usage_acc_.defined()) {
    const std::vector<double> acc = usage_acc_.to_vector<double>();
    for (int64_t e = 0; e < E; ++e) u.tokens_routed[e] = static_cast<int64_t>(acc[e]);
    u.dropped = static_cast<int64_t>(acc[E]);
    u.assignments = static_cast<int64_t>(acc[E + 1]);
    u.tokens = u.assignments / opt_.top_k;
  }
  if (last_balance_.defined()) u.aux_loss = last_balance_.item<double>();
  return u;
}

void SwitchMoE::reset_usage() {
  if (usage_acc_.defined()) backend(usage_acc_.device()).fill(usage_acc_, 0);
}

std::unique_ptr<MixerState> SwitchMoE::init_state(int64_t, Device, DType) { return std::make_unique<MixerState>(); }

Tensor SwitchMoE::step(const Tensor& x_t, MixerState&) {
  NoGradGuard ng;
  return forward(x_t.unsqueeze(1)).squeeze(1);
}

void MoEOptions::validate(const MixerContext& c) const {
  SSMT_CHECK(every <= c.n_layer, c.key("every"), " is ", every, " but model.n_layer is only ", c.n_layer,
             ": no layer would be a MoE layer (0 turns MoE off)");
  SSMT_CHECK(top_k <= num_experts, c.key("top_k"), " is ", top_k, " but ", c.key("experts"), " is only ", num_experts,
             ": a token takes at most every expert once");
}

MixerEntry moe_mixer_entry() {
  auto build = [](const MoEOptions& options, const MixerContext& c, Generator& gen) -> std::shared_ptr<Mixer> {
    MoEOptions o = options;
    o.d_model = c.d_model;
    return std::make_shared<SwitchMoE>(o, gen);
  };
  return mixer_entry<MoEOptions>({{"moe", "Switch mixture of experts"}}, build, "moe",
                                 "Switch mixture-of-experts layers (MoE-Mamba, SPECS section 5).");
}

namespace {
std::vector<std::pair<std::string, std::shared_ptr<SwitchMoE>>> moe_layers(LanguageModel& model) {
  std::vector<std::pair<std::string, std::shared_ptr<SwitchMoE>>> out;
  for (int i = 0; i < model.n_layer(); ++i)
    if (auto moe = std::dynamic_pointer_cast<SwitchMoE>(model.block(i)->mixer()))
      out.emplace_back("layers." + std::to_string(i), moe);
  return out;
}
}  // namespace

std::vector<std::pair<std::string, ExpertUsage>> moe_usage(LanguageModel& model) {
  std::vector<std::pair<std::string, ExpertUsage>> out;
  for (const auto& [name, moe] : moe_layers(model)) out.emplace_back(name, moe->usage());
  return out;
}

AsyncRead moe_summary_read(LanguageModel& model) {
  const auto layers = moe_layers(model);
  if (layers.empty()) return AsyncRead();
  NoGradGuard no_grad;
  // Per layer (dropped share, max load) from its accumulator; a layer that has not routed
  // a training batch yet counts as (0, 0), as an empty usage did.
  std::vector<Tensor> rows;
  Device device = Device::cpu();
  for (const auto& [name, moe] : layers)
    if (moe->usage_accumulator().defined()) device = moe->usage_accumulator().device();
  for (const auto& [name, moe] : layers) {
    const Tensor& acc = moe->usage_accumulator();
    if (!acc.defined() || acc.device() != device) {
      rows.push_back(Tensor::zeros({1, 2}, DType::f64, device));
      continue;
    }
    const int64_t E = moe->options().num_experts;
    Tensor counts = acc.narrow(0, 0, E);
    Tensor dropped = acc.narrow(0, E, 1) / clamp(acc.narrow(0, E + 1, 1), 1.0, 1e300);
    Tensor load = max(counts, {0}, true) * static_cast<double>(E) / clamp(sum(counts, {0}, true), 1.0, 1e300);
    rows.push_back(cat({dropped, load}, 0).reshape({1, 2}));
    moe->reset_usage();  // queued after the reads above
  }
  Tensor all = cat(rows, 0);                                                                       // (layers, 2)
  Tensor summary = cat({mean(all.select(1, 0), {0}, true), max(all.select(1, 1), {0}, true)}, 0);  // (2)
  return AsyncRead(summary);
}

MoeSummary moe_summary_of(const AsyncRead& read) {
  MoeSummary m;
  m.dropped = read.value(0);
  m.max_load = read.value(1);
  return m;
}

std::optional<MoeSummary> moe_summary(LanguageModel& model) {
  AsyncRead read = moe_summary_read(model);
  if (!read.defined()) return std::nullopt;
  return moe_summary_of(read);
}

}  // namespace ssmtrain
