// Learning-rate schedules: pure functions lr(step) of a few numbers.
//
// `step` counts optimizer updates already done (0 for the first). Warmup is linear and
// reaches peak_lr at step warmup_steps - 1: lr = peak * (step + 1) / warmup_steps, so the
// first update already moves the weights. After warmup (p = fraction of the decay phase):
//   constant  peak_lr
//   cosine    min + (peak - min) * (1 + cos(pi p)) / 2,  p = (step - warmup) / (total - warmup)
//   linear    peak + (min - peak) * p,                   p as for cosine
//   wsd       warmup, stable at peak, then linear to min over the last
//             decay_steps = round(decay_fraction * total) steps:
//             p = (step - (total - decay_steps)) / decay_steps
// From total_steps on, every decaying schedule stays at min_lr.
#pragma once

#include <cstdint>
#include <string>

namespace ssmtrain {

enum class ScheduleKind { constant, cosine, linear, wsd };

ScheduleKind schedule_kind_from_name(const std::string& name);  // "constant", "cosine", "linear", "wsd"
const char* schedule_kind_name(ScheduleKind kind);

struct ScheduleConfig {
  ScheduleKind kind = ScheduleKind::cosine;
  double peak_lr = 1e-3;
  int64_t warmup_steps = 0;
  int64_t total_steps = 1;
  double min_lr = 0.0;
  double decay_fraction = 0.2;  // wsd only
};

// UserError naming the optim.* key on inconsistent settings.
void validate(const ScheduleConfig& config);
double learning_rate(const ScheduleConfig& config, int64_t step);

}  // namespace ssmtrain
