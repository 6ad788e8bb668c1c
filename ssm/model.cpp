#include "ssm/model.h"

#include <algorithm>

namespace ssmtrain {

std::vector<std::string> layer_mixers(const ModelOptions& model) {
  std::vector<std::string> mixers = model.layers;
  if (mixers.empty()) mixers.assign(static_cast<size_t>(std::max<int64_t>(model.n_layer, 0)), model.mixer);
  for (const auto& item : model.mixers.items()) {
    if (!item.entry->takes_layer) continue;
    for (size_t i = 0; i < mixers.size(); ++i)
      if (item.entry->takes_layer(item.options, static_cast<int64_t>(i))) mixers[i] = item.entry->names.front().name;
  }
  return mixers;
}

double mixer_ssm_lr(const ModelOptions& model) {
  for (const auto& item : model.mixers.items())
    if (item.entry->ssm_lr)
      if (const double lr = item.entry->ssm_lr(item.options); lr > 0) return lr;
  return 0;
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
  const std::vector<std::string> used = layer_mixers(spec.model);
  for (const auto& item : spec.model.mixers.items()) {
    if (!item.entry->expert_routing) continue;
    for (const auto& n : item.entry->names)
      if (std::find(used.begin(), used.end(), n.name) != used.end()) return item.entry->expert_routing(item.options);
  }
  return {1, 1};
}

}  // namespace ssmtrain
