#include "train/budget.h"

#include <cmath>
#include <cstdio>

#include "core/error.h"
#include "train/metrics.h"

namespace ssmtrain {

Budget compute_budget(const ParamCounts& counts, const BudgetSpec& spec, int64_t tokens_per_step) {
  SSMT_CHECK(tokens_per_step > 0, "budget: tokens per step must be positive");
  Budget b;
  b.counts = counts;
  b.tokens_per_step = tokens_per_step;
  b.n_kind = spec.params;
  if (spec.params == "total")
    b.n_params = counts.total;
  else if (spec.params == "active")
    b.n_params = counts.active > 0 ? counts.active : counts.total;
  else if (spec.params == "non_embedding")
    b.n_params = counts.non_embedding;
  else
    throw UserError("budget.params: expected total, non_embedding or active, got '" + spec.params + "'");
  if (spec.steps > 0) {
    b.steps = spec.steps;
  } else {
    double tokens = spec.tokens > 0  ? static_cast<double>(spec.tokens)
                    : spec.flops > 0 ? spec.flops / (6.0 * static_cast<double>(b.n_params))
                                     : spec.tokens_per_param * b.n_params;
    SSMT_CHECK(tokens > 0, "budget: the token budget is zero (set budget.tokens, budget.flops, budget.tokens_per_param "
                           "or budget.steps)");
    b.steps = std::max<int64_t>(1, static_cast<int64_t>(std::ceil(tokens / tokens_per_step)));
  }
  b.tokens = b.steps * tokens_per_step;
  b.flops = 6.0 * static_cast<double>(b.n_params) * static_cast<double>(b.tokens);
  return b;
}

std::string Budget::summary() const {
  char buf[256];
  std::snprintf(buf, sizeof buf, "%s params (total %s, non-embedding %s%s), D = %s tokens, C ~ 6ND = %.3g FLOPs, %lld steps",
                format_count(static_cast<double>(n_params)).c_str(), format_count(static_cast<double>(counts.total)).c_str(),
                format_count(static_cast<double>(counts.non_embedding)).c_str(),
                counts.active > 0 && counts.active != counts.total
                    ? (", active " + format_count(static_cast<double>(counts.active))).c_str()
                    : "",
                format_count(static_cast<double>(tokens)).c_str(), flops, static_cast<long long>(steps));
  return "N = " + std::string(buf);
}

}  // namespace ssmtrain
