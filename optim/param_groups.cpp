// Grouping parameters by tags, names and rank.
#include "optim/param_groups.h"

#include <unordered_set>

#include "core/error.h"

namespace ssmtrain {

namespace {
bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}
}  // namespace

bool excluded_from_weight_decay(const ParamSpec& p, const GroupRules& rules) {
  if (p.has_tag("no_decay")) return true;
  if (p.tensor.dim() < 2) return true;
  if (p.name == "bias" || ends_with(p.name, ".bias")) return true;
  if (p.has_tag("embedding") && !rules.decay_embedding) return true;
  return false;
}

std::vector<ParamGroup> make_param_groups(const std::vector<ParamSpec>& params, const GroupRules& rules) {
  SSMT_CHECK(rules.weight_decay >= 0, "optim.weight_decay must be >= 0, got ", rules.weight_decay);
  SSMT_CHECK(!rules.ssm_lr || *rules.ssm_lr >= 0, "optim.ssm_lr must be >= 0, got ", *rules.ssm_lr);
  ParamGroup decay{"decay", {}, std::nullopt, 1.0, rules.weight_decay};
  ParamGroup no_decay{"no_decay", {}, std::nullopt, 1.0, 0.0};
  ParamGroup ssm{"ssm", {}, rules.ssm_lr, 1.0, rules.ssm_weight_decay};
  std::unordered_set<const TensorImpl*> seen;
  for (const ParamSpec& p : params) {
    SSMT_CHECK(p.tensor.defined(), "parameter '", p.name, "' is undefined");
    if (!seen.insert(p.tensor.impl()).second) continue;
    if (p.has_tag("ssm"))
      ssm.params.push_back(p);
    else if (excluded_from_weight_decay(p, rules))
      no_decay.params.push_back(p);
    else
      decay.params.push_back(p);
  }
  std::vector<ParamGroup> groups;
  for (ParamGroup* g : {&decay, &no_decay, &ssm})
    if (!g->params.empty()) groups.push_back(std::move(*g));
  return groups;
}

}  // namespace ssmtrain
