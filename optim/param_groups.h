// Parameter groups: which parameters get weight decay and which learning rate.
//
// optim/ sits beside nn/ in the layer table, so it does not see Module; it takes a flat
// list of ParamSpec (name, tensor, tags). param_specs() converts any list of records with
// those three fields, such as nn's named_parameters(), without naming the type.
//
// Default rules (SPECS 4 and 6; docs/optim.md):
//   "ssm"      params tagged "ssm" (S4's A, B, log dt): their own lr (ssm_lr), no decay;
//   "no_decay" params tagged "no_decay" (A_log, D, dt_bias, norms), biases ("*.bias"),
//              and every tensor with fewer than 2 dimensions;
//   "decay"    everything else: the weight matrices, including the tied embedding
//              (decay_embedding, on by default as in Mamba's reference recipe).
#pragma once

#include <optional>
#include <set>
#include <string>
#include <vector>

#include "core/tensor.h"

namespace ssmtrain {

struct ParamSpec {
  std::string name;
  Tensor tensor;
  std::set<std::string> tags;
  bool has_tag(const std::string& tag) const { return tags.count(tag) > 0; }
};

template <typename Range>
std::vector<ParamSpec> param_specs(const Range& named) {
  std::vector<ParamSpec> out;
  for (const auto& p : named) out.push_back(ParamSpec{p.name, p.tensor, {p.tags.begin(), p.tags.end()}});
  return out;
}

struct ParamGroup {
  std::string name;
  std::vector<ParamSpec> params;
  // Peak learning rate of the group: `lr` when set, else the optimizer's base lr times
  // lr_scale. Schedules scale every group in proportion (Optimizer::set_lr).
  std::optional<double> lr;
  double lr_scale = 1.0;
  double weight_decay = 0.0;
};

struct GroupRules {
  double weight_decay = 0.1;
  bool decay_embedding = true;
  std::optional<double> ssm_lr;  // unset: "ssm" params use the base lr
  double ssm_weight_decay = 0.0;
};

// Splits `params` into the non-empty groups among "decay", "no_decay", "ssm" (that order).
// A tensor listed twice (tied weights registered under two names) is kept once, under
// its first name.
std::vector<ParamGroup> make_param_groups(const std::vector<ParamSpec>& params, const GroupRules& rules);

// True when the default rules would not decay this parameter (ignoring the "ssm" group).
bool excluded_from_weight_decay(const ParamSpec& p, const GroupRules& rules);

}  // namespace ssmtrain
