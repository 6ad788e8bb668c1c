#include "ssm/moe.h"

#include <algorithm>
#include <cmath>

#include "core/ops.h"
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
  SSMT_CHECK(o.capacity_factor > 0, "moe: capacity_factor must be > 0, got ", o.capacity_factor);
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

Tensor SwitchMoE::forward(const Tensor& x) {
  SSMT_CHECK(x.dim() >= 2 && x.size(-1) == opt_.d_model, "moe: input ", x.describe(), ": expected (.., ",
             opt_.d_model, ")");
  const int64_t D = opt_.d_model, E = opt_.num_experts;
  const DType dt = x.dtype();
  const DType rdt = dt == DType::f64 ? DType::f64 : DType::f32;  // the router runs in f32
  Tensor xf = x.reshape({-1, D});
  const int64_t T = xf.size(0);
  Tensor logits = linear(as_dtype(xf, rdt), as_dtype(router_->weight(), rdt));  // (T, E)
  Tensor probs = softmax(logits, -1);

  // Top-1 on the host (ties go to the lower expert index).
  std::vector<double> ph = probs.to_vector<double>();
  std::vector<int64_t> choice(static_cast<size_t>(T));
  usage_ = ExpertUsage{};
  usage_.tokens_routed.assign(static_cast<size_t>(E), 0);
  usage_.tokens = T;
  for (int64_t t = 0; t < T; ++t) {
    int64_t best = 0;
    for (int64_t e = 1; e < E; ++e)
      if (ph[t * E + e] > ph[t * E + best]) best = e;
    choice[t] = best;
    usage_.tokens_routed[best]++;
  }
  // Capacity limits apply to training batches; evaluation and generation drop nothing.
  const int64_t capacity =
      is_training() ? std::max<int64_t>(1, static_cast<int64_t>(std::floor(opt_.capacity_factor * T / E))) : T;

  // Dispatch lists in token order, truncated at capacity; perm maps each token to its row
  // of the concatenated expert outputs, or to the final zero row when dropped.
  std::vector<std::vector<int64_t>> lists(static_cast<size_t>(E));
  for (int64_t t = 0; t < T; ++t)
    if (static_cast<int64_t>(lists[choice[t]].size()) < capacity) lists[choice[t]].push_back(t);
  std::vector<int64_t> perm(static_cast<size_t>(T), -1);
  std::vector<Tensor> outs;
  int64_t row = 0;
  for (int64_t e = 0; e < E; ++e) {
    if (lists[e].empty()) continue;
    Tensor idx = Tensor::from_vector(lists[e], {static_cast<int64_t>(lists[e].size())}).to(x.device());
    Tensor xe = index_select(xf, 0, idx);
    Tensor h = apply_activation(act_, linear(xe, as_dtype(fc1_[e]->weight(), dt)));
    outs.push_back(linear(h, as_dtype(fc2_[e]->weight(), dt)));
    for (int64_t t : lists[e]) perm[t] = row++;
  }
  usage_.dropped = T - row;
  for (int64_t& p : perm)
    if (p < 0) p = row;
  outs.push_back(Tensor::zeros({1, D}, dt, x.device()));
  Tensor combined = index_select(cat(outs, 0), 0, Tensor::from_vector(perm, {T}).to(x.device()));  // (T, D)
  Tensor gate = gather(probs, 1, Tensor::from_vector(choice, {T, 1}).to(x.device()));           // (T, 1)
  Tensor y = combined * as_dtype(gate, dt);

  // Load balancing: alpha * E * sum_i f_i P_i; f is a constant, P carries the gradient.
  if (is_training() && (opt_.aux_loss_coef > 0 || opt_.z_loss_coef > 0)) {
    std::vector<double> f(static_cast<size_t>(E));
    for (int64_t e = 0; e < E; ++e) f[e] = static_cast<double>(usage_.tokens_routed[e]) / std::max<int64_t>(T, 1);
    Tensor fT = Tensor::from_vector(f, {E}).to(rdt).to(x.device());
    Tensor balance = sum(fT * mean(probs, {0})) * static_cast<double>(E);
    usage_.aux_loss = balance.item<double>();
    Tensor aux = balance * opt_.aux_loss_coef;
    if (opt_.z_loss_coef > 0) aux = aux + mean(square(logsumexp(logits, {-1}))) * opt_.z_loss_coef;
    add_aux_loss(aux.to(DType::f32));
  }
  return y.reshape(x.shape());
}

std::unique_ptr<MixerState> SwitchMoE::init_state(int64_t, Device, DType) { return std::make_unique<MixerState>(); }

Tensor SwitchMoE::step(const Tensor& x_t, MixerState&) {
  NoGradGuard ng;
  return forward(x_t.unsqueeze(1)).squeeze(1);
}

void MoEOptions::validate(const MixerContext& c) const {
  SSMT_CHECK(every <= c.n_layer, c.key("every"), " is ", every, " but model.n_layer is only ", c.n_layer,
             ": no layer would be a MoE layer (0 turns MoE off)");
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

std::vector<std::pair<std::string, ExpertUsage>> moe_usage(LanguageModel& model) {
  std::vector<std::pair<std::string, ExpertUsage>> out;
  for (int i = 0; i < model.n_layer(); ++i)
    if (auto moe = std::dynamic_pointer_cast<SwitchMoE>(model.block(i)->mixer()))
      out.emplace_back("layers." + std::to_string(i), moe->last_usage());
  return out;
}

std::optional<MoeSummary> moe_summary(LanguageModel& model) {
  auto usage = moe_usage(model);
  if (usage.empty()) return std::nullopt;
  MoeSummary m;
  for (const auto& [name, u] : usage) {
    m.dropped += u.tokens > 0 ? static_cast<double>(u.dropped) / static_cast<double>(u.tokens) : 0.0;
    int64_t busiest = 0, routed = 0;
    for (int64_t t : u.tokens_routed) busiest = std::max(busiest, t), routed += t;
    if (routed > 0)
      m.max_load = std::max(m.max_load, static_cast<double>(busiest) * static_cast<double>(u.tokens_routed.size()) /
                                            static_cast<double>(routed));
  }
  m.dropped /= static_cast<double>(usage.size());
  return m;
}

}  // namespace ssmtrain
