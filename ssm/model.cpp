#include "ssm/model.h"

#include <algorithm>

#include "nn/mlp.h"
#include "ssm/s4.h"

namespace ssmtrain {

std::string layer_mixer(const ModelSpec& spec, int layer) {
  if (spec.moe_every > 0 && (layer + 1) % spec.moe_every == 0) return "moe";
  if (!spec.layers.empty()) {
    SSMT_CHECK(static_cast<int>(spec.layers.size()) == spec.n_layer, "model.layers lists ", spec.layers.size(),
               " mixers but model.n_layer is ", spec.n_layer);
    return spec.layers[static_cast<size_t>(layer)];
  }
  return spec.mixer;
}

namespace {

std::shared_ptr<Mixer> make_mixer(const ModelSpec& spec, const std::string& name, Generator& gen) {
  if (name == "mamba" || name == "s6" || name == "mamba_lti") {
    MambaOptions o;
    o.d_model = spec.d_model;
    o.d_state = spec.d_state;
    o.d_conv = spec.d_conv;
    o.expand = spec.expand;
    o.dt_rank = spec.dt_rank;
    o.gated = name != "s6";
    o.selective = name != "mamba_lti";
    return std::make_shared<Mamba>(o, gen);
  }
  if (name == "mamba2") {
    Mamba2Options o;
    o.d_model = spec.d_model;
    o.d_state = spec.d_state;
    o.d_conv = spec.d_conv;
    o.expand = spec.expand;
    o.headdim = spec.headdim;
    o.ngroups = spec.ngroups;
    o.chunk_size = spec.chunk_size;
    o.norm_eps = spec.norm_eps;
    return std::make_shared<Mamba2>(o, gen);
  }
  if (name == "s4" || name == "s4d") {
    // s4: the kernel of model.s4.kernel (dplr or diag); s4d: always the diagonal kernel.
    S4Options o;
    o.d_model = spec.d_model;
    o.d_state = spec.d_state;
    o.kernel = name == "s4d" ? "diag" : spec.s4.kernel;
    o.init = spec.s4.init;
    o.discretization = spec.s4.discretization;
    o.dt_min = spec.s4.dt_min;
    o.dt_max = spec.s4.dt_max;
    o.l_max = spec.s4.l_max;
    return std::make_shared<S4>(o, gen);
  }
  if (name == "moe") {
    MoEOptions o = spec.moe;
    o.d_model = spec.d_model;
    return std::make_shared<SwitchMoE>(o, gen);
  }
  if (name == "mlp") {
    int64_t hidden = spec.mlp_hidden > 0 ? spec.mlp_hidden : gated_mlp_hidden(spec.d_model);
    return std::make_shared<MLPMixer>(spec.d_model, hidden, gen, /*gated=*/true);
  }
  throw UserError("model: unknown mixer '" + name + "' (expected mamba, s6, mamba_lti, mamba2, s4, s4d, mlp or moe)");
}

}  // namespace

std::shared_ptr<LanguageModel> build_language_model(const ModelSpec& spec, Generator& gen) {
  SSMT_CHECK(spec.n_layer >= 1 && spec.d_model >= 1 && spec.vocab_size >= 1,
             "model: n_layer, d_model and vocab_size must be positive");
  LMConfig lc;
  lc.vocab_size = spec.vocab_size;
  lc.d_model = spec.d_model;
  lc.n_layer = spec.n_layer;
  lc.pad_vocab_multiple = spec.pad_vocab_multiple;
  lc.norm_eps = spec.norm_eps;
  lc.compute_dtype = spec.compute_dtype;
  lc.recompute = spec.recompute;
  MixerFactory factory = [&](int i) { return make_mixer(spec, layer_mixer(spec, i), gen); };
  return std::make_shared<LanguageModel>(lc, factory, gen);
}

std::pair<int, int> moe_routing(const ModelSpec& spec) {
  bool any = spec.moe_every > 0;
  for (const auto& l : spec.layers) any = any || l == "moe";
  any = any || spec.mixer == "moe";
  return any ? std::pair<int, int>{1, static_cast<int>(spec.moe.num_experts)} : std::pair<int, int>{1, 1};
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
