// Token budgets (SPECS section 8): Chinchilla-style D = tokens_per_param * N unless a token or
// step count is given, and the compute estimate C ~= 6 N D that the trainer prints at start.
#pragma once

#include <cstdint>
#include <string>

namespace ssmtrain {

struct ParamCounts {
  int64_t total = 0;
  int64_t non_embedding = 0;
  int64_t active = 0;  // parameters used per token (MoE: one expert of each MoE layer)
};

struct BudgetSpec {
  int64_t tokens = 0;             // > 0: train on this many tokens
  double flops = 0;               // > 0 (tokens 0): tokens = flops / (6 N)
  double tokens_per_param = 20;   // otherwise tokens = tokens_per_param * N
  int64_t steps = 0;              // > 0: wins over both
  std::string params = "non_embedding";  // which N: total | non_embedding | active
};

struct Budget {
  int64_t n_params = 0;      // the N the budget used
  std::string n_kind;        // which count that was
  int64_t tokens = 0;        // D, rounded up to whole steps
  int64_t steps = 0;
  int64_t tokens_per_step = 0;
  double flops = 0;          // 6 N D
  std::string summary() const;  // "N params (total, non-embedding), D tokens, C ~ 6ND FLOPs, S steps"
  ParamCounts counts;
};

Budget compute_budget(const ParamCounts& counts, const BudgetSpec& spec, int64_t tokens_per_step);

}  // namespace ssmtrain
