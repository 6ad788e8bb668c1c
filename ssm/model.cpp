#include "ssm/model.h"

#include <algorithm>

namespace ssmtrain {

std::vector<std::string> layer_mixers(const ModelOptions& model) {
  std::vector<std::string> mixers = model.layers;
  if (mixers.empty()) mixers.assign(static_cast<size_t>(std::max<int64_t>(model.n_layer, 0)), model.mixer);
  const int64_t every = model.mixers.get<MoEOptions>().every;
  if (every > 0)
    for (size_t i = static_cast<size_t>(every) - 1; i < mixers.size(); i += static_cast<size_t>(every))
      mixers[i] = "moe";
  return mixers;
}

namespace {

// What the mixer `name` of registration `entry` is told of the model ("" for checks only).
MixerContext mixer_context(const ModelOptions& model, const MixerEntry& entry, const std::string& name,
                           int64_t seq_len) {
  MixerContext c;
  c.name = name;
  c.d_model = model.d_model;
  c.n_layer = model.n_layer;
  c.d_state = model.d_state;
  c.d_conv = model.d_conv;
  c.expand = model.expand;
  c.norm_eps = model.norm_eps;
  c.seq_len = seq_len;
  c.prefix = entry.section.empty() ? "model." : "model." + entry.section + ".";
  return c;
}

}  // namespace

void validate(const ModelOptions& model) {
  SSMT_CHECK(model.layers.empty() || static_cast<int64_t>(model.layers.size()) == model.n_layer, "model.layers has ",
             model.layers.size(), " entries but model.n_layer is ", model.n_layer,
             " (one mixer per layer, or leave it empty)");
  const std::vector<std::string> used = layer_mixers(model);
  for (const std::string& name : used) model.mixers.of(name);  // unknown names are errors
  for (const auto& item : model.mixers.items()) {
    const MixerEntry& e = *item.entry;
    MixerContext c = mixer_context(model, e, "", 0);
    bool any = false;
    for (const auto& n : e.names)
      if (std::find(used.begin(), used.end(), n.name) != used.end()) {
        c.name = n.name, any = true;
        e.validate(item.options, c);
      }
    if (!any) e.validate(item.options, c);
  }
}

std::shared_ptr<LanguageModel> build_language_model(const ModelSpec& spec, Generator& gen) {
  const ModelOptions& m = spec.model;
  SSMT_CHECK(m.n_layer >= 1 && m.d_model >= 1 && m.vocab_size >= 1,
             "model: n_layer, d_model and vocab_size must be positive");
  validate(m);
  LMConfig lc;
  lc.vocab_size = m.vocab_size;
  lc.d_model = m.d_model;
  lc.n_layer = static_cast<int>(m.n_layer);
  lc.pad_vocab_multiple = m.pad_vocab_multiple;
  lc.norm_eps = m.norm_eps;
  lc.compute_dtype = spec.compute_dtype;
  lc.recompute = spec.recompute;
  const std::vector<std::string> names = layer_mixers(m);
  MixerFactory factory = [&](int i) {
    const std::string& name = names[static_cast<size_t>(i)];
    const MixerOptionSet::Item& item = m.mixers.of(name);
    return item.entry->build(item.options, mixer_context(m, *item.entry, name, spec.seq_len), gen);
  };
  return std::make_shared<LanguageModel>(lc, factory, gen);
}

std::pair<int, int> moe_routing(const ModelSpec& spec) {
  const auto mixers = layer_mixers(spec.model);
  const bool any = std::find(mixers.begin(), mixers.end(), "moe") != mixers.end();
  return any ? std::pair<int, int>{1, static_cast<int>(spec.model.mixers.get<MoEOptions>().num_experts)}
             : std::pair<int, int>{1, 1};
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
