// The schedules of schedule.h, in closed form.
#include "optim/schedule.h"

#include <cmath>
#include <numbers>

#include "core/error.h"

namespace ssmtrain {

ScheduleKind schedule_kind_from_name(const std::string& name) {
  for (ScheduleKind k : {ScheduleKind::constant, ScheduleKind::cosine, ScheduleKind::linear, ScheduleKind::wsd})
    if (name == schedule_kind_name(k)) return k;
  throw UserError("optim.schedule: unknown schedule '" + name + "' (expected constant, cosine, linear or wsd)");
}

const char* schedule_kind_name(ScheduleKind kind) {
  switch (kind) {
    case ScheduleKind::constant: return "constant";
    case ScheduleKind::cosine: return "cosine";
    case ScheduleKind::linear: return "linear";
    case ScheduleKind::wsd: return "wsd";
  }
  return "?";
}

void validate(const ScheduleConfig& c) {
  SSMT_CHECK(c.peak_lr >= 0 && std::isfinite(c.peak_lr), "optim.lr must be finite and >= 0, got ", c.peak_lr);
  SSMT_CHECK(c.min_lr >= 0 && c.min_lr <= c.peak_lr, "optim.min_lr must be in [0, optim.lr = ", c.peak_lr,
             "], got ", c.min_lr);
  SSMT_CHECK(c.warmup_steps >= 0, "optim.warmup_steps must be >= 0, got ", c.warmup_steps);
  SSMT_CHECK(c.total_steps > 0, "the schedule needs a positive number of total steps, got ", c.total_steps);
  SSMT_CHECK(c.warmup_steps <= c.total_steps, "optim.warmup_steps (", c.warmup_steps,
             ") exceeds the total number of steps (", c.total_steps, ")");
  SSMT_CHECK(c.decay_fraction >= 0 && c.decay_fraction <= 1, "optim.decay_fraction must be in [0, 1], got ",
             c.decay_fraction);
}

double learning_rate(const ScheduleConfig& c, int64_t step) {
  validate(c);
  SSMT_CHECK(step >= 0, "learning_rate: step must be >= 0, got ", step);
  if (step < c.warmup_steps)
    return c.peak_lr * static_cast<double>(step + 1) / static_cast<double>(c.warmup_steps);
  if (c.kind == ScheduleKind::constant) return c.peak_lr;
  if (step >= c.total_steps) return c.min_lr;

  int64_t decay_start = c.warmup_steps;
  if (c.kind == ScheduleKind::wsd) {
    int64_t decay_steps = std::llround(c.decay_fraction * static_cast<double>(c.total_steps));
    decay_start = std::max(c.warmup_steps, c.total_steps - decay_steps);
    if (step < decay_start) return c.peak_lr;
  }
  double progress = static_cast<double>(step - decay_start) / static_cast<double>(c.total_steps - decay_start);
  if (c.kind == ScheduleKind::cosine)
    return c.min_lr + 0.5 * (c.peak_lr - c.min_lr) * (1.0 + std::cos(std::numbers::pi * progress));
  return c.peak_lr + (c.min_lr - c.peak_lr) * progress;  // linear, and wsd's decay
}

}  // namespace ssmtrain
